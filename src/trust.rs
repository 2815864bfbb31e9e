//! What a process running as root may trust on the file system: a path that only root can change.
//!
//! A directory (or file) is trusted when it and every directory above it are owned by root and
//! writable by nobody else: not by others, and by the group only when that group is root's (gid 0,
//! `wheel` on macOS). An ancestor with the sticky bit (/tmp) may be writable by everyone, because
//! in it only the owner of an entry can rename or remove it, and the next component must be
//! root's. A symlink on the way is followed only when root owns it (it then lies in a directory
//! already found trusted), and its target must be trusted in turn.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub struct TrustError {
    /// The path that was checked.
    pub path: PathBuf,
    /// The component that failed the check.
    pub at: PathBuf,
    pub reason: Reason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Owned by another user.
    NotRootOwned(u32),
    /// Writable by a group other than root's, or by others.
    Writable(u32),
    /// Not a directory where one was needed (or not a regular file for a file check).
    WrongType,
    /// Missing or unreadable.
    Unreadable,
    /// Too many symlinks on the way.
    TooManyLinks,
}

impl fmt::Display for TrustError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.at.display();
        match self.reason {
            Reason::NotRootOwned(uid) => write!(f, "{at} is owned by uid {uid}, not root"),
            Reason::Writable(mode) => write!(
                f,
                "{at} is writable by users other than root (mode {:04o})",
                mode & 0o7777
            ),
            Reason::WrongType => write!(f, "{at} is not of the expected type"),
            Reason::Unreadable => write!(f, "{at} cannot be examined"),
            Reason::TooManyLinks => write!(f, "{at}: too many symbolic links"),
        }?;
        if self.at != self.path {
            write!(f, " (on the way to {})", self.path.display())?;
        }
        Ok(())
    }
}

/// Whether the checks apply: only a process running as root needs them (an ordinary user's
/// dockroute can only hurt that user).
pub fn enforced() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether the metadata says only root can change what it describes. `sticky_ok`: a sticky,
/// world-writable directory is acceptable (for ancestors).
fn only_root_writes(meta: &std::fs::Metadata, sticky_ok: bool) -> Result<(), Reason> {
    if meta.uid() != 0 {
        return Err(Reason::NotRootOwned(meta.uid()));
    }
    let mode = meta.mode();
    let sticky = mode & 0o1000 != 0 && meta.is_dir();
    if sticky && sticky_ok {
        return Ok(());
    }
    if mode & 0o002 != 0 || (mode & 0o020 != 0 && meta.gid() != 0) {
        return Err(Reason::Writable(mode));
    }
    Ok(())
}

/// Walk `path` from the root, checking each directory on the way. The last component is checked
/// by `last` (it may be missing only if `last` allows it).
fn walk(path: &Path, depth: usize, last_is_dir: bool) -> Result<(), (PathBuf, Reason)> {
    if depth > 16 {
        return Err((path.to_path_buf(), Reason::TooManyLinks));
    }
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|_| (path.to_path_buf(), Reason::Unreadable))?
            .join(path)
    };
    let parts: Vec<Component> = abs.components().collect();
    let mut here = PathBuf::new();
    for (i, part) in parts.iter().enumerate() {
        match part {
            Component::RootDir | Component::Prefix(_) => here.push(part.as_os_str()),
            Component::CurDir => continue,
            Component::ParentDir => {
                // `..` after a checked directory leads to its parent, which was checked before.
                here.pop();
                continue;
            }
            Component::Normal(n) => here.push(n),
        }
        let is_last = i + 1 == parts.len();
        let meta =
            std::fs::symlink_metadata(&here).map_err(|_| (here.clone(), Reason::Unreadable))?;
        if meta.file_type().is_symlink() {
            if meta.uid() != 0 {
                return Err((here.clone(), Reason::NotRootOwned(meta.uid())));
            }
            let target =
                std::fs::read_link(&here).map_err(|_| (here.clone(), Reason::Unreadable))?;
            let parent = here.parent().unwrap_or(Path::new("/")).to_path_buf();
            let resolved = parent.join(target);
            // The target, and everything after this component, must be trusted as well.
            let mut rest = resolved;
            for p in &parts[i + 1..] {
                rest.push(p.as_os_str());
            }
            return walk(&rest, depth + 1, last_is_dir);
        }
        if !is_last || last_is_dir {
            if !meta.is_dir() {
                return Err((here.clone(), Reason::WrongType));
            }
        } else if !meta.is_file() {
            return Err((here.clone(), Reason::WrongType));
        }
        only_root_writes(&meta, !is_last).map_err(|r| (here.clone(), r))?;
    }
    Ok(())
}

/// `dir` exists, is a directory, and it and every directory above it can be changed only by root.
pub fn check_dir(dir: &Path) -> Result<(), TrustError> {
    walk(dir, 0, true).map_err(|(at, reason)| TrustError {
        path: dir.to_path_buf(),
        at,
        reason,
    })
}

/// `file` is a regular file that only root can change or replace: root owns it and every
/// directory above it, and nobody else can write to any of them.
pub fn check_file(file: &Path) -> Result<(), TrustError> {
    walk(file, 0, false).map_err(|(at, reason)| TrustError {
        path: file.to_path_buf(),
        at,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn system_directories_are_trusted() {
        if !enforced() {
            return;
        }
        check_dir(Path::new("/")).unwrap();
        check_dir(Path::new("/etc")).unwrap();
        check_file(Path::new("/etc/passwd")).unwrap();
    }

    #[test]
    fn writable_or_foreign_components_are_named() {
        if !enforced() {
            return;
        }
        let t = tempfile::tempdir().unwrap(); // under sticky /tmp: fine
        chmod(t.path(), 0o755);
        let d = t.path().join("a/b");
        std::fs::create_dir_all(&d).unwrap();
        check_dir(&d).unwrap();
        chmod(&t.path().join("a"), 0o777);
        let e = check_dir(&d).unwrap_err();
        assert_eq!(e.at, t.path().join("a"));
        assert!(matches!(e.reason, Reason::Writable(_)), "{e}");
        assert!(e.to_string().contains("writable by users other than root"));
        chmod(&t.path().join("a"), 0o755);
        std::os::unix::fs::chown(&d, Some(65534), None).unwrap();
        let e = check_dir(&d).unwrap_err();
        assert_eq!(e.reason, Reason::NotRootOwned(65534));

        // a symlink owned by someone else is not followed; root's is, to a checked target
        let link = t.path().join("link");
        std::os::unix::fs::symlink(t.path().join("a"), &link).unwrap();
        check_dir(&link).unwrap();
        std::os::unix::fs::lchown(&link, Some(65534), None).unwrap();
        assert!(check_dir(&link).is_err());

        let f = t.path().join("a/file");
        std::fs::write(&f, "x").unwrap();
        check_file(&f).unwrap();
        assert_eq!(check_dir(&f).unwrap_err().reason, Reason::WrongType);
        chmod(&f, 0o666);
        assert!(matches!(
            check_file(&f).unwrap_err().reason,
            Reason::Writable(_)
        ));
    }
}
