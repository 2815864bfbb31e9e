//! observe → diff → apply → record, shared by `up`, `down` and `status`.

use crate::discover::{self, DiscoverError, Target};
use crate::dns::{self, Backend, DnsError, DnsState};
use crate::firewall::{self, FirewallError, FwChange};
use crate::net::{
    Change, ForeignRoute, ForeignRule, LinkInfo, Lookup, MAIN_TABLE, Net, NetError, RULE_PREF,
};
use crate::options::FirewallMode;
use crate::plan;
use crate::record::{Record, RecordError, Store};
use crate::settings::Settings;
use crate::vpn::{self, VpnLink};
use ipnet::Ipv4Net;
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Discover(#[from] DiscoverError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Dns(#[from] DnsError),
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    #[error("firewall: {err}; rolled back the {done} route change(s) of this run{}", undo_note(.undo_failed))]
    FirewallApply {
        err: FirewallError,
        done: usize,
        undo_failed: Vec<String>,
    },
    #[error("{err}; rolled back the {done} change(s) this run had made{}", undo_note(.undo_failed))]
    Apply {
        err: NetError,
        done: usize,
        undo_failed: Vec<String>,
    },
    #[error("DNS: {err}; rolled back the {done} route change(s) of this run{}", undo_note(.undo_failed))]
    DnsApply {
        err: DnsError,
        done: usize,
        undo_failed: Vec<String>,
    },
    #[error(
        "DNS: the VM's DNS server {server} does not answer ({why}); dockroute does not name it first in {path}, where every lookup of this host would wait for it{}; rolled back the {done} route change(s) of this run{}. Start the VM's DNS server and run `up` again, or use `--dns off` for the routes alone (`dockroute watch` puts the line in once the server answers)",
        if *.withdrew { format!("; took dockroute's line out of {}", .path.display()) } else { String::new() },
        undo_note(.undo_failed)
    )]
    DnsSilent {
        server: std::net::SocketAddrV4,
        path: std::path::PathBuf,
        why: String,
        withdrew: bool,
        done: usize,
        undo_failed: Vec<String>,
    },
    #[error("{} of {total} removal(s) failed: {}", .failed.len(), .failed.join("; "))]
    Remove { total: usize, failed: Vec<String> },
}

fn undo_note(failed: &[String]) -> String {
    if failed.is_empty() {
        String::new()
    } else {
        format!(" (undo failed for: {})", failed.join("; "))
    }
}

/// Test hook: stop for an hour before the Nth change, so a test can kill dockroute half-way.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hooks {
    pub stall_before_change: Option<usize>,
}

/// What `up` does about a DNS server that does not answer. Only the resolv-conf backend asks:
/// there the server comes first for every name the host looks up, so a silent one stalls them
/// all (the others send it only the domain's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsGate {
    /// `up`: ask it once the routes (and firewall repairs) are in place, since they are how it is
    /// reached; no answer: undo this run's changes and refuse.
    Refuse,
    /// `watch`: `Some` is what its own probes found, `None` asks as `up` does. No answer: the
    /// routes stay and dockroute's line is taken out of resolv.conf.
    Withhold(Option<bool>),
}

/// What happened to per-domain DNS: set (`up`) or undone (`down`), and whether that changed
/// anything (for a dry run: whether it would).
#[derive(Debug, Serialize)]
pub struct DnsOutcome {
    #[serde(flatten)]
    pub state: DnsState,
    pub changed: bool,
    /// Whether the server answered (resolv-conf only). `false` (watch only): the line was taken
    /// out, or stays out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answers: Option<bool>,
}

/// The result of `up` or `down`.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub target: Option<Target>,
    pub changes: Vec<Change>,
    /// Firewall rules inserted (repairs) or deleted (dockroute's own, no longer needed).
    pub firewall: Vec<FwChange>,
    /// What the firewall step could not check (a missing program, a rule it cannot read, a rule
    /// commented `dockroute` that is not dockroute's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub firewall_warnings: Vec<String>,
    pub dns: Option<DnsOutcome>,
    pub dry_run: bool,
    /// `up`: the networks that do not go via the VM once everything is applied, and what wins.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_via_vm: Vec<String>,
    /// `up`: what the kernel picks for each network once everything is applied.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<Probe>,
    /// A dry run: why the firewall could not be read (reading it needs root), so what it would
    /// repair is not shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firewall_unread: Option<String>,
}

/// Why a dry run left the firewall out.
fn unread_note(errors: &[FirewallError]) -> String {
    let errors: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    let root = if nix::unistd::geteuid().is_root() {
        ""
    } else {
        "reading the firewall needs root: "
    };
    format!("{root}{}", errors.join("; "))
}

fn stall(hooks: Hooks, i: usize) {
    if hooks.stall_before_change == Some(i) {
        tracing::warn!("test hook: stalling before change {i}");
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Apply `changes` in one batch, or in two around the test hook's stall (so that a test can kill
/// the process between them). Each change's result, in order; `Err` when they are unknown.
async fn send<N: Net>(
    net: &mut N,
    changes: &[Change],
    hooks: Hooks,
) -> Result<Vec<Result<(), NetError>>, NetError> {
    for change in changes {
        tracing::info!("{change}");
    }
    let at = hooks
        .stall_before_change
        .map_or(0, |i| i.min(changes.len()));
    let (before, after) = changes.split_at(at);
    let mut results = Vec::with_capacity(changes.len());
    if !before.is_empty() {
        results.extend(net.apply(before).await?);
    }
    stall(hooks, at);
    if !after.is_empty() {
        results.extend(net.apply(after).await?);
    }
    Ok(results)
}

/// Undo `done`, newest first, in one batch; returns what could not be undone.
async fn undo_all<N: Net>(net: &mut N, done: &[Change]) -> Vec<String> {
    let undo: Vec<Change> = done.iter().rev().map(Change::inverse).collect();
    if undo.is_empty() {
        return Vec::new();
    }
    match net.apply(&undo).await {
        Ok(results) => undo
            .iter()
            .zip(results)
            .filter_map(|(change, r)| r.err().map(|e| format!("{change}: {e}")))
            .collect(),
        Err(e) => vec![format!("undoing {} change(s): {e}", undo.len())],
    }
}

/// Apply `changes`; if one fails, undo the others that took effect and report the first failure.
async fn apply_all<N: Net>(
    net: &mut N,
    changes: &[Change],
    hooks: Hooks,
) -> Result<(), EngineError> {
    let (err, applied) = match send(net, changes, hooks).await {
        Ok(results) => {
            let mut applied = Vec::new();
            let mut first = None;
            for (change, result) in changes.iter().zip(results) {
                match result {
                    Ok(()) => applied.push(change.clone()),
                    Err(e) => {
                        first.get_or_insert(e);
                    }
                }
            }
            match first {
                None => return Ok(()),
                Some(err) => (err, applied),
            }
        }
        // The answers were lost: undo them all (undoing what did not happen changes nothing).
        Err(err) => (err, changes.to_vec()),
    };
    let undo_failed = undo_all(net, &applied).await;
    Err(EngineError::Apply {
        err,
        done: applied.len(),
        undo_failed,
    })
}

/// The DNS setting `up` wants for this target, if any.
fn wanted_dns(settings: &Settings, target: &Target) -> Option<DnsState> {
    dns::choose(settings.dns).map(|backend| DnsState {
        backend,
        domain: settings.domain.clone(),
        nameserver: settings.nameserver,
        ifname: target.ifname.clone(),
        ifindex: target.ifindex,
        path: match backend {
            Backend::Resolved => Default::default(),
            Backend::ResolvConf => settings.resolv_conf.clone(),
            Backend::ResolverDir => settings.resolver_dir.clone(),
        },
    })
}

/// Settings `up` was given that this target or DNS backend does not use: warnings, not errors.
fn warn_unused(settings: &Settings, target: &Target, dns: Option<&DnsState>) {
    if settings.resolver_dir != std::path::Path::new(crate::settings::DEFAULT_RESOLVER_DIR)
        && dns.is_none_or(|d| d.backend != Backend::ResolverDir)
    {
        tracing::warn!(
            "--resolver-dir {} is ignored: DNS is not set through resolver files (that takes --dns resolver-dir)",
            settings.resolver_dir.display()
        );
    }
    let ns = *settings.nameserver.ip();
    if dns.is_some() && !target.networks().iter().any(|n| n.contains(&ns)) {
        let nets: Vec<String> = target.networks().iter().map(|n| n.to_string()).collect();
        tracing::warn!(
            "--nameserver {ns} is in none of the networks routed through the VM ({}): queries for *.{} will not go through dockroute's routes",
            nets.join(", "),
            settings.domain
        );
    }
}

/// Whether two DNS settings live in the same place (so setting one replaces the other).
fn same_place(a: &DnsState, b: &DnsState) -> bool {
    a.backend == b.backend && a.domain == b.domain && a.path == b.path && a.ifindex == b.ifindex
}

/// The entries `up` wants for `target` on this platform, and the subnets routed as their halves
/// (with one table, a prefix that someone else's route holds is routed as its two halves).
async fn planned<N: Net>(
    net: &mut N,
    target: &Target,
) -> Result<(Vec<crate::net::Entry>, Vec<plan::single::Split>), EngineError> {
    match net.layout() {
        plan::Layout::PolicyTable => Ok((plan::desired(target), Vec::new())),
        plan::Layout::SingleTable => {
            let held = net.held(&plan::single::candidates(target)).await?;
            let p = plan::single::desired(target, &held).map_err(NetError::Conflict)?;
            Ok((p.entries, p.splits))
        }
    }
}

/// Take dockroute's line for `d` out of resolv.conf if it is there. Returns whether it was.
fn withdraw(d: &DnsState) -> bool {
    let set = std::fs::read_to_string(&d.path)
        .is_ok_and(|c| dns::resolv_conf::is_set(&c, &d.domain, d.nameserver));
    if !set {
        return false;
    }
    match dns::resolv_conf::revert(&d.path) {
        Ok(changed) => changed,
        Err(e) => {
            tracing::warn!("could not take dockroute's line out: {e}");
            false
        }
    }
}

/// `up`: discover, plan, observe, diff, apply routes (undoing a half-applied change), record,
/// then DNS (undoing the routes of this run if DNS fails). A resolv-conf server that does not
/// answer is refused ([`DnsGate::Refuse`]).
pub async fn up<N: Net>(
    net: &mut N,
    settings: &Settings,
    store: &Store,
    dry_run: bool,
    hooks: Hooks,
) -> Result<Outcome, EngineError> {
    up_with(net, settings, store, dry_run, hooks, DnsGate::Refuse).await
}

/// [`up`], with what to do about a DNS server that does not answer.
pub async fn up_with<N: Net>(
    net: &mut N,
    settings: &Settings,
    store: &Store,
    dry_run: bool,
    hooks: Hooks,
    gate: DnsGate,
) -> Result<Outcome, EngineError> {
    // Discovery and the DNS check only read and validate; the lock covers observe → record.
    let target = discover::discover(net, &settings.request).await?;
    let want_dns = wanted_dns(settings, &target);
    warn_unused(settings, &target, want_dns.as_ref());
    if let Some(d) = &want_dns {
        dns::check(d).await?;
    }
    let _lock = if dry_run { None } else { Some(store.lock()?) };
    if let (Some(d), false) = (&want_dns, dry_run) {
        dns::sweep(d.backend, &d.path);
    }
    let (desired, splits) = planned(net, &target).await?;
    for split in &splits {
        tracing::warn!("{split}");
    }
    // Only dockroute's own entries: the kernel filters the route dump (a VPN's thousands of
    // routes in main are not read).
    let owned = net.owned().await?;
    let changes = plan::diff(&desired, &owned);
    let mut firewall_unread = None;
    let (fw, fw_owned_before, firewall_warnings) = match settings.firewall {
        FirewallMode::Auto => {
            let scope = firewall::Scope::for_target(&target);
            let seen = firewall::observe(Some(&scope));
            if dry_run && !seen.errors.is_empty() {
                // A dry run shows what it can: the firewall is left out, and says why.
                firewall_unread = Some(unread_note(&seen.errors));
            } else if let Some(e) = seen.errors.into_iter().next() {
                return Err(e.into());
            }
            for w in &seen.warnings {
                tracing::warn!("firewall: {w}");
            }
            (
                firewall::diff(&seen.desired, &seen.owned),
                !seen.owned.is_empty(),
                seen.warnings,
            )
        }
        FirewallMode::Off => (Vec::new(), false, Vec::new()),
    };
    if dry_run {
        let dns = match want_dns {
            Some(state) => Some(DnsOutcome {
                changed: !dns::observe(&state).await.0,
                state,
                answers: None,
            }),
            None => None,
        };
        return Ok(Outcome {
            target: Some(target),
            changes,
            firewall: fw,
            firewall_warnings,
            dns,
            dry_run,
            not_via_vm: Vec::new(),
            probes: Vec::new(),
            firewall_unread,
        });
    }

    let previous = store.load().ok().flatten();
    apply_all(net, &changes, hooks).await?;
    if let Err(err) = firewall::apply(&fw) {
        let undo_failed = undo_all(net, &changes).await;
        return Err(EngineError::FirewallApply {
            err,
            done: changes.len(),
            undo_failed,
        });
    }
    // resolv-conf names the server first for every lookup: it must answer. It is reached
    // through the routes and firewall repairs just put in place, so it is asked now (before them
    // the query would fail, or leave by the default route), and they are undone if it is silent.
    let silent = match (&want_dns, gate) {
        (Some(d), _) if d.backend != Backend::ResolvConf => None,
        (Some(d), DnsGate::Refuse | DnsGate::Withhold(None)) => {
            match dns::probe::ask(
                d.nameserver,
                &d.domain,
                dns::probe::TRIES,
                dns::probe::TIMEOUT,
            ) {
                Ok(a) => {
                    tracing::debug!("DNS: {} {a}", d.nameserver);
                    None
                }
                Err(e) => Some(e.to_string()),
            }
        }
        (Some(_), DnsGate::Withhold(Some(answers))) => {
            (!answers).then(|| "watch's last probes got no answer".to_string())
        }
        (None, _) => None,
    };
    let answers = want_dns
        .as_ref()
        .filter(|d| d.backend == Backend::ResolvConf)
        .map(|_| silent.is_none());
    if let (Some(why), Some(d), DnsGate::Refuse) = (&silent, &want_dns, gate) {
        // A VPN that takes the subnet also takes the server: say so, it is the likelier cause.
        let why = match check_routes(net, &target).await {
            Ok((_, bad)) if !bad.is_empty() => format!("{why}; {}", bad.join("; ")),
            _ => why.clone(),
        };
        firewall::undo(&fw);
        let undo_failed = undo_all(net, &changes).await;
        return Err(EngineError::DnsSilent {
            server: d.nameserver,
            path: d.path.clone(),
            why,
            withdrew: withdraw(d),
            done: changes.len(),
            undo_failed,
        });
    }
    let mut record = Record::new(target.clone(), desired, want_dns.clone());
    record.firewall =
        !fw.is_empty() || previous.as_ref().is_some_and(|p| p.firewall) || fw_owned_before;
    record.flags = Some(settings.request.flags.clone());
    if previous.as_ref() != Some(&record) {
        store.save(&record)?;
    }
    // Undone where the settings point, never at a path from the record.
    let previous_dns = previous.as_ref().and_then(|r| r.dns.as_ref());
    match previous_dns.map(|d| dns::at_settings(d, &settings.resolv_conf, &settings.resolver_dir)) {
        Some(Ok(old)) if want_dns.as_ref().is_none_or(|w| !same_place(&old, w)) => {
            if let Err(e) = dns::revert(&old).await {
                tracing::warn!("could not undo the previous DNS setting ({old}): {e}");
            }
        }
        Some(Err(e)) => tracing::warn!("leaving the previous DNS setting: {e}"),
        _ => {}
    }
    let dns = match want_dns {
        Some(state) if answers == Some(false) => {
            // watch: the routes stay, the line goes (and comes back when the server answers)
            let changed = withdraw(&state);
            if changed {
                tracing::warn!(
                    "DNS: the VM's DNS server {} does not answer ({}): took dockroute's line out of {}",
                    state.nameserver,
                    silent.as_deref().unwrap_or_default(),
                    state.path.display()
                );
            }
            Some(DnsOutcome {
                state,
                changed,
                answers,
            })
        }
        Some(state) => match dns::apply(&state).await {
            Ok(changed) => Some(DnsOutcome {
                state,
                changed,
                answers,
            }),
            Err(err) => {
                firewall::undo(&fw);
                let undo_failed = undo_all(net, &changes).await;
                let restored = match &previous {
                    Some(p) => store.save(p),
                    None => store.clear(),
                };
                if let Err(e) = restored {
                    tracing::warn!("could not restore the record: {e}");
                }
                return Err(EngineError::DnsApply {
                    err,
                    done: changes.len(),
                    undo_failed,
                });
            }
        },
        None => None,
    };
    // Applied is not the same as working: ask the kernel what it picks now.
    let (probes, not_via_vm) = check_routes(net, &target).await?;
    Ok(Outcome {
        target: Some(target),
        changes,
        firewall: fw,
        firewall_warnings,
        dns,
        dry_run,
        not_via_vm,
        probes,
        firewall_unread: None,
    })
}

/// `down`: undo DNS, remove everything tagged as dockroute's, then the record. Needs no
/// discovery. Keeps going past a failure and reports every one.
pub async fn down<N: Net>(
    net: &mut N,
    settings: &Settings,
    store: &Store,
    dry_run: bool,
    hooks: Hooks,
) -> Result<Outcome, EngineError> {
    let _lock = if dry_run { None } else { Some(store.lock()?) };
    let owned = net.owned().await?;
    let changes = plan::diff(&[], &owned);
    let record = store.load().ok().flatten();
    // The firewalls are read (which takes a process per backend) only when dockroute inserted
    // rules there, or when there is no record to say it did not.
    // One firewall backend that cannot be read does not stop the others, DNS or the routes
    // from being undone: its error is reported at the end.
    let (fw, fw_seen) = if record.as_ref().is_none_or(|r| r.firewall) {
        firewall::removals()
    } else {
        (Vec::new(), firewall::Observed::default())
    };
    for w in &fw_seen.warnings {
        tracing::warn!("firewall: {w}");
    }
    let firewall_warnings = fw_seen.warnings;
    // Undone where the settings point, never at a path from the record.
    let dns_state = record
        .as_ref()
        .and_then(|r| r.dns.as_ref())
        .map(|d| dns::at_settings(d, &settings.resolv_conf, &settings.resolver_dir));
    let target = record.map(|r| r.target);
    if dry_run {
        let dns = match dns_state {
            Some(state) => {
                let state = state?;
                Some(DnsOutcome {
                    changed: dns::observe(&state).await.0,
                    state,
                    answers: None,
                })
            }
            None => None,
        };
        if let Some(e) = fw_seen.errors.into_iter().next() {
            return Err(e.into());
        }
        return Ok(Outcome {
            target,
            changes,
            firewall: fw,
            firewall_warnings,
            dns,
            dry_run,
            not_via_vm: Vec::new(),
            probes: Vec::new(),
            firewall_unread: None,
        });
    }
    let mut failed: Vec<String> = fw_seen.errors.iter().map(|e| e.to_string()).collect();
    failed.extend(firewall::apply_all(&fw).iter().map(|e| e.to_string()));
    let mut dns = None;
    match &dns_state {
        Some(Ok(state)) => dns::sweep(state.backend, &state.path),
        Some(Err(_)) => {}
        None => dns::sweep(Backend::ResolvConf, &settings.resolv_conf),
    }
    let other_steps = 2; // the firewall, and the DNS undo (from the record, or resolv.conf's marker)
    match dns_state {
        Some(Ok(state)) => match dns::revert(&state).await {
            Ok(changed) => {
                dns = Some(DnsOutcome {
                    state,
                    changed,
                    answers: None,
                })
            }
            Err(e) => failed.push(e.to_string()),
        },
        Some(Err(e)) => failed.push(e.to_string()),
        // No record (deleted, or unreadable): the marked lines in resolv.conf still identify
        // themselves.
        None => {
            if let Err(e) = dns::resolv_conf::revert(&settings.resolv_conf) {
                failed.push(e.to_string());
            }
        }
    }
    match send(net, &changes, hooks).await {
        Ok(results) => failed.extend(
            results
                .into_iter()
                .filter_map(|r| r.err().map(|e| e.to_string())),
        ),
        Err(e) => failed.push(e.to_string()),
    }
    if !failed.is_empty() {
        return Err(EngineError::Remove {
            total: changes.len() + other_steps,
            failed,
        });
    }
    store.clear()?;
    Ok(Outcome {
        target,
        changes,
        firewall: fw,
        firewall_warnings,
        dns,
        dry_run,
        not_via_vm: Vec::new(),
        probes: Vec::new(),
        firewall_unread: None,
    })
}

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
async fn check_routes<N: Net>(
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

async fn probe<N: Net>(net: &mut N, t: &Target) -> Result<Vec<Probe>, NetError> {
    let host_net = t.host_net();
    let mut targets: Vec<(Ipv4Net, Ipv4Addr)> = t
        .subnets
        .iter()
        .map(|s| (*s, s.hosts().next().unwrap_or(s.network())))
        .collect();
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

impl Outcome {
    /// After `up`: the subnets that do not go via the VM although dockroute's entries are in
    /// place.
    pub fn degraded(&self) -> Option<Degraded> {
        let bad = &self.not_via_vm;
        (!bad.is_empty()).then(|| Degraded(bad.clone()))
    }
}

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
    /// Subnets routed as their two halves, because another route holds the exact prefix (one
    /// routing table: macOS).
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
    /// Every route and rule not dockroute's (to name what wins over it).
    #[serde(skip)]
    pub foreign_routes: Vec<ForeignRoute>,
    #[serde(skip)]
    pub foreign_rules: Vec<ForeignRule>,
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
    let via_vm = match net.lookup(ns).await? {
        Lookup::Route { dev, .. } => ifindex.is_some() && dev.as_deref() == Some(t.ifname.as_str()),
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
        Some(recorded) => Some(
            match dns::at_settings(recorded, &settings.resolv_conf, &settings.resolver_dir) {
                Ok(state) => {
                    let (in_place, detail) = dns::observe(&state).await;
                    DnsStatus {
                        state,
                        in_place,
                        detail,
                        answers: None,
                        answer: String::new(),
                        degraded: !in_place,
                    }
                }
                Err(e) => DnsStatus {
                    state: recorded.clone(),
                    in_place: false,
                    detail: e.to_string(),
                    answers: None,
                    answer: String::new(),
                    degraded: true,
                },
            },
        ),
        None => None,
    };
    let name_check = check_name.map(|name| match crate::nss::addresses(name) {
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
    });
    let (target, target_from, discovery_error) = match record.map(|r| r.target) {
        Some(t) => (Some(t), Some("record"), None),
        None => {
            let mut req = settings.request.clone();
            req.wait = None;
            match discover::discover(net, &req).await {
                Ok(t) => (Some(t), Some("discovery"), None),
                Err(DiscoverError::Net(e)) => return Err(e.into()),
                Err(e) => (None, None, Some(e.to_string())),
            }
        }
    };
    let links = net.links().await?;
    let snap = net.snapshot().await?;
    let tagged_not_owned = snap.tagged_not_owned();
    let mut warnings: Vec<String> = tagged_not_owned
        .iter()
        .map(|t| {
            format!("{t}: tagged like dockroute's but not its shape; dockroute leaves it alone")
        })
        .collect();
    let mut vpn_status = VpnStatus {
        links: vpn::tunnels(&links, &snap.foreign_routes),
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
    let scope = target.as_ref().map(firewall::Scope::for_target);
    let seen = firewall::observe(scope.as_ref());
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
        scope.as_ref().map(|s| s.nets.as_slice()).unwrap_or(&[]),
    );
    let link = target
        .as_ref()
        .and_then(|t| links.iter().find(|l| l.name == t.ifname).cloned());

    let mut probes = Vec::new();
    let mut conflicts = Vec::new();
    let mut in_sync = false;
    let mut split = Vec::new();
    if let Some(t) = &target {
        // The link may have been re-created with a new index since the last `up`.
        let mut current = t.clone();
        if let Some(l) = &link {
            current.ifindex = l.index;
        }
        match planned(net, &current).await {
            Ok((want, splits)) => {
                in_sync = plan::diff(&want, &snap.owned).is_empty();
                split = splits;
            }
            Err(EngineError::Net(NetError::Conflict(e))) => warnings.push(e),
            Err(e) => return Err(e),
        }
        let host_net = t.host_net();
        probes = probe(net, t).await?;
        let nets = t.networks();
        for r in snap.foreign_routes.clone() {
            let relevant = nets.iter().any(|n| overlaps(n, &r.dst))
                && !(r.dst.prefix_len() == 0 && matches!(r.table, MAIN_TABLE | 253))
                && !(r.table == 255
                    && r.dst.prefix_len() > 0
                    && host_net.contains(&r.dst.network()))
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
    }
    if let (Some(d), Some(t)) = (dns.as_mut(), &target) {
        probe_dns(net, d, t, link.as_ref().map(|l| l.index)).await?;
        if d.answers == Some(false) {
            warnings.push(format!(
                "the VM's DNS server {} does not answer ({}){}",
                d.state.nameserver,
                d.answer,
                if d.state.backend == Backend::ResolvConf && d.in_place {
                    ": every lookup of this host waits for it (`dockroute watch` takes the line out while it is silent; `dockroute down` removes it)"
                } else {
                    ""
                }
            ));
        }
    }
    Ok(Status {
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::{Request, VmIpSource};
    use crate::net::{Entry, LinkInfo, Neighbour, Snapshot};
    use crate::report;
    use std::time::Instant;

    /// A fake kernel: one host-only link, a list of owned entries, and a change that fails.
    struct Fake {
        owned: Vec<Entry>,
        fail_on: Option<usize>,
        applied: usize,
    }

    impl Fake {
        fn apply_one(&mut self, change: &Change) -> Result<(), NetError> {
            if self.fail_on == Some(self.applied) {
                self.fail_on = None;
                return Err(NetError::Conflict("injected failure".into()));
            }
            self.applied += 1;
            match change {
                Change::Add(e) => self.owned.push(e.clone()),
                Change::Remove(e) => {
                    let i = self
                        .owned
                        .iter()
                        .position(|o| o == e)
                        .expect("removing unknown");
                    self.owned.remove(i);
                }
            }
            Ok(())
        }
    }

    impl Net for Fake {
        async fn links(&mut self) -> Result<Vec<LinkInfo>, NetError> {
            Ok(vec![LinkInfo {
                index: 3,
                name: "vboxnet0".into(),
                up: true,
                loopback: false,
                addrs: vec!["192.168.99.1/24".parse().unwrap()],
                kind: None,
            }])
        }
        async fn neighbours(&mut self) -> Result<Vec<Neighbour>, NetError> {
            Ok(vec![])
        }
        async fn snapshot(&mut self) -> Result<Snapshot, NetError> {
            Ok(Snapshot {
                owned: self.owned.clone(),
                ..Default::default()
            })
        }
        async fn lookup(&mut self, _dst: Ipv4Addr) -> Result<Lookup, NetError> {
            Ok(Lookup::Unreachable {
                reason: "fake".into(),
            })
        }
        async fn apply(
            &mut self,
            changes: &[Change],
        ) -> Result<Vec<Result<(), NetError>>, NetError> {
            Ok(changes.iter().map(|c| self.apply_one(c)).collect())
        }
        async fn subscribe(&mut self) -> Result<(), NetError> {
            Ok(())
        }
        async fn next_event(&mut self, _deadline: Instant) -> Result<bool, NetError> {
            Ok(false)
        }
    }

    fn settings() -> Settings {
        Settings {
            config_path: "/nonexistent".into(),
            state_dir: "/nonexistent".into(),
            json: false,
            request: Request {
                vm_ip: Some(("192.168.99.100".parse().unwrap(), VmIpSource::Flag)),
                subnets: vec!["172.17.0.0/16".parse().unwrap()],
                ..Default::default()
            },
            domain: "docker".into(),
            nameserver: "172.17.0.1:53".parse().unwrap(),
            dns: crate::options::DnsMode::Off,
            resolver_dir: "/etc/resolver".into(),
            resolv_conf: "/nonexistent/resolv.conf".into(),
            firewall: FirewallMode::Off,
        }
    }

    #[test]
    fn up_twice_changes_nothing_the_second_time_and_down_clears() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let mut fake = Fake {
            owned: vec![],
            fail_on: None,
            applied: 0,
        };
        futures_lite::future::block_on(async {
            let first = up(&mut fake, &settings(), &store, false, Hooks::default())
                .await
                .unwrap();
            assert_eq!(first.changes.len(), 5);
            assert!(store.load().unwrap().is_some());
            let second = up(&mut fake, &settings(), &store, false, Hooks::default())
                .await
                .unwrap();
            assert!(second.changes.is_empty());
            let gone = down(&mut fake, &settings(), &store, false, Hooks::default())
                .await
                .unwrap();
            assert_eq!(gone.changes.len(), 5);
            assert!(fake.owned.is_empty());
            assert!(store.load().unwrap().is_none());
        });
    }

    #[test]
    fn a_failed_change_rolls_back_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let mut fake = Fake {
            owned: vec![],
            fail_on: Some(3),
            applied: 0,
        };
        futures_lite::future::block_on(async {
            let e = up(&mut fake, &settings(), &store, false, Hooks::default())
                .await
                .unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains("injected failure") && msg.contains("rolled back the 4 change(s)"),
                "{msg}"
            );
            assert!(fake.owned.is_empty(), "left behind: {:?}", fake.owned);
            assert!(store.load().unwrap().is_none());
        });
    }

    #[test]
    fn dry_run_applies_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("never-created"));
        let mut fake = Fake {
            owned: vec![],
            fail_on: None,
            applied: 0,
        };
        futures_lite::future::block_on(async {
            let o = up(&mut fake, &settings(), &store, true, Hooks::default())
                .await
                .unwrap();
            assert_eq!(o.changes.len(), 5);
            assert!(fake.owned.is_empty());
            assert!(!store.dir().exists());
        });
    }

    /// A fake one-table kernel (macOS): routes by prefix, some of them a VPN's.
    struct OneTable {
        /// (prefix, via, dockroute's)
        routes: Vec<(Ipv4Net, Ipv4Addr, bool)>,
    }

    impl OneTable {
        fn ours(&self) -> Vec<Entry> {
            self.routes
                .iter()
                .filter(|r| r.2)
                .map(|r| {
                    Entry::Route(crate::net::RouteSpec {
                        table: MAIN_TABLE,
                        dst: r.0,
                        gateway: Some(r.1),
                        ifindex: 3,
                        ifname: "vboxnet0".into(),
                        prefsrc: None,
                        metric: 0,
                    })
                })
                .collect()
        }
    }

    impl Net for OneTable {
        fn layout(&self) -> crate::net::Layout {
            crate::net::Layout::SingleTable
        }
        async fn links(&mut self) -> Result<Vec<LinkInfo>, NetError> {
            Fake {
                owned: vec![],
                fail_on: None,
                applied: 0,
            }
            .links()
            .await
        }
        async fn neighbours(&mut self) -> Result<Vec<Neighbour>, NetError> {
            Ok(vec![])
        }
        async fn snapshot(&mut self) -> Result<Snapshot, NetError> {
            Ok(Snapshot {
                owned: self.ours(),
                ..Default::default()
            })
        }
        async fn held(&mut self, prefixes: &[Ipv4Net]) -> Result<Vec<crate::net::Held>, NetError> {
            Ok(self
                .routes
                .iter()
                .filter(|r| !r.2 && prefixes.contains(&r.0))
                .map(|r| crate::net::Held {
                    prefix: r.0,
                    by: format!("{} via {} dev utun3", r.0, r.1),
                })
                .collect())
        }
        async fn lookup(&mut self, _dst: Ipv4Addr) -> Result<Lookup, NetError> {
            Ok(Lookup::Unreachable {
                reason: "fake".into(),
            })
        }
        async fn apply(
            &mut self,
            changes: &[Change],
        ) -> Result<Vec<Result<(), NetError>>, NetError> {
            Ok(changes
                .iter()
                .map(|c| match c {
                    Change::Add(Entry::Route(r)) => {
                        if self.routes.iter().any(|x| x.0 == r.dst) {
                            return Err(NetError::Conflict("EEXIST".into()));
                        }
                        self.routes.push((r.dst, r.gateway.unwrap(), true));
                        Ok(())
                    }
                    Change::Remove(Entry::Route(r)) => {
                        self.routes.retain(|x| !(x.2 && x.0 == r.dst));
                        Ok(())
                    }
                    Change::Add(Entry::Rule(_)) => panic!("no rules on one table"),
                    Change::Remove(Entry::Rule(_)) => Ok(()),
                })
                .collect())
        }
        async fn subscribe(&mut self) -> Result<(), NetError> {
            Ok(())
        }
        async fn next_event(&mut self, _deadline: Instant) -> Result<bool, NetError> {
            Ok(false)
        }
    }

    #[test]
    fn one_table_routes_around_a_vpn_and_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let vpn: Ipv4Net = "172.17.0.0/16".parse().unwrap();
        let vpn_gw: Ipv4Addr = "10.8.0.1".parse().unwrap();
        let mut k = OneTable {
            routes: vec![(vpn, vpn_gw, false)],
        };
        let text = |c: &[Change]| c.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        futures_lite::future::block_on(async {
            let o = up(&mut k, &settings(), &store, false, Hooks::default())
                .await
                .unwrap();
            assert_eq!(
                text(&o.changes),
                [
                    "+ route 172.17.0.0/17 via 192.168.99.100 dev vboxnet0 table main proto dockroute",
                    "+ route 172.17.128.0/17 via 192.168.99.100 dev vboxnet0 table main proto dockroute",
                ]
            );
            assert!(
                k.routes.contains(&(vpn, vpn_gw, false)),
                "the VPN's route stays"
            );
            let st = status(&mut k, &settings(), &store, None).await.unwrap();
            assert!(st.in_sync);
            assert_eq!(st.split.len(), 1);
            assert!(report::status(&st).contains("split: 172.17.0.0/16 is held by another route (172.17.0.0/16 via 10.8.0.1 dev utun3)"));
            // nothing to do while it stays that way
            let again = up(&mut k, &settings(), &store, false, Hooks::default())
                .await
                .unwrap();
            assert!(again.changes.is_empty());
            // the VPN disconnects: the halves give way to the whole subnet
            k.routes.retain(|r| r.2);
            let back = up(&mut k, &settings(), &store, false, Hooks::default())
                .await
                .unwrap();
            assert_eq!(back.changes.len(), 3);
            assert_eq!(
                text(&back.changes)[2],
                "+ route 172.17.0.0/16 via 192.168.99.100 dev vboxnet0 table main proto dockroute"
            );
            // down removes dockroute's routes and nobody else's
            let other = ("172.16.0.0/12".parse().unwrap(), vpn_gw, false);
            k.routes.push(other);
            down(&mut k, &settings(), &store, false, Hooks::default())
                .await
                .unwrap();
            assert_eq!(k.routes, vec![other]);
        });
    }
}
