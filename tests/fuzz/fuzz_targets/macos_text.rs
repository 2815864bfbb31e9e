//! The macOS text parsers, each on the same input: `pfctl -a ANCHOR -vsr` (`firewall::pf`),
//! `pfctl -s info`, `scutil --dns` (`dns::scutil`) and `/var/db/dhcpd_leases`
//! (`discover::dhcpd_leases`).
//! Beyond "no panic":
//! - pf: each rule of dockroute's shape, rendered again, reads back as the same rule; `up` is
//!   stable: once its changes are made (the anchor loaded whole with the rules after each
//!   change), reading the anchor again gives nothing more to change and no foreign rule;
//! - scutil: one resolver per `resolver #` line before the scoped part; `for_domain` finds only
//!   resolvers of that domain;
//! - dhcpd_leases: a lease, written back as a block, reads back the same; `live_on` gives
//!   distinct unexpired addresses on the network, never the host's.
#![no_main]

use dockroute::discover::dhcpd_leases;
use dockroute::dns::scutil;
use dockroute::firewall::{FwChange, Repair, Scope, diff, pf};
use libfuzzer_sys::fuzz_target;
use std::fmt::Write;
use std::net::Ipv4Addr;

fn scope() -> Scope {
    Scope {
        ifname: "vboxnet0".into(),
        nets: vec![
            "172.17.0.0/16".parse().unwrap(),
            "192.168.99.0/24".parse().unwrap(),
        ],
    }
}

fn check_pf(text: &str) {
    pf::enabled(text);
    let listed = pf::parse_listing(text);
    let (owned, foreign) = pf::observe_listing(text);
    assert_eq!(owned.len() + foreign.len(), listed.len());
    for r in &owned {
        let t = pf::rule_text(r).unwrap_or_else(|e| panic!("{r:?} does not render: {e}"));
        assert_eq!(pf::owned_rule(&t).as_ref(), Some(r), "{t}");
        let _ = r.to_string();
    }
    for f in &foreign {
        let _ = f.to_string();
    }

    // `up`: pf loads the anchor whole, with the rules after each change; then it is read again
    let desired = pf::desired(&scope());
    let pairs: Vec<(Repair, Vec<String>)> = owned.iter().map(|r| (r.clone(), vec![])).collect();
    let mut rules = owned.clone();
    for c in diff(&desired, &pairs) {
        rules = pf::after_change(&rules, &c);
        if let FwChange::Insert { rule } = &c {
            assert!(rules.contains(rule));
        }
    }
    let anchor = pf::render(&rules).expect("dockroute's rules render");
    let (now, others) = pf::observe_listing(&anchor);
    assert!(others.is_empty(), "{others:?}");
    let now: Vec<(Repair, Vec<String>)> = now.into_iter().map(|r| (r, vec![])).collect();
    let again = diff(&desired, &now);
    assert!(again.is_empty(), "a second up changes {again:?}");
}

fn check_scutil(text: &str) {
    let all = scutil::parse(text);
    let headers = text
        .lines()
        .map(str::trim)
        .take_while(|t| !t.starts_with("DNS configuration ("))
        .filter(|t| t.starts_with("resolver #"))
        .count();
    assert_eq!(all.len(), headers);
    for domain in ["docker", "Docker.", ""] {
        for r in scutil::for_domain(&all, domain) {
            let d = r.domain.as_deref().expect("found by its domain");
            assert!(
                d.trim_end_matches('.')
                    .eq_ignore_ascii_case(domain.trim_end_matches('.'))
            );
        }
        let s = scutil::summary(&all, domain);
        assert!(!s.contains('\n'), "{s:?}");
    }
}

fn check_leases(text: &str) {
    let leases = dhcpd_leases::parse(text);
    for l in &leases {
        let mut block = String::from("{\n");
        if let Some(n) = &l.name {
            writeln!(block, "\tname={n}").unwrap();
        }
        writeln!(block, "\tip_address={}", l.ip).unwrap();
        if let Some(m) = l.mac {
            let parts: Vec<String> = m.iter().map(|b| format!("{b:x}")).collect();
            writeln!(block, "\thw_address=1,{}", parts.join(":")).unwrap();
        }
        if let Some(e) = l.expires {
            writeln!(block, "\tlease={e:#x}").unwrap();
        }
        block.push_str("}\n");
        assert_eq!(dhcpd_leases::parse(&block), [l.clone()], "{block}");
    }
    let net = "192.168.64.0/24".parse().unwrap();
    let host = Ipv4Addr::new(192, 168, 64, 1);
    let now = 0x6000_0000;
    let live = dhcpd_leases::live_on(&leases, net, host, now);
    for (i, ip) in live.iter().enumerate() {
        assert!(net.contains(ip) && *ip != host && !live[..i].contains(ip));
        assert!(
            leases
                .iter()
                .any(|l| l.ip == *ip && l.expires.is_some_and(|e| e > now))
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check_pf(text);
    check_scutil(text);
    check_leases(text);
});
