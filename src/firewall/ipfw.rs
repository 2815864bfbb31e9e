//! ipfw (OS X 10.9 and older, where `/sbin/ipfw` exists): reading its rule list and planning
//! `allow` rules numbered before a VPN's `deny ip from any to any`. Pure.
//!
//! **Not wired, and it cannot be: dockroute does not run where ipfw exists.** Rust's standard
//! library targets macOS 10.12 and later on x86_64-apple-darwin (`rustc --print
//! deployment-target` says `MACOSX_DEPLOYMENT_TARGET=10.12`; older releases are unsupported
//! since Rust 1.74) and macOS 11.0 on aarch64-apple-darwin, while `/sbin/ipfw` was removed in
//! OS X 10.10. On every macOS dockroute runs on, pf is the firewall ([`super::pf`]). This
//! parser and plan stay, tested, for a build with an older toolchain; wiring them would add
//! `up`/`down` code no supported system can reach.
//!
//! ipfw runs rules in number order and the first match decides, so an `allow` numbered below
//! the VPN's deny-all lets the VM's traffic through while the VPN's rule stays as it was. ipfw
//! rules carry no comment, so dockroute's are identified by their numbers (which `up` records)
//! together with their exact shape: `allow ip from any to NET via IF` and
//! `allow ip from NET to any via IF`.

use super::{Direction, Scope};
use ipnet::Ipv4Net;

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
            let b = body(d, *net, &scope.ifname);
            if rules.iter().any(|r| r.number < deny.number && r.body == b) {
                continue;
            }
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

/// dockroute's rules now: the recorded `numbers` whose rule still has dockroute's shape (a
/// number reused by someone else is not dockroute's).
pub fn owned<'a>(rules: &'a [Rule], numbers: &[u32]) -> Vec<&'a Rule> {
    rules
        .iter()
        .filter(|r| numbers.contains(&r.number))
        .filter(|r| {
            let w: Vec<&str> = r.body.split_whitespace().collect();
            matches!(
                w.as_slice(),
                ["allow", "ip", "from", "any", "to", net, "via", _]
                | ["allow", "ip", "from", net, "to", "any", "via", _]
                if net.parse::<Ipv4Net>().is_ok()
            )
        })
        .collect()
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
