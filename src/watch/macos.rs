//! The event sources of `watch` on macOS and its loop: one thread sleeping in kevent(2) on a
//! kqueue that holds
//! - a routing socket (`socket(PF_ROUTE, SOCK_RAW, 0)`: every family, so RTM_IFINFO arrives too);
//!   [`super::rtsock`] says which messages count (links, IPv4 addresses, routes inside the
//!   subnets, ARP entries when the VM IP comes from the ARP table);
//! - a pipe from a thread whose run loop receives configd's SCDynamicStore notifications for
//!   `State:/Network/Interface/IF/IPv4` and `State:/Network/Global/IPv4` (a VPN connecting);
//! - SIGTERM, SIGINT and SIGHUP (EVFILT_SIGNAL; a no-op handler keeps them from ending the
//!   process, and programs dockroute runs get the default action back at exec);
//! - the config file and docker-machine's config.json, and their directories (EVFILT_VNODE);
//! - the pipe of the thread that follows Docker's event stream ([`super::docker_follow`], shared
//!   with Linux).
//!
//! The timeout is the pacer's next deadline, as on Linux. pf sends no change events: a reconcile
//! caused by routes alone leaves pf unread unless it was last read a backstop ago, and with no
//! events the backstop (60 s) re-checks everything, pf included.

use super::docker_follow::{self, Follower};
use super::names::{self, Names};
use super::pace::{Pacer, Timing, Verdict};
use super::rtsock::{self, Interest};
use super::{Causes, Options, Reloader, WatchError};
use crate::discover::external_vm_ip;
use crate::engine::DnsGate;
use crate::net::rtmsg::af;
use crate::options::FirewallMode;
use crate::settings::{Settings, SettingsError};
use nix::libc;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TAG_ROUTE: usize = 1;
const TAG_STORE: usize = 2;
const TAG_SIGNAL: usize = 3;
const TAG_FILE: usize = 4;
const TAG_DOCKER: usize = 5;

/// Big enough for any routing message (one per read).
const READ_BUF: usize = 4096;

const SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

fn last_err(op: &str) -> WatchError {
    WatchError::os(op, io::Error::last_os_error())
}

/// Close-on-exec and, for `nonblock`, O_NONBLOCK.
fn set_flags(fd: &OwnedFd, nonblock: bool) {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
        if nonblock {
            let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
}

struct Kqueue(OwnedFd);

impl Kqueue {
    fn new() -> Result<Kqueue, WatchError> {
        // SAFETY: plain kqueue(2); the descriptor is owned below.
        let fd = unsafe { libc::kqueue() };
        if fd < 0 {
            return Err(last_err("kqueue"));
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        set_flags(&fd, false);
        Ok(Kqueue(fd))
    }

    /// Register `ident` with `filter` (edge-triggered); `tag` comes back with its events.
    fn add(&self, ident: usize, filter: i16, fflags: u32, tag: usize) -> io::Result<()> {
        let ev = libc::kevent {
            ident,
            filter,
            flags: libc::EV_ADD | libc::EV_CLEAR,
            fflags,
            data: 0,
            udata: tag as *mut libc::c_void,
        };
        // SAFETY: one valid change, no event list.
        let rc = unsafe {
            libc::kevent(
                self.0.as_raw_fd(),
                &ev,
                1,
                std::ptr::null_mut(),
                0,
                std::ptr::null(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Wait until something fired or `until` passed: the (tag, ident) of each event.
    fn wait(&self, until: Instant) -> Result<Vec<(usize, usize)>, WatchError> {
        let left = until.saturating_duration_since(Instant::now());
        // Round up, so that a deadline less than a microsecond away is still waited for.
        let left = left.min(Duration::from_secs(24 * 3600)) + Duration::from_nanos(999);
        let ts = libc::timespec {
            tv_sec: left.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(left.subsec_nanos()),
        };
        // SAFETY: kevent's plain-data struct; all-zero is a valid value.
        let mut events: [libc::kevent; 16] = unsafe { std::mem::zeroed() };
        // SAFETY: no changes; `events` is writable for its length.
        let n = unsafe {
            libc::kevent(
                self.0.as_raw_fd(),
                std::ptr::null(),
                0,
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                &ts,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            // a signal's handler ran on this thread: its kevent is still queued
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(Vec::new());
            }
            return Err(WatchError::os("kevent", e));
        }
        Ok(events[..n as usize]
            .iter()
            .map(|e| (e.udata as usize, e.ident))
            .collect())
    }
}

extern "C" fn ignore(_: libc::c_int) {}

/// Give the signals a handler that does nothing (the kqueue reports them). Unlike SIG_IGN, a
/// handler is reset to the default at exec, so pfctl and the other programs stay killable.
fn signals(kq: &Kqueue) -> Result<(), WatchError> {
    let action = SigAction::new(
        SigHandler::Handler(ignore),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for s in SIGNALS {
        kq.add(s as usize, libc::EVFILT_SIGNAL, 0, TAG_SIGNAL)
            .map_err(|e| WatchError::os(format!("watching for {s}"), e))?;
        // SAFETY: the handler does nothing, which is async-signal-safe.
        unsafe { sigaction(s, &action) }.map_err(|e| WatchError::os(format!("handling {s}"), e))?;
    }
    Ok(())
}

fn route_socket() -> Result<OwnedFd, WatchError> {
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(af::ROUTE, af::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(last_err("opening a routing socket"));
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_flags(&fd, true);
    Ok(fd)
}

/// A thread running a CFRunLoop with configd's notifications; each one writes a byte to the
/// pipe whose read end this returns. `None` when configd cannot be reached (the routing socket
/// still sees the kernel's side of every change).
fn store_thread() -> Option<OwnedFd> {
    let mut fds = [0; 2];
    // SAFETY: fds is writable for two descriptors.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        tracing::warn!(
            "no SCDynamicStore notifications: pipe: {}",
            io::Error::last_os_error()
        );
        return None;
    }
    // SAFETY: fresh descriptors nobody else owns.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    set_flags(&r, true);
    set_flags(&w, true);
    let spawned = std::thread::Builder::new()
        .name("configd".into())
        .spawn(move || {
            let Some(watch) = crate::net::macos_store::Watch::new() else {
                tracing::warn!(
                    "no SCDynamicStore notifications (configd unreachable); the routing socket still wakes watch"
                );
                return; // dropping `w` ends the reader's wait for it
            };
            loop {
                if watch.wait(Duration::from_secs(3600)) {
                    // SAFETY: one byte from a static buffer.
                    let n = unsafe { libc::write(w.as_raw_fd(), b"!".as_ptr().cast(), 1) };
                    // full (EAGAIN): a wake-up is pending anyway; EPIPE: the reader is gone
                    if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EPIPE) {
                        return;
                    }
                }
            }
        });
    match spawned {
        Ok(_) => Some(r),
        Err(e) => {
            tracing::warn!("no SCDynamicStore notifications: {e}");
            None
        }
    }
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

/// O_EVTONLY: open only for the events (no read access checked, no unmount held up).
fn evtonly() -> nix::fcntl::OFlag {
    nix::fcntl::OFlag::from_bits_retain(libc::O_EVTONLY)
}

/// What tells a file's new content from its old (editors replace files by rename).
type Stamp = Option<(u64, u64, i64, i64, u64, i64, i64)>;

fn stamp(p: &Path) -> Stamp {
    let m = std::fs::symlink_metadata(p).ok()?;
    Some((
        m.dev(),
        m.ino(),
        m.mtime(),
        m.mtime_nsec(),
        m.size(),
        m.ctime(),
        m.ctime_nsec(),
    ))
}

/// EVFILT_VNODE on each watched file and its directory (opened with O_EVTONLY, which does not
/// keep a volume from unmounting, and O_NONBLOCK | O_NOFOLLOW: a FIFO or a link put in the
/// file's place is not opened, see [`super::open_to_watch`]); closing a descriptor removes its
/// events from the kqueue.
struct FileWatch {
    files: Vec<PathBuf>,
    stamps: Vec<Stamp>,
    _fds: Vec<OwnedFd>,
}

impl FileWatch {
    fn open(kq: &Kqueue, files: Vec<PathBuf>) -> FileWatch {
        let mut fds = Vec::new();
        for f in &files {
            let dir = match f.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            for (p, is_dir) in [(f.as_path(), false), (dir.as_path(), true)] {
                // Never following a link, never waiting on a FIFO: only a regular file or a
                // directory. A file or default config directory that does not exist (or is
                // something else): its directory's events (or SIGHUP) tell when it comes.
                let Some(fd) = super::open_to_watch(p, evtonly(), is_dir) else {
                    continue;
                };
                let what = libc::NOTE_WRITE
                    | libc::NOTE_EXTEND
                    | libc::NOTE_ATTRIB
                    | libc::NOTE_DELETE
                    | libc::NOTE_RENAME;
                match kq.add(fd.as_raw_fd() as usize, libc::EVFILT_VNODE, what, TAG_FILE) {
                    Ok(()) => fds.push(fd),
                    Err(e) => tracing::debug!("not watching {}: {e}", p.display()),
                }
            }
        }
        FileWatch {
            stamps: files.iter().map(|f| stamp(f)).collect(),
            files,
            _fds: fds,
        }
    }

    /// After an event: whether a watched file really changed (a directory's event may be about
    /// another file); the watch is opened again, since the file may have been replaced.
    fn changed(&mut self, kq: &Kqueue) -> bool {
        let now: Vec<Stamp> = self.files.iter().map(|f| stamp(f)).collect();
        let changed = now != self.stamps;
        *self = FileWatch::open(kq, std::mem::take(&mut self.files));
        changed
    }
}

fn interest(settings: &Settings) -> Interest {
    Interest {
        subnets: settings.request.subnets.clone(),
        neighbours: matches!(external_vm_ip(&settings.request), Ok((None, _))),
    }
}

/// Everything the loop waits on.
struct Sources {
    kq: Kqueue,
    route: OwnedFd,
    store: Option<OwnedFd>,
    files: FileWatch,
    interest: Interest,
    docker: Option<Follower>,
}

/// Follow the engine `settings` lead to, its pipe in the kqueue.
fn follow_docker(kq: &Kqueue, settings: &Settings) -> Option<Follower> {
    Follower::start(settings).filter(|f| {
        kq.add(
            f.fd().as_raw_fd() as usize,
            libc::EVFILT_READ,
            0,
            TAG_DOCKER,
        )
        .map_err(|e| tracing::warn!("not following Docker's events: {e}"))
        .is_ok()
    })
}

impl Sources {
    fn open(settings: &Settings) -> Result<Sources, WatchError> {
        let kq = Kqueue::new()?;
        signals(&kq)?;
        let route = route_socket()?;
        kq.add(route.as_raw_fd() as usize, libc::EVFILT_READ, 0, TAG_ROUTE)
            .map_err(|e| WatchError::os("watching the routing socket", e))?;
        let store = store_thread().filter(|r| {
            kq.add(r.as_raw_fd() as usize, libc::EVFILT_READ, 0, TAG_STORE)
                .map_err(|e| tracing::warn!("no SCDynamicStore notifications: {e}"))
                .is_ok()
        });
        let files = FileWatch::open(&kq, watched_files(settings));
        let docker = follow_docker(&kq, settings);
        Ok(Sources {
            kq,
            route,
            store,
            files,
            interest: interest(settings),
            docker,
        })
    }

    /// New settings: follow what they ask to watch.
    fn retarget(&mut self, settings: &Settings) {
        self.files = FileWatch::open(&self.kq, watched_files(settings));
        self.interest = interest(settings);
        // a new follower's pipe (closing the old one took its event out of the kqueue)
        if docker_follow::retarget(&mut self.docker, settings)
            && let Some(f) = &self.docker
            && let Err(e) = self.kq.add(
                f.fd().as_raw_fd() as usize,
                libc::EVFILT_READ,
                0,
                TAG_DOCKER,
            )
        {
            tracing::warn!("not following Docker's events: {e}");
            self.docker = None;
        }
    }

    /// Read every message queued on the routing socket.
    fn drain_routes(&self, causes: &mut Causes) -> Result<(), WatchError> {
        let mut buf = vec![0u8; READ_BUF];
        loop {
            // SAFETY: buf is writable for its length.
            let n =
                unsafe { libc::read(self.route.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(()),
                    Some(libc::EINTR) => continue,
                    // Kept for other BSDs; it never fires on xnu: `raw_input` drops a message
                    // that does not fit the receive buffer (sbappendaddr fails) without setting
                    // so_error, so a reader never learns that events were lost. What catches a
                    // lost event there is the backstop reconcile (every 60 s).
                    Some(libc::ENOBUFS) => causes.add("routing events lost (overrun)"),
                    _ => return Err(WatchError::os("reading routing events", e)),
                }
                continue;
            }
            if n == 0 {
                return Ok(());
            }
            rtsock::read(&buf[..n as usize], &self.interest, causes);
        }
    }

    fn drain_store(&mut self, causes: &mut Causes) {
        let Some(r) = &self.store else { return };
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: buf is writable for its length.
            let n = unsafe { libc::read(r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            match n {
                0 => {
                    // the thread ended: the routing socket still sees the kernel's side
                    self.store = None;
                    return;
                }
                n if n > 0 => causes.add("network configuration changed (configd)"),
                _ => return,
            }
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

fn read_sources(
    s: &mut Sources,
    fired: &[(usize, usize)],
    causes: &mut Causes,
) -> Result<Woken, WatchError> {
    let mut woken = Woken::default();
    let has = |tag| fired.iter().any(|(t, _)| *t == tag);
    for (tag, ident) in fired {
        if *tag == TAG_SIGNAL {
            match Signal::try_from(*ident as i32) {
                Ok(Signal::SIGHUP) => woken.sighup = true,
                Ok(sig) => woken.exit = Some(sig),
                Err(_) => {}
            }
        }
    }
    if has(TAG_ROUTE) {
        s.drain_routes(causes)?;
    }
    if has(TAG_STORE) {
        s.drain_store(causes);
    }
    woken.file_changed = has(TAG_FILE) && s.files.changed(&s.kq);
    if has(TAG_DOCKER)
        && let Some(d) = &s.docker
    {
        woken.containers = d.drain(causes);
    }
    Ok(woken)
}

/// When the last reconcile read pf, and how often it must at least.
struct PfReads {
    last: Instant,
    every: Duration,
}

/// What one reconcile hands the next, for the life of the process.
struct Carried {
    /// The last reconcile's error, if it failed (logged once, until it heals).
    last_error: Option<String>,
    /// Reconciles so far.
    count: u64,
    pf: PfReads,
}

/// One reconcile: `up`'s, exactly (engine::up), on a fresh routing socket. pf is read as
/// [`rtsock::reads_firewall`] says.
fn reconcile(
    settings: &Settings,
    causes: &Causes,
    carried: &mut Carried,
    names: Option<&Names>,
) -> Verdict {
    let Carried {
        last_error,
        count,
        pf,
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
    let reads_pf =
        rtsock::reads_firewall(causes, last_error.is_some(), pf.last.elapsed(), pf.every);
    if !reads_pf {
        // Only routes changed since pf was last read and that reconcile succeeded: dockroute's
        // anchor is as it left it (no pfctl runs).
        s.firewall = FirewallMode::Off;
    }
    let result = super::up_once(
        &s,
        DnsGate::Withhold(None),
        &crate::firewall::Reading::All,
        None,
    );
    if reads_pf && s.firewall == FirewallMode::Auto {
        pf.last = Instant::now();
    }
    let took = started.elapsed().as_secs_f64() * 1000.0;
    super::judge(&result, *count, took, last_error, ("route", "pf"))
}

/// `dockroute watch` on macOS: reconcile, then reconcile again on every (coalesced) event, until
/// SIGTERM or SIGINT. `load` reads the settings again on SIGHUP or a config change; settings
/// that fail to load keep the previous ones.
pub fn run(
    load: impl FnMut() -> Result<Settings, SettingsError>,
    opts: Options,
) -> Result<(), WatchError> {
    let (mut reloader, mut settings) = Reloader::start(load)?;
    // Subscribe before the first look, so that no change between the look and the wait is lost.
    let mut sources = Sources::open(&settings)?;
    let mut timing = Timing::default();
    if let Some(b) = opts.backstop {
        timing.backstop = b;
    }
    let mut carried = Carried {
        last_error: None,
        count: 0,
        pf: PfReads {
            last: Instant::now(),
            every: timing.backstop,
        },
    };
    let mut causes = Causes::default();
    causes.add("start");
    let mut names: Option<Names> = None;
    let mut v = reconcile(&settings, &causes, &mut carried, None);
    if names::follow(&settings, &mut names) {
        // the domain goes to the responder now
        causes = Causes::default();
        causes.add("DNS responder started");
        v = reconcile(&settings, &causes, &mut carried, names.as_ref());
    }
    causes = Causes::default();
    let mut pacer = Pacer::new(timing, Instant::now());
    pacer.ran(Instant::now(), v);
    tracing::info!(
        "watching (routing socket{}{}, config file{}; pf read at least every {:.1} s, backstop every {:.1} s)",
        if sources.store.is_some() {
            ", configd"
        } else {
            ""
        },
        if sources.docker.is_some() {
            ", Docker events"
        } else {
            ""
        },
        match &names {
            Some(n) => format!(", DNS responder on {}", n.addr()),
            None => String::new(),
        },
        carried.pf.every.as_secs_f64(),
        timing.backstop.as_secs_f64()
    );
    loop {
        if Instant::now() >= pacer.due() {
            let v = reconcile(&settings, &causes, &mut carried, names.as_ref());
            causes = Causes::default();
            pacer.ran(Instant::now(), v);
            if names::follow(&settings, &mut names) {
                causes.add("DNS responder started or stopped");
                pacer.event(Instant::now());
            }
            continue;
        }
        let until = match reloader.due(Instant::now()) {
            Some(r) => pacer.due().min(r),
            None => pacer.due(),
        };
        let fired = sources.kq.wait(until)?;
        let before = causes.clone();
        let woken = read_sources(&mut sources, &fired, &mut causes)?;
        if let Some(sig) = woken.exit {
            if let Some(n) = names.take() {
                n.stop();
                if !opts.down_on_exit {
                    // DNS goes back to what a plain `up` sets: the VM's nameserver
                    let mut causes = Causes::default();
                    causes.add("DNS responder stopped");
                    reconcile(&settings, &causes, &mut carried, None);
                }
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
            names::stop_unless_fits(&settings, &mut names);
            causes.add(why);
        }
        if causes != before {
            pacer.event(Instant::now());
        }
    }
}
