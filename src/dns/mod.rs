//! Per-domain DNS: names under the domain (`redis.docker`) go to the VM's DNS server; every other
//! name resolves as before.
//!
//! | backend | where | what dockroute leaves |
//! |---|---|---|
//! | resolved | systemd-resolved, D-Bus | per-link DNS + `~domain` on the host-only link |
//! | resolv-conf | a plain /etc/resolv.conf | a marker line and `nameserver` at the top |
//! | resolver-dir | `DIR/DOMAIN` (macOS /etc/resolver) | one file with a dockroute header |

pub mod probe;
pub mod resolv_conf;
pub mod resolver_dir;
pub mod responder;
pub mod scutil;

#[cfg(target_os = "linux")]
pub(crate) mod resolved;
#[cfg(not(target_os = "linux"))]
#[path = "resolved_unsupported.rs"]
mod resolved;

use crate::options::DnsMode;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};

/// The system resolver configuration.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Files whose content means "queries go to systemd-resolved's stub listener".
pub const RESOLVED_STUBS: &[&str] = &[
    "/run/systemd/resolve/stub-resolv.conf",
    "/usr/lib/systemd/resolv.conf",
    "/lib/systemd/resolv.conf",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    Resolved,
    ResolvConf,
    ResolverDir,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Resolved => "resolved",
            Backend::ResolvConf => "resolv-conf",
            Backend::ResolverDir => "resolver-dir",
        })
    }
}

/// What dockroute set (or will set), recorded so `down` can undo exactly that.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsState {
    pub backend: Backend,
    pub domain: String,
    pub nameserver: SocketAddrV4,
    /// resolved: the host-only link.
    pub ifname: String,
    pub ifindex: u32,
    /// resolv-conf: the resolv.conf file; resolver-dir: the directory.
    pub path: PathBuf,
}

impl fmt::Display for DnsState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let where_ = match self.backend {
            Backend::Resolved => format!("systemd-resolved on {}", self.ifname),
            Backend::ResolvConf => format!("first nameserver in {}", self.path.display()),
            Backend::ResolverDir => {
                format!("{}", resolver_dir::path(&self.path, &self.domain).display())
            }
        };
        write!(f, "*.{} -> {} ({where_})", self.domain, self.nameserver)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("{0}")]
    Refused(String),
    #[error("{op}: {err}")]
    Io { op: String, err: std::io::Error },
    #[error("{0}")]
    Bus(String),
    #[error("resolver directory {dir} is not safe: {err}; use a directory only root can change")]
    UntrustedDir {
        dir: PathBuf,
        err: crate::trust::TrustError,
    },
    #[error(
        "{dir} holds {file}, which is not a resolver file: refusing to write resolver files there (use a directory of resolver files, like /etc/resolver)"
    )]
    NotResolverDir { dir: PathBuf, file: PathBuf },
    #[error(
        "the record names the resolver directory \"{0}\", which is not an absolute path of plain names: leaving it alone"
    )]
    BadRecordedDir(String),
    #[error("domain '{0}' cannot name a resolver file (no '/', no leading '.')")]
    BadResolverFileName(String),
}

impl DnsError {
    pub fn io(op: impl Into<String>, err: std::io::Error) -> Self {
        DnsError::Io { op: op.into(), err }
    }
}

/// What systemd-resolved has for one link.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkDns {
    pub servers: Vec<SocketAddrV4>,
    pub domains: Vec<(String, bool)>,
    pub default_route: Option<bool>,
}

impl LinkDns {
    /// Whether the link routes `domain` (routing-only) to `ns`, as dockroute sets it.
    pub fn carries(&self, domain: &str, ns: SocketAddrV4) -> bool {
        self.servers.contains(&ns) && self.domains.contains(&(domain.to_string(), true))
    }
}

/// Whether `resolv_conf` sends queries to systemd-resolved's stub: a symlink to one of its stub
/// files, or a file with the same content as one.
pub fn routes_through_resolved(resolv_conf: &Path) -> bool {
    if let Ok(target) = std::fs::read_link(resolv_conf) {
        let target = resolv_conf.parent().unwrap_or(Path::new("/")).join(target);
        if RESOLVED_STUBS.iter().any(|s| Path::new(s) == target) {
            return true;
        }
    }
    let Ok(content) = std::fs::read(resolv_conf) else {
        return false;
    };
    RESOLVED_STUBS
        .iter()
        .any(|s| std::fs::read(s).is_ok_and(|stub| stub == content))
}

/// The backend for a mode; `None` for `off`. `auto` is resolved when /etc/resolv.conf goes
/// through resolved's stub, else resolv-conf (Linux); resolver-dir on macOS.
pub fn choose(mode: DnsMode) -> Option<Backend> {
    match mode {
        DnsMode::Off => None,
        DnsMode::Resolved => Some(Backend::Resolved),
        DnsMode::ResolvConf => Some(Backend::ResolvConf),
        DnsMode::ResolverDir => Some(Backend::ResolverDir),
        DnsMode::Auto if cfg!(target_os = "macos") => Some(Backend::ResolverDir),
        DnsMode::Auto if routes_through_resolved(Path::new(RESOLV_CONF)) => Some(Backend::Resolved),
        DnsMode::Auto => Some(Backend::ResolvConf),
    }
}

/// Where a recorded setting is undone. resolv-conf: at `settings.resolv_conf` (a path in the
/// record is never used for it). resolver-dir: in the directory the record names, the one `up`
/// wrote its file in, wherever that was: the record lives in the state directory, which as
/// root only root can change (checked when it is read), and the directory it names is checked
/// again when the file is removed (only root may be able to change it, all the way up). The
/// record's directory must be an absolute path without `.` or `..`, and its domain must name a
/// plain resolver file there (checked on removal).
pub fn to_undo(
    recorded: &DnsState,
    resolv_conf: &Path,
    resolver_dir: &Path,
) -> Result<DnsState, DnsError> {
    let path = match recorded.backend {
        Backend::Resolved => PathBuf::new(),
        Backend::ResolvConf => {
            if recorded.path != resolv_conf {
                tracing::warn!(
                    "the record names {}; only {} (from the settings) is looked at",
                    recorded.path.display().to_string().escape_debug(),
                    resolv_conf.display()
                );
            }
            resolv_conf.to_path_buf()
        }
        Backend::ResolverDir => {
            if !plain_absolute(&recorded.path) {
                return Err(DnsError::BadRecordedDir(
                    recorded
                        .path
                        .display()
                        .to_string()
                        .escape_debug()
                        .to_string(),
                ));
            }
            if recorded.path != resolver_dir {
                tracing::info!(
                    "the last `up` wrote its resolver file in {} (the settings name {}): it is undone there",
                    recorded.path.display(),
                    resolver_dir.display()
                );
            }
            recorded.path.clone()
        }
    };
    Ok(DnsState {
        path,
        ..recorded.clone()
    })
}

/// An absolute path of plain names (no `.`, `..`, or empty components).
fn plain_absolute(path: &Path) -> bool {
    use std::path::Component;
    let mut parts = path.components();
    parts.next() == Some(Component::RootDir) && parts.all(|c| matches!(c, Component::Normal(_)))
}

/// Remove temporary files a killed run left where this backend writes: the resolver directory,
/// or resolv.conf's directory (unless resolv.conf is a mount point, which is written in place
/// and gets no temporary file). Failures are only logged.
pub fn sweep(backend: Backend, path: &Path) {
    let swept = match backend {
        Backend::Resolved => Ok(0),
        Backend::ResolverDir => resolver_dir::sweep(path),
        Backend::ResolvConf if crate::fsutil::replaced_by_rename(path) => {
            crate::fsutil::split(path).and_then(|(dir, _)| dir.sweep())
        }
        Backend::ResolvConf => Ok(0),
    };
    if let Err(e) = swept {
        tracing::warn!("could not clean up next to {}: {e}", path.display());
    }
}

/// Refuse what the backend cannot or must not do, before anything changes.
pub async fn check(s: &DnsState) -> Result<(), DnsError> {
    match s.backend {
        Backend::Resolved => resolved::check(s.ifindex).await,
        Backend::ResolvConf => resolv_conf::check(&s.path, s.nameserver),
        Backend::ResolverDir => resolver_dir::check(&s.path, &s.domain),
    }
}

/// Set it. Returns whether anything changed.
pub async fn apply(s: &DnsState) -> Result<bool, DnsError> {
    match s.backend {
        Backend::Resolved => resolved::apply(s.ifindex, &s.domain, s.nameserver).await,
        Backend::ResolvConf => resolv_conf::apply(&s.path, &s.domain, s.nameserver),
        Backend::ResolverDir => resolver_dir::apply(&s.path, &s.domain, s.nameserver),
    }
}

/// Undo it, touching only what still is dockroute's. Returns whether anything changed.
pub async fn revert(s: &DnsState) -> Result<bool, DnsError> {
    match s.backend {
        Backend::Resolved => {
            // The link may have been re-created: its per-link settings died with the old one.
            match nix::net::if_::if_nametoindex(s.ifname.as_str()) {
                Ok(i) if i == s.ifindex => {
                    resolved::revert(s.ifindex, &s.domain, s.nameserver).await
                }
                _ => Ok(false),
            }
        }
        Backend::ResolvConf => resolv_conf::revert(&s.path),
        Backend::ResolverDir => resolver_dir::revert(&s.path, &s.domain),
    }
}

/// Whether what the state describes is in place now (for `status`), with a description.
pub async fn observe(s: &DnsState) -> (bool, String) {
    match s.backend {
        Backend::Resolved => match resolved::current(s.ifindex).await {
            Ok(l) => {
                let servers: Vec<String> = l.servers.iter().map(|a| a.to_string()).collect();
                let domains: Vec<String> = l
                    .domains
                    .iter()
                    .map(|(d, routing)| if *routing { format!("~{d}") } else { d.clone() })
                    .collect();
                (
                    l.carries(&s.domain, s.nameserver),
                    format!(
                        "{}: DNS {} domains {}",
                        s.ifname,
                        if servers.is_empty() {
                            "none".into()
                        } else {
                            servers.join(" ")
                        },
                        if domains.is_empty() {
                            "none".into()
                        } else {
                            domains.join(" ")
                        }
                    ),
                )
            }
            Err(e) => (false, e.to_string()),
        },
        Backend::ResolvConf => match std::fs::read_to_string(&s.path) {
            Ok(c) if resolv_conf::is_set(&c, &s.domain, s.nameserver) => (
                true,
                format!(
                    "{}: {} nameserver(s), dockroute's first",
                    s.path.display(),
                    resolv_conf::nameservers(&c)
                ),
            ),
            Ok(_) => (
                false,
                format!("{}: dockroute's lines are missing", s.path.display()),
            ),
            Err(e) => (false, format!("{}: {e}", s.path.display())),
        },
        Backend::ResolverDir => {
            let file = resolver_dir::path(&s.path, &s.domain);
            // what lookups really go through (macOS), after what the file says
            let system = scutil::describe(&s.domain)
                .map(|d| format!("; {d}"))
                .unwrap_or_default();
            let (ok, detail) = match std::fs::read_to_string(&file) {
                Ok(c) if c == resolver_dir::render(s.nameserver) => {
                    (true, format!("{} in place", file.display()))
                }
                Ok(_) => (
                    false,
                    format!("{} differs from dockroute's", file.display()),
                ),
                Err(e) => (false, format!("{}: {e}", file.display())),
            };
            (ok, format!("{detail}{system}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_resolv_conf() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "nameserver 10.0.0.1\n").unwrap();
        assert!(!routes_through_resolved(&plain));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/run/systemd/resolve/stub-resolv.conf", &link).unwrap();
        assert!(routes_through_resolved(&link));
        let other = dir.path().join("other");
        std::os::unix::fs::symlink("/run/systemd/resolve/resolv.conf", &other).unwrap();
        assert!(
            !routes_through_resolved(&other),
            "the non-stub file bypasses resolved"
        );
        assert_eq!(choose(DnsMode::Off), None);
        assert_eq!(choose(DnsMode::ResolverDir), Some(Backend::ResolverDir));
    }

    #[test]
    fn state_renders_for_people_and_the_record() {
        let s = DnsState {
            backend: Backend::Resolved,
            domain: "docker".into(),
            nameserver: "172.17.0.1:53".parse().unwrap(),
            ifname: "vboxnet0".into(),
            ifindex: 3,
            path: PathBuf::new(),
        };
        assert_eq!(
            s.to_string(),
            "*.docker -> 172.17.0.1:53 (systemd-resolved on vboxnet0)"
        );
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(r#""backend":"resolved""#), "{json}");
        assert_eq!(serde_json::from_str::<DnsState>(&json).unwrap(), s);
    }
}
