//! ipfw (OS X 10.9 and older, where `/sbin/ipfw` exists): reading its rule list, planning
//! `allow` rules numbered before a VPN's `deny ip from any to any`, and (macOS only, [`run`])
//! adding and deleting them.
//!
//! **Wired, and unreachable in practice.** On macOS, `up` (and `watch`'s reconcile), `down`
//! and `status` read `ipfw list` whenever `/sbin/ipfw` exists and only root can change it, next
//! to pf. But Rust's standard library targets macOS 10.12 and later on x86_64-apple-darwin
//! (`rustc --print deployment-target` says `MACOSX_DEPLOYMENT_TARGET=10.12`; older releases are
//! unsupported since Rust 1.74) and macOS 11.0 on aarch64-apple-darwin, while `/sbin/ipfw` was
//! removed in OS X 10.10: on every macOS dockroute runs on there is no /sbin/ipfw, and nothing
//! here runs. It is kept (small, pure, tested) for a build with an older toolchain, and because
//! it costs a supported Mac one failed file lookup.
//!
//! ipfw runs rules in number order and the first match decides, so an `allow` numbered below
//! the VPN's deny-all lets the VM's traffic through while the VPN's rule stays as it was. ipfw
//! rules carry no comment, so dockroute's are identified by their numbers, kept in the record
//! ([`super::Held::ipfw_rules`]), together with their exact shape: `allow ip from any to NET
//! via IF` and `allow ip from NET to any via IF`. `ipfw delete N` deletes every rule numbered N,
//! so a number that also holds a rule of another shape is never deleted.

use super::{Direction, Repair, Scope};
use ipnet::Ipv4Net;

/// The backend name in [`Repair::backend`].
pub const BACKEND: &str = "ipfw";
/// [`Repair::verdict`] of dockroute's ipfw rules.
pub const VERDICT: &str = "allow";

/// One rule of `ipfw list` (`NNNNN body`) or `ipfw show` (`NNNNN packets bytes body`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub number: u32,
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
    /// The rule as ipfw prints it, spaces normalised.
    pub body: String,
}

/// Read `ipfw list` or `ipfw show`. Lines that do not start with a rule number are skipped.
pub fn parse(text: &str) -> Vec<Rule> {
    text.lines()
        .filter_map(|line| {
            let mut w = line.split_whitespace().peekable();
            let number: u32 = w.next()?.parse().ok().filter(|n| (1..=65535).contains(n))?;
            let rest: Vec<&str> = w.collect();
            let counted = rest.len() > 2
                && rest[0].bytes().all(|b| b.is_ascii_digit())
                && rest[1].bytes().all(|b| b.is_ascii_digit());
            let (packets, bytes, body) = if counted {
                (rest[0].parse().ok(), rest[1].parse().ok(), &rest[2..])
            } else {
                (None, None, &rest[..])
            };
            (!body.is_empty()).then(|| Rule {
                number,
                packets,
                bytes,
                body: body.join(" "),
            })
        })
        .collect()
}

/// The VPN's deny-all: the lowest-numbered `deny ip from any to any` (65535 is ipfw's default
/// rule, not a VPN's).
pub fn deny_all(rules: &[Rule]) -> Option<&Rule> {
    rules
        .iter()
        .filter(|r| r.number < 65535)
        .filter(|r| {
            matches!(
                r.body.as_str(),
                "deny ip from any to any"
                    | "deny ip from any to any in"
                    | "deny ip from any to any out"
            )
        })
        .min_by_key(|r| r.number)
}

/// The body of dockroute's rule for one direction and network.
pub fn body(direction: Direction, net: Ipv4Net, ifname: &str) -> String {
    match direction {
        Direction::Out => format!("allow ip from any to {net} via {ifname}"),
        Direction::In => format!("allow ip from {net} to any via {ifname}"),
    }
}

/// The direction, network and link of a rule body of dockroute's shape (ipfw prints a /32 as a
/// bare address).
pub fn shape(body: &str) -> Option<(Direction, Ipv4Net, &str)> {
    let w: Vec<&str> = body.split_whitespace().collect();
    let (direction, net, ifname) = match w.as_slice() {
        ["allow", "ip", "from", "any", "to", net, "via", ifname] => (Direction::Out, *net, *ifname),
        ["allow", "ip", "from", net, "to", "any", "via", ifname] => (Direction::In, *net, *ifname),
        _ => return None,
    };
    let net = super::listed_net(net)?;
    crate::validate::interface(ifname).ok()?;
    Some((direction, net, ifname))
}

/// Whether `body` is dockroute's rule for `direction`, `net` and `ifname`.
fn is(body: &str, direction: Direction, net: Ipv4Net, ifname: &str) -> bool {
    shape(body) == Some((direction, net, ifname))
}

/// dockroute's rule numbered `number`, as a [`Repair`].
pub fn repair(number: u32, direction: Direction, net: Ipv4Net, ifname: &str) -> Repair {
    Repair {
        backend: BACKEND.into(),
        table: String::new(),
        chain: String::new(),
        direction,
        net,
        ifname: ifname.into(),
        verdict: VERDICT.into(),
        handle: Some(number.into()),
        table_handle: None,
        misplaced: false,
    }
}

/// The rule number of an ipfw [`Repair`].
pub fn number(r: &Repair) -> Option<u32> {
    r.handle
        .and_then(|h| u32::try_from(h).ok())
        .filter(|n| (1..65535).contains(n))
}

/// `ipfw add NUMBER allow ...` for an ipfw [`Repair`] (refused: no valid number, or an interface
/// name that is not one).
pub fn add_args(r: &Repair) -> Result<Vec<String>, String> {
    crate::validate::interface(&r.ifname)?;
    let number = number(r).ok_or_else(|| format!("ipfw rule without a valid number: {r:?}"))?;
    Ok(Add {
        number,
        body: body(r.direction, r.net, &r.ifname),
    }
    .args())
}

/// `ipfw delete NUMBER`.
pub fn delete_args(number: u32) -> Vec<String> {
    vec!["delete".to_string(), number.to_string()]
}

/// A rule to add: `ipfw add NUMBER BODY...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Add {
    pub number: u32,
    pub body: String,
}

impl Add {
    /// The argument vector for /sbin/ipfw.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["add".to_string(), self.number.to_string()];
        a.extend(self.body.split_whitespace().map(str::to_string));
        a
    }
}

/// The rules to add so that `scope` passes before the VPN's deny-all: nothing when there is no
/// deny-all or every rule is already there before it; each new rule gets the highest free
/// number below the deny-all. An error when the numbers below it are used up.
pub fn plan(rules: &[Rule], scope: &Scope) -> Result<Vec<Add>, String> {
    crate::validate::interface(&scope.ifname)?;
    let Some(deny) = deny_all(rules) else {
        return Ok(Vec::new());
    };
    let mut used: Vec<u32> = rules.iter().map(|r| r.number).collect();
    let mut out = Vec::new();
    for net in &scope.nets {
        for d in [Direction::Out, Direction::In] {
            if rules
                .iter()
                .any(|r| r.number < deny.number && is(&r.body, d, *net, &scope.ifname))
            {
                continue;
            }
            let b = body(d, *net, &scope.ifname);
            let number = (1..deny.number)
                .rev()
                .find(|n| !used.contains(n))
                .ok_or_else(|| {
                    format!(
                        "no free ipfw rule number below the VPN's deny-all (rule {})",
                        deny.number
                    )
                })?;
            used.push(number);
            out.push(Add { number, body: b });
        }
    }
    Ok(out)
}

/// dockroute's rules now: the recorded `numbers` whose rules all have dockroute's shape (a
/// number reused by someone else is not dockroute's, and neither is one that also holds
/// someone else's rule: `ipfw delete N` would delete that too).
pub fn owned<'a>(rules: &'a [Rule], numbers: &[u32]) -> Vec<&'a Rule> {
    rules
        .iter()
        .filter(|r| numbers.contains(&r.number))
        .filter(|r| {
            rules
                .iter()
                .filter(|o| o.number == r.number)
                .all(|o| shape(&o.body).is_some())
        })
        .collect()
}

/// What ipfw needs and holds, from its listing and the numbers the record keeps.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// dockroute's rules that stay (before the deny-all) and the ones to add (numbered).
    pub desired: Vec<Repair>,
    /// dockroute's rules in place (recorded number, its shape alone at that number).
    pub owned: Vec<Repair>,
    /// Recorded numbers left alone, and why.
    pub warnings: Vec<String>,
}

/// Read `rules` against the `recorded` numbers and (`up`, `status`) what `scope` needs: each
/// of dockroute's rules that sits before the VPN's deny-all and is still wanted stays, the
/// missing ones are planned ([`plan`]). Without `scope` (`down`) nothing is desired.
pub fn observe(
    rules: &[Rule],
    recorded: &[u32],
    scope: Option<&Scope>,
) -> Result<Observed, String> {
    let mut o = Observed::default();
    let mine = owned(rules, recorded);
    for n in recorded {
        let at: Vec<&Rule> = rules.iter().filter(|r| r.number == *n).collect();
        if !at.is_empty() && !mine.iter().any(|r| r.number == *n) {
            o.warnings.push(format!(
                "ipfw rule {n} (recorded as dockroute's) now holds a rule that is not dockroute's ({}): left alone",
                at.iter().map(|r| r.body.as_str()).collect::<Vec<_>>().join("; ")
            ));
        }
    }
    for r in &mine {
        if let Some((d, net, ifname)) = shape(&r.body) {
            o.owned.push(repair(r.number, d, net, ifname));
        }
    }
    let Some(scope) = scope else {
        return Ok(o);
    };
    let adds = plan(rules, scope)?;
    if let Some(deny) = deny_all(rules) {
        for net in &scope.nets {
            for d in [Direction::Out, Direction::In] {
                let kept = mine
                    .iter()
                    .find(|r| r.number < deny.number && is(&r.body, d, *net, &scope.ifname));
                if let Some(r) = kept {
                    o.desired.push(repair(r.number, d, *net, &scope.ifname));
                }
            }
        }
    }
    for a in adds {
        if let Some((d, net, ifname)) = shape(&a.body) {
            o.desired.push(repair(a.number, d, net, ifname));
        }
    }
    Ok(o)
}

/// What to do with dockroute's rule `r` given the listing right before: add it (`Ok(true)`:
/// its number is free) or delete it (`Ok(true)`: its number holds exactly dockroute's rules,
/// this one among them). `Ok(false)`: nothing to do (an add whose rule is there already at that
/// number, a delete whose rule is gone). `Err`: the number holds something else.
pub fn check(rules: &[Rule], r: &Repair, adding: bool) -> Result<bool, String> {
    let n = number(r).ok_or_else(|| format!("ipfw rule without a valid number: {r:?}"))?;
    let at: Vec<&Rule> = rules.iter().filter(|x| x.number == n).collect();
    let this = |x: &&Rule| is(&x.body, r.direction, r.net, &r.ifname);
    let all_ours = at.iter().all(|x| shape(&x.body).is_some());
    match (adding, at.is_empty()) {
        (true, true) => Ok(true),
        (true, false) if at.len() == 1 && at.iter().any(this) => Ok(false),
        (false, true) => Ok(false),
        (false, false) if all_ours && at.iter().any(this) => Ok(true),
        (false, false) if all_ours => Ok(false),
        _ => Err(format!(
            "ipfw rule number {n} holds a rule that is not dockroute's ({}): left alone",
            at.iter()
                .map(|x| x.body.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        )),
    }
}

/// Running /sbin/ipfw (macOS only).
#[cfg(target_os = "macos")]
pub mod run {
    use super::*;
    use crate::firewall::{FirewallError, FwChange};

    fn ipfw(args: &[String]) -> Result<String, FirewallError> {
        Ok(crate::exec::run("ipfw", args, None)?)
    }

    /// `ipfw list`.
    pub fn list() -> Result<Vec<Rule>, FirewallError> {
        Ok(parse(&ipfw(&["list".to_string()])?))
    }

    /// Add or delete one of dockroute's rules, after checking its number against the listing.
    pub fn apply(change: &FwChange) -> Result<(), FirewallError> {
        let (rule, adding) = match change {
            FwChange::Insert { rule } => (rule, true),
            FwChange::Delete { rule, .. } => (rule, false),
        };
        let refused = |msg: String| FirewallError::Parse {
            program: "ipfw".into(),
            msg,
        };
        if !check(&list()?, rule, adding).map_err(refused)? {
            tracing::info!("ipfw: nothing to do for {rule}");
            return Ok(());
        }
        let args = if adding {
            add_args(rule).map_err(refused)?
        } else {
            let n = number(rule).ok_or_else(|| refused(format!("no rule number: {rule:?}")))?;
            delete_args(n)
        };
        ipfw(&args).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ipfw list` while an old VPN client's rules are in place.
    const LIST: &str = "\
00100 allow ip from any to any via lo0
00200 allow udp from any to any dst-port 53
01000 deny ip from any to any
65535 allow ip from any to any
";

    /// `ipfw show`, with packet and byte counters.
    const SHOW: &str = "\
00100      12       1008 allow ip from any to any via lo0
00997       0          0 allow ip from any to 172.17.0.0/16 via vboxnet0
01000     311      40120 deny ip from any to any
65535 1937162 1418027316 allow ip from any to any
";

    fn scope() -> Scope {
        Scope {
            ifname: "vboxnet0".into(),
            nets: vec!["172.17.0.0/16".parse().unwrap()],
        }
    }

    #[test]
    fn reads_list_and_show() {
        let l = parse(LIST);
        assert_eq!(l.len(), 4);
        assert_eq!(l[2].body, "deny ip from any to any");
        assert_eq!(l[0].packets, None);
        let s = parse(SHOW);
        assert_eq!(
            (s[2].number, s[2].packets, s[2].bytes),
            (1000, Some(311), Some(40120))
        );
        assert_eq!(s[2].body, "deny ip from any to any");
        assert!(
            parse("Flushed all rules.\nipfw: getsockopt(IP_FW_GET): Operation not permitted\n")
                .is_empty()
        );
    }

    #[test]
    fn allows_go_just_below_the_deny_all() {
        let adds = plan(&parse(LIST), &scope()).unwrap();
        assert_eq!(
            adds.iter().map(|a| a.args().join(" ")).collect::<Vec<_>>(),
            [
                "add 999 allow ip from any to 172.17.0.0/16 via vboxnet0",
                "add 998 allow ip from 172.17.0.0/16 to any via vboxnet0",
            ]
        );
        // one of them is there already (rule 997): only the other is added, at a free number
        let adds = plan(&parse(SHOW), &scope()).unwrap();
        assert_eq!(adds.len(), 1);
        assert_eq!(adds[0].number, 999);
        assert!(adds[0].body.starts_with("allow ip from 172.17.0.0/16"));
        // no deny-all: nothing to repair
        assert!(
            plan(
                &parse("00100 allow ip from any to any via lo0\n65535 allow ip from any to any\n"),
                &scope()
            )
            .unwrap()
            .is_empty()
        );
        // rules 1..=2 taken, deny at 3: there is no room
        let full = parse(
            "00001 allow ip from any to any via lo0\n00002 count ip from any to any\n00003 deny ip from any to any\n",
        );
        assert!(
            plan(&full, &scope())
                .unwrap_err()
                .contains("no free ipfw rule number")
        );
        let mut bad = scope();
        bad.ifname = "en0 via any".into();
        assert!(plan(&parse(LIST), &bad).is_err());
    }

    #[test]
    fn add_and_delete_argument_vectors() {
        let r = repair(
            999,
            Direction::Out,
            "172.17.0.0/16".parse().unwrap(),
            "vboxnet0",
        );
        assert_eq!(
            add_args(&r).unwrap(),
            [
                "add",
                "999",
                "allow",
                "ip",
                "from",
                "any",
                "to",
                "172.17.0.0/16",
                "via",
                "vboxnet0"
            ]
        );
        let r = repair(
            998,
            Direction::In,
            "192.168.99.100/32".parse().unwrap(),
            "vboxnet0",
        );
        assert_eq!(
            add_args(&r).unwrap().join(" "),
            "add 998 allow ip from 192.168.99.100/32 to any via vboxnet0"
        );
        assert_eq!(delete_args(998), ["delete", "998"]);
        // no number, ipfw's default rule's number, or a name that smuggles ipfw syntax
        let mut bad = r.clone();
        bad.handle = None;
        assert!(add_args(&bad).is_err());
        bad.handle = Some(65535);
        assert!(add_args(&bad).is_err());
        bad.handle = Some(u64::from(u32::MAX) + 1);
        assert!(add_args(&bad).is_err());
        let mut bad = r;
        bad.ifname = "en0 or any".into();
        assert!(add_args(&bad).is_err());
    }

    #[test]
    fn reads_a_host_rule_as_printed_and_refuses_other_shapes() {
        assert_eq!(
            shape("allow ip from 192.168.99.100 to any via vboxnet0"),
            Some((
                Direction::In,
                "192.168.99.100/32".parse().unwrap(),
                "vboxnet0"
            ))
        );
        for b in [
            "allow ip from any to any via vboxnet0",
            "allow tcp from any to 172.17.0.0/16 via vboxnet0",
            "allow ip from any to 172.17.0.0/16 via vboxnet0 keep-state",
            "allow ip from any to 172.17.0.0/16",
            "deny ip from any to 172.17.0.0/16 via vboxnet0",
            "allow ip from 10.0.0.0/8 to 172.17.0.0/16 via vboxnet0",
        ] {
            assert_eq!(shape(b), None, "{b}");
        }
        // a host rule printed bare is recognised as already there: nothing planned twice
        let mut s = scope();
        s.nets = vec!["192.168.99.100/32".parse().unwrap()];
        let listed = parse(
            "00998 allow ip from 192.168.99.100 to any via vboxnet0\n\
             00999 allow ip from any to 192.168.99.100 via vboxnet0\n\
             01000 deny ip from any to any\n",
        );
        assert!(plan(&listed, &s).unwrap().is_empty());
    }

    #[test]
    fn up_plans_then_keeps_its_rules_and_records_their_numbers() {
        // first up: both rules planned just below the VPN's deny-all
        let o = observe(&parse(LIST), &[], Some(&scope())).unwrap();
        assert!(o.owned.is_empty());
        let numbers: Vec<Option<u64>> = o.desired.iter().map(|r| r.handle).collect();
        assert_eq!(numbers, [Some(999), Some(998)]);
        // once added and recorded: both are owned and desired, so diff changes nothing
        let after = format!(
            "{LIST}00999 allow ip from any to 172.17.0.0/16 via vboxnet0\n00998 allow ip from 172.17.0.0/16 to any via vboxnet0\n"
        );
        let rules = parse(&after);
        let o = observe(&rules, &[998, 999], Some(&scope())).unwrap();
        assert_eq!(o.owned.len(), 2);
        let owned: Vec<(Repair, Vec<String>)> =
            o.owned.iter().map(|r| (r.clone(), vec![])).collect();
        assert!(super::super::diff(&o.desired, &owned).is_empty());
        // the same rule at a number dockroute did not record (an admin's) is not planned again,
        // not owned, and not desired: it is left alone
        let o = observe(&rules, &[], Some(&scope())).unwrap();
        assert!(o.owned.is_empty() && o.desired.is_empty(), "{o:?}");
        // the VPN renumbered its deny-all below dockroute's rules: they move before it
        let moved = parse(
            "00100 allow ip from any to any via lo0\n00500 deny ip from any to any\n\
             00999 allow ip from any to 172.17.0.0/16 via vboxnet0\n",
        );
        let o = observe(&moved, &[999], Some(&scope())).unwrap();
        let owned: Vec<(Repair, Vec<String>)> =
            o.owned.iter().map(|r| (r.clone(), vec![])).collect();
        let c = super::super::diff(&o.desired, &owned);
        let lines: Vec<String> = c.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            lines,
            [
                "- firewall ipfw 999 allow ip from any to 172.17.0.0/16 via vboxnet0",
                "+ firewall ipfw 499 allow ip from any to 172.17.0.0/16 via vboxnet0",
                "+ firewall ipfw 498 allow ip from 172.17.0.0/16 to any via vboxnet0",
            ]
        );
    }

    #[test]
    fn down_deletes_only_recorded_numbers_of_dockroutes_shape() {
        let listed = parse(
            "00100 allow ip from any to any via lo0\n\
             00997 allow ip from any to 172.17.0.0/16 via vboxnet0\n\
             00998 allow ip from 172.17.0.0/16 to any via vboxnet0\n\
             00998 deny tcp from any to any dst-port 22\n\
             00999 allow ip from any to 192.168.99.0/24 via vboxnet0\n\
             01000 deny ip from any to any\n\
             65535 allow ip from any to any\n",
        );
        // recorded: 997 (ours), 998 (shared with someone's deny: ipfw delete 998 would take it
        // too), 1000 (the VPN's deny-all, reused number), 4242 (gone). 999 is of dockroute's
        // shape but not recorded.
        let o = observe(&listed, &[997, 998, 1000, 4242], None).unwrap();
        assert!(o.desired.is_empty());
        let owned: Vec<(Repair, Vec<String>)> =
            o.owned.iter().map(|r| (r.clone(), vec![])).collect();
        let c = super::super::diff(&[], &owned);
        let lines: Vec<String> = c.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            lines,
            ["- firewall ipfw 997 allow ip from any to 172.17.0.0/16 via vboxnet0"]
        );
        assert_eq!(o.warnings.len(), 2, "{:?}", o.warnings);
        assert!(o.warnings[0].contains("rule 998") && o.warnings[1].contains("rule 1000"));
    }

    #[test]
    fn each_add_and_delete_is_checked_against_the_listing_right_before() {
        let listed = parse(SHOW);
        let at = |n: u32, d: Direction| repair(n, d, "172.17.0.0/16".parse().unwrap(), "vboxnet0");
        // add: a free number, or the same rule there already, or someone else's number
        assert_eq!(check(&listed, &at(999, Direction::Out), true), Ok(true));
        assert_eq!(check(&listed, &at(997, Direction::Out), true), Ok(false));
        assert!(check(&listed, &at(1000, Direction::Out), true).is_err());
        assert!(check(&listed, &at(997, Direction::In), true).is_err());
        // delete: exactly ours, gone, or not ours (never deleted)
        assert_eq!(check(&listed, &at(997, Direction::Out), false), Ok(true));
        assert_eq!(check(&listed, &at(999, Direction::Out), false), Ok(false));
        assert!(check(&listed, &at(1000, Direction::Out), false).is_err());
        assert!(check(&listed, &at(100, Direction::Out), false).is_err());
    }

    #[test]
    fn owned_means_recorded_number_and_dockroutes_shape() {
        let s = parse(SHOW);
        assert_eq!(owned(&s, &[997]).len(), 1);
        assert!(
            owned(&s, &[100]).is_empty(),
            "rule 100 is not of dockroute's shape"
        );
        assert!(owned(&s, &[998]).is_empty(), "not there");
    }
}
