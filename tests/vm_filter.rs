//! The VM's own Docker filter against a real dockerd (issue 17, points 4 and 5): `status`
//! tells a VM whose Docker drops routed traffic from a wrong route, and names the fix;
//! `up --open-vm-firewall` opens it through a helper container in the VM (the VM's iptables,
//! the VM's namespace; or Docker 29's own nftables table), re-applies after dockerd restarts,
//! and `down` leaves the VM's rules byte-identical. This machine's own rules are never touched.

#![cfg(target_os = "linux")]

mod common;

use common::docker_lab::{DockerLab, IMAGE, PAGE, Untouched, VM_IF};
use common::relay::{Claims, Relay};
use common::{VM_IP, privileged};

/// The host's address on the lab's host-only link.
const HOST_IP: &str = "192.168.99.1";

fn up(lab: &DockerLab, extra: &[&str]) -> common::Run {
    up_at(lab, &lab.socket_url(), extra)
}

/// `up` with the engine at `url`.
fn up_at(lab: &DockerLab, url: &str, extra: &[&str]) -> common::Run {
    let mut args = vec!["up", "--vm-ip", VM_IP, "--dns", "off", "--docker", url];
    args.extend_from_slice(extra);
    lab.dockroute(&args)
}

/// The VM's iptables-save, its packet counters zeroed (traffic moves them; rules are compared).
fn vm_rules(lab: &DockerLab) -> String {
    lab.vm_iptables_save()
        .lines()
        .map(|l| match (l.starts_with(':'), l.rfind(" [")) {
            (true, Some(i)) => format!("{} [0:0]\n", &l[..i]),
            _ => format!("{l}\n"),
        })
        .collect()
}

/// `down` leaves the host and the VM's iptables as they were; the lab goes, and this machine's
/// own rules are as they were when the test began.
fn down_restores_both(lab: DockerLab, host_before: &str, vm_before: &str, machine: Untouched) {
    lab.down_restores(host_before);
    assert_eq!(vm_rules(&lab), vm_before, "down left the VM changed");
    lab.remove();
    machine.check();
}

/// The VM's rules marked dockroute.
fn marked(lab: &DockerLab) -> Vec<String> {
    marked_in(&lab.vm_iptables_save())
}

/// The lines of `rules` that carry dockroute's mark.
fn marked_in(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter(|l| l.contains("dockroute"))
        .map(|l| l.trim().to_string())
        .collect()
}

/// A fresh VM (FORWARD policy DROP): the route is right, yet the containers do not answer;
/// `status` says it is the VM's Docker (exit 3, the DOCKER-USER fix, --open-vm-firewall). With
/// `up --open-vm-firewall` a real HTTP exchange with a container on the default bridge and one on
/// a user network works, `status` is clean, and `down` leaves the VM's iptables as they were.
#[test]
fn forward_drop_is_diagnosed_and_opened_by_the_helper_and_down_restores_the_vm() {
    if !privileged() {
        return;
    }
    let machine = Untouched::now();
    let lab = DockerLab::new();
    assert_eq!(lab.forward_policy(), "DROP");
    lab.network_create("usernet", "172.30.0.0/16");
    lab.run("web", None, &[]);
    lab.run("web2", Some("usernet"), &[]);
    let (ip, ip2) = (lab.container_ip("web"), lab.container_ip("web2"));
    let vm_before = vm_rules(&lab);
    let host_before = lab.host_state();

    // `up` routes, and says why the containers still do not answer
    let routed = up(&lab, &[]).ok();
    assert!(
        routed
            .stderr
            .contains("the VM's Docker drops routed traffic"),
        "{}",
        routed.stderr
    );
    for ip in [ip, ip2] {
        assert_eq!(lab.http_from_host(ip), None, "{ip} answered through DROP");
    }
    let st = lab.dockroute(&["status"]);
    assert_eq!(st.code, 3, "status: {}{}", st.stdout, st.stderr);
    assert!(
        st.stderr.contains("the VM's Docker drops routed traffic")
            && st
                .stderr
                .contains(&format!("iptables -I DOCKER-USER -s {HOST_IP}"))
            && st.stderr.contains("--open-vm-firewall"),
        "{}",
        st.stderr
    );
    // the route is right: the kernel sends each network through the VM
    assert!(
        st.stdout.contains("kernel picks") && !st.stdout.contains("NOT VIA THE VM"),
        "{}",
        st.stdout
    );
    assert_eq!(vm_rules(&lab), vm_before, "status changed the VM");

    let opened = up(&lab, &["--open-vm-firewall"]).ok();
    for ip in [ip, ip2] {
        assert_eq!(
            lab.http_from_host(ip).as_deref(),
            Some(PAGE),
            "{ip}: {}",
            opened.stderr
        );
    }
    let rules = marked(&lab);
    assert_eq!(rules.len(), 2, "{rules:?}");
    for r in &rules {
        assert!(
            r.starts_with(&format!("-A DOCKER-USER -s {HOST_IP}/32 -d 172."))
                && r.contains(&format!("-i {VM_IF} ")),
            "{r}"
        );
    }
    // the helper containers are gone
    assert_eq!(
        lab.docker_ok(&["ps", "-aq", "--filter", "label=dockroute"]),
        ""
    );
    let st = lab.dockroute(&["status"]);
    assert_eq!(st.code, 0, "status: {}{}", st.stdout, st.stderr);
    // a second up inserts nothing twice
    up(&lab, &["--open-vm-firewall"]).ok();
    assert_eq!(marked(&lab), rules);

    down_restores_both(lab, &host_before, &vm_before, machine);
}

/// Docker 28's raw drops (written as Docker writes them, on the lab's 20.10 engine, behind a
/// relay that says Docker 28 on iptables), forwarding on: `status` says the VM's Docker drops,
/// advises Docker 28's allow-direct-routing and names `--open-vm-firewall`, the accept goes in
/// the raw table where the drops are, and `down` restores the VM byte for byte.
#[test]
fn raw_drops_are_opened_where_they_are_and_down_restores_the_vm() {
    if !privileged() {
        return;
    }
    let machine = Untouched::now();
    let lab = DockerLab::with_forwarding();
    lab.run("web", None, &[]);
    let ip = lab.container_ip("web");
    lab.docker28_raw_drop(ip, "docker0");
    let relay = Relay::start(&lab, Claims::docker28_iptables());
    let vm_before = vm_rules(&lab);
    let host_before = lab.host_state();
    up_at(&lab, &relay.url(), &[]).ok();
    assert_eq!(
        lab.http_from_host(ip),
        None,
        "{ip} answered through the raw drop"
    );
    let st = lab.dockroute(&["status"]);
    assert_eq!(st.code, 3, "status: {}{}", st.stdout, st.stderr);
    assert!(
        st.stderr.contains("the VM's Docker drops routed traffic")
            && st.stderr.contains(&ip.to_string())
            && st.stderr.contains("\"allow-direct-routing\": true")
            && st.stderr.contains("--open-vm-firewall"),
        "{}",
        st.stderr
    );

    up_at(&lab, &relay.url(), &["--open-vm-firewall"]).ok();
    assert_eq!(lab.http_from_host(ip).as_deref(), Some(PAGE), "{ip}");
    let raw = lab.vm_iptables(&["-t", "raw", "-S", "PREROUTING"]);
    assert!(
        raw.lines()
            .nth(1)
            .is_some_and(|l| l.contains("dockroute") && l.contains("ACCEPT")),
        "the accept is not above Docker's drop: {raw}"
    );

    // `down` goes through the relay (the recorded engine), which goes before the lab does
    lab.down_restores(&host_before);
    assert_eq!(vm_rules(&lab), vm_before, "down left the VM changed");
    drop(relay);
    lab.remove();
    machine.check();
}

/// dockerd restarted, and the VM's DOCKER-USER chain emptied as a rebooted VM's would be: the
/// next `up` (the boot job's bare one, replaying the recorded flags) inserts the accepts again,
/// once. A network created later gets its accept from the next `up`, beside the others; a
/// container there that listens on nothing is reported as the container itself, not the VM.
#[test]
fn accepts_are_reapplied_after_dockerd_restarts() {
    if !privileged() {
        return;
    }
    let machine = Untouched::now();
    let lab = DockerLab::new();
    lab.run("web", None, &[]);
    up(&lab, &["--open-vm-firewall"]).ok();
    let rules = marked(&lab);
    assert_eq!(rules.len(), 1, "{rules:?}");

    lab.restart_dockerd();
    lab.docker_ok(&["start", "web"]);
    lab.vm_iptables(&["-F", "DOCKER-USER"]);
    lab.vm_iptables(&["-A", "DOCKER-USER", "-j", "RETURN"]);
    let ip = lab.container_ip("web");
    assert_eq!(
        lab.http_from_host(ip),
        None,
        "{ip} answered without the accept"
    );
    lab.dockroute(&["up"]).ok();
    assert_eq!(marked(&lab), rules);
    assert_eq!(lab.http_from_host(ip).as_deref(), Some(PAGE), "{ip}");

    lab.network_create("later", "172.31.0.0/16");
    lab.run("late", Some("later"), &[]);
    let late = lab.container_ip("late");
    assert_eq!(lab.http_from_host(late), None, "{late} answered unrouted");
    lab.dockroute(&["up"]).ok();
    let now = marked(&lab);
    assert!(
        now.len() == 2
            && now.contains(&rules[0])
            && now.iter().any(|r| r.contains("-d 172.31.0.0/16")),
        "{now:?}"
    );
    assert_eq!(lab.http_from_host(late).as_deref(), Some(PAGE), "{late}");

    // a container that listens on nothing, on a network of its own: the route and the VM are
    // fine, the container itself does not answer, and status says so without blaming the VM
    lab.network_create("quietnet", "172.29.0.0/16");
    lab.docker_ok(&[
        "run",
        "-d",
        "--name",
        "quiet",
        "--network",
        "quietnet",
        IMAGE,
        "/bin/busybox",
        "sleep",
        "3600",
    ]);
    lab.dockroute(&["up"]).ok();
    let st = lab.dockroute(&["status"]);
    assert_eq!(st.code, 0, "status: {}{}", st.stdout, st.stderr);
    assert!(
        st.stdout.contains("the container itself")
            && !st.stderr.contains("the VM's Docker drops routed traffic"),
        "{}{}",
        st.stdout,
        st.stderr
    );

    lab.dockroute(&["down"]).ok();
    assert!(marked(&lab).is_empty(), "{:?}", marked(&lab));
    lab.remove();
    machine.check();
}

/// A VM without the helper image and without a registry: `up --open-vm-firewall` routes all
/// the same and says which option to use; nothing is changed in the VM.
#[test]
fn a_missing_helper_image_is_a_clear_warning_naming_the_option() {
    if !privileged() {
        return;
    }
    let machine = Untouched::now();
    let lab = DockerLab::with_forwarding();
    let vm_before = vm_rules(&lab);
    let r = up(
        &lab,
        &[
            "--open-vm-firewall",
            "--helper-image",
            "dockroute-test/none:1",
        ],
    )
    .ok();
    assert!(r.stderr.contains("--helper-image IMAGE"), "{}", r.stderr);
    assert_eq!(vm_rules(&lab), vm_before);
    lab.dockroute(&["down"]).ok();
    lab.remove();
    machine.check();
}

/// The first rule of a chain of Docker's nftables table in the VM.
fn first_nft_rule(lab: &DockerLab, chain: &str) -> String {
    let listed = lab.vm_nft(&["list", "chain", "ip", "docker-bridges", chain]);
    listed
        .lines()
        .map(str::trim)
        .find(|l| {
            !l.is_empty()
                && !l.starts_with("table")
                && !l.starts_with("chain")
                && !l.starts_with("type")
                && !l.starts_with('}')
        })
        .unwrap_or("")
        .to_string()
}

/// The VM's nftables rules marked dockroute.
fn nft_marked(lab: &DockerLab) -> Vec<String> {
    marked_in(&lab.vm_nft_ruleset())
}

/// An engine that runs its rules on nftables (Docker 29's option): the lab's real engine behind
/// a relay that says so, and Docker 29's own table in the VM (its policy drop, its per-network
/// "UNPUBLISHED PORT DROP", its raw "DROP DIRECT ACCESS"). `status` names the nftables fix and
/// Docker 28's allow-direct-routing (exit 3); `up --open-vm-firewall` puts marked accepts at the
/// top of Docker's own base chains (not in iptables) and both containers answer; a rebuilt
/// table (a restarted dockerd) gets them again from a bare `up`; `down` leaves the VM's
/// nftables and iptables as they were.
#[test]
fn docker29_nftables_is_diagnosed_opened_in_dockers_own_table_and_restored() {
    if !privileged() {
        return;
    }
    let machine = Untouched::now();
    let lab = DockerLab::with_forwarding();
    lab.network_create("usernet", "172.30.0.0/16");
    lab.run("web", None, &[]);
    lab.run("web2", Some("usernet"), &[]);
    let (ip, ip2) = (lab.container_ip("web"), lab.container_ip("web2"));
    let user_bridge = lab.bridge_of("usernet");
    let tables = |lab: &DockerLab| {
        lab.docker29_nft_tables(&[("docker0", &[ip]), (user_bridge.as_str(), &[ip2])])
    };
    tables(&lab);
    let relay = Relay::start(&lab, Claims::docker29_nftables());
    let (nft_before, vm_before) = (lab.vm_nft_ruleset(), vm_rules(&lab));
    let host_before = lab.host_state();

    let routed = up_at(&lab, &relay.url(), &[]).ok();
    for ip in [ip, ip2] {
        assert_eq!(
            lab.http_from_host(ip),
            None,
            "{ip} answered through Docker's nftables drops: {}",
            routed.stderr
        );
    }
    let st = lab.dockroute(&["status"]);
    assert_eq!(st.code, 3, "status: {}{}", st.stdout, st.stderr);
    for words in [
        "the VM's Docker drops routed traffic".to_string(),
        "allow-direct-routing".into(),
        format!(
            "nft insert rule ip docker-bridges filter-FORWARD iifname <the VM's host-only interface> ip saddr {HOST_IP} accept"
        ),
        "--open-vm-firewall".into(),
    ] {
        assert!(st.stderr.contains(&words), "no {words:?} in: {}", st.stderr);
    }
    assert!(
        !st.stderr.contains("DOCKER-USER"),
        "iptables advice for an nftables engine: {}",
        st.stderr
    );

    let opened = up_at(&lab, &relay.url(), &["--open-vm-firewall"]).ok();
    for ip in [ip, ip2] {
        assert_eq!(
            lab.http_from_host(ip).as_deref(),
            Some(PAGE),
            "{ip}: {}",
            opened.stderr
        );
    }
    let rules = nft_marked(&lab);
    assert_eq!(rules.len(), 4, "two subnets, two chains: {rules:?}");
    for chain in ["filter-FORWARD", "raw-PREROUTING"] {
        let top = first_nft_rule(&lab, chain);
        assert!(
            top.starts_with(&format!(
                "iifname \"{VM_IF}\" ip saddr {HOST_IP} ip daddr 172."
            )) && top.ends_with("accept comment \"dockroute\""),
            "{chain} does not start with dockroute's accept: {top}"
        );
    }
    assert_eq!(vm_rules(&lab), vm_before, "the VM's iptables were changed");
    let st = lab.dockroute(&["status"]);
    assert_eq!(st.code, 0, "status: {}{}", st.stdout, st.stderr);
    assert!(st.stdout.contains("in the VM's nftables"), "{}", st.stdout);
    up_at(&lab, &relay.url(), &["--open-vm-firewall"]).ok();
    assert_eq!(nft_marked(&lab), rules, "a second up inserted again");

    // dockerd restarted: its table deleted and written again, without the accepts
    tables(&lab);
    assert_eq!(
        lab.http_from_host(ip),
        None,
        "{ip} answered without the accept"
    );
    lab.dockroute(&["up"]).ok();
    assert_eq!(nft_marked(&lab), rules);
    assert_eq!(lab.http_from_host(ip).as_deref(), Some(PAGE), "{ip}");

    lab.down_restores(&host_before);
    assert_eq!(
        lab.vm_nft_ruleset(),
        nft_before,
        "down left the VM's nftables changed"
    );
    assert_eq!(
        vm_rules(&lab),
        vm_before,
        "down left the VM's iptables changed"
    );
    drop(relay);
    lab.remove();
    machine.check();
}

/// An engine that says it runs its rules on nftables in a VM that has no table of Docker's
/// (the relay says so, the lab's engine writes iptables): `up --open-vm-firewall` routes, says
/// why it opened nothing, and changes nothing in the VM's iptables or nftables.
#[test]
fn an_nftables_engine_without_its_table_is_told_and_nothing_changes() {
    if !privileged() {
        return;
    }
    let machine = Untouched::now();
    let lab = DockerLab::with_forwarding();
    let relay = Relay::start(&lab, Claims::docker29_nftables());
    let (nft_before, vm_before) = (lab.vm_nft_ruleset(), vm_rules(&lab));
    let host_before = lab.host_state();
    let r = up_at(&lab, &relay.url(), &["--open-vm-firewall"]).ok();
    assert!(
        r.stderr
            .contains("nothing to open: the engine runs its rules on nftables, but the VM has no table ip docker-bridges"),
        "{}",
        r.stderr
    );
    assert_eq!(
        lab.vm_nft_ruleset(),
        nft_before,
        "the VM's nftables changed"
    );
    assert_eq!(vm_rules(&lab), vm_before, "the VM's iptables changed");
    lab.down_restores(&host_before);
    drop(relay);
    lab.remove();
    machine.check();
}
