//! Refusing bad input, serializing concurrent runs, and cleaning up after a killed run.
#![cfg(target_os = "linux")]

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Exit non-zero with exactly one line `error: ...` containing `want`.
fn refused(run: &Run, want: &str) {
    assert_ne!(run.code, 0, "accepted; stdout={}", run.stdout);
    assert!(run.stdout.is_empty(), "printed to stdout: {}", run.stdout);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {:?}", run.stderr);
    assert!(lines[0].starts_with("error: "), "{:?}", lines[0]);
    assert!(lines[0].contains(want), "{:?} lacks {want:?}", lines[0]);
}

#[test]
fn bad_input_is_refused_with_one_line_and_changes_nothing() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let before = lab.snapshot();
    let resolv_before = std::fs::read(lab.resolv_conf()).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["up", "--vm-ip", "300.1.1.1"],
            "invalid IPv4 address '300.1.1.1'",
        ),
        (&["up", "--vm-ip", "127.0.0.1"], "not a usable unicast"),
        (
            &["up", "--vm-ip", VM_IP, "--subnet", "172.17.0.1/16"],
            "did you mean 172.17.0.0/16",
        ),
        (
            &["up", "--vm-ip", VM_IP, "--subnet", "junk"],
            "invalid subnet 'junk'",
        ),
        (
            &["up", "--vm-ip", VM_IP, "--subnet", "0.0.0.0/0"],
            "refusing subnet",
        ),
        (
            &["up", "--vm-ip", VM_IP, "--subnet", "192.168.0.0/16"],
            "overlaps the host-only network",
        ),
        (
            &["up", "--vm-ip", VM_IP, "--interface", "eth0;reboot"],
            "invalid interface name",
        ),
        (
            &["up", "--vm-ip", VM_IP, "--interface", "abcdefghijklmnop"],
            "invalid interface name",
        ),
        (
            &["up", "--vm-ip", VM_IP, "--interface", "vboxnet7"],
            "no link named 'vboxnet7'",
        ),
        (&["up", "--vm-ip", "10.9.9.9"], "is on no local link"),
        (
            &["up", "--vm-ip", "192.168.99.1"],
            "this host's own address",
        ),
        (&["up", "--machine", "../../etc"], "invalid machine name"),
        (&["up", "--machine", "nosuchmachine"], "cannot read"),
        (
            &["up", "--vm-ip", VM_IP, "--wait", "soon"],
            "invalid --wait",
        ),
        (
            &["up", "--vm-ip", VM_IP, "--dns", "bogus"],
            "invalid value 'bogus'",
        ),
        (
            &["up", "--vm-ip", VM_IP, "--firewall", "on"],
            "invalid value 'on'",
        ),
        (
            &["up", "--vm-ip", VM_IP, "--domain", "a b"],
            "invalid domain",
        ),
        (
            &["up", "--vm-ip", VM_IP, "--nameserver", "172.17.0.1:0"],
            "invalid nameserver port",
        ),
        (
            &[
                "up",
                "--vm-ip",
                VM_IP,
                "--dns",
                "resolv-conf",
                "--nameserver",
                "172.17.0.1:5353",
            ],
            "cannot name a DNS port",
        ),
        (
            &["up", "--vm-ip", VM_IP, "--bogus"],
            "unexpected argument '--bogus'",
        ),
        (&["up"], "cannot find the VM IP"),
        (&[], "missing command"),
    ];
    for (args, want) in cases {
        let run = lab.dockroute(args);
        refused(&run, want);
        assert_eq!(lab.snapshot(), before, "{args:?} changed the kernel state");
        assert_eq!(
            std::fs::read(lab.resolv_conf()).unwrap(),
            resolv_before,
            "{args:?} changed resolv.conf"
        );
        assert!(!exists(&lab.state_dir()), "{args:?} created the state dir");
    }

    // A config file with a syntax error: the message names the file and the line.
    std::fs::write(
        lab.config(),
        "interface = \"vboxnet0\"\nvm_ip = 192.168.99.100\n",
    )
    .unwrap();
    let run = lab.dockroute(&["up"]);
    refused(&run, &format!("{} line 2:", lab.config().display()));
    std::fs::write(
        lab.config(),
        "vm_ip = \"192.168.99.100\"\nsubnets = [\"172.17.0.0/33\"]\n",
    )
    .unwrap();
    refused(
        &lab.dockroute(&["up"]),
        "line 2: invalid subnet '172.17.0.0/33'",
    );
    // ... and one that others can write is not trusted
    std::fs::write(lab.config(), "").unwrap();
    std::fs::set_permissions(lab.config(), std::fs::Permissions::from_mode(0o666)).unwrap();
    refused(
        &lab.dockroute(&["up", "--vm-ip", VM_IP]),
        "not writable by others",
    );
    assert_eq!(lab.snapshot(), before);
    assert!(!exists(&lab.state_dir()));
}

#[test]
fn concurrent_up_and_down_serialize() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let before = lab.snapshot();
    let mut children = Vec::new();
    for i in 0..16 {
        let args: &[&str] = if i % 2 == 0 {
            &["up", "--vm-ip", VM_IP]
        } else {
            &["down"]
        };
        children.push((args, lab.spawn(args, &[])));
    }
    for (args, c) in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{args:?} failed while racing: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Whatever order they ran in, one more up gives exactly the planned entries.
    lab.dockroute(&["up", "--vm-ip", VM_IP]).ok();
    assert_eq!(lab.tagged(), 5);
    assert!(lab.reaches_container());
    lab.dockroute(&["down"]).ok();
    assert_eq!(lab.snapshot(), before);
}

fn wait_for_tagged(lab: &Lab, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.tagged() < n {
        assert!(Instant::now() < deadline, "up never reached {n} entries");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn sigkill_half_way_through_up_then_down_restores_everything() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let before = lab.snapshot();
    let mut child = lab.spawn(
        &["up", "--vm-ip", VM_IP],
        &[("DOCKROUTE_TEST_STALL_AFTER", "3")],
    );
    wait_for_tagged(&lab, 3);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(
        lab.tagged(),
        3,
        "the killed up should have left a half-applied state"
    );
    assert!(
        !exists(&lab.state_dir().join("state.json")),
        "record written before the end"
    );
    assert!(leftovers(&lab.state_dir()).is_empty());

    // The lock died with the process: down runs at once and finds everything by its tag.
    lab.dockroute(&["down"]).ok();
    assert_eq!(lab.snapshot(), before);

    // And a killed up followed by another up completes the job.
    let mut child = lab.spawn(
        &["up", "--vm-ip", VM_IP],
        &[("DOCKROUTE_TEST_STALL_AFTER", "2")],
    );
    wait_for_tagged(&lab, 2);
    child.kill().unwrap();
    child.wait().unwrap();
    let out = lab
        .dockroute(&["--json", "up", "--vm-ip", VM_IP])
        .ok()
        .json();
    assert_eq!(out["changes"].as_array().unwrap().len(), 3);
    assert!(lab.reaches_container());
    lab.dockroute(&["down"]).ok();
    assert_eq!(lab.snapshot(), before);
}

#[test]
fn sigkill_half_way_through_down_then_down_finishes() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let before = lab.snapshot();
    lab.dockroute(&["up", "--vm-ip", VM_IP]).ok();
    let mut child = lab.spawn(&["down"], &[("DOCKROUTE_TEST_STALL_AFTER", "2")]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.tagged() > 3 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(lab.tagged(), 3);
    assert!(leftovers(&lab.state_dir()).is_empty());
    lab.dockroute(&["down"]).ok();
    assert_eq!(lab.snapshot(), before);
    assert!(leftovers(&lab.state_dir()).is_empty());
}

/// Wait until a temporary file of dockroute's (other than `known`) appears in `dir`.
fn wait_for_leftover(dir: &Path, known: &[String]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(n) = leftovers(dir).into_iter().find(|n| !known.contains(n)) {
            // let the run reach its stall (the file is written, not yet renamed)
            std::thread::sleep(Duration::from_millis(200));
            return n;
        }
        assert!(Instant::now() < deadline, "no temporary file in {dir:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Start `args` in the lab with a private /etc, stalled before renaming a temporary file over
/// `name`; SIGKILL it there. Returns the temporary file it left in `dir`.
fn killed_while_replacing(lab: &Lab, etc: &Path, args: &[&str], name: &str, dir: &Path) -> String {
    let known = leftovers(dir);
    let env = [("DOCKROUTE_TEST_STALL_RENAME", name)];
    let mut child = lab.spawn_private_etc(etc, args, &env, 0o022);
    let left = wait_for_leftover(dir, &known);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(exists(&dir.join(&left)), "{left} vanished");
    left
}

#[test]
fn sigkill_while_replacing_a_file_leaves_a_temporary_the_next_run_removes() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let etc = lab.make_etc();
    let resolv = etc.join("resolv.conf");
    let original = std::fs::read(&resolv).unwrap();
    // look-alikes that are not dockroute's own leftovers stay
    let decoys = [
        ".dockroute-user01",
        ".dockroute-toolong1",
        ".dockroute-link12",
    ];
    std::fs::write(etc.join(decoys[0]), "theirs").unwrap();
    std::os::unix::fs::chown(etc.join(decoys[0]), Some(65534), None).unwrap();
    std::fs::write(etc.join(decoys[1]), "not a temporary name").unwrap();
    std::os::unix::fs::symlink(&resolv, etc.join(decoys[2])).unwrap();

    // resolv.conf's directory
    let up = ["up", "--vm-ip", VM_IP, "--dns", "resolv-conf"];
    let left = killed_while_replacing(&lab, &etc, &up, "resolv.conf", &etc);
    assert_eq!(std::fs::read(&resolv).unwrap(), original);
    lab.private_etc(&etc, &["down"], 0o022).ok();
    assert!(!exists(&etc.join(&left)), "down left {left} behind");
    let mut kept = decoys.map(String::from).to_vec();
    kept.sort();
    assert_eq!(leftovers(&etc), kept);
    assert_eq!(std::fs::read(&resolv).unwrap(), original);

    // the state dir
    let up = ["up", "--vm-ip", VM_IP, "--dns", "off"];
    let left = killed_while_replacing(&lab, &etc, &up, "state.json", &lab.state_dir());
    lab.private_etc(&etc, &up, 0o022).ok();
    assert!(leftovers(&lab.state_dir()).is_empty(), "up left {left}");

    // the resolver dir
    let dir = lab.dir.path().join("resolver");
    let dir_arg = dir.to_str().unwrap();
    let up = up_resolver_dir(dir_arg);
    let left = killed_while_replacing(&lab, &etc, &up, "docker", &dir);
    assert!(!exists(&dir.join("docker")));
    lab.private_etc(&etc, &["down", "--resolver-dir", dir_arg], 0o022)
        .ok();
    assert!(leftovers(&dir).is_empty(), "down left {left}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    assert_eq!(std::fs::read(&resolv).unwrap(), original);
}

#[test]
fn a_held_lock_is_waited_for_then_given_up_naming_its_holder() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let before = lab.snapshot();
    let mut holder = lab.spawn(
        &["up", "--vm-ip", VM_IP],
        &[("DOCKROUTE_TEST_STALL_AFTER", "1")],
    );
    wait_for_tagged(&lab, 1);
    let pid = holder.id();
    let start = Instant::now();
    let mut waiter = lab.spawn(&["--lock-timeout", "1", "down"], &[]);
    let deadline = start + Duration::from_secs(15);
    while waiter.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            waiter.kill().unwrap();
            holder.kill().unwrap();
            panic!("down still waits for the lock after 15 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let waited = start.elapsed();
    let out = waiter.wait_with_output().unwrap();
    holder.kill().unwrap();
    holder.wait().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].contains(&format!("waiting for another dockroute (pid {pid})")),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with("error: ")
            && lines[1].contains(&format!("another dockroute (pid {pid}) holds the lock")),
        "{stderr}"
    );
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
    lab.dockroute(&["down"]).ok();
    assert_eq!(lab.snapshot(), before);
}

/// `up` meets someone's route (`ip route add BLOCKER`) in the slot one of its changes needs: it
/// fails naming that change (`named`), every other change of the run is undone, and no record
/// is left.
fn blocked_up_is_rolled_back(blocker: &str, named: &str) {
    let lab = Lab::new();
    lab.ip(&format!("route add {blocker}"));
    let before = lab.snapshot();
    let run = lab.dockroute(&["up", "--vm-ip", VM_IP]);
    refused(&run, "rolled back the 4 change(s)");
    assert!(
        run.stderr.contains(named),
        "the failing change is named: {}",
        run.stderr
    );
    assert_eq!(lab.snapshot(), before, "a failed up left changes behind");
    assert_eq!(lab.tagged(), 0);
    assert!(!exists(&lab.state_dir().join("state.json")));
}

#[test]
fn a_failing_change_is_rolled_back() {
    if !privileged() {
        return;
    }
    // Someone holds exactly the main-table slot dockroute's last change needs.
    blocked_up_is_rolled_back(
        &format!("172.17.0.0/16 via {VM_IP} metric 5017"),
        "another route for 172.17.0.0/16 with metric 5017",
    );
}

#[test]
fn a_change_failing_mid_batch_is_rolled_back_with_those_after_it() {
    if !privileged() {
        return;
    }
    // Someone's route holds the slot of dockroute's second change (its gateway route in its own
    // table). The kernel still applies the three changes sent after it in the same batch.
    blocked_up_is_rolled_back(
        &format!("172.17.0.0/16 via {VM_IP} table 5017"),
        "table dockroute",
    );
}
