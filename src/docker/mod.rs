//! The Docker engine in the VM: where it listens ([`endpoint`], read from [`sources`]), what it
//! says ([`Engine`], implemented over the Engine API by [`client`]), and which of its networks
//! `up` routes ([`networks`]). The engine's answers are untrusted input: they are bounded in
//! size ([`client::MAX_RESPONSE`]) and time ([`TIMEOUT`]) and checked by [`networks::filter`]
//! before anything reaches `plan`. An engine that cannot be reached is a warning: the fixed
//! subnets are routed all the same.

pub mod ahead;
pub mod client;
pub mod containers;
pub mod endpoint;
pub mod events;
pub mod helper;
pub mod networks;
pub mod sources;
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    path = "tls_unsupported.rs"
)]
mod tls;
pub mod vmfilter;
pub mod vmnft;

use endpoint::{Choice, Endpoint, Explicit};
use ipnet::Ipv4Net;
use networks::{Host, Listed, Network, Skipped};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::time::Duration;

/// The longest `up` waits for the engine's whole conversation (connect, version, networks).
pub const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("{0}")]
    Engine(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the engine did not answer within {} s", .0.as_secs())]
    Timeout(Duration),
    #[error("{0}")]
    Refused(String),
    #[error("cannot start the client: {0}")]
    Runtime(String),
    /// `--open-vm-firewall`'s helper container.
    #[error("{0}")]
    Helper(String),
}

/// What the engine says about itself (untrusted text, escaped).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineVersion {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
}

/// A Docker engine, as dockroute asks it. `networks` is what `up` lists; `events` is what
/// `watch` follows.
pub trait Engine {
    /// Reach the engine and learn its version.
    fn version(&self) -> impl Future<Output = Result<EngineVersion, DockerError>>;
    /// Every network the engine has, as it describes them (unchecked), and the engine's version
    /// when the answer says it (Docker's does, in its headers).
    fn networks(
        &self,
    ) -> impl Future<Output = Result<(Vec<Listed>, Option<EngineVersion>), DockerError>>;
    /// The engine's event stream, open until the engine ends it ([`events`]).
    fn events(&mut self) -> impl Future<Output = Result<events::Events, DockerError>> {
        async {
            Err(DockerError::Engine(
                "this engine has no event stream".into(),
            ))
        }
    }
    /// The running containers, as the engine describes them (unchecked: see [`containers`]).
    fn containers(
        &self,
    ) -> impl Future<Output = Result<Vec<containers::ListedContainer>, DockerError>>;
}

/// Whether `up` asks the engine, or goes by the networks the last `up` recorded (`watch`, for a
/// reconcile that only kernel events caused: they say nothing about Docker; Docker's own events
/// and a reopened event stream make it ask, see `watch::docker_follow`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Listing {
    #[default]
    Ask,
    /// Ask, or take the answer `watch`'s event thread asked ahead ([`ahead`]).
    Ahead(ahead::Ahead),
    Recorded,
    /// The recorded networks but these (ids the engine's events said were destroyed).
    Without(Vec<String>),
}

impl Listing {
    /// Whether the engine is asked (not the record gone by).
    pub fn asks(&self) -> bool {
        matches!(self, Listing::Ask | Listing::Ahead(_))
    }
}

/// What `up` learned from the engine; the record keeps it and `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub engine: Choice,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<EngineVersion>,
    /// Why the engine was not reached, or its answer refused (a warning, not a failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreached: Option<String>,
    /// The networks routed through the VM (name, id, subnet).
    #[serde(default)]
    pub routed: Vec<Network>,
    #[serde(default)]
    pub skipped: Vec<Skipped>,
    /// The accepts `--open-vm-firewall` inserted in the VM (removed by `down`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_firewall: Option<vmfilter::Opened>,
}

impl Report {
    /// The subnets routed for Docker's networks.
    pub fn subnets(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        self.routed.iter().map(|n| n.subnet)
    }

    /// The endpoint asked, if one was.
    pub fn endpoint(&self) -> Option<&Endpoint> {
        match &self.engine {
            Choice::At { endpoint, .. } => Some(endpoint),
            _ => None,
        }
    }

    /// What the record keeps for a bare `up` to ask the same engine (`given`: the `--docker`
    /// flag of this run). A plain `DOCKER_HOST` the record keeps anyway (`docker_host_kept`)
    /// leads there again by itself, and is not repeated.
    pub fn to_replay(&self, given: Option<Explicit>, docker_host_kept: bool) -> Option<Explicit> {
        match &self.engine {
            Choice::Off { .. } => Some(Explicit::Off),
            Choice::At {
                source: endpoint::Source::DockerHost,
                endpoint: Endpoint::Tcp { tls: None, .. },
            } if docker_host_kept => None,
            Choice::At { endpoint, .. } => Some(Explicit::At(endpoint.clone())),
            Choice::Unset { .. } | Choice::Invalid { .. } => given,
        }
    }

    /// The one-line warning `up` logs when the engine was not reached.
    pub fn warning(&self) -> Option<String> {
        let why = self.unreached.as_ref()?;
        let at = match &self.engine {
            Choice::At { source, endpoint } => format!(" at {endpoint} (from {source})"),
            Choice::Invalid { source, .. } => format!(" (from {source})"),
            _ => String::new(),
        };
        Some(format!(
            "Docker: the engine{at} was not reached: {why}; {}",
            self.fallback()
        ))
    }

    /// What an engine not reached leaves routed: the networks the last `up` routed
    /// ([`Report::or_last`]), or the fixed subnets only.
    pub fn fallback(&self) -> String {
        match self.routed.len() {
            0 => "routing the fixed subnets only".into(),
            n => format!("keeping the {n} network(s) the last up routed"),
        }
    }

    /// This `up`'s report; but when the engine was not reached (or its answer refused) and the
    /// last `up` routed networks of the same endpoint, those networks, checked again against
    /// `host`, with the warning kept. Their containers are most likely still there (a VPN's kill
    /// switch blocks the engine's port until this very `up` repairs the firewall; the VM is
    /// busy), and withdrawing their routes would cut them off. The next `up` that reaches the
    /// engine lists again.
    pub fn or_last(self, last: Option<&Report>, host: &Host) -> Report {
        let Some(why) = self.unreached.clone() else {
            return self;
        };
        match last {
            Some(l)
                if !l.routed.is_empty()
                    && l.endpoint().is_some()
                    && l.endpoint() == self.endpoint() =>
            {
                let mut kept = l.again(host);
                kept.engine = self.engine;
                kept.version = None;
                kept.unreached = Some(match kept.unreached {
                    Some(refused) => format!("{why}; {refused}"),
                    None => why,
                });
                kept
            }
            _ => self,
        }
    }
}

impl Report {
    /// This report without the networks of these ids (destroyed, the engine's events said).
    pub fn without(mut self, gone: &[String]) -> Report {
        self.routed.retain(|n| !gone.contains(&n.id));
        self
    }

    /// The last `up`'s report for the same engine, its networks checked again against `host`
    /// (the host's addresses may have changed since).
    pub fn again(&self, host: &Host) -> Report {
        let listed: Vec<Listed> = self
            .routed
            .iter()
            .map(|n| Listed {
                name: Some(n.name.clone()),
                id: Some(n.id.clone()),
                driver: Some("bridge".into()),
                scope: Some("local".into()),
                internal: Some(false),
                subnets: vec![n.subnet.to_string()],
            })
            .collect();
        let mut r = self.clone();
        match networks::filter(&listed, host) {
            Ok(f) => {
                r.routed = f.routed;
                r.skipped.extend(f.skipped);
            }
            Err(e) => {
                r.routed.clear();
                r.unreached = Some(e);
            }
        }
        r
    }
}

/// What `up` asks the engine in one conversation: its version, then its networks and its
/// running containers at once (the containers are for the probes of the VM's filter,
/// [`helper::diagnose_listed`]).
#[derive(Debug)]
pub struct Fetched {
    pub version: EngineVersion,
    pub listed: Vec<Listed>,
    /// `Err`: why they were not listed (the networks are routed all the same).
    pub containers: Result<Vec<containers::ListedContainer>, String>,
}

/// Ask `engine` for its networks and running containers (unchecked) at once, and its version
/// (from the networks' answer when it says it: one request fewer).
pub async fn fetch<E: Engine>(engine: &E) -> Result<Fetched, DockerError> {
    let (listed, containers) =
        futures_lite::future::zip(engine.networks(), engine.containers()).await;
    let (listed, version) = listed?;
    let version = match version {
        Some(v) => v,
        None => engine.version().await?,
    };
    Ok(Fetched {
        version,
        listed,
        containers: containers.map_err(|e| e.to_string()),
    })
}

/// `up`'s conversation with the engine, started before discovery so that the two overlap (on a
/// thread and runtime of its own, within [`TIMEOUT`]), and finished when the host's networks
/// are known to check the engine's against.
pub struct Asking {
    choice: Choice,
    answer: Option<Answer>,
}

/// Where the engine's answer comes from: a thread of `up`'s own, or `watch`'s event thread,
/// which asked ahead ([`ahead`]).
enum Answer {
    Thread(std::thread::JoinHandle<Result<Fetched, DockerError>>),
    Ahead(ahead::Waiting, Box<Endpoint>),
}

impl Answer {
    fn thread(endpoint: &Endpoint) -> std::thread::JoinHandle<Result<Fetched, DockerError>> {
        spawn_on_runtime(endpoint, |client| async move {
            tokio::time::timeout(TIMEOUT, fetch(&client))
                .await
                .map_err(|_| DockerError::Timeout(TIMEOUT))?
        })
    }

    fn wait(self) -> Result<Fetched, DockerError> {
        let thread = match self {
            Answer::Thread(t) => t,
            Answer::Ahead(w, endpoint) => match w.wait() {
                Some(answer) => return answer,
                // the event thread ended (the engine changed): ask here
                None => Answer::thread(&endpoint),
            },
        };
        thread
            .join()
            .unwrap_or_else(|_| Err(DockerError::Runtime("the client thread failed".into())))
    }
}

impl Asking {
    /// Start asking the engine `choice` names (nothing to ask when it names none).
    pub fn start(choice: Choice) -> Asking {
        let answer = match &choice {
            Choice::At { endpoint, .. } => Some(Answer::Thread(Answer::thread(endpoint))),
            _ => None,
        };
        Asking { choice, answer }
    }

    /// Wait for the answer `ahead` asked of the engine `choice` names, when it is that engine's
    /// and fresh; otherwise start asking ([`Asking::start`]).
    pub fn resume(choice: Choice, ahead: &ahead::Ahead) -> Asking {
        if let Choice::At { endpoint, .. } = &choice
            && let Some(waiting) = ahead.take(endpoint)
        {
            tracing::debug!("Docker: the engine's answer was asked by the event thread");
            let answer = Some(Answer::Ahead(waiting, Box::new(endpoint.clone())));
            return Asking { choice, answer };
        }
        Asking::start(choice)
    }

    pub fn choice(&self) -> &Choice {
        &self.choice
    }

    /// The engine's answer, its networks checked against `host`; and its running containers,
    /// when it answered.
    pub fn finish(
        self,
        host: &Host,
    ) -> (
        Report,
        Option<Result<Vec<containers::ListedContainer>, String>>,
    ) {
        let mut report = Report {
            engine: self.choice,
            version: None,
            unreached: None,
            routed: Vec::new(),
            skipped: Vec::new(),
            vm_firewall: None,
        };
        if let Choice::Invalid { error, .. } = &report.engine {
            report.unreached = Some(error.clone());
        }
        let Some(answer) = self.answer else {
            return (report, None);
        };
        let fetched = answer.wait().and_then(|f| {
            let filtered = networks::filter(&f.listed, host).map_err(DockerError::Refused)?;
            Ok((f, filtered))
        });
        match fetched {
            Ok((f, filtered)) => {
                report.version = Some(f.version);
                report.routed = filtered.routed;
                report.skipped = filtered.skipped;
                (report, Some(f.containers))
            }
            Err(e) => {
                report.unreached = Some(e.to_string());
                (report, None)
            }
        }
    }
}

/// The engine `choice` names, asked once within [`TIMEOUT`], its networks checked against
/// `host` (blocking).
pub fn list(choice: Choice, host: &Host) -> Report {
    Asking::start(choice).finish(host).0
}

/// `f` with a client of `endpoint`, on a thread and runtime of its own (so any caller, async
/// or not, can wait for it).
pub fn on_runtime<T, F, Fut>(endpoint: &Endpoint, f: F) -> Result<T, DockerError>
where
    T: Send + 'static,
    F: FnOnce(client::Client) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, DockerError>>,
{
    spawn_on_runtime(endpoint, f)
        .join()
        .unwrap_or_else(|_| Err(DockerError::Runtime("the client thread failed".into())))
}

/// [`on_runtime`], started: join the handle for the answer.
fn spawn_on_runtime<T, F, Fut>(
    endpoint: &Endpoint,
    f: F,
) -> std::thread::JoinHandle<Result<T, DockerError>>
where
    T: Send + 'static,
    F: FnOnce(client::Client) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, DockerError>>,
{
    let endpoint = endpoint.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| DockerError::Runtime(e.to_string()))?;
        rt.block_on(async { f(client::Client::new(&endpoint)?).await })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine that answers from memory.
    struct Fake(Vec<Listed>);

    impl Engine for Fake {
        async fn version(&self) -> Result<EngineVersion, DockerError> {
            Ok(EngineVersion::default())
        }
        async fn networks(&self) -> Result<(Vec<Listed>, Option<EngineVersion>), DockerError> {
            Ok((self.0.clone(), None))
        }
        async fn containers(&self) -> Result<Vec<containers::ListedContainer>, DockerError> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn asks_and_filters() {
        let n = Listed {
            name: Some("app_default".into()),
            id: Some("a".repeat(64)),
            driver: Some("bridge".into()),
            scope: Some("local".into()),
            internal: None,
            subnets: vec!["172.18.0.0/16".into(), "0.0.0.0/0".into()],
        };
        let fetched = futures_lite::future::block_on(fetch(&Fake(vec![n]))).unwrap();
        let f = networks::filter(&fetched.listed, &Host::default()).unwrap();
        assert_eq!(f.routed.len(), 1);
        assert_eq!(f.skipped.len(), 1);
    }

    #[test]
    fn unreached_and_off_route_nothing() {
        let r = list(Choice::Unset { tried: Vec::new() }, &Host::default());
        assert!(r.routed.is_empty() && r.unreached.is_none() && r.warning().is_none());
        let r = list(
            Choice::Invalid {
                source: endpoint::Source::DockerHost,
                error: "DOCKER_HOST 'x' is bad".into(),
            },
            &Host::default(),
        );
        assert!(r.warning().unwrap().contains("from DOCKER_HOST"));
        // nothing listens on this socket
        let dir = tempfile::tempdir().unwrap();
        let r = list(
            Choice::At {
                source: endpoint::Source::Flag,
                endpoint: Endpoint::Unix {
                    path: dir.path().join("none.sock"),
                },
            },
            &Host::default(),
        );
        assert!(r.routed.is_empty());
        assert!(r.warning().unwrap().contains("was not reached"), "{r:?}");
    }

    #[test]
    fn an_engine_not_reached_keeps_the_last_ups_networks_of_the_same_endpoint() {
        let at = |path: &str| Choice::At {
            source: endpoint::Source::Flag,
            endpoint: Endpoint::Unix { path: path.into() },
        };
        // built from an empty report, so fields added later keep their defaults
        let empty = || list(Choice::Unset { tried: Vec::new() }, &Host::default());
        let last = Report {
            engine: at("/run/docker.sock"),
            version: Some(EngineVersion::default()),
            routed: vec![Network {
                name: "app_default".into(),
                id: "a".repeat(64),
                subnet: "172.18.0.0/16".parse().unwrap(),
            }],
            ..empty()
        };
        let unreached = |path: &str| Report {
            engine: at(path),
            unreached: Some("the engine did not answer within 5 s".into()),
            ..empty()
        };
        let kept = unreached("/run/docker.sock").or_last(Some(&last), &Host::default());
        assert_eq!(kept.routed, last.routed);
        assert!(kept.warning().unwrap().contains("keeping the 1 network(s)"));
        // another engine, no last up, or an engine that answered: nothing kept
        let other = unreached("/other.sock").or_last(Some(&last), &Host::default());
        assert!(other.routed.is_empty());
        assert!(other.warning().unwrap().contains("fixed subnets only"));
        assert!(
            unreached("/run/docker.sock")
                .or_last(None, &Host::default())
                .routed
                .is_empty()
        );
        let answered = Report {
            routed: Vec::new(),
            ..last.clone()
        };
        assert!(
            answered
                .or_last(Some(&last), &Host::default())
                .routed
                .is_empty()
        );
    }

    #[test]
    fn watch_goes_by_the_recorded_networks_checked_again() {
        let recorded = Report {
            engine: Choice::Unset { tried: Vec::new() },
            version: None,
            unreached: None,
            routed: vec![
                Network {
                    name: "app_default".into(),
                    id: "a".repeat(64),
                    subnet: "172.18.0.0/16".parse().unwrap(),
                },
                Network {
                    name: "web".into(),
                    id: "b".repeat(64),
                    subnet: "10.20.0.0/16".parse().unwrap(),
                },
            ],
            skipped: Vec::new(),
            vm_firewall: None,
        };
        assert_eq!(recorded.again(&Host::default()).routed, recorded.routed);
        // a network the engine said was destroyed: the others stay
        let without = recorded.clone().without(&["a".repeat(64)]);
        assert_eq!(without.routed, recorded.routed[1..]);
        // the host joined a network that overlaps one of them since: that one is withdrawn
        let host = Host {
            addrs: vec![("wlan0".into(), "10.20.5.7/24".parse().unwrap())],
            ..Host::default()
        };
        let again = recorded.again(&host);
        assert_eq!(again.routed, recorded.routed[..1]);
        assert!(again.skipped[0].reason.contains("wlan0's network"));
    }
}
