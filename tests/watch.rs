//! `dockroute watch` in a namespace lab: it heals what links, VPNs and firewalls do to the setup
//! without anyone running `up`, stays quiet when nothing changes, and ends cleanly on signals.
#![cfg(target_os = "linux")]

mod common;
use common::watch::{Watch, eventually};
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn heals(lab: &Lab, what: &str) {
    assert!(
        eventually(Duration::from_secs(5), || lab.tagged() == 5
            && lab.reaches_container()),
        "not healed after {what}:\n{}",
        lab.snapshot()
    );
}

/// Started: the setup is in place and the container answers.
fn started(lab: &Lab, w: &Watch) {
    w.wait_log("watching (");
    heals(lab, "start");
}

/// The host-only link as lab.sh makes it: a veth to the VM's eth0, both addressed and up.
fn create_link(lab: &Lab) {
    let vm = format!("{}-vm", lab.prefix);
    lab.ip(&format!(
        "link add vboxnet0 type veth peer name eth0 netns {vm}"
    ));
    lab.ip("addr add 192.168.99.1/24 dev vboxnet0");
    ip_in(&vm, &format!("addr add {VM_IP}/24 dev eth0"));
    ip_in(&vm, "link set eth0 up");
    lab.ip("link set vboxnet0 up");
}

#[test]
fn heals_deleted_and_replaced_routes_and_rules_and_is_quiet_in_between() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    lab.add_tunnel("tun0", "10.66.0.2/24");
    let w = Watch::start(&lab, &["--vm-ip", VM_IP]);
    started(&lab, &w);
    // Quiet lab: after the first reconcile and the one its own echoes cause, nothing runs.
    let settled = w.settles(Duration::from_millis(1500));
    assert!(settled <= 2, "{settled} reconciles at start:\n{}", w.log());

    // Our routes and a rule deleted, one at a time.
    lab.ip("route del 172.17.0.0/16 table 5017");
    heals(&lab, "route deleted");
    // the heal's own echoes settle before the next disruption, which then has a cause of its own
    w.settles(Duration::from_millis(300));
    lab.ip("rule del pref 5100 to 172.17.0.0/16");
    heals(&lab, "rule deleted");
    w.wait_log("reconcile{cause=rule deleted}: + rule pref 5100 to 172.17.0.0/16");
    // A VPN takes the subnet in main (vpnc-script's replace) and deletes our rule and main copy.
    lab.ip("route replace 172.17.0.0/16 dev tun0");
    lab.ip("rule del pref 5100 to 172.17.0.0/16");
    lab.ip("route del 172.17.0.0/16 table main metric 5017");
    heals(&lab, "a VPN's route replace and deletions");
    assert!(lab.ip("route show 172.17.0.0/16").contains("dev tun0"));
    let after = w.settles(Duration::from_millis(1500));
    // 1 start + echo, then each disruption: one heal, one echo (a burst may merge).
    assert!(after <= settled + 8, "{after} reconciles:\n{}", w.log());
}

#[test]
fn a_conflict_is_logged_once_and_the_daemon_keeps_going() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    lab.add_tunnel("tun0", "10.66.0.2/24");
    let w = Watch::start(&lab, &["--vm-ip", VM_IP]);
    started(&lab, &w);
    // A route that takes the place of dockroute's main copy (same metric): `up` cannot add it
    // back. The routes in dockroute's own table still carry the traffic.
    lab.ip("route replace 172.17.0.0/16 dev tun0 metric 5017");
    w.wait_log("another route for 172.17.0.0/16 with metric 5017");
    let n = w.settles(Duration::from_millis(1500));
    lab.ip("link set tun0 mtu 1400"); // unrelated events: still one failing reconcile each
    lab.ip("link set tun0 mtu 1500");
    w.settles(Duration::from_millis(1000));
    assert!(w.reconciles() <= n + 4, "{}", w.log());
    assert_eq!(w.count("another route for 172.17.0.0/16"), 1, "{}", w.log());
    assert!(lab.reaches_container());
    // The VPN goes away: the next event heals it, and says so.
    lab.ip("route del 172.17.0.0/16 dev tun0 metric 5017");
    heals(&lab, "the conflict went away");
    w.wait_log("in place again");
}

#[test]
fn waits_for_the_link_and_follows_it_being_deleted_and_recreated() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    lab.ip("link del vboxnet0");
    let w = Watch::start(&lab, &["--vm-ip", VM_IP]);
    w.wait_log("is on no local link");
    let n = w.settles(Duration::from_millis(1000));
    assert!(n <= 2, "{}", w.log());
    assert_eq!(lab.tagged(), 0);
    assert_eq!(w.count("is on no local link"), 1, "{}", w.log());

    create_link(&lab);
    heals(&lab, "the link appearing");
    // Deleted (the VM powered off) and re-created with a new index (it came back).
    let logged = w.count("is on no local link");
    lab.ip("link del vboxnet0");
    w.settles(Duration::from_millis(500));
    assert_eq!(
        w.count("is on no local link"),
        logged + 1,
        "logged once per absence:\n{}",
        w.log()
    );
    create_link(&lab);
    heals(&lab, "the link re-created");
    // DNS is set (resolv-conf in the lab; while the VM was unreachable its line may have been
    // taken out, and it is back once the server answers)
    assert!(
        eventually(Duration::from_secs(5), || std::fs::read_to_string(
            lab.resolv_conf()
        )
        .unwrap()
        .contains("nameserver 172.17.0.1")),
        "{}",
        w.log()
    );
}

#[test]
fn follows_the_vm_ip_when_it_comes_from_the_neighbour_table() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    touch(&lab, VM_IP);
    let w = Watch::start(&lab, &[]);
    started(&lab, &w);
    assert!(w.log().contains("neighbours"), "{}", w.log());

    // The VM comes back with another address; the old neighbour entry ages out.
    let vm = format!("{}-vm", lab.prefix);
    ip_in(&vm, &format!("addr del {VM_IP}/24 dev eth0"));
    ip_in(&vm, "addr add 192.168.99.101/24 dev eth0");
    lab.ip(&format!("neigh del {VM_IP} dev vboxnet0"));
    touch(&lab, "192.168.99.101");
    assert!(
        eventually(Duration::from_secs(5), || lab
            .ip("route show table 5017")
            .contains("via 192.168.99.101")),
        "the route did not move:\n{}\n{}",
        lab.snapshot(),
        w.log()
    );
    heals(&lab, "the VM IP changing");
    assert!(
        !lab.ip("route show table all")
            .contains(&format!("via {VM_IP}"))
    );
}

fn nft_repairs(lab: &Lab) -> usize {
    in_lab(lab, "nft", &["list", "ruleset"])
        .matches("comment \"dockroute\"")
        .count()
}

#[test]
fn repairs_a_vpn_nftables_table_with_policy_drop_each_time_it_is_recreated() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    lab.add_tunnel("tun0", "10.66.0.2/24");
    let w = Watch::start(&lab, &["--vm-ip", VM_IP]);
    started(&lab, &w);
    let n0 = w.settles(Duration::from_millis(1000));
    nft_load(&lab, "vpn.nft", MULLVAD_LIKE);
    assert!(
        eventually(Duration::from_secs(5), || nft_repairs(&lab) == 4
            && lab.reaches_container()),
        "not repaired:\n{}",
        w.log()
    );
    w.wait_log("cause=nft");
    // Every reconnect re-creates the table: the repair comes back, once.
    for _ in 0..3 {
        nft_load(
            &lab,
            "vpn.nft",
            &format!("delete table inet vpn\n{MULLVAD_LIKE}"),
        );
        assert!(
            eventually(Duration::from_secs(5), || nft_repairs(&lab) == 4
                && lab.reaches_container()),
            "not repaired after the re-creation:\n{}",
            w.log()
        );
    }
    // A route-only heal (which leaves the firewall unread) keeps the repairs.
    lab.ip("route del 172.17.0.0/16 table 5017");
    heals(&lab, "route deleted behind the VPN's firewall");
    assert_eq!(nft_repairs(&lab), 4);
    // Reading the firewall (iptables -S, nft list) causes no events: quiet again.
    let n = w.settles(Duration::from_millis(1500));
    // four firewall repairs and a route heal, each with the reconcile its own echoes cause
    assert!(n <= n0 + 10, "{n} reconciles:\n{}", w.log());
}

fn kill_switch(lab: &Lab, program: &str) {
    for rule in KILL_SWITCH {
        let args: Vec<&str> = rule.split_whitespace().collect();
        in_lab(lab, program, &args);
    }
}

#[test]
fn an_iptables_nft_kill_switch_is_repaired_on_its_nftables_events_and_then_quiet() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    lab.add_tunnel("tun0", "10.66.0.2/24");
    let w = Watch::start(&lab, &["--vm-ip", VM_IP]);
    started(&lab, &w);
    let n0 = w.settles(Duration::from_millis(1000));
    kill_switch(&lab, "iptables");
    assert!(
        eventually(Duration::from_secs(5), || lab.reaches_container()),
        "not repaired:\n{}",
        w.log()
    );
    w.wait_log("+ firewall iptables -t filter");
    // its own `iptables -I` echo once; its `iptables -S` reads cause no events
    let n = w.settles(Duration::from_millis(1500));
    assert!(n <= n0 + 12, "{n} reconciles:\n{}", w.log());
    let again = w.settles(Duration::from_millis(1000));
    assert_eq!(again, n, "{}", w.log());
}

#[test]
fn the_backstop_repairs_what_sends_no_events_iptables_legacy() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    lab.add_tunnel("tun0", "10.66.0.2/24");
    let w = Watch::start_env(
        &lab,
        &["--vm-ip", VM_IP],
        &[("DOCKROUTE_TEST_BACKSTOP_SECS", "1")],
    );
    started(&lab, &w);
    kill_switch(&lab, "iptables-legacy");
    assert!(
        eventually(Duration::from_secs(5), || lab.reaches_container()),
        "not repaired by the backstop:\n{}",
        w.log()
    );
    w.wait_log("reconcile{cause=backstop re-check}: + firewall iptables-legacy");
    // iptables-nft and nftables did not change: their reading was reused, legacy's was not
    w.wait_log("reconcile{cause=backstop re-check}: firewall: nftables generation");
}

#[test]
fn sigterm_and_sigint_end_it_within_a_second_and_leave_the_setup() {
    if !privileged() {
        return;
    }
    use nix::sys::signal::Signal;
    let lab = Lab::new();
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let mut w = Watch::start(&lab, &["--vm-ip", VM_IP]);
        started(&lab, &w);
        w.signal(sig);
        let st = w.exits_within(Duration::from_secs(1));
        assert!(
            st.is_some_and(|s| s.success()),
            "{sig}: {st:?}\n{}",
            w.log()
        );
        assert_eq!(lab.tagged(), 5);
        assert!(lab.reaches_container());
    }
}

#[test]
fn down_on_exit_removes_the_setup() {
    if !privileged() {
        return;
    }
    use nix::sys::signal::Signal;
    let lab = Lab::new();
    let before = lab.snapshot();
    let resolv = std::fs::read(lab.resolv_conf()).unwrap();
    let mut w = Watch::start(&lab, &["--vm-ip", VM_IP, "--down-on-exit"]);
    started(&lab, &w);
    w.signal(Signal::SIGTERM);
    let st = w.exits_within(Duration::from_secs(2));
    assert!(st.is_some_and(|s| s.success()), "{st:?}\n{}", w.log());
    assert_eq!(lab.snapshot(), before);
    assert_eq!(std::fs::read(lab.resolv_conf()).unwrap(), resolv);
    assert!(!lab.reaches_container());
}

#[test]
fn sighup_and_a_config_change_re_read_the_config() {
    if !privileged() {
        return;
    }
    use nix::sys::signal::Signal;
    let lab = Lab::new();
    std::fs::write(lab.config(), format!("vm_ip = \"{VM_IP}\"\n")).unwrap();
    let w = Watch::start(&lab, &[]);
    started(&lab, &w);

    // The file changes: it is read again (inotify) and the new subnet routed.
    std::fs::write(
        lab.config(),
        format!("vm_ip = \"{VM_IP}\"\nsubnets = [\"172.17.0.0/16\", \"172.18.0.0/16\"]\n"),
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || lab
            .ip("route show table 5017")
            .contains("172.18.0.0/16")),
        "{}",
        w.log()
    );
    w.wait_log("config file changed: settings re-read");

    // A broken config is refused with one line; the running setup stays.
    std::fs::write(lab.config(), "subnets = [\"10.1.2.3/8\"]\n").unwrap();
    w.wait_log("keeping the previous settings");
    assert!(lab.reaches_container());

    // SIGHUP: read again (here the file went back to one subnet).
    std::fs::write(lab.config(), format!("vm_ip = \"{VM_IP}\"\n")).unwrap();
    w.signal(Signal::SIGHUP);
    w.wait_log("SIGHUP: settings re-read");
    assert!(
        eventually(Duration::from_secs(5), || !lab
            .ip("route show table 5017")
            .contains("172.18.0.0/16")),
        "{}",
        w.log()
    );
    heals(&lab, "SIGHUP");
}

/// The PIDs of the lab's systemd-resolved (the binary resolved-lab.sh runs, in the lab's network
/// namespace): only processes this test's lab started.
fn lab_resolved_pids(lab: &Lab) -> Vec<i32> {
    let bin = std::path::Path::new(RESOLVECTL)
        .parent()
        .and_then(|p| p.parent())
        .and_then(|p| p.parent())
        .unwrap()
        .join("lib/systemd/systemd-resolved");
    let ns = std::fs::metadata(format!("/run/netns/{}", lab.host())).unwrap();
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let exe = std::fs::read_link(e.path().join("exe"));
        let net = std::fs::metadata(e.path().join("ns/net"));
        if exe.is_ok_and(|x| x == bin) && net.is_ok_and(|n| n.ino() == ns.ino()) {
            out.push(pid);
        }
    }
    out
}

#[test]
fn resolved_restarting_gets_the_per_link_dns_again() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let h = lab.start_resolved();
    let mut c = Command::new("nsenter");
    c.args(["-t", &h.to_string(), "-m", "-n", BIN])
        .arg("--config")
        .arg(lab.config())
        .args(["watch", "--vm-ip", VM_IP, "--dns", "resolved"])
        .env("DOCKROUTE_STATE_DIR", lab.state_dir())
        .env("DOCKROUTE_LOG", "debug")
        .env_remove("DOCKER_HOST")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let w = Watch::collect(c.spawn().expect("spawning watch"));
    w.wait_log("systemd-resolved, config file");
    let domain = || {
        lab.nsenter(h, RESOLVECTL, &["domain", "vboxnet0"])
            .stdout
            .contains("~docker")
    };
    assert!(eventually(Duration::from_secs(5), domain), "{}", w.log());

    // resolved restarts and has lost its per-link settings (its saved link state is gone too)
    let pids = lab_resolved_pids(&lab);
    assert_eq!(pids.len(), 1, "{pids:?}");
    let pid = nix::unistd::Pid::from_raw(pids[0]);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(eventually(Duration::from_secs(5), || lab_resolved_pids(
        &lab
    )
    .is_empty()));
    lab.nsenter(h, "rm", &["-rf", "/run/systemd/resolve/netif"]);
    let bin = std::path::Path::new(RESOLVECTL)
        .parent()
        .and_then(|p| p.parent())
        .and_then(|p| p.parent())
        .unwrap()
        .join("lib/systemd/systemd-resolved");
    let mut resolved = Command::new("nsenter")
        .args(["-t", &h.to_string(), "-m", "-n"])
        .arg(bin)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    w.wait_log("cause=systemd-resolved restarted");
    assert!(
        eventually(Duration::from_secs(5), domain),
        "not set again:\n{}",
        w.log()
    );
    drop(w);
    let _ = resolved.kill();
    let _ = resolved.wait();
}

#[test]
fn refusals_change_nothing() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let before = lab.snapshot();
    let r = lab.dockroute(&["watch", "--vm-ip", VM_IP, "--dry-run"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.starts_with("error: watch applies changes"),
        "{}",
        r.stderr
    );
    let r = lab.as_nobody(&["watch", "--vm-ip", VM_IP]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("run it as root"), "{}", r.stderr);
    std::fs::write(lab.config(), "vm_ip = \"300.1.1.1\"\n").unwrap();
    let r = lab.dockroute(&["watch"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr
            .contains("config.toml line 1: invalid IPv4 address"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert_eq!(lab.snapshot(), before);
}

/// A docker-machine store in the lab dir with one machine, `dev`, whose config.json is not
/// written yet.
struct Machine {
    store: std::path::PathBuf,
    config: std::path::PathBuf,
}

impl Machine {
    fn new(lab: &Lab) -> Machine {
        let store = lab.dir.path().join("machine");
        let config = store.join("machines/dev/config.json");
        std::fs::create_dir_all(config.parent().unwrap()).unwrap();
        Machine { store, config }
    }

    /// config.json as docker-machine writes it, naming `ip`.
    fn body(ip: &str) -> String {
        format!("{{\"Driver\": {{\"IPAddress\": \"{ip}\"}}}}")
    }

    /// Record `ip` as docker-machine does: a new file renamed over the old one.
    fn record(&self, ip: &str) {
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, Machine::body(ip)).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    /// `watch --machine dev` with this store.
    fn watch(&self, lab: &Lab) -> Watch {
        Watch::start_env(
            lab,
            &["--machine", "dev"],
            &[("MACHINE_STORAGE_PATH", self.store.to_str().unwrap())],
        )
    }
}

/// The VM moves to 192.168.99.101 and docker-machine records it: the routes follow.
fn vm_moves(lab: &Lab, m: &Machine, w: &Watch) {
    let vm = format!("{}-vm", lab.prefix);
    ip_in(&vm, &format!("addr del {VM_IP}/24 dev eth0"));
    ip_in(&vm, "addr add 192.168.99.101/24 dev eth0");
    m.record("192.168.99.101");
    assert!(
        eventually(Duration::from_secs(5), || lab
            .ip("route show table 5017")
            .contains("via 192.168.99.101")),
        "the route did not move:\n{}",
        w.log()
    );
    heals(lab, "docker-machine recording a new IP");
}

#[test]
fn follows_the_vm_ip_when_docker_machine_records_a_new_one() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let m = Machine::new(&lab);
    m.record(VM_IP);
    let w = m.watch(&lab);
    started(&lab, &w);
    vm_moves(&lab, &m, &w);
}

/// A user touching or rewriting docker-machine's config.json every 12 ms, without changing what it
/// says, makes `watch` read it at most about once a second and reconcile not at all; a real change
/// at the end of the storm is still read (the trailing edge) and applied.
#[test]
fn a_storm_of_touches_on_the_machine_config_reloads_once_a_second_and_reconciles_only_a_change() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let m = Machine::new(&lab);
    let config = &m.config;
    std::fs::write(config, Machine::body(VM_IP)).unwrap();
    let w = m.watch(&lab);
    started(&lab, &w);
    let before = w.settles(Duration::from_millis(300));
    let reloads_before = w.count("settings re-read");
    let storm = Duration::from_secs(3);
    let start = Instant::now();
    let mut writes = 0;
    while start.elapsed() < storm {
        if writes % 2 == 0 {
            // rewritten in place, the same content
            std::fs::write(config, Machine::body(VM_IP)).unwrap();
        } else {
            // replaced by rename, the same content
            m.record(VM_IP);
        }
        writes += 1;
        std::thread::sleep(Duration::from_millis(12));
    }
    let took = start.elapsed();
    // the last change of the storm is a real one: the VM moved
    vm_moves(&lab, &m, &w);
    let after = w.settles(Duration::from_millis(300));
    let reloads = w.count("settings re-read") - reloads_before;
    let unchanged = w.count("unchanged, nothing to do");
    eprintln!(
        "{writes} writes in {took:?}: {reloads} reloads ({unchanged} unchanged), {} reconciles",
        after - before
    );
    // at most one a second of the storm, the first at once, and the change at its end
    assert!(
        reloads as f64 <= took.as_secs_f64().ceil() + 2.0,
        "{reloads} reloads for {writes} writes:\n{}",
        w.log()
    );
    assert!(unchanged >= 1, "{}", w.log());
    // the touches caused no reconcile: only the real change did (and its echo)
    let reconciles = after - before;
    assert!(
        (1..=3).contains(&reconciles),
        "{reconciles} reconciles:\n{}",
        w.log()
    );
}

/// A FIFO or a link put in config.json's place neither blocks `watch` nor steers it: it is
/// refused (logged), the daemon keeps going, and a real config.json later is followed.
#[test]
fn a_fifo_or_a_link_as_the_machine_config_neither_blocks_nor_misleads_watch() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let m = Machine::new(&lab);
    let config = &m.config;
    nix::unistd::mkfifo(config, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    let w = m.watch(&lab);
    w.wait_log("watching (");
    w.wait_log("not a regular file");
    // a link to a file naming the VM is not followed either
    let elsewhere = lab.dir.path().join("elsewhere.json");
    std::fs::write(&elsewhere, Machine::body(VM_IP)).unwrap();
    std::fs::remove_file(config).unwrap();
    std::os::unix::fs::symlink(&elsewhere, config).unwrap();
    w.wait_log("symbolic link");
    assert_eq!(lab.tagged(), 0, "{}", w.log());
    // a real one is followed
    std::fs::remove_file(config).unwrap();
    std::fs::copy(&elsewhere, config).unwrap();
    heals(&lab, "a real config.json");
}

fn has_marker(lab: &Lab) -> bool {
    std::fs::read_to_string(lab.resolv_conf())
        .unwrap()
        .contains("# dockroute:")
}

/// Issue 11, point 1: a VM whose address is gone (vboxnet0 stays up, as with VirtualBox) must not
/// stall every lookup of the host: watch asks the server every few seconds, takes the line out of
/// resolv.conf within 5 s of the silence, and puts it back when the server answers again.
#[test]
fn a_silent_vm_dns_is_withdrawn_from_resolv_conf_within_5_s_and_restored() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let original = std::fs::read(lab.resolv_conf()).unwrap();
    let w = Watch::start(&lab, &["--vm-ip", VM_IP]);
    started(&lab, &w);
    assert!(
        eventually(Duration::from_secs(5), || has_marker(&lab)),
        "{}",
        w.log()
    );
    assert_eq!(lab.getent("redis.docker").as_deref(), Some("172.17.0.2"));

    ip_in(&lab.vm(), &format!("addr del {VM_IP}/24 dev eth0"));
    let gone = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || !has_marker(&lab)),
        "the line is still there after {:?}:\n{}",
        gone.elapsed(),
        w.log()
    );
    eprintln!("line taken out {:?} after the address went", gone.elapsed());
    assert_eq!(std::fs::read(lab.resolv_conf()).unwrap(), original);
    let (_, took) = lab.timed_getent("example.test");
    assert!(took < Duration::from_secs(1), "a lookup took {took:?}");
    assert_eq!(lab.tagged(), 5, "the routes stay");

    ip_in(&lab.vm(), &format!("addr add {VM_IP}/24 dev eth0"));
    let back = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || has_marker(&lab)),
        "not put back:\n{}",
        w.log()
    );
    eprintln!("line back {:?} after the address", back.elapsed());
    assert_eq!(lab.getent("redis.docker").as_deref(), Some("172.17.0.2"));
    w.wait_log("answers again");
}

/// The main thread's voluntary context switches (each sleep in poll that ends is one).
fn wake_ups(w: &Watch) -> u64 {
    let st = std::fs::read_to_string(format!("/proc/{}/status", w.child.id())).unwrap();
    st.lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// Without the resolv-conf backend nothing is probed: no wake-ups while idle. With it, a probe
/// every 1.5 s, not more.
#[test]
fn only_the_resolv_conf_backend_is_probed_and_never_in_a_tight_loop() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    for (dns, most) in [("off", 1), ("resolv-conf", 8)] {
        let w = Watch::start(&lab, &["--vm-ip", VM_IP, "--dns", dns]);
        started(&lab, &w);
        w.settles(Duration::from_millis(500));
        let before = wake_ups(&w);
        std::thread::sleep(Duration::from_secs(4));
        let woke = wake_ups(&w) - before;
        eprintln!("--dns {dns}: {woke} wake-ups in 4 s");
        assert!(
            woke <= most,
            "--dns {dns}: {woke} wake-ups in 4 s:\n{}",
            w.log()
        );
        if dns == "off" {
            assert_eq!(w.count("DNS probe"), 0, "{}", w.log());
        } else {
            assert!(woke >= 2, "--dns {dns}: no probes? {woke}");
            assert_eq!(w.count("DNS probe every 1.5 s"), 1, "{}", w.log());
        }
    }
}

/// `dockroute watch ARGS` in the lab with `/usr/sbin/iptables` replaced, in a private mount
/// namespace of its own, by `program`.
fn watch_with_iptables(lab: &Lab, program: &std::path::Path, args: &[&str]) -> Watch {
    let mut all = vec!["watch"];
    all.extend_from_slice(args);
    let inner = lab.command(&all);
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("set -e; mount --bind \"$1\" \"$2\"; shift 2; exec \"$@\"")
        .arg("sh")
        .arg(program)
        .arg("/usr/sbin/iptables")
        .arg(inner.get_program())
        .args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.env("DOCKROUTE_LOG", "debug")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    Watch::collect(c.spawn().expect("spawning dockroute watch"))
}

/// An `iptables` for watch that runs the shell line `first`, then the real one (a copy of the
/// multi-call binary, in the lab's directory).
fn iptables_wrapper(lab: &Lab, first: &str) -> std::path::PathBuf {
    let dir = lab.dir.path();
    let real = dir.join("iptables");
    copy_exe(
        &std::fs::canonicalize("/usr/sbin/iptables").unwrap(),
        &real,
        0o755,
    );
    let wrapper = dir.join("iptables-wrapper");
    write_script(
        &wrapper,
        &format!("{first}\nexec '{}' \"$@\"", real.display()),
        0o755,
    );
    wrapper
}

#[test]
fn a_vpn_nftables_table_heals_from_its_own_events_without_reading_iptables() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    lab.add_tunnel("tun0", "10.66.0.2/24");
    // iptables that works until the test breaks it (a copy of the multi-call binary behind a
    // wrapper): a reconcile that reads iptables fails from then on
    let broken = lab.dir.path().join("broken");
    let wrapper = iptables_wrapper(
        &lab,
        &format!(
            "if [ -e '{}' ]; then echo 'iptables: broken by the test' >&2; exit 4; fi",
            broken.display()
        ),
    );
    let w = watch_with_iptables(&lab, &wrapper, &["--vm-ip", VM_IP]);
    started(&lab, &w);
    nft_load(&lab, "vpn.nft", MULLVAD_LIKE);
    assert!(
        eventually(Duration::from_secs(5), || nft_repairs(&lab) == 4
            && lab.reaches_container()),
        "not repaired:\n{}",
        w.log()
    );
    w.settles(Duration::from_millis(500));
    std::fs::write(&broken, "").unwrap();
    // The VPN reconnects: its events name its own table only, which is all the heal reads.
    nft_load(
        &lab,
        "vpn2.nft",
        &format!("delete table inet vpn\n{MULLVAD_LIKE}"),
    );
    assert!(
        eventually(Duration::from_secs(5), || nft_repairs(&lab) == 4
            && lab.reaches_container()),
        "not repaired after the re-creation with iptables failing:\n{}",
        w.log()
    );
    assert_eq!(w.count("broken by the test"), 0, "{}", w.log());
}

/// Issue 10, point 6: a reconcile that reads everything (SIGHUP here; link and address events and
/// the backstop alike) reuses the last reading of what nftables holds (iptables-nft's filter
/// table) while nftables' generation id has not moved: no `iptables -S` runs. A change there is
/// still repaired: from its own nftables events, and also when it comes while watch is told to
/// re-read everything.
#[test]
fn a_full_re_read_reuses_the_iptables_nft_reading_until_nftables_changes() {
    if !privileged() {
        return;
    }
    use nix::sys::signal::Signal;
    let lab = Lab::new();
    lab.add_tunnel("tun0", "10.66.0.2/24");
    // iptables behind a wrapper that notes each run (a copy of the multi-call binary runs it)
    let runs = lab.dir.path().join("iptables-runs");
    let wrapper = iptables_wrapper(&lab, &format!("echo \"$*\" >> '{}'", runs.display()));
    let listings = || {
        std::fs::read_to_string(&runs)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.split_whitespace().any(|w| w == "-S"))
            .count()
    };
    let w = watch_with_iptables(&lab, &wrapper, &["--vm-ip", VM_IP]);
    started(&lab, &w);
    kill_switch(&lab, "iptables");
    assert!(
        eventually(Duration::from_secs(5), || lab.reaches_container()),
        "not repaired:\n{}",
        w.log()
    );
    w.wait_log("+ firewall iptables -t filter");
    w.settles(Duration::from_millis(500));
    let reused = "firewall: nftables generation";
    // SIGHUP until a reconcile of it is done (its last line, `reconcile #N: ...`)
    let sighup = |w: &Watch| -> String {
        let done = |w: &Watch| w.count("cause=SIGHUP}: reconcile #");
        let n = done(w);
        w.signal(Signal::SIGHUP);
        assert!(
            eventually(Duration::from_secs(5), || done(w) > n),
            "no reconcile after SIGHUP:\n{}",
            w.log()
        );
        w.settles(Duration::from_millis(300));
        let log = w.log();
        let last = log
            .lines()
            .rev()
            .find(|l| l.contains("cause=SIGHUP}: reconcile #"));
        last.unwrap().to_string()
    };
    // The first one reads everything (the repairs moved the id since the start's full read);
    // the next one finds the id unchanged: nothing is run, nothing changes.
    sighup(&w);
    let (hits, listed) = (w.count(reused), listings());
    let line = sighup(&w);
    assert!(line.contains("nothing to change"), "{line}\n{}", w.log());
    assert_eq!(w.count(reused), hits + 1, "not reused:\n{}", w.log());
    assert_eq!(listings(), listed, "iptables -S ran:\n{}", w.log());
    assert!(lab.reaches_container());

    // A VPN adds a chain that drops the VM's traffic: its nftables events bring the repair.
    fw(&lab, "iptables", "-N vpnblock");
    fw(&lab, "iptables", "-A vpnblock -o vboxnet0 -j DROP");
    fw(&lab, "iptables", "-I OUTPUT 1 -j vpnblock");
    assert!(
        eventually(Duration::from_secs(5), || lab.reaches_container()),
        "not repaired:\n{}",
        w.log()
    );
    w.wait_log("+ firewall iptables -t filter vpnblock -o vboxnet0 -d 172.17.0.0/16 -j RETURN");
    w.settles(Duration::from_millis(500));

    // The same while watch is told to re-read everything: stopped, it gets the change's events
    // and SIGHUP together, so one reconcile reads everything right after a reuse.
    fw(&lab, "iptables", "-N vpnblock2");
    fw(&lab, "iptables", "-A vpnblock2 -o vboxnet0 -j DROP");
    w.settles(Duration::from_millis(300));
    sighup(&w);
    let hits = w.count(reused);
    sighup(&w);
    assert_eq!(w.count(reused), hits + 1, "not reused:\n{}", w.log());
    w.signal(Signal::SIGSTOP);
    fw(&lab, "iptables", "-I OUTPUT 1 -j vpnblock2");
    assert!(!lab.reaches_container(), "the change does not block");
    w.signal(Signal::SIGHUP);
    w.signal(Signal::SIGCONT);
    assert!(
        eventually(Duration::from_secs(5), || lab.reaches_container()),
        "not repaired after a re-read of everything:\n{}",
        w.log()
    );
    let heal = "+ firewall iptables -t filter vpnblock2 -o vboxnet0";
    w.wait_log(heal);
    let log = w.log();
    let line = log.lines().find(|l| l.contains(heal)).unwrap();
    assert!(line.contains("{cause=SIGHUP, nft rule added"), "{log}");
    assert_eq!(
        w.count(reused),
        hits + 1,
        "reused a stale reading:\n{}",
        w.log()
    );
}

#[test]
fn watch_refuses_a_machine_config_rewritten_to_a_lan_address() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    lan_link(&lab);
    let store = machine(&lab, VM_IP);
    let w = Watch::start_env(
        &lab,
        &["--machine", "default", "--dns", "off"],
        &[("MACHINE_STORAGE_PATH", store.to_str().unwrap())],
    );
    started(&lab, &w);
    let before = state(&lab);
    // the user rewrites config.json while watch runs
    machine(&lab, "10.77.0.50");
    w.wait_log("is on wlan0, which is not a host-only link");
    assert_eq!(state(&lab), before, "{}", w.log());
    assert!(lab.reaches_container());
}

#[test]
fn watch_keeps_the_vm_from_the_neighbour_table_when_another_host_answers() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    touch(&lab, VM_IP);
    let w = Watch::start(&lab, &["--dns", "off"]);
    started(&lab, &w);
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
