//! observe → diff → apply → record, shared by `up`, `down`, `status` and `watch`.
//!
//! `up` and `down` live here; the batch apply with its rollback in [`apply`], the kernel's route
//! choice for each network in [`probe`], and `status` in [`status`].

use crate::discover::{DiscoverError, Target};
use crate::dns::{self, Backend, DnsError, DnsState};
use crate::docker;
use crate::firewall::{self, FirewallError, FwChange};
use crate::net::{Change, Net, NetError};
use crate::plan;
use crate::record::{RecordError, Store};
use crate::settings::Settings;
use serde::Serialize;

mod apply;
mod owned;
mod probe;
mod status;
mod up;
mod vm_filter;

use apply::{send, undo_all};
use owned::apply_routes;
use probe::check_routes;
pub use probe::{Degraded, Probe, why_not_via_vm};
pub use status::{Conflict, DnsStatus, NameCheck, Status, VpnStatus, status};

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
    #[error(
        "DNS: {server} is not the VM's DNS server for .{domain}: {why}; dockroute does not name it first in {path}{}; rolled back the {done} route change(s) of this run{}. Point --nameserver at the VM's own DNS server (the one that answers .{domain} and nothing else), or use `--dns off`",
        if *.withdrew { format!("; took dockroute's line out of {}", .path.display()) } else { String::new() },
        undo_note(.undo_failed)
    )]
    DnsNotTheVms {
        server: std::net::SocketAddrV4,
        domain: String,
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
    /// `up`: the Docker engine asked, the networks routed and the ones skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker: Option<docker::Report>,
    /// `up`: whether the VM's own Docker filter lets the routed traffic through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_filter: Option<docker::vmfilter::Diagnosis>,
}

impl Outcome {
    /// An outcome without the kernel's route choice (`down`'s, a dry run's; `up` adds it).
    fn unprobed(
        target: Option<Target>,
        changes: Vec<Change>,
        firewall: Vec<FwChange>,
        firewall_warnings: Vec<String>,
        dns: Option<DnsOutcome>,
        dry_run: bool,
    ) -> Self {
        Outcome {
            target,
            changes,
            firewall,
            firewall_warnings,
            dns,
            dry_run,
            not_via_vm: Vec::new(),
            probes: Vec::new(),
            firewall_unread: None,
            docker: None,
            vm_filter: None,
        }
    }
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
/// The DNS setting `up` wants for this target, if any: the domain goes to `watch`'s responder
/// while it runs, else to the VM's nameserver.
fn wanted_dns(settings: &Settings, target: &Target) -> Option<DnsState> {
    dns::choose(settings.dns).map(|backend| DnsState {
        backend,
        domain: settings.domain.clone(),
        nameserver: settings.responder.unwrap_or(settings.nameserver),
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
    if dns.is_some()
        && settings.responder.is_none()
        && !target.networks().iter().any(|n| n.contains(&ns))
    {
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

/// The entries `up` wants for `target` on this platform, with (one table) the subnets routed as
/// several prefixes to outdo others' routes inside them, and the routes left to others.
async fn planned<N: Net>(net: &mut N, target: &Target) -> Result<plan::single::Plan, EngineError> {
    match net.layout() {
        plan::Layout::PolicyTable => Ok(plan::single::Plan {
            entries: plan::desired(target),
            ..Default::default()
        }),
        plan::Layout::SingleTable => {
            let held = net.held(&target.subnets).await?;
            Ok(plan::single::desired(target, &held).map_err(NetError::Conflict)?)
        }
    }
}

/// What `up` does about the firewalls this time.
#[derive(Default)]
struct FirewallPlan {
    changes: Vec<FwChange>,
    /// Whether rules of dockroute's were there before.
    owned_before: bool,
    warnings: Vec<String>,
    /// What the firewalls need (`None`: not read).
    desired: Option<Vec<firewall::Repair>>,
    pf_enabled: Option<bool>,
    /// A dry run: why the firewalls could not be read.
    unread: Option<String>,
}

/// Read the firewalls `reading` names for `target` and plan their repairs. A dry run shows
/// what it can: a firewall it cannot read (that takes root) is left out, and it says why.
fn firewall_plan(
    target: &Target,
    reading: &firewall::Reading,
    held: &firewall::Held,
    memo: Option<&mut firewall::Memo>,
    dry_run: bool,
) -> Result<FirewallPlan, EngineError> {
    let scope = firewall::Scope::for_target(target)?;
    let seen = firewall::observe_held(Some(&scope), reading, held, memo);
    let mut unread = None;
    if dry_run && !seen.errors.is_empty() {
        unread = Some(unread_note(&seen.errors));
    } else if let Some(e) = seen.errors.into_iter().next() {
        return Err(e.into());
    }
    for w in &seen.warnings {
        tracing::warn!("firewall: {w}");
    }
    Ok(FirewallPlan {
        changes: firewall::diff(&seen.desired, &seen.owned),
        owned_before: !seen.owned.is_empty(),
        warnings: seen.warnings,
        desired: Some(seen.desired),
        pf_enabled: seen.pf_enabled,
        unread,
    })
}

/// Whether the VM's DNS server for `d` is asked now (resolv-conf only; `watch` goes by its own
/// probes when it has them).
fn asks_now(d: &DnsState, gate: DnsGate) -> bool {
    d.backend == Backend::ResolvConf && matches!(gate, DnsGate::Refuse | DnsGate::Withhold(None))
}

/// Why the VM's DNS server counts as silent, if it does: only resolv-conf asks (see
/// [`DnsGate`]); `up` asks it now, `watch` goes by its own probes when it has them.
fn silence(want: Option<&DnsState>, gate: DnsGate) -> Option<String> {
    match (want, gate) {
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
    }
}

/// Take dockroute's line out of resolv.conf if it is there (for `d`'s server, or for the one it
/// named before: `watch`'s responder, when it ends). Returns whether it was.
fn withdraw(d: &DnsState) -> bool {
    let set = std::fs::read_to_string(&d.path).is_ok_and(|c| dns::resolv_conf::strip(&c).1);
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

/// Docker in `up`: the engine asked in the background while discovery runs, or the networks
/// the last `up` recorded gone by (`watch`'s reconciles that kernel events caused).
enum DockerStart {
    Recorded(docker::Report),
    Asking {
        asking: docker::Asking,
        last: Option<docker::Report>,
    },
}

impl DockerStart {
    /// Start asking the engine the settings lead to, unless they say to go by the record
    /// (`last`: what the last `up` learned of Docker).
    fn new(settings: &Settings, last: Option<docker::Report>) -> DockerStart {
        let choice = docker::sources::choose(
            settings.docker.clone(),
            settings.request.machine.as_deref(),
            settings.request.docker_host.as_deref(),
        );
        match (&settings.docker_listing, last) {
            (docker::Listing::Recorded, Some(r)) if r.engine == choice => DockerStart::Recorded(r),
            (docker::Listing::Without(gone), Some(r)) if r.engine == choice => {
                DockerStart::Recorded(r.without(gone))
            }
            (docker::Listing::Ahead(ahead), last) => DockerStart::Asking {
                asking: docker::Asking::resume(choice, ahead),
                last,
            },
            (_, last) => DockerStart::Asking {
                asking: docker::Asking::start(choice),
                last,
            },
        }
    }

    /// Whether an engine is being asked (not the record gone by, not Docker off or unset).
    fn asks_engine(&self) -> bool {
        matches!(self, DockerStart::Asking { .. })
            && matches!(self.choice(), docker::endpoint::Choice::At { .. })
    }

    fn choice(&self) -> &docker::endpoint::Choice {
        match self {
            DockerStart::Recorded(r) => &r.engine,
            DockerStart::Asking { asking, .. } => asking.choice(),
        }
    }
}

/// What `up` learned from the engine: the report it records, and the running containers its
/// listing brought (for the probes of the VM's filter; `None` when it did not list them).
type Docked = (
    docker::Report,
    Option<Result<Vec<docker::containers::ListedContainer>, String>>,
);

/// Docker's networks: the engine's answer (one that cannot be reached is a warning, and the
/// networks the last `up` routed for it stay routed), checked against the host, and the
/// subnets it may route added to `target`'s.
async fn with_docker<N: Net>(
    net: &mut N,
    started: DockerStart,
    target: &mut Target,
) -> Result<Docked, EngineError> {
    let links = match started.choice() {
        docker::endpoint::Choice::At { .. } => net.links().await?,
        _ => Vec::new(),
    };
    let host = docker::networks::Host::new(&links, target.host_net(), &target.subnets);
    // Networks skipped before are said again only in the debug log (`watch` reconciles often).
    let known = match &started {
        DockerStart::Recorded(r) => r.skipped.clone(),
        DockerStart::Asking { last, .. } => last.iter().flat_map(|l| l.skipped.clone()).collect(),
    };
    let (report, containers) = match started {
        DockerStart::Recorded(r) => (r.again(&host), None),
        DockerStart::Asking { asking, last } => {
            let (report, containers) = asking.finish(&host);
            (report.or_last(last.as_ref(), &host), containers)
        }
    };
    if let Some(w) = report.warning() {
        tracing::warn!("{w}");
    }
    for s in &report.skipped {
        if known.contains(s) {
            tracing::debug!("Docker: not routed: {s}");
        } else {
            tracing::info!("Docker: not routed: {s}");
        }
    }
    target.subnets.extend(report.subnets());
    Ok((report, containers))
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
    up_with(
        net,
        settings,
        store,
        dry_run,
        hooks,
        DnsGate::Refuse,
        &firewall::Reading::All,
        None,
    )
    .await
}

/// [`up`], with what to do about a DNS server that does not answer, reading only the firewalls
/// `reading` names (`watch`: the ones its events name), reusing what `memo` remembers of the
/// last read where nftables says nothing changed since (`watch`, [`firewall::memo`]).
#[allow(clippy::too_many_arguments)]
pub async fn up_with<N: Net>(
    net: &mut N,
    settings: &Settings,
    store: &Store,
    dry_run: bool,
    hooks: Hooks,
    gate: DnsGate,
    reading: &firewall::Reading,
    memo: Option<&mut firewall::Memo>,
) -> Result<Outcome, EngineError> {
    // Discovery and the DNS check only read and validate; the lock covers observe → record.
    let up::Looked {
        target,
        docker,
        containers: listed_containers,
        want_dns,
        firewalls: ahead,
    } = up::look(net, settings, store, reading, memo.is_some()).await?;
    let mut docker = Some(docker);
    let _lock = if dry_run { None } else { Some(store.lock()?) };
    if let (Some(d), false) = (&want_dns, dry_run) {
        dns::sweep(d.backend, &d.path);
    }
    let up::Planned {
        desired,
        previous,
        seen,
        changes,
        held_before,
        fw:
            FirewallPlan {
                changes: fw,
                owned_before: fw_owned_before,
                warnings: mut firewall_warnings,
                desired: fw_desired,
                pf_enabled,
                unread: firewall_unread,
            },
    } = up::plan(
        net,
        settings,
        &target,
        store,
        (reading, memo, ahead),
        dry_run,
    )
    .await?;
    if dry_run {
        let dns = up::dry_dns(want_dns).await;
        return Ok(Outcome {
            firewall_unread,
            docker,
            ..Outcome::unprobed(Some(target), changes, fw, firewall_warnings, dns, dry_run)
        });
    }

    let changes = apply_routes(net, &desired, &seen, &changes, hooks).await?;
    if let Err(err) = firewall::apply(&fw) {
        let undo_failed = undo_all(net, &changes).await;
        return Err(EngineError::FirewallApply {
            err,
            done: changes.len(),
            undo_failed,
        });
    }
    let undo = up::Undo {
        changes: &changes,
        fw: &fw,
        held: None,
    };
    let (silent, answers) = up::gate_dns(net, &target, want_dns.as_ref(), gate, &undo).await?;
    let held = up::hold(
        fw_desired.as_deref(),
        &held_before,
        pf_enabled,
        &mut firewall_warnings,
    );
    vm_filter::reconcile(settings, &target, docker.as_mut(), previous.as_ref());
    let had_rules =
        !fw.is_empty() || previous.as_ref().is_some_and(|p| p.firewall) || fw_owned_before;
    let record = up::record(
        settings,
        &target,
        desired,
        want_dns.as_ref(),
        docker.as_ref(),
        (had_rules, &held),
    );
    if previous.as_ref() != Some(&record)
        && let Err(e) = store.save(&record)
    {
        // a reference the record does not name could not be released by `down`
        firewall::release_new(&held, &held_before);
        return Err(e.into());
    }
    let undo = up::Undo {
        held: Some((&held, &held_before)),
        ..undo
    };
    let dns = up::set(
        net,
        (settings, store),
        previous.as_ref(),
        (want_dns, answers, silent.as_deref()),
        &undo,
    )
    .await?;
    let (probes, not_via_vm, vm_filter) =
        up::check(net, settings, &target, docker.as_ref(), listed_containers).await?;
    Ok(Outcome {
        not_via_vm,
        probes,
        docker,
        vm_filter,
        ..Outcome::unprobed(Some(target), changes, fw, firewall_warnings, dns, dry_run)
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
    let held = record
        .as_ref()
        .and_then(|r| r.firewall_held.clone())
        .unwrap_or_default();
    let (fw, fw_seen) = if record.as_ref().is_none_or(|r| r.firewall) {
        firewall::removals(&held)
    } else {
        (Vec::new(), firewall::Observed::default())
    };
    for w in &fw_seen.warnings {
        tracing::warn!("firewall: {w}");
    }
    let firewall_warnings = fw_seen.warnings;
    // resolv.conf is undone where the settings point; a resolver file where `up` wrote it.
    let dns_state = record
        .as_ref()
        .and_then(|r| r.dns.as_ref())
        .map(|d| dns::to_undo(d, &settings.resolv_conf, &settings.resolver_dir));
    // the VM's own filter, through the engine (the routes to the VM itself are not dockroute's)
    let vm_firewall_failed = vm_filter::close(record.as_ref(), dry_run);
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
        if let Some(t) = held.pf_token {
            tracing::info!("would release the pf enable reference (token {t})");
        }
        // A firewall that cannot be read (without root) is left out and said so, as in `up`.
        let firewall_unread = (!fw_seen.errors.is_empty()).then(|| unread_note(&fw_seen.errors));
        return Ok(Outcome {
            firewall_unread,
            ..Outcome::unprobed(target, changes, fw, firewall_warnings, dns, dry_run)
        });
    }
    let mut failed: Vec<String> = fw_seen.errors.iter().map(|e| e.to_string()).collect();
    failed.extend(vm_firewall_failed);
    failed.extend(firewall::apply_all(&fw).iter().map(|e| e.to_string()));
    if let Err(e) = firewall::release(&held) {
        failed.push(e.to_string());
    }
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
    Ok(Outcome::unprobed(
        target,
        changes,
        fw,
        firewall_warnings,
        dns,
        dry_run,
    ))
}

impl Outcome {
    /// After `up`: the subnets that do not go via the VM although dockroute's entries are in
    /// place.
    pub fn degraded(&self) -> Option<Degraded> {
        let bad = &self.not_via_vm;
        (!bad.is_empty()).then(|| Degraded(bad.clone()))
    }

    /// Nothing was (or, in a dry run, would be) changed: no route, rule, firewall or DNS change.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
            && self.firewall.is_empty()
            && !self.dns.as_ref().is_some_and(|d| d.changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::{Request, VmIpSource};
    use crate::net::{Entry, LinkInfo, Lookup, MAIN_TABLE, Neighbour, Snapshot};
    use crate::report;
    use ipnet::Ipv4Net;
    use std::net::Ipv4Addr;
    use std::time::Instant;

    /// A fake kernel: one host-only link, a list of owned entries, and a change that fails.
    struct Fake {
        owned: Vec<Entry>,
        fail_on: Option<usize>,
        applied: usize,
        /// `owned_cheaply` leaves main unread, as on Linux.
        main_unread: bool,
        /// How often `owned` read everything.
        full_reads: usize,
    }

    impl Fake {
        fn new(fail_on: Option<usize>) -> Self {
            Fake {
                owned: vec![],
                fail_on,
                applied: 0,
                main_unread: false,
                full_reads: 0,
            }
        }

        fn in_main(e: &Entry) -> bool {
            matches!(e, Entry::Route(r) if r.table == crate::net::MAIN_TABLE)
        }

        fn apply_one(&mut self, change: &Change) -> Result<(), NetError> {
            if self.fail_on == Some(self.applied) {
                self.fail_on = None;
                return Err(NetError::Conflict("injected failure".into()));
            }
            if let Change::Add(Entry::Route(r)) = change
                && self.owned.iter().any(|o| {
                    matches!(o, Entry::Route(o) if (o.table, o.dst, o.metric) == (r.table, r.dst, r.metric))
                })
            {
                return Err(NetError::Exists("exists".into()));
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
        async fn owned(&mut self) -> Result<Vec<Entry>, NetError> {
            self.full_reads += 1;
            Ok(self.owned.clone())
        }
        async fn ensure(
            &mut self,
            routes: &[crate::net::RouteSpec],
        ) -> Result<Vec<Result<bool, NetError>>, NetError> {
            Ok(routes
                .iter()
                .map(|r| {
                    let e = Entry::Route(r.clone());
                    if self.owned.contains(&e) {
                        Ok(false)
                    } else {
                        self.apply_one(&Change::Add(e)).map(|()| true)
                    }
                })
                .collect())
        }
        async fn owned_cheaply(&mut self) -> Result<crate::net::OwnedView, NetError> {
            if !self.main_unread {
                return Ok(crate::net::OwnedView {
                    entries: self.owned().await?,
                    unread: None,
                });
            }
            Ok(crate::net::OwnedView {
                entries: self
                    .owned
                    .iter()
                    .filter(|e| !Self::in_main(e))
                    .cloned()
                    .collect(),
                unread: Some(crate::net::MAIN_TABLE),
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
            firewall: crate::options::FirewallMode::Off,
            docker: Some((
                crate::docker::endpoint::Source::Flag,
                crate::docker::endpoint::Explicit::Off,
            )),
            docker_listing: crate::docker::Listing::Ask,
            open_vm_firewall: None,
            nameserver_set: false,
            responder: None,
        }
    }

    /// `up` (or, with `dry_run`, a dry run) with the test settings and no hooks.
    async fn up_test<N: Net>(net: &mut N, store: &Store, dry_run: bool) -> Outcome {
        up(net, &settings(), store, dry_run, Hooks::default())
            .await
            .unwrap()
    }

    /// `down` with the test settings and no hooks.
    async fn down_test<N: Net>(net: &mut N, store: &Store) -> Outcome {
        down(net, &settings(), store, false, Hooks::default())
            .await
            .unwrap()
    }

    #[test]
    fn up_twice_changes_nothing_the_second_time_and_down_clears() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let mut fake = Fake::new(None);
        futures_lite::future::block_on(async {
            let first = up_test(&mut fake, &store, false).await;
            assert_eq!(first.changes.len(), 5);
            assert!(store.load().unwrap().is_some());
            let second = up_test(&mut fake, &store, false).await;
            assert!(second.changes.is_empty());
            let gone = down_test(&mut fake, &store).await;
            assert_eq!(gone.changes.len(), 5);
            assert!(fake.owned.is_empty());
            assert!(store.load().unwrap().is_none());
        });
    }

    #[test]
    fn up_checks_its_main_copies_from_the_record_without_reading_main() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let mut fake = Fake::new(None);
        fake.main_unread = true;
        futures_lite::future::block_on(async {
            let first = up_test(&mut fake, &store, false).await;
            assert_eq!(first.changes.len(), 5);
            assert!(up_test(&mut fake, &store, false).await.changes.is_empty());
            // A VPN deletes the main copy (`ip route del 172.17.0.0/16`): `up` puts it back.
            let copy = fake.owned.iter().position(Fake::in_main).unwrap();
            let gone = fake.owned.remove(copy);
            let again = up_test(&mut fake, &store, false).await;
            assert_eq!(again.changes, vec![Change::Add(gone.clone())]);
            assert!(fake.owned.contains(&gone));
            assert_eq!(fake.full_reads, 0, "main was read");
            // Somebody else's route takes its place: `up` says so, and changes nothing.
            let copy = fake.owned.iter().position(Fake::in_main).unwrap();
            let Entry::Route(theirs) = &mut fake.owned[copy] else {
                unreachable!()
            };
            theirs.ifname = "tun0".into();
            let before = fake.owned.clone();
            let e = up(&mut fake, &settings(), &store, false, Hooks::default())
                .await
                .unwrap_err();
            assert!(e.to_string().contains("exists"), "{e}");
            assert_eq!(fake.owned, before);
            fake.owned[copy] = gone.clone();
            // A subnet no longer wanted: its recorded copy is removed by its shape.
            let mut s = settings();
            s.request.subnets = vec!["172.18.0.0/16".parse().unwrap()];
            let moved = up(&mut fake, &s, &store, false, Hooks::default())
                .await
                .unwrap();
            assert!(moved.changes.contains(&Change::Remove(gone.clone())));
            assert!(!fake.owned.contains(&gone));
            assert_eq!(fake.full_reads, 0, "main was read");
        });
    }

    #[test]
    fn an_unrecorded_route_in_main_makes_up_read_main() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let mut fake = Fake::new(None);
        futures_lite::future::block_on(async {
            up_test(&mut fake, &store, false).await;
        });
        // A run that died before writing its record, with the VM at another address then.
        store.clear().unwrap();
        for e in &mut fake.owned {
            if let Entry::Route(r) = e
                && r.table == crate::net::MAIN_TABLE
            {
                r.gateway = Some("192.168.99.101".parse().unwrap());
            }
        }
        let stale = fake.owned.clone();
        fake.main_unread = true;
        fake.full_reads = 0;
        futures_lite::future::block_on(async {
            let out = up_test(&mut fake, &store, false).await;
            assert_eq!(fake.full_reads, 1, "main must be read once");
            assert_eq!(out.changes.len(), 2, "{:?}", out.changes);
            let old = stale.iter().find(|e| Fake::in_main(e)).unwrap();
            assert!(!fake.owned.contains(old), "the stale copy stayed");
            assert_eq!(fake.owned.iter().filter(|e| Fake::in_main(e)).count(), 1);
        });
    }

    #[test]
    fn a_failed_change_rolls_back_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let mut fake = Fake::new(Some(3));
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
        let mut fake = Fake::new(None);
        futures_lite::future::block_on(async {
            let o = up_test(&mut fake, &store, true).await;
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
            Fake::new(None).links().await
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
                .filter(|r| !r.2 && prefixes.iter().any(|p| p.contains(&r.0)))
                .map(|r| crate::net::Held {
                    prefix: r.0,
                    ifindex: 12,
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
    fn one_table_outdoes_a_vpn_route_inside_a_subnet_and_status_looks_there() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let mut k = OneTable { routes: vec![] };
        futures_lite::future::block_on(async {
            let first = up_test(&mut k, &store, false).await;
            assert_eq!(first.changes.len(), 1);
            // a VPN connects and routes one /24 of the subnet into its tunnel
            let vpn: Ipv4Net = "172.17.5.0/24".parse().unwrap();
            k.routes.push((vpn, "10.8.0.1".parse().unwrap(), false));
            let again = up_test(&mut k, &store, false).await;
            let ours: Vec<Ipv4Net> = k.routes.iter().filter(|r| r.2).map(|r| r.0).collect();
            assert_eq!(ours.len(), 10, "{ours:?}");
            assert!(!ours.contains(&"172.17.0.0/16".parse().unwrap()));
            // every address of the VPN's /24 has a longer route of dockroute's
            for a in ["172.17.5.1", "172.17.5.250"] {
                let a: Ipv4Addr = a.parse().unwrap();
                let best = k
                    .routes
                    .iter()
                    .filter(|r| r.0.contains(&a))
                    .max_by_key(|r| r.0.prefix_len());
                assert!(best.unwrap().2, "{a} goes to the VPN: {:?}", again.changes);
            }
            assert!(
                k.routes
                    .contains(&(vpn, "10.8.0.1".parse().unwrap(), false)),
                "the VPN's route stays"
            );
            let st = status(&mut k, &settings(), &store, None).await.unwrap();
            assert!(st.in_sync);
            assert!(
                report::status(&st).contains("split: 172.17.0.0/16 is held by another route (172.17.5.0/24 via 10.8.0.1 dev utun3)"),
                "{}",
                report::status(&st)
            );
            // the probe looks up an address inside the VPN's route, not only the subnet's first
            assert!(
                st.probes
                    .iter()
                    .any(|p| p.address == Ipv4Addr::new(172, 17, 5, 1) && p.network == vpn),
                "{:?}",
                st.probes
            );
        });
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
            let o = up_test(&mut k, &store, false).await;
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
            let again = up_test(&mut k, &store, false).await;
            assert!(again.changes.is_empty());
            // the VPN disconnects: the halves give way to the whole subnet
            k.routes.retain(|r| r.2);
            let back = up_test(&mut k, &store, false).await;
            assert_eq!(back.changes.len(), 3);
            assert_eq!(
                text(&back.changes)[2],
                "+ route 172.17.0.0/16 via 192.168.99.100 dev vboxnet0 table main proto dockroute"
            );
            // down removes dockroute's routes and nobody else's
            let other = ("172.16.0.0/12".parse().unwrap(), vpn_gw, false);
            k.routes.push(other);
            down_test(&mut k, &store).await;
            assert_eq!(k.routes, vec![other]);
        });
    }
}
