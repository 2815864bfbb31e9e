//! The event sources of `watch` on Linux and its loop: one thread sleeping in poll(2) on
//! rtnetlink's multicast groups (links, IPv4 addresses, routes and rules; neighbours when the VM
//! IP comes from the neighbour table), nftables' change notifications (NETLINK_NETFILTER,
//! NFNLGRP_NFTABLES; iptables-nft changes arrive there too), inotify on the config file's (and the
//! docker-machine config.json's) directory, a signalfd for SIGTERM, SIGINT and SIGHUP, and a pipe
//! from the thread that watches systemd-resolved on D-Bus, and one from the thread that follows
//! Docker's event stream ([`super::docker_follow`]). The poll timeout is the pacer's next
//! deadline: with nothing happening the process sleeps until the backstop. With the resolv-conf
//! backend, the DNS probe's socket and deadline join them (see [`super::dns_health`]).

use super::dns_health::{self, Prober};
use super::docker_follow::{self, Follower};
use super::names::{self, Names};
use super::pace::{Pacer, Timing, Verdict};
use super::{
    Causes, FwTouched, Options, Reloader, WatchError, message_types, nft_event, rtnl_event,
};
use crate::discover::external_vm_ip;
use crate::engine::DnsGate;
use crate::firewall::Memo;
use crate::net::rtnl::Subscription;
use crate::options::FirewallMode;
use crate::record::Store;
use crate::settings::{Settings, SettingsError};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const NETLINK_ROUTE: isize = 0;
const NETLINK_NETFILTER: isize = 12;
const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_NEIGH: u32 = 3;
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV4_ROUTE: u32 = 7;
const RTNLGRP_IPV4_RULE: u32 = 8;
const NFNLGRP_NFTABLES: u32 = 7;

/// Whether the VM IP comes from the neighbour table (then neighbour events matter).
fn needs_neighbours(settings: &Settings) -> bool {
    matches!(external_vm_ip(&settings.request), Ok((None, _)))
}

/// The files whose change re-reads the settings: the config file, and docker-machine's
/// config.json for `--machine`.
fn watched_files(settings: &Settings) -> Vec<PathBuf> {
    let mut out = vec![settings.config_path.clone()];
    if let Some(name) = &settings.request.machine
        && let Ok(p) = crate::machine::machine_config_path(name)
    {
        out.push(p);
    }
    out
}

/// inotify on the directories of `files` (editors and installers replace files by rename), with
/// the names to care about.
struct FileWatch {
    inotify: Inotify,
    names: Vec<OsString>,
}

impl FileWatch {
    fn open(files: &[PathBuf]) -> Result<FileWatch, WatchError> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| WatchError::os("inotify", e))?;
        let mut names = Vec::new();
        for f in files {
            let (Some(dir), Some(name)) = (f.parent(), f.file_name()) else {
                continue;
            };
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            let flags = AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_MOVED_FROM
                | AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_DELETE
                | AddWatchFlags::IN_ATTRIB;
            match inotify.add_watch(dir, flags) {
                Ok(_) => names.push(name.to_os_string()),
                // a default config directory that does not exist: nothing to watch
                Err(e) => tracing::debug!("not watching {}: {e}", dir.display()),
            }
        }
        Ok(FileWatch { inotify, names })
    }

    /// Whether one of the watched files changed since the last call.
    fn changed(&self) -> bool {
        let mut hit = false;
        while let Ok(events) = self.inotify.read_events() {
            if events.is_empty() {
                break;
            }
            hit |= events
                .iter()
                .any(|e| e.name.as_ref().is_some_and(|n| self.names.contains(n)));
        }
        hit
    }
}

/// Everything the loop polls.
struct Sources {
    signals: SignalFd,
    rtnl: Subscription,
    neighbours: bool,
    nft: Option<Subscription>,
    files: FileWatch,
    resolved: Option<OwnedFd>,
    docker: Option<Follower>,
}

impl Sources {
    fn open(settings: &Settings, signals: SignalFd) -> Result<Sources, WatchError> {
        let neighbours = needs_neighbours(settings);
        let mut groups = vec![
            RTNLGRP_LINK,
            RTNLGRP_IPV4_IFADDR,
            RTNLGRP_IPV4_ROUTE,
            RTNLGRP_IPV4_RULE,
        ];
        if neighbours {
            groups.push(RTNLGRP_NEIGH);
        }
        let rtnl = Subscription::open(NETLINK_ROUTE, &groups)
            .map_err(|e| WatchError::os("subscribing to rtnetlink events", e))?;
        let mut s = Sources {
            signals,
            rtnl,
            neighbours,
            nft: None,
            files: FileWatch::open(&watched_files(settings))?,
            resolved: None,
            docker: None,
        };
        s.nft = open_nft(settings);
        s.resolved = super::resolved_watch::start(settings);
        s.docker = Follower::start(settings);
        Ok(s)
    }

    /// New settings: follow what they ask to watch.
    fn retarget(&mut self, settings: &Settings) {
        let neighbours = needs_neighbours(settings);
        if neighbours != self.neighbours {
            let r = if neighbours {
                self.rtnl.join(RTNLGRP_NEIGH)
            } else {
                self.rtnl.leave(RTNLGRP_NEIGH)
            };
            match r {
                Ok(()) => self.neighbours = neighbours,
                Err(e) => tracing::warn!("neighbour events: {e}"),
            }
        }
        match FileWatch::open(&watched_files(settings)) {
            Ok(f) => self.files = f,
            Err(e) => tracing::warn!("{e}"),
        }
        if (settings.firewall == FirewallMode::Auto) != self.nft.is_some() {
            self.nft = open_nft(settings);
        }
        if self.resolved.is_none() {
            self.resolved = super::resolved_watch::start(settings);
        }
        let _ = docker_follow::retarget(&mut self.docker, settings);
    }
}

fn open_nft(settings: &Settings) -> Option<Subscription> {
    if settings.firewall != FirewallMode::Auto {
        return None;
    }
    match Subscription::open(NETLINK_NETFILTER, &[NFNLGRP_NFTABLES]) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(
                "no nftables change notifications ({e}): firewall changes are seen by the backstop re-check only"
            );
            None
        }
    }
}

/// What the loop must do after reading its sources.
#[derive(Default)]
struct Woken {
    exit: Option<Signal>,
    /// SIGHUP: read the settings again now.
    sighup: bool,
    /// A watched file changed: read the settings again when the reload pace allows.
    file_changed: bool,
    /// Docker's containers changed (started, stopped, renamed, connected).
    containers: bool,
}

fn poll_fds<'a>(s: &'a Sources, extra: Option<BorrowedFd<'a>>) -> Vec<PollFd<'a>> {
    let mut fds = vec![
        PollFd::new(s.signals.as_fd(), PollFlags::POLLIN),
        PollFd::new(s.rtnl.fd(), PollFlags::POLLIN),
        PollFd::new(s.files.inotify.as_fd(), PollFlags::POLLIN),
    ];
    if let Some(n) = &s.nft {
        fds.push(PollFd::new(n.fd(), PollFlags::POLLIN));
    }
    if let Some(r) = &s.resolved {
        fds.push(PollFd::new(r.as_fd(), PollFlags::POLLIN));
    }
    if let Some(d) = &s.docker {
        fds.push(PollFd::new(d.fd(), PollFlags::POLLIN));
    }
    if let Some(fd) = extra {
        fds.push(PollFd::new(fd, PollFlags::POLLIN));
    }
    fds
}

/// Sleep in poll(2) until a source (or `extra`: the DNS probe's socket) is ready or `until`
/// passes; which sources are ready, in the order of [`poll_fds`] (`extra` last).
fn sleep(
    s: &Sources,
    extra: Option<BorrowedFd<'_>>,
    until: Instant,
) -> Result<Vec<bool>, WatchError> {
    let mut fds = poll_fds(s, extra);
    let left = until.saturating_duration_since(Instant::now());
    // Round up, so that a deadline less than a millisecond away is still waited for.
    let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    match poll(
        &mut fds,
        PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
    ) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
        Err(e) => return Err(WatchError::os("poll", e)),
    }
    Ok(fds
        .iter()
        .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
        .collect())
}

fn read_sources(
    s: &mut Sources,
    ready: &[bool],
    causes: &mut Causes,
    fw: &mut FwTouched,
) -> Result<Woken, WatchError> {
    let is = |i: usize| ready.get(i).copied().unwrap_or(false);
    let mut woken = Woken::default();
    if is(0) {
        while let Ok(Some(info)) = s.signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGHUP) => woken.sighup = true,
                Ok(sig) => woken.exit = Some(sig),
                Err(_) => {}
            }
        }
    }
    if is(1) {
        let neighbours = s.neighbours;
        let overran = s
            .rtnl
            .drain(|d| {
                for k in message_types(d) {
                    if let Some(what) = rtnl_event(k, neighbours) {
                        causes.add(what);
                    }
                }
            })
            .map_err(|e| WatchError::os("reading rtnetlink events", e))?;
        if overran {
            causes.add("rtnetlink events lost (overrun)");
        }
    }
    woken.file_changed = is(2) && s.files.changed();
    let mut i = 3;
    if let Some(n) = s.nft.as_mut() {
        if is(i) {
            let overran = n
                .drain(|d| {
                    for k in message_types(d) {
                        if let Some(what) = nft_event(k) {
                            causes.add(what);
                        }
                    }
                    fw.add_datagram(d);
                })
                .map_err(|e| WatchError::os("reading nftables events", e))?;
            if overran {
                causes.add("nftables events lost (overrun)");
                fw.unknown = true;
            }
        }
        i += 1;
    }
    if let Some(r) = &s.resolved {
        if is(i) {
            let mut buf = [0u8; 64];
            match nix::unistd::read(r, &mut buf) {
                Ok(0) => s.resolved = None, // the watcher thread ended
                Ok(_) => causes.add("systemd-resolved restarted"),
                Err(_) => {}
            }
        }
        i += 1;
    }
    if let Some(d) = &s.docker
        && is(i)
    {
        woken.containers = d.drain(causes);
    }
    Ok(woken)
}

/// What one reconcile hands the next, for the life of the process.
#[derive(Default)]
struct Carried {
    /// The last reconcile's error, if it failed (logged once, until it heals).
    last_error: Option<String>,
    /// Reconciles so far.
    count: u64,
    /// What the last full firewall read found in nftables (iptables-nft's rules included), while
    /// nftables' generation id stays the same (firewall::memo).
    memo: Memo,
    /// The DNS server's health, when watch probes it (no responder in this process).
    prober: Option<Prober>,
}

/// One reconcile: `up`'s, exactly (engine::up), on a fresh netlink socket so no cache outlives
/// it; only the firewall reading in `memo` does, for as long as nftables' generation id says
/// nothing changed there. Each change it makes is logged inside a span naming the events that
/// caused it.
fn reconcile(
    settings: &Settings,
    causes: &Causes,
    fw: &FwTouched,
    carried: &mut Carried,
    names: Option<&Names>,
) -> Verdict {
    let Carried {
        last_error,
        count,
        memo,
        prober,
    } = carried;
    let span = tracing::info_span!("reconcile", cause = %causes);
    let _in = span.enter();
    *count += 1;
    let started = Instant::now();
    let mut s = super::round_settings(
        settings,
        (*count, last_error.is_none()),
        causes,
        names.map(Names::addr),
    );
    if causes.routes_only() && last_error.is_none() {
        // Routes and rules changed, nothing else, and the last reconcile succeeded: the firewall
        // and its repairs are as that one left them (nftables changes are events of their own,
        // iptables-legacy's the backstop's), so this one skips reading it (the `iptables` and
        // `nft` processes).
        s.firewall = FirewallMode::Off;
    }
    // Only firewall events besides routes: read only the firewalls they name (one nftables
    // table, or iptables-nft's), not every backend and table.
    let reading = fw.reading(causes, last_error.is_none());
    if reading != crate::firewall::Reading::All && s.firewall == FirewallMode::Auto {
        tracing::debug!("reading only {reading:?}");
    }
    // What the probes know about the server; unknown: the reconcile asks it. The responder
    // answers: it runs in this process.
    let known = match names {
        Some(_) => Some(true),
        None => prober.as_ref().and_then(Prober::answers),
    };
    let result = super::up_once(&s, DnsGate::Withhold(known), &reading, Some(memo));
    let took = started.elapsed().as_secs_f64() * 1000.0;
    trim_heap();
    if let (Some(p), None) = (prober.as_mut(), known)
        && let Some(answers) = result.as_ref().ok().and_then(|o| o.dns.as_ref()?.answers)
    {
        p.learned(Instant::now(), answers);
    }
    if result.is_err() && prober.as_ref().and_then(Prober::answers) == Some(false) {
        // The server is silent and the reconcile failed before DNS (the VM's link or neighbour
        // is gone): the line still goes, since it stalls every lookup.
        withdraw_line(&s);
    }
    super::judge(
        &result,
        *count,
        took,
        last_error,
        ("route/rule", "firewall"),
    )
}

/// Give the memory a reconcile freed back to the kernel. Reading a large firewall allocates
/// megabytes that are freed at its end, but the few results `memo` keeps are allocated among
/// them, and the allocator only returns the free top of its heap by itself: without this, the
/// resident size of an idle watch stays at the peak of its largest read.
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator; it takes no pointers.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// Take dockroute's line out of resolv.conf (under the lock, as `up` and `down` change it).
fn withdraw_line(settings: &Settings) {
    let Some(_lock) = Store::new(&settings.state_dir)
        .lock()
        .map_err(|e| tracing::warn!("DNS: cannot take dockroute's line out: {e}"))
        .ok()
    else {
        return;
    };
    match crate::dns::resolv_conf::revert(&settings.resolv_conf) {
        Ok(true) => tracing::warn!(
            "DNS: the VM's DNS server {} does not answer: took dockroute's line out of {}",
            settings.nameserver,
            settings.resolv_conf.display()
        ),
        Ok(false) => {}
        Err(e) => tracing::warn!("DNS: cannot take dockroute's line out: {e}"),
    }
}

/// After a reconcile: [`names::follow`]. While the responder runs there is no VM DNS server to
/// probe; when it stops, probing starts again.
fn follow_names(
    settings: &Settings,
    names: &mut Option<Names>,
    prober: &mut Option<Prober>,
    probe_timing: dns_health::Timing,
) -> bool {
    let changed = names::follow(settings, names);
    if changed {
        *prober = match names {
            Some(_) => None,
            None => Prober::for_settings(settings, probe_timing, Instant::now()),
        };
    }
    changed
}

/// Block the signals `watch` handles (before any thread starts, so every thread inherits the mask;
/// programs it runs get a clean mask from std) and read them from a signalfd.
fn signals() -> Result<SignalFd, WatchError> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block()
        .map_err(|e| WatchError::os("blocking signals", e))?;
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| WatchError::os("signalfd", e))
}

/// The line `watch` logs once it watches: what it listens to, and how often it looks anyway.
fn announce(
    sources: &Sources,
    prober: Option<&Prober>,
    names: Option<&Names>,
    probe_timing: dns_health::Timing,
    backstop: Duration,
) {
    let on = |yes: bool, what: &'static str| if yes { what } else { "" };
    let dns = match (prober, names) {
        (_, Some(n)) => format!(", DNS responder on {}", n.addr()),
        (Some(p), None) => format!(
            ", DNS probe every {} s to {}",
            probe_timing.interval.as_secs_f64(),
            p.server()
        ),
        (None, None) => String::new(),
    };
    tracing::info!(
        "watching (rtnetlink{}{}{}{}, config file{dns}; backstop every {:.1} s)",
        on(sources.neighbours, " with neighbours"),
        on(sources.nft.is_some(), ", nftables"),
        on(sources.resolved.is_some(), ", systemd-resolved"),
        on(sources.docker.is_some(), ", Docker events"),
        backstop.as_secs_f64()
    );
}

/// `watch` ends with its names responder running: stop it, and unless `down` follows, point
/// DNS back to what a plain `up` sets (the VM's nameserver).
fn stop_responder(
    names: Names,
    settings: &Settings,
    carried: &mut Carried,
    probe_timing: dns_health::Timing,
    opts: &Options,
) {
    names.stop();
    if opts.down_on_exit {
        return;
    }
    carried.prober = Prober::for_settings(settings, probe_timing, Instant::now());
    let mut causes = Causes::default();
    causes.add("DNS responder stopped");
    reconcile(settings, &causes, &FwTouched::default(), carried, None);
}

/// New settings: a responder that no longer fits them (another domain or upstream, or DNS off)
/// stops, and the next reconcile follows; without one, the DNS probe follows the settings.
fn follow_reload(
    settings: &Settings,
    names: &mut Option<Names>,
    prober: &mut Option<Prober>,
    probe_timing: dns_health::Timing,
) {
    names::stop_unless_fits(settings, names);
    if names.is_none() && !prober.as_ref().is_some_and(|p| p.fits(settings)) {
        *prober = Prober::for_settings(settings, probe_timing, Instant::now());
    }
}

/// `dockroute watch`: reconcile, then reconcile again on every (coalesced) event, until SIGTERM or
/// SIGINT. `load` reads the settings (config file and flags) again on SIGHUP or a config change;
/// settings that fail to load keep the previous ones.
pub fn run(
    load: impl FnMut() -> Result<Settings, SettingsError>,
    opts: Options,
) -> Result<(), WatchError> {
    let (mut reloader, mut settings) = Reloader::start(load)?;
    let signals = signals()?;
    // Subscribe before the first look, so that no change between the look and the wait is lost.
    let mut sources = Sources::open(&settings, signals)?;
    let mut timing = Timing::default();
    if let Some(b) = opts.backstop {
        timing.backstop = b;
    }
    let mut causes = Causes::default();
    causes.add("start");
    let probe_timing = dns_health::Timing::default();
    let mut carried = Carried {
        prober: Prober::for_settings(&settings, probe_timing, Instant::now()),
        ..Carried::default()
    };
    let mut fw = FwTouched::default();
    let mut names: Option<Names> = None;
    let mut v = reconcile(&settings, &causes, &fw, &mut carried, None);
    if follow_names(&settings, &mut names, &mut carried.prober, probe_timing) {
        // the domain goes to the responder now
        causes = Causes::default();
        causes.add("DNS responder started");
        v = reconcile(&settings, &causes, &fw, &mut carried, names.as_ref());
    }
    causes = Causes::default();
    let mut pacer = Pacer::new(timing, Instant::now());
    pacer.ran(Instant::now(), v);
    announce(
        &sources,
        carried.prober.as_ref(),
        names.as_ref(),
        probe_timing,
        timing.backstop,
    );
    loop {
        let now = Instant::now();
        if now >= pacer.due() {
            let v = reconcile(&settings, &causes, &fw, &mut carried, names.as_ref());
            causes = Causes::default();
            fw = FwTouched::default();
            pacer.ran(Instant::now(), v);
            if follow_names(&settings, &mut names, &mut carried.prober, probe_timing) {
                // started or stopped: the DNS backend points elsewhere now
                causes.add("DNS responder started or stopped");
                pacer.event(Instant::now());
            }
            if v == Verdict::Changed
                && let Some(p) = carried.prober.as_mut()
            {
                p.health().soon(Instant::now());
            }
            continue;
        }
        let mut until = match &carried.prober {
            Some(p) => pacer.due().min(p.due()),
            None => pacer.due(),
        };
        if let Some(r) = reloader.due(now) {
            until = until.min(r);
        }
        let ready = sleep(
            &sources,
            carried.prober.as_ref().and_then(Prober::fd),
            until,
        )?;
        let before = causes.clone();
        if let Some(p) = carried.prober.as_mut() {
            let readable = p.fd().is_some() && ready.last().copied().unwrap_or(false);
            match p.step(Instant::now(), readable) {
                Some(false) => causes.add("DNS server stopped answering"),
                Some(true) => causes.add("DNS server answers again"),
                None => {}
            }
        }
        let woken = read_sources(&mut sources, &ready, &mut causes, &mut fw)?;
        if let Some(sig) = woken.exit {
            if let Some(n) = names.take() {
                stop_responder(n, &settings, &mut carried, probe_timing, &opts);
            }
            return super::end(sig, carried.count, opts, &settings);
        }
        if woken.containers {
            // one container list and a table swap, no reconcile
            names::refresh_names(&mut names);
        }
        if let Some((why, s)) = reloader.woken(woken.file_changed, woken.sighup, Instant::now()) {
            settings = s;
            sources.retarget(&settings);
            follow_reload(&settings, &mut names, &mut carried.prober, probe_timing);
            causes.add(why);
        }
        if causes != before {
            pacer.event(Instant::now());
        }
    }
}
