//! The VM must be the VM: an IP from a file or variable a user controls is trusted only on a
//! host-only link, never on a tunnel or the default route's link; the VM found in the neighbour
//! table is pinned; a DNS server that answers every name is not the VM's. Real kernel, in the
//! lab's namespaces.
#![cfg(target_os = "linux")]

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

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
    // the carrier's flap may have taken the entry already
    lab.ip(&format!("neigh flush to {VM_IP} dev vboxnet0"));
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
