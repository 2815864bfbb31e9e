//! The Docker engine in the VM: where it listens ([`endpoint`], read from [`sources`]), what it
//! says ([`Engine`], implemented over the Engine API by [`client`]), and which of its networks
//! `up` routes ([`networks`]). The engine's answers are untrusted input: they are bounded in
//! size ([`client::MAX_RESPONSE`]) and time ([`TIMEOUT`]) and checked by [`networks::filter`]
//! before anything reaches `plan`. An engine that cannot be reached is a warning: the fixed
//! subnets are routed all the same.

pub mod client;
pub mod containers;
pub mod endpoint;
pub mod networks;
pub mod sources;
#[cfg_attr(not(target_os = "linux"), path = "tls_unsupported.rs")]
mod tls;

use endpoint::{Choice, Endpoint, Explicit};
use ipnet::Ipv4Net;
use networks::{Filtered, Host, Listed, Network, Skipped};
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
}

/// What the engine says about itself (untrusted text, escaped).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineVersion {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
}

/// A Docker engine, as dockroute asks it. `networks` is what `up` lists; a `watch` event stream
/// and a containers list (for names) are the next methods beside it.
pub trait Engine {
    /// Reach the engine and learn its version (agreeing on the API version to speak).
    fn version(&mut self) -> impl Future<Output = Result<EngineVersion, DockerError>>;
    /// Every network the engine has, as it describes them (unchecked).
    fn networks(&mut self) -> impl Future<Output = Result<Vec<Listed>, DockerError>>;
    /// The running containers, as the engine describes them (unchecked: see [`containers`]).
    fn containers(
        &mut self,
    ) -> impl Future<Output = Result<Vec<containers::ListedContainer>, DockerError>>;
}

/// Whether `up` asks the engine, or goes by the networks the last `up` recorded (`watch` after
/// its first reconcile: its kernel events say nothing about Docker, and the engine is asked
/// once per `up`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Listing {
    #[default]
    Ask,
    Recorded,
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
            "Docker: the engine{at} was not reached: {why}; routing the fixed subnets only"
        ))
    }
}

impl Report {
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

/// Ask `engine` for its networks and check them against `host`.
pub async fn ask<E: Engine>(
    engine: &mut E,
    host: &Host,
) -> Result<(EngineVersion, Filtered), DockerError> {
    let version = engine.version().await?;
    let listed = engine.networks().await?;
    let filtered = networks::filter(&listed, host).map_err(DockerError::Refused)?;
    Ok((version, filtered))
}

/// The engine `choice` names, asked once within [`TIMEOUT`] (on a thread and runtime of its own,
/// so any caller can wait for it), its networks checked against `host`.
pub fn list(choice: Choice, host: &Host) -> Report {
    let mut report = Report {
        engine: choice,
        version: None,
        unreached: None,
        routed: Vec::new(),
        skipped: Vec::new(),
    };
    let endpoint = match &report.engine {
        Choice::At { endpoint, .. } => endpoint.clone(),
        Choice::Invalid { error, .. } => {
            report.unreached = Some(error.clone());
            return report;
        }
        Choice::Off { .. } | Choice::Unset { .. } => return report,
    };
    let host = host.clone();
    let asked = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| DockerError::Runtime(e.to_string()))?;
        rt.block_on(async {
            let mut client = client::Client::new(&endpoint)?;
            tokio::time::timeout(TIMEOUT, ask(&mut client, &host))
                .await
                .map_err(|_| DockerError::Timeout(TIMEOUT))?
        })
    })
    .join()
    .unwrap_or_else(|_| Err(DockerError::Runtime("the client thread failed".into())));
    match asked {
        Ok((version, filtered)) => {
            report.version = Some(version);
            report.routed = filtered.routed;
            report.skipped = filtered.skipped;
        }
        Err(e) => report.unreached = Some(e.to_string()),
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine that answers from memory.
    struct Fake(Vec<Listed>);

    impl Engine for Fake {
        async fn version(&mut self) -> Result<EngineVersion, DockerError> {
            Ok(EngineVersion::default())
        }
        async fn networks(&mut self) -> Result<Vec<Listed>, DockerError> {
            Ok(self.0.clone())
        }
        async fn containers(&mut self) -> Result<Vec<containers::ListedContainer>, DockerError> {
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
        let (_, f) =
            futures_lite::future::block_on(ask(&mut Fake(vec![n]), &Host::default())).unwrap();
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
        };
        assert_eq!(recorded.again(&Host::default()).routed, recorded.routed);
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
