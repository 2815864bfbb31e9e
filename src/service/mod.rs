//! What `dockroute install` puts on the system and `dockroute uninstall` takes away: the boot job
//! that runs `dockroute watch` (a systemd unit on Linux, a launchd job on macOS) and the VPN
//! clients' post-connect hooks.
//!
//! Every file carries a dockroute header, and a file without it is never replaced or removed.
//! Nothing is written unless every target checks out first. Files are written below the install
//! root through directories opened without following symlinks ([`dirs`]). The job and the hooks
//! run the binary as root, so they are installed only for a binary that only root can replace.

pub mod dirs;
pub mod hooks;
pub mod launchd;
pub mod systemd;

use crate::fsutil::Marked;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Every file dockroute installs starts (after an optional shebang) with this.
pub const MARK: &str = "# dockroute: ";
/// The placeholder for the binary's absolute path in the sources of truth.
const BIN: &str = "@DOCKROUTE@";

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Refused(String),
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{0}")]
    Tool(String),
}

/// The service manager that runs the boot job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    Systemd,
    Launchd,
}

impl Init {
    /// The running OS's.
    pub fn native() -> Init {
        if cfg!(target_os = "macos") {
            Init::Launchd
        } else {
            Init::Systemd
        }
    }

    pub fn place(self) -> Place {
        match self {
            Init::Systemd => systemd::PLACE,
            Init::Launchd => launchd::PLACE,
        }
    }

    /// The job file's text for the binary at `bin`.
    pub fn render(self, bin: &Path) -> Result<String, ServiceError> {
        match self {
            Init::Systemd => systemd::render(bin),
            Init::Launchd => launchd::render(bin),
        }
    }

    /// The commands to run by hand when dockroute did not tell the service manager.
    pub fn manual_steps(self) -> Vec<String> {
        match self {
            Init::Systemd => systemd::manual_steps(),
            Init::Launchd => launchd::manual_steps(),
        }
    }
}

/// Where one file goes, relative to the install root.
#[derive(Clone, Copy)]
pub struct Place {
    /// For people: who runs it.
    pub client: &'static str,
    pub dir: &'static str,
    pub file: &'static str,
    pub mode: u32,
    /// Create the directory when it is missing (the job); otherwise a missing directory means
    /// its client is not installed, and the file is skipped (the hooks).
    pub create_dir: bool,
    pub is_ours: fn(&str) -> bool,
}

impl Place {
    pub fn path(&self, root: &Path) -> PathBuf {
        root.join(self.dir).join(self.file)
    }
}

/// A file to install.
pub struct Target {
    pub place: Place,
    pub body: String,
}

/// What happened to one file.
#[derive(Debug, Serialize)]
pub struct FileResult {
    pub client: &'static str,
    pub path: PathBuf,
    /// installed, updated, unchanged, skipped (no such directory), removed, absent, left alone
    pub action: &'static str,
}

/// The binary path as a job file may name it: absolute, UTF-8, and nothing a unit file or a shell
/// would read specially (no white space, quotes, backslash, `%` or `$`).
fn job_binary(bin: &Path) -> Result<&str, ServiceError> {
    let s = bin.to_str().unwrap_or("");
    if !bin.is_absolute()
        || s.is_empty()
        || s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || "\"'\\%$".contains(c))
    {
        return Err(ServiceError::Refused(format!(
            "cannot install a job for the binary path {:?}: use an absolute path without spaces, quotes, '%' or '$' (e.g. /usr/local/bin/dockroute)",
            bin
        )));
    }
    Ok(s)
}

/// The job and the hooks run `bin` as root: only a binary that only root can replace may be
/// named in them (the file and every directory above it root's, writable by nobody else).
pub fn check_binary(bin: &Path) -> Result<(), ServiceError> {
    crate::trust::check_file(bin).map_err(|e| {
        ServiceError::Refused(format!(
            "refusing to install a job or hooks that run {} as root: {e}, so a user could replace it and run code as root; install dockroute where only root can change it (`sudo install -m 755 {} /usr/local/bin/`) and run that copy's install (`sudo /usr/local/bin/dockroute install`)",
            bin.display(),
            bin.display()
        ))
    })
}

/// The files `install` writes: the job for `init` and, with `hooks`, the hooks.
pub fn targets(init: Init, hooks: bool, bin: &Path) -> Result<Vec<Target>, ServiceError> {
    let mut out = vec![Target {
        place: init.place(),
        body: init.render(bin)?,
    }];
    if hooks {
        for h in hooks::HOOKS {
            out.push(Target {
                place: h.place(),
                body: hooks::render(h, bin)?,
            });
        }
    }
    Ok(out)
}

/// Every place `uninstall` looks at: both jobs and every hook.
pub fn places() -> Vec<Place> {
    let mut out = vec![systemd::PLACE, launchd::PLACE];
    out.extend(hooks::HOOKS.iter().map(|h| h.place()));
    out
}

/// Whether `p` is a boot job's place (not a hook's).
fn is_job(p: &Place) -> bool {
    [systemd::PLACE, launchd::PLACE]
        .iter()
        .any(|j| j.dir == p.dir && j.file == p.file)
}

/// Why an existing file at a target is left alone.
fn refusal(path: &Path, not_regular: bool) -> ServiceError {
    ServiceError::Refused(if not_regular {
        format!(
            "{} exists and is not a regular file; dockroute leaves it alone",
            path.display()
        )
    } else {
        format!(
            "{} exists and is not dockroute's; remove it first",
            path.display()
        )
    })
}

/// Install `targets` under `root`. Every target is checked before anything is written.
pub fn install(root: &Path, targets: &[Target]) -> Result<Vec<FileResult>, ServiceError> {
    let top = dirs::Dir::open_root(root)?;
    let mut plan = Vec::new();
    for t in targets {
        let p = &t.place;
        let path = p.path(root);
        let action = match top.open(p.dir, false)? {
            None if !p.create_dir => "skipped (no such directory)",
            None => "installed",
            Some(d) => match d.read_marked(p.file, p.is_ours)? {
                Marked::Missing => "installed",
                Marked::Ours(c) if c == t.body => "unchanged",
                Marked::Ours(_) => "updated",
                Marked::NotRegular => return Err(refusal(&path, true)),
                Marked::Foreign => return Err(refusal(&path, false)),
            },
        };
        plan.push((t, path, action));
    }
    let mut out = Vec::new();
    for (t, path, action) in plan {
        if matches!(action, "installed" | "updated") {
            let p = &t.place;
            let d = top
                .open(p.dir, p.create_dir)?
                .ok_or_else(|| ServiceError::Io {
                    path: root.join(p.dir),
                    err: std::io::ErrorKind::NotFound.into(),
                })?;
            d.write(p.file, t.body.as_bytes(), p.mode)?;
        }
        out.push(FileResult {
            client: t.place.client,
            path,
            action,
        });
    }
    Ok(out)
}

/// Remove the files dockroute installed at `places` under `root` (files without its header stay,
/// with a warning).
pub fn uninstall(root: &Path, places: &[Place]) -> Result<Vec<FileResult>, ServiceError> {
    let top = dirs::Dir::open_root(root)?;
    let mut out = Vec::new();
    for p in places {
        let path = p.path(root);
        let dir = match top.open(p.dir, false) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("{e}");
                out.push(FileResult {
                    client: p.client,
                    path,
                    action: "left alone (not dockroute's)",
                });
                continue;
            }
        };
        let action = match dir {
            None => "absent",
            Some(d) => match d.read_marked(p.file, p.is_ours)? {
                Marked::Missing => "absent",
                Marked::Ours(_) => {
                    d.remove(p.file)?;
                    "removed"
                }
                m => {
                    let what = if m == Marked::NotRegular {
                        "is not a regular file"
                    } else {
                        "does not carry dockroute's header"
                    };
                    tracing::warn!(
                        "{} {what}: it is not dockroute's, so uninstall leaves it in place",
                        path.display()
                    );
                    "left alone (not dockroute's)"
                }
            },
        };
        // the other OS's job is listed only when it is there (`install --init` put it there)
        if action == "absent" && is_job(p) && p.dir != Init::native().place().dir {
            continue;
        }
        out.push(FileResult {
            client: p.client,
            path,
            action,
        });
    }
    Ok(out)
}

/// Run a system tool (`systemctl`, `launchctl`) as [`crate::exec`] runs every program: found
/// only in the system directories, trusted, with a cleared environment. Returns the command line
/// for the report.
#[cfg(any(target_os = "linux", target_os = "macos"))]
fn run_tool(program: &str, args: &[&str]) -> Result<String, ServiceError> {
    let line = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = crate::exec::output(program, &args, None)
        .map_err(|e| ServiceError::Tool(format!("{line}: {e}")))?;
    if out.code != Some(0) {
        let first = out
            .stderr
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("failed");
        return Err(ServiceError::Tool(format!("{line}: {}", first.trim())));
    }
    tracing::info!("ran {line}");
    Ok(line)
}

/// Whether this system's service manager for `init` can be told now (root is `/`, the init is
/// the running OS's and is running).
pub fn manager_running(init: Init) -> bool {
    match init {
        #[cfg(target_os = "linux")]
        Init::Systemd => systemd::running(),
        #[cfg(target_os = "macos")]
        Init::Launchd => true,
        _ => false,
    }
}

/// Load and start the installed job. `reinstall`: the job file was there before.
pub fn activate(init: Init, root: &Path, reinstall: bool) -> Result<Vec<String>, ServiceError> {
    let _ = (root, reinstall);
    match init {
        #[cfg(target_os = "linux")]
        Init::Systemd => systemd::activate(reinstall),
        #[cfg(target_os = "macos")]
        Init::Launchd => launchd::activate(&init.place().path(root), reinstall),
        #[allow(unreachable_patterns)]
        _ => Ok(Vec::new()),
    }
}

/// Whether the service manager has the job enabled or running, so `uninstall` must stop it
/// before `down` (a running `watch` would put back what `down` removes). systemd is asked about
/// the unit by name, wherever its file lives (the Debian package's is in /lib/systemd/system);
/// for launchd it is the job file `install` wrote.
pub fn in_use(init: Init, root: &Path) -> Result<bool, ServiceError> {
    match init {
        #[cfg(target_os = "linux")]
        Init::Systemd => systemd::in_use(),
        _ => Ok(std::fs::symlink_metadata(init.place().path(root)).is_ok()),
    }
}

/// Stop the job (before its file is removed).
pub fn deactivate(init: Init) -> Result<Vec<String>, ServiceError> {
    match init {
        #[cfg(target_os = "linux")]
        Init::Systemd => systemd::deactivate(),
        #[cfg(target_os = "macos")]
        Init::Launchd => launchd::deactivate(),
        #[allow(unreachable_patterns)]
        _ => Ok(Vec::new()),
    }
}

/// After the job file is removed.
pub fn forget(init: Init) -> Result<Vec<String>, ServiceError> {
    match init {
        #[cfg(target_os = "linux")]
        Init::Systemd => systemd::forget(),
        #[allow(unreachable_patterns)]
        _ => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const BIN_PATH: &str = "/usr/bin/dockroute";

    fn hook_targets() -> Vec<Target> {
        let mut t = targets(Init::Systemd, true, Path::new(BIN_PATH)).unwrap();
        t.remove(0);
        t
    }

    #[test]
    fn hooks_go_where_directories_exist_and_only_its_own_are_removed() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc/NetworkManager/dispatcher.d")).unwrap();
        std::fs::create_dir_all(root.path().join("etc/vpnc/post-connect.d")).unwrap();
        let r = install(root.path(), &hook_targets()).unwrap();
        let actions: Vec<&str> = r.iter().map(|r| r.action).collect();
        assert_eq!(
            actions,
            ["installed", "installed", "skipped (no such directory)"]
        );
        assert!(!root.path().join("etc/openvpn").exists());
        let nm = root
            .path()
            .join("etc/NetworkManager/dispatcher.d/90-dockroute");
        assert_eq!(
            std::fs::metadata(&nm).unwrap().permissions().mode() & 0o777,
            0o755
        );
        let again = install(root.path(), &hook_targets()).unwrap();
        assert_eq!(again[0].action, "unchanged");

        let foreign = root.path().join("etc/NetworkManager/dispatcher.d/50-other");
        std::fs::write(&foreign, "#!/bin/sh\nexit 0\n").unwrap();
        let hook_places: Vec<Place> = hooks::HOOKS.iter().map(|h| h.place()).collect();
        let gone = uninstall(root.path(), &hook_places).unwrap();
        let actions: Vec<&str> = gone.iter().map(|r| r.action).collect();
        assert_eq!(actions, ["removed", "removed", "absent"]);
        assert!(!nm.exists());
        assert!(foreign.exists());
    }

    #[test]
    fn a_foreign_file_at_a_target_stops_everything_before_any_write() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc/NetworkManager/dispatcher.d")).unwrap();
        std::fs::create_dir_all(root.path().join("etc/vpnc/post-connect.d")).unwrap();
        std::fs::write(
            root.path().join("etc/vpnc/post-connect.d/dockroute"),
            "echo mine\n",
        )
        .unwrap();
        let all = targets(Init::Systemd, true, Path::new(BIN_PATH)).unwrap();
        let e = install(root.path(), &all).unwrap_err();
        assert!(e.to_string().contains("is not dockroute's"), "{e}");
        assert!(
            !root
                .path()
                .join("etc/NetworkManager/dispatcher.d/90-dockroute")
                .exists()
        );
        assert!(!root.path().join("etc/systemd").exists());
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/vpnc/post-connect.d/dockroute")).unwrap(),
            "echo mine\n"
        );
        // uninstall leaves it too
        let r = uninstall(root.path(), &places()).unwrap();
        assert!(r.iter().any(|r| r.action == "left alone (not dockroute's)"));
        assert!(
            root.path()
                .join("etc/vpnc/post-connect.d/dockroute")
                .exists()
        );
    }

    #[test]
    fn a_changed_job_is_updated_and_a_foreign_unit_is_never_replaced() {
        let root = tempfile::tempdir().unwrap();
        let one = targets(Init::Systemd, false, Path::new("/usr/bin/dockroute")).unwrap();
        assert_eq!(install(root.path(), &one).unwrap()[0].action, "installed");
        let two = targets(Init::Systemd, false, Path::new("/usr/local/bin/dockroute")).unwrap();
        assert_eq!(install(root.path(), &two).unwrap()[0].action, "updated");
        let unit = root.path().join("etc/systemd/system/dockroute.service");
        std::fs::write(&unit, "[Service]\nExecStart=/bin/true\n").unwrap();
        assert!(install(root.path(), &two).is_err());
        assert_eq!(
            std::fs::read_to_string(&unit).unwrap(),
            "[Service]\nExecStart=/bin/true\n"
        );
    }
}
