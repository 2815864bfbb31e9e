//! Issue 9, the firewall half: programs never come from $PATH, the system bus never from the
//! environment, rules are dockroute's only in its exact shape, nft deletions survive a VPN that
//! re-creates its table, the parsers survive quotes and unknown expressions, and one backend
//! failing does not stop `down` from undoing the rest. In the lab's namespaces only; programs are
//! replaced only inside private mount namespaces.
#![cfg(target_os = "linux")]

mod common;
use common::*;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

fn iptables_tagged(lab: &Lab) -> usize {
    fw(lab, "iptables", "-S")
        .matches("--comment dockroute")
        .count()
}

/// A VPN kill switch in iptables (nf_tables backend): policy DROP, only lo and tun0.
fn kill_switch(lab: &Lab) {
    lab.add_tunnel("tun0", "10.66.0.2/24");
    for r in KILL_SWITCH {
        fw(lab, "iptables", r);
    }
}

/// `lab.command(args)` rebuilt: `before` replaces the dockroute binary in the argument list (to
/// put a program such as `env` in front of it), `wrap` runs it all inside `unshare -m` after
/// bind-mounting each (source, target) pair.
fn custom(lab: &Lab, args: &[&str], before: &[&str], binds: &[(&Path, &str)]) -> Command {
    let inner = lab.command(args);
    let mut argv: Vec<&OsStr> = Vec::new();
    argv.push(inner.get_program());
    for a in inner.get_args() {
        if a == OsStr::new(BIN) {
            argv.extend(before.iter().map(OsStr::new));
        }
        argv.push(a);
    }
    let mut c = if binds.is_empty() {
        let mut c = Command::new(argv[0]);
        c.args(&argv[1..]);
        c
    } else {
        let mut script = String::from("set -e\n");
        for i in 0..binds.len() {
            script += &format!("mount --bind \"${}\" \"${}\"\n", 2 * i + 1, 2 * i + 2);
        }
        script += &format!("shift {}\nexec \"$@\"\n", 2 * binds.len());
        let mut c = Command::new("unshare");
        c.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ]);
        for (src, dst) in binds {
            c.arg(src).arg(dst);
        }
        c.args(&argv);
        c
    };
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.stdin(Stdio::null());
    c
}

fn output(mut c: Command) -> Run {
    Run::from(c.output().expect("running dockroute"))
}

/// An executable shell script, root-owned and mode 0755.
fn script(path: &Path, body: &str) {
    write_script(path, body, 0o755);
}

#[test]
fn an_empty_path_never_runs_programs_from_the_current_directory() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    kill_switch(&lab);
    let cwd = lab.dir.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    std::fs::set_permissions(&cwd, std::fs::Permissions::from_mode(0o755)).unwrap();
    let marker = lab.dir.path().join("ran");
    for p in ["iptables", "iptables-legacy", "nft", "getent"] {
        script(
            &cwd.join(p),
            &format!("/usr/bin/touch {}", marker.display()),
        );
    }
    let mut c = custom(
        &lab,
        &["up", "--vm-ip", VM_IP],
        &["/usr/bin/env", "PATH="],
        &[],
    );
    c.current_dir(&cwd);
    let up = output(c);
    assert!(
        !exists(&marker),
        "a program from the current directory ran as root"
    );
    let up = up.ok();
    assert!(up.stdout.contains("+ firewall iptables"), "{}", up.stdout);
    assert!(lab.reaches_container(), "the kill switch was not repaired");
}

#[test]
fn without_path_up_still_repairs_the_kill_switch_and_down_removes_its_rules() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    up(&lab);
    kill_switch(&lab);
    let vpn_rules = fw(&lab, "iptables", "-S");
    assert!(!lab.reaches_container());
    let no_path = &["/usr/bin/env", "-u", "PATH"];
    let up = output(custom(&lab, &["up", "--vm-ip", VM_IP], no_path, &[])).ok();
    assert!(up.stdout.contains("+ firewall iptables"), "{}", up.stdout);
    assert!(
        lab.reaches_container(),
        "still blocked after up without PATH"
    );
    assert_eq!(iptables_tagged(&lab), 4);
    output(custom(&lab, &["down"], no_path, &[])).ok();
    assert_eq!(fw(&lab, "iptables", "-S"), vpn_rules, "down left its rules");
}

#[test]
fn a_missing_nft_is_a_visible_warning_in_up_and_status() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    kill_switch(&lab);
    // /dev/null over nft: it is not a program any more, as if not installed
    let gone: &[(&Path, &str)] = &[(Path::new("/dev/null"), "/usr/sbin/nft")];
    let up = output(custom(&lab, &["up", "--vm-ip", VM_IP], &[], gone)).ok();
    assert!(
        up.stdout
            .contains("firewall: WARNING nft not found in /usr/sbin:/usr/bin:/sbin:/bin"),
        "{}",
        up.stdout
    );
    assert!(lab.reaches_container(), "iptables was not repaired");
    let st = output(custom(&lab, &["status"], &[], gone)).ok();
    assert!(
        st.stdout.contains("WARNING: nft not found"),
        "{}",
        st.stdout
    );
    let st = output(custom(&lab, &["--json", "status"], &[], gone))
        .ok()
        .json();
    let w = st["vpn"]["firewall_warnings"].as_array().unwrap();
    assert!(
        w.iter()
            .any(|w| w.as_str().unwrap().contains("nft not found")),
        "{st}"
    );
}

#[test]
fn as_root_the_bus_address_from_the_environment_is_ignored() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let marker = lab.dir.path().join("bus-ran");
    // unixexec: zbus would run this program and talk D-Bus over its stdio
    let addr = format!(
        "unixexec:path=/usr/bin/touch,argv0=touch,argv1={}",
        marker.display()
    );
    let run = lab.dockroute_env(
        &["up", "--vm-ip", VM_IP, "--dns", "resolved"],
        &[("DBUS_SYSTEM_BUS_ADDRESS", &addr)],
    );
    assert!(!exists(&marker), "the bus address ran a program as root");
    // there is no bus at the fixed socket in this mount namespace: refused, nothing changed
    assert_ne!(run.code, 0, "{}", run.stdout);
    assert!(run.stderr.contains("system bus"), "{}", run.stderr);
    assert_eq!(lab.tagged(), 0);
}

#[test]
fn tagged_rules_of_another_shape_are_never_deleted_and_status_warns() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    kill_switch(&lab);
    // an admin's rules that happen to carry the tag, in iptables and in nftables
    fw(
        &lab,
        "iptables",
        "-A INPUT -p tcp --dport 22 -m comment --comment dockroute -j DROP",
    );
    nft_load(
        &lab,
        "admin.nft",
        "table inet admin {\n chain output {\n  type filter hook output priority 10; policy accept;\n  tcp dport 25 drop comment \"dockroute\"\n }\n}\n",
    );
    let admin_nft = fw(&lab, "nft", "list table inet admin");
    up(&lab);
    assert!(lab.reaches_container());
    assert!(
        fw(&lab, "iptables", "-S").contains("--dport 22 -m comment --comment dockroute -j DROP")
    );
    // the admin's drops are judged like anyone's: repaired in front of, not deleted
    assert!(
        fw(&lab, "nft", "list table inet admin")
            .contains("tcp dport 25 drop comment \"dockroute\"")
    );
    assert_eq!(iptables_tagged(&lab), 5, "4 repairs and the admin's rule");
    let again = lab
        .dockroute(&["--json", "up", "--vm-ip", VM_IP])
        .ok()
        .json();
    assert_eq!(again["firewall"], serde_json::json!([]), "{again}");

    let st = lab.dockroute(&["--json", "status"]).ok().json();
    let foreign = st["vpn"]["firewall_foreign"].as_array().unwrap();
    assert_eq!(foreign.len(), 2, "{st}");
    assert_eq!(
        st["vpn"]["firewall_repaired"].as_array().unwrap().len(),
        6,
        "{st}"
    );
    let text = lab.dockroute(&["status"]).ok().stdout;
    assert!(
        text.contains("WARNING: a rule commented \"dockroute\" that dockroute did not make is left alone: iptables -t filter INPUT: -A INPUT -p tcp -m tcp --dport 22"),
        "{text}"
    );
    assert!(text.contains("nft rule inet admin output"), "{text}");

    lab.dockroute(&["down"]).ok();
    let after = fw(&lab, "iptables", "-S");
    assert!(
        after.contains("--dport 22 -m comment --comment dockroute -j DROP"),
        "{after}"
    );
    assert_eq!(iptables_tagged(&lab), 1, "{after}");
    assert_eq!(fw(&lab, "nft", "list table inet admin"), admin_nft);
}

/// A lab whose host-only link has another name (scripts/lab.sh's LAB_HOST_IF).
fn lab_with_link(name: &str) -> Lab {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let prefix = format!(
        "drq{}x{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.path().join("config.toml"), "").unwrap();
    let lab = Lab { prefix, dir };
    let out = Command::new(LAB)
        .args(["create", &lab.prefix])
        .env("LAB_HOST_IF", name)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lab.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab
}

#[test]
fn a_link_name_with_a_quote_gets_its_rules_once_and_down_removes_them() {
    if !privileged() {
        return;
    }
    // the kernel allows `"` in link names (not `/`, `:` or whitespace); iptables prints it raw
    let lab = lab_with_link("vb\"x0");
    kill_switch(&lab);
    up(&lab);
    assert!(lab.reaches_container());
    assert_eq!(iptables_tagged(&lab), 4);
    let again = lab
        .dockroute(&["--json", "up", "--vm-ip", VM_IP])
        .ok()
        .json();
    assert_eq!(again["firewall"], serde_json::json!([]), "{again}");
    assert_eq!(iptables_tagged(&lab), 4, "up added its rules again");
    lab.dockroute(&["down"]).ok();
    assert_eq!(iptables_tagged(&lab), 0, "down left its rules");
}

#[test]
fn an_nft_expression_the_crate_does_not_know_spoils_nothing_else() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    lab.add_tunnel("tun0", "10.66.0.2/24");
    up(&lab);
    nft_load(&lab, "vpn.nft", MULLVAD_LIKE);
    fw(
        &lab,
        "nft",
        "add rule inet vpn output ip option rr exists drop",
    );
    assert!(!lab.reaches_container());
    let vpn = fw(&lab, "nft", "list ruleset");
    up(&lab);
    assert!(lab.reaches_container(), "still blocked after up");
    let st = lab.dockroute(&["--json", "status"]).ok().json();
    assert_eq!(
        st["vpn"]["firewall_repaired"].as_array().unwrap().len(),
        4,
        "{st}"
    );
    let w = st["vpn"]["firewall_warnings"].as_array().unwrap();
    assert!(
        w.iter()
            .any(|w| w.as_str().unwrap().contains("cannot read")),
        "{st}"
    );
    lab.dockroute(&["down"]).ok();
    assert_eq!(fw(&lab, "nft", "list ruleset"), vpn);
    assert_eq!(lab.tagged(), 0);
}

#[test]
fn a_failing_nft_does_not_stop_down_from_undoing_the_rest() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    kill_switch(&lab);
    up(&lab);
    assert_eq!(iptables_tagged(&lab), 4);
    assert!(lab.tagged() > 0);
    let fake = lab.dir.path().join("nft-fake");
    script(&fake, "echo 'this is not JSON'");
    let down = output(custom(&lab, &["down"], &[], &[(&fake, "/usr/sbin/nft")]));
    assert_ne!(down.code, 0, "down hid the failure: {}", down.stdout);
    assert!(down.stderr.contains("nft"), "{}", down.stderr);
    assert_eq!(lab.tagged(), 0, "down left the routes: {}", down.stderr);
    assert_eq!(iptables_tagged(&lab), 0, "down left the iptables rules");
}

/// `down`, with an nft that runs `nft -f FILE` before its second run (the first after `down`
/// read the ruleset): a VPN client changing its table while dockroute removes its rules.
fn down_while(lab: &Lab, file: &Path) -> Run {
    let real = lab.dir.path().join("nft-real");
    copy_exe(Path::new("/usr/sbin/nft"), &real, 0o755);
    let count = lab.dir.path().join("count");
    let wrapper = lab.dir.path().join("nft-wrapper");
    script(
        &wrapper,
        &format!(
            "n=$(cat {c} 2>/dev/null || echo 0)\necho $((n + 1)) >{c}\n\
             if [ \"$n\" = 1 ]; then {real} -f {f}; fi\nexec {real} \"$@\"",
            c = count.display(),
            real = real.display(),
            f = file.display()
        ),
    );
    let down = output(custom(lab, &["down"], &[], &[(&wrapper, "/usr/sbin/nft")]));
    assert!(
        std::fs::read_to_string(&count)
            .unwrap()
            .trim()
            .parse::<u32>()
            .unwrap()
            >= 2,
        "nft -f FILE did not run during down"
    );
    down
}

#[test]
fn a_vpn_table_deleted_during_down_is_already_gone() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    lab.add_tunnel("tun0", "10.66.0.2/24");
    up(&lab);
    nft_load(&lab, "vpn.nft", MULLVAD_LIKE);
    up(&lab);
    let file = lab.dir.path().join("delete.nft");
    std::fs::write(&file, "delete table inet vpn\n").unwrap();
    // nft's "No such file or directory" is the goal reached, not a failure
    down_while(&lab, &file).ok();
    assert_eq!(lab.tagged(), 0);
    assert!(!fw(&lab, "nft", "list ruleset").contains("dockroute"));
}

#[test]
fn a_vpn_table_recreated_during_down_keeps_all_its_rules() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    lab.add_tunnel("tun0", "10.66.0.2/24");
    up(&lab);
    nft_load(&lab, "vpn.nft", MULLVAD_LIKE);
    up(&lab);
    assert!(lab.reaches_container());
    // dockroute's rules took handles 7 and 8 (input), 9 and 10 (output)
    let numbered = fw(&lab, "nft", "-a list table inet vpn");
    for h in 7..=10 {
        assert!(
            numbered.contains(&format!("comment \"dockroute\" # handle {h}")),
            "{numbered}"
        );
    }
    // The client re-creates its table, its rules taking the same handles in the same chains:
    // its "block DNS leaks" and kill switch rules.
    let recreated = "delete table inet vpn
table inet vpn {
    chain input {
        type filter hook input priority 0; policy drop;
    }
    chain output {
        type filter hook output priority 0; policy drop;
    }
}
add rule inet vpn input iifname \"lo\" accept
add rule inet vpn input iifname \"tun0\" accept
add rule inet vpn output oifname \"lo\" accept
add rule inet vpn output oifname \"tun0\" accept
add rule inet vpn input udp sport 53 drop comment \"block DNS leaks\"
add rule inet vpn input tcp sport 53 drop comment \"block DNS leaks\"
add rule inet vpn output udp dport 53 drop comment \"block DNS leaks\"
add rule inet vpn output tcp dport 53 drop comment \"block DNS leaks\"
add rule inet vpn output ip daddr 172.16.0.0/12 drop comment \"kill switch\"
add rule inet vpn output reject
";
    let file = lab.dir.path().join("recreate.nft");
    std::fs::write(&file, recreated).unwrap();
    let down = down_while(&lab, &file);
    let after = fw(&lab, "nft", "list table inet vpn");
    // the same table, loaded afresh (the listing shows no handles)
    fw(&lab, "nft", &format!("-f {}", file.display()));
    assert_eq!(
        after,
        fw(&lab, "nft", "list table inet vpn"),
        "down deleted the VPN's rules: {}",
        down.stderr
    );
    down.ok();
    assert_eq!(lab.tagged(), 0);
}

#[test]
fn a_system_program_others_can_change_is_refused() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    kill_switch(&lab);
    let marker = lab.dir.path().join("ran");
    let fake = lab.dir.path().join("iptables-fake");
    script(&fake, &format!("/usr/bin/touch {}", marker.display()));
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o777)).unwrap();
    // over the program /usr/sbin/iptables leads to (through /etc/alternatives)
    let target = std::fs::canonicalize("/usr/sbin/iptables").unwrap();
    let run = output(custom(
        &lab,
        &["up", "--vm-ip", VM_IP],
        &[],
        &[(&fake, target.to_str().unwrap())],
    ));
    assert!(!exists(&marker), "a world-writable program ran as root");
    assert_ne!(run.code, 0, "{}", run.stdout);
    assert!(
        run.stderr.contains("iptables: refusing to run it")
            && run.stderr.contains("writable by users other than root"),
        "{}",
        run.stderr
    );
    assert_eq!(lab.tagged(), 0, "up changed routes before refusing");
}
