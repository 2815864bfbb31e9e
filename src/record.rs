//! The ownership record in the state directory, its lock, and atomic writes.
//!
//! Routes and rules are found again by their protocol tag even without the record; the record is
//! what `status` shows as "installed by the last `up`", and the place later concerns (DNS,
//! firewall) keep what has no tag of its own.

use crate::discover::Target;
use crate::dns::DnsState;
use crate::net::Entry;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/dockroute";
const RECORD: &str = "state.json";
const LOCK: &str = "lock";
const VERSION: u32 = 1;

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
    pub flags: Option<crate::settings::UpFlags>,
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
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("state directory {path}: {err}")]
    Io { path: PathBuf, err: io::Error },
    #[error("state directory {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("state directory {0} is writable by other users; use a directory only root can write")]
    Unsafe(PathBuf),
    #[error("record {path} is unreadable ({reason}); `dockroute down` still finds tagged routes")]
    Corrupt { path: PathBuf, reason: String },
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
}

/// Held while a command changes the system; dropping it releases the lock.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Store { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn ensure_dir(&self) -> Result<(), RecordError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&self.dir)
            .map_err(io_err(&self.dir))?;
        let meta = std::fs::symlink_metadata(&self.dir).map_err(io_err(&self.dir))?;
        if !meta.is_dir() {
            return Err(RecordError::NotADirectory(self.dir.clone()));
        }
        if meta.mode() & 0o022 != 0 && nix::unistd::geteuid().is_root() {
            return Err(RecordError::Unsafe(self.dir.clone()));
        }
        Ok(())
    }

    /// Take the exclusive lock, waiting for a concurrent `up` or `down` to finish.
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
            tracing::info!("waiting for another dockroute to finish");
            file.lock().map_err(io_err(&path))?;
        }
        Ok(Lock { _file: file })
    }

    /// The record, if there is one.
    pub fn load(&self) -> Result<Option<Record>, RecordError> {
        let path = self.dir.join(RECORD);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
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
        crate::fsutil::write_atomic(&path, &body, 0o644, false).map_err(io_err(&path))
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

    fn record() -> Record {
        let target = Target {
            ifname: "vboxnet0".into(),
            ifindex: 3,
            host_addr: "192.168.99.1/24".parse().unwrap(),
            vm_ip: "192.168.99.100".parse().unwrap(),
            vm_ip_source: VmIpSource::Flag,
            subnets: vec!["172.17.0.0/16".parse().unwrap()],
        };
        let entries = crate::plan::desired(&target);
        Record::new(target, entries, None)
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
    fn a_file_where_the_directory_should_be_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("file");
        std::fs::write(&f, "").unwrap();
        assert!(Store::new(&f).lock().is_err());
    }
}
