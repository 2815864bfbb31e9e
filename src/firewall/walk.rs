//! The model both backends are read into, and the walk that finds what drops traffic between
//! the host and the VM. Pure.

use super::{Direction, Repair, Scope, TAG};
use ipnet::Ipv4Net;

/// One rule, as far as the walk needs it (an iptables `-A` line or an nftables rule).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    /// iptables: the words after `-A`, for deleting exactly this rule with `-D`.
    pub words: Vec<String>,
    /// nftables: the rule's handle.
    pub handle: Option<u64>,
    pub iif: Option<(bool, String)>,
    pub oif: Option<(bool, String)>,
    pub src: Option<(bool, Ipv4Net)>,
    pub dst: Option<(bool, Ipv4Net)>,
    /// Other conditions (protocol, state, marks, ...): the rule may or may not match.
    pub other: bool,
    /// Anything besides one condition of each kind and one verdict (counters, logs, a condition
    /// given twice, a statement dockroute cannot read): not a rule of dockroute's shape.
    pub extra: bool,
    pub target: Option<String>,
    pub comment: Option<String>,
    /// The rule as the backend printed it (for messages).
    pub source: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    /// The policy of a built-in (iptables) or base (nftables) chain; `None` for a vendor chain.
    pub policy: Option<String>,
    pub rules: Vec<Rule>,
}

fn iface_matches(pattern: &str, name: &str) -> bool {
    // iptables writes wildcards as `vboxnet+`, nftables as `vboxnet*`
    match pattern
        .strip_suffix('+')
        .or_else(|| pattern.strip_suffix('*'))
    {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// (could match some of our packets, surely matches all of them)
fn matches(r: &Rule, dir: Direction, scope: &Scope) -> (bool, bool) {
    let mut could = true;
    let mut surely = !r.other;
    let (iface, other_iface, peer, local) = match dir {
        Direction::Out => (&r.oif, &r.iif, &r.dst, &r.src),
        Direction::In => (&r.iif, &r.oif, &r.src, &r.dst),
    };
    // Locally generated packets have no input interface, received ones no output interface:
    // `-i X` never matches in OUTPUT, `! -i X` always does (and the same for `-o` in INPUT).
    if let Some((neg, _)) = other_iface
        && !neg
    {
        return (false, false);
    }
    if let Some((neg, pat)) = iface {
        let m = iface_matches(pat, &scope.ifname) != *neg;
        could &= m;
        surely &= m;
    }
    if let Some((neg, net)) = peer {
        let any = scope
            .nets
            .iter()
            .any(|n| net.contains(&n.network()) || n.contains(&net.network()));
        let all = scope.nets.iter().all(|n| net.contains(n));
        let (c, s) = if *neg { (!all, !any) } else { (any, all) };
        could &= c;
        surely &= s;
    }
    if local.is_some() {
        surely = false; // the host's own address: not worth deciding
    }
    (could, surely)
}

#[derive(Clone, Copy)]
enum Flow {
    /// Accepted (or dropped) for good: stop.
    Done,
    /// Fell off the end of a user chain, or RETURNed: the caller goes on.
    Continue,
}

const MAX_DEPTH: usize = 16;

/// The chains walked from one entry, by name and depth, and how the walk left them. Many rules
/// may jump to one chain: it is walked once per depth, not once per path (paths multiply with
/// every level of jumps).
type Walked = std::collections::HashMap<(String, usize), Flow>;

/// A place where the walk found traffic dropped: the chain, the direction, the verdict a repair
/// there takes, and the index of the rule that drops it (`None`: the chain's policy). A repair
/// works only above that rule.
type Spot = (String, Direction, &'static str, Option<usize>);

/// One walk from an entry chain in one direction: the chains it reads, what it has walked so
/// far, and where it found spots to repair.
struct Walk<'a> {
    chains: &'a [Chain],
    dir: Direction,
    scope: &'a Scope,
    walked: Walked,
    out: &'a mut Vec<Spot>,
}

impl Walk<'_> {
    fn walk(&mut self, name: &str, depth: usize) -> Flow {
        let key = (name.to_string(), depth);
        if let Some(flow) = self.walked.get(&key) {
            return *flow; // its spots are in `out` already
        }
        let flow = self.walk_rules(name, depth);
        self.walked.insert(key, flow);
        flow
    }

    fn walk_rules(&mut self, name: &str, depth: usize) -> Flow {
        let (chains, dir, scope) = (self.chains, self.dir, self.scope);
        let Some(chain) = chains.iter().find(|c| c.name == name) else {
            return Flow::Continue;
        };
        let builtin = chain.policy.is_some();
        for (i, r) in chain.rules.iter().enumerate() {
            if ours(r) {
                continue; // judge the firewall as if dockroute's own rules were not there
            }
            let (could, surely) = matches(r, dir, scope);
            if !could {
                continue;
            }
            match r.target.as_deref() {
                Some("DROP" | "REJECT") => {
                    let verdict = if builtin { "ACCEPT" } else { "RETURN" };
                    self.out.push((chain.name.clone(), dir, verdict, Some(i)));
                    if !builtin {
                        return Flow::Continue; // our RETURN hands the packet back to the caller
                    }
                    // our ACCEPT at the top of a built-in chain ends the walk
                    return Flow::Done;
                }
                Some("ACCEPT") if surely => return Flow::Done,
                Some("RETURN") if surely => return Flow::Continue,
                Some(t) if depth < MAX_DEPTH && chains.iter().any(|c| c.name == t) => {
                    if let Flow::Done = self.walk(t, depth + 1) {
                        return Flow::Done;
                    }
                }
                _ => {}
            }
        }
        if builtin && matches!(chain.policy.as_deref(), Some("DROP" | "REJECT")) {
            self.out.push((chain.name.clone(), dir, "ACCEPT", None));
        }
        Flow::Continue
    }
}

/// What one table needs: the repairs, and where dockroute's rules are.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub repairs: Vec<Repair>,
    /// dockroute's rules (chain, index in it) that sit below the rule they are meant to get
    /// ahead of: someone inserted a drop above them (a VPN reconnecting puts its rules first).
    /// They do nothing there; they are deleted and inserted again at the top.
    pub misplaced: Vec<(String, usize)>,
}

/// The repairs for `chains` (one table), walking from each entry chain in its direction.
pub fn plan(
    backend: &str,
    table: &str,
    chains: &[Chain],
    entries: &[(&str, Direction)],
    scope: &Scope,
) -> Plan {
    let mut spots = Vec::new();
    for (chain, dir) in entries {
        Walk {
            chains,
            dir: *dir,
            scope,
            walked: Walked::new(),
            out: &mut spots,
        }
        .walk(chain, 0);
    }
    let mut out = Plan::default();
    for (chain, dir, verdict, before) in spots {
        if let (Some(before), Some(c)) = (before, chains.iter().find(|c| c.name == chain)) {
            for (i, r) in c.rules.iter().enumerate().skip(before + 1) {
                let spot = (chain.clone(), i);
                if ours(r) && facing(r).0 == dir && !out.misplaced.contains(&spot) {
                    out.misplaced.push(spot);
                }
            }
        }
        for net in &scope.nets {
            let r = Repair {
                backend: backend.to_string(),
                table: table.to_string(),
                chain: chain.clone(),
                direction: dir,
                net: *net,
                ifname: scope.ifname.clone(),
                verdict: verdict.to_string(),
                handle: None,
                table_handle: None,
                misplaced: false,
            };
            if !out.repairs.contains(&r) {
                out.repairs.push(r);
            }
        }
    }
    out
}

/// Which way one of dockroute's rules ([`ours`]) faces: out (`-o IF -d NET`) or in
/// (`-i IF -s NET`), with its link and network.
fn facing(r: &Rule) -> (Direction, &str, Option<Ipv4Net>) {
    match (&r.oif, &r.iif) {
        (Some((false, o)), _) => (Direction::Out, o, r.dst.map(|(_, n)| n)),
        (_, Some((false, i))) => (Direction::In, i, r.src.map(|(_, n)| n)),
        _ => (Direction::Out, "", None),
    }
}

/// Whether `r` is one of dockroute's rules: its tag, and exactly the shape dockroute inserts (an
/// accept or return for one link and one network, `-o IF -d NET` or `-i IF -s NET`, nothing else).
/// A tagged rule of any other shape is someone else's: never deleted, judged like any other rule,
/// and listed by `status` with a warning.
pub fn ours(r: &Rule) -> bool {
    r.comment.as_deref() == Some(TAG)
        && !r.other
        && !r.extra
        && matches!(r.target.as_deref(), Some("ACCEPT" | "RETURN"))
        && matches!(
            (&r.oif, &r.dst, &r.iif, &r.src),
            (Some((false, _)), Some((false, _)), None, None)
                | (None, None, Some((false, _)), Some((false, _)))
        )
}

/// The repair one of dockroute's rules ([`ours`]) stands for.
pub fn owned_repair(backend: &str, table: &str, chain: &str, r: &Rule) -> Repair {
    let (direction, iface, net) = facing(r);
    Repair {
        backend: backend.to_string(),
        table: table.to_string(),
        chain: chain.to_string(),
        direction,
        net: net.unwrap_or_default(),
        ifname: iface.to_string(),
        verdict: r.target.clone().unwrap_or_default(),
        handle: r.handle,
        table_handle: None,
        misplaced: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OUTPUT jumps to c0; every chain jumps six times to the next one (rules with other
    /// conditions, as a VPN's per-port rules would), and the last one drops. Found by the fuzzer
    /// (tests/fuzz, target iptables): the walk followed every path, 6^12 of them.
    #[test]
    fn a_chain_many_rules_jump_to_is_walked_once_per_depth_not_once_per_path() {
        const LEVELS: usize = 12;
        let jump = |to: String| Rule {
            other: true,
            target: Some(to),
            ..Default::default()
        };
        let mut chains = vec![Chain {
            name: "OUTPUT".into(),
            policy: Some("ACCEPT".into()),
            rules: vec![jump("c0".into())],
        }];
        for i in 0..LEVELS {
            let rules = if i + 1 < LEVELS {
                (0..6).map(|_| jump(format!("c{}", i + 1))).collect()
            } else {
                vec![Rule {
                    target: Some("DROP".into()),
                    ..Default::default()
                }]
            };
            chains.push(Chain {
                name: format!("c{i}"),
                policy: None,
                rules,
            });
        }
        let scope = Scope {
            ifname: "vboxnet0".into(),
            nets: vec!["172.17.0.0/16".parse().unwrap()],
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let entries = [("OUTPUT", Direction::Out)];
            tx.send(plan("iptables", "filter", &chains, &entries, &scope))
                .ok();
        });
        let planned = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the walk did not finish within 10 s");
        let spots: Vec<String> = planned.repairs.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            spots,
            ["iptables -t filter c11 -o vboxnet0 -d 172.17.0.0/16 -j RETURN (comment dockroute)"]
        );
    }

    #[test]
    fn dockroutes_rule_below_a_drop_is_misplaced_and_above_it_is_not() {
        let scope = crate::firewall::test_scope();
        let entries = [("OUTPUT", Direction::Out), ("INPUT", Direction::In)];
        let ours_out =
            "-A OUTPUT -d 172.17.0.0/16 -o vboxnet0 -m comment --comment dockroute -j ACCEPT\n";
        let ours_in =
            "-A INPUT -s 172.17.0.0/16 -i vboxnet0 -m comment --comment dockroute -j ACCEPT\n";
        let drops = "-A OUTPUT -o vboxnet0 -j DROP\n-A INPUT -j DROP\n";
        let below = crate::firewall::iptables::parse(&format!(
            "-P INPUT ACCEPT\n-P OUTPUT ACCEPT\n{drops}{ours_out}{ours_in}"
        ));
        let p = plan("iptables", "filter", &below, &entries, &scope);
        assert_eq!(
            p.misplaced,
            [("OUTPUT".to_string(), 1), ("INPUT".to_string(), 1)]
        );
        let above = crate::firewall::iptables::parse(&format!(
            "-P INPUT ACCEPT\n-P OUTPUT ACCEPT\n{ours_out}{ours_in}{drops}"
        ));
        let p = plan("iptables", "filter", &above, &entries, &scope);
        assert!(p.misplaced.is_empty(), "{:?}", p.misplaced);
        // under a policy drop with nothing else, a rule anywhere in the chain works
        let policy = crate::firewall::iptables::parse(&format!(
            "-P INPUT DROP\n-P OUTPUT DROP\n-A OUTPUT -o lo -j ACCEPT\n{ours_out}"
        ));
        let p = plan("iptables", "filter", &policy, &entries, &scope);
        assert!(p.misplaced.is_empty(), "{:?}", p.misplaced);
    }

    #[test]
    fn a_misplaced_rule_is_deleted_and_inserted_again() {
        let scope = crate::firewall::test_scope();
        let text = "-P OUTPUT ACCEPT\n-A OUTPUT -o vboxnet0 -j DROP\n\
            -A OUTPUT -d 172.17.0.0/16 -o vboxnet0 -m comment --comment dockroute -j ACCEPT\n";
        let chains = crate::firewall::iptables::parse(text);
        let p = crate::firewall::iptables::plan("iptables", &chains, &scope);
        let owned = crate::firewall::iptables::owned("iptables", &chains, &p.misplaced);
        let changes: Vec<String> = crate::firewall::diff(&p.repairs, &owned)
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert!(
            changes[0]
                .starts_with("- firewall iptables -t filter OUTPUT -o vboxnet0 -d 172.17.0.0/16"),
            "{changes:?}"
        );
        assert!(
            changes.iter().skip(1).any(|c| c
                .starts_with("+ firewall iptables -t filter OUTPUT -o vboxnet0 -d 172.17.0.0/16")),
            "{changes:?}"
        );
    }

    #[test]
    fn a_misplaced_copy_of_a_rule_kept_above_the_drop_is_left() {
        // iptables deletes the first rule with the given words: deleting the lower copy by its
        // words would take the upper one, which works, and leave the one that does not
        let scope = crate::firewall::test_scope();
        let ours =
            "-A OUTPUT -d 172.17.0.0/16 -o vboxnet0 -m comment --comment dockroute -j ACCEPT\n";
        let text = format!("-P OUTPUT ACCEPT\n{ours}-A OUTPUT -o vboxnet0 -j DROP\n{ours}");
        let chains = crate::firewall::iptables::parse(&text);
        let p = crate::firewall::iptables::plan("iptables", &chains, &scope);
        assert_eq!(p.misplaced, [("OUTPUT".to_string(), 2)]);
        let owned = crate::firewall::iptables::owned("iptables", &chains, &p.misplaced);
        let changes = crate::firewall::diff(&p.repairs, &owned);
        assert!(
            !changes
                .iter()
                .any(|c| matches!(c, crate::firewall::FwChange::Delete { .. })),
            "{changes:?}"
        );
    }

    #[test]
    fn misplaced_copies_go_when_no_kept_rule_shares_their_words() {
        // M is kept; D (other words, same rule) is a duplicate; X (D's words) sits below the
        // drop. D and X go, each deleted by their words (the first such rule each time).
        let scope = crate::firewall::test_scope();
        let text = "-P OUTPUT ACCEPT\n\
            -A OUTPUT -d 172.17.0.0/16 -o vboxnet0 -m comment --comment dockroute -j ACCEPT\n\
            -A OUTPUT -o vboxnet0 -d 172.17.0.0/16 -m comment --comment dockroute -j ACCEPT\n\
            -A OUTPUT -o vboxnet0 -j DROP\n\
            -A OUTPUT -o vboxnet0 -d 172.17.0.0/16 -m comment --comment dockroute -j ACCEPT\n";
        let chains = crate::firewall::iptables::parse(text);
        let p = crate::firewall::iptables::plan("iptables", &chains, &scope);
        let owned = crate::firewall::iptables::owned("iptables", &chains, &p.misplaced);
        let deleted: Vec<String> = crate::firewall::diff(&p.repairs, &owned)
            .into_iter()
            .filter_map(|c| match c {
                crate::firewall::FwChange::Delete { words, .. } => Some(words.join(" ")),
                _ => None,
            })
            .collect();
        let w2 = "OUTPUT -o vboxnet0 -d 172.17.0.0/16 -m comment --comment dockroute -j ACCEPT";
        assert_eq!(deleted, [w2, w2]);
    }
}
