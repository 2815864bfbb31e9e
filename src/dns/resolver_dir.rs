//! The resolver-dir backend: one file per domain, `DIR/DOMAIN` (macOS reads /etc/resolver, see
//! resolver(5)). The file's first line names dockroute; dockroute never replaces a file without
//! it, never writes through a symlink, and leaves every other file in DIR alone.

use super::DnsError;
use crate::fsutil::{self, Marked};
use std::net::SocketAddrV4;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// The first line of every file dockroute writes.
pub const HEADER: &str = "# managed by dockroute: `dockroute down` removes this file";

/// The file body: the header, `nameserver IP`, and `port N` when not 53.
pub fn render(ns: SocketAddrV4) -> String {
    let mut s = format!("{HEADER}\nnameserver {}\n", ns.ip());
    if ns.port() != 53 {
        s.push_str(&format!("port {}\n", ns.port()));
    }
    s
}

/// Whether a file's content says it is dockroute's.
pub fn is_ours(content: &str) -> bool {
    content.lines().next() == Some(HEADER)
}

pub fn path(dir: &Path, domain: &str) -> PathBuf {
    dir.join(domain)
}

enum Existing {
    Missing,
    Ours(String),
}

fn existing(dir: &Path, domain: &str) -> Result<Existing, DnsError> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(DnsError::Refused(format!(
                "{} is a symlink; dockroute never writes through one",
                dir.display()
            )));
        }
        Ok(m) if !m.is_dir() => {
            return Err(DnsError::Refused(format!(
                "{} is not a directory",
                dir.display()
            )));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Existing::Missing),
        Err(e) => return Err(DnsError::io(format!("reading {}", dir.display()), e)),
    }
    let file = path(dir, domain);
    match fsutil::read_marked(&file, is_ours)
        .map_err(|e| DnsError::io(format!("reading {}", file.display()), e))?
    {
        Marked::Missing => Ok(Existing::Missing),
        Marked::Ours(content) => Ok(Existing::Ours(content)),
        Marked::NotRegular => Err(DnsError::Refused(format!(
            "{} exists and is not a regular file (a symlink?); dockroute leaves it alone",
            file.display()
        ))),
        Marked::Foreign => Err(DnsError::Refused(format!(
            "{} exists and is not dockroute's (no '{HEADER}' line); remove it or pick another --domain",
            file.display()
        ))),
    }
}

/// Refuse what this backend must not touch, before anything changes.
pub fn check(dir: &Path, domain: &str) -> Result<(), DnsError> {
    existing(dir, domain).map(|_| ())
}

/// Write `DIR/DOMAIN`. Returns whether anything changed.
pub fn apply(dir: &Path, domain: &str, ns: SocketAddrV4) -> Result<bool, DnsError> {
    let body = render(ns);
    match existing(dir, domain)? {
        Existing::Ours(content) if content == body => return Ok(false),
        _ => {}
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| DnsError::io(format!("creating {}", dir.display()), e))?;
    let file = path(dir, domain);
    fsutil::write_atomic(&file, body.as_bytes(), 0o644, true)
        .map_err(|e| DnsError::io(format!("writing {}", file.display()), e))?;
    Ok(true)
}

/// Remove `DIR/DOMAIN` if it is dockroute's. Returns whether anything changed.
pub fn revert(dir: &Path, domain: &str) -> Result<bool, DnsError> {
    match existing(dir, domain) {
        Ok(Existing::Ours(_)) => {
            let file = path(dir, domain);
            std::fs::remove_file(&file)
                .map_err(|e| DnsError::io(format!("removing {}", file.display()), e))?;
            Ok(true)
        }
        Ok(Existing::Missing) => Ok(false),
        Err(e) => {
            tracing::warn!("leaving it alone: {e}");
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn renders_the_resolver_5_format() {
        assert_eq!(
            render(ns("172.17.42.1:53")),
            "# managed by dockroute: `dockroute down` removes this file\nnameserver 172.17.42.1\n"
        );
        assert!(render(ns("172.17.42.1:5353")).ends_with("nameserver 172.17.42.1\nport 5353\n"));
        assert!(is_ours(&render(ns("1.2.3.4:53"))));
        assert!(!is_ours("nameserver 1.2.3.4\n"));
    }

    #[test]
    fn writes_only_its_own_file_and_removes_only_it() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("resolver");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("corp.example"), "nameserver 10.0.0.53\n").unwrap();
        assert!(apply(&dir, "docker", ns("172.17.42.1:53")).unwrap());
        assert!(!apply(&dir, "docker", ns("172.17.42.1:53")).unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.join("docker")).unwrap(),
            render(ns("172.17.42.1:53"))
        );
        assert!(revert(&dir, "docker").unwrap());
        assert!(!dir.join("docker").exists());
        assert_eq!(
            std::fs::read_to_string(dir.join("corp.example")).unwrap(),
            "nameserver 10.0.0.53\n"
        );
    }

    #[test]
    fn creates_the_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("etc/resolver");
        apply(&dir, "docker", ns("172.17.42.1:53")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }

    #[test]
    fn refuses_foreign_files_and_symlinks_and_changes_nothing() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("resolver");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("docker"), "nameserver 9.9.9.9\n").unwrap();
        let e = apply(&dir, "docker", ns("172.17.42.1:53"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not dockroute's"), "{e}");
        assert!(!revert(&dir, "docker").unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.join("docker")).unwrap(),
            "nameserver 9.9.9.9\n"
        );

        let target = root.path().join("target");
        std::fs::write(&target, render(ns("1.1.1.1:53"))).unwrap();
        std::os::unix::fs::symlink(&target, dir.join("dev")).unwrap();
        assert!(apply(&dir, "dev", ns("172.17.42.1:53")).is_err());
        assert!(!revert(&dir, "dev").unwrap());
        assert_eq!(
            std::fs::read_to_string(&target).unwrap(),
            render(ns("1.1.1.1:53"))
        );

        let linked_dir = root.path().join("linked");
        std::os::unix::fs::symlink(&dir, &linked_dir).unwrap();
        assert!(apply(&linked_dir, "other", ns("172.17.42.1:53")).is_err());
        assert!(!dir.join("other").exists());
    }
}
