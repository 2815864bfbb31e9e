//! VPN clients on Linux, simulated from what ../shared/design/vpn-behaviors.md says each does.
//! Each scenario: the old manual route works before the VPN, breaks under it where the real
//! client breaks it, dockroute's `up` makes the container reachable, and `down` leaves the VPN's
//! routes and rules byte-identical.
#![cfg(target_os = "linux")]

mod common;
use common::*;

#[test]
fn vpn_deleting_the_routes_on_the_host_only_link() {
    if !privileged() {
        return;
    }
    // AnyConnect/Pulse-style: "route delete 192.168.99.0/24 ... intf vboxnet0", and every other
    // route through the host-only link with it.
    vpn_scenario(
        "0",
        |lab| {
            lab.ip("route flush dev vboxnet0 table main");
        },
        false,
    );
    // ... and `up` run again (the post-connect hook) after the VPN flushed its main-table copy
    let lab = Lab::new();
    up(&lab);
    lab.ip("route flush dev vboxnet0 table main");
    assert!(lab.reaches_container());
    let again = lab
        .dockroute(&["--json", "up", "--vm-ip", VM_IP])
        .ok()
        .json();
    assert_eq!(again["changes"].as_array().unwrap().len(), 1, "{again}");
    assert!(lab.reaches_container());
    assert!(lab.in_host(echo_vm), "the VM itself is unreachable");
    // from scratch while the connected route is gone: the host-only route must go in first
    lab.dockroute(&["down"]).ok();
    up(&lab);
    assert!(lab.reaches_container());
}

/// The VM's own address answers (a refused TCP connection proves the path works both ways).
fn echo_vm() -> bool {
    match std::net::TcpStream::connect_timeout(
        &"192.168.99.100:1".parse().unwrap(),
        std::time::Duration::from_millis(800),
    ) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
    }
}

#[test]
fn tailscale_exit_node_with_lan_access() {
    if !privileged() {
        return;
    }
    // --exit-node-allow-lan-access: the host-only network becomes a throw route in table 52, but
    // the containers' subnet behind the VM still takes the exit node's default route.
    vpn_scenario(
        "0",
        |lab| {
            lab.ip("route add default dev tun0 table 52");
            lab.ip("route add throw 192.168.99.0/24 table 52");
            lab.ip("rule add pref 5270 lookup 52");
        },
        false,
    );
}

#[test]
fn wg_quick_full_tunnel_is_a_negative_control() {
    if !privileged() {
        return;
    }
    // wg-quick's rules carry no preference (so once dockroute's rule exists they land ahead of
    // it), and `suppress_prefixlength 0` keeps non-default main routes working: the manual route
    // survives, and dockroute must change nothing but its own routes and rules.
    vpn_scenario(
        "0",
        |lab| {
            lab.ip("route add default dev tun0 table 51820");
            lab.ip("rule add not fwmark 51820 table 51820");
            lab.ip("rule add table main suppress_prefixlength 0");
        },
        true,
    );
}
