//! The resolver-dir backend: one file per domain, `DIR/DOMAIN` (macOS reads /etc/resolver, see
//! resolver(5)). The file's first line names dockroute; dockroute never replaces a file without
//! it, never writes through a symlink, and leaves every other file in DIR alone.

use super::DnsError;
use crate::fsutil::{self, Marked};
use std::net::SocketAddrV4;
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

/// The keywords of resolver(5) files (and resolv.conf's `options`, `sortlist`), plus the two
/// that configd's reader of /etc/resolver (`dnsinfo_flatfile.c`) also accepts though resolver(5)
/// does not list them: `flags` (`scoped`, `a`, `aaaa`) and `interface` (a link's name).
const KEYWORDS: &[&str] = &[
    "nameserver",
    "port",
    "domain",
    "search",
    "search_order",
    "timeout",
    "options",
    "sortlist",
    "flags",
    "interface",
];
/// A resolver file is small; anything larger is not one.
const MAX_RESOLVER_FILE: u64 = 64 * 1024;

/// Whether `content` reads as a resolver file: text whose every line is blank, a comment (`#`,
/// `;`), or starts with a resolver(5) keyword.
pub fn is_resolver_file(content: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(content) else {
        return false;
    };
    text.lines().all(|l| {
        let l = l.trim_start();
        l.is_empty()
            || l.starts_with('#')
            || l.starts_with(';')
            || l.split_whitespace()
                .next()
                .is_some_and(|k| KEYWORDS.contains(&k))
    })
}

/// Refuse a domain whose file name would not be a plain resolver file name in the directory.
fn check_file_name(domain: &str) -> Result<(), DnsError> {
    let plain = !domain.is_empty()
        && !domain.starts_with('.')
        && !domain.contains('/')
        && !domain.contains('\0')
        && crate::validate::domain(domain).is_ok_and(|d| d == domain);
    if plain {
        Ok(())
    } else {
        Err(DnsError::BadResolverFileName(
            domain.escape_default().to_string(),
        ))
    }
}

/// As root, only root may be able to change the directory (or, when it is still to be created,
/// the nearest existing directory above it), all the way up.
fn check_trusted(dir: &Path) -> Result<(), DnsError> {
    if !crate::trust::enforced() {
        return Ok(());
    }
    crate::trust::check_dir(fsutil::nearest_existing(dir)).map_err(|err| DnsError::UntrustedDir {
        dir: dir.to_path_buf(),
        err,
    })
}

/// Refuse a directory that holds a regular file (not named with a leading dot) that is not a
/// resolver file: such a directory (/etc, say) is not a resolver directory, and a file written
/// there could be read by something else as its own configuration.
fn check_only_resolver_files(dir: &Path) -> Result<(), DnsError> {
    let open = match fsutil::Dir::open(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(DnsError::io(format!("reading {}", dir.display()), e)),
    };
    let read = |e| DnsError::io(format!("reading {}", dir.display()), e);
    for entry in std::fs::read_dir(dir).map_err(read)? {
        let name = entry.map_err(read)?.file_name();
        if name.as_encoded_bytes().starts_with(b".") {
            continue;
        }
        if open
            .regular_file_owner(&name)
            .map_err(read)?
            .is_none_or(|(reg, _)| !reg)
        {
            continue;
        }
        let content = fsutil::read_small(&open, &name, MAX_RESOLVER_FILE).map_err(read)?;
        if !content.is_some_and(|c| is_resolver_file(&c)) {
            return Err(DnsError::NotResolverDir {
                dir: dir.to_path_buf(),
                file: dir.join(name),
            });
        }
    }
    Ok(())
}

/// Refuse what this backend must not touch, before anything changes.
pub fn check(dir: &Path, domain: &str) -> Result<(), DnsError> {
    check_file_name(domain)?;
    check_trusted(dir)?;
    existing(dir, domain)?;
    check_only_resolver_files(dir)
}

/// Write `DIR/DOMAIN`. Returns whether anything changed.
pub fn apply(dir: &Path, domain: &str, ns: SocketAddrV4) -> Result<bool, DnsError> {
    check(dir, domain)?;
    let body = render(ns);
    if let Existing::Ours(content) = existing(dir, domain)?
        && content == body
    {
        return Ok(false);
    }
    fsutil::create_dirs(dir, 0o755)
        .map_err(|e| DnsError::io(format!("creating {}", dir.display()), e))?;
    let file = path(dir, domain);
    fsutil::write_atomic(&file, body.as_bytes(), 0o644, true)
        .map_err(|e| DnsError::io(format!("writing {}", file.display()), e))?;
    Ok(true)
}

/// Remove `DIR/DOMAIN` if it is dockroute's. Returns whether anything changed.
pub fn revert(dir: &Path, domain: &str) -> Result<bool, DnsError> {
    check_file_name(domain)?;
    check_trusted(dir)?;
    match existing(dir, domain) {
        Ok(Existing::Ours(_)) => {
            let file = path(dir, domain);
            let removed = fsutil::split(&file).and_then(|(open, name)| open.remove(name));
            removed.map_err(|e| DnsError::io(format!("removing {}", file.display()), e))?;
            Ok(true)
        }
        Ok(Existing::Missing) => Ok(false),
        Err(e) => {
            tracing::warn!("leaving it alone: {e}");
            Ok(false)
        }
    }
}

/// Remove temporary files a killed run left in the directory (if it exists and is trusted).
pub fn sweep(dir: &Path) -> std::io::Result<usize> {
    if check_trusted(dir).is_err() || std::fs::symlink_metadata(dir).is_err() {
        return Ok(0);
    }
    fsutil::Dir::open(dir)?.sweep()
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
    fn refuses_a_directory_of_other_files_and_odd_file_names() {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        let e = apply(&etc, "ld.so.preload", ns("172.17.42.1:53")).unwrap_err();
        assert!(
            e.to_string().contains("which is not a resolver file")
                && !e.to_string().contains("root:x"),
            "{e}"
        );
        assert!(!etc.join("ld.so.preload").exists());
        // a directory of resolver files (and dot files, and subdirectories) is fine
        let dir = root.path().join("resolver");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(
            dir.join("corp"),
            "# corp\nnameserver 10.0.0.53\nport 5353\n\nsearch_order 1\n; x\n",
        )
        .unwrap();
        std::fs::write(dir.join(".DS_Store"), [0u8, 1, 2]).unwrap();
        assert!(apply(&dir, "docker", ns("172.17.42.1:53")).unwrap());
        for bad in ["", ".", "..", ".hidden", "a/b", "../etc/x"] {
            assert!(
                matches!(check(&dir, bad), Err(DnsError::BadResolverFileName(_))),
                "{bad:?}"
            );
            assert!(revert(&dir, bad).is_err(), "{bad:?}");
        }
        assert!(is_resolver_file(b"nameserver 1.2.3.4\r\noptions ndots:1\n"));
        assert!(!is_resolver_file(b"nameserver 1.2.3.4\n/bin/sh\n"));
        // configd's undocumented keywords, as a VPN client may write them
        assert!(is_resolver_file(
            b"nameserver 10.8.0.53\nflags scoped aaaa\ninterface utun3\n"
        ));
        assert!(!is_resolver_file(&[0xff, 0xfe]));
    }

    #[test]
    fn as_root_an_untrusted_directory_is_refused() {
        if !crate::trust::enforced() {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("resolver");
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
        let e = apply(&dir, "docker", ns("172.17.42.1:53")).unwrap_err();
        assert!(matches!(e, DnsError::UntrustedDir { .. }), "{e}");
        assert!(!dir.join("docker").exists());
        // nor created below one
        let below = dir.join("resolver");
        assert!(apply(&below, "docker", ns("172.17.42.1:53")).is_err());
        assert!(!below.exists());
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
