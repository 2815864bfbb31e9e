//! The ownership record in the state directory, its lock, and atomic writes.
//!
//! Routes and rules are found again by their protocol tag even without the record; the record is
//! what `status` shows as "installed by the last `up`", and the place later concerns (DNS,
//! firewall) keep what has no tag of its own.

use crate::discover::Target;
use crate::dns::DnsState;
use crate::net::Entry;
use crate::trust::TrustError;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/dockroute";
const RECORD: &str = "state.json";
const LOCK: &str = "lock";
/// The record names the VM, its link and the flags `up` was given: root's business only.
const RECORD_MODE: u32 = 0o600;
const VERSION: u32 = 1;
/// How long `up` and `down` wait for another run's lock by default.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// The pid the lock's holder wrote into the lock file, if it did yet. A pid of a process that no
/// longer runs is none: the lock file keeps the pid of the last dockroute that held it, and
/// something else (a backup tool, `flock(1)`) may hold the lock now.
fn read_holder(file: &File) -> Option<u32> {
    let mut buf = [0u8; 16];
    let n = file.read_at(&mut buf, 0).ok()?;
    let pid: u32 = std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()?;
    let running = i32::try_from(pid).is_ok_and(|p| {
        p > 0
            && nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None)
                != Err(nix::errno::Errno::ESRCH)
    });
    running.then_some(pid)
}

/// A record an older version wrote readable by everyone becomes [`RECORD_MODE`] the first time
/// its owner (root) reads it, not only when it next changes.
fn make_private(file: &File, path: &Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Ok(meta) = file.metadata() else { return };
    if meta.mode() & 0o077 == 0 || meta.uid() != nix::unistd::geteuid().as_raw() {
        return;
    }
    match file.set_permissions(std::fs::Permissions::from_mode(RECORD_MODE)) {
        Ok(()) => tracing::debug!("{}: now readable by root only", path.display()),
        Err(e) => tracing::warn!("{}: cannot make it private: {e}", path.display()),
    }
}

/// What dockroute installed, as of its last successful `up`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    pub target: Target,
    pub entries: Vec<Entry>,
    /// Per-domain DNS dockroute set (written before it is applied, so `down` can undo a run that
    /// died half-way).
    #[serde(default)]
    pub dns: Option<DnsState>,
    /// Whether dockroute has inserted firewall rules (now or in an earlier `up`), so `down` knows
    /// to look for them. Without a record, `down` always looks.
    #[serde(default)]
    pub firewall: bool,
    /// The settings flags of that `up`, which a bare `up` (a VPN hook's, the boot job's)
    /// re-applies. Absent in records of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<crate::options::UpFlags>,
    /// macOS: what dockroute holds in firewalls that carry no tag (pf's enable reference token,
    /// ipfw's rule numbers), so that `down` lets go of exactly that. Absent when nothing is held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall_held: Option<crate::firewall::Held>,
    /// The Docker engine asked, the networks routed for it (name, id, subnet) and the ones
    /// skipped with their reasons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<crate::docker::Report>,
}

impl Record {
    pub fn new(target: Target, entries: Vec<Entry>, dns: Option<DnsState>) -> Self {
        Record {
            version: VERSION,
            target,
            entries,
            dns,
            firewall: false,
            flags: None,
            firewall_held: None,
            docker: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("state directory {path}: {err}")]
    Io { path: PathBuf, err: io::Error },
    #[error("state directory {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error(
        "state directory {path} is not safe: {err}; use a directory only root can change, all the way up (default {DEFAULT_STATE_DIR})"
    )]
    Untrusted { path: PathBuf, err: TrustError },
    #[error("record {path} is unreadable ({reason}); `dockroute down` still finds tagged routes")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "gave up after {waited:?}: {} holds the lock {path}; wait for it to finish or stop it", holder_text(.holder)
    )]
    Locked {
        path: PathBuf,
        holder: Option<u32>,
        waited: Duration,
    },
}

/// Who holds the lock: the dockroute that wrote its pid, or a process that did not say.
fn holder_text(holder: &Option<u32>) -> String {
    holder.map_or_else(
        || "another process (not a running dockroute that named itself in the lock file)".into(),
        |p| format!("another dockroute (pid {p})"),
    )
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RecordError + '_ {
    move |err| RecordError::Io {
        path: path.to_path_buf(),
        err,
    }
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
    lock_timeout: Duration,
}

/// Held while a command changes the system; dropping it releases the lock.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

/// How often a waiting run tries the lock again.
const LOCK_POLL: Duration = Duration::from_millis(50);
/// How long a waiting run gives the holder to write its pid before saying it does not know it.
const HOLDER_GRACE: Duration = Duration::from_millis(200);

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Store {
            dir: dir.into(),
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        }
    }

    /// How long [`Store::lock`] waits for another run before giving up.
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn untrusted(&self) -> impl FnOnce(TrustError) -> RecordError + '_ {
        move |err| RecordError::Untrusted {
            path: self.dir.clone(),
            err,
        }
    }

    /// Create the missing directories down to the state dir (0755, whatever the umask), as root
    /// only under a trusted existing directory.
    fn create_dir(&self) -> Result<(), RecordError> {
        if crate::trust::enforced() {
            crate::trust::check_dir(crate::fsutil::nearest_existing(&self.dir))
                .map_err(self.untrusted())?;
        }
        crate::fsutil::create_dirs(&self.dir, 0o755).map_err(io_err(&self.dir))
    }

    /// The state dir exists (created if missing) and, as root, only root can change it.
    fn ensure_dir(&self) -> Result<(), RecordError> {
        if std::fs::symlink_metadata(&self.dir).is_err() {
            self.create_dir()?;
        }
        let meta = std::fs::symlink_metadata(&self.dir).map_err(io_err(&self.dir))?;
        if !meta.is_dir() {
            return Err(RecordError::NotADirectory(self.dir.clone()));
        }
        if crate::trust::enforced() {
            crate::trust::check_dir(&self.dir).map_err(self.untrusted())?;
        }
        Ok(())
    }

    /// Take the exclusive lock, waiting for a concurrent `up` or `down` to finish (at most the
    /// lock timeout). Then removes temporary files a killed run left in the state dir.
    pub fn lock(&self) -> Result<Lock, RecordError> {
        self.ensure_dir()?;
        let path = self.dir.join(LOCK);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&path)
            .map_err(io_err(&path))?;
        if file.try_lock().is_err() {
            self.wait_for_lock(&file, &path)?;
        }
        // Who holds it, for a run that has to wait. Written over the old pid at a fixed width,
        // and not at all when it is this process's already (`watch` locks on every reconcile):
        // truncating a file on ext4 costs a journal transaction, up to milliseconds.
        let me = std::process::id();
        if read_holder(&file) != Some(me) {
            let pid = format!("{me:<10}\n");
            let len = file.metadata().map_err(io_err(&path))?.len();
            if len != pid.len() as u64 {
                file.set_len(0).map_err(io_err(&path))?;
            }
            file.write_all_at(pid.as_bytes(), 0)
                .map_err(io_err(&path))?;
        }
        self.sweep();
        Ok(Lock { _file: file })
    }

    fn wait_for_lock(&self, file: &File, path: &Path) -> Result<(), RecordError> {
        let start = Instant::now();
        let deadline = start + self.lock_timeout;
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(()),
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => return Err(io_err(path)(e)),
            }
            let holder = read_holder(file);
            // Said once, as soon as the holder has written its pid (it does right after locking).
            if !told && (holder.is_some() || start.elapsed() >= HOLDER_GRACE) {
                tracing::warn!(
                    "waiting for {} to finish (at most {:?})",
                    holder_text(&holder),
                    self.lock_timeout
                );
                told = true;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RecordError::Locked {
                    path: path.to_path_buf(),
                    holder,
                    waited: self.lock_timeout,
                });
            }
            std::thread::sleep(LOCK_POLL.min(deadline - now));
        }
    }

    /// Remove temporary files a killed run left in the state dir (failures only logged).
    fn sweep(&self) {
        if let Err(e) = crate::fsutil::Dir::open(&self.dir).and_then(|d| d.sweep()) {
            tracing::warn!("could not clean up {}: {e}", self.dir.display());
        }
    }

    /// The record, if there is one.
    pub fn load(&self) -> Result<Option<Record>, RecordError> {
        if crate::trust::enforced() && std::fs::symlink_metadata(&self.dir).is_ok() {
            crate::trust::check_dir(&self.dir).map_err(self.untrusted())?;
        }
        let path = self.dir.join(RECORD);
        let mut file = match OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        make_private(&file, &path);
        let mut text = String::new();
        io::Read::read_to_string(&mut file, &mut text).map_err(io_err(&path))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| RecordError::Corrupt {
                path,
                reason: e.to_string(),
            })
    }

    /// Replace the record atomically (temporary file in the same directory, then rename).
    ///
    /// Not fsynced: the record mirrors kernel routes and rules, which do not survive a power loss
    /// either; a torn record after a crash is reported as unreadable, and `down` still finds
    /// everything by its tag. Files whose loss would lose user data use [`crate::fsutil::write_atomic`] with
    /// `durable`.
    pub fn save(&self, record: &Record) -> Result<(), RecordError> {
        self.ensure_dir()?;
        let path = self.dir.join(RECORD);
        let mut body = serde_json::to_vec_pretty(record).map_err(|e| RecordError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        body.push(b'\n');
        crate::fsutil::write_atomic(&path, &body, RECORD_MODE, false).map_err(io_err(&path))
    }

    /// Remove the record (a missing one is fine).
    pub fn clear(&self) -> Result<(), RecordError> {
        let path = self.dir.join(RECORD);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::VmIpSource;
    use std::os::unix::fs::PermissionsExt;

    fn record() -> Record {
        let target = Target {
            ifname: "vboxnet0".into(),
            ifindex: 3,
            host_addr: "192.168.99.1/24".parse().unwrap(),
            vm_ip: "192.168.99.100".parse().unwrap(),
            vm_ip_source: VmIpSource::Flag,
            subnets: vec!["172.17.0.0/16".parse().unwrap()],
            vm_lladdr: None,
            others: vec![],
        };
        let entries = crate::plan::desired(&target);
        Record::new(target, entries, None)
    }

    #[test]
    fn the_record_is_private_and_an_older_public_one_becomes_private_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("state"));
        let _lock = store.lock().unwrap();
        store.save(&record()).unwrap();
        let path = store.dir().join(RECORD);
        let mode = || std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(), 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(store.load().unwrap(), Some(record()));
        assert_eq!(mode(), 0o600);
    }

    #[test]
    fn save_load_clear() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("state"));
        assert_eq!(store.load().unwrap(), None);
        let _lock = store.lock().unwrap();
        store.save(&record()).unwrap();
        assert_eq!(store.load().unwrap(), Some(record()));
        // no temporary files left behind
        let names: Vec<_> = std::fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, ["lock", "state.json"]);
        store.clear().unwrap();
        store.clear().unwrap();
        assert_eq!(store.load().unwrap(), None);
    }

    #[test]
    fn what_the_firewalls_hold_round_trips_and_is_left_out_when_nothing_is() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let plain = record();
        store.save(&plain).unwrap();
        let text = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
        assert!(!text.contains("firewall_held"), "{text}");
        let mut held = record();
        held.firewall = true;
        held.firewall_held = Some(crate::firewall::Held {
            pf_token: Some(14348452843957520403),
            ipfw_rules: vec![998, 999],
        });
        store.save(&held).unwrap();
        let text = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
        assert!(
            text.contains("\"pf_token\": 14348452843957520403"),
            "{text}"
        );
        assert_eq!(store.load().unwrap(), Some(held.clone()));
        // a token alone (no ipfw) leaves the list out; an older record has no field at all
        held.firewall_held = Some(crate::firewall::Held {
            pf_token: Some(7),
            ipfw_rules: vec![],
        });
        store.save(&held).unwrap();
        let text = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
        assert!(!text.contains("ipfw_rules"), "{text}");
        assert_eq!(store.load().unwrap(), Some(held));
        let old = serde_json::to_string(&plain).unwrap();
        let back: Record = serde_json::from_str(&old).unwrap();
        assert_eq!(back.firewall_held, None);
    }

    #[test]
    fn corrupt_record_is_reported_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        std::fs::write(dir.path().join("state.json"), "{half").unwrap();
        assert!(matches!(store.load(), Err(RecordError::Corrupt { .. })));
    }

    #[test]
    fn lock_is_exclusive_across_open_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let held = store.lock().unwrap();
        let other = File::open(dir.path().join("lock")).unwrap();
        assert!(other.try_lock().is_err());
        drop(held);
        assert!(other.try_lock().is_ok());
    }

    #[test]
    fn the_lock_names_its_holder_over_a_longer_or_shorter_old_pid() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let path = dir.path().join("lock");
        let me = std::process::id();
        for old in ["4194304999999\n", "7\n", ""] {
            std::fs::write(&path, old).unwrap();
            let held = store.lock().unwrap();
            assert_eq!(
                read_holder(&File::open(&path).unwrap()),
                Some(me),
                "{old:?}"
            );
            drop(held);
        }
        // locked again by the same process (`watch`): the file already names it
        let _a = store.lock().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim(), me.to_string());
    }

    #[test]
    fn lock_file_is_never_followed_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::os::unix::fs::symlink(&victim, state.join("lock")).unwrap();
        assert!(Store::new(&state).lock().is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    }

    #[test]
    fn a_held_lock_times_out_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path()).with_lock_timeout(Duration::from_millis(300));
        let _held = store.lock().unwrap();
        let start = Instant::now();
        let e = store.lock().unwrap_err().to_string();
        let waited = start.elapsed();
        let pid = std::process::id();
        assert!(
            e.contains(&format!("another dockroute (pid {pid}) holds the lock")),
            "{e}"
        );
        assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(5));
    }

    /// Issue 16, point 10: the pid left in the lock file by a dockroute that has ended is not
    /// named when something else holds the lock.
    #[test]
    fn a_lock_held_by_something_else_names_no_stale_pid() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path()).with_lock_timeout(Duration::ZERO);
        drop(store.lock().unwrap());
        let mut ended = std::process::Command::new("/bin/true").spawn().unwrap();
        let stale = ended.id();
        ended.wait().unwrap();
        std::fs::write(dir.path().join(LOCK), format!("{stale:<10}\n")).unwrap();
        let other = File::open(dir.path().join(LOCK)).unwrap();
        other.lock().unwrap();
        let e = store.lock().unwrap_err().to_string();
        assert!(
            !e.contains(&stale.to_string()) && e.contains("another process"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_state_dir_is_created_0755_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/state");
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        let locked = Store::new(&state).lock();
        nix::sys::stat::umask(old);
        locked.unwrap();
        for d in [dir.path().join("a"), state] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o755, "{}", d.display());
        }
    }

    #[test]
    fn as_root_a_state_dir_others_can_change_is_refused() {
        if !crate::trust::enforced() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        std::fs::write(theirs.join("state.json"), "{}").unwrap();
        let store = Store::new(&theirs);
        let e = store.lock().unwrap_err();
        assert!(matches!(e, RecordError::Untrusted { .. }), "{e}");
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        assert!(matches!(store.load(), Err(RecordError::Untrusted { .. })));
        assert!(!theirs.join("lock").exists());
        // nor is one created under a directory others can change
        let below = theirs.join("state");
        assert!(Store::new(&below).lock().is_err());
        assert!(!below.exists());
    }

    #[test]
    fn a_file_where_the_directory_should_be_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("file");
        std::fs::write(&f, "").unwrap();
        assert!(Store::new(&f).lock().is_err());
    }
}
