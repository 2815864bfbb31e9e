//! Writing under an install root without following symlinks: every directory below the root is
//! opened relative to its parent with O_NOFOLLOW, and files are read, written and removed relative
//! to the directory's descriptor. As root, the root and every directory below it must be root's and
//! writable by nobody else (`trust`), checked on the open descriptors.

use super::ServiceError;
use crate::fsutil::Marked;
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::{Mode, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// Larger files at a target are not dockroute's (its files are a few KiB).
const MAX_READ: u64 = 1 << 20;

/// An open directory under the install root.
pub struct Dir {
    fd: OwnedFd,
    /// For messages only: nothing is opened by this path.
    pub path: PathBuf,
    /// Running as root: every directory must be trusted.
    enforce: bool,
}

fn io_err(path: &Path, err: impl Into<std::io::Error>) -> ServiceError {
    ServiceError::Io {
        path: path.to_path_buf(),
        err: err.into(),
    }
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// The rule of `trust` for one open directory: root's, and writable only by root.
fn check_trusted(fd: &OwnedFd, path: &Path) -> Result<(), ServiceError> {
    let meta = File::from(fd.try_clone().map_err(|e| io_err(path, e))?)
        .metadata()
        .map_err(|e| io_err(path, e))?;
    if meta.uid() != 0 {
        return Err(ServiceError::Refused(format!(
            "{} is owned by uid {}, not root: as root, dockroute writes only into directories that only root can change",
            path.display(),
            meta.uid()
        )));
    }
    let mode = meta.mode();
    if mode & 0o002 != 0 || (mode & 0o020 != 0 && meta.gid() != 0) {
        return Err(ServiceError::Refused(format!(
            "{} is writable by users other than root (mode {:04o}): as root, dockroute writes only into directories that only root can change",
            path.display(),
            mode & 0o7777
        )));
    }
    Ok(())
}

impl Dir {
    /// Open the install root. As root, it and every directory above it must be trusted
    /// (`trust::check_dir`, which follows only root's symlinks above it).
    pub fn open_root(root: &Path) -> Result<Dir, ServiceError> {
        let enforce = crate::trust::enforced();
        if enforce {
            crate::trust::check_dir(root).map_err(|e| {
                ServiceError::Refused(format!("the install root is not trusted: {e}"))
            })?;
        }
        let fd = nix::fcntl::open(
            root,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(root, e))?;
        if enforce {
            check_trusted(&fd, root)?;
        }
        Ok(Dir {
            fd,
            path: root.to_path_buf(),
            enforce,
        })
    }

    /// Open the directory `rel` (components separated by `/`) below this one, never following a
    /// symlink. `create`: make missing components (mode 0755); otherwise a missing one is `None`.
    pub fn open(&self, rel: &str, create: bool) -> Result<Option<Dir>, ServiceError> {
        let mut here: Option<Dir> = None;
        for name in rel.split('/').filter(|c| !c.is_empty()) {
            if name == "." || name == ".." {
                return Err(ServiceError::Refused(format!("bad directory {rel}")));
            }
            let parent = here.as_ref().unwrap_or(self);
            match parent.sub(name, create)? {
                Some(d) => here = Some(d),
                None => return Ok(None),
            }
        }
        match here {
            Some(d) => Ok(Some(d)),
            None => Ok(Some(Dir {
                fd: self.fd.try_clone().map_err(|e| io_err(&self.path, e))?,
                path: self.path.clone(),
                enforce: self.enforce,
            })),
        }
    }

    fn sub(&self, name: &str, create: bool) -> Result<Option<Dir>, ServiceError> {
        let path = self.path.join(name);
        let fd = match openat(&self.fd, name, dir_flags(), Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if create => {
                match mkdirat(&self.fd, name, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(io_err(&path, e)),
                }
                let fd = openat(&self.fd, name, dir_flags(), Mode::empty())
                    .map_err(|e| self.why(name, e))?;
                // the umask may have taken bits away
                File::from(fd.try_clone().map_err(|e| io_err(&path, e))?)
                    .set_permissions(std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| io_err(&path, e))?;
                fd
            }
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(self.why(name, e)),
        };
        if self.enforce {
            check_trusted(&fd, &path)?;
        }
        Ok(Some(Dir {
            fd,
            path,
            enforce: self.enforce,
        }))
    }

    /// Why `name` could not be opened as a directory: a symlink gets its own message.
    fn why(&self, name: &str, e: Errno) -> ServiceError {
        let path = self.path.join(name);
        let link =
            nix::sys::stat::fstatat(&self.fd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                .is_ok_and(|st| {
                    use nix::sys::stat::SFlag;
                    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFLNK
                });
        if link {
            ServiceError::Refused(format!(
                "{} is a symbolic link: dockroute does not write through symbolic links under the install root",
                path.display()
            ))
        } else if e == Errno::ENOTDIR {
            ServiceError::Refused(format!("{} is not a directory", path.display()))
        } else {
            io_err(&path, e)
        }
    }

    /// What stands at `name` in this directory, without following a symlink there.
    pub fn read_marked(
        &self,
        name: &str,
        is_ours: impl Fn(&str) -> bool,
    ) -> Result<Marked, ServiceError> {
        let path = self.path.join(name);
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = match openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(Marked::Missing),
            Err(Errno::ELOOP | Errno::EISDIR | Errno::ENXIO) => return Ok(Marked::NotRegular),
            Err(e) => return Err(io_err(&path, e)),
        };
        let f = File::from(fd);
        let meta = f.metadata().map_err(|e| io_err(&path, e))?;
        if !meta.is_file() {
            return Ok(Marked::NotRegular);
        }
        let mut bytes = Vec::new();
        f.take(MAX_READ)
            .read_to_end(&mut bytes)
            .map_err(|e| io_err(&path, e))?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) if is_ours(&s) => Marked::Ours(s),
            _ => Marked::Foreign,
        })
    }

    /// Replace `name` atomically and durably with `body`, mode `mode`, owned by root when running
    /// as root. The temporary file is created in this directory (O_EXCL, O_NOFOLLOW); its owner
    /// and mode are set on its descriptor before the rename.
    pub fn write(&self, name: &str, body: &[u8], mode: u32) -> Result<(), ServiceError> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let path = self.path.join(name);
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let (tmp, fd) = loop {
            let tmp = format!(
                ".dockroute-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            );
            match openat(
                &self.fd,
                tmp.as_str(),
                flags,
                Mode::from_bits_truncate(0o600),
            ) {
                Ok(fd) => break (tmp, fd),
                Err(Errno::EEXIST) => continue,
                Err(e) => return Err(io_err(&path, e)),
            }
        };
        let mut f = File::from(fd);
        let filled = (|| -> std::io::Result<()> {
            if self.enforce {
                std::os::unix::fs::fchown(&f, Some(0), Some(0))?;
            }
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
            f.write_all(body)?;
            f.sync_all()?;
            renameat(&self.fd, tmp.as_str(), &self.fd, name).map_err(std::io::Error::from)?;
            nix::unistd::fsync(self.fd.as_fd()).map_err(std::io::Error::from)
        })();
        if let Err(e) = filled {
            let _ = unlinkat(&self.fd, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            return Err(io_err(&path, e));
        }
        Ok(())
    }

    /// Remove the file `name` from this directory.
    pub fn remove(&self, name: &str) -> Result<(), ServiceError> {
        unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir)
            .map_err(|e| io_err(&self.path.join(name), e))?;
        nix::unistd::fsync(self.fd.as_fd()).map_err(|e| io_err(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinked_directories_are_not_followed() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("real")).unwrap();
        std::fs::create_dir_all(t.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(t.path().join("real"), t.path().join("etc/x")).unwrap();
        let root = Dir::open_root(t.path()).unwrap();
        let e = root.open("etc/x/y", true).err().unwrap();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        assert!(!t.path().join("real/y").exists());
        assert!(root.open("etc/none", false).unwrap().is_none());
        let d = root.open("etc/a/b", true).unwrap().unwrap();
        d.write("f", b"# mine\n", 0o640).unwrap();
        let meta = std::fs::metadata(t.path().join("etc/a/b/f")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_eq!(
            d.read_marked("f", |s| s.starts_with("# mine")).unwrap(),
            Marked::Ours("# mine\n".into())
        );
        std::os::unix::fs::symlink(t.path().join("etc/a/b/f"), t.path().join("etc/a/b/l")).unwrap();
        assert_eq!(d.read_marked("l", |_| true).unwrap(), Marked::NotRegular);
        d.remove("f").unwrap();
        assert_eq!(d.read_marked("f", |_| true).unwrap(), Marked::Missing);
        assert_eq!(
            std::fs::read_dir(t.path().join("etc/a/b")).unwrap().count(),
            1
        );
    }
}
