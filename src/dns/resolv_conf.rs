//! The resolv-conf backend: a plain /etc/resolv.conf that no manager owns.
//!
//! dockroute puts two lines at the top: a marker comment and `nameserver VM-DNS`, so the VM's DNS
//! is asked first (plain resolv.conf has no per-domain routing; the VM's DNS must refuse or fail
//! names it does not serve, and the resolver then asks the next server). Nothing else is added:
//! no `search`, no `options`. `down` removes exactly those two lines, so the file is byte-identical
//! to before if nobody else changed it meanwhile.

use super::DnsError;
use crate::fsutil;
use std::net::SocketAddrV4;
use std::path::Path;

/// Every line dockroute adds starts with this.
pub const MARKER_PREFIX: &str = "# dockroute:";
/// glibc reads at most this many nameserver lines.
pub const GLIBC_MAXNS: usize = 3;

/// The two lines dockroute adds. A loopback server is `watch`'s responder (while it runs).
pub fn lines(domain: &str, ns: SocketAddrV4) -> String {
    let who = if ns.ip().is_loopback() {
        "dockroute watch's DNS responder"
    } else {
        "the VM's DNS"
    };
    format!(
        "{MARKER_PREFIX} the next line asks {who} first (for *.{domain}); `dockroute down` removes both\nnameserver {}\n",
        ns.ip()
    )
}

/// `content` without dockroute's lines, and whether there were any.
pub fn strip(content: &str) -> (String, bool) {
    let mut out = String::with_capacity(content.len());
    let mut found = false;
    let mut it = content.split_inclusive('\n').peekable();
    while let Some(line) = it.next() {
        if line.starts_with(MARKER_PREFIX) {
            found = true;
            if it.peek().is_some_and(|n| n.starts_with("nameserver ")) {
                it.next();
            }
            continue;
        }
        out.push_str(line);
    }
    (out, found)
}

/// `content` with dockroute's lines at the top (replacing earlier ones).
pub fn insert(content: &str, domain: &str, ns: SocketAddrV4) -> String {
    let (base, _) = strip(content);
    lines(domain, ns) + &base
}

/// How many `nameserver` lines the resolver sees.
pub fn nameservers(content: &str) -> usize {
    content
        .lines()
        .filter(|l| l.split_whitespace().next() == Some("nameserver"))
        .count()
}

/// Whether `content` carries dockroute's lines for `ns` at the top.
pub fn is_set(content: &str, domain: &str, ns: SocketAddrV4) -> bool {
    content.starts_with(&lines(domain, ns))
}

/// Refuse what this backend must not touch, before anything changes.
pub fn check(path: &Path, ns: SocketAddrV4) -> Result<(), DnsError> {
    if ns.port() != 53 {
        return Err(DnsError::Refused(format!(
            "{} cannot name a DNS port ({ns}); use --dns resolved or --dns resolver-dir",
            path.display()
        )));
    }
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| DnsError::io(format!("reading {}", path.display()), e))?;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(path).unwrap_or_default();
        return Err(DnsError::Refused(format!(
            "{} is a symlink to {}: {}",
            path.display(),
            target.display(),
            manager_hint(&target.to_string_lossy())
        )));
    }
    if !meta.file_type().is_file() {
        return Err(DnsError::Refused(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok(())
}

/// Which backend fits a resolv.conf that is a symlink to `target`.
fn manager_hint(target: &str) -> String {
    if target.contains("systemd/resolve") {
        "systemd-resolved owns it; use --dns resolved".into()
    } else if target.contains("NetworkManager") {
        "NetworkManager owns it; with systemd-resolved behind it use --dns resolved, else --dns off and add the nameserver to the host-only connection".into()
    } else if target.contains("resolvconf") {
        "resolvconf owns it and would undo a direct edit; use --dns off and add the nameserver through resolvconf".into()
    } else {
        "another program manages it; dockroute never writes through a symlink (use --dns resolved if systemd-resolved runs)".into()
    }
}

/// Add dockroute's lines. Returns whether the file changed.
pub fn apply(path: &Path, domain: &str, ns: SocketAddrV4) -> Result<bool, DnsError> {
    check(path, ns)?;
    let content = std::fs::read_to_string(path)
        .map_err(|e| DnsError::io(format!("reading {}", path.display()), e))?;
    let new = insert(&content, domain, ns);
    if new == content {
        return Ok(false);
    }
    let count = nameservers(&new);
    if count > GLIBC_MAXNS {
        tracing::warn!(
            "{} now lists {count} nameservers; glibc uses only the first {GLIBC_MAXNS}",
            path.display()
        );
    }
    fsutil::replace_contents(path, new.as_bytes())
        .map_err(|e| DnsError::io(format!("writing {}", path.display()), e))?;
    Ok(true)
}

/// Remove dockroute's lines, if present. Returns whether the file changed.
pub fn revert(path: &Path) -> Result<bool, DnsError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(DnsError::io(format!("reading {}", path.display()), e)),
    };
    if !meta.file_type().is_file() {
        return Ok(false); // replaced by a manager's symlink: our lines went with the old file
    }
    let content = std::fs::read_to_string(path)
        .map_err(|e| DnsError::io(format!("reading {}", path.display()), e))?;
    let (base, found) = strip(&content);
    if !found {
        return Ok(false);
    }
    fsutil::replace_contents(path, base.as_bytes())
        .map_err(|e| DnsError::io(format!("writing {}", path.display()), e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns() -> SocketAddrV4 {
        "172.17.0.1:53".parse().unwrap()
    }

    const ORIGINAL: &str =
        "# Generated by dhclient\nsearch corp.example\nnameserver 10.0.0.53\noptions timeout:2\n";

    #[test]
    fn insert_then_strip_is_byte_identical() {
        let with = insert(ORIGINAL, "docker", ns());
        assert!(
            with.starts_with("# dockroute: the next line asks the VM's DNS first (for *.docker)")
        );
        assert_eq!(with.lines().nth(1), Some("nameserver 172.17.0.1"));
        assert!(with.ends_with(ORIGINAL));
        let responder = insert(&with, "docker", "127.0.0.153:53".parse().unwrap());
        assert!(responder.starts_with(
            "# dockroute: the next line asks dockroute watch's DNS responder first (for *.docker)"
        ));
        assert_eq!(strip(&responder).0, ORIGINAL);
        assert_eq!(strip(&with), (ORIGINAL.to_string(), true));
        assert_eq!(strip(ORIGINAL), (ORIGINAL.to_string(), false));
        for odd in ["", "nameserver 10.0.0.1", "\n\n", "nameserver 1.1.1.1\r\n"] {
            assert_eq!(strip(&insert(odd, "docker", ns())).0, odd);
        }
    }

    #[test]
    fn insert_is_idempotent_and_replaces_an_old_nameserver() {
        let once = insert(ORIGINAL, "docker", ns());
        assert_eq!(insert(&once, "docker", ns()), once);
        let moved = insert(&once, "docker", "172.18.0.1:53".parse().unwrap());
        assert_eq!(moved.matches(MARKER_PREFIX).count(), 1);
        assert!(moved.contains("nameserver 172.18.0.1\n") && !moved.contains("172.17.0.1"));
        assert!(is_set(&moved, "docker", "172.18.0.1:53".parse().unwrap()));
        assert!(!is_set(ORIGINAL, "docker", ns()));
    }

    #[test]
    fn counts_nameservers() {
        assert_eq!(nameservers(&insert(ORIGINAL, "docker", ns())), 2);
    }

    #[test]
    fn refuses_ports_symlinks_and_non_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("resolv.conf");
        std::fs::write(&f, ORIGINAL).unwrap();
        let e = check(&f, "172.17.0.1:5353".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot name a DNS port"), "{e}");
        let l = dir.path().join("link");
        std::os::unix::fs::symlink("/run/systemd/resolve/stub-resolv.conf", &l).unwrap();
        let e = check(&l, ns()).unwrap_err().to_string();
        assert!(e.contains("use --dns resolved"), "{e}");
        assert!(check(dir.path(), ns()).is_err());
    }

    #[test]
    fn apply_and_revert_on_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("resolv.conf");
        std::fs::write(&f, ORIGINAL).unwrap();
        assert!(apply(&f, "docker", ns()).unwrap());
        assert!(!apply(&f, "docker", ns()).unwrap());
        assert!(revert(&f).unwrap());
        assert!(!revert(&f).unwrap());
        assert_eq!(std::fs::read_to_string(&f).unwrap(), ORIGINAL);
    }
}
