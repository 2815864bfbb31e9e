//! `status`: what is installed, what the kernel does with container addresses, whether names
//! resolve, and what conflicts. Changes nothing.

use super::probe::{Probe, probe, why_not_via_vm};
use super::*;
use crate::discover::{self, DiscoverError, Target};
use crate::dns::{self, Backend, DnsState};
use crate::firewall::{self};
use crate::net::{
    ForeignRoute, ForeignRule, LinkInfo, Lookup, MAIN_TABLE, Net, NetError, RULE_PREF, Snapshot,
};
use crate::plan;
use crate::record::Store;
use crate::settings::Settings;
use crate::vpn::{self, VpnLink};
use ipnet::Ipv4Net;
use serde::Serialize;
use std::net::IpAddr;

impl Status {
    /// What `status` found that keeps containers from being reached.
    pub fn degraded(&self) -> Option<Degraded> {
        let mut bad = Vec::new();
        if self.target.is_none() {
            bad.push(format!(
                "no VM: {}",
                self.discovery_error.as_deref().unwrap_or("not found")
            ));
        }
        if let (Some(t), Some(l)) = (&self.target, &self.link)
            && !l.up
        {
            bad.push(format!(
                "link {} is down: the kernel dropped the routes through it (is the VM running?)",
                t.ifname
            ));
        } else if let (Some(t), None) = (&self.target, &self.link) {
            bad.push(format!("link {} is missing (is the VM running?)", t.ifname));
        }
        for p in self.probes.iter().filter(|p| !p.ok) {
            bad.push(why_not_via_vm(p, &self.foreign_routes, &self.foreign_rules));
        }
        if let Some(n) = &self.name_check
            && let Some(e) = &n.error
        {
            bad.push(format!("{} does not resolve ({e})", n.name));
        }
        if let Some(d) = self.dns.as_ref().filter(|d| d.degraded) {
            bad.push(format!(
                "DNS for *.{}: {}",
                d.state.domain,
                if d.in_place {
                    format!("{} {}", d.state.nameserver, d.answer)
                } else {
                    d.detail.clone()
                }
            ));
        }
        if let (Some(d), Some(t)) = (&self.vm_filter, &self.target)
            && let Some(p) = d.problem(t.host_addr.addr())
        {
            bad.push(p);
        }
        if !self.vpn.firewall_blocking.is_empty() {
            let rules: Vec<String> = self
                .vpn
                .firewall_blocking
                .iter()
                .map(|r| r.to_string())
                .collect();
            bad.push(format!(
                "a firewall blocks the VM (needed: {})",
                rules.join(", ")
            ));
        }
        (!bad.is_empty()).then_some(Degraded(bad))
    }
}

/// Something that is not dockroute's and covers a network dockroute routes.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Conflict {
    Route(ForeignRoute),
    Rule {
        #[serde(flatten)]
        rule: ForeignRule,
        /// Consulted before dockroute's own rules.
        before_dockroute: bool,
    },
}

#[derive(Debug, Serialize)]
pub struct Status {
    /// Where the target comes from: "record" (the last `up`) or "discovery".
    pub target_from: Option<&'static str>,
    pub target: Option<Target>,
    pub discovery_error: Option<String>,
    pub link: Option<LinkInfo>,
    pub record_error: Option<String>,
    /// Everything in the kernel tagged as dockroute's.
    pub installed: Vec<crate::net::Entry>,
    /// Whether the installed entries are exactly what `up` would install now.
    pub in_sync: bool,
    /// Subnets routed as several prefixes, because other routes hold the subnet or parts of it
    /// (one routing table: macOS).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<plan::single::Split>,
    /// Routes and rules tagged like dockroute's but not of its shape: never removed.
    pub tagged_not_owned: Vec<crate::net::Tagged>,
    /// What needs a person's attention.
    pub warnings: Vec<String>,
    pub probes: Vec<Probe>,
    pub conflicts: Vec<Conflict>,
    /// Per-domain DNS as the last `up` set it, and whether it is still in place.
    pub dns: Option<DnsStatus>,
    /// `--check-name`: what the system resolver answers.
    pub name_check: Option<NameCheck>,
    /// What looks like a VPN, what its firewall blocks, and what dockroute repaired.
    pub vpn: VpnStatus,
    /// What keeps containers from being reached (`status` then exits with 3), or null.
    pub degraded: Option<String>,
    /// Every route and rule not dockroute's (to name what wins over it).
    #[serde(skip)]
    pub foreign_routes: Vec<ForeignRoute>,
    #[serde(skip)]
    pub foreign_rules: Vec<ForeignRule>,
    /// The Docker engine the last `up` asked, the networks it routed and the ones it skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker: Option<crate::docker::Report>,
    /// The VM's own Docker filter: what the engine says and whether its running containers
    /// answer from this host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_filter: Option<crate::docker::vmfilter::Diagnosis>,
}

#[derive(Debug, Default, Serialize)]
pub struct VpnStatus {
    /// Links that look like VPN tunnels.
    pub links: Vec<VpnLink>,
    /// Routes through those links.
    pub routes: Vec<ForeignRoute>,
    /// Policy rules besides the kernel's three defaults.
    pub rules: Vec<ForeignRule>,
    /// dockroute's firewall rules in place.
    pub firewall_repaired: Vec<firewall::Repair>,
    /// What blocks the VM now: the rules `up` would insert.
    pub firewall_blocking: Vec<firewall::Repair>,
    /// Rules commented `dockroute` that are not of its shape: someone else's, left alone.
    pub firewall_foreign: Vec<firewall::Foreign>,
    /// What could not be checked (a missing program, a rule that cannot be read).
    pub firewall_warnings: Vec<String>,
    /// Why a firewall could not be read (reading them needs root); the others are still shown.
    pub firewall_error: Option<String>,
    /// pf (macOS): the rules of dockroute's anchor with pf's counters for them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub firewall_counters: Vec<firewall::pf::Listed>,
    /// pf (macOS): whether dockroute holds an enable reference, and its token (from the
    /// record).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pf_reference: Option<firewall::pf::Reference>,
    /// Vendor switches that fix the same at the source.
    pub hints: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct DnsStatus {
    #[serde(flatten)]
    pub state: DnsState,
    pub in_place: bool,
    pub detail: String,
    /// Whether the server answered a query just now; `None` when it was not asked (the kernel
    /// does not send it to the VM's link).
    pub answers: Option<bool>,
    /// What the query found ("answers (NXDOMAIN in 0.4 ms)", "no answer within 1.0 s", ...).
    pub answer: String,
    /// DNS does not work as dockroute set it: not in place, or the server does not answer (with
    /// resolv-conf, a silent server also stalls every other lookup of the host).
    pub degraded: bool,
    /// Who answers the domain: `dockroute watch's responder` (on loopback, while `watch` runs)
    /// or `the VM's DNS server`.
    pub server: &'static str,
}

/// Who answers the domain at `ns`.
fn server_of(ns: std::net::SocketAddrV4) -> &'static str {
    if ns == crate::watch::names::LISTEN {
        "dockroute watch's responder"
    } else {
        "the VM's DNS server"
    }
}

#[derive(Debug, Serialize)]
pub struct NameCheck {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub error: Option<String>,
}

/// Ask the recorded DNS server, when the kernel sends it to the VM over the host-only link (a
/// query by another way would leave the host).
async fn probe_dns<N: Net>(
    net: &mut N,
    d: &mut DnsStatus,
    t: &Target,
    ifindex: Option<u32>,
) -> Result<(), EngineError> {
    let ns = *d.state.nameserver.ip();
    // watch's responder, on loopback: asked where it is (the query never leaves the host)
    let responder = d.state.nameserver == crate::watch::names::LISTEN;
    let via_vm = responder
        || match net.lookup(ns).await? {
            Lookup::Route { dev, .. } => {
                ifindex.is_some() && dev.as_deref() == Some(t.ifname.as_str())
            }
            Lookup::Unreachable { .. } => false,
        };
    if !via_vm {
        d.answer = format!("not asked: the kernel does not send {ns} over {}", t.ifname);
        return Ok(());
    }
    let r = dns::probe::ask(
        d.state.nameserver,
        &d.state.domain,
        dns::probe::TRIES,
        dns::probe::TIMEOUT,
    );
    d.answers = Some(r.is_ok());
    d.degraded |= r.is_err();
    d.answer = match r {
        Ok(a) => a.to_string(),
        Err(e) => e.to_string(),
    };
    Ok(())
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The target `status` looks at: the recorded one, else what discovery finds now (without
/// waiting); where it came from, or why there is none.
async fn target_of<N: Net>(
    net: &mut N,
    settings: &Settings,
    record: Option<crate::record::Record>,
) -> Result<(Option<Target>, Option<&'static str>, Option<String>), EngineError> {
    if let Some(r) = record {
        return Ok((Some(r.target), Some("record"), None));
    }
    let mut req = settings.request.clone();
    req.wait = None;
    match discover::discover(net, &req).await {
        Ok(t) => Ok((Some(t), Some("discovery"), None)),
        Err(DiscoverError::Net(e)) => Err(e.into()),
        Err(e) => Ok((None, None, Some(e.to_string()))),
    }
}

/// What `status` found about the target's routes.
#[derive(Default)]
struct Checked {
    probes: Vec<Probe>,
    conflicts: Vec<Conflict>,
    in_sync: bool,
    split: Vec<plan::single::Split>,
}

/// The target's routes against the plan (in sync, split halves, conceded prefixes into
/// `warnings`), what the kernel picks for each container network, and the conflicts in `snap`.
async fn checked_routes<N: Net>(
    net: &mut N,
    t: &Target,
    link: Option<&LinkInfo>,
    snap: &Snapshot,
    warnings: &mut Vec<String>,
) -> Result<Checked, EngineError> {
    let mut c = Checked::default();
    // The link may have been re-created with a new index since the last `up`.
    let mut current = t.clone();
    if let Some(l) = link {
        current.ifindex = l.index;
    }
    match planned(net, &current).await {
        Ok(p) => {
            c.in_sync = plan::diff(&p.entries, &snap.owned).is_empty();
            c.split = p.splits;
            warnings.extend(p.conceded.iter().map(|c| c.to_string()));
        }
        Err(EngineError::Net(NetError::Conflict(e))) => warnings.push(e),
        Err(e) => return Err(e),
    }
    c.probes = probe(net, t).await?;
    c.conflicts = conflicts_with(t, snap);
    Ok(c)
}

/// The warning for a recorded DNS server that did not answer.
fn silent_dns(d: &DnsStatus) -> Option<String> {
    (d.answers == Some(false)).then(|| {
        format!(
            "{} {} does not answer ({}){}",
            d.server,
            d.state.nameserver,
            d.answer,
            if d.state.backend == Backend::ResolvConf && d.in_place {
                ": every lookup of this host waits for it (`dockroute watch` takes the line out while it is silent; `dockroute down` removes it)"
            } else {
                ""
            }
        )
    })
}

/// `status`: changes nothing, needs no root where the kernel lets anyone read.
pub async fn status<N: Net>(
    net: &mut N,
    settings: &Settings,
    store: &Store,
    check_name: Option<&str>,
) -> Result<Status, EngineError> {
    let (record, record_error) = match store.load() {
        Ok(r) => (r, None),
        Err(e) => (None, Some(e.to_string())),
    };
    let mut dns = match record.as_ref().and_then(|r| r.dns.as_ref()) {
        Some(recorded) => Some(recorded_dns(recorded, settings).await),
        None => None,
    };
    let name_check = check_name.map(name_check);
    let held = record
        .as_ref()
        .and_then(|r| r.firewall_held.clone())
        .unwrap_or_default();
    let docker = record.as_ref().and_then(|r| r.docker.clone());
    let (target, target_from, discovery_error) = target_of(net, settings, record).await?;
    let links = net.links().await?;
    // Only the routes status can show: near the target's networks, default routes, through links
    // that may be tunnels (a tunnel kind, or a VPN-like name), or tagged (a VPN's thousands of
    // other routes are not parsed).
    let maybe_tunnels: Vec<u32> = vpn::tunnels(&links, &[])
        .iter()
        .filter_map(|t| links.iter().find(|l| l.name == t.name))
        .chain(links.iter().filter(|l| vpn::classify(&l.name).is_some()))
        .map(|l| l.index)
        .collect();
    let nets = target.as_ref().map(Target::networks).unwrap_or_default();
    let snap = net.snapshot_near(&nets, &maybe_tunnels).await?;
    let tagged_not_owned = snap.tagged_not_owned();
    let mut warnings: Vec<String> = tagged_not_owned
        .iter()
        .map(|t| {
            format!("{t}: tagged like dockroute's but not its shape; dockroute leaves it alone")
        })
        .collect();
    if let Some(t) = &target {
        warnings.extend(t.others.iter().map(|o| {
            format!(
                "{o} also answers on a host-only link: not the recorded VM {}, left alone",
                t.vm_ip
            )
        }));
    }
    let scope = target
        .as_ref()
        .and_then(|t| firewall::Scope::for_target(t).ok());
    let vpn_status = vpn_status(&links, &snap, scope.as_ref(), &held);
    let link = target
        .as_ref()
        .and_then(|t| links.iter().find(|l| l.name == t.ifname).cloned());

    let routes = match &target {
        Some(t) => checked_routes(net, t, link.as_ref(), &snap, &mut warnings).await?,
        None => Checked::default(),
    };
    if let (Some(d), Some(t)) = (dns.as_mut(), &target) {
        probe_dns(net, d, t, link.as_ref().map(|l| l.index)).await?;
        warnings.extend(silent_dns(d));
    }
    let Checked {
        probes,
        conflicts,
        in_sync,
        split,
    } = routes;
    let vm_filter = vm_filter::diagnose(docker.as_ref(), &probes, docker::helper::Facts::Always);
    let mut st = Status {
        target_from,
        target,
        discovery_error,
        link,
        record_error,
        installed: snap.owned,
        in_sync,
        split,
        tagged_not_owned,
        warnings,
        probes,
        conflicts,
        dns,
        name_check,
        vpn: vpn_status,
        foreign_routes: snap.foreign_routes,
        foreign_rules: snap.foreign_rules,
        docker,
        vm_filter,
        degraded: None,
    };
    st.degraded = st.degraded().map(|d| d.0.join("; "));
    Ok(st)
}

/// The DNS setting the record names, looked at where `down` would undo it.
async fn recorded_dns(recorded: &DnsState, settings: &Settings) -> DnsStatus {
    match dns::to_undo(recorded, &settings.resolv_conf, &settings.resolver_dir) {
        Ok(state) => {
            let (in_place, detail) = dns::observe(&state).await;
            DnsStatus {
                server: server_of(state.nameserver),
                state,
                in_place,
                detail,
                answers: None,
                answer: String::new(),
                degraded: !in_place,
            }
        }
        Err(e) => DnsStatus {
            server: server_of(recorded.nameserver),
            state: recorded.clone(),
            in_place: false,
            detail: e.to_string(),
            answers: None,
            answer: String::new(),
            degraded: true,
        },
    }
}

/// `--check-name`: what the system resolver answers for `name`.
fn name_check(name: &str) -> NameCheck {
    match crate::nss::addresses(name) {
        Ok(addresses) => NameCheck {
            name: name.to_string(),
            addresses,
            error: None,
        },
        Err(e) => NameCheck {
            name: name.to_string(),
            addresses: Vec::new(),
            error: Some(e),
        },
    }
}

/// The tunnels, their routes, the policy rules, and what the firewalls do to the VM.
fn vpn_status(
    links: &[LinkInfo],
    snap: &Snapshot,
    scope: Option<&firewall::Scope>,
    held: &firewall::Held,
) -> VpnStatus {
    let mut vpn_status = VpnStatus {
        links: vpn::tunnels(links, &snap.foreign_routes),
        ..Default::default()
    };
    vpn_status.routes = snap
        .foreign_routes
        .iter()
        .filter(|r| {
            r.table != 255 // the kernel's local and broadcast entries
                && r.dev
                    .as_ref()
                    .is_some_and(|d| vpn_status.links.iter().any(|l| &l.name == d))
        })
        .cloned()
        .collect();
    vpn_status.rules = snap
        .foreign_rules
        .iter()
        .filter(|r| !vpn::is_default_rule(r))
        .cloned()
        .collect();
    let seen = firewall::observe_held(scope, &firewall::Reading::All, held, None);
    vpn_status.pf_reference =
        firewall::pf::reference(cfg!(target_os = "macos"), held.pf_token, seen.pf_enabled);
    vpn_status.firewall_blocking = firewall::diff(&seen.desired, &seen.owned)
        .into_iter()
        .filter_map(|c| match c {
            firewall::FwChange::Insert { rule } => Some(rule),
            firewall::FwChange::Delete { .. } => None,
        })
        .collect();
    vpn_status.firewall_repaired = seen.owned.into_iter().map(|(r, _)| r).collect();
    vpn_status.firewall_foreign = seen.foreign;
    vpn_status.firewall_counters = seen.counters;
    vpn_status.firewall_warnings = seen.warnings;
    if !seen.errors.is_empty() {
        let errors: Vec<String> = seen.errors.iter().map(|e| e.to_string()).collect();
        vpn_status.firewall_error = Some(errors.join("; "));
    }
    let fw_all: Vec<firewall::Repair> = vpn_status
        .firewall_repaired
        .iter()
        .chain(&vpn_status.firewall_blocking)
        .cloned()
        .collect();
    vpn_status.hints = vpn::hints(
        &vpn_status.links,
        &vpn_status.rules,
        &fw_all,
        scope.map(|s| s.nets.as_slice()).unwrap_or(&[]),
    );
    vpn_status
}

/// Routes and rules not dockroute's that cover a network it routes.
fn conflicts_with(t: &Target, snap: &Snapshot) -> Vec<Conflict> {
    let mut conflicts = Vec::new();
    let host_net = t.host_net();
    let nets = t.networks();
    for r in snap.foreign_routes.clone() {
        let relevant = nets.iter().any(|n| overlaps(n, &r.dst))
            && !(r.dst.prefix_len() == 0 && matches!(r.table, MAIN_TABLE | 253))
            && !(r.table == 255 && r.dst.prefix_len() > 0 && host_net.contains(&r.dst.network()))
            && !(r.protocol == "kernel"
                && r.dst == host_net
                && r.dev.as_deref() == Some(t.ifname.as_str()));
        if relevant {
            conflicts.push(Conflict::Route(r));
        }
    }
    for rule in snap.foreign_rules.clone() {
        let matches_nets = match rule.dst {
            None => true,
            Some(d) => nets.iter().any(|n| overlaps(n, &d)),
        };
        if matches_nets && rule.pref != 0 && rule.pref < 32766 {
            conflicts.push(Conflict::Rule {
                before_dockroute: rule.pref < RULE_PREF,
                rule,
            });
        }
    }
    conflicts
}
