//! Docker's events in `watch`: a thread of its own keeps one event stream open to the engine
//! the settings lead to (on a current-thread runtime, [`crate::docker::events`]) and wakes the
//! loop through a pipe whose read end the loop polls (epoll on Linux, a kqueue on macOS: only the
//! registering is per system). What came is kept in three flags, not a queue, so a flood of
//! events costs a bounded amount of memory and one wake-up per read of the loop: networks changed
//! (the loop lists them again and reconciles), containers changed (the names hook,
//! `watch::names::refresh_names`), and the stream (re)opened (list again: Docker replays nothing
//! that happened while the stream was down), besides the ids of destroyed networks (at most
//! [`MAX_GONE`]).
//!
//! When the networks changed or the stream opened, the thread asks the engine for the listing
//! at once, before the loop has even woken ([`crate::docker::ahead`]: at most [`MAX_ASKS`] at
//! once), and the reconcile that wakes takes that answer. The route of a created network is
//! then in place a few milliseconds after the engine's event.
//!
//! When the stream ends (dockerd restarts, the VM stops or sleeps), the thread connects again
//! with back-off ([`Backoff`]: never more than 30 s between tries, never a busy loop), logging the
//! loss once and the return once. While it is open and nothing happens, the thread sleeps in the
//! runtime's poll on the socket: no timer, no wake-up.

use super::Causes;
use crate::docker::ahead::Ahead;
use crate::docker::endpoint::{Choice, Endpoint};
use crate::docker::events::Event;
use crate::docker::{self, DockerError, Engine};
use crate::settings::Settings;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The cause a network created or destroyed gives the reconcile (which then lists again).
pub const NETWORKS_CHANGED: &str = "Docker network created or removed";
/// The cause a network destroyed gives (its id named: its route goes without a listing).
pub const NETWORK_GONE: &str = "Docker network removed";
/// The most destroyed networks kept between two reconciles; past it, the networks are listed.
const MAX_GONE: usize = 64;
/// The cause the stream (re)opening gives: what happened while it was closed is listed again.
pub const STREAM_OPENED: &str = "Docker events followed";

/// The first wait after a failed try, and the longest.
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A stream that stayed open this long was a good connection: the next try starts quickly.
const STABLE: Duration = Duration::from_secs(10);
/// After a container joined or left a network, the names are refreshed at once and again after
/// this long ([`Event::Attachment`]: the engine's list may not show it yet). One timer per burst
/// of such events, none while nothing happens.
const ATTACHMENT_SETTLE: Duration = Duration::from_millis(250);

/// The waits between tries: doubling from [`BACKOFF_START`] up to [`BACKOFF_MAX`].
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: BACKOFF_START,
        }
    }
}

impl Backoff {
    /// The wait before the next try.
    pub fn wait(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        d
    }

    pub fn reset(&mut self) {
        self.next = BACKOFF_START;
    }
}

/// What the stream thread saw since the loop last looked.
#[derive(Default)]
struct Pending {
    networks: AtomicBool,
    /// Networks destroyed, by id ([`Event::NetworkGone`]).
    gone: std::sync::Mutex<Vec<String>>,
    containers: AtomicBool,
    opened: AtomicBool,
    /// The engine asked after the latest network event or opening.
    ahead: std::sync::Mutex<Option<Ahead>>,
}

/// The stream thread, seen from the loop. Dropping it ends the thread (and closes the pipe).
pub struct Follower {
    endpoint: Endpoint,
    wake: OwnedFd,
    pending: Arc<Pending>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// The engine the settings lead to, as each reconcile chooses it.
fn endpoint(settings: &Settings) -> Option<Endpoint> {
    match docker::sources::choose(
        settings.docker.clone(),
        settings.request.machine.as_deref(),
        settings.request.docker_host.as_deref(),
    ) {
        Choice::At { endpoint, .. } => Some(endpoint),
        _ => None,
    }
}

/// A pipe whose both ends are non-blocking and closed at exec.
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
    let (r, w) = nix::unistd::pipe()?;
    for fd in [&r, &w] {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
        fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    }
    Ok((r, w))
}

impl Follower {
    /// Follow the engine `settings` lead to; `None` when they lead to none (Docker off or
    /// unset) or the thread cannot start (then only `up`'s listing at each reconcile remains).
    pub fn start(settings: &Settings) -> Option<Follower> {
        let endpoint = endpoint(settings)?;
        let (wake, write) = pipe()
            .map_err(|e| tracing::warn!("not following Docker's events: pipe: {e}"))
            .ok()?;
        let pending = Arc::new(Pending::default());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let (at, seen) = (endpoint.clone(), pending.clone());
        let spawned = std::thread::Builder::new()
            .name("docker-events".into())
            .spawn(move || thread(at, seen, write, stopped));
        match spawned {
            Ok(_) => Some(Follower {
                endpoint,
                wake,
                pending,
                _stop: stop,
            }),
            Err(e) => {
                tracing::warn!("not following Docker's events: {e}");
                None
            }
        }
    }

    /// The descriptor the loop waits on (readable when something came).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// After the descriptor was readable: empty the pipe, add what came to `causes` (a network
    /// change or a reopened stream: the next reconcile lists the engine again), and whether
    /// containers changed.
    pub fn drain(&self, causes: &mut Causes) -> bool {
        let mut buf = [0u8; 256];
        while matches!(nix::unistd::read(&self.wake, &mut buf), Ok(n) if n > 0) {}
        let opened = self.pending.opened.swap(false, Ordering::AcqRel);
        if opened {
            causes.add(STREAM_OPENED);
        }
        let networks = self.pending.networks.swap(false, Ordering::AcqRel);
        if networks {
            causes.add(NETWORKS_CHANGED);
        }
        if opened || networks {
            // the ask that followed the latest of those events (none: the reconcile asks)
            let ahead = self
                .pending
                .ahead
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            causes.asked_ahead(ahead);
        }
        let gone =
            std::mem::take(&mut *self.pending.gone.lock().unwrap_or_else(|e| e.into_inner()));
        for id in gone {
            causes.network_gone(id);
        }
        self.pending.containers.swap(false, Ordering::AcqRel)
    }
}

/// New settings: keep following the same engine, or follow another one (or none). Whether
/// the follower was replaced (its descriptor is a new one).
pub fn retarget(current: &mut Option<Follower>, settings: &Settings) -> bool {
    let wanted = endpoint(settings);
    if current.as_ref().map(|f| &f.endpoint) == wanted.as_ref() {
        return false;
    }
    // the old thread ends when its stop sender is dropped
    *current = None;
    *current = Follower::start(settings);
    true
}

/// Whether a reconcile with these causes must list the engine again.
pub fn relists(causes: &Causes) -> bool {
    causes.has(NETWORKS_CHANGED) || causes.has(STREAM_OPENED)
}

fn thread(
    endpoint: Endpoint,
    pending: Arc<Pending>,
    wake: OwnedFd,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!("not following Docker's events: runtime: {e}");
            return;
        }
    };
    rt.block_on(futures_lite::future::or(
        async {
            let _ = stopped.await;
        },
        follow(&endpoint, &pending, &wake),
    ));
    // dropping `wake` closes the pipe
}

/// Set a flag and wake the loop (a full pipe: a wake-up is pending already).
fn notify(flag: &AtomicBool, wake: &OwnedFd) {
    flag.store(true, Ordering::Release);
    let _ = nix::unistd::write(wake, b"!");
}

/// The stream, and the client that opened it (for the asks ahead).
async fn open(
    endpoint: &Endpoint,
) -> Result<(docker::events::Events, Arc<docker::client::Client>), DockerError> {
    let mut client = docker::client::Client::new(endpoint)?;
    let events = client.events().await?;
    Ok((events, Arc::new(client)))
}

/// The most asks ahead at once (a flood of network events): past it, the reconcile asks.
const MAX_ASKS: usize = 4;

/// The networks changed (or may have, while the stream was closed): ask the engine now, on
/// this thread's runtime, for the reconcile this wakes ([`Ahead`]), unless [`MAX_ASKS`] are
/// under way (then that reconcile asks itself: an answer asked before this event may miss
/// what it said); then set `flag` and wake the loop.
fn ask_ahead(
    (client, asks): (&Arc<docker::client::Client>, &Arc<tokio::sync::Semaphore>),
    endpoint: &Endpoint,
    pending: &Pending,
    flag: &AtomicBool,
    wake: &OwnedFd,
) {
    let ahead = asks
        .clone()
        .try_acquire_owned()
        .ok()
        .map(|permit| Ahead::ask(client.clone(), endpoint, permit));
    *pending.ahead.lock().unwrap_or_else(|e| e.into_inner()) = ahead;
    notify(flag, wake);
}

/// Follow the stream, connecting again whenever it ends, forever (until the thread is stopped).
async fn follow(endpoint: &Endpoint, pending: &Pending, wake: &OwnedFd) {
    let mut backoff = Backoff::default();
    let asks = Arc::new(tokio::sync::Semaphore::new(MAX_ASKS));
    // None: never opened; Some(true): lost and said so
    let mut lost: Option<bool> = None;
    loop {
        match open(endpoint).await {
            Ok((mut events, client)) => {
                let opened = Instant::now();
                match lost {
                    None => tracing::info!("Docker: following the engine's events at {endpoint}"),
                    Some(_) => tracing::info!(
                        "Docker: following the engine's events again (listing its networks again)"
                    ),
                }
                ask_ahead((&client, &asks), endpoint, pending, &pending.opened, wake);
                // when to refresh the names once more after an attachment
                let mut again: Option<tokio::time::Instant> = None;
                let why = loop {
                    let next = match again {
                        None => Some(events.next().await),
                        Some(at) => {
                            futures_lite::future::or(async { Some(events.next().await) }, async {
                                tokio::time::sleep_until(at).await;
                                None
                            })
                            .await
                        }
                    };
                    let Some(next) = next else {
                        again = None;
                        notify(&pending.containers, wake);
                        continue;
                    };
                    match next {
                        Ok(Some(Event::Network)) => {
                            ask_ahead((&client, &asks), endpoint, pending, &pending.networks, wake)
                        }
                        Ok(Some(Event::NetworkGone(id))) => {
                            let mut gone = pending.gone.lock().unwrap_or_else(|e| e.into_inner());
                            if gone.len() < MAX_GONE {
                                gone.push(id);
                                drop(gone);
                                let _ = nix::unistd::write(wake, b"!");
                            } else {
                                drop(gone);
                                notify(&pending.networks, wake);
                            }
                        }
                        Ok(Some(Event::Container)) => notify(&pending.containers, wake),
                        Ok(Some(Event::Attachment)) => {
                            notify(&pending.containers, wake);
                            again = Some(tokio::time::Instant::now() + ATTACHMENT_SETTLE);
                        }
                        Ok(Some(Event::Daemon)) => tracing::debug!("Docker: a daemon event"),
                        Ok(Some(Event::Other)) => {}
                        Ok(None) => break "the engine ended it".to_string(),
                        Err(e) => break e.to_string(),
                    }
                };
                tracing::warn!(
                    "Docker: the event stream ended ({why}); connecting again with back-off (at most {} s between tries)",
                    BACKOFF_MAX.as_secs()
                );
                lost = Some(true);
                if opened.elapsed() >= STABLE {
                    backoff.reset();
                }
            }
            Err(e) if lost.is_none() => {
                tracing::warn!(
                    "Docker: cannot follow the engine's events at {endpoint}: {e}; trying again with back-off (at most {} s between tries)",
                    BACKOFF_MAX.as_secs()
                );
                lost = Some(true);
            }
            Err(e) => tracing::debug!("Docker: events: {e}"),
        }
        tokio::time::sleep(backoff.wait()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_30_s_and_never_spins() {
        let mut b = Backoff::default();
        let waits: Vec<Duration> = (0..20).map(|_| b.wait()).collect();
        assert_eq!(waits[0], Duration::from_millis(500));
        assert_eq!(waits[1], Duration::from_secs(1));
        assert!(
            waits
                .iter()
                .all(|w| *w >= BACKOFF_START && *w <= BACKOFF_MAX)
        );
        assert_eq!(*waits.last().unwrap(), BACKOFF_MAX);
        b.reset();
        assert_eq!(b.wait(), BACKOFF_START);
    }

    #[test]
    fn network_changes_and_a_reopened_stream_list_again() {
        let mut c = Causes::default();
        c.add("route deleted");
        assert!(!relists(&c));
        c.add(NETWORKS_CHANGED);
        assert!(relists(&c));
        let mut c = Causes::default();
        c.add(STREAM_OPENED);
        assert!(relists(&c));
    }

    /// A follower with no stream thread, and the write end of its pipe (the thread's).
    fn follower() -> (Follower, OwnedFd) {
        let (wake, write) = pipe().unwrap();
        let f = Follower {
            endpoint: Endpoint::Unix {
                path: "/nonexistent".into(),
            },
            wake,
            pending: Arc::default(),
            _stop: tokio::sync::oneshot::channel().0,
        };
        (f, write)
    }

    #[test]
    fn a_destroyed_network_is_withdrawn_from_the_record_and_a_created_one_lists() {
        use crate::docker::Listing;
        let (f, write) = follower();
        let id = "b".repeat(64);
        f.pending.gone.lock().unwrap().push(id.clone());
        let _ = nix::unistd::write(&write, b"!");
        let mut causes = Causes::default();
        f.drain(&mut causes);
        assert_eq!(causes.gone(), std::slice::from_ref(&id));
        assert_eq!(
            super::super::docker_listing(5, true, &causes),
            Listing::Without(vec![id.clone()])
        );
        // the first reconcile, one after a failure, or a created network too: the engine is asked
        assert_eq!(super::super::docker_listing(1, true, &causes), Listing::Ask);
        assert_eq!(
            super::super::docker_listing(5, false, &causes),
            Listing::Ask
        );
        causes.add(NETWORKS_CHANGED);
        assert_eq!(super::super::docker_listing(5, true, &causes), Listing::Ask);
        // kernel events only: the record
        let mut kernel = Causes::default();
        kernel.add("route deleted");
        assert_eq!(
            super::super::docker_listing(5, true, &kernel),
            Listing::Recorded
        );
    }

    #[test]
    fn the_reconcile_takes_the_ask_that_followed_the_latest_network_event() {
        use crate::docker::Listing;
        let (f, write) = follower();
        let (first, _tx) = crate::docker::ahead::answered(&f.endpoint);
        *f.pending.ahead.lock().unwrap() = Some(first.clone());
        notify(&f.pending.networks, &write);
        let mut causes = Causes::default();
        f.drain(&mut causes);
        assert_eq!(
            super::super::docker_listing(5, true, &causes),
            Listing::Ahead(first.clone())
        );
        // the first reconcile and one after a failure take it too
        assert_eq!(
            super::super::docker_listing(1, false, &causes),
            Listing::Ahead(first)
        );
        // another event in the same burst, not asked ahead (too many asks under way): the
        // first answer may miss it, so the reconcile asks itself
        notify(&f.pending.networks, &write);
        f.drain(&mut causes);
        assert_eq!(super::super::docker_listing(5, true, &causes), Listing::Ask);
        // a container event leaves the networks' ask as it is
        let (second, _tx) = crate::docker::ahead::answered(&f.endpoint);
        *f.pending.ahead.lock().unwrap() = Some(second.clone());
        notify(&f.pending.networks, &write);
        f.drain(&mut causes);
        notify(&f.pending.containers, &write);
        f.drain(&mut causes);
        assert_eq!(
            super::super::docker_listing(5, true, &causes),
            Listing::Ahead(second)
        );
    }

    #[test]
    fn asks_ahead_are_bounded() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (f, write) = follower();
        let client = Arc::new(docker::client::Client::new(&f.endpoint).unwrap());
        let ask = |permits: &Arc<tokio::sync::Semaphore>| {
            let p = &f.pending;
            ask_ahead((&client, permits), &f.endpoint, p, &p.networks, &write);
            p.ahead.lock().unwrap().is_some()
        };
        rt.block_on(async {
            let none = Arc::new(tokio::sync::Semaphore::new(0));
            assert!(!ask(&none), "past the bound");
            let one = Arc::new(tokio::sync::Semaphore::new(1));
            assert!(ask(&one));
            assert_eq!(one.available_permits(), 0, "the ask holds its permit");
        });
        // the loop was woken both times
        let mut causes = Causes::default();
        f.drain(&mut causes);
        assert!(causes.has(NETWORKS_CHANGED));
    }

    #[test]
    fn the_pipe_wakes_and_the_flags_say_what_came() {
        let (f, write) = follower();
        for _ in 0..100_000 {
            // more than a pipe holds: the writer never blocks
            notify(&f.pending.networks, &write);
        }
        notify(&f.pending.containers, &write);
        let mut causes = Causes::default();
        assert!(f.drain(&mut causes));
        assert!(causes.has(NETWORKS_CHANGED) && !causes.has(STREAM_OPENED));
        let mut again = Causes::default();
        assert!(!f.drain(&mut again));
        assert!(again.is_empty());
    }
}
