//! `up`'s steps ([`super::up_with`] runs them in order): looking before the lock (the target,
//! Docker, the DNS wanted, the firewalls read ahead), the plan under it, the DNS server's gate
//! once the routes are in place, the record of the run, DNS itself, and the check of what the
//! kernel and the VM's filter now do; each failure after the first change undoes what this run
//! put in place ([`Undo`]).

use super::owned::{Seen, observe_owned};
use super::{
    DnsGate, DnsOutcome, DockerStart, EngineError, FirewallPlan, Probe, asks_now, check_routes,
    firewall_plan, planned, same_place, silence, undo_all, vm_filter, wanted_dns, warn_unused,
    with_docker, withdraw,
};
use crate::discover::{self, Target};
use crate::dns::{self, Backend, DnsState};
use crate::docker::{self, vmfilter::Diagnosis};
use crate::firewall::{self, FwChange, Held};
use crate::net::{Change, Entry, Net};
use crate::options::FirewallMode;
use crate::plan;
use crate::record::{Record, Store};
use crate::settings::Settings;

/// What `up` learned before taking the lock: discovery, Docker and the DNS check only read and
/// validate.
pub(super) struct Looked {
    pub target: Target,
    pub docker: docker::Report,
    /// The running containers the engine's listing brought (for the VM filter's probes).
    pub containers: Option<Result<Vec<docker::containers::ListedContainer>, String>>,
    pub want_dns: Option<DnsState>,
    /// The firewalls, read while the engine answered.
    pub firewalls: Option<std::thread::JoinHandle<firewall::Memo>>,
}

/// Discover the target (the VM the last `up` found on its own stays the VM: [`discover::Pin`]),
/// ask Docker meanwhile, and check the DNS wanted. `memo_given`: the caller remembers a
/// firewall reading (`watch`); otherwise, while the engine answers, the firewalls are read (the engine's
/// networks are part of what they are judged for).
pub(super) async fn look<N: Net>(
    net: &mut N,
    settings: &Settings,
    store: &Store,
    reading: &firewall::Reading,
    memo_given: bool,
) -> Result<Looked, EngineError> {
    let mut request = settings.request.clone();
    let recorded = store.load().ok().flatten();
    request.pinned = recorded.as_ref().and_then(|r| discover::Pin::of(&r.target));
    let started = DockerStart::new(settings, recorded.and_then(|r| r.docker));
    let firewalls = match (
        started.asks_engine(),
        memo_given,
        settings.firewall,
        reading,
    ) {
        (true, false, FirewallMode::Auto, firewall::Reading::All) => firewall::read_ahead(),
        _ => None,
    };
    let mut target = discover::discover(net, &request).await?;
    let (docker, containers) = with_docker(net, started, &mut target).await?;
    let want_dns = wanted_dns(settings, &target);
    warn_unused(settings, &target, want_dns.as_ref());
    if let Some(d) = &want_dns {
        dns::check(d).await?;
    }
    Ok(Looked {
        target,
        docker,
        containers,
        want_dns,
        firewalls,
    })
}

/// What `up` found under the lock and means to change.
pub(super) struct Planned {
    pub desired: Vec<Entry>,
    /// The last run's record.
    pub previous: Option<Record>,
    pub seen: Seen,
    /// The routes to add and remove.
    pub changes: Vec<Change>,
    /// What the firewalls held with no tag before this run (macOS: pf's reference, ipfw's rule
    /// numbers).
    pub held_before: Held,
    pub fw: FirewallPlan,
}

/// Under the lock: the routes `target` wants beside the ones dockroute owns, and the firewalls'
/// repairs (read from `memo`, else from the reading `ahead` made while the engine answered, else
/// now).
pub(super) async fn plan<N: Net>(
    net: &mut N,
    settings: &Settings,
    target: &Target,
    store: &Store,
    (reading, memo, ahead): (
        &firewall::Reading,
        Option<&mut firewall::Memo>,
        Option<std::thread::JoinHandle<firewall::Memo>>,
    ),
    dry_run: bool,
) -> Result<Planned, EngineError> {
    let planned = planned(net, target).await?;
    for split in &planned.splits {
        tracing::warn!("{split}");
    }
    for c in &planned.conceded {
        tracing::warn!("{c}");
    }
    let desired = planned.entries;
    let previous = store.load().ok().flatten();
    let seen = observe_owned(net, &desired, previous.as_ref(), dry_run).await?;
    let changes = plan::diff(&desired, &seen.owned);
    let held_before = previous
        .as_ref()
        .and_then(|p| p.firewall_held.clone())
        .unwrap_or_default();
    let mut read = ahead.and_then(|h| h.join().ok());
    let memo = memo.or(read.as_mut());
    let fw = match settings.firewall {
        FirewallMode::Auto => firewall_plan(target, reading, &held_before, memo, dry_run)?,
        FirewallMode::Off => FirewallPlan::default(),
    };
    Ok(Planned {
        desired,
        previous,
        seen,
        changes,
        held_before,
        fw,
    })
}

/// What this run put in place, undone (firewall repairs, then routes, then the references the
/// firewalls hold that are new) when a later step fails.
pub(super) struct Undo<'a> {
    pub changes: &'a [Change],
    pub fw: &'a [FwChange],
    /// (held now, held before): set once the run holds firewall references.
    pub held: Option<(&'a Held, &'a Held)>,
}

impl Undo<'_> {
    /// The routes that could not be taken back.
    async fn all<N: Net>(&self, net: &mut N) -> Vec<String> {
        firewall::undo(self.fw);
        if let Some((now, before)) = self.held {
            firewall::release_new(now, before);
        }
        undo_all(net, self.changes).await
    }
}

/// The VM's DNS server, asked once the routes and firewall repairs are in place (they are how
/// it is reached; before them the query would fail, or leave by the default route). resolv-conf
/// names it first for every lookup, so it must answer, and answer only for its domain (one that
/// answers every name is not the VM's). `up` refuses either, undoing this run; `watch` keeps the
/// routes. Why it is silent, and whether it answers (resolv-conf only).
pub(super) async fn gate_dns<N: Net>(
    net: &mut N,
    target: &Target,
    want: Option<&DnsState>,
    gate: DnsGate,
    undo: &Undo<'_>,
) -> Result<(Option<String>, Option<bool>), EngineError> {
    let silent = silence(want, gate);
    let answers = want
        .filter(|d| d.backend == Backend::ResolvConf)
        .map(|_| silent.is_none());
    if let (Some(why), Some(d), DnsGate::Refuse) = (&silent, want, gate) {
        // A VPN that takes the subnet also takes the server: say so, it is the likelier cause.
        let why = match check_routes(net, target).await {
            Ok((_, bad)) if !bad.is_empty() => format!("{why}; {}", bad.join("; ")),
            _ => why.clone(),
        };
        let undo_failed = undo.all(net).await;
        return Err(EngineError::DnsSilent {
            server: d.nameserver,
            path: d.path.clone(),
            why,
            withdrew: withdraw(d),
            done: undo.changes.len(),
            undo_failed,
        });
    }
    if silent.is_none()
        && let Some(d) = want.filter(|d| asks_now(d, gate))
        && let Some(why) = dns::probe::answers_outside(d.nameserver, &d.domain, dns::probe::TIMEOUT)
    {
        let undo_failed = undo.all(net).await;
        return Err(EngineError::DnsNotTheVms {
            server: d.nameserver,
            domain: d.domain.clone(),
            path: d.path.clone(),
            why,
            withdrew: withdraw(d),
            done: undo.changes.len(),
            undo_failed,
        });
    }
    Ok((silent, answers))
}

/// What a dry run says of DNS: the setting `up` would make, and whether it would change it.
pub(super) async fn dry_dns(want: Option<DnsState>) -> Option<DnsOutcome> {
    let state = want?;
    Some(DnsOutcome {
        changed: !dns::observe(&state).await.0,
        state,
        answers: None,
    })
}

/// What the firewalls hold after this run (`desired`: the rules wanted, when the firewalls were
/// read; firewalls not read this time, in watch's routes-only reconcile, hold what they held).
pub(super) fn hold(
    desired: Option<&[firewall::Repair]>,
    before: &Held,
    pf_enabled: Option<bool>,
    warnings: &mut Vec<String>,
) -> Held {
    let Some(d) = desired else {
        return before.clone();
    };
    let (held, more) = firewall::hold(before, pf_enabled, d);
    for w in &more {
        tracing::warn!("firewall: {w}");
    }
    warnings.extend(more);
    held
}

/// The record of this run. `firewall`: the firewalls hold rules of dockroute's (changed now, or
/// there before); `held`: the references they hold.
pub(super) fn record(
    settings: &Settings,
    target: &Target,
    desired: Vec<Entry>,
    want_dns: Option<&DnsState>,
    docker: Option<&docker::Report>,
    (firewall, held): (bool, &Held),
) -> Record {
    let mut record = Record::new(target.clone(), desired, want_dns.cloned());
    record.firewall = firewall || !held.is_empty();
    record.firewall_held = held.clone().nonempty();
    record.flags = Some(settings.request.flags.used_by(target));
    if let (Some(flags), Some(d)) = (record.flags.as_mut(), docker) {
        // the engine found is the one a bare `up` (the boot job's, a hook's) asks again
        flags.docker = d.to_replay(flags.docker.take(), flags.docker_host.is_some());
    }
    record.docker = docker.cloned();
    record
}

/// DNS: the previous setting undone where it moved (resolv.conf where the settings point, a
/// resolver file where `up` wrote it), then this run's set; or, when the server is silent
/// (`watch`: `answers` false), dockroute's line taken out while the routes stay. A failure
/// undoes this run and restores the record `previous`.
pub(super) async fn set<N: Net>(
    net: &mut N,
    (settings, store): (&Settings, &Store),
    previous: Option<&Record>,
    (want, answers, silent): (Option<DnsState>, Option<bool>, Option<&str>),
    undo: &Undo<'_>,
) -> Result<Option<DnsOutcome>, EngineError> {
    let previous_dns = previous.and_then(|r| r.dns.as_ref());
    match previous_dns.map(|d| dns::to_undo(d, &settings.resolv_conf, &settings.resolver_dir)) {
        Some(Ok(old)) if want.as_ref().is_none_or(|w| !same_place(&old, w)) => {
            if let Err(e) = dns::revert(&old).await {
                tracing::warn!("could not undo the previous DNS setting ({old}): {e}");
            }
        }
        Some(Err(e)) => tracing::warn!("leaving the previous DNS setting: {e}"),
        _ => {}
    }
    let Some(state) = want else {
        return Ok(None);
    };
    if answers == Some(false) {
        // watch: the routes stay, the line goes (and comes back when the server answers)
        let changed = withdraw(&state);
        if changed {
            tracing::warn!(
                "DNS: the VM's DNS server {} does not answer ({}): took dockroute's line out of {}",
                state.nameserver,
                silent.unwrap_or_default(),
                state.path.display()
            );
        }
        return Ok(Some(DnsOutcome {
            state,
            changed,
            answers,
        }));
    }
    match dns::apply(&state).await {
        Ok(changed) => Ok(Some(DnsOutcome {
            state,
            changed,
            answers,
        })),
        Err(err) => {
            let undo_failed = undo.all(net).await;
            let restored = match previous {
                Some(p) => store.save(p),
                None => store.clear(),
            };
            if let Err(e) = restored {
                tracing::warn!("could not restore the record: {e}");
            }
            Err(EngineError::DnsApply {
                err,
                done: undo.changes.len(),
                undo_failed,
            })
        }
    }
}

/// Applied is not the same as working: the kernel's route choice for each network now (and the
/// networks it does not send through the VM), and, when the engine was asked this run, whether
/// the VM's own Docker filter drops what the routes bring.
pub(super) async fn check<N: Net>(
    net: &mut N,
    settings: &Settings,
    target: &Target,
    docker: Option<&docker::Report>,
    containers: Option<Result<Vec<docker::containers::ListedContainer>, String>>,
) -> Result<(Vec<Probe>, Vec<String>, Option<Diagnosis>), EngineError> {
    let (probes, not_via_vm) = check_routes(net, target).await?;
    let vm_filter = settings
        .docker_listing
        .asks()
        .then(|| vm_filter::diagnose_listed(docker, containers, &probes))
        .flatten();
    if let Some(p) = vm_filter
        .as_ref()
        .and_then(|d| d.problem(target.host_addr.addr()))
    {
        tracing::warn!("{p}");
    }
    Ok((probes, not_via_vm, vm_filter))
}
