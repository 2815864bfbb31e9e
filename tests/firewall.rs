//! VPN kill switches and firewalls, in the lab's host namespace only. Each scenario: reachable
//! with dockroute's routes; broken once the VPN's firewall is in place (as with the real client);
//! reachable after `dockroute up` (the post-connect hook); `up` again changes nothing; the VPN's
//! own rules byte-identical after `dockroute down`.
#![cfg(target_os = "linux")]

mod common;
use common::*;

/// How a test reads one firewall backend: its name in dockroute's output, the listing of its
/// rules, and how dockroute's tag looks in that listing.
struct Backend {
    program: &'static str,
    list_args: &'static str,
    tag: &'static str,
}

const IPTABLES: Backend = Backend {
    program: "iptables",
    list_args: "-S",
    tag: "--comment dockroute",
};
const IPTABLES_LEGACY: Backend = Backend {
    program: "iptables-legacy",
    list_args: "-S",
    tag: "--comment dockroute",
};
const NFTABLES: Backend = Backend {
    program: "nft",
    list_args: "list ruleset",
    tag: "comment \"dockroute\"",
};

impl Backend {
    fn list(&self, lab: &Lab) -> String {
        fw(lab, self.program, self.list_args)
    }

    fn tagged(&self, lab: &Lab) -> usize {
        self.list(lab).matches(self.tag).count()
    }
}

/// `status` lists the tunnel, what blocks the VM, what dockroute repaired, and the vendor hint.
fn check_status(lab: &Lab, blocking: usize, repaired: usize, hint: Option<&str>) {
    let run = lab.dockroute(&["--json", "status"]);
    // a firewall that blocks the VM is a degraded state (exit status 3)
    let code = if blocking > 0 { 3 } else { 0 };
    assert_eq!(run.code, code, "{}{}", run.stdout, run.stderr);
    let st = run.json();
    let v = &st["vpn"];
    let links = v["links"].as_array().unwrap();
    assert!(links.iter().any(|l| l["name"] == "tun0"), "{v}");
    assert_eq!(
        v["firewall_blocking"].as_array().unwrap().len(),
        blocking,
        "{v}"
    );
    assert_eq!(
        v["firewall_repaired"].as_array().unwrap().len(),
        repaired,
        "{v}"
    );
    if let Some(h) = hint {
        let hints = v["hints"].as_array().unwrap();
        assert!(hints.iter().any(|x| x.as_str().unwrap().contains(h)), "{v}");
    }
}

fn scenario(
    b: &Backend,
    vpn: &dyn Fn(&Lab),
    reconnect: Option<&dyn Fn(&Lab)>,
    expected_rules: usize,
    hint: Option<&str>,
) {
    let lab = Lab::new();
    lab.add_tunnel("tun0", "10.66.0.2/24");
    up(&lab);
    assert!(lab.reaches_container());
    vpn(&lab);
    assert!(
        !lab.reaches_container(),
        "the VPN's firewall does not block like the real one"
    );
    let vpn_rules = b.list(&lab);
    check_status(&lab, expected_rules, 0, hint);

    let fixed = up(&lab);
    // each backend's repair in its own program's notation (issue 16, point 10: nft's for nftables)
    let added = format!("+ firewall {} ", b.program);
    assert!(fixed.stdout.contains(&added), "{}", fixed.stdout);
    assert!(lab.reaches_container(), "still blocked after up");
    assert_eq!(b.tagged(&lab), expected_rules);
    let again = lab
        .dockroute(&["--json", "up", "--vm-ip", VM_IP])
        .ok()
        .json();
    assert_eq!(again["firewall"], serde_json::json!([]), "{again}");
    check_status(&lab, 0, expected_rules, hint);

    if let Some(reconnect) = reconnect {
        reconnect(&lab);
        assert!(
            !lab.reaches_container(),
            "the reconnect did not rebuild the block"
        );
        up(&lab);
        assert!(
            lab.reaches_container(),
            "still blocked after up following the reconnect"
        );
        assert_eq!(b.tagged(&lab), expected_rules, "duplicated rules");
    }

    let down = lab.dockroute(&["down"]).ok();
    assert!(down.stdout.contains("- firewall"), "{}", down.stdout);
    assert_eq!(b.list(&lab), vpn_rules, "the VPN's rules changed");
}

fn anyconnect_chain(lab: &Lab) {
    for rule in [
        "-A ciscovpn -o lo -j RETURN",
        "-A ciscovpn -i lo -j RETURN",
        "-A ciscovpn -o tun0 -j RETURN",
        "-A ciscovpn -i tun0 -j RETURN",
        "-A ciscovpn -j DROP",
    ] {
        fw(lab, "iptables", rule);
    }
}

#[test]
fn anyconnect_style_chain_and_its_reconnect() {
    if !privileged() {
        return;
    }
    // AnyConnect on Linux: chain ciscovpn, jumped from INPUT and OUTPUT, ends in a catch-all DROP;
    // every reconnect flushes and rebuilds it.
    scenario(
        &IPTABLES,
        &|lab| {
            fw(lab, "iptables", "-N ciscovpn");
            anyconnect_chain(lab);
            fw(lab, "iptables", "-I INPUT 1 -j ciscovpn");
            fw(lab, "iptables", "-I OUTPUT 1 -j ciscovpn");
        },
        Some(&|lab| {
            fw(lab, "iptables", "-F ciscovpn");
            anyconnect_chain(lab);
        }),
        4, // RETURN for the subnet and the host-only network, in and out
        Some("split-exclude"),
    );
}

fn kill_switch(program: &'static str) -> impl Fn(&Lab) {
    move |lab| {
        for rule in KILL_SWITCH {
            fw(lab, program, rule);
        }
    }
}

#[test]
fn kill_switch_with_policy_drop_nft_backend() {
    if !privileged() {
        return;
    }
    scenario(&IPTABLES, &kill_switch("iptables"), None, 4, None);
}

#[test]
fn kill_switch_with_policy_drop_legacy_backend() {
    if !privileged() {
        return;
    }
    // Proton's legacy CLI style; an accept in iptables-nft would not help against this drop.
    scenario(
        &IPTABLES_LEGACY,
        &kill_switch("iptables-legacy"),
        None,
        4,
        None,
    );
}

/// A kill switch of explicit DROP rules at the end of INPUT and OUTPUT (as VPN kill-switch
/// scripts add them).
const DROP_LAST: [&str; 6] = [
    "-A INPUT -i lo -j ACCEPT",
    "-A INPUT -i tun0 -j ACCEPT",
    "-A INPUT -j DROP",
    "-A OUTPUT -o lo -j ACCEPT",
    "-A OUTPUT -o tun0 -j ACCEPT",
    "-A OUTPUT -j DROP",
];

#[test]
fn a_reconnect_that_puts_its_drop_above_dockroutes_accept() {
    if !privileged() {
        return;
    }
    // On reconnect the client takes its rules out and inserts them again at the top: its DROP
    // now comes before dockroute's ACCEPT, which no longer does anything there. `up` moves
    // dockroute's rules back above it (not a second copy), and `down` leaves the client's rules
    // as they were.
    scenario(
        &IPTABLES,
        &|lab| {
            for rule in DROP_LAST {
                fw(lab, "iptables", rule);
            }
        },
        Some(&|lab| {
            for rule in DROP_LAST {
                fw(lab, "iptables", &rule.replacen("-A", "-D", 1));
            }
            for rule in DROP_LAST.iter().rev() {
                let (chain, rest) = rule[3..].split_once(' ').unwrap();
                fw(lab, "iptables", &format!("-I {chain} 1 {rest}"));
            }
        }),
        4,
        None,
    );
}

#[test]
fn firewall_off_leaves_the_block_alone() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    lab.add_tunnel("tun0", "10.66.0.2/24");
    kill_switch("iptables")(&lab);
    let rules = IPTABLES.list(&lab);
    let before = lab.snapshot();
    // the block also keeps the VM's DNS from answering: with resolv-conf, up refuses
    let refused = lab.dockroute(&["up", "--vm-ip", VM_IP, "--firewall", "off"]);
    assert!(
        refused.code != 0 && refused.stderr.contains("does not answer"),
        "{}",
        refused.stderr
    );
    assert_eq!(lab.snapshot(), before);
    lab.dockroute(&["up", "--vm-ip", VM_IP, "--firewall", "off", "--dns", "off"])
        .ok();
    assert_eq!(IPTABLES.list(&lab), rules);
    assert!(!lab.reaches_container());
}

#[test]
fn nftables_vpn_table_with_policy_drop_and_its_recreation() {
    if !privileged() {
        return;
    }
    let recreate = format!("delete table inet vpn\n{MULLVAD_LIKE}");
    // the client re-creates its table on every state change
    scenario(
        &NFTABLES,
        &|lab| nft_load(lab, "vpn.nft", MULLVAD_LIKE),
        Some(&|lab| nft_load(lab, "vpn.nft", &recreate)),
        4,
        None,
    );
}

#[test]
fn nftables_route_type_output_chain() {
    if !privileged() {
        return;
    }
    // NordVPN's nftables backend: output is a `type route` chain with policy drop; input filters.
    const NORDVPN_LIKE: &str = "table inet nordvpn {
    chain input {
        type filter hook input priority 0; policy drop;
        iifname \"lo\" accept
        iifname \"tun0\" accept
    }
    chain output {
        type route hook output priority -150; policy drop;
        oifname \"lo\" accept
        oifname \"tun0\" accept
    }
}
";
    scenario(
        &NFTABLES,
        &|lab| nft_load(lab, "vpn.nft", NORDVPN_LIKE),
        None,
        4,
        Some("nordvpn allowlist add subnet 172.17.0.0/16"),
    );
}

/// nftables: the VPN inserts a drop at the top of its chains, above dockroute's accepts. `up`
/// moves them back above it (deleted by handle, inserted at the top), and `down` leaves the VPN's
/// table as the VPN made it.
#[test]
fn nftables_drop_inserted_above_dockroutes_accept() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    lab.add_tunnel("tun0", "10.66.0.2/24");
    nft_load(&lab, "vpn.nft", MULLVAD_LIKE);
    up(&lab);
    assert!(lab.reaches_container());
    assert_eq!(NFTABLES.tagged(&lab), 4);
    nft_load(
        &lab,
        "drop.nft",
        "insert rule inet vpn output oifname \"vboxnet0\" drop\n\
         insert rule inet vpn input iifname \"vboxnet0\" drop\n",
    );
    assert!(!lab.reaches_container(), "the inserted drop does not block");
    let theirs: Vec<String> = NFTABLES
        .list(&lab)
        .lines()
        .filter(|l| !l.contains(NFTABLES.tag))
        .map(str::to_string)
        .collect();
    let moved = lab
        .dockroute(&["--json", "up", "--vm-ip", VM_IP])
        .ok()
        .json();
    assert_eq!(moved["firewall"].as_array().unwrap().len(), 8, "{moved}");
    assert!(lab.reaches_container(), "still blocked after up");
    assert_eq!(NFTABLES.tagged(&lab), 4, "duplicated rules");
    let again = lab
        .dockroute(&["--json", "up", "--vm-ip", VM_IP])
        .ok()
        .json();
    assert_eq!(again["firewall"], serde_json::json!([]), "{again}");
    lab.dockroute(&["down"]).ok();
    let left: Vec<String> = NFTABLES.list(&lab).lines().map(str::to_string).collect();
    assert_eq!(left, theirs, "the VPN's table changed");
}
