//! observe → diff → apply → record, shared by `up`, `down` and `status`.

use crate::discover::{self, DiscoverError, Target};
use crate::dns::{self, Backend, DnsError, DnsState};
use crate::firewall::{self, FirewallError, FwChange};
use crate::net::{
    Change, ForeignRoute, ForeignRule, LinkInfo, Lookup, MAIN_TABLE, Net, NetError, RULE_PREF,
};
use crate::plan;
use crate::record::{Record, RecordError, Store};
use crate::settings::FirewallMode;
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

/// What happened to per-domain DNS: set (`up`) or undone (`down`), and whether that changed
/// anything (for a dry run: whether it would).
#[derive(Debug, Serialize)]
pub struct DnsOutcome {
    #[serde(flatten)]
    pub state: DnsState,
    pub changed: bool,
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

/// Whether two DNS settings live in the same place (so setting one replaces the other).
fn same_place(a: &DnsState, b: &DnsState) -> bool {
    a.backend == b.backend && a.domain == b.domain && a.path == b.path && a.ifindex == b.ifindex
}

/// `up`: discover, plan, observe, diff, apply routes (undoing a half-applied change), record,
/// then DNS (undoing the routes of this run if DNS fails).
pub async fn up<N: Net>(
    net: &mut N,
    settings: &Settings,
    store: &Store,
    dry_run: bool,
    hooks: Hooks,
) -> Result<Outcome, EngineError> {
    up_reading(
        net,
        settings,
        store,
        dry_run,
        hooks,
        &firewall::Reading::All,
    )
    .await
}

/// [`up`], reading only the firewalls `reading` names (`watch`: the ones its events name).
pub async fn up_reading<N: Net>(
    net: &mut N,
    settings: &Settings,
    store: &Store,
    dry_run: bool,
    hooks: Hooks,
    reading: &firewall::Reading,
) -> Result<Outcome, EngineError> {
    // Discovery and the DNS check only read and validate; the lock covers observe → record.
    let target = discover::discover(net, &settings.request).await?;
    let want_dns = wanted_dns(settings, &target);
    if let Some(d) = &want_dns {
        dns::check(d).await?;
    }
    let _lock = if dry_run { None } else { Some(store.lock()?) };
    if let (Some(d), false) = (&want_dns, dry_run) {
        dns::sweep(d.backend, &d.path);
    }
    let desired = plan::desired(&target);
    // Only dockroute's own entries: the kernel filters the route dump (a VPN's thousands of
    // routes in main are not read).
    let owned = net.owned().await?;
    let changes = plan::diff(&desired, &owned);
    let (fw, fw_owned_before, firewall_warnings) = match settings.firewall {
        FirewallMode::Auto => {
            let scope = firewall::Scope::for_target(&target);
            let seen = firewall::observe_only(Some(&scope), reading);
            if let Some(e) = seen.errors.into_iter().next() {
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
    let mut record = Record::new(target.clone(), desired, want_dns.clone());
    record.firewall =
        !fw.is_empty() || previous.as_ref().is_some_and(|p| p.firewall) || fw_owned_before;
    if previous.as_ref() != Some(&record) {
        store.save(&record)?;
    }
    // Undone where the settings point, never at a path from the record.
    let previous_dns = previous.as_ref().and_then(|r| r.dns.as_ref());
    match previous_dns.map(|d| dns::at_settings(d, settings)) {
        Some(Ok(old)) if want_dns.as_ref().is_none_or(|w| !same_place(&old, w)) => {
            if let Err(e) = dns::revert(&old).await {
                tracing::warn!("could not undo the previous DNS setting ({old}): {e}");
            }
        }
        Some(Err(e)) => tracing::warn!("leaving the previous DNS setting: {e}"),
        _ => {}
    }
    let dns = match want_dns {
        Some(state) => match dns::apply(&state).await {
            Ok(changed) => Some(DnsOutcome { state, changed }),
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
    Ok(Outcome {
        target: Some(target),
        changes,
        firewall: fw,
        firewall_warnings,
        dns,
        dry_run,
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
        .map(|d| dns::at_settings(d, settings));
    let target = record.map(|r| r.target);
    if dry_run {
        let dns = match dns_state {
            Some(state) => {
                let state = state?;
                Some(DnsOutcome {
                    changed: dns::observe(&state).await.0,
                    state,
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
            Ok(changed) => dns = Some(DnsOutcome { state, changed }),
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
    /// Vendor switches that fix the same at the source.
    pub hints: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct DnsStatus {
    #[serde(flatten)]
    pub state: DnsState,
    pub in_place: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct NameCheck {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub error: Option<String>,
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
    let dns = match record.as_ref().and_then(|r| r.dns.as_ref()) {
        Some(recorded) => Some(match dns::at_settings(recorded, settings) {
            Ok(state) => {
                let (in_place, detail) = dns::observe(&state).await;
                DnsStatus {
                    state,
                    in_place,
                    detail,
                }
            }
            Err(e) => DnsStatus {
                state: recorded.clone(),
                in_place: false,
                detail: e.to_string(),
            },
        }),
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
    // Only the routes status can show: near the target's networks, default routes, through links
    // that look like tunnels, or tagged (a VPN's thousands of other routes are not parsed).
    let tunnels: Vec<u32> = links
        .iter()
        .filter(|l| vpn::classify(&l.name).is_some())
        .map(|l| l.index)
        .collect();
    let nets = target.as_ref().map(Target::networks).unwrap_or_default();
    let snap = net.snapshot_near(&nets, &tunnels).await?;
    let tagged_not_owned = snap.tagged_not_owned();
    let warnings = tagged_not_owned
        .iter()
        .map(|t| {
            format!("{t}: tagged like dockroute's but not its shape; dockroute leaves it alone")
        })
        .collect();
    let mut vpn_status = VpnStatus {
        links: links
            .iter()
            .filter_map(|l| {
                vpn::classify(&l.name).map(|client| VpnLink {
                    name: l.name.clone(),
                    client,
                })
            })
            .collect(),
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
    if let Some(t) = &target {
        // The link may have been re-created with a new index since the last `up`.
        let mut current = t.clone();
        if let Some(l) = &link {
            current.ifindex = l.index;
        }
        in_sync = plan::diff(&plan::desired(&current), &snap.owned).is_empty();
        let host_net = t.host_net();
        let mut targets: Vec<(Ipv4Net, Ipv4Addr)> = t
            .subnets
            .iter()
            .map(|s| (*s, s.hosts().next().unwrap_or(s.network())))
            .collect();
        targets.push((host_net, t.vm_ip));
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
        let nets = t.networks();
        for r in snap.foreign_routes {
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
        for rule in snap.foreign_rules {
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
    Ok(Status {
        target_from,
        target,
        discovery_error,
        link,
        record_error,
        installed: snap.owned,
        in_sync,
        tagged_not_owned,
        warnings,
        probes,
        conflicts,
        dns,
        name_check,
        vpn: vpn_status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::{Request, VmIpSource};
    use crate::net::{Entry, LinkInfo, Neighbour, Snapshot};
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
            dns: crate::settings::DnsMode::Off,
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
}
