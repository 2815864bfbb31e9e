//! `iptables -S` text -> chains (`firewall::iptables::parse`), and the walk and ownership on it.
//! Beyond "no panic":
//! - every rule that parses, written back as an `-A` line (quoted as iptables quotes: interface
//!   names raw), parses to the same rule;
//! - `up` is stable: once its changes are made (as iptables makes them: `-I CHAIN 1` at the
//!   top, `-D` the first rule with those words), reading the listing again gives the same
//!   repairs, the same foreign rules and nothing more to change.
#![no_main]

use dockroute::firewall::iptables::{foreign, owned, parse, plan, rule_words};
use dockroute::firewall::{FwChange, Scope, diff};
use libfuzzer_sys::fuzz_target;

/// One word as `iptables -S` prints it: an interface name (the word after `-i`/`-o`) raw, any
/// other word in double quotes (`"` and `\` escaped) when it needs them.
fn quote(w: &str, raw: bool) -> String {
    if raw
        || (!w.is_empty()
            && !w.starts_with('"')
            && !w.contains(|c: char| c.is_whitespace() || c == '"' || c == '\\'))
    {
        return w.to_string();
    }
    let mut out = String::from("\"");
    for c in w.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn line(words: &[String]) -> String {
    let mut l = String::from("-A");
    for (i, w) in words.iter().enumerate() {
        let raw = i > 0
            && matches!(
                words[i - 1].as_str(),
                "-i" | "-o" | "--in-interface" | "--out-interface"
            );
        l.push(' ');
        l.push_str(&quote(w, raw));
    }
    l
}

fn scope() -> Scope {
    Scope {
        ifname: "vboxnet0".into(),
        nets: vec![
            "172.17.0.0/16".parse().unwrap(),
            "192.168.99.0/24".parse().unwrap(),
        ],
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let chains = parse(text);
    for (i, c) in chains.iter().enumerate() {
        assert!(
            chains[..i].iter().all(|d| d.name != c.name),
            "chain {} twice",
            c.name
        );
        for r in &c.rules {
            assert_eq!(r.chain, c.name);
            assert_eq!(r.words.first(), Some(&c.name));
            let l = line(&r.words);
            let back = parse(&l);
            assert_eq!(back.len(), 1, "{l}");
            assert_eq!(back[0].rules, [r.clone()], "{l}");
        }
    }

    let scope = scope();
    let planned = plan("iptables", &chains, &scope);
    let desired = planned.repairs;
    for r in &desired {
        assert!(
            chains.iter().any(|c| c.name == r.chain),
            "repair in a missing chain: {r}"
        );
    }
    // `up`: its changes, applied the way iptables applies them (`-I CHAIN 1` puts the rule at the
    // top, `-D` deletes the first rule with those words); then the listing is read again
    let mut after = chains.clone();
    for change in diff(&desired, &owned("iptables", &chains, &planned.misplaced)) {
        match change {
            FwChange::Insert { rule: r } => {
                let l = line(&rule_words(&r));
                let mut parsed = parse(&l);
                assert_eq!(parsed.len(), 1, "{l}");
                let rule = parsed.remove(0).rules.remove(0);
                let c = after.iter_mut().find(|c| c.name == r.chain).unwrap();
                c.rules.insert(0, rule);
            }
            FwChange::Delete { rule: r, words } => {
                let c = after
                    .iter_mut()
                    .find(|c| c.name == r.chain)
                    .expect("owned in a chain");
                let i = c
                    .rules
                    .iter()
                    .position(|x| x.words == words)
                    .expect("owned rule listed");
                c.rules.remove(i);
            }
        }
    }
    let replanned = plan("iptables", &after, &scope);
    assert_eq!(
        replanned.repairs, desired,
        "dockroute's rules changed the plan"
    );
    assert_eq!(
        foreign("iptables", &after),
        foreign("iptables", &chains),
        "dockroute's rules read as foreign"
    );
    let again = diff(&desired, &owned("iptables", &after, &replanned.misplaced));
    assert!(again.is_empty(), "a second up changes {again:?}");
});
