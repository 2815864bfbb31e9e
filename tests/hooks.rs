//! The post-connect hooks, installed by `dockroute install --hooks` under a private root and run
//! the way their VPN client runs them, inside the lab: each one makes the container reachable.
#![cfg(target_os = "linux")]

mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The binary copied where only root can change it (`install` refuses any other; the checkout
/// may live where a user can write).
fn trusted_bin() -> (tempfile::TempDir, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("dockroute");
    copy_exe(std::path::Path::new(BIN), &bin, 0o755);
    (dir, bin)
}

fn install(bin: &Path, root: &Path) -> Run {
    let out = Command::new(bin)
        .args(["install", "--hooks", "--root"])
        .arg(root)
        .output()
        .unwrap();
    Run::from(out)
}

/// Run a hook script in the lab's host namespace as its client would, with the lab's config,
/// and a PATH whose first directory holds look-alikes of `setsid` and `systemd-cat` that leave a
/// mark: the hook must not run them. A `sourced` hook (vpnc-script's) is read into the client's
/// shell, whose PATH it must leave as it was.
fn run_hook(lab: &Lab, script: &Path, args: &[&str], sourced: bool) {
    std::fs::write(lab.config(), format!("vm_ip = \"{VM_IP}\"\n")).unwrap();
    let trap = lab.dir.path().join("trap");
    std::fs::create_dir_all(&trap).unwrap();
    let mark = lab.dir.path().join("ran-from-path");
    for name in ["setsid", "systemd-cat"] {
        let body = format!("touch '{}'\nexec /usr/bin/{name} \"$@\"", mark.display());
        write_script(&trap.join(name), &body, 0o755);
    }
    let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", trap.display());
    let after = lab.dir.path().join("path-after");
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &lab.host(), "sh"]);
    if sourced {
        c.arg("-c")
            .arg(r#". "$0"; printf %s "$PATH" >"$1""#)
            .arg(script)
            .arg(&after);
    } else {
        c.arg(script).args(args);
    }
    let start = Instant::now();
    let status = c
        .env("PATH", &path)
        .env("DOCKROUTE_CONFIG", lab.config())
        .env("DOCKROUTE_STATE_DIR", lab.state_dir())
        .env(
            "DBUS_SYSTEM_BUS_ADDRESS",
            "unix:path=/nonexistent/dockroute-test-bus",
        )
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "the hook held up its client"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !mark.exists(),
        "the hook ran a program found through its PATH"
    );
    if sourced {
        let left = std::fs::read_to_string(&after).unwrap();
        assert_eq!(left, path, "the sourced hook changed its client's PATH");
    }
}

fn wait_until_reachable(lab: &Lab) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.tagged() < 5 {
        assert!(
            Instant::now() < deadline,
            "the hook did not run dockroute up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(lab.reaches_container());
}

#[test]
fn hooks_install_where_their_clients_look_and_run_up() {
    if !privileged() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    for d in [
        "etc/NetworkManager/dispatcher.d",
        "etc/vpnc/post-connect.d",
        "etc/openvpn",
    ] {
        std::fs::create_dir_all(root.path().join(d)).unwrap();
    }
    let (_d, bin) = trusted_bin();
    let out = install(&bin, root.path()).ok();
    assert_eq!(
        out.stdout.matches("installed: ").count(),
        4, // and the systemd unit
        "{}",
        out.stdout
    );
    let nm = root
        .path()
        .join("etc/NetworkManager/dispatcher.d/90-dockroute");
    let vpnc = root.path().join("etc/vpnc/post-connect.d/dockroute");
    let ovpn = root.path().join("etc/openvpn/dockroute-route-up");

    // NetworkManager: nothing on a link going down, `up` on vpn-up
    let lab = Lab::new();
    run_hook(&lab, &nm, &["tun0", "down"], false);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lab.tagged(), 0, "the hook ran up on a down event");
    run_hook(&lab, &nm, &["tun0", "vpn-up"], false);
    wait_until_reachable(&lab);

    let lab = Lab::new();
    run_hook(&lab, &vpnc, &[], true);
    wait_until_reachable(&lab);

    let lab = Lab::new();
    run_hook(&lab, &ovpn, &[], false);
    wait_until_reachable(&lab);

    let again = install(&bin, root.path()).ok();
    assert_eq!(
        again.stdout.matches("unchanged: ").count(),
        4,
        "{}",
        again.stdout
    );
    let gone = Command::new(BIN)
        .args(["uninstall", "--root"])
        .arg(root.path())
        .output()
        .unwrap();
    assert!(gone.status.success());
    assert!(!nm.exists() && !vpnc.exists() && !ovpn.exists());
}

#[test]
fn install_refuses_a_foreign_file_and_writes_nothing() {
    if !privileged() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc/NetworkManager/dispatcher.d")).unwrap();
    std::fs::create_dir_all(root.path().join("etc/openvpn")).unwrap();
    std::fs::write(
        root.path().join("etc/openvpn/dockroute-route-up"),
        "#!/bin/sh\necho mine\n",
    )
    .unwrap();
    let (_d, bin) = trusted_bin();
    let run = install(&bin, root.path());
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.starts_with("error: ") && run.stderr.lines().count() == 1,
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("is not dockroute's"), "{}", run.stderr);
    assert!(
        !root
            .path()
            .join("etc/NetworkManager/dispatcher.d/90-dockroute")
            .exists()
    );
    assert_eq!(
        std::fs::read_to_string(root.path().join("etc/openvpn/dockroute-route-up")).unwrap(),
        "#!/bin/sh\necho mine\n"
    );
    assert!(!root.path().join("etc/systemd").exists());
}
