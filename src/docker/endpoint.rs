//! Where the Docker engine listens, and which source said so. Pure: the sources are read by
//! [`super::sources`], which hands each one to [`choose`] in a fixed order.
//!
//! Order, first source that is set wins (even when what it says is unusable: a `DOCKER_HOST`
//! the user set is not silently replaced by a socket found elsewhere): `--docker` (or the config
//! key `docker`, or the endpoint the last `up` recorded), `--machine NAME` (docker-machine's
//! store), `DOCKER_HOST`, the current Docker context, the well-known per-user sockets.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// Docker's unencrypted and TLS ports.
pub const PLAIN_PORT: u16 = 2375;
pub const TLS_PORT: u16 = 2376;

/// The three PEM files of a TLS endpoint (the client's key and certificate, and the CA that
/// signed the engine's certificate), as `docker-machine env` and `DOCKER_CERT_PATH` lay them out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// `ca.pem`, `cert.pem` and `key.pem` in `dir`.
    pub fn in_dir(dir: &Path) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }
}

/// Where the engine listens. Host names are refused: dockroute resolves no names (a name may
/// resolve through the very routes it sets up).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Endpoint {
    Unix {
        path: PathBuf,
    },
    Tcp {
        addr: SocketAddr,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tls: Option<TlsFiles>,
    },
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix { path } => write!(f, "unix://{}", path.display()),
            Endpoint::Tcp { addr, tls: None } => write!(f, "tcp://{addr}"),
            Endpoint::Tcp { addr, tls: Some(t) } => {
                let dir = t.ca.parent().unwrap_or(Path::new(""));
                write!(f, "tcp://{addr} (TLS, certificates in {})", dir.display())
            }
        }
    }
}

/// Where the endpoint came from; `status` names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Source {
    Flag,
    Config {
        path: PathBuf,
    },
    /// The endpoint the last `up` used (a bare `up`: a VPN hook's, the boot job's).
    Recorded,
    Machine {
        name: String,
    },
    DockerHost,
    Context {
        name: String,
    },
    Colima {
        profile: String,
    },
    Lima {
        instance: String,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag => write!(f, "--docker"),
            Source::Config { path } => write!(f, "docker in {}", path.display()),
            Source::Recorded => write!(f, "the last up's engine (recorded)"),
            Source::Machine { name } => write!(f, "docker-machine '{name}'"),
            Source::DockerHost => write!(f, "DOCKER_HOST"),
            Source::Context { name } => write!(f, "Docker context '{name}'"),
            Source::Colima { profile } => write!(f, "Colima profile '{profile}'"),
            Source::Lima { instance } => write!(f, "Lima instance '{instance}'"),
        }
    }
}

/// What `--docker` (or the config key) says: no Docker, or this endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Explicit {
    Off,
    At(Endpoint),
}

impl fmt::Display for Explicit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Explicit::Off => write!(f, "off"),
            Explicit::At(e) => write!(f, "{e}"),
        }
    }
}

/// `--docker VALUE`: `off`, `tcp://IP[:PORT]` (no TLS; port 2375 by default) or
/// `unix:///absolute/path`.
pub fn parse_flag(s: &str) -> Result<Explicit, String> {
    if s == "off" {
        return Ok(Explicit::Off);
    }
    parse_url(s, None).map(Explicit::At)
}

/// A Docker host URL (`tcp://IP[:PORT]`, `unix:///path`), with the TLS files for a TCP one.
/// The default TCP port is 2376 with TLS and 2375 without, as the docker CLI has it.
pub fn parse_url(s: &str, tls: Option<TlsFiles>) -> Result<Endpoint, String> {
    let shown = s.escape_default();
    if let Some(path) = s.strip_prefix("unix://") {
        let path = Path::new(path);
        if !path.is_absolute() || path.as_os_str().len() > 104 {
            return Err(format!(
                "'{shown}': a unix socket is unix:///absolute/path (at most 104 bytes)"
            ));
        }
        if s.contains(|c: char| c.is_control()) {
            return Err(format!("'{shown}': control characters in the path"));
        }
        return Ok(Endpoint::Unix {
            path: path.to_path_buf(),
        });
    }
    let Some(rest) = s.strip_prefix("tcp://") else {
        return Err(format!(
            "'{shown}' is not a Docker endpoint: use tcp://IP[:PORT], unix:///PATH or off"
        ));
    };
    let hostport = rest.strip_suffix('/').unwrap_or(rest);
    let default_port = if tls.is_some() { TLS_PORT } else { PLAIN_PORT };
    let addr = match hostport.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => match hostport.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, default_port),
            Err(_) => {
                let host = hostport
                    .strip_prefix('[')
                    .and_then(|h| h.split_once(']'))
                    .map_or_else(
                        || hostport.rsplit_once(':').map_or(hostport, |(h, _)| h),
                        |(h, _)| h,
                    );
                return Err(if host.parse::<IpAddr>().is_ok() {
                    format!("'{shown}': the port is not a number from 1 to 65535")
                } else {
                    format!(
                        "'{shown}' names a host, not an IP address: dockroute resolves no names (one may resolve through the routes it sets up); use the IP"
                    )
                });
            }
        },
    };
    if addr.port() == 0 || addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err(format!("'{shown}': not an address an engine listens on"));
    }
    Ok(Endpoint::Tcp { addr, tls })
}

/// `DOCKER_HOST`, `DOCKER_TLS_VERIFY` and `DOCKER_CERT_PATH` as the docker CLI reads them: TLS
/// when `DOCKER_TLS_VERIFY` is set to anything but empty (or `DOCKER_CERT_PATH` is set), with
/// the files in `DOCKER_CERT_PATH`, else in `default_cert_dir` (`~/.docker`).
pub fn from_docker_host(
    host: &str,
    tls_verify: Option<&str>,
    cert_path: Option<&Path>,
    default_cert_dir: Option<&Path>,
) -> Result<Endpoint, String> {
    let verify = tls_verify.is_some_and(|v| !v.is_empty());
    let tls = if verify && host.starts_with("tcp://") {
        let dir = cert_path.or(default_cert_dir).ok_or(
            "DOCKER_TLS_VERIFY is set but neither DOCKER_CERT_PATH nor a home directory names the certificates",
        )?;
        Some(TlsFiles::in_dir(dir))
    } else {
        None
    };
    if !verify && host.starts_with("tcp://") && cert_path.is_some() {
        return Err(
            "DOCKER_CERT_PATH is set without DOCKER_TLS_VERIFY: dockroute talks to an engine either with verified TLS or, on a plain port, without; set DOCKER_TLS_VERIFY=1".into(),
        );
    }
    // The value is not repeated: it may name another machine (an ssh:// build host), and the
    // reason is recorded for `status`.
    parse_url(host, tls).map_err(|e| {
        let scheme: String = host
            .split_once("://")
            .map_or("", |(s, _)| s)
            .chars()
            .take(16)
            .flat_map(char::escape_default)
            .collect();
        let shown = format!("'{}'", host.escape_default());
        format!(
            "DOCKER_HOST {}",
            e.replacen(&shown, &format!("({scheme}://...)"), 1)
        )
    })
}

/// `currentContext` of `~/.docker/config.json`: `None` when unset or `default` (which means
/// DOCKER_HOST or the system socket, not a context of its own).
pub fn current_context(config_json: &[u8]) -> Result<Option<String>, String> {
    #[derive(Deserialize)]
    struct Config {
        #[serde(rename = "currentContext", default)]
        current_context: Option<String>,
    }
    let c: Config =
        serde_json::from_slice(config_json).map_err(|e| format!("not valid JSON ({e})"))?;
    match c.current_context {
        None => Ok(None),
        Some(n) if n.is_empty() || n == "default" => Ok(None),
        Some(n) => context_name(&n).map(Some),
    }
}

/// A context name as Docker allows them: `[a-zA-Z0-9][a-zA-Z0-9_.+-]*`.
fn context_name(n: &str) -> Result<String, String> {
    let mut b = n.bytes();
    let first_ok = b.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok
        || n.len() > 255
        || !b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'+' | b'-'))
    {
        return Err(format!(
            "currentContext '{}' is not a context name",
            n.escape_default()
        ));
    }
    Ok(n.to_string())
}

/// Where a context's files live: Docker names the directory by the SHA-256 of the name.
pub fn context_dir_name(name: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(name.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A context's `meta.json`: the engine's `Endpoints.docker.Host`. `tls_dir`, when the context
/// has TLS files (`contexts/tls/<hash>/docker/`), is where they are. A context that skips TLS
/// verification is refused: an engine whose identity is not checked is not one dockroute asks.
pub fn parse_context_meta(
    name: &str,
    meta_json: &[u8],
    tls_dir: Option<&Path>,
) -> Result<Endpoint, String> {
    #[derive(Deserialize)]
    struct Meta {
        #[serde(rename = "Name")]
        name: String,
        #[serde(rename = "Endpoints")]
        endpoints: Endpoints,
    }
    #[derive(Deserialize)]
    struct Endpoints {
        docker: DockerEndpoint,
    }
    #[derive(Deserialize)]
    struct DockerEndpoint {
        #[serde(rename = "Host")]
        host: String,
        #[serde(rename = "SkipTLSVerify", default)]
        skip_tls_verify: bool,
    }
    let m: Meta = serde_json::from_slice(meta_json)
        .map_err(|e| format!("context '{name}': meta.json is not a context's metadata ({e})"))?;
    if m.name != name {
        return Err(format!(
            "context '{name}': its meta.json is for another context ('{}')",
            m.name.escape_default()
        ));
    }
    let d = m.endpoints.docker;
    if d.skip_tls_verify {
        return Err(format!(
            "context '{name}' skips TLS verification (SkipTLSVerify): refused"
        ));
    }
    let tls = match (d.host.starts_with("tcp://"), tls_dir) {
        (true, Some(dir)) => Some(TlsFiles::in_dir(dir)),
        _ => None,
    };
    parse_url(&d.host, tls).map_err(|e| format!("context '{name}': {e}"))
}

/// One step of the order, as [`choose`] asks for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Machine(String),
    DockerHost,
    Context,
    Sockets,
}

/// What one source said: `None` when it is not set (not configured, no such file).
pub type Answer = Option<(Source, Result<Endpoint, String>)>;

/// Which engine `up` asks, if any.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Choice {
    /// Docker is turned off (`--docker off` or the config key).
    Off {
        source: Source,
    },
    /// No source is set: nothing to ask.
    Unset {
        tried: Vec<String>,
    },
    /// The first source that is set names an endpoint it cannot use.
    Invalid {
        source: Source,
        error: String,
    },
    At {
        source: Source,
        endpoint: Endpoint,
    },
}

/// The first source that is set, in the order of this module's documentation. `ask` reads one
/// source (only the ones needed are read).
pub fn choose(
    explicit: Option<(Source, Explicit)>,
    machine: Option<&str>,
    mut ask: impl FnMut(Step) -> Answer,
) -> Choice {
    match explicit {
        Some((source, Explicit::Off)) => return Choice::Off { source },
        Some((source, Explicit::At(endpoint))) => return Choice::At { source, endpoint },
        None => {}
    }
    let mut tried = vec!["--docker (not given)".to_string()];
    let steps = machine
        .map(|m| Step::Machine(m.to_string()))
        .into_iter()
        .chain([Step::DockerHost, Step::Context, Step::Sockets]);
    for step in steps {
        let label = match &step {
            Step::Machine(m) => format!("docker-machine '{m}'"),
            Step::DockerHost => "DOCKER_HOST (unset)".into(),
            Step::Context => "the current Docker context (none)".into(),
            Step::Sockets => "the Colima and Lima sockets (none)".into(),
        };
        match ask(step) {
            Some((source, Ok(endpoint))) => return Choice::At { source, endpoint },
            Some((source, Err(error))) => return Choice::Invalid { source, error },
            None => tried.push(label),
        }
    }
    Choice::Unset { tried }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(s: &str) -> Endpoint {
        Endpoint::Tcp {
            addr: s.parse().unwrap(),
            tls: None,
        }
    }

    #[test]
    fn urls() {
        assert_eq!(parse_flag("off").unwrap(), Explicit::Off);
        assert_eq!(
            parse_flag("tcp://192.168.99.100").unwrap(),
            Explicit::At(tcp("192.168.99.100:2375"))
        );
        assert_eq!(
            parse_url("tcp://192.168.99.100:2376/", None).unwrap(),
            tcp("192.168.99.100:2376")
        );
        assert_eq!(parse_url("tcp://[::1]:23", None).unwrap(), tcp("[::1]:23"));
        let tls = TlsFiles::in_dir(Path::new("/m"));
        assert_eq!(
            parse_url("tcp://10.0.0.2", Some(tls.clone())).unwrap(),
            Endpoint::Tcp {
                addr: "10.0.0.2:2376".parse().unwrap(),
                tls: Some(tls)
            }
        );
        assert_eq!(
            parse_url("unix:///run/docker.sock", None).unwrap(),
            Endpoint::Unix {
                path: "/run/docker.sock".into()
            }
        );
        for (bad, says) in [
            ("tcp://docker.local:2376", "names a host"),
            ("tcp://10.0.0.2:99999", "port"),
            ("tcp://0.0.0.0:2375", "not an address"),
            ("unix://relative.sock", "absolute"),
            ("ssh://me@vm", "not a Docker endpoint"),
            ("http://10.0.0.2", "not a Docker endpoint"),
            ("", "not a Docker endpoint"),
        ] {
            let e = parse_url(bad, None).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn docker_host_with_tls_variables() {
        let home = Path::new("/home/u/.docker");
        assert_eq!(
            from_docker_host("tcp://10.0.0.2:2376", Some("1"), None, Some(home)).unwrap(),
            Endpoint::Tcp {
                addr: "10.0.0.2:2376".parse().unwrap(),
                tls: Some(TlsFiles::in_dir(home))
            }
        );
        assert_eq!(
            from_docker_host(
                "tcp://10.0.0.2",
                Some("1"),
                Some(Path::new("/certs")),
                Some(home)
            )
            .unwrap(),
            Endpoint::Tcp {
                addr: "10.0.0.2:2376".parse().unwrap(),
                tls: Some(TlsFiles::in_dir(Path::new("/certs")))
            }
        );
        // an empty DOCKER_TLS_VERIFY means off, as for the docker CLI
        assert_eq!(
            from_docker_host("tcp://10.0.0.2", Some(""), None, Some(home)).unwrap(),
            tcp("10.0.0.2:2375")
        );
        assert!(
            from_docker_host("tcp://10.0.0.2", None, Some(Path::new("/c")), None)
                .unwrap_err()
                .contains("DOCKER_TLS_VERIFY")
        );
        let e = from_docker_host("ssh://alice@build.corp:22", None, None, None).unwrap_err();
        assert!(
            e.starts_with("DOCKER_HOST (ssh://...) is not a Docker endpoint"),
            "{e}"
        );
        assert!(!e.contains("build.corp"), "{e}");
    }

    #[test]
    fn contexts() {
        assert_eq!(
            current_context(br#"{"auths":{},"currentContext":"colima"}"#).unwrap(),
            Some("colima".into())
        );
        assert_eq!(current_context(br#"{"auths":{}}"#).unwrap(), None);
        assert_eq!(
            current_context(br#"{"currentContext":"default"}"#).unwrap(),
            None
        );
        assert!(current_context(br#"{"currentContext":"../x"}"#).is_err());
        assert!(current_context(b"{trunc").is_err());
        // the digest Docker names the directory by (sha256 of "default" is well known)
        assert_eq!(
            context_dir_name("default"),
            "37a8eec1ce19687d132fe29051dca629d164e2c4958ba141d5f4133a33f0688f"
        );
        let meta = br#"{"Name":"vm","Metadata":{},"Endpoints":{"docker":{"Host":"tcp://192.168.64.2:2376","SkipTLSVerify":false}}}"#;
        let tls = Path::new("/h/.docker/contexts/tls/x/docker");
        assert_eq!(
            parse_context_meta("vm", meta, Some(tls)).unwrap(),
            Endpoint::Tcp {
                addr: "192.168.64.2:2376".parse().unwrap(),
                tls: Some(TlsFiles::in_dir(tls))
            }
        );
        assert!(
            parse_context_meta("other", meta, None)
                .unwrap_err()
                .contains("another context")
        );
        let skip = br#"{"Name":"vm","Endpoints":{"docker":{"Host":"tcp://1.2.3.4:2376","SkipTLSVerify":true}}}"#;
        assert!(
            parse_context_meta("vm", skip, None)
                .unwrap_err()
                .contains("SkipTLSVerify")
        );
        let sock = br#"{"Name":"colima","Endpoints":{"docker":{"Host":"unix:///Users/u/.colima/default/docker.sock"}}}"#;
        assert_eq!(
            parse_context_meta("colima", sock, None).unwrap(),
            Endpoint::Unix {
                path: "/Users/u/.colima/default/docker.sock".into()
            }
        );
    }

    /// Answers for the steps named in `set`, recording the order they were asked in.
    fn run(
        explicit: Option<(Source, Explicit)>,
        machine: Option<&str>,
        set: &[Step],
    ) -> (Choice, Vec<Step>) {
        let mut asked = Vec::new();
        let c = choose(explicit, machine, |s| {
            asked.push(s.clone());
            set.contains(&s).then(|| {
                let src = match &s {
                    Step::Machine(m) => Source::Machine { name: m.clone() },
                    Step::DockerHost => Source::DockerHost,
                    Step::Context => Source::Context { name: "c".into() },
                    Step::Sockets => Source::Colima {
                        profile: "default".into(),
                    },
                };
                (src, Ok(tcp("10.0.0.2:2375")))
            })
        });
        (c, asked)
    }

    #[test]
    fn sources_in_order() {
        let all = [
            Step::Machine("m".into()),
            Step::DockerHost,
            Step::Context,
            Step::Sockets,
        ];
        // --docker first: nothing else is read
        let (c, asked) = run(
            Some((Source::Flag, Explicit::At(tcp("10.0.0.9:2375")))),
            Some("m"),
            &all,
        );
        assert!(matches!(
            c,
            Choice::At {
                source: Source::Flag,
                ..
            }
        ));
        assert!(asked.is_empty());
        let (c, asked) = run(Some((Source::Flag, Explicit::Off)), None, &all);
        assert_eq!(
            c,
            Choice::Off {
                source: Source::Flag
            }
        );
        assert!(asked.is_empty());
        // then the machine, DOCKER_HOST, the context, the sockets
        let (c, asked) = run(None, Some("m"), &all);
        assert!(matches!(
            c,
            Choice::At {
                source: Source::Machine { .. },
                ..
            }
        ));
        assert_eq!(asked, [Step::Machine("m".into())]);
        let (c, _) = run(None, None, &all);
        assert!(matches!(
            c,
            Choice::At {
                source: Source::DockerHost,
                ..
            }
        ));
        let (c, asked) = run(None, None, &[Step::Context, Step::Sockets]);
        assert!(matches!(
            c,
            Choice::At {
                source: Source::Context { .. },
                ..
            }
        ));
        assert_eq!(asked, [Step::DockerHost, Step::Context]);
        let (c, _) = run(None, None, &[Step::Sockets]);
        assert!(matches!(
            c,
            Choice::At {
                source: Source::Colima { .. },
                ..
            }
        ));
        let (c, asked) = run(None, None, &[]);
        assert_eq!(asked.len(), 3);
        match c {
            Choice::Unset { tried } => assert_eq!(tried.len(), 4),
            other => panic!("{other:?}"),
        }
        // a source that is set but broken wins (and says why), the next ones are not asked
        let mut asked = 0;
        let c = choose(None, None, |s| {
            asked += 1;
            (s == Step::DockerHost).then(|| (Source::DockerHost, Err("bad".to_string())))
        });
        assert_eq!(
            c,
            Choice::Invalid {
                source: Source::DockerHost,
                error: "bad".into()
            }
        );
        assert_eq!(asked, 1);
    }
}
