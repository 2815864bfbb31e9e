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
