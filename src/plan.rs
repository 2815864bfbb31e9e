//! Target → the entries dockroute wants in the kernel, and the changes that get there. Pure.

use crate::discover::Target;
use crate::net::{Change, Entry, MAIN_METRIC, MAIN_TABLE, RULE_PREF, RouteSpec, RuleSpec, TABLE};

pub mod single;

pub use crate::net::Layout;

/// What dockroute installs for a target, in the order it is added: routes in its own table (the
/// host-only network first), the rules that reach that table, then a copy of each subnet route in
/// the main table (found by `lookup main suppress_prefixlength 0` rules that VPN clients insert
/// ahead of dockroute's rule).
pub fn desired(t: &Target) -> Vec<Entry> {
    let host_net = t.host_net();
    let via_vm = |table, dst, metric| {
        Entry::Route(RouteSpec {
            table,
            dst,
            gateway: Some(t.vm_ip),
            ifindex: t.ifindex,
            ifname: t.ifname.clone(),
            prefsrc: None,
            metric,
        })
    };
    // The host-only network first: the kernel checks a gateway against the table it goes into,
    // and a VPN may have deleted the link's connected route from main.
    let mut out = vec![Entry::Route(RouteSpec {
        table: TABLE,
        dst: host_net,
        gateway: None,
        ifindex: t.ifindex,
        ifname: t.ifname.clone(),
        prefsrc: Some(t.host_addr.addr()),
        metric: 0,
    })];
    out.extend(t.subnets.iter().map(|s| via_vm(TABLE, *s, 0)));
    for dst in t.networks() {
        out.push(Entry::Rule(RuleSpec {
            pref: RULE_PREF,
            dst,
            table: TABLE,
        }));
    }
    out.extend(
        t.subnets
            .iter()
            .map(|s| via_vm(MAIN_TABLE, *s, MAIN_METRIC)),
    );
    out
}

/// The changes that turn `owned` into `desired`: first remove what is owned but not wanted
/// (rules before routes, so traffic never meets an emptied table), then add what is missing, in
/// the order of `desired`. Duplicates in `owned` beyond the wanted count are removed.
pub fn diff(desired: &[Entry], owned: &[Entry]) -> Vec<Change> {
    let mut matched = vec![false; desired.len()];
    let mut removals = Vec::new();
    for o in owned {
        match (0..desired.len()).find(|&i| !matched[i] && desired[i] == *o) {
            Some(i) => matched[i] = true,
            None => removals.push(o.clone()),
        }
    }
    removals.sort_by_key(|e| matches!(e, Entry::Route(_)));
    let mut changes: Vec<Change> = removals.into_iter().map(Change::Remove).collect();
    changes.extend(
        desired
            .iter()
            .zip(&matched)
            .filter(|(_, m)| !**m)
            .map(|(e, _)| Change::Add(e.clone())),
    );
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::VmIpSource;

    fn target() -> Target {
        Target {
            ifname: "vboxnet0".into(),
            ifindex: 7,
            host_addr: "192.168.99.1/24".parse().unwrap(),
            vm_ip: "192.168.99.100".parse().unwrap(),
            vm_ip_source: VmIpSource::Flag,
            subnets: vec![
                "172.17.0.0/16".parse().unwrap(),
                "172.18.0.0/16".parse().unwrap(),
            ],
            vm_lladdr: None,
            others: vec![],
        }
    }

    #[test]
    fn plans_table_routes_rules_and_main_copies() {
        let lines: Vec<String> = desired(&target()).iter().map(|e| e.to_string()).collect();
        assert_eq!(
            lines,
            [
                "route 192.168.99.0/24 dev vboxnet0 scope link src 192.168.99.1 table dockroute proto dockroute",
                "route 172.17.0.0/16 via 192.168.99.100 dev vboxnet0 table dockroute proto dockroute",
                "route 172.18.0.0/16 via 192.168.99.100 dev vboxnet0 table dockroute proto dockroute",
                "rule pref 5100 to 172.17.0.0/16 lookup dockroute proto dockroute",
                "rule pref 5100 to 172.18.0.0/16 lookup dockroute proto dockroute",
                "rule pref 5100 to 192.168.99.0/24 lookup dockroute proto dockroute",
                "route 172.17.0.0/16 via 192.168.99.100 dev vboxnet0 table main proto dockroute metric 5017",
                "route 172.18.0.0/16 via 192.168.99.100 dev vboxnet0 table main proto dockroute metric 5017",
            ]
        );
    }

    #[test]
    fn nothing_to_do_when_everything_is_owned() {
        let d = desired(&target());
        let mut owned = d.clone();
        owned.reverse(); // the kernel dumps in its own order
        assert!(diff(&d, &owned).is_empty());
    }

    #[test]
    fn adds_all_from_scratch_in_order() {
        let d = desired(&target());
        let c = diff(&d, &[]);
        assert_eq!(c, d.iter().cloned().map(Change::Add).collect::<Vec<_>>());
    }

    #[test]
    fn a_moved_vm_replaces_only_what_changed() {
        let d_old = desired(&target());
        let mut t = target();
        t.vm_ip = "192.168.99.101".parse().unwrap();
        let d_new = desired(&t);
        let c = diff(&d_new, &d_old);
        // the 4 via-VM routes go and come back; the host-network route and the rules stay
        assert_eq!(
            c.iter().filter(|c| matches!(c, Change::Remove(_))).count(),
            4
        );
        assert_eq!(c.iter().filter(|c| matches!(c, Change::Add(_))).count(), 4);
        assert!(matches!(c[0], Change::Remove(_)));
        assert!(c.iter().all(|c| !matches!(c, Change::Add(Entry::Rule(_)))));
    }

    #[test]
    fn removal_takes_rules_before_routes_and_drops_duplicates() {
        let d = desired(&target());
        let mut owned = d.clone();
        owned.push(d[3].clone()); // a duplicate rule
        let c = diff(&d, &owned);
        assert_eq!(c, vec![Change::Remove(d[3].clone())]);

        let all_gone = diff(&[], &d);
        let first_route = all_gone
            .iter()
            .position(|c| matches!(c, Change::Remove(Entry::Route(_))))
            .unwrap();
        assert!(
            all_gone[..first_route]
                .iter()
                .all(|c| matches!(c, Change::Remove(Entry::Rule(_))))
        );
        assert_eq!(all_gone.len(), d.len());
    }
}
