//! The VM must be the VM: an IP from a file or variable a user controls is trusted only on a
//! host-only link, never on a tunnel or the default route's link; the VM found in the neighbour
//! table is pinned; a DNS server that answers every name is not the VM's. Real kernel, in the
//! lab's namespaces.
#![cfg(target_os = "linux")]

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A link that is not host-only, as a laptop's Wi-Fi would be: a veth called wlan0 on 10.77.0.0/24.
fn lan_link(lab: &Lab) {
    lab.ip("link add wlan0 type veth peer name wlan0p");
    lab.ip("addr add 10.77.0.2/24 dev wlan0");
    lab.ip("link set wlan0p up");
    lab.ip("link set wlan0 up");
}

/// A docker-machine store under the lab's directory whose machine `default` has `ip`, written as
/// docker-machine does (a new file renamed over the old one). Returns the store.
fn machine(lab: &Lab, ip: &str) -> PathBuf {
    let store = lab.dir.path().join("machine");
    let config = store.join("machines/default/config.json");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    let tmp = config.with_extension("tmp");
    std::fs::write(&tmp, format!("{{\"Driver\": {{\"IPAddress\": \"{ip}\"}}}}")).unwrap();
    std::fs::rename(&tmp, &config).unwrap();
    store
}

/// Routes, rules, the firewall and the record: what a refusal must leave byte-identical.
fn state(lab: &Lab) -> String {
    format!(
        "{}\n--- nft ---\n{}\n--- record ---\n{}",
        lab.snapshot(),
        fw(lab, "nft", "list ruleset"),
        lab.state_dir().join("state.json").exists()
    )
}

fn up_machine(lab: &Lab, store: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["up", "--machine", "default"];
    args.extend_from_slice(extra);
    lab.dockroute_env(&args, &[("MACHINE_STORAGE_PATH", &store)])
}

/// Refused with one `error:` line saying `why`, and nothing changed.
fn refused(lab: &Lab, run: &Run, why: &str, before: &str) {
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(errors[0].contains(why), "{}", run.stderr);
    assert_eq!(state(lab), before);
}

#[test]
fn a_users_machine_config_naming_a_lan_address_is_refused_and_changes_nothing() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    lan_link(&lab);
    // a VPN's kill switch: the rules dockroute would open for the VM's networks
    nft_load(&lab, "vpn.nft", MULLVAD_LIKE);
    let store = machine(&lab, "10.77.0.50");
    let before = state(&lab);
    let run = up_machine(&lab, &store, &["--dns", "off"]);
    refused(
        &lab,
        &run,
        "is on wlan0, which is not a host-only link",
        &before,
    );
    assert!(run.stderr.contains("--interface wlan0"), "{}", run.stderr);

    // root names the link: accepted (it is neither a tunnel nor the way out)
    up_machine(&lab, &store, &["--interface", "wlan0", "--dns", "off"]).ok();
    assert!(
        lab.ip("route show table all")
            .contains("via 10.77.0.50 dev wlan0"),
        "{}",
        lab.snapshot()
    );
    lab.dockroute(&["down"]).ok();

    // ... but never the link the default route leaves by, even named
    lab.ip("route add default via 10.77.0.1 dev wlan0");
    let before = state(&lab);
    let run = up_machine(&lab, &store, &["--interface", "wlan0", "--dns", "off"]);
    refused(&lab, &run, "wlan0, which carries a default route", &before);

    // ... nor a tunnel
    lab.add_tunnel("tun7", "10.88.0.2/24");
    let store = machine(&lab, "10.88.0.50");
    let before = state(&lab);
    let run = up_machine(&lab, &store, &["--interface", "tun7", "--dns", "off"]);
    refused(&lab, &run, "tun7, which is a tunnel (tun)", &before);
}

#[test]
fn a_host_only_network_wider_than_a_16_is_refused() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    lab.ip("addr flush dev vboxnet0");
    lab.ip("addr add 10.0.0.1/8 dev vboxnet0");
    let before = state(&lab);
    let run = lab.dockroute(&["up", "--vm-ip", "10.1.2.3", "--dns", "off"]);
    refused(&lab, &run, "10.0.0.0/8 is wider than a /16", &before);
}

/// A running `dockroute watch`, its stderr collected; killed on drop.
struct Watch {
    child: std::process::Child,
    log: Arc<Mutex<String>>,
}

impl Watch {
    fn start(lab: &Lab, args: &[&str], env: &[(&str, &str)]) -> Watch {
        let mut all = vec!["watch"];
        all.extend_from_slice(args);
        let mut child = lab.spawn(&all, env);
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Watch { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Wait (up to 10 s) until the log holds `needle`.
    fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no '{needle}' in the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn watch_refuses_a_machine_config_rewritten_to_a_lan_address() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    lan_link(&lab);
    let store = machine(&lab, VM_IP);
    let w = Watch::start(
        &lab,
        &["--machine", "default", "--dns", "off"],
        &[("MACHINE_STORAGE_PATH", store.to_str().unwrap())],
    );
    w.wait_log("watching (");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab.reaches_container() {
        assert!(Instant::now() < deadline, "never set up:\n{}", w.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = state(&lab);
    // the user rewrites config.json while watch runs
    machine(&lab, "10.77.0.50");
    w.wait_log("is on wlan0, which is not a host-only link");
    assert_eq!(state(&lab), before, "{}", w.log());
    assert!(lab.reaches_container());
}

/// A second "VM" on the host-only link: a namespace with a macvlan on the VM's side of the link
/// (its own link-layer address) at 192.168.99.200, answering DNS for every name. Removed on drop.
struct Rogue {
    ns: String,
}

impl Rogue {
    fn new(lab: &Lab) -> Rogue {
        let ns = format!("{}-rogue", lab.prefix);
        let rogue = Rogue { ns: ns.clone() };
        stdout_of(
            {
                let mut c = Command::new("ip");
                c.args(["netns", "add", &ns]);
                c
            },
            "ip netns add",
        );
        ip_in(
            &lab.vm(),
            "link add rogue link eth0 type macvlan mode bridge",
        );
        ip_in(&lab.vm(), &format!("link set rogue netns {ns}"));
        ip_in(&ns, "addr add 192.168.99.200/24 dev rogue");
        ip_in(&ns, "link set rogue up");
        ip_in(&ns, "link set lo up");
        rogue
    }
}

impl Drop for Rogue {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.ns])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// Make the host learn `ip` as a neighbour on vboxnet0 (an ARP exchange, as any traffic does).
fn touch(lab: &Lab, ip: &'static str) {
    lab.in_host(move || {
        let addr: std::net::SocketAddr = format!("{ip}:1").parse().unwrap();
        let _ = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300));
    });
}

fn vm_route(lab: &Lab) -> String {
    lab.ip("route show table 5017")
}

#[test]
fn the_vm_found_in_the_neighbour_table_is_kept_and_another_is_reported_not_adopted() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    touch(&lab, VM_IP);
    lab.dockroute(&["up", "--dns", "off"]).ok();
    assert!(vm_route(&lab).contains(&format!("via {VM_IP}")));
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lab.state_dir().join("state.json")).unwrap())
            .unwrap();
    assert!(
        rec["target"]["vm_lladdr"]
            .as_str()
            .is_some_and(|l| l.len() == 17),
        "{rec}"
    );

    // the VM goes quiet (its entry is gone) and another host answers on the link
    let _rogue = Rogue::new(&lab);
    lab.ip(&format!("neigh del {VM_IP} dev vboxnet0"));
    touch(&lab, "192.168.99.200");
    let run = lab.dockroute(&["up", "--dns", "off"]).ok();
    assert!(
        vm_route(&lab).contains(&format!("via {VM_IP}")),
        "{}",
        vm_route(&lab)
    );
    assert!(!vm_route(&lab).contains("192.168.99.200"));
    assert!(
        run.stderr.contains("192.168.99.200") && run.stderr.contains("left alone"),
        "{}",
        run.stderr
    );
    let st = lab.dockroute(&["--json", "status"]).json();
    assert!(st.to_string().contains("192.168.99.200"), "{st}");
    assert!(lab.reaches_container());

    // both answer: still the recorded VM, no error
    touch(&lab, VM_IP);
    lab.dockroute(&["up", "--dns", "off"]).ok();
    assert!(vm_route(&lab).contains(&format!("via {VM_IP}")));

    // another machine takes the VM's address (the VM re-created with a new link-layer address
    // looks the same): refused, nothing changed
    ip_in(&lab.vm(), "link set eth0 down");
    ip_in(&lab.vm(), "link set eth0 address 02:de:ad:be:ef:01");
    ip_in(&lab.vm(), "link set eth0 up");
    lab.ip(&format!("neigh del {VM_IP} dev vboxnet0"));
    touch(&lab, VM_IP);
    let before = state(&lab);
    let run = lab.dockroute(&["up", "--dns", "off"]);
    refused(&lab, &run, "now answers from 02:de:ad:be:ef:01", &before);
    // `down` forgets it
    lab.dockroute(&["down"]).ok();
    assert!(!lab.state_dir().join("state.json").exists());
}

/// A DNS server in the VM that answers every name with an address, in place of the lab's;
/// killed and waited for on drop.
struct WildcardDns(std::process::Child);

impl WildcardDns {
    fn start(lab: &Lab) -> WildcardDns {
        lab.stop_vm_dns();
        let dns = WildcardDns(
            Command::new("setsid")
                .args(["ip", "netns", "exec", &lab.vm(), "dnsmasq"])
                .args([
                    "--keep-in-foreground",
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                    "--user=root",
                    "--bind-interfaces",
                    "--listen-address=172.17.0.1",
                    "--port=53",
                    "--address=/#/172.17.0.9",
                    "--pid-file=",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("dnsmasq"),
        );
        for _ in 0..300 {
            let ss = Command::new("ip")
                .args(["netns", "exec", &lab.vm(), "ss", "-Hlun", "sport = :53"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&ss.stdout).contains("53") {
                return dns;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("dnsmasq did not start");
    }
}

impl Drop for WildcardDns {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_dns_server_that_answers_every_name_is_not_the_vms() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let _dns = WildcardDns::start(&lab);
    let resolv = std::fs::read(lab.resolv_conf()).unwrap();
    let before = state(&lab);
    let run = lab.dockroute(&["up", "--vm-ip", VM_IP, "--dns", "resolv-conf"]);
    refused(
        &lab,
        &run,
        "is not the VM's DNS server for .docker",
        &before,
    );
    assert_eq!(std::fs::read(lab.resolv_conf()).unwrap(), resolv);
    assert_eq!(lab.getent("www.example.com"), None);
}

#[test]
fn watch_keeps_the_vm_from_the_neighbour_table_when_another_host_answers() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    touch(&lab, VM_IP);
    let w = Watch::start(&lab, &["--dns", "off"], &[]);
    w.wait_log("watching (");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab.reaches_container() {
        assert!(Instant::now() < deadline, "never set up:\n{}", w.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // the VM goes quiet and another host answers on the link
    let _rogue = Rogue::new(&lab);
    lab.ip(&format!("neigh del {VM_IP} dev vboxnet0"));
    touch(&lab, "192.168.99.200");
    w.wait_log("192.168.99.200");
    w.wait_log("also answers on a host-only link");
    assert!(
        vm_route(&lab).contains(&format!("via {VM_IP}")),
        "{}\n{}",
        vm_route(&lab),
        w.log()
    );
    assert!(!vm_route(&lab).contains("192.168.99.200"));
    assert!(lab.reaches_container());
}
