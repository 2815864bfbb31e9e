//! iptables (the nf_tables backend and the legacy one): find what drops traffic between the host
//! and the VM, and the narrow rules that let it through. Parsing and the walk are pure; the
//! program runs with argument vectors only.

use super::walk::{self, Chain, Rule};
use super::{Direction, Foreign, Repair, Scope, TAG};
use ipnet::Ipv4Net;

/// Options whose value iptables prints raw (interface names, which may contain `"` or `\`
/// but never whitespace).
const RAW_VALUE: &[&str] = &["-i", "-o", "--in-interface", "--out-interface"];

/// Split an `iptables -S` line into words. iptables quotes a value (a comment) only when it
/// needs to, in double quotes with `"` and `\` escaped by a backslash; interface names are
/// printed raw, so the word after `-i`/`-o` is taken as is, and a `"` inside a word is literal.
pub fn words(line: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut rest = line;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        let raw = out.last().is_some_and(|w| RAW_VALUE.contains(&w.as_str()));
        if !raw && let Some(quoted) = rest.strip_prefix('"') {
            let mut word = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            word.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => word.push(c),
                }
            }
            out.push(word);
            rest = &quoted[end..];
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            out.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    out
}

fn parse_rule(w: &[String]) -> Rule {
    let mut r = Rule {
        chain: w.get(1).cloned().unwrap_or_default(),
        words: w[1..].to_vec(),
        source: w.join(" "),
        ..Default::default()
    };
    let mut i = 2;
    let mut neg = false;
    while i < w.len() {
        let opt = w[i].as_str();
        let val = w.get(i + 1).cloned().unwrap_or_default();
        match opt {
            "!" => {
                neg = true;
                i += 1;
                continue;
            }
            "-i" => r.extra |= r.iif.replace((neg, val)).is_some(),
            "-o" => r.extra |= r.oif.replace((neg, val)).is_some(),
            "-s" | "-d" => match val
                .parse::<Ipv4Net>()
                .or_else(|_| val.parse::<std::net::Ipv4Addr>().map(Ipv4Net::from))
            {
                Ok(n) if opt == "-s" => r.extra |= r.src.replace((neg, n)).is_some(),
                Ok(n) => r.extra |= r.dst.replace((neg, n)).is_some(),
                Err(_) => r.other = true,
            },
            "-j" | "-g" => r.extra |= r.target.replace(val).is_some() || opt == "-g",
            "-m" if val == "comment" => {}
            "--comment" => r.extra |= r.comment.replace(val).is_some(),
            _ if opt.starts_with('-') => {
                r.other = true;
                // skip this option's values (they do not start with '-')
                i += 1;
                while i < w.len() && !w[i].starts_with('-') && w[i] != "!" {
                    i += 1;
                }
                neg = false;
                continue;
            }
            _ => {}
        }
        neg = false;
        i += 2;
    }
    r
}

/// Parse `iptables -S` (one table).
pub fn parse(text: &str) -> Vec<Chain> {
    let mut chains: Vec<Chain> = Vec::new();
    let chain_mut = |chains: &mut Vec<Chain>, name: &str| -> usize {
        match chains.iter().position(|c| c.name == name) {
            Some(i) => i,
            None => {
                chains.push(Chain {
                    name: name.to_string(),
                    ..Default::default()
                });
                chains.len() - 1
            }
        }
    };
    for line in text.lines() {
        let w = words(line);
        match w.first().map(String::as_str) {
            Some("-P") if w.len() >= 3 => {
                let i = chain_mut(&mut chains, &w[1]);
                chains[i].policy = Some(w[2].clone());
            }
            Some("-N") if w.len() >= 2 => {
                chain_mut(&mut chains, &w[1]);
            }
            Some("-A") if w.len() >= 2 => {
                let i = chain_mut(&mut chains, &w[1]);
                chains[i].rules.push(parse_rule(&w));
            }
            _ => {}
        }
    }
    chains
}

/// The repairs one iptables backend's filter table needs (`label` names the backend).
pub fn plan(label: &str, chains: &[Chain], scope: &Scope) -> walk::Plan {
    let entries = [("OUTPUT", Direction::Out), ("INPUT", Direction::In)];
    walk::plan(label, "filter", chains, &entries, scope)
}

/// dockroute's rules in one backend's filter table, with the words to delete each
/// ([`walk::ours`]: its tag and exactly its shape); those at the places in `misplaced` marked so.
pub fn owned(
    label: &str,
    chains: &[Chain],
    misplaced: &[(String, usize)],
) -> Vec<(Repair, Vec<String>)> {
    let mut out = Vec::new();
    for c in chains {
        for (i, r) in c.rules.iter().enumerate().filter(|(_, r)| walk::ours(r)) {
            let mut repair = walk::owned_repair(label, "filter", &r.chain, r);
            repair.misplaced = misplaced.contains(&(c.name.clone(), i));
            out.push((repair, r.words.clone()));
        }
    }
    out
}

/// Rules that carry dockroute's tag but not its shape: someone else's, left alone.
pub fn foreign(label: &str, chains: &[Chain]) -> Vec<Foreign> {
    chains
        .iter()
        .flat_map(|c| c.rules.iter())
        .filter(|r| r.comment.as_deref() == Some(TAG) && !walk::ours(r))
        .map(|r| Foreign {
            backend: label.to_string(),
            table: "filter".into(),
            chain: r.chain.clone(),
            rule: r.source.clone(),
        })
        .collect()
}

/// The rule as `iptables -S` would show it after `-A`: `CHAIN -o IF -d NET ... -j VERDICT`.
pub fn rule_words(r: &Repair) -> Vec<String> {
    let (iface_opt, net_opt) = match r.direction {
        Direction::Out => ("-o", "-d"),
        Direction::In => ("-i", "-s"),
    };
    let net = r.net.to_string();
    [
        r.chain.as_str(),
        iface_opt,
        &r.ifname,
        net_opt,
        &net,
        "-m",
        "comment",
        "--comment",
        TAG,
        "-j",
        &r.verdict,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The arguments that insert `r` at the top of its chain.
pub fn insert_args(r: &Repair) -> Vec<String> {
    let mut words = rule_words(r);
    let mut a = vec!["-w".to_string(), "-t".into(), r.table.clone(), "-I".into()];
    a.push(words.remove(0));
    a.push("1".into());
    a.extend(words);
    a
}

/// The arguments that delete the rule `iptables -S` showed as `-A WORDS`.
pub fn delete_args(table: &str, words: &[String]) -> Vec<String> {
    let mut a = vec!["-w".to_string(), "-t".into(), table.into(), "-D".into()];
    a.extend(words.iter().cloned());
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::test_scope as scope;

    fn spots(text: &str) -> Vec<String> {
        plan("iptables", &parse(text), &scope())
            .repairs
            .iter()
            .map(|r| format!("{} {:?} {} {}", r.chain, r.direction, r.net, r.verdict))
            .collect()
    }

    const ANYCONNECT: &str = "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n-N ciscovpn\n-A INPUT -j ciscovpn\n-A OUTPUT -j ciscovpn\n-A ciscovpn -o lo -j RETURN\n-A ciscovpn -i lo -j RETURN\n-A ciscovpn -o cscotun0 -j RETURN\n-A ciscovpn -i cscotun0 -j RETURN\n-A ciscovpn -j DROP\n";

    #[test]
    fn parses_quoted_comments_and_negations() {
        let c = parse(
            "-A OUTPUT ! -o tun0 -m comment --comment \"wg-quick(8) rule for wg0\" -m mark --mark 0xca6c -j DROP\n",
        );
        let r = &c[0].rules[0];
        assert_eq!(r.oif, Some((true, "tun0".into())));
        assert_eq!(r.comment.as_deref(), Some("wg-quick(8) rule for wg0"));
        assert!(r.other);
        assert_eq!(r.target.as_deref(), Some("DROP"));
        assert_eq!(r.words[0], "OUTPUT");
    }

    #[test]
    fn anyconnect_chain_gets_returns_in_both_directions() {
        let s = spots(ANYCONNECT);
        assert_eq!(
            s,
            [
                "ciscovpn Out 172.17.0.0/16 RETURN",
                "ciscovpn Out 192.168.99.0/24 RETURN",
                "ciscovpn In 172.17.0.0/16 RETURN",
                "ciscovpn In 192.168.99.0/24 RETURN",
            ]
        );
    }

    #[test]
    fn policy_drop_gets_accepts_after_the_rules_that_do_not_help() {
        let s = spots(
            "-P INPUT DROP\n-P OUTPUT DROP\n-A INPUT -i lo -j ACCEPT\n-A OUTPUT -o lo -j ACCEPT\n-A OUTPUT -o tun0 -j ACCEPT\n",
        );
        assert_eq!(s.len(), 4);
        assert!(s.iter().any(|l| l == "OUTPUT Out 172.17.0.0/16 ACCEPT"));
        assert!(s.iter().any(|l| l == "INPUT In 192.168.99.0/24 ACCEPT"));
    }

    #[test]
    fn nothing_to_repair_when_our_traffic_is_accepted_first_or_never_dropped() {
        assert!(spots("-P INPUT ACCEPT\n-P OUTPUT ACCEPT\n").is_empty());
        assert!(spots("-P INPUT DROP\n-P OUTPUT DROP\n-A INPUT -i vboxnet0 -j ACCEPT\n-A OUTPUT -o vboxnet+ -j ACCEPT\n").is_empty());
        // a drop that only concerns another interface
        assert!(spots("-P OUTPUT ACCEPT\n-A OUTPUT -o eth0 -j DROP\n").is_empty());
        // a drop for another network entirely
        assert!(spots("-P OUTPUT ACCEPT\n-A OUTPUT -d 10.0.0.0/8 -j DROP\n").is_empty());
    }

    #[test]
    fn a_conditional_accept_does_not_count_as_letting_us_through() {
        let s = spots(
            "-P OUTPUT DROP\n-P INPUT ACCEPT\n-A OUTPUT -o vboxnet0 -p tcp --dport 22 -j ACCEPT\n",
        );
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn dockroute_rules_are_ignored_when_judging_and_found_when_owned() {
        let with_ours = format!(
            "{ANYCONNECT}-A ciscovpn -d 172.17.0.0/16 -o vboxnet0 -m comment --comment dockroute -j RETURN\n"
        );
        assert_eq!(spots(&with_ours).len(), 4);
        let owned = owned("iptables", &parse(&with_ours), &[]);
        assert_eq!(owned.len(), 1);
        assert_eq!(owned[0].0.direction, Direction::Out);
        assert_eq!(owned[0].0.net.to_string(), "172.17.0.0/16");
        assert_eq!(
            delete_args("filter", &owned[0].1).join(" "),
            "-w -t filter -D ciscovpn -d 172.17.0.0/16 -o vboxnet0 -m comment --comment dockroute -j RETURN"
        );
    }

    #[test]
    fn quotes_in_interface_names_and_comments() {
        // what iptables -S prints for `-o 'vb"x0'` and for `-o '"vb'` with a quoted comment
        let text = "-A OUTPUT -d 172.17.0.0/16 -o vb\"x0 -m comment --comment dockroute -j ACCEPT\n\
                    -A OUTPUT -o \"vb -m comment --comment \"say \\\"hi\\\" \\\\ there\" -j ACCEPT\n";
        let c = parse(text);
        let (a, b) = (&c[0].rules[0], &c[0].rules[1]);
        assert_eq!(a.oif, Some((false, "vb\"x0".into())));
        assert_eq!(a.comment.as_deref(), Some(TAG));
        assert!(walk::ours(a));
        assert_eq!(
            delete_args("filter", &a.words).join(" "),
            "-w -t filter -D OUTPUT -d 172.17.0.0/16 -o vb\"x0 -m comment --comment dockroute -j ACCEPT"
        );
        assert_eq!(b.oif, Some((false, "\"vb".into())));
        assert_eq!(b.comment.as_deref(), Some("say \"hi\" \\ there"));
        assert_eq!(b.target.as_deref(), Some("ACCEPT"));
        assert!(!b.other);
    }

    #[test]
    fn tagged_rules_of_another_shape_are_foreign() {
        let text = "-P INPUT ACCEPT\n\
            -A INPUT -p tcp -m tcp --dport 22 -m comment --comment dockroute -j DROP\n\
            -A OUTPUT -o vboxnet0 -d 172.17.0.0/16 -m comment --comment dockroute -j DROP\n\
            -A OUTPUT -o vboxnet0 -s 172.17.0.0/16 -m comment --comment dockroute -j ACCEPT\n\
            -A OUTPUT ! -o vboxnet0 -d 172.17.0.0/16 -m comment --comment dockroute -j ACCEPT\n\
            -A OUTPUT -o vboxnet0 -d 172.17.0.0/16 -m comment --comment dockroute -j ACCEPT\n";
        let chains = parse(text);
        let owned = owned("iptables", &chains, &[]);
        assert_eq!(owned.len(), 1);
        assert_eq!(owned[0].0.chain, "OUTPUT");
        let foreign = foreign("iptables", &chains);
        assert_eq!(foreign.len(), 4, "{foreign:?}");
        assert_eq!(
            foreign[0].rule,
            "-A INPUT -p tcp -m tcp --dport 22 -m comment --comment dockroute -j DROP"
        );
        // and the walk judges them like anyone's rules: the tagged DROP blocks
        assert_eq!(spots("-P OUTPUT ACCEPT\n-A OUTPUT -o vboxnet0 -d 172.17.0.0/16 -m comment --comment dockroute -j DROP\n").len(), 2);
    }

    #[test]
    fn insert_args_are_narrow() {
        let r = &plan("iptables", &parse(ANYCONNECT), &scope()).repairs[2];
        assert_eq!(
            insert_args(r).join(" "),
            "-w -t filter -I ciscovpn 1 -i vboxnet0 -s 172.17.0.0/16 -m comment --comment dockroute -j RETURN"
        );
    }
}
