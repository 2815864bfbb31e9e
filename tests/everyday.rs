//! Issue 11, everyday use: what a user who forgot about dockroute hits first. Each test is one
//! point of the issue, in the lab.
#![cfg(target_os = "linux")]

mod common;
use common::*;

/// Point 10: a veth called `tun0p` is not an OpenVPN tunnel; a real tun device called `corp0` is.
#[test]
fn tunnels_are_recognised_by_what_they_are() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    lab.ip("link add tun0 type veth peer name tun0p");
    lab.ip("addr add 10.66.0.2/24 dev tun0p");
    lab.ip("link set tun0p up");
    lab.ip("tuntap add dev corp0 mode tun");
    lab.ip("addr add 10.77.0.2/24 dev corp0");
    lab.ip("link set corp0 up");
    let st = lab.dockroute(&["--json", "status"]).json();
    let names: Vec<&str> = st["vpn"]["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["corp0"], "{}", st["vpn"]);
    let text = lab.dockroute(&["status"]).stdout;
    assert!(text.contains("corp0 (tun/tap device"), "{text}");
    assert!(!text.contains("tun0p"), "{text}");
}

/// Point 4: the link network's own network and broadcast addresses, and the host's address, are
/// refused with one line before anything changes.
#[test]
fn network_broadcast_and_own_address_are_not_a_vm() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let before = lab.snapshot();
    for (ip, why) in [
        ("192.168.99.0", "network address"),
        ("192.168.99.255", "broadcast address"),
        ("192.168.99.1", "own address"),
    ] {
        for args in [
            vec!["up", "--vm-ip", ip],
            vec![
                "up",
                "--vm-ip",
                ip,
                "--interface",
                "vboxnet0",
                "--wait",
                "1",
            ],
        ] {
            let run = lab.dockroute(&args);
            assert_eq!(run.code, 1, "{args:?}: {}{}", run.stdout, run.stderr);
            assert!(
                run.stderr.starts_with("error: ")
                    && run.stderr.lines().count() == 1
                    && run.stderr.contains(why),
                "{args:?}: {}",
                run.stderr
            );
            assert_eq!(lab.snapshot(), before, "{args:?} changed the routes");
            assert!(!exists(&lab.state_dir().join("state.json")));
        }
    }
}

/// Point 3: with a preference-less `suppress_prefixlength 0` rule and a lower-metric route in
/// main (the README's known limit), `up` cannot win: it says so, names the route that wins, and
/// exits 3; `status` exits 3 too. Once the route is gone both exit 0.
#[test]
fn up_and_status_say_when_the_container_is_not_reachable() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    lab.add_tunnel("tun0", "10.66.0.2/24");
    up(&lab);
    lab.ip("rule add table main suppress_prefixlength 0");
    lab.ip("route add 172.17.0.0/16 dev tun0 metric 0");
    assert!(!lab.reaches_container());
    // With DNS (resolv-conf), the VM's server is unreachable too: `up` refuses it, rolls back,
    // and names the route that takes the subnet.
    let run = lab.dockroute(&["up", "--vm-ip", VM_IP]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("does not answer") && run.stderr.contains("172.17.0.0/16 dev tun0"),
        "{}",
        run.stderr
    );
    // Routes only: applied, but not working: degraded.
    let run = lab.dockroute(&["up", "--vm-ip", VM_IP, "--dns", "off"]);
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("172.17.0.1") && run.stderr.contains("172.17.0.0/16 dev tun0"),
        "{}",
        run.stderr
    );
    let json = lab.dockroute(&["--json", "up", "--vm-ip", VM_IP, "--dns", "off"]);
    assert_eq!(json.code, 3);
    assert_eq!(json.json()["probes"][0]["ok"], false, "{}", json.stdout);
    let st = lab.dockroute(&["status"]);
    assert_eq!(st.code, 3, "{}{}", st.stdout, st.stderr);
    assert!(st.stderr.contains("dev tun0"), "{}", st.stderr);
    // a name that does not resolve is degraded too
    lab.ip("route del 172.17.0.0/16 dev tun0 metric 0");
    assert!(lab.reaches_container());
    lab.dockroute(&["status"]).ok();
    lab.dockroute(&["up", "--vm-ip", VM_IP]).ok();
    let st = lab.dockroute(&["status", "--check-name", "nosuch.invalid"]);
    assert_eq!(st.code, 3, "{}{}", st.stdout, st.stderr);
    assert!(st.stderr.contains("nosuch.invalid"), "{}", st.stderr);
}

/// Point 6: without root, `up --dry-run` shows the routes and DNS it would set and says what it
/// could not read (the firewall needs root), exit 0.
#[test]
fn dry_run_without_root_shows_what_it_can() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let before = lab.snapshot();
    let run = lab.as_nobody(&["up", "--dry-run", "--vm-ip", VM_IP, "--dns", "resolv-conf"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("would apply 5 change(s)"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("dns: would set"), "{}", run.stdout);
    assert!(
        run.stdout.contains("firewall: not checked") && run.stdout.contains("root"),
        "{}",
        run.stdout
    );
    let json = lab.as_nobody(&["--json", "up", "--dry-run", "--vm-ip", VM_IP]);
    assert_eq!(json.code, 0, "{}", json.stderr);
    assert!(
        json.json()["firewall_unread"].as_str().is_some(),
        "{}",
        json.stdout
    );
    assert_eq!(lab.snapshot(), before);
}

/// Issue 16, point 10: `down --dry-run` works without root, as `up --dry-run` does: it shows what
/// it would remove; where no record says dockroute put nothing in the firewall, it says the
/// firewall was not checked (reading it needs root), exit 0.
#[test]
fn down_dry_run_without_root_shows_what_it_can() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let run = lab.as_nobody(&["down", "--dry-run"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("nothing to change")
            && run.stdout.contains("firewall: not checked")
            && run.stdout.contains("root"),
        "{}",
        run.stdout
    );
    up(&lab);
    let after_up = lab.snapshot();
    let run = lab.as_nobody(&["down", "--dry-run"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    // the routes are found by their tag (the record may be root's alone to read)
    assert!(
        run.stdout
            .contains("down --dry-run: would apply 5 change(s)"),
        "{}",
        run.stdout
    );
    assert_eq!(lab.snapshot(), after_up);
}

/// Issue 16, point 10: with no VM anywhere, `status` says there is nothing to check the firewall
/// for (not that nothing blocks the VM), and `status --json` says why it is degraded; with a VM
/// reached, `degraded` is null.
#[test]
fn status_without_a_vm_says_so_and_json_says_degraded() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    up(&lab);
    let st = lab.dockroute(&["--json", "status"]).ok().json();
    assert!(st["degraded"].is_null(), "{st}");
    lab.dockroute(&["down"]).ok();
    lab.ip("link del vboxnet0");
    let run = lab.dockroute(&["status"]);
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
    assert!(
        !run.stdout.contains("nothing blocks the VM")
            && run.stdout.contains("there is no VM to check it for"),
        "{}",
        run.stdout
    );
    let json = lab.dockroute(&["--json", "status"]);
    assert_eq!(json.code, 3);
    let degraded = json.json()["degraded"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(degraded.starts_with("no VM"), "{}", json.stdout);
}

/// `dockroute install --hooks --root ROOT` with the lab's config and state dir in its environment
/// (as the hooks will have them), through a root-only copy of the binary.
fn install_hooks(lab: &Lab, root: &std::path::Path) -> Run {
    let bin = lab.dir.path().join("trusted-dockroute");
    if !bin.exists() {
        copy_exe(std::path::Path::new(BIN), &bin, 0o755);
    }
    let out = std::process::Command::new(&bin)
        .args(["install", "--hooks", "--root"])
        .arg(root)
        .env("DOCKROUTE_CONFIG", lab.config())
        .env("DOCKROUTE_STATE_DIR", lab.state_dir())
        .output()
        .unwrap();
    Run::from(out)
}

/// Point 2: after `up --vm-ip IP` and a flushed neighbour table, what a VPN hook runs (a bare
/// `dockroute up`) re-applies the last `up`'s settings; `install --hooks` says which settings the
/// hooks will use, and warns when they cannot work.
#[test]
fn hooks_reapply_the_last_up() {
    if !privileged() {
        return;
    }
    use std::time::{Duration, Instant};
    let lab = Lab::new();
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc/openvpn")).unwrap();

    // nothing to go by yet: the hooks cannot work, and install says so
    let fresh = install_hooks(&lab, root.path()).ok();
    assert!(
        fresh.stderr.contains("no record") && fresh.stderr.contains("--vm-ip"),
        "{}{}",
        fresh.stdout,
        fresh.stderr
    );

    lab.dockroute(&["up", "--vm-ip", VM_IP, "--dns", "off"])
        .ok();
    let installed = lab.tagged();
    let resolv = std::fs::read(lab.resolv_conf()).unwrap();
    let again = install_hooks(&lab, root.path()).ok();
    assert!(
        again.stdout.contains("the last up's settings")
            && again.stdout.contains("--vm-ip 192.168.99.100"),
        "{}{}",
        again.stdout,
        again.stderr
    );
    assert!(!again.stderr.contains("WARN"), "{}", again.stderr);

    // the VPN connects: it flushes the neighbour table and dockroute's routes
    lab.ip("neigh flush all");
    lab.ip("route flush table 5017");
    lab.ip("route flush proto 100");
    assert!(!lab.reaches_container());

    // the hook, run the way OpenVPN runs it (in the background, default paths from the env)
    let hook = root.path().join("etc/openvpn/dockroute-route-up");
    let status = std::process::Command::new("unshare")
        .args(HIDE_BUS)
        .args(["ip", "netns", "exec", &lab.host(), "sh"])
        .arg(&hook)
        .env("DOCKROUTE_CONFIG", lab.config())
        .env("DOCKROUTE_STATE_DIR", lab.state_dir())
        .env_remove("DOCKER_HOST")
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.tagged() < installed {
        assert!(Instant::now() < deadline, "the hook's up did not re-apply");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(lab.reaches_container());
    // --dns off was re-applied too: resolv.conf untouched
    assert_eq!(std::fs::read(lab.resolv_conf()).unwrap(), resolv);

    // a bare `up` says where its settings come from
    lab.ip("neigh flush all");
    let bare = lab.dockroute(&["up"]).ok();
    assert!(
        bare.stdout.contains("the last up's settings"),
        "{}",
        bare.stdout
    );

    // a key in the config file says otherwise: it wins over the recorded flag
    std::fs::write(lab.config(), "subnets = [\"172.18.0.0/16\"]\n").unwrap();
    let cfg = lab.dockroute(&["--json", "up", "--dry-run"]).ok().json();
    assert_eq!(cfg["target"]["subnets"][0], "172.18.0.0/16", "{cfg}");
    assert_eq!(cfg["target"]["vm_ip"], VM_IP, "{cfg}");

    // down forgets the record, and with it the settings
    std::fs::write(lab.config(), "").unwrap();
    lab.dockroute(&["down"]).ok();
    lab.ip("neigh flush all");
    let run = lab.dockroute(&["up"]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("no live neighbour"), "{}", run.stderr);
}

/// Point 9: what used to be ignored in silence is a warning; messages that puzzled say why.
#[test]
fn silent_ignores_become_warnings() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let warned = |args: &[&str], want: &[&str]| {
        let run = lab.dockroute(args);
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
        for w in want {
            assert!(
                run.stderr.contains(w),
                "{args:?}: no {w:?} in: {}",
                run.stderr
            );
        }
    };
    let dry = ["up", "--dry-run", "--vm-ip", VM_IP];
    let with = |more: &[&'static str]| -> Vec<&str> {
        dry.iter().copied().chain(more.iter().copied()).collect()
    };
    // nothing to say about a plain dry run
    let plain = lab.dockroute(&dry);
    assert_eq!(plain.stderr, "", "{}", plain.stderr);
    warned(
        &with(&["--machine", "dev"]),
        &["--machine dev is ignored", "--vm-ip"],
    );
    warned(
        &with(&["--dns", "resolv-conf", "--resolver-dir", "/tmp/r"]),
        &["--resolver-dir /tmp/r is ignored", "resolver-dir"],
    );
    warned(
        &with(&["--nameserver", "10.1.2.3"]),
        &["10.1.2.3", "none of the networks routed through the VM"],
    );
    warned(
        &with(&["--domain", "com"]),
        &["'com' is a top-level domain"],
    );
    let dh = lab.dockroute_env(&["up", "--dry-run"], &[("DOCKER_HOST", &"tcp://myvm:2376")]);
    assert!(
        dh.stderr.contains("DOCKER_HOST") && dh.stderr.contains("names a host (myvm)"),
        "{}",
        dh.stderr
    );

    // messages that say why
    let lo = lab.dockroute(&with(&["--interface", "lo"]));
    assert_eq!(lo.code, 1);
    assert!(lo.stderr.contains("loopback"), "{}", lo.stderr);
    let file = lab.dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let sd = lab.dockroute_env(&["status"], &[("DOCKROUTE_STATE_DIR", &file)]);
    assert_eq!(sd.code, 1);
    assert!(
        sd.stderr.contains("is a file, not a directory"),
        "{}",
        sd.stderr
    );
    std::fs::write(lab.config(), "wait = \"30\"\n").unwrap();
    let w = lab.dockroute(&dry);
    assert_eq!(w.code, 1);
    assert!(
        w.stderr.contains("line 1")
            && w.stderr.contains("number of seconds")
            && w.stderr.lines().count() == 1,
        "{}",
        w.stderr
    );
    std::fs::write(lab.config(), "wait = 2\n").unwrap();
    lab.dockroute(&dry).ok();
    std::fs::write(lab.config(), "").unwrap();

    // `down` shows no discovery details it did not use
    up(&lab);
    let down = lab.dockroute(&["down"]).ok();
    assert!(!down.stdout.contains("VM IP from"), "{}", down.stdout);

    // status with the link down says so
    up(&lab);
    lab.ip("link set vboxnet0 down");
    let st = lab.dockroute(&["status"]);
    assert_eq!(st.code, 3);
    assert!(st.stderr.contains("link vboxnet0 is down"), "{}", st.stderr);

    // --wait says what it waits for, once, and when it found it (news, not a warning: issue
    // 16, point 10)
    let child = lab.spawn(&["up", "--vm-ip", VM_IP, "--wait", "10", "-v"], &[]);
    std::thread::sleep(std::time::Duration::from_millis(700));
    lab.ip("link set vboxnet0 up");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.matches("waiting up to 10s").count(), 1, "{err}");
    assert!(err.contains("link vboxnet0 is down"), "{err}");
    let found: Vec<&str> = err.lines().filter(|l| l.contains("found after")).collect();
    assert!(
        found.len() == 1 && found[0].contains(" INFO ") && !found[0].contains("WARN"),
        "{err}"
    );
}
