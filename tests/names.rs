//! Names for containers (issue 18): `watch` answers the domain from a real Docker engine in the
//! VM (scripts/lab.sh docker-create), on 127.0.0.153:53 in the lab's host namespace, and the DNS
//! backend points the domain there while it runs. Containers are started with compose labels,
//! renamed, stopped and started, and connected to a second network; the names resolve through
//! the system resolver (`getent hosts`), a TCP exchange by name works, and the end of `watch`
//! and `down` leave the DNS configuration byte-identical to before.
#![cfg(target_os = "linux")]

mod common;

use common::docker_lab::{DockerLab, PAGE};
use common::watch::{Watch, eventually};
use common::{BIN, RESOLVECTL, VM_IP, privileged};
use std::process::{Command, Stdio};
use std::time::Duration;

/// `watch --docker` with the lab's engine; returns once it watches.
fn watch(lab: &DockerLab, args: &[&str]) -> Watch {
    let socket = lab.socket_url();
    let mut all = vec!["--vm-ip", VM_IP, "--docker", &socket];
    all.extend_from_slice(args);
    let w = Watch::start(lab, &all);
    w.wait_log("watching (");
    w
}

/// `watch` inside the namespaces of the lab's systemd-resolved (holder `h`).
fn watch_in_resolved(lab: &DockerLab, h: u32, args: &[&str]) -> Watch {
    let mut c = Command::new("nsenter");
    c.args(["-t", &h.to_string(), "-m", "-n", BIN])
        .arg("--config")
        .arg(lab.config())
        .args(["watch", "--vm-ip", VM_IP, "--docker", &lab.socket_url()])
        .args(args)
        .env("DOCKROUTE_STATE_DIR", lab.state_dir())
        .env("DOCKROUTE_LOG", "debug")
        .env_remove("DOCKER_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    Watch::collect(c.spawn().expect("spawning watch"))
}

fn settled(f: impl FnMut() -> bool) -> bool {
    eventually(Duration::from_secs(10), f)
}

/// `name` resolves (through the system resolver of the lab's host) to `ip`, or, for `None`, not
/// at all, with nothing but the engine's container events to refresh the names (no SIGHUP, no
/// `up`).
fn resolves(lab: &DockerLab, w: &Watch, name: &str, ip: Option<std::net::Ipv4Addr>) {
    resolves_by(|n| lab.getent(n), lab, w, name, ip)
}

/// [`resolves`], asking `getent`.
fn resolves_by(
    getent: impl Fn(&str) -> Option<String>,
    lab: &DockerLab,
    w: &Watch,
    name: &str,
    ip: Option<std::net::Ipv4Addr>,
) {
    let want = ip.map(|i| i.to_string());
    assert!(
        settled(|| getent(name) == want),
        "{name}: {:?}, not {want:?}\n{}\n{}",
        getent(name),
        std::fs::read_to_string(lab.resolv_conf()).unwrap_or_default(),
        w.log()
    );
}

/// `curl http://NAME/` in the lab's host namespace (its resolv.conf): a TCP exchange by name.
fn http_by_name(lab: &DockerLab, name: &str) -> Option<String> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.host(),
            "curl",
            "-sS",
            "--max-time",
            "5",
        ])
        .arg(format!("http://{name}/"))
        .output()
        .expect("curl");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn container_names_resolve_through_resolv_conf_while_watch_runs() {
    if !privileged() {
        return;
    }
    let lab = DockerLab::with_forwarding();
    lab.network_create("second", "172.30.0.0/16");
    let compose = [
        ("com.docker.compose.service", "web"),
        ("com.docker.compose.project", "shop"),
    ];
    lab.run("shop-web-1", None, &compose);
    let ip = lab.container_ip("shop-web-1");
    let resolv_before = std::fs::read(lab.resolv_conf()).unwrap();
    let before = lab.host_state();

    let w = watch(&lab, &["--dns", "resolv-conf"]);
    assert!(
        w.log().contains("DNS responder on 127.0.0.153:53"),
        "{}",
        w.log()
    );
    let resolv = std::fs::read_to_string(lab.resolv_conf()).unwrap();
    assert!(
        resolv.contains("nameserver 127.0.0.153\n"),
        "resolv.conf does not name the responder:\n{resolv}"
    );
    resolves(&lab, &w, "web.shop.docker", Some(ip));
    resolves(&lab, &w, "shop-web-1.docker", Some(ip));
    assert_eq!(http_by_name(&lab, "web.shop.docker").as_deref(), Some(PAGE));

    // renamed: the new name, not the old one; the service name stays
    lab.docker_ok(&["rename", "shop-web-1", "shop-web-9"]);
    resolves(&lab, &w, "shop-web-9.docker", Some(ip));
    resolves(&lab, &w, "shop-web-1.docker", None);
    resolves(&lab, &w, "web.shop.docker", Some(ip));

    // connected to a second network with an alias: the alias names that address
    lab.docker_ok(&[
        "network",
        "connect",
        "--alias",
        "api",
        "second",
        "shop-web-9",
    ]);
    let second = lab.docker_ok(&[
        "inspect",
        "-f",
        "{{(index .NetworkSettings.Networks \"second\").IPAddress}}",
        "shop-web-9",
    ]);
    let second: std::net::Ipv4Addr = second.parse().expect("an address on second");
    resolves(&lab, &w, "api.docker", Some(second));
    assert_eq!(http_by_name(&lab, "api.docker").as_deref(), Some(PAGE));

    // stopped: gone; started again: back
    lab.docker_ok(&["stop", "-t", "0", "shop-web-9"]);
    resolves(&lab, &w, "web.shop.docker", None);
    resolves(&lab, &w, "shop-web-9.docker", None);
    lab.docker_ok(&["start", "shop-web-9"]);
    let ip = lab.container_ip("shop-web-9");
    resolves(&lab, &w, "shop-web-9.docker", Some(ip));
    assert_eq!(
        http_by_name(&lab, "shop-web-9.docker").as_deref(),
        Some(PAGE)
    );

    // `status` names the responder and asks it
    let st = lab.dockroute(&["status"]).stdout;
    assert!(st.contains("dockroute watch's responder"), "{st}");

    // watch ends: DNS is what a plain `up` sets (the VM runs no DNS server: no line at all)
    w.end();
    assert_eq!(
        std::fs::read(lab.resolv_conf()).unwrap(),
        resolv_before,
        "resolv.conf after watch ended"
    );
    assert_eq!(lab.getent("web.shop.docker"), None);
    lab.down_restores(&before);
    assert_eq!(std::fs::read(lab.resolv_conf()).unwrap(), resolv_before);

    // --down-on-exit: everything as before
    let w = watch(&lab, &["--dns", "resolv-conf", "--down-on-exit"]);
    resolves(&lab, &w, "shop-web-9.docker", Some(ip));
    w.end();
    assert_eq!(std::fs::read(lab.resolv_conf()).unwrap(), resolv_before);
    assert_eq!(lab.host_state(), before);
    lab.remove();
}

/// systemd-resolved (the extracted package, in the lab): the host-only link's per-link DNS names
/// the responder with its address and port (SetLinkDNSEx) while `watch` runs, and names resolve
/// through resolved's stub; when `watch` ends the link's DNS is what a plain `up` sets, and
/// `down` removes it.
#[test]
fn container_names_resolve_through_systemd_resolved_while_watch_runs() {
    if !privileged() {
        return;
    }
    let lab = DockerLab::with_forwarding();
    let h = lab.start_resolved();
    let compose = [
        ("com.docker.compose.service", "web"),
        ("com.docker.compose.project", "shop"),
    ];
    lab.run("shop-web-1", None, &compose);
    let ip = lab.container_ip("shop-web-1");
    let link = || lab.nsenter(h, RESOLVECTL, &["status", "vboxnet0"]).stdout;
    let getent = |name: &str| {
        let r = lab.nsenter(h, "getent", &["hosts", name]);
        (r.code == 0).then(|| r.stdout.split_whitespace().next().unwrap_or("").to_string())
    };
    let link_before = link();

    let w = watch_in_resolved(&lab, h, &["--dns", "resolved"]);
    assert!(settled(|| w.log().contains("watching (")), "{}", w.log());
    assert!(
        settled(|| link().contains("127.0.0.153")),
        "{}\n{}",
        link(),
        w.log()
    );
    resolves_by(getent, &lab, &w, "web.shop.docker", Some(ip));
    resolves_by(getent, &lab, &w, "shop-web-1.docker", Some(ip));
    lab.docker_ok(&["stop", "-t", "0", "shop-web-1"]);
    resolves_by(getent, &lab, &w, "shop-web-1.docker", None);

    // watch ends: the link names the VM's nameserver, as a plain `up` sets it
    w.end();
    let after = link();
    assert!(!after.contains("127.0.0.153"), "{after}");
    assert!(after.contains("172.17.0.1"), "{after}");
    lab.dockroute_resolved(h, &["down"]).ok();
    assert_eq!(link(), link_before, "down left the link's DNS changed");
    lab.remove();
}

/// The resolver-dir backend (macOS's /etc/resolver, here a directory of the lab): the domain's
/// file names the responder while `watch` runs, the VM's nameserver after it ends (what a plain
/// `up` writes), and `down` leaves the directory as it was.
#[test]
fn the_resolver_file_names_the_responder_while_watch_runs() {
    if !privileged() {
        return;
    }
    let lab = DockerLab::with_forwarding();
    let dir = lab.dir.path().join("resolver");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("corp.example"), "nameserver 10.0.0.53\n").unwrap();
    let dir_arg = dir.to_str().unwrap();
    let listing = || {
        let mut l: Vec<(String, String)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read_to_string(e.path()).unwrap(),
                )
            })
            .collect();
        l.sort();
        l
    };
    let before = listing();
    let file = dir.join("docker");
    let header = "# managed by dockroute: `dockroute down` removes this file\n";

    let w = watch(&lab, &["--dns", "resolver-dir", "--resolver-dir", dir_arg]);
    assert!(
        settled(|| std::fs::read_to_string(&file).ok()
            == Some(format!("{header}nameserver 127.0.0.153\n"))),
        "{:?}\n{}",
        std::fs::read_to_string(&file),
        w.log()
    );
    w.end();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        format!("{header}nameserver 172.17.0.1\n"),
        "after watch: what a plain `up` writes"
    );
    lab.dockroute(&["down"]).ok();
    assert_eq!(listing(), before);
    lab.remove();
}
