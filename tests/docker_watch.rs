//! `dockroute watch` following a real Docker engine's events (issue 17, point 3): a network
//! created while it runs is routed and its container reached without anyone running `up`, one
//! removed loses its route, and the event stream comes back after dockerd restarts or is killed.
//! The VM's forwarding is on before dockerd starts, so Docker's FORWARD policy stays ACCEPT,
//! except where `--open-vm-firewall` is what lets the traffic through.

#![cfg(target_os = "linux")]

mod common;

use common::docker_lab::{DockerLab, PAGE, Untouched};
use common::relay::{Claims, Relay};
use common::watch::{Watch, eventually};
use common::{VM_IP, privileged};
use std::time::Duration;

/// Generous: each step is a reconcile away, but a loaded CI machine is slow, and a reconnect
/// waits out the back-off (at most 30 s).
const WAIT: Duration = Duration::from_secs(60);

/// `watch --docker` the lab's engine over TCP, with `extra` flags.
fn watch(lab: &DockerLab, extra: &[&str]) -> Watch {
    watch_at(lab, &lab.tcp_url(), extra)
}

/// `watch --docker URL`, with `extra` flags.
fn watch_at(lab: &DockerLab, docker: &str, extra: &[&str]) -> Watch {
    let mut args = vec!["--vm-ip", VM_IP, "--dns", "off", "--docker", docker];
    args.extend_from_slice(extra);
    Watch::start(lab, &args)
}

fn running(w: &mut Watch) -> bool {
    matches!(w.child.try_wait(), Ok(None))
}

/// Wait until `needle` is in the log `n` times.
fn logged(w: &Watch, needle: &str, n: usize) {
    assert!(
        eventually(WAIT, || w.count(needle) >= n),
        "no '{needle}' (x{n}) in the log:\n{}",
        w.log()
    );
}

/// Whether one line of the log has both `a` and `b` (a reconcile's cause and what it did).
fn in_one_line(w: &Watch, a: &str, b: &str) -> bool {
    w.log().lines().any(|l| l.contains(a) && l.contains(b))
}

/// Whether the host namespace has a route for `subnet` (dockroute's table or main).
fn routed(lab: &DockerLab, subnet: &str) -> bool {
    lab.ip("route show table all").contains(subnet)
}

/// A network and a container on it, created while `watch` runs: the container answers a real
/// HTTP exchange from the host namespace, with no `up` run by anyone.
fn created_is_reached(lab: &DockerLab, w: &Watch, net: &str, subnet: &str, name: &str) {
    lab.network_create(net, subnet);
    lab.run(name, Some(net), &[]);
    let ip = lab.container_ip(name);
    assert_eq!(
        lab.http_from_vm(ip).as_deref(),
        Some(PAGE),
        "{ip} in the VM"
    );
    assert!(
        eventually(WAIT, || lab.http_from_host(ip).as_deref() == Some(PAGE)),
        "{name} on {net} ({ip}) not reached from the host:\n{}\n{}",
        lab.ip("route show table all"),
        w.log()
    );
}

#[test]
fn watch_routes_created_networks_withdraws_removed_ones_and_follows_dockerd_restarts() {
    if !privileged() {
        return;
    }
    let machine = Untouched::now();
    let lab = DockerLab::with_forwarding();
    let mut w = watch(&lab, &[]);
    // a network created before the stream opens is listed when it opens
    logged(&w, "watching (", 1);

    // created while watch runs: routed and reached, with the listing the event thread asked
    // for the moment the engine's event came
    created_is_reached(&lab, &w, "n1", "172.31.0.0/16", "web1");
    assert!(
        in_one_line(
            &w,
            "cause=Docker network created",
            "asked by the event thread"
        ),
        "the created network's reconcile asked the engine itself:\n{}",
        w.log()
    );

    // removed: its route goes, by the destroy event's network id (the engine is not asked
    // while it takes the network down)
    lab.docker_ok(&["rm", "-f", "web1"]);
    lab.network_rm("n1");
    assert!(
        eventually(WAIT, || !routed(&lab, "172.31.0.0/16")),
        "the removed network's route stayed:\n{}\n{}",
        lab.ip("route show table all"),
        w.log()
    );
    assert!(
        in_one_line(&w, "cause=Docker network removed", "- route 172.31.0.0/16"),
        "not withdrawn by the destroy event:\n{}",
        w.log()
    );

    // dockerd restarted (the stream ends): reconnected, and a network created after it routed
    lab.restart_dockerd();
    logged(&w, "following the engine's events again", 1);
    created_is_reached(&lab, &w, "n2", "172.30.0.0/16", "web2");

    // the engine killed: watch keeps running, says so once, and comes back with the engine
    let ended = w.count("the event stream ended");
    lab.kill_dockerd();
    logged(&w, "the event stream ended", ended + 1);
    // a few tries of the back-off (0.5 s, 1 s, 2 s, ...) go by
    std::thread::sleep(Duration::from_secs(5));
    assert!(running(&mut w), "watch ended with the engine:\n{}", w.log());
    assert_eq!(
        w.count("the event stream ended"),
        ended + 1,
        "the loss was logged more than once:\n{}",
        w.log()
    );
    assert_eq!(
        w.count("cannot follow the engine's events"),
        0,
        "each failed try was logged:\n{}",
        w.log()
    );
    lab.restart_dockerd();
    logged(&w, "following the engine's events again", 2);
    created_is_reached(&lab, &w, "n3", "172.29.0.0/16", "web3");
    assert!(running(&mut w));
    drop(w);

    lab.dockroute(&["down"]).ok();
    for subnet in ["172.29.0.0/16", "172.30.0.0/16"] {
        assert!(!routed(&lab, subnet), "{subnet} routed after down");
    }
    lab.remove();
    machine.check();
}

/// A fresh VM (Docker's FORWARD policy DROP) and `watch --open-vm-firewall`: a network created
/// while watch runs gets its accept in the VM beside the default bridge's, so its container is
/// reached with no `up` run by anyone; `down` takes every accept out and leaves the VM's rules as
/// they were.
#[test]
fn watch_opens_the_vm_filter_for_a_network_created_while_it_runs() {
    if !privileged() {
        return;
    }
    let machine = Untouched::now();
    let lab = DockerLab::new();
    assert_eq!(lab.forward_policy(), "DROP");
    let vm_before = lab.vm_iptables(&["-S"]);
    let w = watch(&lab, &["--open-vm-firewall"]);
    logged(&w, "watching (", 1);
    created_is_reached(&lab, &w, "n1", "172.31.0.0/16", "web1");
    let accepts = lab.vm_iptables(&["-S", "DOCKER-USER"]);
    assert!(
        accepts
            .lines()
            .any(|l| l.contains("-d 172.31.0.0/16") && l.contains("dockroute")),
        "{accepts}"
    );
    // watch is killed below (SIGKILL): first let it record the accept it inserted
    assert!(
        eventually(WAIT, || lab
            .dockroute(&["status"])
            .stdout
            .contains("VM firewall opened: 2 accept(s)")), // docker0's and n1's
        "the accept was never recorded:\n{}",
        w.log()
    );
    drop(w);

    // Docker's own rules for n1 go with n1
    lab.docker_ok(&["rm", "-f", "web1"]);
    lab.network_rm("n1");
    lab.dockroute(&["down"]).ok();
    assert_eq!(
        lab.vm_iptables(&["-S"]),
        vm_before,
        "down left the VM's rules changed"
    );
    lab.remove();
    machine.check();
}

/// `watch` keeps one event stream open while the engine runs: three networks created and
/// removed, each routed and withdrawn, and the engine was asked for its events once; after
/// dockerd restarts, one stream again (after the tries the back-off makes while it is down).
/// Counted by a relay in front of the lab's engine.
#[test]
fn watch_keeps_one_event_stream_while_the_engine_runs() {
    if !privileged() {
        return;
    }
    let machine = Untouched::now();
    let lab = DockerLab::with_forwarding();
    let relay = Relay::start(&lab, Claims::unchanged());
    let w = watch_at(&lab, &relay.url(), &[]);
    logged(&w, "watching (", 1);
    for (i, subnet) in ["172.31.0.0/16", "172.30.0.0/16", "172.29.0.0/16"]
        .iter()
        .enumerate()
    {
        let net = format!("n{i}");
        lab.network_create(&net, subnet);
        assert!(
            eventually(WAIT, || routed(&lab, subnet)),
            "{net} not routed:\n{}",
            w.log()
        );
        lab.network_rm(&net);
        assert!(
            eventually(WAIT, || !routed(&lab, subnet)),
            "{net} still routed:\n{}",
            w.log()
        );
    }
    assert_eq!(relay.times_asked("/events"), 1, "{}", w.log());

    // dockerd restarted: tries while it is down (each refused), then one stream again; a
    // network created after that opens no other
    lab.restart_dockerd();
    logged(&w, "following the engine's events again", 1);
    let reopened = relay.times_asked("/events");
    lab.network_create("again", "172.28.0.0/16");
    assert!(
        eventually(WAIT, || routed(&lab, "172.28.0.0/16")),
        "not routed after the restart:\n{}",
        w.log()
    );
    assert_eq!(relay.times_asked("/events"), reopened, "{}", w.log());
    drop(w);

    lab.dockroute(&["down"]).ok();
    assert!(!routed(&lab, "172.28.0.0/16"), "routed after down");
    drop(relay);
    lab.remove();
    machine.check();
}

/// Docker 29 on nftables (the lab's engine behind a relay that says so, Docker 29's table in
/// the VM) and `watch --open-vm-firewall`: the container is reached with no `up` run; dockerd
/// restarts and its table comes back without dockroute's accepts, and watch, back on the event
/// stream, puts them in again by itself; `down` leaves the VM's nftables as Docker wrote them.
#[test]
fn watch_reopens_docker29s_nftables_after_dockerd_restarts() {
    if !privileged() {
        return;
    }
    let machine = Untouched::now();
    let lab = DockerLab::with_forwarding();
    lab.run("web", None, &[]);
    let ip = lab.container_ip("web");
    let tables = |lab: &DockerLab| lab.docker29_nft_tables(&[("docker0", &[ip])]);
    tables(&lab);
    // Docker's table (the 20.10 engine's own iptables-nft tables are rebuilt in another order
    // by its restart)
    let dockers = |lab: &DockerLab| lab.vm_nft(&["-s", "list", "table", "ip", "docker-bridges"]);
    let nft_before = dockers(&lab);
    let relay = Relay::start(&lab, Claims::docker29_nftables());
    let w = watch_at(&lab, &relay.url(), &["--open-vm-firewall"]);
    let reached = |lab: &DockerLab| lab.http_from_host(ip).as_deref() == Some(PAGE);
    assert!(
        eventually(WAIT, || reached(&lab)),
        "{ip} not reached:\n{}",
        w.log()
    );
    const OPENED: &str = "accept(s) marked dockroute in the VM's nftables";
    logged(&w, OPENED, 1);
    let opened = w.count(OPENED);

    // a restarting dockerd writes its table again, without the accepts
    tables(&lab);
    assert!(!reached(&lab), "{ip} answered without the accepts");
    lab.restart_dockerd();
    lab.docker_ok(&["start", "web"]);
    assert_eq!(lab.container_ip("web"), ip, "the container moved");
    logged(&w, "following the engine's events again", 1);
    assert!(
        eventually(WAIT, || reached(&lab)),
        "{ip} not reached after dockerd restarted:\n{}\n{}",
        lab.vm_nft_ruleset(),
        w.log()
    );
    // by a reconcile of watch's own after the restart
    logged(&w, OPENED, opened + 1);
    drop(w);

    lab.dockroute(&["down"]).ok();
    assert_eq!(
        dockers(&lab),
        nft_before,
        "down left Docker's table changed"
    );
    drop(relay);
    lab.remove();
    machine.check();
}
