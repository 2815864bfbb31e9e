//! The Docker Engine API client: bollard over a transport of dockroute's own, which opens one
//! connection per request (a unix socket, TCP, or TCP with TLS: [`super::tls`]) and cuts
//! it once the engine has sent more than [`MAX_RESPONSE`] bytes. The whole conversation is
//! bounded in time by the caller ([`super::TIMEOUT`]). TLS files are read with the invoking
//! user's rights, never following a link ([`crate::machine::read_regular_file`]).

use super::containers::{ListedAttachment, ListedContainer};
use super::endpoint::Endpoint;
use super::events::{self, Events};
use super::networks::Listed;
use super::tls;
use super::{DockerError, Engine, EngineVersion};
use bollard::{BollardRequest, ClientVersion, Docker};
use hyper_util::rt::TokioIo;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most one answer of the engine may hold (a list of 1000 networks is about 1 MiB).
pub const MAX_RESPONSE: u64 = 4 << 20;

/// bollard's own per-request limit (whole seconds; the caller's deadline is the real bound).
const REQUEST_SECS: u64 = 10;

/// A bollard client for `endpoint`.
pub struct Client {
    pub(super) docker: Docker,
    endpoint: Arc<Endpoint>,
    tls: Option<Arc<tls::Config>>,
}

impl Client {
    pub fn new(endpoint: &Endpoint) -> Result<Client, DockerError> {
        let tls = match endpoint {
            Endpoint::Tcp {
                tls: Some(files), ..
            } => Some(Arc::new(tls::config(files)?)),
            _ => None,
        };
        let endpoint = Arc::new(endpoint.clone());
        let docker = docker(&endpoint, &tls, bollard::API_DEFAULT_VERSION)?;
        Ok(Client {
            docker,
            endpoint,
            tls,
        })
    }

    /// `GET path` on a connection of its own, within [`MAX_RESPONSE`] (`limit` for the event
    /// stream). No API version in the path: the engine answers in its own.
    pub(super) async fn get(
        &self,
        path: &str,
        limit: u64,
    ) -> Result<hyper::Response<hyper::body::Incoming>, DockerError> {
        let req = hyper::Request::builder()
            .method(hyper::Method::GET)
            .uri(path)
            .body(bollard::body_full(Default::default()))
            .map_err(|e| DockerError::Engine(e.to_string()))?;
        let answer = send(&self.endpoint, self.tls.clone(), req, limit)
            .await
            .map_err(engine_err)?;
        if !answer.status().is_success() {
            return Err(DockerError::Engine(format!(
                "the engine answered {} to GET {}",
                answer.status().as_u16(),
                path.split('?').next().unwrap_or_default()
            )));
        }
        Ok(answer)
    }

    /// `GET path`'s JSON answer as `T` (bollard's models: every field optional, unknown ones
    /// ignored, so the engine's own API version reads as well as bollard's), and what its
    /// headers say of the engine (Docker's name every answer's server and API version).
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<(T, Pong), DockerError> {
        use hyper::body::Body;
        let answer = self.get(path, MAX_RESPONSE).await?;
        let pong = Pong::of(answer.headers());
        let mut body = answer.into_body();
        let mut bytes: Vec<u8> = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            let frame = frame.map_err(|e| DockerError::Engine(chain(&e)))?;
            if let Ok(data) = frame.into_data() {
                bytes.extend_from_slice(&data);
            }
        }
        let value = serde_json::from_slice(&bytes).map_err(|e| {
            DockerError::Engine(format!(
                "GET {path}: the answer is not what the Engine API says: {e}"
            ))
        })?;
        Ok((value, pong))
    }

    /// `GET /_ping`: the engine's API version and server name, from the answer's headers (one
    /// short request: `/version` asks containerd and takes about ten times as long).
    async fn ping(&self) -> Result<Pong, DockerError> {
        Ok(Pong::of(self.get("/_ping", MAX_RESPONSE).await?.headers()))
    }

    /// Agree with the engine on the API version bollard speaks (the engine's when it is older
    /// than bollard's: Docker 20.10 speaks 1.41): needed before any request through bollard.
    pub async fn negotiate(&mut self) -> Result<EngineVersion, DockerError> {
        let version = self.version().await?;
        let speak = version
            .api
            .as_deref()
            .and_then(speaking)
            .unwrap_or(*bollard::API_DEFAULT_VERSION);
        self.docker = docker(&self.endpoint, &self.tls, &speak)?;
        Ok(version)
    }
}

/// The API version to speak with an engine that speaks `api`: the engine's when it is older
/// than bollard's, else bollard's; `None` when `api` is not a version.
fn speaking(api: &str) -> Option<ClientVersion> {
    let (major, minor) = api.split_once('.')?;
    let theirs = ClientVersion {
        major_version: major.parse().ok()?,
        minor_version: minor.parse().ok()?,
    };
    let ours = bollard::API_DEFAULT_VERSION;
    Some(
        if (theirs.major_version, theirs.minor_version) < (ours.major_version, ours.minor_version) {
            theirs
        } else {
            *ours
        },
    )
}

/// What `GET /_ping`'s headers say.
#[derive(Debug, PartialEq, Eq)]
struct Pong {
    api: Option<String>,
    server: Option<String>,
}

impl Pong {
    fn of(headers: &hyper::HeaderMap) -> Pong {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Pong {
            api: header("api-version"),
            server: header("server"),
        }
    }

    /// The engine's version and API version; `None` when the headers do not say (an engine
    /// that is not Docker's: its version is asked the long way).
    fn engine(&self) -> Option<EngineVersion> {
        let api = self.api.as_deref()?;
        speaking(api)?;
        // "Docker/20.10.24+dfsg1 (linux)"
        let version = self
            .server
            .as_deref()?
            .strip_prefix("Docker/")?
            .split(' ')
            .next()
            .filter(|v| !v.is_empty())?;
        Some(EngineVersion {
            version: Some(super::networks::shown(version)),
            api: Some(super::networks::shown(api)),
        })
    }
}

/// A bollard client over dockroute's transport, speaking API `version`.
fn docker(
    endpoint: &Arc<Endpoint>,
    tls: &Option<Arc<tls::Config>>,
    version: &ClientVersion,
) -> Result<Docker, DockerError> {
    let (at, with) = (endpoint.clone(), tls.clone());
    let transport = move |req: BollardRequest| {
        let endpoint = at.clone();
        let tls = with.clone();
        async move { send(&endpoint, tls, req, MAX_RESPONSE).await }
    };
    Docker::connect_with_custom_transport(transport, Some("http://docker"), REQUEST_SECS, version)
        .map_err(|e| DockerError::Engine(e.to_string()))
}

impl Engine for Client {
    async fn version(&self) -> Result<EngineVersion, DockerError> {
        if let Some(version) = self.ping().await?.engine() {
            return Ok(version);
        }
        // not Docker's headers: its /version, in its own API version
        let (v, _): (bollard::models::SystemVersion, _) = self.get_json("/version").await?;
        Ok(EngineVersion {
            version: v.version.as_deref().map(super::networks::shown),
            api: v.api_version.as_deref().map(super::networks::shown),
        })
    }

    async fn networks(&self) -> Result<(Vec<Listed>, Option<EngineVersion>), DockerError> {
        let (list, pong): (Vec<bollard::models::Network>, _) = self.get_json("/networks").await?;
        let listed = list
            .into_iter()
            .map(|n| Listed {
                name: n.name,
                id: n.id,
                driver: n.driver,
                scope: n.scope,
                internal: n.internal,
                subnets: n
                    .ipam
                    .and_then(|i| i.config)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|c| c.subnet)
                    .collect(),
            })
            .collect();
        Ok((listed, pong.engine()))
    }

    async fn events(&mut self) -> Result<Events, DockerError> {
        // Open for as long as the engine runs: no cap on the whole answer, each event is capped
        // by itself (events::Lines).
        let answer = tokio::time::timeout(super::TIMEOUT, self.get(&events::path(), u64::MAX))
            .await
            .map_err(|_| DockerError::Timeout(super::TIMEOUT))??;
        Ok(Events::new(answer.into_body()))
    }

    async fn containers(&self) -> Result<Vec<ListedContainer>, DockerError> {
        self.list_containers().await
    }
}

impl Client {
    /// The running containers (GET /containers/json), within [`MAX_RESPONSE`].
    pub async fn list_containers(&self) -> Result<Vec<ListedContainer>, DockerError> {
        let (list, _): (Vec<bollard::models::ContainerSummary>, _) =
            self.get_json("/containers/json").await?;
        Ok(list
            .into_iter()
            .map(|c| ListedContainer {
                id: c.id,
                names: c.names.unwrap_or_default(),
                state: c.state.map(|s| s.to_string()),
                labels: c.labels.unwrap_or_default().into_iter().collect(),
                port: c
                    .ports
                    .unwrap_or_default()
                    .iter()
                    .find(|p| {
                        p.typ
                            .as_ref()
                            .is_none_or(|t| t.to_string().eq_ignore_ascii_case("tcp"))
                    })
                    .map(|p| p.private_port),
                networks: c
                    .network_settings
                    .and_then(|n| n.networks)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(network, e)| ListedAttachment {
                        network,
                        address: e.ip_address,
                        aliases: e.aliases.unwrap_or_default(),
                        endpoint: e.endpoint_id,
                    })
                    .collect(),
            })
            .collect())
    }

    /// A container's aliases on each network (GET /containers/{id}/json: the list leaves them
    /// out). `id` must be the engine's hex id.
    pub async fn container_aliases(
        &self,
        id: &str,
    ) -> Result<Vec<(String, Vec<String>)>, DockerError> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DockerError::Refused(format!(
                "'{}' is not a container id",
                super::networks::shown(id)
            )));
        }
        let c = self
            .docker
            .inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .map_err(engine_err)?;
        Ok(c.network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default()
            .into_iter()
            .map(|(net, e)| (net, e.aliases.unwrap_or_default()))
            .collect())
    }
}

pub(super) fn engine_err(e: bollard::errors::Error) -> DockerError {
    DockerError::Engine(chain(&e))
}

/// An error with its causes (hyper's "error reading a body" hides why: the size cap, a reset),
/// in one line of at most 300 characters, and nothing of the engine's that a terminal would act
/// on.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text.chars()
        .take(300)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// One request on a connection of its own.
async fn send(
    endpoint: &Endpoint,
    tls: Option<Arc<tls::Config>>,
    mut req: BollardRequest,
    limit: u64,
) -> Result<hyper::Response<hyper::body::Incoming>, bollard::errors::Error> {
    // origin-form, as a server behind a socket expects it
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| io::Error::other(e.to_string()))?;
    *req.uri_mut() = path;
    req.headers_mut().insert(
        hyper::header::HOST,
        hyper::header::HeaderValue::from_static("docker"),
    );
    match endpoint {
        Endpoint::Unix { path } => {
            let s = tokio::net::UnixStream::connect(path).await?;
            exchange(Capped::new(s, limit), req).await
        }
        Endpoint::Tcp { addr, .. } => {
            let s = tokio::net::TcpStream::connect(addr).await?;
            keepalive(&s);
            match tls {
                None => exchange(Capped::new(s, limit), req).await,
                Some(cfg) => {
                    exchange(
                        tls::connect(&cfg, addr.ip(), Capped::new(s, limit)).await?,
                        req,
                    )
                    .await
                }
            }
        }
    }
}

async fn exchange<S>(
    stream: S,
    req: BollardRequest,
) -> Result<hyper::Response<hyper::body::Incoming>, bollard::errors::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("docker: connection: {e}");
        }
    });
    Ok(sender.send_request(req).await?)
}

/// TCP keepalive probes after 30 s of silence, every 10 s, 3 of them: a connection to a VM that
/// stopped or slept without closing it (the event stream, which is silent while nothing happens)
/// fails within about a minute instead of never. The kernel sends the probes; the process is
/// not woken by them.
fn keepalive(s: &tokio::net::TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    #[cfg(target_os = "linux")]
    let idle = setsockopt(s, sockopt::TcpKeepIdle, &30);
    #[cfg(not(target_os = "linux"))]
    let idle = setsockopt(s, sockopt::TcpKeepAlive, &30);
    let set = setsockopt(s, sockopt::KeepAlive, &true)
        .and(idle)
        .and(setsockopt(s, sockopt::TcpKeepInterval, &10))
        .and(setsockopt(s, sockopt::TcpKeepCount, &3));
    if let Err(e) = set {
        tracing::debug!("docker: TCP keepalive: {e}");
    }
}

/// A stream that fails once more than `limit` bytes ([`MAX_RESPONSE`] for an answer) have
/// been read from it.
pub(super) struct Capped<S> {
    inner: S,
    read: u64,
    limit: u64,
}

impl<S> Capped<S> {
    fn new(inner: S, limit: u64) -> Self {
        Capped {
            inner,
            read: 0,
            limit,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Capped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read = self
            .read
            .saturating_add((buf.filled().len() - before) as u64);
        if self.read > self.limit {
            return Poll::Ready(Err(io::Error::other(format!(
                "the engine's answer is larger than {} MiB (refused)",
                MAX_RESPONSE >> 20
            ))));
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Capped<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pong(api: Option<&str>, server: Option<&str>) -> Pong {
        Pong {
            api: api.map(str::to_string),
            server: server.map(str::to_string),
        }
    }

    #[test]
    fn the_ping_headers_give_the_engine_version_and_the_api_to_speak() {
        let v = pong(Some("1.41"), Some("Docker/20.10.24+dfsg1 (linux)"))
            .engine()
            .unwrap();
        assert_eq!(v.version.as_deref(), Some("20.10.24+dfsg1"));
        assert_eq!(v.api.as_deref(), Some("1.41"));
        let speak = speaking("1.41").unwrap();
        assert_eq!((speak.major_version, speak.minor_version), (1, 41));
        // a newer engine than bollard: bollard's own version is spoken
        let speak = speaking("1.99").unwrap();
        assert_eq!(
            (speak.major_version, speak.minor_version),
            (
                bollard::API_DEFAULT_VERSION.major_version,
                bollard::API_DEFAULT_VERSION.minor_version
            )
        );
        assert!(speaking("one.two").is_none() && speaking("141").is_none());
        // an engine that is not Docker's, or headers missing or malformed: asked the long way
        for (api, server) in [
            (Some("1.41"), Some("Libpod/4.3.1 (linux)")),
            (None, Some("Docker/20.10.24 (linux)")),
            (Some("1.41"), None),
            (Some("one.two"), Some("Docker/20.10.24 (linux)")),
            (Some("1.41"), Some("Docker/ (linux)")),
        ] {
            assert!(pong(api, server).engine().is_none(), "{api:?} {server:?}");
        }
        // the engine's text is shown escaped
        let v = pong(Some("1.41"), Some("Docker/20.10\u{1b}[2J"))
            .engine()
            .unwrap();
        assert!(!v.version.unwrap().contains('\u{1b}'));
    }
}
