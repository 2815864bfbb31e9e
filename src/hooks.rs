//! Post-connect hooks for VPN clients: `dockroute install --hooks` puts each one where its client
//! looks for it, if that directory exists; `dockroute uninstall` removes them. The scripts'
//! source is scripts/hooks/ (built into the binary); every installed file carries a header line
//! naming dockroute, and a file without it is never replaced or removed.

use crate::fsutil::{self, Marked};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Every hook file starts (after an optional shebang) with this.
pub const MARK: &str = "# dockroute: ";
const BIN: &str = "@DOCKROUTE@";

pub struct Hook {
    /// For people: which client runs it.
    pub client: &'static str,
    /// The directory (relative to the root) that must exist for the hook to be installed.
    pub dir: &'static str,
    pub file: &'static str,
    pub mode: u32,
    template: &'static str,
}

pub const HOOKS: &[Hook] = &[
    Hook {
        client: "NetworkManager (vpn-up and up events)",
        dir: "etc/NetworkManager/dispatcher.d",
        file: "90-dockroute",
        mode: 0o755,
        template: include_str!("../scripts/hooks/nm-dispatcher"),
    },
    Hook {
        client: "vpnc-script (openconnect, vpnc)",
        dir: "etc/vpnc/post-connect.d",
        file: "dockroute",
        mode: 0o644,
        template: include_str!("../scripts/hooks/vpnc-post-connect"),
    },
    Hook {
        client: "OpenVPN (route-up; add it to the client config)",
        dir: "etc/openvpn",
        file: "dockroute-route-up",
        mode: 0o755,
        template: include_str!("../scripts/hooks/openvpn-route-up"),
    },
];

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{0}")]
    Refused(String),
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HookError + '_ {
    move |err| HookError::Io {
        path: path.to_path_buf(),
        err,
    }
}

/// The hook's text for the dockroute binary at `bin`.
pub fn render(h: &Hook, bin: &Path) -> Result<String, HookError> {
    let b = bin.to_str().unwrap_or("");
    if !bin.is_absolute() || b.is_empty() || b.contains(['\'', '\n', '\\']) {
        return Err(HookError::Refused(format!(
            "cannot write hooks for the binary path {}: use an absolute path without quotes",
            bin.display()
        )));
    }
    Ok(h.template.replace(BIN, b))
}

/// Whether a file's content says it is a dockroute hook.
pub fn is_ours(content: &str) -> bool {
    content.lines().take(2).any(|l| l.starts_with(MARK))
}

/// What happened to one hook.
#[derive(Debug, Serialize)]
pub struct HookResult {
    pub client: &'static str,
    pub path: PathBuf,
    /// installed, unchanged, skipped (no such directory), removed, absent
    pub action: &'static str,
}

/// Check one target: Ok(Some(current content)) when it is ours, Ok(None) when absent.
fn existing(path: &Path) -> Result<Option<String>, HookError> {
    match fsutil::read_marked(path, is_ours).map_err(io(path))? {
        Marked::Missing => Ok(None),
        Marked::Ours(c) => Ok(Some(c)),
        Marked::NotRegular => Err(HookError::Refused(format!(
            "{} exists and is not a regular file; dockroute leaves it alone",
            path.display()
        ))),
        Marked::Foreign => Err(HookError::Refused(format!(
            "{} exists and is not dockroute's; remove it first",
            path.display()
        ))),
    }
}

/// Install the hooks whose directory exists under `root`; `write: false` only reports. Every
/// target is checked before anything is written.
pub fn install(root: &Path, bin: &Path, write: bool) -> Result<Vec<HookResult>, HookError> {
    let mut plan = Vec::new();
    for h in HOOKS {
        let dir = root.join(h.dir);
        let path = dir.join(h.file);
        if !dir.is_dir() {
            plan.push((h, path, None, "skipped (no such directory)"));
            continue;
        }
        let body = render(h, bin)?;
        let action = match existing(&path)? {
            Some(c) if c == body => "unchanged",
            _ => "installed",
        };
        plan.push((h, path, Some(body), action));
    }
    let mut out = Vec::new();
    for (h, path, body, action) in plan {
        if write
            && action == "installed"
            && let Some(body) = body
        {
            fsutil::write_atomic(&path, body.as_bytes(), h.mode, true).map_err(io(&path))?;
        }
        out.push(HookResult {
            client: h.client,
            path,
            action: if write || action != "installed" {
                action
            } else {
                "would install"
            },
        });
    }
    Ok(out)
}

/// Remove the hooks dockroute installed under `root` (files without its header stay).
pub fn uninstall(root: &Path) -> Result<Vec<HookResult>, HookError> {
    let mut out = Vec::new();
    for h in HOOKS {
        let path = root.join(h.dir).join(h.file);
        let action = match existing(&path) {
            Ok(Some(_)) => {
                std::fs::remove_file(&path).map_err(io(&path))?;
                "removed"
            }
            Ok(None) => "absent",
            Err(e) => {
                tracing::warn!("{e}");
                "left alone (not dockroute's)"
            }
        };
        out.push(HookResult {
            client: h.client,
            path,
            action,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn every_hook_names_dockroute_and_gets_the_binary_path() {
        for h in HOOKS {
            let body = render(h, Path::new("/usr/local/bin/dockroute")).unwrap();
            assert!(is_ours(&body), "{}", h.file);
            assert!(body.contains("'/usr/local/bin/dockroute' up"), "{body}");
            assert!(!body.contains(BIN));
        }
        assert!(render(&HOOKS[0], Path::new("relative/dockroute")).is_err());
        assert!(render(&HOOKS[0], Path::new("/tmp/it's/dockroute")).is_err());
    }

    #[test]
    fn installs_where_directories_exist_and_removes_only_its_own() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc/NetworkManager/dispatcher.d")).unwrap();
        std::fs::create_dir_all(root.path().join("etc/vpnc/post-connect.d")).unwrap();
        let bin = Path::new("/usr/bin/dockroute");
        let dry = install(root.path(), bin, false).unwrap();
        assert_eq!(dry[0].action, "would install");
        assert!(
            !root
                .path()
                .join("etc/NetworkManager/dispatcher.d/90-dockroute")
                .exists()
        );
        let r = install(root.path(), bin, true).unwrap();
        let actions: Vec<&str> = r.iter().map(|r| r.action).collect();
        assert_eq!(
            actions,
            ["installed", "installed", "skipped (no such directory)"]
        );
        let nm = root
            .path()
            .join("etc/NetworkManager/dispatcher.d/90-dockroute");
        assert_eq!(
            std::fs::metadata(&nm).unwrap().permissions().mode() & 0o777,
            0o755
        );
        let again = install(root.path(), bin, true).unwrap();
        assert_eq!(again[0].action, "unchanged");

        let foreign = root.path().join("etc/NetworkManager/dispatcher.d/50-other");
        std::fs::write(&foreign, "#!/bin/sh\nexit 0\n").unwrap();
        let gone = uninstall(root.path()).unwrap();
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
        let e = install(root.path(), Path::new("/usr/bin/dockroute"), true).unwrap_err();
        assert!(e.to_string().contains("is not dockroute's"), "{e}");
        assert!(
            !root
                .path()
                .join("etc/NetworkManager/dispatcher.d/90-dockroute")
                .exists()
        );
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/vpnc/post-connect.d/dockroute")).unwrap(),
            "echo mine\n"
        );
    }
}
