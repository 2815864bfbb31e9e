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
    let run = lab.dockroute(&["up", "--vm-ip", VM_IP]);
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("172.17.0.1") && run.stderr.contains("172.17.0.0/16 dev tun0"),
        "{}",
        run.stderr
    );
    let json = lab.dockroute(&["--json", "up", "--vm-ip", VM_IP]);
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
