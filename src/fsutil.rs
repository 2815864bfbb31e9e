//! Replacing files safely: atomically where the file system allows it, in place where it does not
//! (a bind-mounted /etc/resolv.conf cannot be renamed over).
//!
//! Every file is reached relative to its directory, opened once with `O_DIRECTORY|O_NOFOLLOW`
//! ([`Dir`]): the temporary file is created there with `O_CREAT|O_EXCL|O_NOFOLLOW`, gets its
//! owner, mode and extended attributes through its descriptor (fchown, fchmod, fsetxattr), and is
//! then renamed over the file within that directory. Nothing is changed by path after the rename,
//! so a symlink swapped in meanwhile is never followed.
//!
//! A run killed between creating the temporary file and the rename leaves `.dockroute-XXXXXX`
//! behind; [`Dir::sweep`] removes such files of ours (the next `up` or `down` calls it).

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Every temporary file dockroute creates is named this, then six letters or digits.
pub const TEMP_PREFIX: &str = ".dockroute-";
const TEMP_RANDOM: usize = 6;

const EBUSY: i32 = nix::errno::Errno::EBUSY as i32;
const EXDEV: i32 = nix::errno::Errno::EXDEV as i32;

/// An open directory: files are created, replaced, examined and removed relative to it.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// Owner, mode and extended attributes a written file gets (set before it becomes visible).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attrs {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub xattrs: Vec<(CString, Vec<u8>)>,
}

impl Attrs {
    /// A new file of this process's user and group with exactly `mode` (whatever the umask).
    pub fn new_file(mode: u32) -> Attrs {
        Attrs {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            mode,
            xattrs: Vec::new(),
        }
    }

    /// Those of an open file: owner, permission bits and every extended attribute.
    pub fn of(file: &File) -> io::Result<Attrs> {
        let meta = file.metadata()?;
        Ok(Attrs {
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode() & 0o7777,
            xattrs: sys::xattrs(file)?,
        })
    }

    /// Owner first (fchown clears set-id bits), then the mode, then the extended attributes (an
    /// ACL sets the group bits from its mask, as on the original).
    fn apply(&self, file: &File) -> io::Result<()> {
        std::os::unix::fs::fchown(file, Some(self.uid), Some(self.gid))?;
        file.set_permissions(std::fs::Permissions::from_mode(self.mode & 0o7777))?;
        for (name, value) in &self.xattrs {
            sys::set_xattr(file, name, value).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("copying extended attribute {}: {e}", name.to_string_lossy()),
                )
            })?;
        }
        Ok(())
    }
}

/// Whether `name` is the name of one of dockroute's temporary files.
pub fn is_temp_name(name: &OsStr) -> bool {
    name.as_bytes()
        .strip_prefix(TEMP_PREFIX.as_bytes())
        .is_some_and(|r| r.len() == TEMP_RANDOM && r.iter().all(u8::is_ascii_alphanumeric))
}

fn temp_name() -> OsString {
    use std::hash::{BuildHasher, Hasher};
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    // RandomState is seeded from the OS's random source once per process, then varied.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let mut n = h.finish();
    let mut s = String::from(TEMP_PREFIX);
    for _ in 0..TEMP_RANDOM {
        s.push(char::from(ALNUM[(n % ALNUM.len() as u64) as usize]));
        n /= ALNUM.len() as u64;
    }
    s.into()
}

impl Dir {
    /// Open `path`, which must be a directory and not a symlink.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::open(path, flags, Mode::empty())?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Open `name` in this directory; never through a symlink.
    pub fn open_file(&self, name: &OsStr, flags: OFlag, mode: u32) -> io::Result<File> {
        let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mode = Mode::from_bits_truncate((mode & 0o777) as nix::libc::mode_t);
        Ok(File::from(nix::fcntl::openat(&self.fd, name, flags, mode)?))
    }

    /// Whether `name` is a regular file (not following a symlink), and its owner; `None` when
    /// it does not exist.
    pub fn regular_file_owner(&self, name: &OsStr) -> io::Result<Option<(bool, u32)>> {
        match nix::sys::stat::fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => {
                use nix::sys::stat::SFlag;
                let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
                Ok(Some((kind == SFlag::S_IFREG, st.st_uid)))
            }
            Err(nix::errno::Errno::ENOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Remove the file `name` from this directory.
    pub fn remove(&self, name: &OsStr) -> io::Result<()> {
        nix::unistd::unlinkat(&self.fd, name, nix::unistd::UnlinkatFlags::NoRemoveDir)?;
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        nix::unistd::fsync(&self.fd)?;
        Ok(())
    }

    fn create_temp(&self) -> io::Result<(OsString, File)> {
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL;
        let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
        for _ in 0..16 {
            let name = temp_name();
            match self.open_file(&name, flags, 0o600) {
                Ok(f) => return Ok((name, f)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Write `name` atomically: a temporary file with `body` and `attrs`, renamed over `name`.
    /// With `durable`, the file and the directory are fsynced. The temporary file is removed
    /// again on failure.
    pub fn write_atomic(
        &self,
        name: &OsStr,
        body: &[u8],
        attrs: &Attrs,
        durable: bool,
    ) -> io::Result<()> {
        let (tmp_name, mut tmp) = self.create_temp()?;
        let result = fill(&mut tmp, body, attrs, durable).and_then(|()| {
            stall_before_rename(name);
            nix::fcntl::renameat(&self.fd, tmp_name.as_os_str(), &self.fd, name)
                .map_err(io::Error::from)
        });
        if let Err(e) = result {
            let _ = self.remove(&tmp_name);
            return Err(e);
        }
        if durable {
            self.sync()?;
        }
        Ok(())
    }

    /// Remove dockroute's temporary files left here by a killed run: regular files of this
    /// process's user (root) named `.dockroute-XXXXXX`, nothing else. Returns how many.
    pub fn sweep(&self) -> io::Result<usize> {
        let me = nix::unistd::geteuid().as_raw();
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.path)? {
            let name = entry?.file_name();
            if !is_temp_name(&name) {
                continue;
            }
            if self.regular_file_owner(&name)? == Some((true, me)) {
                self.remove(&name)?;
                tracing::info!(
                    "removed {} (left by a killed dockroute)",
                    self.path.join(&name).display()
                );
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn fill(tmp: &mut File, body: &[u8], attrs: &Attrs, durable: bool) -> io::Result<()> {
    tmp.write_all(body)?;
    attrs.apply(tmp)?;
    if durable {
        tmp.sync_all()?;
    }
    Ok(())
}

/// `path`'s directory (opened) and file name.
pub fn split(path: &Path) -> io::Result<(Dir, &OsStr)> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((Dir::open(parent)?, name))
}

/// Write `path` atomically as a new file of this user with exactly `mode` (see
/// [`Dir::write_atomic`]): readers see the old content or the new, never a part.
pub fn write_atomic(path: &Path, body: &[u8], mode: u32, durable: bool) -> io::Result<()> {
    let (dir, name) = split(path)?;
    dir.write_atomic(name, body, &Attrs::new_file(mode), durable)
}

/// Replace the contents of the existing regular file `path`, keeping its owner, mode and extended
/// attributes (SELinux label, ACL, user.*), durably. Atomic by rename when possible; when the file
/// is a mount point, or the rename fails with EBUSY or EXDEV, the new contents are written in
/// place with a single write, then truncated. Never follows a symlink at `path`.
pub fn replace_contents(path: &Path, body: &[u8]) -> io::Result<()> {
    let (dir, name) = split(path)?;
    let original = dir.open_file(name, OFlag::O_RDONLY | OFlag::O_NONBLOCK, 0)?;
    if !original.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    if sys::is_mount_root(&dir, name) {
        return write_in_place(&dir, name, body);
    }
    let attrs = Attrs::of(&original)?;
    match dir.write_atomic(name, body, &attrs, true) {
        Err(e) if matches!(e.raw_os_error(), Some(EBUSY | EXDEV)) => {
            write_in_place(&dir, name, body)
        }
        r => r,
    }
}

/// Whether dockroute would write `path` through a temporary file in its directory (false for a
/// mount point such as a bind-mounted resolv.conf, which is written in place).
pub fn replaced_by_rename(path: &Path) -> bool {
    split(path).is_ok_and(|(dir, name)| !sys::is_mount_root(&dir, name))
}

/// The nearest directory at or above `path` that exists (`.` for a relative path none of
/// whose components exist).
pub fn nearest_existing(path: &Path) -> &Path {
    let mut here = path;
    while std::fs::symlink_metadata(here).is_err() {
        here = match here.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
    }
    here
}

/// Create `path` and the missing directories above it, each with exactly `mode` (whatever the
/// umask). Call it after checking [`nearest_existing`].
pub fn create_dirs(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let top = nearest_existing(path).to_path_buf();
    let mut missing: Vec<&Path> = path.ancestors().take_while(|p| *p != top).collect();
    missing.reverse();
    for dir in missing {
        match std::fs::DirBuilder::new().mode(mode).create(dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
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

/// Read at most `limit` bytes of the regular file `name` in `dir`; `None` when it is larger or
/// not a regular file.
pub fn read_small(dir: &Dir, name: &OsStr, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let f = dir.open_file(name, OFlag::O_RDONLY | OFlag::O_NONBLOCK, 0)?;
    let meta = f.metadata()?;
    if !meta.is_file() || meta.len() > limit {
        return Ok(None);
    }
    let mut buf = Vec::new();
    f.take(limit + 1).read_to_end(&mut buf)?;
    Ok((buf.len() as u64 <= limit).then_some(buf))
}

fn write_in_place(dir: &Dir, name: &OsStr, body: &[u8]) -> io::Result<()> {
    let mut f = dir.open_file(name, OFlag::O_WRONLY | OFlag::O_NONBLOCK, 0)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    f.write_all(body)?;
    f.set_len(body.len() as u64)?;
    f.sync_all()
}

#[cfg(debug_assertions)]
static STALL_BEFORE_RENAME: std::sync::OnceLock<OsString> = std::sync::OnceLock::new();

/// Test hook (debug builds only): stop for an hour before renaming the temporary file of any
/// file named `name`, so a test can kill dockroute there.
#[cfg(debug_assertions)]
pub fn set_stall_before_rename(name: OsString) {
    let _ = STALL_BEFORE_RENAME.set(name);
}

fn stall_before_rename(_name: &OsStr) {
    #[cfg(debug_assertions)]
    if STALL_BEFORE_RENAME.get().is_some_and(|n| n == _name) {
        tracing::warn!("test hook: stalling before renaming over {_name:?}");
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// `Some(n)` from a raw size result, `Err` for -1.
fn sized(n: isize) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// A value read by a "size, then read" pair of calls (`f(buf, len)` returns the length, or the
/// needed length for a null buffer); retried when it grew in between.
fn read_sized(f: impl Fn(*mut u8, usize) -> isize) -> io::Result<Vec<u8>> {
    loop {
        let n = sized(f(std::ptr::null_mut(), 0))?;
        let mut buf = vec![0u8; n];
        match sized(f(buf.as_mut_ptr(), buf.len())) {
            Ok(m) => {
                buf.truncate(m);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Every extended attribute of a file, given its NUL-separated list of names.
fn collect_xattrs(
    names: io::Result<Vec<u8>>,
    get: impl Fn(&CString) -> io::Result<Vec<u8>>,
) -> io::Result<Vec<(CString, Vec<u8>)>> {
    let names = match names {
        Ok(n) => n,
        // a file system without extended attributes: there are none to keep
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    names
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| {
            let name = CString::new(n).map_err(io::Error::other)?;
            let value = get(&name)?;
            Ok((name, value))
        })
        .collect()
}

/// Sets one extended attribute through `call(fd, name, value, len)`, the platform's fsetxattr
/// with its own trailing arguments; 0 is success, anything else the errno.
fn set_xattr_with(
    file: &File,
    name: &CString,
    value: &[u8],
    call: impl FnOnce(
        std::os::fd::RawFd,
        *const nix::libc::c_char,
        *const nix::libc::c_void,
        usize,
    ) -> nix::libc::c_int,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let rc = call(
        file.as_raw_fd(),
        name.as_ptr(),
        value.as_ptr().cast(),
        value.len(),
    );
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(target_os = "linux")]
mod sys {
    use super::{Dir, read_sized};
    use nix::libc;
    use std::ffi::{CString, OsStr};
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;

    pub fn xattrs(file: &File) -> io::Result<Vec<(CString, Vec<u8>)>> {
        let fd = file.as_raw_fd();
        // SAFETY: `fd` is open for the duration; the buffer pointer and length come from
        // read_sized and describe writable memory (or are null and 0 for the size query).
        let names = read_sized(|buf, len| unsafe { libc::flistxattr(fd, buf.cast(), len) });
        super::collect_xattrs(names, |name| {
            // SAFETY: as above; `name` is NUL-terminated.
            read_sized(|buf, len| unsafe { libc::fgetxattr(fd, name.as_ptr(), buf.cast(), len) })
        })
    }

    pub fn set_xattr(file: &File, name: &CString, value: &[u8]) -> io::Result<()> {
        super::set_xattr_with(file, name, value, |fd, name, value, len| {
            // SAFETY: the descriptor is open, `name` is NUL-terminated, `value` is readable for
            // `len` bytes.
            unsafe { libc::fsetxattr(fd, name, value, len, 0) }
        })
    }

    /// Whether `name` in `dir` is the root of a mount (a bind-mounted file): renaming over it
    /// fails, so it is written in place and no temporary file is made next to it.
    pub fn is_mount_root(dir: &Dir, name: &OsStr) -> bool {
        let Ok(c) = CString::new(name.as_bytes()) else {
            return false;
        };
        let mut st = std::mem::MaybeUninit::<libc::statx>::zeroed();
        // SAFETY: a valid directory descriptor, a NUL-terminated name and a writable statx
        // buffer; statx fills it only on success.
        let rc = unsafe {
            libc::statx(
                dir.fd.as_raw_fd(),
                c.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
                0,
                st.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return false;
        }
        // SAFETY: statx succeeded and initialised the buffer (it was zeroed before, too).
        let st = unsafe { st.assume_init() };
        let root = libc::STATX_ATTR_MOUNT_ROOT as u64;
        st.stx_attributes_mask & root != 0 && st.stx_attributes & root != 0
    }
}

#[cfg(target_os = "macos")]
mod sys {
    use super::{Dir, read_sized};
    use nix::libc;
    use std::ffi::{CString, OsStr};
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;

    pub fn xattrs(file: &File) -> io::Result<Vec<(CString, Vec<u8>)>> {
        let fd = file.as_raw_fd();
        // SAFETY: `fd` is open; the buffer and length come from read_sized.
        let names = read_sized(|buf, len| unsafe { libc::flistxattr(fd, buf.cast(), len, 0) });
        super::collect_xattrs(names, |name| {
            // SAFETY: as above; `name` is NUL-terminated.
            read_sized(|buf, len| unsafe {
                libc::fgetxattr(fd, name.as_ptr(), buf.cast(), len, 0, 0)
            })
        })
    }

    pub fn set_xattr(file: &File, name: &CString, value: &[u8]) -> io::Result<()> {
        super::set_xattr_with(file, name, value, |fd, name, value, len| {
            // SAFETY: an open descriptor, a NUL-terminated name, `value` readable for `len`
            // bytes.
            unsafe { libc::fsetxattr(fd, name, value, len, 0, 0) }
        })
    }

    /// macOS has no bind-mounted files.
    pub fn is_mount_root(_dir: &Dir, _name: &OsStr) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn atomic_write_leaves_no_temporary_files_and_ignores_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o077));
        write_atomic(&p, b"one", 0o644, true).unwrap();
        nix::sys::stat::umask(old);
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o644);
        write_atomic(&p, b"two", 0o600, false).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(names(dir.path()), ["f"]);
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn replace_keeps_mode_and_xattrs_and_refuses_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("resolv.conf");
        std::fs::write(&p, "nameserver 10.0.0.1\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let name = CString::new("user.dockroute-test").unwrap();
        let f = File::open(&p).unwrap();
        let xattrs = sys::set_xattr(&f, &name, b"kept").is_ok();
        replace_contents(&p, b"short\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"short\n");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o640);
        if xattrs {
            let attrs = Attrs::of(&File::open(&p).unwrap()).unwrap();
            assert!(
                attrs.xattrs.contains(&(name, b"kept".to_vec())),
                "{attrs:?}"
            );
        }

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(replace_contents(&link, b"x").is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"short\n");
        assert_eq!(names(dir.path()), ["link", "resolv.conf"]);
    }

    #[test]
    fn a_symlinked_directory_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        assert!(write_atomic(&dir.path().join("link/f"), b"x", 0o644, false).is_err());
        assert!(names(&real).is_empty());
    }

    #[test]
    fn in_place_write_truncates_a_longer_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "a much longer old content\n").unwrap();
        let d = Dir::open(dir.path()).unwrap();
        write_in_place(&d, OsStr::new("f"), b"new\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new\n");
    }

    #[test]
    fn sweep_removes_only_our_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for n in [".dockroute-Ab12Cd", ".dockroute-zzzzzz"] {
            std::fs::write(d.join(n), "left").unwrap();
        }
        for n in [
            ".dockroute-short",
            ".dockroute-toolong1",
            "dockroute-Ab12Cd",
            "keep",
        ] {
            std::fs::write(d.join(n), "keep").unwrap();
        }
        std::fs::create_dir(d.join(".dockroute-dir123")).unwrap();
        std::os::unix::fs::symlink(d.join("keep"), d.join(".dockroute-link12")).unwrap();
        let mut kept = vec![
            ".dockroute-dir123",
            ".dockroute-link12",
            ".dockroute-short",
            ".dockroute-toolong1",
            "dockroute-Ab12Cd",
            "keep",
        ];
        if nix::unistd::geteuid().is_root() {
            // another user's file of that name is not ours
            std::fs::write(d.join(".dockroute-user01"), "theirs").unwrap();
            std::os::unix::fs::chown(d.join(".dockroute-user01"), Some(65534), None).unwrap();
            kept.insert(4, ".dockroute-user01");
        }
        assert_eq!(Dir::open(d).unwrap().sweep().unwrap(), 2);
        assert_eq!(names(d), kept);
        assert!(is_temp_name(&temp_name()));
    }
}
