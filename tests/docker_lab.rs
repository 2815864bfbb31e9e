//! The baseline of a real Docker engine in the VM (issue 17): routes alone do not reach its
//! containers. A fresh VM's dockerd sets the FORWARD policy to DROP, and Docker 28's raw-table
//! drops (written here as Docker writes them) block routed packets too; the lab itself is removed
//! completely, also when a test panics, and never touches this machine's own firewall.

#![cfg(target_os = "linux")]

mod common;

use common::docker_lab::{DockerLab, PAGE, Untouched, VM_IF, leftovers};
use common::{VM_IP, privileged};

// The engine serves no DNS on its bridge (Docker's resolver lives inside user networks'
// containers), so these runs set routes only: `--dns off`.

/// A fresh VM (forwarding off when dockerd starts): dockroute's routes are in place, yet the
/// connection to a container on the default bridge and to one on a user network times out until
/// the DOCKER-USER accept for the host-only interface is inserted in the VM. `down` leaves the
/// host byte-identical, and this machine's firewall is untouched throughout.
#[test]
fn fresh_vm_forward_drop_blocks_routed_containers_until_docker_user_accepts() {
    if !privileged() {
        return;
    }
    let machine = Untouched::now();
    let lab = DockerLab::new();
    assert_eq!(lab.forward_policy(), "DROP", "dockerd did not set DROP");
    lab.network_create("usernet", "172.30.0.0/16");
    lab.run("web", None, &[("dockroute.test", "bridge")]);
    lab.run("web2", Some("usernet"), &[("dockroute.test", "user")]);
    let (ip, ip2) = (lab.container_ip("web"), lab.container_ip("web2"));
    assert_eq!(ip.octets()[..2], [172, 17], "{ip}");
    assert_eq!(ip2.octets()[..2], [172, 30], "{ip2}");
    for ip in [ip, ip2] {
        assert_eq!(
            lab.http_from_vm(ip).as_deref(),
            Some(PAGE),
            "{ip} in the VM"
        );
        assert_eq!(lab.http_from_host(ip), None, "{ip} reached without a route");
    }
    let before = lab.host_state();

    lab.dockroute(&[
        "up",
        "--vm-ip",
        VM_IP,
        "--dns",
        "off",
        "--subnet",
        "172.17.0.0/16",
        "--subnet",
        "172.30.0.0/16",
    ])
    .ok();
    for ip in [ip, ip2] {
        assert_eq!(
            lab.http_from_host(ip),
            None,
            "{ip} answered through dockerd's FORWARD policy DROP"
        );
    }

    lab.vm_iptables(&["-I", "DOCKER-USER", "-i", VM_IF, "-j", "ACCEPT"]);
    for ip in [ip, ip2] {
        assert_eq!(lab.http_from_host(ip).as_deref(), Some(PAGE), "{ip}");
    }

    lab.down_restores(&before);
    assert_eq!(lab.http_from_host(ip), None, "reachable after down");
    lab.remove();
    machine.check();
}

/// Forwarding already on when dockerd starts: the FORWARD policy stays ACCEPT and the routed
/// container answers, until Docker 28's raw-table drop for its address (arriving on any
/// interface but its bridge) is written in the VM. Inside the VM it still answers.
#[test]
fn docker28_raw_drop_blocks_routed_container() {
    if !privileged() {
        return;
    }
    let machine = Untouched::now();
    let lab = DockerLab::with_forwarding();
    assert_eq!(lab.forward_policy(), "ACCEPT");
    assert_eq!(
        lab.ping_over_tcp().as_deref(),
        Some("OK"),
        "the engine's TCP endpoint"
    );
    lab.run("web", None, &[]);
    let ip = lab.container_ip("web");
    let before = lab.host_state();
    lab.dockroute(&[
        "up",
        "--vm-ip",
        VM_IP,
        "--dns",
        "off",
        "--subnet",
        "172.17.0.0/16",
    ])
    .ok();
    assert_eq!(lab.http_from_host(ip).as_deref(), Some(PAGE), "{ip}");

    let bridge = lab.bridge_of("bridge");
    assert_eq!(bridge, "docker0");
    lab.docker28_raw_drop(ip, &bridge);
    assert_eq!(
        lab.http_from_host(ip),
        None,
        "{ip} answered through the raw drop"
    );
    assert_eq!(
        lab.http_from_vm(ip).as_deref(),
        Some(PAGE),
        "{ip} in the VM"
    );

    lab.down_restores(&before);
    lab.remove();
    machine.check();
}

/// A test that panics leaves nothing, even after dockerd crashed with a container running: no
/// namespace, no process, no cgroup, no engine files, and this machine's network and firewall as
/// they were. (On the way: a restarted engine keeps its networks and its container starts again.)
#[test]
fn docker_lab_is_removed_when_a_test_panics() {
    if !privileged() {
        return;
    }
    let machine = Untouched::now();
    let (tx, rx) = std::sync::mpsc::channel();
    let died = std::thread::spawn(move || {
        let lab = DockerLab::new();
        tx.send(lab.prefix.clone()).unwrap();
        lab.network_create("usernet", "172.30.0.0/16");
        lab.run("web", Some("usernet"), &[]);
        lab.restart_dockerd();
        assert_eq!(
            lab.docker_ok(&["network", "inspect", "-f", "{{.Name}}", "usernet"]),
            "usernet"
        );
        lab.docker_ok(&["start", "web"]);
        let ip = lab.container_ip("web");
        assert_eq!(
            lab.http_from_vm(ip).as_deref(),
            Some(PAGE),
            "{ip} in the VM"
        );
        assert!(!leftovers(&lab.prefix).is_empty());
        // the worst case: the engine is gone, its container still runs
        lab.kill_dockerd();
        panic!("a test fails after dockerd crashed");
    })
    .join();
    assert!(died.is_err(), "the test thread did not panic");
    let prefix = rx.recv().expect("the lab was built");
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
    machine.check();
}
