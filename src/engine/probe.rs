//! Applied is not working: the route the kernel really picks for an address in each network,
//! and what wins when that is not via the VM.

use crate::discover::Target;
use crate::net::{ForeignRoute, ForeignRule, Lookup, Net, NetError, RULE_PREF};
use ipnet::Ipv4Net;
use serde::Serialize;
use std::net::Ipv4Addr;

/// What the kernel does with one address behind the VM.
#[derive(Debug, Serialize)]
pub struct Probe {
    pub network: Ipv4Net,
    pub address: Ipv4Addr,
    pub kernel: Lookup,
    /// Whether the kernel sends it to the VM over the host-only link, as dockroute intends.
    pub ok: bool,
}

/// Ask the kernel which route it picks for one address in each subnet and for the VM itself
/// (`status` shows them; `up` checks them after applying).
/// The route the kernel picks for an address in each network, and for each one not via the VM
/// what wins instead. Only when something is wrong is the full dump read to name it (a VPN's
/// thousands of routes are not read on the ordinary path).
pub(super) async fn check_routes<N: Net>(
    net: &mut N,
    t: &Target,
) -> Result<(Vec<Probe>, Vec<String>), NetError> {
    let probes = probe(net, t).await?;
    if probes.iter().all(|p| p.ok) {
        return Ok((probes, Vec::new()));
    }
    let snap = net.snapshot().await?;
    let bad = probes
        .iter()
        .filter(|p| !p.ok)
        .map(|p| why_not_via_vm(p, &snap.foreign_routes, &snap.foreign_rules))
        .collect();
    Ok((probes, bad))
}

/// How many of others' routes inside the subnets `probe` looks up an address of.
const MAX_INSIDE_PROBES: usize = 8;

pub(super) async fn probe<N: Net>(net: &mut N, t: &Target) -> Result<Vec<Probe>, NetError> {
    let host_net = t.host_net();
    let mut targets: Vec<(Ipv4Net, Ipv4Addr)> = t
        .subnets
        .iter()
        .map(|s| (*s, s.hosts().next().unwrap_or(s.network())))
        .collect();
    // With one table (macOS) others' routes inside a subnet win there unless dockroute outdoes
    // them: look up an address in each of those too (the first few).
    for h in net
        .held(&t.subnets)
        .await?
        .iter()
        .filter(|h| h.ifindex != t.ifindex && !t.subnets.contains(&h.prefix))
        .take(MAX_INSIDE_PROBES)
    {
        let a = h.prefix.hosts().next().unwrap_or(h.prefix.network());
        if !targets.iter().any(|(_, x)| *x == a) {
            targets.push((h.prefix, a));
        }
    }
    targets.push((host_net, t.vm_ip));
    let mut probes = Vec::new();
    for (network, address) in targets {
        let kernel = net.lookup(address).await?;
        let ok = match &kernel {
            Lookup::Route {
                gateway, dev, kind, ..
            } => {
                kind == "unicast"
                    && dev.as_deref() == Some(t.ifname.as_str())
                    && (network == host_net || *gateway == Some(t.vm_ip))
            }
            Lookup::Unreachable { .. } => false,
        };
        probes.push(Probe {
            network,
            address,
            kernel,
            ok,
        });
    }
    Ok(probes)
}

/// Why a probe is not via the VM, for people: what the kernel picks, the route that wins (the
/// most specific route of that table holding the address, lowest metric first) and the rules
/// consulted before dockroute's.
pub fn why_not_via_vm(p: &Probe, routes: &[ForeignRoute], rules: &[ForeignRule]) -> String {
    let mut s = format!("{} ({}) goes {}", p.address, p.network, p.kernel);
    if let Lookup::Route { table, dev, .. } = &p.kernel {
        let winner = routes
            .iter()
            .filter(|r| {
                r.table == *table && r.dst.contains(&p.address) && (dev.is_none() || r.dev == *dev)
            })
            .max_by_key(|r| (r.dst.prefix_len(), std::cmp::Reverse(r.metric)));
        if let Some(r) = winner {
            s += &format!(", not via the VM: route {r} wins");
        } else {
            s += ", not via the VM";
        }
        let before: Vec<String> = rules
            .iter()
            .filter(|r| r.pref != 0 && r.pref < RULE_PREF)
            .map(|r| format!("'{r}'"))
            .collect();
        if !before.is_empty() {
            s += &format!(
                " (rule {} is consulted before dockroute's)",
                before.join(", ")
            );
        }
    } else {
        s += ", not via the VM";
    }
    s
}

/// The state is not what dockroute is for (exit status 3): what is wrong, each for people.
#[derive(Debug, thiserror::Error)]
#[error("degraded: {}", .0.join("; "))]
pub struct Degraded(pub Vec<String>);
