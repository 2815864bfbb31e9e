//! `up` routes the Docker engine's networks, against a fake engine: a small HTTP/1.1 server on a
//! unix socket in the test's directory (no packet leaves the lab), answering /_ping, /version,
//! /info, /containers/json and /networks with canned JSON, or answering badly (hostile, truncated, oversized,
//! silent).
#![cfg(target_os = "linux")]

mod common;
use common::served::{Served, api_path, read_head};
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

/// How the fake engine answers /networks.
#[derive(Clone)]
enum Answer {
    Networks(String),
    /// A Content-Length longer than the body, then the connection closes.
    Truncated,
    /// A body far larger than dockroute accepts (64 MiB of a JSON array).
    Oversized,
    /// Reads the request and never answers.
    Silent,
}

struct FakeEngine(Served);

impl FakeEngine {
    fn start(dir: &Path, answer: Answer) -> FakeEngine {
        FakeEngine::at(dir.join(format!("docker-{}.sock", rand_suffix())), answer)
    }

    /// An engine listening at `path`.
    fn at(path: PathBuf, answer: Answer) -> FakeEngine {
        FakeEngine(Served::start(path, move |conn, asked| {
            serve(conn, &answer, asked)
        }))
    }

    /// How many times `path` was asked for since the last call, and forget them.
    fn times_asked(&self, path: &str) -> usize {
        self.0.times_asked(path, true)
    }

    fn url(&self) -> String {
        self.0.url()
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::AtomicUsize;
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{}", N.fetch_add(1, Ordering::SeqCst))
}

fn serve(conn: UnixStream, answer: &Answer, asked: &std::sync::Mutex<Vec<String>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let Some(head) = read_head(&mut reader) else {
            return;
        };
        let path = api_path(&head[0], asked);
        let (ctype, body) = match path.as_str() {
            "/_ping" => ("text/plain", "OK".to_string()),
            "/version" => (
                "application/json",
                r#"{"Version":"20.10.24","ApiVersion":"1.41","MinAPIVersion":"1.12","Os":"linux","Arch":"amd64"}"#.to_string(),
            ),
            "/info" => ("application/json", r#"{"ServerVersion":"20.10.24"}"#.into()),
            "/containers/json" => ("application/json", "[]".into()),
            "/networks" => match answer {
                Answer::Networks(json) => ("application/json", json.clone()),
                Answer::Truncated => {
                    let body = r#"[{"Name":"app_default","Id":"#;
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{body}"
                    );
                    return;
                }
                Answer::Oversized => {
                    // valid JSON (an empty list padded with 64 MiB of blanks): only its size is wrong
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n[",
                        (64 << 20) + 2
                    );
                    let chunk = vec![b' '; 1 << 16];
                    for _ in 0..(64 << 4) {
                        if conn.write_all(&chunk).is_err() {
                            return;
                        }
                    }
                    let _ = conn.write_all(b"]");
                    continue;
                }
                Answer::Silent => {
                    std::thread::sleep(std::time::Duration::from_secs(60));
                    return;
                }
            },
            _ => ("application/json", r#"{"message":"page not found"}"#.into()),
        };
        let status = if body.contains("page not found") {
            "404 Not Found"
        } else {
            "200 OK"
        };
        let _ = write!(
            conn,
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nApi-Version: 1.41\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    }
}

/// One network as GET /networks lists it.
fn net(name: &str, n: u32, driver: &str, subnets: &[&str], internal: bool) -> String {
    let config: Vec<String> = subnets
        .iter()
        .map(|s| format!(r#"{{"Subnet":"{s}"}}"#))
        .collect();
    format!(
        r#"{{"Name":"{name}","Id":"{n:064x}","Created":"2026-12-01T10:00:00Z","Scope":"local","Driver":"{driver}","EnableIPv6":false,"IPAM":{{"Driver":"default","Options":null,"Config":[{}]}},"Internal":{internal},"Attachable":false,"Ingress":false,"ConfigFrom":{{"Network":""}},"ConfigOnly":false,"Containers":{{}},"Options":{{}},"Labels":{{}}}}"#,
        config.join(",")
    )
}

/// An engine with one bridge network.
fn one(name: &str, subnet: &str) -> Answer {
    Answer::Networks(list(&[net(name, 1, "bridge", &[subnet], false)]))
}

fn list(nets: &[String]) -> String {
    format!("[{}]", nets.join(","))
}

/// An echo service on ADDR inside namespace NS (a thread of this process that entered it).
fn echo_in(ns: &str, addr: &str) {
    let path = format!("/run/netns/{ns}");
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let l = std::net::TcpListener::bind(addr).unwrap();
        tx.send(()).unwrap();
        for c in l.incoming() {
            let Ok(c) = c else { continue };
            std::thread::spawn(move || {
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut c = c;
                let mut line = String::new();
                if r.read_line(&mut line).is_ok() {
                    let _ = c.write_all(line.as_bytes());
                }
            });
        }
    });
    rx.recv().unwrap();
}

fn vm(lab: &Lab) -> String {
    format!("{}-vm", lab.prefix)
}

fn normal_networks() -> String {
    list(&[
        net("bridge", 1, "bridge", &["172.17.0.0/16"], false),
        net(
            "app_default",
            2,
            "bridge",
            &["172.18.0.0/16", "fd00:1::/64"],
            false,
        ),
        net("web", 3, "bridge", &["192.168.48.0/20"], false),
        net("host", 4, "host", &[], false),
        net("none", 5, "null", &[], false),
        net("secret", 6, "bridge", &["172.30.0.0/16"], true),
        net("mv", 7, "macvlan", &["10.9.0.0/24"], false),
    ])
}

#[test]
fn every_bridge_network_is_routed_and_down_removes_it() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    compose_container(&lab);
    let reaches = reaches_compose_container;
    let before = lab.snapshot();
    assert!(!reaches(&lab), "reachable before up?");

    let engine = FakeEngine::start(lab.dir.path(), Answer::Networks(normal_networks()));
    let run = lab
        .dockroute(&["--json", "up", "--vm-ip", VM_IP, "--docker", &engine.url()])
        .ok();
    let out = run.json();
    let routed: Vec<String> = out["docker"]["routed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            format!(
                "{} {}",
                n["name"].as_str().unwrap(),
                n["subnet"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(routed, ["app_default 172.18.0.0/16", "web 192.168.48.0/20"]);
    assert_eq!(
        engine.times_asked("/networks"),
        1,
        "up listed more than once"
    );
    assert!(
        reaches(&lab),
        "the compose network's container is not reached"
    );
    let routes = lab.ip("route show table all");
    assert!(
        routes.contains("172.18.0.0/16 via 192.168.99.100"),
        "{routes}"
    );
    assert!(
        routes.contains("192.168.48.0/20 via 192.168.99.100"),
        "{routes}"
    );

    // recorded per network, and status names the engine, what it routed and what it skipped
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lab.state_dir().join("state.json")).unwrap())
            .unwrap();
    assert_eq!(record["docker"]["routed"][0]["id"], format!("{:064x}", 2));
    let status = lab.dockroute(&["status"]).stdout;
    assert_eq!(
        engine.times_asked("/networks"),
        1,
        "status listed more than once"
    );
    for want in [
        "(from --docker), Docker 20.10.24",
        "routed 172.18.0.0/16 app_default",
        "skipped 172.17.0.0/16 bridge: routed already as a fixed subnet",
        "skipped fd00:1::/64 app_default: IPv6",
        "skipped host: driver host",
        "skipped none: driver null",
        "skipped secret: internal",
        "skipped mv: driver macvlan",
    ] {
        assert!(status.contains(want), "{want:?} not in:\n{status}");
    }

    // up again: nothing to change; a bare up asks the recorded engine, once
    let again = lab.dockroute(&["up"]).ok();
    assert_eq!(
        engine.times_asked("/networks"),
        1,
        "up listed more than once"
    );
    assert!(
        again.stdout.contains("nothing to change"),
        "{}",
        again.stdout
    );
    assert!(
        again.stdout.contains("the last up's engine (recorded)"),
        "{}",
        again.stdout
    );

    lab.dockroute(&["down"]).ok();
    assert_eq!(
        lab.snapshot(),
        before,
        "down did not restore the state byte for byte"
    );
    assert!(!reaches(&lab));
}

/// A VPN's kill switches in both firewalls (iptables-nft and an nftables table with policy drop):
/// `up` opens them for the engine's networks too, judging the firewall it read while the engine
/// answered for the subnets the engine gave (no second `iptables -S`); `down` takes the openings
/// out again.
#[test]
fn an_engine_network_is_opened_through_a_vpn_kill_switch_read_while_the_engine_answered() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    compose_container(&lab);
    kill_switches(&lab, "-A");
    let rules = |lab: &Lab| {
        format!(
            "{}\n{}",
            fw(lab, "iptables", "-S"),
            fw(lab, "nft", "list ruleset")
        )
    };
    let (before, fw_before) = (lab.snapshot(), rules(&lab));
    assert!(!reaches_compose_container(&lab));

    let engine = FakeEngine::start(lab.dir.path(), Answer::Networks(normal_networks()));
    let run = lab
        .dockroute_env(
            &[
                "up",
                "--vm-ip",
                VM_IP,
                "--docker",
                &engine.url(),
                "--dns",
                "off",
            ],
            &[("DOCKROUTE_LOG", &"debug")],
        )
        .ok();
    assert!(
        reaches_compose_container(&lab),
        "the compose network's container is not reached through the kill switches:\n{}\n{}",
        run.stdout,
        rules(&lab)
    );
    assert!(
        run.stderr
            .contains("judging the rules read for the new scope again"),
        "{}",
        run.stderr
    );
    lab.dockroute(&["down"]).ok();
    assert_eq!(lab.snapshot(), before);
    assert_eq!(rules(&lab), fw_before, "down left the firewalls changed");
}

/// `watch` with the engine's networks routed, then a VPN connects with kill switches in both
/// firewalls: the reconcile the firewall events start opens them for the engine's networks too,
/// so the compose network's container is reached again with no `up` run by anyone.
#[test]
fn watch_opens_a_vpn_kill_switch_for_the_engines_networks() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    compose_container(&lab);
    let before = lab.snapshot();
    let engine = FakeEngine::start(lab.dir.path(), Answer::Networks(normal_networks()));
    let url = engine.url();
    let w =
        common::watch::Watch::start(&lab, &["--vm-ip", VM_IP, "--docker", &url, "--dns", "off"]);
    let wait = std::time::Duration::from_secs(30);
    assert!(
        common::watch::eventually(wait, || reaches_compose_container(&lab)),
        "not reached before the VPN:\n{}",
        w.log()
    );
    kill_switches(&lab, "-A");
    assert!(
        common::watch::eventually(wait, || reaches_compose_container(&lab)),
        "the compose network's container is not reached through the kill switches:\n{}\n{}",
        fw(&lab, "nft", "list ruleset"),
        w.log()
    );
    drop(w);
    lab.dockroute(&["down"]).ok();
    kill_switches(&lab, "-D");
    assert_eq!(lab.snapshot(), before, "down left the lab changed");
}

/// A VPN's kill switches on the host-only link in both firewalls, connected (`-A`: iptables-nft
/// drops and an nftables table with policy drop) or taken out again (`-D`).
fn kill_switches(lab: &Lab, op: &str) {
    fw(lab, "iptables", &format!("{op} OUTPUT -o vboxnet0 -j DROP"));
    fw(lab, "iptables", &format!("{op} INPUT -i vboxnet0 -j DROP"));
    match op {
        "-A" => nft_load(lab, "vpn.nft", MULLVAD_LIKE),
        _ => {
            fw(lab, "nft", "delete table inet vpn");
        }
    }
}

/// A container on a compose network (172.18.0.0/16): an address on the VM's bridge with a TCP
/// echo service.
fn compose_container(lab: &Lab) {
    lab_ip_vm(lab, "addr add 172.18.0.2/16 dev docker0");
    echo_in(&vm(lab), "172.18.0.2:7000");
}

fn reaches_compose_container(lab: &Lab) -> bool {
    lab.in_host(|| echo("172.18.0.2:7000"))
}

fn lab_ip_vm(lab: &Lab, args: &str) {
    ip_in(&vm(lab), args);
}

#[test]
fn a_hostile_or_broken_engine_gets_refusals_and_changes_nothing() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    // the host's LAN: a directly connected network of the host
    lab.add_tunnel("lan0", "192.168.1.20/24");
    let before = lab.snapshot();
    lab.dockroute(&["up", "--vm-ip", VM_IP, "--docker", "off"])
        .ok();
    let fixed_only = lab.snapshot();
    lab.dockroute(&["down"]).ok();
    assert_eq!(lab.snapshot(), before);

    // 10,000 short entries (about 1.6 MiB): refused for their number, not their size
    let many: Vec<String> = (0..10_000u32)
        .map(|i| {
            format!(
                r#"{{"Name":"n{i}","Id":"{:064x}","Scope":"local","Driver":"bridge","IPAM":{{"Config":[{{"Subnet":"10.{}.{}.0/24"}}]}}}}"#,
                i + 1,
                i / 256,
                i % 256
            )
        })
        .collect();
    let cases: Vec<(&str, Answer, &str)> = vec![
        (
            "default route",
            one("evil", "0.0.0.0/0"),
            "the default route (0.0.0.0/0): refused",
        ),
        (
            "wider than /8",
            one("wide", "0.0.0.0/1"),
            "wider than /8: refused",
        ),
        (
            "the host's LAN",
            one("lan", "192.168.0.0/20"),
            "overlaps lan0's network 192.168.1.0/24",
        ),
        (
            "the host-only network",
            one("ho", "192.168.99.0/24"),
            "overlaps the host-only network 192.168.99.0/24",
        ),
        (
            "a name that writes to the terminal",
            one("x\\u001b[2Ky", "172.19.0.0/16"),
            "not a Docker network name",
        ),
        (
            "10,000 networks",
            Answer::Networks(list(&many)),
            "more than the 1000",
        ),
        ("truncated JSON", Answer::Truncated, "not reached"),
        ("oversized JSON", Answer::Oversized, "larger than 4 MiB"),
        ("a silent engine", Answer::Silent, "did not answer within"),
    ];
    for (what, answer, says) in cases {
        let engine = FakeEngine::start(lab.dir.path(), answer);
        let run = lab.dockroute(&["up", "--vm-ip", VM_IP, "--docker", &engine.url()]);
        assert_eq!(run.code, 0, "{what}: up failed: {}", run.stderr);
        assert_eq!(
            lab.snapshot(),
            fixed_only,
            "{what}: more than the fixed subnet was routed"
        );
        let told = format!("{}{}", run.stdout, run.stderr);
        assert!(told.contains(says), "{what}: {says:?} not in:\n{told}");
        assert!(
            !told.contains('\x1b'),
            "{what}: an escape reached the terminal"
        );
        let status = lab.dockroute(&["status"]).stdout;
        assert!(
            status.contains(says),
            "{what}: status does not say {says:?}:\n{status}"
        );
        lab.dockroute(&["down"]).ok();
        assert_eq!(lab.snapshot(), before, "{what}: down left something behind");
        assert!(
            !exists(&lab.state_dir().join("state.json")),
            "{what}: record left"
        );
    }
}

#[test]
fn an_unreachable_engine_leaves_up_routing_the_fixed_subnets_with_a_warning() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let before = lab.snapshot();
    let sock = lab.dir.path().join("nobody-listens.sock");
    let url = format!("unix://{}", sock.display());
    let run = lab
        .dockroute(&["up", "--vm-ip", VM_IP, "--docker", &url])
        .ok();
    assert!(
        run.stderr.contains("was not reached")
            && run.stderr.contains("routing the fixed subnets only"),
        "{}",
        run.stderr
    );
    assert!(lab.reaches_container(), "the fixed subnet is not routed");
    let status = lab.dockroute(&["status"]).stdout;
    assert!(status.contains("WARNING not reached"), "{status}");
    lab.dockroute(&["down"]).ok();
    assert_eq!(lab.snapshot(), before);
}

/// The engine stops answering after an `up` routed its networks (a VPN's kill switch blocks its
/// port until `up`, run by the VPN's hook, repairs the firewall; the VM is busy): the next `up`
/// keeps the networks the last one routed, with a warning, instead of cutting their containers
/// off. `down` still removes everything.
#[test]
fn an_engine_not_reached_keeps_the_networks_the_last_up_routed() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    compose_container(&lab);
    let reaches = reaches_compose_container;
    let before = lab.snapshot();
    let engine = FakeEngine::start(lab.dir.path(), Answer::Networks(normal_networks()));
    lab.dockroute(&["up", "--vm-ip", VM_IP, "--docker", &engine.url()])
        .ok();
    assert!(
        reaches(&lab),
        "the compose network's container is not reached"
    );
    let routed = lab.snapshot();

    drop(engine); // nothing listens on its socket any more
    let run = lab.dockroute(&["up"]).ok();
    assert!(reaches(&lab), "the container was cut off");
    assert_eq!(
        lab.snapshot(),
        routed,
        "the last up's networks were withdrawn"
    );
    assert!(
        run.stderr.contains("was not reached")
            && run
                .stderr
                .contains("keeping the 2 network(s) the last up routed"),
        "{}",
        run.stderr
    );
    let status = lab.dockroute(&["status"]).stdout;
    for want in [
        "WARNING not reached",
        "keeping the 2 network(s)",
        "routed 172.18.0.0/16 app_default",
    ] {
        assert!(status.contains(want), "{want:?} not in:\n{status}");
    }

    lab.dockroute(&["down"]).ok();
    assert_eq!(lab.snapshot(), before, "down left something behind");
    assert!(!reaches(&lab));
}

/// `openssl ARGS` in `dir`, which must succeed.
fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The key type of a certificate: docker-machine makes RSA 2048 keys (the private key in a
/// PKCS#1 file, "RSA PRIVATE KEY"); a context's TLS files are often ECDSA P-256.
#[derive(Clone, Copy, Debug)]
enum Key {
    Rsa,
    Ecdsa,
}

impl Key {
    fn newkey(self) -> &'static [&'static str] {
        match self {
            Key::Rsa => &["-newkey", "rsa:2048"],
            Key::Ecdsa => &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
        }
    }
}

/// A self-signed CA in `dir`: NAME.pem and NAME-key.pem.
fn ca(dir: &Path, name: &str, key: Key) {
    let (key_file, cert) = (format!("{name}-key.pem"), format!("{name}.pem"));
    let mut args = vec!["req", "-x509"];
    args.extend(key.newkey());
    args.extend([
        "-nodes", "-keyout", &key_file, "-out", &cert, "-subj", "/CN=ca", "-days", "2",
    ]);
    openssl(dir, &args);
}

/// A key pair and a certificate signed by the CA `ca` (CA.pem, CA-key.pem) in `dir`, named
/// NAME-key.pem and NAME.pem.
fn signed(dir: &Path, ca: &str, name: &str, key: Key, ext: Option<&str>) {
    let (key_file, csr, cert, ca_cert, ca_key) = (
        format!("{name}-key.pem"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{ca}.pem"),
        format!("{ca}-key.pem"),
    );
    let subj = format!("/CN={name}");
    let mut args = vec!["req"];
    args.extend(key.newkey());
    args.extend(["-nodes", "-keyout", &key_file, "-out", &csr, "-subj", &subj]);
    openssl(dir, &args);
    let mut args = vec![
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca_cert,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-out",
        &cert,
        "-days",
        "2",
    ];
    if let Some(e) = ext {
        std::fs::write(dir.join("ext"), e).unwrap();
        args.extend(["-extfile", "ext"]);
    }
    openssl(dir, &args);
}

/// Ends a spawned process when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whose certificate the engine shows.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Engine {
    /// One from the machine's CA, naming the machine's IP.
    Trusted,
    /// One from another CA (naming the machine's IP).
    OtherCa,
    /// One from the machine's CA naming another IP.
    OtherIp,
}

/// `dockroute up --machine dev` against docker-machine's store with `key`-type certificates and
/// an engine (openssl's TLS server in the VM, requiring a client certificate from the machine's
/// CA) showing `engine`'s certificate: a trusted engine's network is routed, any other engine is
/// not reached (the fixed subnets are routed all the same); `down` restores the kernel.
fn machine_engine_over_tls(key: Key, engine: Engine) {
    let what = format!("{key:?} {engine:?}");
    let lab = Lab::new();
    let before = lab.snapshot();
    // docker-machine's store: the machine's config and the client's TLS files
    let store = lab.dir.path().join("machine");
    let m = store.join("machines/dev");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(
        m.join("config.json"),
        format!(r#"{{"Driver":{{"IPAddress":"{VM_IP}"}},"DriverName":"virtualbox"}}"#),
    )
    .unwrap();
    ca(&m, "ca", key);
    ca(&m, "other-ca", key);
    let (server_ca, server_ip) = match engine {
        Engine::Trusted => ("ca", VM_IP),
        Engine::OtherCa => ("other-ca", VM_IP),
        Engine::OtherIp => ("ca", "192.168.99.101"),
    };
    signed(
        &m,
        server_ca,
        "server",
        key,
        Some(&format!("subjectAltName=IP:{server_ip}\n")),
    );
    signed(
        &m,
        "ca",
        "client",
        key,
        Some("extendedKeyUsage=clientAuth\n"),
    );
    std::fs::rename(m.join("client.pem"), m.join("cert.pem")).unwrap();
    match key {
        // as docker-machine writes it: PKCS#1
        Key::Rsa => {
            openssl(
                &m,
                &[
                    "rsa",
                    "-in",
                    "client-key.pem",
                    "-traditional",
                    "-out",
                    "key.pem",
                ],
            );
            let pem = std::fs::read_to_string(m.join("key.pem")).unwrap();
            assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"), "{pem}");
        }
        Key::Ecdsa => std::fs::rename(m.join("client-key.pem"), m.join("key.pem")).unwrap(),
    }
    // the engine: openssl's TLS server in the VM, requiring a client certificate from the CA and
    // answering GET /PATH with the file PATH
    let www = lab.dir.path().join("www");
    // bollard asks without a version prefix (/_ping, /version, /networks); both forms are served
    for v in ["", "v1.53", "v1.41"] {
        let d = www.join(v);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("_ping"), "OK").unwrap();
        std::fs::write(
            d.join("version"),
            r#"{"Version":"20.10.24","ApiVersion":"1.41","MinAPIVersion":"1.12"}"#,
        )
        .unwrap();
        std::fs::write(d.join("networks"), normal_networks()).unwrap();
    }
    let _engine = Killed(
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &vm(&lab),
                "openssl",
                "s_server",
                "-quiet",
                "-WWW",
            ])
            .args(["-accept", &format!("{VM_IP}:2376")])
            .arg("-cert")
            .arg(m.join("server.pem"))
            .arg("-key")
            .arg(m.join("server-key.pem"))
            .arg("-CAfile")
            .arg(m.join("ca.pem"))
            .args(["-Verify", "1"])
            .current_dir(&www)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let listening = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        in_lab_vm_listens(&lab, 2376)
    });
    assert!(listening, "{what}: openssl s_server did not start");

    let run = lab
        .dockroute_env(
            &["--json", "up", "--machine", "dev"],
            &[("MACHINE_STORAGE_PATH", &store)],
        )
        .ok();
    let out = run.json();
    assert_eq!(
        out["docker"]["engine"]["source"]["type"], "machine",
        "{what}: {out}"
    );
    let routes = lab.ip("route show table all");
    if engine == Engine::Trusted {
        assert_eq!(
            out["docker"]["routed"][0]["subnet"], "172.18.0.0/16",
            "{what}: {}",
            run.stderr
        );
        assert!(
            routes.contains("172.18.0.0/16 via 192.168.99.100"),
            "{what}: {routes}"
        );
    } else {
        assert!(
            run.stderr.contains("was not reached")
                && run.stderr.contains("routing the fixed subnets only"),
            "{what}: {}",
            run.stderr
        );
        // rustls's verdict on the engine's certificate
        assert!(
            run.stderr.contains("invalid peer certificate"),
            "{what}: {}",
            run.stderr
        );
        assert!(!routes.contains("172.18.0.0/16"), "{what}: {routes}");
        assert!(
            lab.reaches_container(),
            "{what}: the fixed subnet is not routed"
        );
    }
    lab.dockroute(&["down"]).ok();
    assert_eq!(lab.snapshot(), before, "{what}: down left something behind");
}

#[test]
fn a_docker_machine_engine_is_asked_over_tls_with_the_machine_certificates() {
    if !privileged() {
        return;
    }
    machine_engine_over_tls(Key::Rsa, Engine::Trusted);
}

#[test]
fn an_engine_with_ecdsa_certificates_is_asked_over_tls() {
    if !privileged() {
        return;
    }
    machine_engine_over_tls(Key::Ecdsa, Engine::Trusted);
}

#[test]
fn a_tls_engine_whose_certificate_is_not_from_the_sources_ca_or_names_another_ip_is_not_asked() {
    if !privileged() {
        return;
    }
    machine_engine_over_tls(Key::Rsa, Engine::OtherCa);
    machine_engine_over_tls(Key::Ecdsa, Engine::OtherIp);
}

fn in_lab_vm_listens(lab: &Lab, port: u16) -> bool {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &vm(lab), "ss", "-Hltn"])
        .arg(format!("sport = :{port}"))
        .output()
        .unwrap();
    !out.stdout.is_empty()
}

/// The user's files name the engine when nothing else does: the current Docker context (its
/// `meta.json` under the hash of its name), then Colima's socket. A `meta.json` that is a
/// symbolic link, or a Colima socket reached through one, is not followed: `up` routes the fixed
/// subnets only and says why. `down` restores everything each time.
#[test]
fn the_users_docker_context_colima_and_lima_sockets_are_found_and_their_links_not_followed() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let before = lab.snapshot();
    let home = lab.dir.path().join("home");
    let env: [(&str, &dyn AsRef<std::ffi::OsStr>); 1] = [("HOME", &home)];
    let up = || lab.dockroute_env(&["up", "--vm-ip", VM_IP, "--dns", "off"], &env);
    let routed = || lab.ip("route show table all").contains("172.18.0.0/16 via");
    let down = || {
        lab.dockroute(&["down"]).ok();
        assert_eq!(lab.snapshot(), before, "down did not restore the state");
    };

    // the current context, `lab`: its metadata under sha256("lab")
    let engine = FakeEngine::start(lab.dir.path(), Answer::Networks(normal_networks()));
    let docker = home.join(".docker");
    let meta_dir = docker
        .join("contexts/meta")
        .join("a51146d38077ff992eba84cf1d5e9b249073503eb74868699016153b031a38f7");
    std::fs::create_dir_all(&meta_dir).unwrap();
    std::fs::write(docker.join("config.json"), r#"{"currentContext": "lab"}"#).unwrap();
    let meta = format!(
        r#"{{"Name":"lab","Metadata":{{}},"Endpoints":{{"docker":{{"Host":"{}","SkipTLSVerify":false}}}}}}"#,
        engine.url()
    );
    std::fs::write(meta_dir.join("meta.json"), &meta).unwrap();
    let run = up().ok();
    assert!(
        run.stdout.contains("Docker context 'lab'"),
        "{}",
        run.stdout
    );
    assert!(routed(), "the context's engine's network is not routed");
    down();

    // meta.json a symbolic link (to a file that would name the engine): not followed
    let elsewhere = lab.dir.path().join("meta-elsewhere.json");
    std::fs::write(&elsewhere, &meta).unwrap();
    std::fs::remove_file(meta_dir.join("meta.json")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, meta_dir.join("meta.json")).unwrap();
    let run = up().ok();
    assert!(
        run.stderr.contains("meta.json") && run.stderr.contains("routing the fixed subnets only"),
        "{}",
        run.stderr
    );
    assert!(!routed(), "routed through a link in the user's files");
    assert!(lab.reaches_container(), "the fixed subnet is not routed");
    down();

    // no context: Colima's default profile, its socket in place
    std::fs::remove_dir_all(&docker).unwrap();
    let colima = home.join(".colima/default");
    std::fs::create_dir_all(&colima).unwrap();
    let sock = colima.join("docker.sock");
    let at_colima = FakeEngine::at(sock.clone(), Answer::Networks(normal_networks()));
    let run = up().ok();
    assert!(
        run.stdout.contains("Colima profile 'default'"),
        "{}",
        run.stdout
    );
    assert!(routed(), "Colima's engine's network is not routed");
    down();

    // the socket a symbolic link to another engine's: not used
    drop(at_colima);
    std::os::unix::fs::symlink(&engine.0.path, &sock).unwrap();
    let run = up().ok();
    assert!(!routed(), "routed through a linked socket: {}", run.stdout);
    assert!(lab.reaches_container(), "the fixed subnet is not routed");
    down();

    // no Colima: Lima's `docker` instance, its socket in place
    std::fs::remove_dir_all(home.join(".colima")).unwrap();
    let lima = home.join(".lima/docker/sock");
    std::fs::create_dir_all(&lima).unwrap();
    let _at_lima = FakeEngine::at(
        lima.join("docker.sock"),
        Answer::Networks(normal_networks()),
    );
    let run = up().ok();
    assert!(
        run.stdout.contains("Lima instance 'docker'"),
        "{}",
        run.stdout
    );
    assert!(routed(), "Lima's engine's network is not routed");
    down();
}
