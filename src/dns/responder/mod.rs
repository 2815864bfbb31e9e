//! A DNS responder for the domain (`redis.docker`), answered from the Docker engine's own view
//! of its containers, on a loopback address of the host.
//!
//! - [`names`]: the input (containers, routed subnets) and the record table built from it (pure).
//! - [`answer`]: one query in, one answer out, through hickory-proto's wire format (pure).
//! - `serve`: the UDP and TCP sockets, on a thread of its own.
//!
//! `watch` embeds it:
//! ```no_run
//! # use dockroute::dns::responder::{Config, Responder, names::Container};
//! # fn containers() -> Vec<Container> { vec![] }
//! let r = Responder::start(Config::new("docker", "127.0.0.153:53".parse().unwrap())).unwrap();
//! let routed = ["172.17.0.0/16".parse().unwrap()];
//! for skipped in r.update(&containers(), &routed) {
//!     tracing::warn!("{skipped}");
//! }
//! // ... on each container event: r.update(...) again; at the end:
//! r.stop();
//! ```
//!
//! Why a thread with a current-thread tokio runtime: TCP connections with partial reads, their
//! timeouts and the forwarded queries are each a short task there, where a poll loop would need
//! a state machine per connection; the runtime has no other user, so a flood of queries keeps
//! one core busy at most and never touches `watch`'s loop. The only shared state is the table,
//! behind a mutex held just long enough to clone or replace an `Arc`.

pub mod answer;
pub mod names;
mod serve;

use names::{Container, Skipped, Table, Zone};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The TTL of every answer and of "no such name": a stopped container's name leaves caches
/// within seconds.
pub const TTL: u32 = 5;
/// How long a forwarded query waits for the upstream.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(800);
/// Forwarded queries in flight at once; past it, SERVFAIL at once.
pub const MAX_FORWARDS: usize = 64;
/// TCP connections at once; past it, a new one is closed at once.
pub const MAX_TCP_CONNECTIONS: usize = 64;
/// A TCP connection idle (or a read or write stalled) this long is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(5);
/// The longest query read (UDP datagram or TCP message); a longer TCP one closes the
/// connection, a longer datagram is cut and answered FORMERR.
pub const MAX_QUERY: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ResponderError {
    #[error("the DNS responder listens on loopback only, not on {0}")]
    NotLoopback(IpAddr),
    #[error("DNS responder: {0}")]
    Domain(String),
    #[error("DNS responder: {op}: {err}")]
    Io { op: String, err: std::io::Error },
}

impl ResponderError {
    fn io(op: impl Into<String>, err: std::io::Error) -> Self {
        ResponderError::Io { op: op.into(), err }
    }
}

/// Where and what the responder answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The domain, as in the settings (`docker`).
    pub domain: String,
    /// A loopback address; port 0 picks a free one (UDP and TCP get the same).
    pub listen: SocketAddr,
    /// Names in the domain the table does not know go here (the VM's nameserver), if set.
    pub upstream: Option<SocketAddr>,
}

impl Config {
    pub fn new(domain: &str, listen: SocketAddr) -> Config {
        Config {
            domain: domain.to_string(),
            listen,
            upstream: None,
        }
    }
}

/// The table the sockets answer from, swapped whole.
pub(crate) struct Shared {
    table: Mutex<Arc<Table>>,
}

impl Shared {
    fn current(&self) -> Arc<Table> {
        match self.table.lock() {
            Ok(t) => Arc::clone(&t),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn replace(&self, new: Table) {
        let new = Arc::new(new);
        match self.table.lock() {
            Ok(mut t) => *t = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }
}

/// A running responder. Dropping it stops it too.
pub struct Responder {
    zone: Zone,
    shared: Arc<Shared>,
    local: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    /// Bind UDP and TCP on `config.listen` and answer from an empty table (the domain's SOA and
    /// NS only) until [`Responder::update`]. Errors (address not loopback, port taken) come back
    /// here, before any thread starts.
    pub fn start(config: Config) -> Result<Responder, ResponderError> {
        if !config.listen.ip().is_loopback() {
            return Err(ResponderError::NotLoopback(config.listen.ip()));
        }
        let ns_address = match config.listen.ip() {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        };
        let zone = Zone::new(&config.domain, ns_address).map_err(ResponderError::Domain)?;
        let shared = Arc::new(Shared {
            table: Mutex::new(Arc::new(Table::empty(&zone))),
        });
        let (sockets, local) = serve::bind(config.listen)?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let run = serve::Server {
            shared: Arc::clone(&shared),
            upstream: config.upstream,
        };
        let thread = std::thread::Builder::new()
            .name("dns-responder".into())
            .spawn(move || run.run(sockets, stopped))
            .map_err(|e| ResponderError::io("starting its thread", e))?;
        tracing::info!("DNS responder for {} on {local} (UDP and TCP)", zone.name());
        Ok(Responder {
            zone,
            shared,
            local,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where it listens (the port filled in when the config asked for 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Answer from now on with the names of `containers` on `routed` subnets. The new table is
    /// built here, on the caller's thread, and is what the very next query sees. Returns the
    /// names left out, for the log.
    pub fn update(&self, containers: &[Container], routed: &[ipnet::Ipv4Net]) -> Vec<Skipped> {
        let mut built = Table::build(&self.zone, containers, routed);
        built.table.serial = self.shared.current().serial.wrapping_add(1);
        if built.more_skipped > 0 {
            tracing::warn!("DNS responder: {} more names skipped", built.more_skipped);
        }
        self.shared.replace(built.table);
        built.skipped
    }

    /// The table it answers from now.
    pub fn table(&self) -> Arc<Table> {
        self.shared.current()
    }

    /// Whether its thread still runs (it ends only on [`Responder::stop`], or if its sockets fail).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Close the sockets and end the thread; returns when both are done.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.shutdown();
    }
}
