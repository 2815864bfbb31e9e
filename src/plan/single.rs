//! The plan for a system with one routing table and no policy rules (macOS). Pure.
//!
//! One unscoped route per subnet via the VM IP, bound to the host-only link; nothing for the
//! host-only network itself (the link's own connected route covers it). When someone else's
//! route already holds a subnet's exact prefix (a VPN's utun route for 172.17.0.0/16), the
//! kernel refuses a second one (EEXIST) and dockroute must neither change nor delete it: it routes
//! the subnet's two halves instead (172.17.0.0/17 and 172.17.128.0/17), which win by
//! longest-prefix match. When a half is held too, or the subnet is a single address, there is no
//! way around it that leaves the other route alone: that is an error naming the holder.

use crate::discover::Target;
pub use crate::net::Held;
use crate::net::{Entry, MAIN_TABLE, RouteSpec};
use ipnet::Ipv4Net;
use serde::Serialize;
use std::fmt;

/// Why a subnet is routed as its halves (shown by `status` and logged by `up`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Split {
    pub subnet: Ipv4Net,
    pub held_by: String,
    pub halves: [Ipv4Net; 2],
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is held by another route ({}), which dockroute leaves alone: routing its halves {} and {} instead (a longer prefix wins)",
            self.subnet, self.held_by, self.halves[0], self.halves[1]
        )
    }
}

/// The routes to install, and which subnets were split.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub entries: Vec<Entry>,
    pub splits: Vec<Split>,
}

/// The prefixes whose holders decide the plan: each subnet and its two halves.
pub fn candidates(t: &Target) -> Vec<Ipv4Net> {
    let mut out = Vec::new();
    for s in &t.subnets {
        out.push(*s);
        if let Some(h) = halves(*s) {
            out.extend(h);
        }
    }
    out
}

/// The two halves of a prefix; none for a single address.
pub fn halves(net: Ipv4Net) -> Option<[Ipv4Net; 2]> {
    let mut it = net.subnets(net.prefix_len().checked_add(1)?).ok()?;
    Some([it.next()?, it.next()?])
}

/// The routes for `t`, given which prefixes other routes hold exactly.
pub fn desired(t: &Target, held: &[Held]) -> Result<Plan, String> {
    let holder = |p: &Ipv4Net| held.iter().find(|h| h.prefix == *p).map(|h| h.by.clone());
    let route = |dst| {
        Entry::Route(RouteSpec {
            table: MAIN_TABLE,
            dst,
            gateway: Some(t.vm_ip),
            ifindex: t.ifindex,
            ifname: t.ifname.clone(),
            prefsrc: None,
            metric: 0,
        })
    };
    let mut plan = Plan::default();
    for s in &t.subnets {
        let Some(by) = holder(s) else {
            plan.entries.push(route(*s));
            continue;
        };
        let Some(h) = halves(*s) else {
            return Err(format!(
                "{s} is held by another route ({by}); a single address cannot be split, and dockroute does not change others' routes"
            ));
        };
        for half in &h {
            if let Some(by_half) = holder(half) {
                return Err(format!(
                    "{s} is held by another route ({by}) and so is its half {half} ({by_half}); dockroute does not change others' routes: remove them, or ask the VPN to exclude {s}"
                ));
            }
        }
        plan.entries.extend(h.iter().map(|h| route(*h)));
        plan.splits.push(Split {
            subnet: *s,
            held_by: by,
            halves: h,
        });
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::VmIpSource;
    use crate::plan::diff;

    fn target() -> Target {
        Target {
            ifname: "bridge100".into(),
            ifindex: 21,
            host_addr: "192.168.64.1/24".parse().unwrap(),
            vm_ip: "192.168.64.7".parse().unwrap(),
            vm_ip_source: VmIpSource::Flag,
            subnets: vec![
                "172.17.0.0/16".parse().unwrap(),
                "172.18.0.0/16".parse().unwrap(),
            ],
            vm_lladdr: None,
            others: vec![],
        }
    }

    fn held(p: &str, by: &str) -> Held {
        Held {
            prefix: p.parse().unwrap(),
            by: by.into(),
        }
    }

    fn lines(p: &Plan) -> Vec<String> {
        p.entries.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn one_route_per_subnet_and_no_rules() {
        let p = desired(&target(), &[]).unwrap();
        assert_eq!(
            lines(&p),
            [
                "route 172.17.0.0/16 via 192.168.64.7 dev bridge100 table main proto dockroute",
                "route 172.18.0.0/16 via 192.168.64.7 dev bridge100 table main proto dockroute",
            ]
        );
        assert!(p.splits.is_empty());
        assert_eq!(candidates(&target()).len(), 6);
    }

    #[test]
    fn a_held_prefix_is_routed_as_its_halves() {
        let vpn = "172.17.0.0/16 via 10.8.0.1 dev utun3";
        let p = desired(&target(), &[held("172.17.0.0/16", vpn)]).unwrap();
        assert_eq!(
            lines(&p),
            [
                "route 172.17.0.0/17 via 192.168.64.7 dev bridge100 table main proto dockroute",
                "route 172.17.128.0/17 via 192.168.64.7 dev bridge100 table main proto dockroute",
                "route 172.18.0.0/16 via 192.168.64.7 dev bridge100 table main proto dockroute",
            ]
        );
        assert_eq!(
            p.splits[0].to_string(),
            "172.17.0.0/16 is held by another route (172.17.0.0/16 via 10.8.0.1 dev utun3), which dockroute leaves alone: routing its halves 172.17.0.0/17 and 172.17.128.0/17 instead (a longer prefix wins)"
        );
        // a less specific VPN route (172.16.0.0/12) is no reason to split: it is not "held"
        let p = desired(&target(), &[held("172.16.0.0/12", vpn)]).unwrap();
        assert!(p.splits.is_empty());
    }

    #[test]
    fn when_the_vpn_leaves_the_halves_give_way_to_the_whole() {
        let t = target();
        let split = desired(&t, &[held("172.17.0.0/16", "vpn")]).unwrap();
        let whole = desired(&t, &[]).unwrap();
        let c = diff(&whole.entries, &split.entries);
        let text: Vec<String> = c.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            text,
            [
                "- route 172.17.0.0/17 via 192.168.64.7 dev bridge100 table main proto dockroute",
                "- route 172.17.128.0/17 via 192.168.64.7 dev bridge100 table main proto dockroute",
                "+ route 172.17.0.0/16 via 192.168.64.7 dev bridge100 table main proto dockroute",
            ]
        );
        // and a second `up` with the VPN still there changes nothing
        assert!(diff(&split.entries, &split.entries).is_empty());
    }

    #[test]
    fn a_held_half_or_a_held_address_is_an_error_naming_the_holder() {
        let e = desired(
            &target(),
            &[
                held("172.17.0.0/16", "A via utun3"),
                held("172.17.128.0/17", "B via utun4"),
            ],
        )
        .unwrap_err();
        assert!(
            e.contains("A via utun3") && e.contains("172.17.128.0/17 (B via utun4)"),
            "{e}"
        );
        let mut t = target();
        t.subnets = vec!["10.9.9.9/32".parse().unwrap()];
        let e = desired(&t, &[held("10.9.9.9/32", "X")]).unwrap_err();
        assert!(e.contains("cannot be split"), "{e}");
        assert_eq!(halves("10.9.9.9/32".parse().unwrap()), None);
    }
}
