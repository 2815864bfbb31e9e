//! `watch`'s DNS responder ([`crate::dns::responder`]): started when the Docker engine was
//! reached and DNS is not `off`, filled from the engine's running containers after every
//! reconcile and on container events ([`Names::refresh_names`]), stopped when `watch` ends.
//! While it runs, the reconcile points the DNS backend at it (`Settings::responder`).
//!
//! Where it listens: resolv.conf cannot name a port, so on Linux it takes port 53 of a loopback
//! address of dockroute's own, [`LISTEN`] (a port below 1024: only root can take it, so a user
//! cannot answer the domain while `watch` is down). macOS configures only 127.0.0.1 on lo0 and
//! resolver files name a port: there it listens on 127.0.0.1 port 10053.

use crate::dns::responder::{Config, Responder};
use crate::docker::client::Client;
use crate::docker::endpoint::Endpoint;
use crate::docker::{Engine, containers};
use crate::record::Store;
use crate::settings::Settings;
use ipnet::Ipv4Net;
use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

/// Where the responder listens.
#[cfg(not(target_os = "macos"))]
pub const LISTEN: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 153), 53);
#[cfg(target_os = "macos")]
pub const LISTEN: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 10053);

/// The longest one refresh waits for the engine's container list.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(2);

/// The responder, the engine it asks and the subnets whose addresses it names.
pub struct Names {
    responder: Responder,
    client: Client,
    endpoint: Endpoint,
    routed: Vec<Ipv4Net>,
    rt: tokio::runtime::Runtime,
    /// The names skipped last time (each is logged once, when it first appears).
    skipped: BTreeSet<String>,
    /// Each container's aliases (the engine's list leaves them out), by id, with the endpoints
    /// they were read for: a container is inspected again only when its endpoints change.
    aliases: HashMap<String, Aliases>,
    /// The settings it was started for (domain, DNS mode, upstream).
    started_for: (String, crate::options::DnsMode, Option<SocketAddrV4>),
}

/// Containers inspected for their aliases in one refresh at most (the others in the next ones).
pub const MAX_INSPECTS: usize = 64;

/// One container's aliases per network, and the endpoints they belong to.
struct Aliases {
    endpoints: Vec<Option<String>>,
    by_network: Vec<(String, Vec<String>)>,
}

/// The endpoints of a container: when they change, so may its aliases.
fn endpoints(c: &containers::ListedContainer) -> Vec<Option<String>> {
    c.networks.iter().map(|a| a.endpoint.clone()).collect()
}

/// Whether a container may have aliases: only user-defined networks carry them.
fn may_have_aliases(c: &containers::ListedContainer) -> bool {
    c.networks
        .iter()
        .any(|a| !matches!(a.network.as_str(), "bridge" | "host" | "none"))
}

fn upstream(settings: &Settings) -> Option<SocketAddrV4> {
    settings.nameserver_set.then_some(settings.nameserver)
}

/// What the last reconcile recorded: the engine it reached and the subnets routed, if it did.
fn engine_of(store: &Store) -> Option<(Endpoint, Vec<Ipv4Net>)> {
    let record = store.load().ok().flatten()?;
    let docker = record.docker.as_ref()?;
    if docker.unreached.is_some() {
        return None;
    }
    Some((docker.endpoint()?.clone(), record.target.subnets.clone()))
}

impl Names {
    /// Start the responder when `settings` set DNS and the last reconcile reached the engine
    /// (`None`, logged, otherwise: the domain stays with the VM's nameserver).
    pub fn start(settings: &Settings, store: &Store) -> Option<Names> {
        crate::dns::choose(settings.dns)?;
        let (endpoint, routed) = engine_of(store)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| tracing::warn!("DNS responder: {e}"))
            .ok()?;
        let mut client = Client::new(&endpoint)
            .map_err(|e| tracing::warn!("DNS responder: {e}"))
            .ok()?;
        // agree on the API version once (an older engine refuses bollard's own)
        rt.block_on(async { tokio::time::timeout(LIST_TIMEOUT, client.negotiate()).await })
            .map_err(|_| "no answer".to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(|e| tracing::warn!("DNS responder not started: the engine: {e}"))
            .ok()?;
        let mut config = Config::new(&settings.domain, SocketAddr::V4(LISTEN));
        config.upstream = upstream(settings).map(SocketAddr::V4);
        let responder = Responder::start(config)
            .map_err(|e| {
                tracing::warn!("{e}: the domain stays with the VM's nameserver");
            })
            .ok()?;
        let mut names = Names {
            responder,
            client,
            endpoint,
            routed,
            rt,
            skipped: BTreeSet::new(),
            aliases: HashMap::new(),
            started_for: (settings.domain.clone(), settings.dns, upstream(settings)),
        };
        names.refresh_names();
        Some(names)
    }

    /// Whether it answers what `settings` ask for (else: stop it, the next reconcile starts
    /// another).
    pub fn fits(&self, settings: &Settings) -> bool {
        self.started_for == (settings.domain.clone(), settings.dns, upstream(settings))
    }

    /// Where the DNS backends point the domain.
    pub fn addr(&self) -> SocketAddrV4 {
        match self.responder.local_addr() {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => LISTEN,
        }
    }

    /// Whether it still answers (its thread ends only if its sockets fail).
    pub fn is_running(&self) -> bool {
        self.responder.is_running()
    }

    /// After a reconcile: follow the engine and subnets it recorded, then refresh. `false`: the
    /// engine is another one now (or none): stop this responder.
    pub fn reconciled(&mut self, store: &Store) -> bool {
        match engine_of(store) {
            Some((endpoint, routed)) if endpoint == self.endpoint => {
                self.routed = routed;
                self.refresh_names();
                true
            }
            Some(_) => false,
            // not reached this time: keep answering from the last list
            None => true,
        }
    }

    /// Ask the engine for its running containers (one GET /containers/json) and answer from
    /// them from the next query on. Call it on every container event (start, die, stop, rename,
    /// connect, disconnect, destroy). An engine that does not answer leaves the names as they
    /// were.
    pub fn refresh_names(&mut self) {
        let listed = self
            .rt
            .block_on(async { tokio::time::timeout(LIST_TIMEOUT, self.client.containers()).await });
        let listed = match listed {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                tracing::warn!("DNS responder: listing the containers: {e}");
                return;
            }
            Err(_) => {
                tracing::warn!(
                    "DNS responder: the engine did not list its containers within {} s",
                    LIST_TIMEOUT.as_secs()
                );
                return;
            }
        };
        let mut listed = listed;
        self.fill_aliases(&mut listed);
        let containers = match containers::convert(&listed) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("DNS responder: {e}");
                return;
            }
        };
        let skipped: BTreeSet<String> = self
            .responder
            .update(&containers, &self.routed)
            .iter()
            .map(|s| s.to_string())
            .collect();
        for s in skipped.difference(&self.skipped) {
            tracing::warn!("DNS responder: {s}");
        }
        self.skipped = skipped;
        tracing::debug!(
            "DNS responder: {} container(s), {} record(s)",
            containers.len(),
            self.responder.table().records()
        );
    }

    /// Put each container's aliases into `listed`: from what was read before while its
    /// endpoints are the same, else by inspecting it (at most [`MAX_INSPECTS`] per refresh).
    fn fill_aliases(&mut self, listed: &mut [containers::ListedContainer]) {
        let ids: BTreeSet<&str> = listed.iter().filter_map(|c| c.id.as_deref()).collect();
        self.aliases.retain(|id, _| ids.contains(id.as_str()));
        let mut inspected = 0;
        for c in listed.iter_mut().filter(|c| may_have_aliases(c)) {
            let Some(id) = c.id.clone() else { continue };
            let now = endpoints(c);
            let known = self.aliases.get(&id).is_some_and(|a| a.endpoints == now);
            if !known && inspected < MAX_INSPECTS {
                inspected += 1;
                let asked = self.rt.block_on(async {
                    tokio::time::timeout(LIST_TIMEOUT, self.client.container_aliases(&id)).await
                });
                match asked {
                    Ok(Ok(by_network)) => {
                        self.aliases.insert(
                            id.clone(),
                            Aliases {
                                endpoints: now,
                                by_network,
                            },
                        );
                    }
                    Ok(Err(e)) => tracing::debug!("DNS responder: aliases of {id}: {e}"),
                    Err(_) => tracing::debug!("DNS responder: aliases of {id}: no answer"),
                }
            }
            if let Some(a) = self.aliases.get(&id) {
                for att in c.networks.iter_mut() {
                    if let Some((_, al)) = a.by_network.iter().find(|(n, _)| *n == att.network) {
                        att.aliases = al.clone();
                    }
                }
            }
        }
    }

    pub fn stop(self) {
        self.responder.stop();
    }
}

/// New settings: a responder that no longer fits them (another domain or upstream, or DNS
/// off) stops; the next reconcile points DNS where the settings say.
pub fn stop_unless_fits(settings: &Settings, names: &mut Option<Names>) {
    if names.as_ref().is_some_and(|n| !n.fits(settings))
        && let Some(n) = names.take()
    {
        n.stop();
    }
}

/// After a reconcile: start the responder if the engine was reached (and DNS is on), refresh
/// its names, or stop it if the engine is another one now (or its thread ended). Returns
/// whether it started or stopped: then the DNS backend must point elsewhere (one more
/// reconcile).
pub fn follow(settings: &Settings, names: &mut Option<Names>) -> bool {
    let store = Store::new(&settings.state_dir);
    let keep = names
        .as_mut()
        .map(|n| n.is_running() && n.reconciled(&store));
    match keep {
        Some(true) => false,
        Some(false) => {
            if let Some(n) = names.take() {
                n.stop();
            }
            true
        }
        None => {
            *names = Names::start(settings, &store);
            names.is_some()
        }
    }
}

/// `refresh_names` for the loop's container-event hook, when a responder runs.
pub fn refresh_names(names: &mut Option<Names>) {
    if let Some(n) = names.as_mut() {
        n.refresh_names();
    }
}
