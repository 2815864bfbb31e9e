//! The plan for a system with one routing table and no policy rules (macOS). Pure.
//!
//! One unscoped route per subnet via the VM IP, bound to the host-only link; nothing for the
//! host-only network itself (the link's own connected route covers it).
//!
//! With one table the longest prefix wins, whoever added it, so a route of someone else's with
//! the subnet's exact prefix or any longer one inside it (a VPN's utun route for 172.17.0.0/16,
//! for 172.17.0.0/17, for 172.17.5.0/24) takes that part of the subnet away from the VM.
//! dockroute neither changes nor deletes such a route; it outdoes it: the subnet is routed as
//! the smallest set of prefixes that covers it in which no prefix holds (equals or contains) one
//! of those routes, so that each part of the subnet goes by a route of dockroute's that is more
//! specific than the other route there (the kernel refuses a second route with the same prefix,
//! EEXIST, so "as specific" is not possible). A /16 with a VPN's /16: its two /17s; with a
//! VPN's /24 inside: nine routes, from the other /17 down to the /24's two /25s.
//!
//! What it cannot outdo, it reports and leaves alone (`up` warns, `status` lists it as a
//! warning): a route for a single address (a /32 has no longer prefix), and a route that would
//! take the subnet past [`MAX_ROUTES_PER_SUBNET`] routes (routes are outdone shortest prefix
//! first, so a few broad ones are outdone before many narrow ones). A subnet that is itself a
//! single address held by another route is an error naming the holder.
//!
//! The other routes come from [`crate::net::Net::held`]: unscoped routes (a route scoped to an
//! interface, RTF_IFSCOPE, carries only traffic bound to that interface, so it takes nothing
//! from the VM) that are not dockroute's, with a prefix equal to or inside one of the subnets.
//! Those bound to the VM's own link (its connected network, someone's route via the VM) already
//! deliver to the VM and are left as they are.

use crate::discover::Target;
pub use crate::net::Held;
use crate::net::{Entry, MAIN_TABLE, RouteSpec};
use ipnet::Ipv4Net;
use serde::Serialize;
use std::fmt;

/// At most this many routes for one subnet. Outdoing one route inside it takes one route per
/// prefix length between the subnet and that route, plus one (a /24 inside a /16: 9).
pub const MAX_ROUTES_PER_SUBNET: usize = 32;

/// A subnet routed as several prefixes because routes of others hold it or parts of it (shown by
/// `status` and logged by `up`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Split {
    pub subnet: Ipv4Net,
    /// The other routes outdone, as the kernel shows them.
    pub held_by: Vec<String>,
    /// dockroute's routes for the subnet.
    pub routes: Vec<Ipv4Net>,
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let by = self.held_by.join("; ");
        match self.held_by.len() {
            1 => write!(f, "{} is held by another route ({by})", self.subnet)?,
            _ => write!(f, "{} is held by other routes ({by})", self.subnet)?,
        }
        let routes: Vec<String> = self.routes.iter().map(|r| r.to_string()).collect();
        write!(
            f,
            ", which dockroute leaves alone: routing {} instead (a longer prefix wins)",
            routes.join(", ")
        )
    }
}

/// A route of someone else's inside a subnet that dockroute does not outdo: the traffic for its
/// prefix goes that way, not to the VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Conceded {
    pub subnet: Ipv4Net,
    pub prefix: Ipv4Net,
    pub held_by: String,
    pub reason: String,
}

impl fmt::Display for Conceded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (in {}) goes by another route ({}), not to the VM: {}",
            self.prefix, self.subnet, self.held_by, self.reason
        )
    }
}

/// The routes to install, which subnets were split, and what is left to others.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub entries: Vec<Entry>,
    pub splits: Vec<Split>,
    pub conceded: Vec<Conceded>,
}

/// The two halves of a prefix; none for a single address.
pub fn halves(net: Ipv4Net) -> Option<[Ipv4Net; 2]> {
    let mut it = net.subnets(net.prefix_len().checked_add(1)?).ok()?;
    Some([it.next()?, it.next()?])
}

/// The smallest set of prefixes covering `net` in which none equals or contains one of
/// `outdo` (each of which is inside `net` and longer than /32), in address order.
fn cover(net: Ipv4Net, outdo: &[Ipv4Net], out: &mut Vec<Ipv4Net>) {
    if !outdo.iter().any(|o| net.contains(o)) {
        out.push(net);
        return;
    }
    // a /32 never contains one of `outdo`: halves exist here
    for h in halves(net).into_iter().flatten() {
        cover(h, outdo, out);
    }
}

fn covering(net: Ipv4Net, outdo: &[Ipv4Net]) -> Vec<Ipv4Net> {
    let mut out = Vec::new();
    cover(net, outdo, &mut out);
    out
}

/// The routes for `t`, given the routes of others with a prefix equal to or inside a subnet.
pub fn desired(t: &Target, held: &[Held]) -> Result<Plan, String> {
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
        // a route over the VM's own link (its connected network, a route via the VM) already
        // delivers there: nothing to outdo
        let mut inside: Vec<&Held> = held
            .iter()
            .filter(|h| s.contains(&h.prefix) && h.ifindex != t.ifindex)
            .collect();
        // shortest prefix first, then by address; one holder per prefix
        inside.sort_by_key(|h| (h.prefix.prefix_len(), h.prefix.network()));
        inside.dedup_by_key(|h| h.prefix);
        let mut outdone: Vec<Ipv4Net> = Vec::new();
        let mut by = Vec::new();
        for h in inside {
            let reason = if h.prefix.prefix_len() == 32 {
                if h.prefix == *s {
                    return Err(format!(
                        "{s} is held by another route ({}); a single address cannot be split, and dockroute does not change others' routes",
                        h.by
                    ));
                }
                "a route for a single address has no more specific one to outdo it".to_string()
            } else {
                let mut trial = outdone.clone();
                trial.push(h.prefix);
                if covering(*s, &trial).len() <= MAX_ROUTES_PER_SUBNET {
                    outdone = trial;
                    by.push(h.by.clone());
                    continue;
                }
                format!(
                    "outdoing it would take more than {MAX_ROUTES_PER_SUBNET} routes for {s}; remove it, or ask the VPN to exclude {s}"
                )
            };
            plan.conceded.push(Conceded {
                subnet: *s,
                prefix: h.prefix,
                held_by: h.by.clone(),
                reason,
            });
        }
        let routes = covering(*s, &outdone);
        plan.entries.extend(routes.iter().map(|r| route(*r)));
        if !outdone.is_empty() {
            plan.splits.push(Split {
                subnet: *s,
                held_by: by,
                routes,
            });
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::VmIpSource;
    use crate::plan::diff;
    use std::net::Ipv4Addr;

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

    /// A VPN's route (bound to utun3, index 12).
    fn held(p: &str, by: &str) -> Held {
        Held {
            prefix: p.parse().unwrap(),
            ifindex: 12,
            by: by.into(),
        }
    }

    fn lines(p: &Plan) -> Vec<String> {
        p.entries.iter().map(|e| e.to_string()).collect()
    }

    fn prefixes(p: &Plan) -> Vec<String> {
        p.entries
            .iter()
            .map(|e| match e {
                Entry::Route(r) => r.dst.to_string(),
                Entry::Rule(_) => panic!("no rules on one table"),
            })
            .collect()
    }

    /// Where the kernel sends `addr` given dockroute's plan and the others' routes: the longest
    /// prefix wins (one table).
    fn winner(p: &Plan, others: &[Held], addr: &str) -> &'static str {
        let a: Ipv4Addr = addr.parse().unwrap();
        let ours = p
            .entries
            .iter()
            .filter_map(|e| match e {
                Entry::Route(r) if r.dst.contains(&a) => Some(r.dst.prefix_len()),
                _ => None,
            })
            .max();
        let theirs = others
            .iter()
            .filter(|h| h.prefix.contains(&a))
            .map(|h| h.prefix.prefix_len())
            .max();
        match (ours, theirs) {
            (Some(o), Some(t)) if o > t => "vm",
            (Some(_), None) => "vm",
            (_, Some(_)) => "other",
            (None, None) => "nowhere",
        }
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
        assert!(p.splits.is_empty() && p.conceded.is_empty());
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
            "172.17.0.0/16 is held by another route (172.17.0.0/16 via 10.8.0.1 dev utun3), which dockroute leaves alone: routing 172.17.0.0/17, 172.17.128.0/17 instead (a longer prefix wins)"
        );
        // a less specific VPN route (172.16.0.0/12) is no reason to split: it never wins
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
    fn a_vpn_route_inside_the_subnet_is_outdone_by_more_specific_ones() {
        // a VPN routes 172.17.5.0/24 (one network of the docker subnet) into its tunnel
        let vpn = [held(
            "172.17.5.0/24",
            "172.17.5.0/24 via 10.8.0.1 dev utun3",
        )];
        let p = desired(&target(), &vpn).unwrap();
        assert_eq!(
            prefixes(&p),
            [
                "172.17.0.0/22",
                "172.17.4.0/24",
                "172.17.5.0/25",
                "172.17.5.128/25",
                "172.17.6.0/23",
                "172.17.8.0/21",
                "172.17.16.0/20",
                "172.17.32.0/19",
                "172.17.64.0/18",
                "172.17.128.0/17",
                "172.18.0.0/16",
            ]
        );
        // every address of the subnet, the VPN's /24 included, goes to the VM
        for a in [
            "172.17.0.1",
            "172.17.5.1",
            "172.17.5.200",
            "172.17.4.9",
            "172.17.255.254",
        ] {
            assert_eq!(winner(&p, &vpn, a), "vm", "{a}");
        }
        // the plan before this change (one /16) lost the /24 to the VPN
        let whole = desired(&target(), &[]).unwrap();
        assert_eq!(winner(&whole, &vpn, "172.17.5.1"), "other");
        assert_eq!(p.splits.len(), 1);
        assert!(
            p.splits[0]
                .to_string()
                .starts_with("172.17.0.0/16 is held by another route (172.17.5.0/24 via 10.8.0.1 dev utun3), which dockroute leaves alone: routing 172.17.0.0/22, "),
            "{}",
            p.splits[0]
        );
        assert!(p.conceded.is_empty());
    }

    #[test]
    fn a_held_half_is_split_further() {
        let vpn = [
            held("172.17.0.0/16", "A via utun3"),
            held("172.17.128.0/17", "B via utun4"),
        ];
        let p = desired(&target(), &vpn).unwrap();
        assert_eq!(
            prefixes(&p),
            [
                "172.17.0.0/17",
                "172.17.128.0/18",
                "172.17.192.0/18",
                "172.18.0.0/16"
            ]
        );
        assert_eq!(p.splits[0].held_by, ["A via utun3", "B via utun4"]);
        for a in ["172.17.0.1", "172.17.130.1", "172.17.200.1"] {
            assert_eq!(winner(&p, &vpn, a), "vm", "{a}");
        }
    }

    #[test]
    fn a_host_route_or_too_many_routes_are_reported_and_left_alone() {
        // a /32 inside: nothing is more specific; the subnet stays whole, the route is reported
        let vpn = [held("172.17.9.9/32", "172.17.9.9 via 10.8.0.1 dev utun3")];
        let p = desired(&target(), &vpn).unwrap();
        assert_eq!(prefixes(&p), ["172.17.0.0/16", "172.18.0.0/16"]);
        assert_eq!(
            p.conceded[0].to_string(),
            "172.17.9.9/32 (in 172.17.0.0/16) goes by another route (172.17.9.9 via 10.8.0.1 dev utun3), not to the VM: a route for a single address has no more specific one to outdo it"
        );
        // forty /24s spread over the subnet: the first ones are outdone up to the cap, the
        // rest reported
        let many: Vec<Held> = (0..40u8)
            .map(|i| held(&format!("172.17.{}.0/24", i * 6), "vpn"))
            .collect();
        let p = desired(&target(), &many).unwrap();
        let n17 = prefixes(&p)
            .iter()
            .filter(|r| r.starts_with("172.17."))
            .count();
        assert!(n17 <= MAX_ROUTES_PER_SUBNET, "{n17}");
        assert!(!p.conceded.is_empty());
        assert_eq!(p.splits[0].held_by.len() + p.conceded.len(), 40);
        assert!(
            p.conceded[0].reason.contains("more than 32 routes"),
            "{:?}",
            p.conceded[0]
        );
        // and each outdone one goes to the VM, each conceded one does not
        for h in &many {
            let a = Ipv4Addr::from(u32::from(h.prefix.network()) + 1).to_string();
            let want = if p.conceded.iter().any(|c| c.prefix == h.prefix) {
                "other"
            } else {
                "vm"
            };
            assert_eq!(winner(&p, &many, &a), want, "{a}");
        }
    }

    #[test]
    fn routes_over_the_vms_own_link_are_left_as_they_are() {
        let mut t = target();
        t.subnets = vec!["192.168.0.0/16".parse().unwrap()];
        // the host-only link's connected network lies inside the subnet
        let connected = Held {
            prefix: "192.168.64.0/24".parse().unwrap(),
            ifindex: 21,
            by: "192.168.64.0/24 link bridge100".into(),
        };
        let p = desired(&t, &[connected]).unwrap();
        assert_eq!(prefixes(&p), ["192.168.0.0/16"]);
        assert!(p.splits.is_empty() && p.conceded.is_empty());
    }

    #[test]
    fn a_held_single_address_subnet_is_an_error_naming_the_holder() {
        let mut t = target();
        t.subnets = vec!["10.9.9.9/32".parse().unwrap()];
        let e = desired(&t, &[held("10.9.9.9/32", "X")]).unwrap_err();
        assert!(e.contains("cannot be split") && e.contains("(X)"), "{e}");
        assert_eq!(halves("10.9.9.9/32".parse().unwrap()), None);
    }
}
