//! Replacing files safely: atomically where the file system allows it, in place where it does not
//! (a bind-mounted /etc/resolv.conf cannot be renamed over).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

const EBUSY: i32 = nix::errno::Errno::EBUSY as i32;
const EXDEV: i32 = nix::errno::Errno::EXDEV as i32;

fn no_follow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

/// Write `path` atomically with `mode` (temporary file in the same directory, then rename): readers
/// see the old content or the new, never a part. With `durable`, the file and the directory are
/// fsynced, so the new content also survives a crash.
pub fn write_atomic(path: &Path, body: &[u8], mode: u32, durable: bool) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".dockroute-")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    tmp.write_all(body)?;
    if durable {
        tmp.as_file().sync_all()?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    if durable {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Replace the contents of the existing regular file `path`, keeping its mode and owner, durably.
/// Atomic by rename when possible; when the file is a mount point (EBUSY) or on another file
/// system (EXDEV), the new contents are written in place with a single write, then truncated.
/// Never follows a symlink at `path`.
pub fn replace_contents(path: &Path, body: &[u8]) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.file_type().is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let atomic = write_atomic(path, body, meta.mode() & 0o7777, true).and_then(|()| {
        // keep the owner (the temporary file is root's); mode came with the temporary file
        nix::unistd::chown(
            path,
            Some(nix::unistd::Uid::from_raw(meta.uid())),
            Some(nix::unistd::Gid::from_raw(meta.gid())),
        )
        .map_err(io::Error::from)
    });
    match atomic {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(EBUSY | EXDEV)) => write_in_place(path, body),
        Err(e) => Err(e),
    }
}

/// What stands at a path that dockroute may replace or remove only if it wrote it: a file
/// carrying its mark (`is_ours` on the content).
#[derive(Debug, PartialEq, Eq)]
pub enum Marked {
    Missing,
    Ours(String),
    /// A symlink, directory or other non-regular file: never written through or removed.
    NotRegular,
    /// A regular file without dockroute's mark.
    Foreign,
}

/// Look at `path` without following a symlink there.
pub fn read_marked(path: &Path, is_ours: impl Fn(&str) -> bool) -> io::Result<Marked> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Marked::Missing),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_file() {
        return Ok(Marked::NotRegular);
    }
    let content = std::fs::read_to_string(path)?;
    Ok(if is_ours(&content) {
        Marked::Ours(content)
    } else {
        Marked::Foreign
    })
}

fn write_in_place(path: &Path, body: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .custom_flags(no_follow())
        .open(path)?;
    f.write_all(body)?;
    f.set_len(body.len() as u64)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_leaves_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"one", 0o644, true).unwrap();
        write_atomic(&p, b"two", 0o600, false).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn replace_keeps_mode_and_refuses_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("resolv.conf");
        std::fs::write(&p, "nameserver 10.0.0.1\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        replace_contents(&p, b"short\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"short\n");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o640);

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(replace_contents(&link, b"x").is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"short\n");
    }

    #[test]
    fn in_place_write_truncates_a_longer_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "a much longer old content\n").unwrap();
        write_in_place(&p, b"new\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new\n");
    }
}
