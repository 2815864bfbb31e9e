//! VM IP sources outside the kernel: the docker-machine store and `DOCKER_HOST`. Parsing is pure;
//! only [`machine_config_path`], [`read_machine_ip`] and [`read_regular_file`] look at the
//! environment and the disk.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The IP a docker-machine `config.json` records for its VM (`Driver.IPAddress`).
pub fn parse_machine_config(json: &str) -> Result<Ipv4Addr, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("not valid JSON ({e})"))?;
    let ip = v
        .get("Driver")
        .and_then(|d| d.get("IPAddress"))
        .and_then(|ip| ip.as_str())
        .unwrap_or("");
    if ip.is_empty() {
        return Err("it records no Driver.IPAddress (is the machine created and started?)".into());
    }
    crate::validate::ipv4(ip).map_err(|e| format!("Driver.IPAddress: {e}"))
}

/// What `DOCKER_HOST` says about the VM.
#[derive(Debug, PartialEq, Eq)]
pub enum DockerHost {
    /// `tcp://IP:PORT` (or `tcp://IP`): the daemon, hence the VM, is at IP.
    Ip(Ipv4Addr),
    /// Set, but not to a TCP address with an IPv4 literal (unix socket, ssh, a host name).
    NotAnIp(String),
}

pub fn parse_docker_host(value: &str) -> DockerHost {
    let not_ip = || DockerHost::NotAnIp(value.to_string());
    let Some(rest) = value.strip_prefix("tcp://") else {
        return not_ip();
    };
    let hostport = rest.split('/').next().unwrap_or("");
    let host = match hostport.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        Some(_) => return not_ip(),
        None => hostport,
    };
    match crate::validate::ipv4(host) {
        Ok(ip) => DockerHost::Ip(ip),
        Err(_) => not_ip(),
    }
}

/// The host name in a `DOCKER_HOST=tcp://NAME[:PORT]` that names a host rather than an IP.
pub fn docker_host_name(value: &str) -> Option<&str> {
    let rest = value.strip_prefix("tcp://")?;
    let hostport = rest.split('/').next().unwrap_or("");
    let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
    let is_ip = crate::validate::ipv4(host).is_ok() || host.starts_with('[');
    (!host.is_empty() && !is_ip).then_some(host)
}

/// Where docker-machine keeps NAME's config: `$MACHINE_STORAGE_PATH/machines/NAME/config.json`,
/// else under `~/.docker/machine` of `$SUDO_USER` when run through sudo, else of the caller.
pub fn machine_config_path(name: &str) -> Result<PathBuf, String> {
    let store = match std::env::var_os("MACHINE_STORAGE_PATH") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => home_dir()?.join(".docker").join("machine"),
    };
    Ok(store.join("machines").join(name).join("config.json"))
}

pub(crate) fn home_dir() -> Result<PathBuf, String> {
    if let Ok(user) = std::env::var("SUDO_USER")
        && !user.is_empty()
    {
        return crate::nss::home_of(&user)
            .map_err(|e| format!("cannot find the home of SUDO_USER '{user}': {e}"));
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    crate::nss::home_of(&nix::unistd::getuid().to_string())
        .map_err(|e| format!("cannot find the home directory ({e}); set MACHINE_STORAGE_PATH"))
}

/// The most of a `config.json` that is read (docker-machine writes about 2 KiB).
pub const MAX_CONFIG: u64 = 1 << 20;

/// Whose rights a file is read with: the user who ran `sudo dockroute`, or the user who can
/// change the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reader {
    pub uid: u32,
    pub gid: u32,
}

/// The invoking user from sudo's `SUDO_UID` and `SUDO_GID`, when they name someone other than
/// root. `SUDO_GID` missing: the user's rights without a group (nogroup, 65534).
pub fn parse_sudo_ids(uid: Option<&str>, gid: Option<&str>) -> Result<Option<Reader>, String> {
    let Some(uid) = uid.filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let num = |what: &str, v: &str| {
        v.parse::<u32>()
            .ok()
            .filter(|n| *n != u32::MAX)
            .ok_or_else(|| format!("{what} '{}' is not a user or group id", v.escape_debug()))
    };
    let uid = num("SUDO_UID", uid)?;
    let gid = match gid.filter(|g| !g.is_empty()) {
        Some(g) => num("SUDO_GID", g)?,
        None => 65534,
    };
    Ok((uid != 0).then_some(Reader { uid, gid }))
}

/// nobody and nogroup: whose rights a store is read with that root owns but others can change.
const NOBODY: Reader = Reader {
    uid: 65534,
    gid: 65534,
};

/// Who reads the store file at `path` when root runs dockroute without sudo (after `su`, in the
/// boot job), from what the trust check of `path` found ([`crate::trust::check_file`]): a file
/// only root can change or replace (it and every directory above it root's, writable by nobody
/// else) is read as root (`None`); otherwise as the owner of the first component on the way
/// that is not root's, since that user can put anything below it (a symbolic link to a file
/// only root may read, say); and as nobody when root owns everything but someone else can
/// write somewhere on the way (or the path cannot be examined). That user's primary group is
/// not assumed (it would need an NSS lookup): a file readable only through a group is refused.
pub fn store_reader(trusted: Result<(), crate::trust::Reason>) -> Option<Reader> {
    match trusted {
        Ok(()) => None,
        Err(crate::trust::Reason::NotRootOwned(uid)) => Some(Reader {
            uid,
            gid: NOBODY.gid,
        }),
        Err(_) => Some(NOBODY),
    }
}

/// Who reads the store file at `path`: as root run through sudo, the invoking user; as root
/// otherwise, the user who can change the store ([`store_reader`]); not as root, this process.
pub(crate) fn reader(path: &Path) -> Result<Option<Reader>, String> {
    if !crate::trust::enforced() {
        return Ok(None);
    }
    let var = |k| std::env::var(k).ok();
    if let Some(r) = parse_sudo_ids(var("SUDO_UID").as_deref(), var("SUDO_GID").as_deref())? {
        return Ok(Some(r));
    }
    Ok(store_reader(
        crate::trust::check_file(path).map_err(|e| e.reason),
    ))
}

/// Read at most [`MAX_CONFIG`] bytes of the regular file at `path`, never following a symbolic
/// link in its last component and never waiting on a FIFO or a device. With a `reader`, the
/// file is opened on a thread of its own that carries that user's rights (see [`creds`]): a
/// file the user cannot read is refused, and its content never reaches an error message.
pub fn read_regular_file(path: &Path, reader: Option<Reader>) -> Result<Vec<u8>, String> {
    match reader {
        None => read_capped(path),
        Some(r) => {
            let path = path.to_path_buf();
            std::thread::spawn(move || {
                creds::assume(r)
                    .map_err(|e| format!("cannot take the rights of uid {}: {e}", r.uid))?;
                read_capped(&path)
            })
            .join()
            .unwrap_or_else(|_| Err("the reading thread failed".into()))
        }
    }
}

fn read_capped(path: &Path) -> Result<Vec<u8>, String> {
    use nix::fcntl::OFlag;
    use std::io::Read;
    let flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::open(path, flags, nix::sys::stat::Mode::empty()).map_err(|e| match e {
        nix::errno::Errno::ELOOP => "it is a symbolic link (refused)".to_string(),
        e => std::io::Error::from(e).to_string(),
    })?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("it is not a regular file (refused)".into());
    }
    let mut out = Vec::new();
    file.take(MAX_CONFIG + 1)
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    if out.len() as u64 > MAX_CONFIG {
        return Err(format!(
            "it is larger than {} KiB (refused)",
            MAX_CONFIG / 1024
        ));
    }
    Ok(out)
}

/// Per-thread credentials: only the calling thread changes, and it ends after one read.
#[cfg(target_os = "linux")]
mod creds {
    use super::Reader;
    use nix::libc;
    use nix::unistd::{Gid, Uid, setfsgid, setfsuid};
    use std::io;

    /// The kernel checks file access against the filesystem uid and gid and the supplementary
    /// groups, all per thread. glibc's setgroups would change every thread of the process, so
    /// the system call is made directly. Leaving fsuid 0 drops the thread's file capabilities
    /// (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, ...). The user's other groups are not added (they
    /// would need an NSS lookup): a file readable only through one of them is refused.
    pub fn assume(r: Reader) -> io::Result<()> {
        let groups: [libc::gid_t; 1] = [r.gid];
        // SAFETY: setgroups reads `groups.len()` gids from a live array; the raw system call
        // changes the credentials of this thread only.
        let rc = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        setfsgid(Gid::from_raw(r.gid));
        setfsuid(Uid::from_raw(r.uid));
        // Neither reports failure: each returns the previous value, so ask again.
        if setfsgid(Gid::from_raw(r.gid)) != Gid::from_raw(r.gid)
            || setfsuid(Uid::from_raw(r.uid)) != Uid::from_raw(r.uid)
        {
            return Err(io::Error::other("the filesystem ids did not change"));
        }
        Ok(())
    }
}

/// macOS has per-thread credentials too: pthread_setugid_np (what Apple's daemons use to act
/// for a user), in libSystem; the libc crate does not declare it.
#[cfg(target_os = "macos")]
mod creds {
    use super::Reader;
    use nix::libc;
    use std::io;

    unsafe extern "C" {
        fn pthread_setugid_np(uid: libc::uid_t, gid: libc::gid_t) -> libc::c_int;
    }

    pub fn assume(r: Reader) -> io::Result<()> {
        // SAFETY: plain integers in, an int out; it changes the calling thread's credentials.
        if unsafe { pthread_setugid_np(r.uid, r.gid) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
mod creds {
    use super::Reader;

    pub fn assume(_: Reader) -> std::io::Result<()> {
        Err(std::io::Error::other("not supported on this platform"))
    }
}

/// Read the VM IP of machine `name` from `path`, as root only when root alone can change it
/// (see [`reader`]).
pub fn read_machine_ip(name: &str, path: &Path) -> Result<Ipv4Addr, String> {
    let cannot = |e: String| {
        format!(
            "docker-machine '{name}': cannot read {}: {e}",
            path.display()
        )
    };
    let bytes = read_regular_file(path, reader(path)?).map_err(cannot)?;
    let text = String::from_utf8(bytes).map_err(|_| cannot("it is not UTF-8 text".into()))?;
    parse_machine_config(&text)
        .map_err(|e| format!("docker-machine '{name}': {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_driver_ip_address() {
        let json = r#"{"ConfigVersion":3,"Driver":{"IPAddress":"192.168.99.100","MachineName":"default","SSHUser":"docker"},"DriverName":"virtualbox"}"#;
        assert_eq!(
            parse_machine_config(json).unwrap(),
            Ipv4Addr::new(192, 168, 99, 100)
        );
    }

    #[test]
    fn rejects_missing_or_bad_ip() {
        assert!(
            parse_machine_config(r#"{"Driver":{"IPAddress":""}}"#)
                .unwrap_err()
                .contains("no Driver.IPAddress")
        );
        assert!(parse_machine_config(r#"{"Driver":{}}"#).is_err());
        assert!(parse_machine_config(r#"{"Driver":{"IPAddress":"999.1.1.1"}}"#).is_err());
        assert!(
            parse_machine_config("{not json")
                .unwrap_err()
                .contains("not valid JSON")
        );
    }

    #[test]
    fn docker_host_forms() {
        let ip = Ipv4Addr::new(192, 168, 99, 100);
        assert_eq!(
            parse_docker_host("tcp://192.168.99.100:2376"),
            DockerHost::Ip(ip)
        );
        assert_eq!(
            parse_docker_host("tcp://192.168.99.100"),
            DockerHost::Ip(ip)
        );
        assert_eq!(
            parse_docker_host("tcp://192.168.99.100:2376/"),
            DockerHost::Ip(ip)
        );
        for other in [
            "unix:///var/run/docker.sock",
            "ssh://me@vm",
            "tcp://dockervm:2376",
            "tcp://[::1]:2376",
            "tcp://1.2.3.4:x",
            "",
        ] {
            assert!(
                matches!(parse_docker_host(other), DockerHost::NotAnIp(_)),
                "{other}"
            );
        }
    }

    #[test]
    fn reads_a_machine_store() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(&p, r#"{"Driver":{"IPAddress":"10.0.5.2"}}"#).unwrap();
        assert_eq!(
            read_machine_ip("dev", &p).unwrap(),
            Ipv4Addr::new(10, 0, 5, 2)
        );
        let e = read_machine_ip("dev", &dir.path().join("nope.json")).unwrap_err();
        assert!(e.starts_with("docker-machine 'dev': cannot read"), "{e}");
    }

    #[test]
    fn refuses_what_is_not_a_small_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let e = read_regular_file(&link, None).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        let e = read_regular_file(Path::new("/dev/null"), None).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let big = dir.path().join("big.json");
        std::fs::write(&big, vec![b' '; MAX_CONFIG as usize + 1]).unwrap();
        let e = read_regular_file(&big, None).unwrap_err();
        assert!(e.contains("larger than 1024 KiB"), "{e}");
    }

    #[test]
    fn a_store_root_does_not_hold_alone_is_read_as_whoever_can_change_it() {
        use crate::trust::Reason;
        assert_eq!(store_reader(Ok(())), None);
        assert_eq!(
            store_reader(Err(Reason::NotRootOwned(1000))),
            Some(Reader {
                uid: 1000,
                gid: 65534
            })
        );
        for r in [
            Reason::Writable(0o777),
            Reason::WrongType,
            Reason::Unreadable,
            Reason::TooManyLinks,
        ] {
            assert_eq!(store_reader(Err(r)), Some(NOBODY), "{r:?}");
        }
    }

    #[test]
    fn sudo_ids() {
        assert_eq!(parse_sudo_ids(None, Some("5")), Ok(None));
        assert_eq!(parse_sudo_ids(Some("0"), Some("0")), Ok(None));
        assert_eq!(
            parse_sudo_ids(Some("1000"), Some("100")),
            Ok(Some(Reader {
                uid: 1000,
                gid: 100
            }))
        );
        assert_eq!(
            parse_sudo_ids(Some("1000"), None),
            Ok(Some(Reader {
                uid: 1000,
                gid: 65534
            }))
        );
        assert!(parse_sudo_ids(Some("x"), None).is_err());
        assert!(parse_sudo_ids(Some("4294967295"), None).is_err());
        assert!(parse_sudo_ids(Some("7"), Some("-1")).is_err());
    }
}
