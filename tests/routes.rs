//! `up`, `down`, `status` against the real kernel, in a namespace lab per test.
#![cfg(target_os = "linux")]

mod common;
use common::*;

#[test]
fn up_makes_the_container_reachable_and_down_restores_the_exact_state() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let before = lab.snapshot();
    assert!(!lab.reaches_container(), "reachable before up?");

    let first = up(&lab);
    assert!(
        first.stdout.contains("applied 5 change(s)"),
        "{}",
        first.stdout
    );
    assert!(lab.reaches_container(), "not reachable after up");
    let after_up = lab.snapshot();

    let second = lab.dockroute(&["--json", "up", "--vm-ip", VM_IP]).ok();
    assert_eq!(second.json()["changes"], serde_json::json!([]));
    assert_eq!(
        lab.snapshot(),
        after_up,
        "second up changed the kernel state"
    );

    lab.dockroute(&["down"]).ok();
    assert_eq!(
        lab.snapshot(),
        before,
        "down did not restore the state byte for byte"
    );
    assert!(!lab.reaches_container());
    assert!(
        !exists(&lab.state_dir().join("state.json")),
        "record left behind"
    );

    let again = lab.dockroute(&["down"]).ok();
    assert!(
        again.stdout.contains("nothing to change"),
        "{}",
        again.stdout
    );
}

#[test]
fn dry_run_prints_the_changes_and_applies_none() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let before = lab.snapshot();
    let dry = lab.dockroute(&["up", "--vm-ip", VM_IP, "--dry-run"]).ok();
    assert!(
        dry.stdout.contains("would apply 5 change(s)"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout
            .contains("+ rule pref 5100 to 172.17.0.0/16 lookup dockroute"),
        "{}",
        dry.stdout
    );
    assert_eq!(lab.snapshot(), before);
    assert!(!exists(&lab.state_dir()), "dry run created the state dir");

    up(&lab);
    let installed = lab.snapshot();
    let dry = lab.dockroute(&["--json", "down", "--dry-run"]).ok();
    let changes = dry.json()["changes"].as_array().unwrap().len();
    assert_eq!(changes, 5);
    assert_eq!(lab.snapshot(), installed);
    assert!(lab.reaches_container());
}

// Each VPN routing pattern of issue 2, point 4, through common::vpn_scenario.

#[test]
fn survives_an_exact_prefix_route_with_a_lower_metric() {
    if !privileged() {
        return;
    }
    vpn_scenario(
        "100",
        |lab| {
            lab.ip("route add 172.17.0.0/16 dev tun0 metric 0");
        },
        false,
    );
}

#[test]
fn survives_a_vpnc_script_route_replace() {
    if !privileged() {
        return;
    }
    // vpnc-script's split include: `ip route replace NET dev $TUNDEV` (overwrites the manual one)
    vpn_scenario(
        "0",
        |lab| {
            lab.ip("route replace 172.17.0.0/16 dev tun0");
        },
        false,
    );
}

#[test]
fn survives_a_tailscale_exit_node_table() {
    if !privileged() {
        return;
    }
    // Exit node without LAN access: table 52 at pref 5270 with a default route, and the
    // host-only network routed into the tunnel too.
    vpn_scenario(
        "0",
        |lab| {
            lab.ip("route add default dev tun0 table 52");
            lab.ip("route add 192.168.99.0/24 dev tun0 table 52");
            lab.ip("rule add pref 5270 lookup 52");
        },
        false,
    );
}

#[test]
fn survives_a_full_tunnel_with_half_default_routes() {
    if !privileged() {
        return;
    }
    // OpenVPN redirect-gateway def1: 0/1 + 128/1. A /16 is longer, so even the manual route
    // survives; dockroute must simply not be worse.
    vpn_scenario(
        "0",
        |lab| {
            lab.ip("route add 0.0.0.0/1 dev tun0");
            lab.ip("route add 128.0.0.0/1 dev tun0");
        },
        true,
    );
}

#[test]
fn down_removes_only_what_carries_the_tag() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    // Someone else's objects that look like dockroute's: same table, same prefix, same pref.
    lab.ip(&format!(
        "route add 172.17.0.0/16 via {VM_IP} table 5017 metric 7"
    ));
    lab.ip(&format!("route add 172.17.0.0/16 via {VM_IP} metric 99"));
    lab.ip("rule add pref 5100 to 172.17.0.0/16 lookup 5017");
    let before = lab.snapshot();
    up(&lab);
    assert_eq!(lab.tagged(), 5);
    lab.dockroute(&["down"]).ok();
    assert_eq!(lab.snapshot(), before);
}

#[test]
fn status_reports_link_source_kernel_choice_and_conflicts() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    lab.add_tunnel("tun0", "10.66.0.2/24");
    lab.ip("route add 172.17.0.0/16 dev tun0 metric 0");
    lab.ip("rule add pref 5270 lookup 52");
    up(&lab);
    let st = lab.dockroute(&["--json", "status"]).ok().json();
    assert_eq!(st["target"]["interface"], "vboxnet0");
    assert_eq!(st["target"]["vm_ip"], VM_IP);
    assert_eq!(st["target"]["vm_ip_source"]["type"], "flag");
    assert_eq!(st["link"]["addrs"][0], "192.168.99.1/24");
    assert_eq!(st["installed"].as_array().unwrap().len(), 5);
    assert_eq!(st["in_sync"], true);
    let probe = &st["probes"][0];
    assert_eq!(probe["address"], "172.17.0.1");
    assert_eq!(probe["kernel"]["table"], 5017);
    assert_eq!(probe["kernel"]["gateway"], VM_IP);
    assert_eq!(probe["kernel"]["dev"], "vboxnet0");
    let conflicts = st["conflicts"].as_array().unwrap();
    assert!(
        conflicts
            .iter()
            .any(|c| c["kind"] == "route" && c["dev"] == "tun0" && c["dst"] == "172.17.0.0/16"),
        "{st}"
    );
    assert!(
        conflicts
            .iter()
            .any(|c| c["kind"] == "rule" && c["pref"] == 5270 && c["before_dockroute"] == false),
        "{st}"
    );

    let human = lab.dockroute(&["status"]).ok().stdout;
    for want in [
        "vboxnet0 (up, 192.168.99.1/24)",
        "192.168.99.100 (from --vm-ip",
        "5 entries, up to date",
        "table dockroute",
        "ok",
        "dev tun0",
    ] {
        assert!(human.contains(want), "missing {want:?} in:\n{human}");
    }

    // A routing change the user made by hand shows up as out of date and not via the VM.
    lab.ip("rule del pref 5100 to 172.17.0.0/16 lookup 5017 proto 100");
    let run = lab.dockroute(&["--json", "status"]);
    assert_eq!(
        run.code, 3,
        "a subnet not via the VM is degraded: {}",
        run.stderr
    );
    let st = run.json();
    assert_eq!(st["in_sync"], false);
    assert_eq!(st["probes"][0]["ok"], false);
}

#[test]
fn status_changes_nothing_and_works_without_root() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    up(&lab);
    let before = lab.snapshot();
    let st = lab.as_nobody(&["--json", "status"]).ok().json();
    assert_eq!(st["installed"].as_array().unwrap().len(), 5);
    assert_eq!(st["probes"][0]["ok"], true);
    assert_eq!(lab.snapshot(), before);

    // and `down` as non-root is refused before anything happens
    let run = lab.as_nobody(&["down"]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.starts_with("error: ")
            && run.stderr.contains("root")
            && run.stderr.lines().count() == 1,
        "{}",
        run.stderr
    );
    assert_eq!(lab.snapshot(), before);
}

#[test]
fn a_moved_vm_is_followed_without_leftovers() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    up(&lab);
    // the VM comes back with another address (e.g. DHCP on the host-only network)
    let vm = format!("{}-vm", lab.prefix);
    ip_in(&vm, "addr flush dev eth0");
    ip_in(&vm, "addr add 192.168.99.101/24 dev eth0");
    // the host's neighbour entry for the old address ages out (up's DNS probe had just confirmed
    // it: with it the VM's MAC would still carry the old route's traffic)
    lab.ip("neigh flush dev vboxnet0");
    assert!(!lab.reaches_container());
    let out = lab
        .dockroute(&["--json", "up", "--vm-ip", "192.168.99.101"])
        .ok()
        .json();
    assert_eq!(out["changes"].as_array().unwrap().len(), 4, "{out}");
    assert!(lab.reaches_container());
    assert_eq!(lab.tagged(), 5);
}

/// status reads only the routes it can show: among 3,000 unrelated routes, it still names the
/// ones that cover or sit inside the subnets (in any table), the VPN's routes through its tunnel
/// and default routes of other tables, and none of the unrelated ones.
#[test]
fn status_among_thousands_of_routes_shows_exactly_the_ones_that_matter() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    lab.add_tunnel("tun0", "10.66.0.2/24");
    // an ordinary link (not a tunnel) carrying thousands of routes
    lab.ip("link add bulk0 type veth peer name bulk0p");
    lab.ip("addr add 10.77.0.2/24 dev bulk0");
    lab.ip("link set bulk0p up");
    lab.ip("link set bulk0 up");
    let batch: String = (0..3000)
        .map(|i| {
            format!(
                "route add 10.{}.{}.0/24 dev bulk0\n",
                100 + i / 256,
                i % 256
            )
        })
        .collect();
    let mut ip = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.host(), "ip", "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    ip.stdin
        .take()
        .unwrap()
        .write_all(batch.as_bytes())
        .unwrap();
    assert!(ip.wait().unwrap().success());
    lab.ip("route add 172.16.0.0/12 dev bulk0"); // covers the subnet
    lab.ip("route add 172.17.5.0/24 dev bulk0 table 77"); // inside it, another table
    lab.ip("route add 10.99.0.0/16 dev tun0"); // the VPN's, elsewhere
    lab.ip("route add default dev tun0 table 52"); // a Tailscale-like default
    up(&lab);
    let st = lab.dockroute(&["--json", "status"]).ok().json();
    let conflicts: Vec<String> = st["conflicts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "route")
        .map(|c| format!("{} {} {}", c["dst"], c["dev"], c["table"]))
        .collect();
    assert!(
        conflicts.contains(&r#""172.16.0.0/12" "bulk0" 254"#.to_string()),
        "{conflicts:?}"
    );
    assert!(
        conflicts.contains(&r#""172.17.5.0/24" "bulk0" 77"#.to_string()),
        "{conflicts:?}"
    );
    assert!(
        conflicts.contains(&r#""0.0.0.0/0" "tun0" 52"#.to_string()),
        "{conflicts:?}"
    );
    assert_eq!(conflicts.len(), 3, "{conflicts:?}");
    let vpn: Vec<String> = st["vpn"]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["dst"].as_str().unwrap().to_string())
        .collect();
    for want in ["10.66.0.0/24", "10.99.0.0/16", "0.0.0.0/0"] {
        assert!(vpn.contains(&want.to_string()), "{want} missing: {vpn:?}");
    }
    assert!(
        !st.to_string().contains("10.100.5.0/24"),
        "an unrelated route: {st}"
    );
    assert_eq!(st["installed"].as_array().unwrap().len(), 5);
    assert_eq!(st["in_sync"], true);
}

/// `up` does not read the main table (a VPN may fill it with thousands of routes): its copy
/// there is known from the record. Without the record (a run that died before writing it) the
/// copy it finds in its place is recognised as its own, and nothing changes.
#[test]
fn up_without_its_record_recognises_its_own_route_in_main() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    up(&lab);
    let before = lab.snapshot();
    std::fs::remove_file(lab.state_dir().join("state.json")).unwrap();
    let out = lab
        .dockroute(&["--json", "up", "--vm-ip", VM_IP])
        .ok()
        .json();
    assert_eq!(out["changes"].as_array().unwrap().len(), 0, "{out}");
    assert_eq!(lab.snapshot(), before);
    assert!(lab.reaches_container());
    lab.dockroute(&["down"]).ok();
    assert_eq!(lab.tagged(), 0);
}

/// A VPN's route takes the place of dockroute's copy in main (same prefix, same metric): `up`
/// says so and leaves it exactly as it is, with no copy of its own put beside it.
#[test]
fn a_route_in_place_of_the_main_copy_is_reported_and_left_alone() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    lab.add_tunnel("tun0", "10.66.0.2/24");
    up(&lab);
    lab.ip("route replace 172.17.0.0/16 dev tun0 metric 5017");
    let before = lab.snapshot();
    let run = lab.dockroute(&["up", "--vm-ip", VM_IP]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("another route for 172.17.0.0/16 with metric 5017"),
        "{}",
        run.stderr
    );
    assert_eq!(lab.snapshot(), before);
    assert!(
        lab.reaches_container(),
        "dockroute's own table still carries it"
    );
}

/// `up` with 150 subnets (Docker's networks of a busy machine: 450 route and rule changes) sends
/// them in batches the kernel's acknowledgements fit (one datagram of them all overflowed the
/// socket's receive buffer: ENOBUFS, and the undo failed the same way), and `down` removes them.
#[test]
fn up_with_150_subnets_applies_them_all_and_down_removes_them() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let before = lab.snapshot();
    let subnets: Vec<String> = (0..150).map(|i| format!("10.203.{i}.0/24")).collect();
    let mut args = vec!["up", "--vm-ip", VM_IP, "--dns", "off"];
    for s in &subnets {
        args.extend(["--subnet", s.as_str()]);
    }
    lab.dockroute(&args).ok();
    // dockroute's table and main's copy for each, the host-only network's route, and a rule
    // for each and the host-only network
    assert_eq!(lab.tagged(), 3 * 150 + 2);
    lab.dockroute(&["down"]).ok();
    assert_eq!(lab.snapshot(), before);
}
