//! Reading the endpoint sources: the environment, docker-machine's store, the invoking user's
//! Docker config and context, the Colima and Lima sockets. Every file here belongs to a user: it
//! is read with that user's rights under sudo, at most 1 MiB, never through a symbolic link in
//! its last component, and only if it is a regular file ([`crate::machine::read_regular_file`]).
//! [`super::endpoint::choose`] decides the order; this module only answers.

use super::endpoint::{self, Answer, Choice, Endpoint, Explicit, Source, Step, TlsFiles};
use crate::machine;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The most profiles or instances looked at under `~/.colima` and `~/.lima`.
const MAX_ENTRIES: usize = 32;

/// Which engine to ask, from the settings and the invoking user's environment and files.
pub fn choose(
    explicit: Option<(Source, Explicit)>,
    machine_name: Option<&str>,
    docker_host: Option<&str>,
) -> Choice {
    endpoint::choose(explicit, machine_name, |step| match step {
        Step::Machine(name) => Some(from_machine(&name)),
        Step::DockerHost => from_docker_host(docker_host?),
        Step::Context => from_context(),
        Step::Sockets => from_sockets(),
    })
}

fn from_machine(name: &str) -> (Source, Result<Endpoint, String>) {
    let source = Source::Machine {
        name: name.to_string(),
    };
    let found = machine::machine_config_path(name).and_then(|config| {
        let ip = machine::read_machine_ip(name, &config)?;
        let dir = config.parent().unwrap_or(Path::new("/"));
        Ok(Endpoint::Tcp {
            addr: (ip, endpoint::TLS_PORT).into(),
            tls: Some(TlsFiles::in_dir(dir)),
        })
    });
    (source, found)
}

fn from_docker_host(host: &str) -> Answer {
    if host.is_empty() {
        return None;
    }
    let var = |k| std::env::var(k).ok();
    let cert_path = std::env::var_os("DOCKER_CERT_PATH")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    let default_dir = docker_dir().ok();
    Some((
        Source::DockerHost,
        endpoint::from_docker_host(
            host,
            var("DOCKER_TLS_VERIFY").as_deref(),
            cert_path.as_deref(),
            default_dir.as_deref(),
        ),
    ))
}

/// The invoking user's Docker directory: `DOCKER_CONFIG`, else `~/.docker`.
fn docker_dir() -> Result<PathBuf, String> {
    match std::env::var_os("DOCKER_CONFIG") {
        Some(d) if !d.is_empty() => Ok(PathBuf::from(d)),
        _ => Ok(machine::home_dir()?.join(".docker")),
    }
}

fn read(path: &Path) -> Result<Option<Vec<u8>>, String> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(None);
    }
    machine::read_regular_file(path, machine::reader(path)?)
        .map(Some)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn from_context() -> Answer {
    let dir = docker_dir().ok()?;
    let config = dir.join("config.json");
    let name = match read(&config).and_then(|b| match b {
        Some(b) => endpoint::current_context(&b).map_err(|e| format!("{}: {e}", config.display())),
        None => Ok(None),
    }) {
        Ok(Some(name)) => name,
        Ok(None) => return None,
        Err(e) => {
            return Some((Source::Context { name: "?".into() }, Err(e)));
        }
    };
    let source = Source::Context { name: name.clone() };
    let hash = endpoint::context_dir_name(&name);
    let meta = dir.join("contexts/meta").join(&hash).join("meta.json");
    let tls_dir = dir.join("contexts/tls").join(&hash).join("docker");
    let found = read(&meta).and_then(|b| {
        let b = b.ok_or_else(|| format!("context '{name}': {} is missing", meta.display()))?;
        let tls = tls_dir.join("ca.pem");
        let has_tls = std::fs::symlink_metadata(&tls).is_ok();
        endpoint::parse_context_meta(&name, &b, has_tls.then_some(tls_dir.as_path()))
    });
    Some((source, found))
}

/// A socket the owner of the home directory (`uid`) or root owns, not reached through a symbolic
/// link.
fn user_socket(path: &Path, uid: u32) -> bool {
    std::fs::symlink_metadata(path)
        .is_ok_and(|m| m.file_type().is_socket() && (m.uid() == uid || m.uid() == 0))
}

/// Sub-directory names of `dir`, sorted, `first` first, at most [`MAX_ENTRIES`].
fn entries(dir: &Path, first: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = rd
        .take(MAX_ENTRIES * 4)
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !n.starts_with(['.', '_']))
        .collect();
    names.sort_by_key(|n| (n != first, n.clone()));
    names.truncate(MAX_ENTRIES);
    names
}

fn from_sockets() -> Answer {
    let home = machine::home_dir().ok()?;
    let uid = std::fs::metadata(&home).ok()?.uid();
    let colima = home.join(".colima");
    for profile in entries(&colima, "default") {
        let sock = colima.join(&profile).join("docker.sock");
        if user_socket(&sock, uid) {
            return Some((
                Source::Colima { profile },
                Ok(Endpoint::Unix { path: sock }),
            ));
        }
    }
    let lima = home.join(".lima");
    for instance in entries(&lima, "docker") {
        let sock = lima.join(&instance).join("sock/docker.sock");
        if user_socket(&sock, uid) {
            return Some((Source::Lima { instance }, Ok(Endpoint::Unix { path: sock })));
        }
    }
    None
}
