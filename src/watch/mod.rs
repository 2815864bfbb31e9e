//! `watch`: run `up`'s reconcile (engine::up, the one observe → diff → apply → record path), then
//! again whenever the kernel, the firewall, systemd-resolved or the config file say something
//! changed. Events are hints: each reconcile re-observes everything, so an event only says *when*
//! to look. [`pace`] decides when (bursts coalesced, echoes of its own changes settle, back-off,
//! backstop); this module names the events for the log; `linux` and `macos` have the event sources and
//! loops (`rtsock` says which routing-socket messages count on macOS).

pub mod dns_health;
pub mod docker_follow;
pub mod names;
pub mod pace;
pub mod rtsock;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
mod resolved_watch;
#[cfg(target_os = "linux")]
pub use linux::run;
#[cfg(target_os = "macos")]
mod macos;
#[cfg(target_os = "macos")]
pub use macos::run;

use crate::engine::EngineError;
use crate::settings::SettingsError;
use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("{op}: {err}")]
    Os { op: String, err: std::io::Error },
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("watch is not supported on this platform yet")]
    Unsupported,
}

impl WatchError {
    pub fn os(op: impl Into<String>, err: impl Into<std::io::Error>) -> Self {
        WatchError::Os {
            op: op.into(),
            err: err.into(),
        }
    }
}

/// A signal ends `watch`: say so, and with `--down-on-exit` remove the setup first.
#[cfg(any(target_os = "linux", target_os = "macos"))]
fn end(
    sig: impl fmt::Display,
    count: u64,
    opts: Options,
    settings: &crate::settings::Settings,
) -> Result<(), WatchError> {
    tracing::info!(
        "{sig}: ending after {count} reconcile(s){}",
        if opts.down_on_exit {
            "; removing the setup (--down-on-exit)"
        } else {
            "; the setup stays in place"
        }
    );
    if opts.down_on_exit {
        let store = crate::record::Store::new(&settings.state_dir);
        futures_lite::future::block_on(async {
            let mut net = crate::net::System::new()?;
            crate::engine::down(
                &mut net,
                settings,
                &store,
                false,
                crate::engine::Hooks::default(),
            )
            .await
        })?;
    }
    Ok(())
}

/// One reconcile's settings: `up`'s, except that watch itself waits (on events), the engine is
/// asked as [`docker_listing`] says, and the DNS backends point at the responder while it runs.
#[cfg(any(target_os = "linux", target_os = "macos"))]
fn round_settings(
    settings: &crate::settings::Settings,
    (count, last_ok): (u64, bool),
    causes: &Causes,
    responder: Option<std::net::SocketAddrV4>,
) -> crate::settings::Settings {
    let mut s = settings.clone();
    s.request.wait = None;
    s.docker_listing = docker_listing(count, last_ok, causes);
    s.responder = responder;
    s
}

/// `up`, exactly (engine::up_with), on a fresh kernel socket so that no cache outlives it.
#[cfg(any(target_os = "linux", target_os = "macos"))]
fn up_once(
    s: &crate::settings::Settings,
    gate: crate::engine::DnsGate,
    reading: &crate::firewall::Reading,
    memo: Option<&mut crate::firewall::Memo>,
) -> Result<crate::engine::Outcome, EngineError> {
    let store = crate::record::Store::new(&s.state_dir);
    futures_lite::future::block_on(async {
        let mut net = crate::net::System::new()?;
        crate::engine::up_with(
            &mut net,
            s,
            &store,
            false,
            crate::engine::Hooks::default(),
            gate,
            reading,
            memo,
        )
        .await
    })
}

/// What a reconcile's result means for the pacing, logged once: its changes at info, nothing to
/// change at debug, an error at warn once per distinct message (the next event retries). `kinds`
/// names the platform's changes for the log: ("route/rule", "firewall"), ("route", "pf").
#[cfg(any(target_os = "linux", target_os = "macos"))]
fn judge(
    result: &Result<crate::engine::Outcome, EngineError>,
    count: u64,
    took_ms: f64,
    last_error: &mut Option<String>,
    kinds: (&str, &str),
) -> pace::Verdict {
    use pace::Verdict;
    match result {
        Ok(o) => {
            if last_error.take().is_some() {
                tracing::info!("in place again");
            }
            let dns_changed = o.dns.as_ref().is_some_and(|d| d.changed);
            if o.changes.is_empty() && o.firewall.is_empty() && !dns_changed {
                tracing::debug!("reconcile #{count}: nothing to change ({took_ms:.1} ms)");
                Verdict::Clean
            } else {
                tracing::info!(
                    "reconcile #{count}: {} {} and {} {} change(s){} in {took_ms:.1} ms",
                    o.changes.len(),
                    kinds.0,
                    o.firewall.len(),
                    kinds.1,
                    match o.dns.as_ref() {
                        Some(d) if d.changed && d.answers == Some(false) => ", DNS line taken out",
                        Some(d) if d.changed => ", DNS set",
                        _ => "",
                    }
                );
                Verdict::Changed
            }
        }
        Err(e) => {
            let msg = e.to_string();
            if last_error.as_deref() != Some(msg.as_str()) {
                tracing::warn!("reconcile #{count}: {msg} (waiting for the next event)");
                *last_error = Some(msg);
            } else {
                tracing::debug!("reconcile #{count}: the same error again");
            }
            // a failed reconcile may have changed (and rolled back) something, which echoes
            Verdict::Failed {
                touched: matches!(
                    e,
                    EngineError::Apply { .. }
                        | EngineError::FirewallApply { .. }
                        | EngineError::DnsApply { .. }
                        | EngineError::Firewall(_)
                        | EngineError::Dns(_)
                ),
            }
        }
    }
}

/// What a reload found, to tell a change from a file that was only touched: the settings and,
/// when the VM's IP comes from `--machine`, what docker-machine's config.json says (each
/// reconcile reads it again, so a new IP there is a new target).
#[derive(Debug, PartialEq, Eq)]
struct Found {
    settings: crate::settings::Settings,
    machine: Option<Result<std::net::Ipv4Addr, String>>,
}

impl Found {
    fn of(settings: crate::settings::Settings) -> Found {
        let machine = match (&settings.request.vm_ip, &settings.request.machine) {
            (None, Some(name)) => Some(
                crate::machine::machine_config_path(name)
                    .and_then(|p| crate::machine::read_machine_ip(name, &p)),
            ),
            _ => None,
        };
        Found { settings, machine }
    }
}

/// Reading the settings again: for SIGHUP at once, for a changed file at most once per
/// [`pace::RELOAD_GAP`] (the last change of a burst is read when the gap ends); new settings
/// only when they differ from the last ones read, so a file touched without a change costs one
/// read a second and no reconcile.
pub struct Reloader<F> {
    load: F,
    pace: pace::ReloadPace,
    last: Found,
}

impl<F: FnMut() -> Result<crate::settings::Settings, SettingsError>> Reloader<F> {
    /// The first reading of the settings.
    pub fn start(mut load: F) -> Result<(Reloader<F>, crate::settings::Settings), WatchError> {
        let settings = load()?;
        let reloader = Reloader {
            load,
            pace: pace::ReloadPace::new(pace::RELOAD_GAP),
            last: Found::of(settings.clone()),
        };
        Ok((reloader, settings))
    }

    /// After the loop woke (a watched file changed, SIGHUP came, or neither: a reload may be
    /// due anyway): the new settings and what caused them, when there is something to do.
    pub fn woken(
        &mut self,
        file_changed: bool,
        sighup: bool,
        now: std::time::Instant,
    ) -> Option<(&'static str, crate::settings::Settings)> {
        if file_changed {
            self.pace.changed();
        }
        let why = if sighup {
            "SIGHUP"
        } else {
            "config file changed"
        };
        self.reload(why, sighup, now).map(|s| (why, s))
    }

    /// When the reload a file change asks for is due, if one is pending.
    pub fn due(&self, now: std::time::Instant) -> Option<std::time::Instant> {
        self.pace.due(now)
    }

    /// Read the settings again if a file change is due, or now for `forced` (SIGHUP, which
    /// also reconciles when nothing changed). The new settings, when there is something to do.
    fn reload(
        &mut self,
        why: &str,
        forced: bool,
        now: std::time::Instant,
    ) -> Option<crate::settings::Settings> {
        if !forced && self.due(now).is_none_or(|d| d > now) {
            return None;
        }
        self.pace.reloaded(now);
        let settings = match (self.load)() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("{why}: keeping the previous settings: {e}");
                return None;
            }
        };
        let path = settings.config_path.display().to_string();
        let mut found = Found::of(settings.clone());
        if let Some(Err(e)) = &found.machine {
            // Caught half-written (a file rewritten in place is empty for a moment) or gone: a
            // reconcile now would fail on the same read and leave the setup as it is; the next
            // change of the file (or the backstop) looks again.
            tracing::debug!("{why}: {e}: keeping the current setup");
            found.machine = self.last.machine.clone();
        }
        if found == self.last && !forced {
            tracing::debug!("{why}: settings re-read from {path}: unchanged, nothing to do");
            return None;
        }
        tracing::info!("{why}: settings re-read from {path}");
        self.last = found;
        Some(settings)
    }
}

/// What `watch` does besides reconciling.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Run `down` when ending on SIGTERM or SIGINT.
    pub down_on_exit: bool,
    /// The re-check with no event (default 60 s; tests shorten it).
    pub backstop: Option<std::time::Duration>,
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub fn run(
    _load: impl FnMut() -> Result<crate::settings::Settings, SettingsError>,
    _opts: Options,
) -> Result<(), WatchError> {
    Err(WatchError::Unsupported)
}

/// Open `path` only to be told when it changes (`access`: O_EVTONLY on macOS): a regular file
/// (`dir` false) whose last component is not followed if it is a symbolic link, or a directory.
/// Never an open that waits (a FIFO put where the file was) or acts (a device): anything else
/// is left unopened, and the directory's events still say when it is replaced.
pub fn open_to_watch(
    path: &std::path::Path,
    access: nix::fcntl::OFlag,
    dir: bool,
) -> Option<std::os::fd::OwnedFd> {
    use nix::fcntl::OFlag;
    let flags = access
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC
        | if dir {
            OFlag::O_DIRECTORY
        } else {
            OFlag::O_NOFOLLOW
        };
    if !dir && !std::fs::symlink_metadata(path).ok()?.is_file() {
        return None;
    }
    let fd = nix::fcntl::open(path, flags, nix::sys::stat::Mode::empty()).ok()?;
    let file = std::fs::File::from(fd);
    // what was opened, not what was looked at before (it may have been replaced in between)
    let meta = file.metadata().ok()?;
    (if dir { meta.is_dir() } else { meta.is_file() }).then(|| file.into())
}

/// The events since the last reconcile, counted by kind, for its log line; the Docker
/// networks the engine said were destroyed; and the engine's answer the event thread asked
/// after the last network event ([`crate::docker::ahead`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Causes(
    BTreeMap<&'static str, usize>,
    Vec<String>,
    Option<crate::docker::ahead::Ahead>,
);

impl Causes {
    pub fn add(&mut self, what: &'static str) {
        *self.0.entry(what).or_default() += 1;
    }

    /// A Docker network destroyed ([`docker_follow::NETWORK_GONE`]), by its id.
    pub fn network_gone(&mut self, id: String) {
        self.add(docker_follow::NETWORK_GONE);
        if !self.1.contains(&id) {
            self.1.push(id);
        }
    }

    /// The ids of the Docker networks destroyed.
    pub fn gone(&self) -> &[String] {
        &self.1
    }

    /// The engine asked ahead after the latest network event, or not (`None`: the reconcile
    /// asks itself); either replaces what an earlier event left.
    pub fn asked_ahead(&mut self, ahead: Option<crate::docker::ahead::Ahead>) {
        self.2 = ahead;
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn has(&self, what: &str) -> bool {
        self.0.contains_key(what)
    }

    pub fn take(&mut self) -> Causes {
        std::mem::take(self)
    }

    /// Whether only routes and rules changed. Those change neither the target (link, addresses,
    /// neighbours, config) nor the firewall, so the reconcile can leave the firewall unread.
    pub fn routes_only(&self) -> bool {
        !self.0.is_empty() && self.0.keys().all(|k| ROUTE_EVENTS.contains(k))
    }
}

const ROUTE_EVENTS: [&str; 7] = [
    "route added",
    "route deleted",
    "rule added",
    "rule deleted",
    // macOS (see rtsock)
    "route changed",
    "conflicting route added",
    "dockroute's route deleted",
];

impl fmt::Display for Causes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return write!(f, "backstop re-check");
        }
        for (i, (what, n)) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{what}")?;
            if *n > 1 {
                write!(f, " x{n}")?;
            }
        }
        Ok(())
    }
}

use crate::firewall::nfnl::{self, NLMSG_HDRLEN};

/// The message types in one netlink datagram (each message's `nlmsg_type`), skipping the
/// protocol's control messages (noop, error, done, overrun: types below 16).
pub fn message_types(datagram: &[u8]) -> Vec<u16> {
    nfnl::messages(datagram)
        .map(|(kind, _)| kind)
        .filter(|kind| *kind >= 16)
        .collect()
}

/// An rtnetlink message type, as the log names it; `None` for the ones `watch` ignores.
pub fn rtnl_event(kind: u16, neighbours: bool) -> Option<&'static str> {
    Some(match kind {
        16 => "link changed",
        17 => "link deleted",
        20 => "address added",
        21 => "address deleted",
        24 => "route added",
        25 => "route deleted",
        28 if neighbours => "neighbour changed",
        29 if neighbours => "neighbour deleted",
        32 => "rule added",
        33 => "rule deleted",
        _ => return None,
    })
}

/// An nftables notification (NFNL_SUBSYS_NFTABLES), as the log names it. Every transaction ends
/// with a generation message, which names nothing by itself.
pub fn nft_event(kind: u16) -> Option<&'static str> {
    if kind >> 8 != nfnl::NFTABLES {
        return None;
    }
    Some(match kind & 0xff {
        0 => "nft table added",
        2 => "nft table deleted",
        3 => "nft chain added",
        5 => "nft chain deleted",
        6 => "nft rule added",
        8 => "nft rule deleted",
        9 | 12 => "nft set changed",
        11 | 14 => "nft set changed",
        _ => return None,
    })
}

/// The firewalls nftables events named since the last reconcile: iptables-nft's tables, native
/// tables (`family name`), or something that names no table (then everything is read).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FwTouched {
    pub iptables: bool,
    pub tables: std::collections::BTreeSet<String>,
    pub unknown: bool,
}

impl FwTouched {
    /// Note every nftables message of one datagram. Every object message (table, chain, rule,
    /// set, element, object, flowtable) carries its table's name as attribute 1.
    pub fn add_datagram(&mut self, datagram: &[u8]) {
        for (kind, msg) in nfnl::messages(datagram) {
            if nft_event(kind).is_some() {
                match nft_table(msg) {
                    Some((family, name)) => self.table(family, name),
                    None => self.unknown = true,
                }
            }
        }
    }

    fn table(&mut self, family: u8, name: String) {
        let family = match family {
            1 => "inet", // NFPROTO_INET
            2 => "ip",   // NFPROTO_IPV4
            _ => return, // ip6, arp, bridge, netdev: no IPv4 traffic of dockroute's there
        };
        if crate::firewall::nft::iptables_nft_table(family, &name) {
            self.iptables = true;
        } else {
            self.tables.insert(format!("{family} {name}"));
        }
    }

    /// What a reconcile caused by `causes` must read: only these firewalls when nothing but
    /// route, rule and nftables events came (and the last reconcile succeeded), else everything.
    pub fn reading(&self, causes: &Causes, clean: bool) -> crate::firewall::Reading {
        let narrow = clean
            && !self.unknown
            && !causes.is_empty()
            && causes
                .0
                .keys()
                .all(|k| ROUTE_EVENTS.contains(k) || NFT_EVENTS.contains(k));
        if !narrow {
            return crate::firewall::Reading::All;
        }
        crate::firewall::Reading::Only {
            iptables: self.iptables,
            nft_tables: self.tables.iter().cloned().collect(),
        }
    }
}

/// (nfgenmsg family, table name) of an nftables object message.
fn nft_table(msg: &[u8]) -> Option<(u8, String)> {
    let family = *msg.get(NLMSG_HDRLEN)?;
    let (_, value) = nfnl::attributes(msg, nfnl::NFGENMSG_LEN).find(|(t, _)| *t == 1)?;
    let name = value.split(|b| *b == 0).next()?;
    Some((family, String::from_utf8_lossy(name).into_owned()))
}

const NFT_EVENTS: [&str; 7] = [
    "nft table added",
    "nft table deleted",
    "nft chain added",
    "nft chain deleted",
    "nft rule added",
    "nft rule deleted",
    "nft set changed",
];

/// Whether reconcile number `count` asks the Docker engine: the first does, one after a failed
/// reconcile, and one caused by Docker's events (a network created, the event stream opened
/// again: [`docker_follow::relists`]; the event thread asked already, the answer is waited
/// for); networks destroyed are taken out of the networks the
/// last listing recorded; the others go by those (kernel events say nothing about Docker's
/// networks).
pub(crate) fn docker_listing(count: u64, last_ok: bool, causes: &Causes) -> crate::docker::Listing {
    if count <= 1 || !last_ok || docker_follow::relists(causes) {
        match &causes.2 {
            Some(ahead) => crate::docker::Listing::Ahead(ahead.clone()),
            None => crate::docker::Listing::Ask,
        }
    } else if !causes.gone().is_empty() {
        // destroyed networks: withdrawn from the record, without asking the engine (busy taking
        // them down); a network created comes with an event of its own that asks
        crate::docker::Listing::Without(causes.gone().to_vec())
    } else {
        crate::docker::Listing::Recorded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn msg(kind: u16, payload: usize) -> Vec<u8> {
        let len = (NLMSG_HDRLEN + payload) as u32;
        let mut m = Vec::new();
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.resize(((len as usize) + 3) & !3, 0);
        m
    }

    #[test]
    fn names_each_message_of_a_datagram() {
        let mut d = msg(25, 3); // a route deleted, with a payload that needs padding
        d.extend(msg(33, 8));
        d.extend(msg(3, 4)); // NLMSG_DONE: not an event
        let kinds = message_types(&d);
        assert_eq!(kinds, [25, 33]);
        let mut c = Causes::default();
        for k in kinds {
            c.add(rtnl_event(k, false).unwrap());
        }
        c.add("route deleted");
        assert_eq!(c.to_string(), "route deleted x2, rule deleted");
        assert_eq!(Causes::default().to_string(), "backstop re-check");
        assert!(c.routes_only());
        c.add(rtnl_event(16, false).unwrap());
        assert!(!c.routes_only(), "a link change may change the target");
        assert!(
            !Causes::default().routes_only(),
            "the backstop reads everything"
        );
        let mut nft = Causes::default();
        nft.add(nft_event((10 << 8) | 6).unwrap());
        assert!(!nft.routes_only());
    }

    /// An nftables message: nfgenmsg (family), then attribute 1, the table's name.
    fn nft_msg(kind: u16, family: u8, table: &str) -> Vec<u8> {
        let mut body = vec![family, 0, 0, 0];
        let name = [table.as_bytes(), &[0]].concat();
        body.extend_from_slice(&((4 + name.len()) as u16).to_ne_bytes());
        body.extend_from_slice(&1u16.to_ne_bytes());
        body.extend_from_slice(&name);
        body.resize((body.len() + 3) & !3, 0);
        let mut m = msg(kind, body.len());
        m[NLMSG_HDRLEN..NLMSG_HDRLEN + body.len()].copy_from_slice(&body);
        m
    }

    #[test]
    fn nftables_events_name_the_firewall_to_read_again() {
        use crate::firewall::Reading;
        let rule_added = (10 << 8) | 6;
        let mut d = nft_msg(rule_added, 1, "mullvad");
        d.extend(nft_msg((10 << 8) | 2, 1, "mullvad")); // table deleted
        d.extend(nft_msg(rule_added, 10, "ip6only")); // ip6: not dockroute's traffic
        d.extend(msg((10 << 8) | 15, 8)); // the generation message
        let mut t = FwTouched::default();
        t.add_datagram(&d);
        let mut causes = Causes::default();
        causes.add("nft rule added");
        causes.add("route deleted");
        assert_eq!(
            t.reading(&causes, true),
            Reading::Only {
                iptables: false,
                nft_tables: vec!["inet mullvad".into()]
            }
        );
        t.add_datagram(&nft_msg(rule_added, 2, "filter")); // iptables-nft's
        let Reading::Only { iptables, .. } = t.reading(&causes, true) else {
            panic!("narrowed");
        };
        assert!(iptables);
        assert_eq!(t.reading(&causes, false), Reading::All, "after a failure");
        causes.add("link changed");
        assert_eq!(
            t.reading(&causes, true),
            Reading::All,
            "the target may move"
        );
        let mut odd = FwTouched::default();
        odd.add_datagram(&msg(rule_added, 4)); // no table name
        assert!(odd.unknown);
        assert_eq!(odd.reading(&Causes::default(), true), Reading::All);
    }

    #[test]
    fn only_a_regular_file_or_a_directory_is_opened_to_watch_and_never_a_fifo() {
        use nix::fcntl::OFlag;
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("config.json");
        std::fs::write(&file, "{}").unwrap();
        assert!(open_to_watch(&file, OFlag::O_RDONLY, false).is_some());
        assert!(open_to_watch(d.path(), OFlag::O_RDONLY, true).is_some());
        assert!(open_to_watch(&file, OFlag::O_RDONLY, true).is_none());
        let fifo = d.path().join("fifo.json");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // without a writer, an open that waits would never return
        assert!(open_to_watch(&fifo, OFlag::O_RDONLY, false).is_none());
        assert!(open_to_watch(&fifo, OFlag::O_RDONLY, true).is_none());
        let link = d.path().join("link.json");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(open_to_watch(&link, OFlag::O_RDONLY, false).is_none());
        assert!(open_to_watch(Path::new("/dev/null"), OFlag::O_RDONLY, false).is_none());
    }

    #[test]
    fn truncated_or_garbage_datagrams_do_not_loop() {
        assert!(message_types(&[1, 2, 3]).is_empty());
        let mut d = msg(24, 0);
        d[0..4].copy_from_slice(&0u32.to_ne_bytes()); // a zero length must not spin
        assert!(message_types(&d).is_empty());
        let mut d = msg(24, 0);
        d[0..4].copy_from_slice(&1000u32.to_ne_bytes()); // longer than the datagram
        assert_eq!(message_types(&d), [24]);
    }

    #[test]
    fn neighbours_count_only_when_discovery_reads_them() {
        assert_eq!(rtnl_event(28, false), None);
        assert_eq!(rtnl_event(28, true), Some("neighbour changed"));
        assert_eq!(nft_event((10 << 8) | 2), Some("nft table deleted"));
        assert_eq!(nft_event((10 << 8) | 15), None); // the generation message
        assert_eq!(nft_event(6), None);
    }
}
