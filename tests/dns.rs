//! Names for containers, against real servers: dnsmasq in the VM namespace answers redis.docker;
//! the host asks through systemd-resolved, a plain resolv.conf, or resolver files.
#![cfg(target_os = "linux")]

mod common;
use common::*;

const CONTAINER_IP: &str = "172.17.0.2";

#[test]
fn resolved_backend_routes_the_domain_to_the_vm_and_down_reverts_the_link() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let h = lab.start_resolved();
    let getent = |name: &str| lab.nsenter(h, "getent", &["hosts", name]);
    assert_ne!(getent("redis.docker").code, 0, "resolves before up?");

    // auto: /etc/resolv.conf has the stub's content, so resolved is the backend
    let up = lab.dockroute_resolved(h, &["up", "--vm-ip", VM_IP]).ok();
    assert!(
        up.stdout
            .contains("dns: set *.docker -> 172.17.0.1:53 (systemd-resolved on vboxnet0)"),
        "{}",
        up.stdout
    );
    let answer = getent("redis.docker").ok().stdout;
    assert!(answer.starts_with(CONTAINER_IP), "{answer}");
    let query = lab
        .nsenter(h, RESOLVECTL, &["query", "redis.docker"])
        .ok()
        .stdout;
    assert!(
        query.contains(CONTAINER_IP) && query.contains("link: vboxnet0"),
        "{query}"
    );
    let domain = lab
        .nsenter(h, RESOLVECTL, &["domain", "vboxnet0"])
        .ok()
        .stdout;
    assert!(domain.contains("~docker"), "{domain}");
    let dns = lab.nsenter(h, RESOLVECTL, &["dns", "vboxnet0"]).ok().stdout;
    assert!(dns.contains("172.17.0.1"), "{dns}");

    let st = lab
        .dockroute_resolved(h, &["--json", "status", "--check-name", "redis.docker"])
        .ok()
        .json();
    assert_eq!(st["dns"]["backend"], "resolved");
    assert_eq!(st["dns"]["in_place"], true);
    assert_eq!(st["name_check"]["addresses"][0], CONTAINER_IP);

    let again = lab
        .dockroute_resolved(h, &["--json", "up", "--vm-ip", VM_IP])
        .ok()
        .json();
    assert_eq!(again["dns"]["changed"], false);
    assert_eq!(again["changes"], serde_json::json!([]));

    let down = lab.dockroute_resolved(h, &["down"]).ok();
    assert!(down.stdout.contains("dns: removed"), "{}", down.stdout);
    let dns = lab.nsenter(h, RESOLVECTL, &["dns", "vboxnet0"]).ok().stdout;
    let domain = lab
        .nsenter(h, RESOLVECTL, &["domain", "vboxnet0"])
        .ok()
        .stdout;
    assert_eq!(
        dns.trim(),
        "Link 2 (vboxnet0):",
        "DNS server left on the link: {dns}"
    );
    assert_eq!(
        domain.trim(),
        "Link 2 (vboxnet0):",
        "domain left on the link: {domain}"
    );
    assert_ne!(getent("redis.docker").code, 0, "still resolves after down");
}

#[test]
fn resolved_backend_uses_set_link_dns_ex_for_another_port() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let h = lab.start_resolved();
    lab.dockroute_resolved(
        h,
        &[
            "up",
            "--vm-ip",
            VM_IP,
            "--dns",
            "resolved",
            "--nameserver",
            "172.17.0.1:5353",
        ],
    )
    .ok();
    let dns = lab.nsenter(h, RESOLVECTL, &["dns", "vboxnet0"]).ok().stdout;
    assert!(dns.contains("172.17.0.1:5353"), "{dns}");
    lab.dockroute_resolved(h, &["down"]).ok();
    let dns = lab.nsenter(h, RESOLVECTL, &["dns", "vboxnet0"]).ok().stdout;
    assert!(!dns.contains("172.17.0.1"), "{dns}");
}

#[test]
fn resolved_backend_without_resolved_is_refused_before_any_change() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let before = lab.snapshot();
    let run = lab.dockroute(&["up", "--vm-ip", VM_IP, "--dns", "resolved"]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.starts_with("error: ") && run.stderr.lines().count() == 1,
        "{}",
        run.stderr
    );
    assert_eq!(lab.snapshot(), before);
}

#[test]
fn resolv_conf_backend_on_a_bind_mounted_file_and_byte_identical_after_down() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    // a realistic hand-written file (still only pointing inside the lab)
    let original =
        "# written by hand\nsearch lab.example\nnameserver 127.0.0.1\noptions timeout:2\n";
    std::fs::write(lab.resolv_conf(), original).unwrap();
    assert_eq!(lab.getent("redis.docker"), None);

    // auto: a plain file, so resolv-conf; /etc/resolv.conf is a bind mount (EBUSY on rename)
    let up = lab.dockroute(&["up", "--vm-ip", VM_IP]).ok();
    assert!(
        up.stdout
            .contains("dns: set *.docker -> 172.17.0.1:53 (first nameserver in /etc/resolv.conf)"),
        "{}",
        up.stdout
    );
    assert_eq!(lab.getent("redis.docker").as_deref(), Some(CONTAINER_IP));
    let now = std::fs::read_to_string(lab.resolv_conf()).unwrap();
    assert!(
        now.starts_with("# dockroute:") && now.lines().nth(1) == Some("nameserver 172.17.0.1"),
        "{now}"
    );
    assert!(now.ends_with(original), "{now}");

    lab.dockroute(&["up", "--vm-ip", VM_IP]).ok();
    assert_eq!(
        std::fs::read_to_string(lab.resolv_conf()).unwrap(),
        now,
        "second up changed it"
    );

    let st = lab
        .dockroute(&["--json", "status", "--check-name", "redis.docker"])
        .ok()
        .json();
    assert_eq!(st["dns"]["backend"], "resolv-conf");
    assert_eq!(st["dns"]["in_place"], true);
    assert_eq!(st["name_check"]["addresses"][0], CONTAINER_IP);

    lab.dockroute(&["down"]).ok();
    assert_eq!(
        std::fs::read_to_string(lab.resolv_conf()).unwrap(),
        original
    );
    assert_eq!(lab.getent("redis.docker"), None);
}

#[test]
fn resolv_conf_rewritten_by_someone_else_is_left_alone_by_down() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    lab.dockroute(&["up", "--vm-ip", VM_IP]).ok();
    // a DHCP client rewrites the file: dockroute's lines are gone
    std::fs::write(lab.resolv_conf(), "nameserver 127.0.0.2\n").unwrap();
    let run = lab.dockroute(&["--json", "status"]);
    assert_eq!(
        run.code, 3,
        "DNS no longer in place is degraded: {}",
        run.stderr
    );
    let st = run.json();
    assert_eq!(st["dns"]["in_place"], false);
    lab.dockroute(&["down"]).ok();
    assert_eq!(
        std::fs::read_to_string(lab.resolv_conf()).unwrap(),
        "nameserver 127.0.0.2\n"
    );
}

#[test]
fn resolv_conf_lines_are_found_even_without_the_record() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let original = std::fs::read(lab.resolv_conf()).unwrap();
    lab.dockroute(&["up", "--vm-ip", VM_IP]).ok();
    std::fs::remove_file(lab.state_dir().join("state.json")).unwrap();
    lab.dockroute(&["down"]).ok();
    assert_eq!(std::fs::read(lab.resolv_conf()).unwrap(), original);
}

#[test]
fn resolver_dir_backend_writes_only_its_file() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let dir = lab.dir.path().join("resolver");
    let dir_arg = dir.to_str().unwrap().to_string();
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("corp.example"), "nameserver 10.0.0.53\n").unwrap();
    let up = |extra: &[&str]| {
        let mut args = up_resolver_dir(&dir_arg).to_vec();
        args.extend_from_slice(extra);
        lab.dockroute(&args)
    };
    up(&["--nameserver", "172.17.0.1:5353"]).ok();
    assert_eq!(
        std::fs::read_to_string(dir.join("docker")).unwrap(),
        "# managed by dockroute: `dockroute down` removes this file\nnameserver 172.17.0.1\nport 5353\n"
    );
    up(&[]).ok();
    assert_eq!(
        std::fs::read_to_string(dir.join("docker")).unwrap(),
        "# managed by dockroute: `dockroute down` removes this file\nnameserver 172.17.0.1\n"
    );
    // a plain down removes the file where up wrote it
    lab.dockroute(&["down"]).ok();
    assert!(!dir.join("docker").exists());
    assert_eq!(
        std::fs::read_to_string(dir.join("corp.example")).unwrap(),
        "nameserver 10.0.0.53\n"
    );
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["corp.example"]);
}

/// Every entry under `dir`: its path, mode, owner and content (a directory's content is empty).
fn tree(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u32, u32, Vec<u8>)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let m = std::fs::symlink_metadata(&d).unwrap();
        let content = if m.is_file() {
            std::fs::read(&d).unwrap()
        } else {
            Vec::new()
        };
        out.push((d.clone(), m.mode(), m.uid(), content));
        if m.is_dir() {
            todo.extend(std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().path()));
        }
    }
    out.sort();
    out
}

/// Issue 16, point 9: after `up --dns resolver-dir --resolver-dir DIR`, a plain `down` removes the
/// file `up` wrote there and leaves DIR as it was before `up`; but not when the directory (or one
/// above it) has meanwhile become a user's: then it refuses, saying why, and removes nothing.
#[test]
fn a_plain_down_removes_the_resolver_file_where_up_wrote_it_while_root_still_owns_the_way() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let before = lab.snapshot();
    let parent = lab.dir.path().join("etc");
    let dir = parent.join("resolver");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("corp.example"), "nameserver 10.0.0.53\n").unwrap();
    let dir_before = tree(&parent);
    let dir_arg = dir.to_str().unwrap();

    lab.dockroute(&up_resolver_dir(dir_arg)).ok();
    assert!(dir.join("docker").exists());
    let run = lab.dockroute(&["down"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(tree(&parent), dir_before);
    assert_eq!(lab.snapshot(), before);

    // the directory, or one above it, became a user's after `up`
    for (changed, what) in [(&dir, "the directory"), (&parent, "a directory above it")] {
        lab.dockroute(&up_resolver_dir(dir_arg)).ok();
        let written = tree(&parent);
        std::os::unix::fs::chown(changed, Some(65534), None).unwrap();
        let run = lab.dockroute(&["down"]);
        assert_ne!(run.code, 0, "{what}");
        assert!(
            run.stderr
                .contains(&format!("resolver directory {dir_arg} is not safe"))
                && run.stderr.contains("owned by uid 65534"),
            "{what}: {}",
            run.stderr
        );
        std::os::unix::fs::chown(changed, Some(0), None).unwrap();
        assert_eq!(tree(&parent), written, "{what}: something was removed");
        // root owns the way again: the next down finishes
        lab.dockroute(&["down"]).ok();
        assert_eq!(tree(&parent), dir_before, "{what}");
    }
}

#[test]
fn resolver_dir_refusals_change_nothing() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let before = lab.snapshot();
    let dir = lab.dir.path().join("resolver");
    std::fs::create_dir(&dir).unwrap();
    let dir_arg = dir.to_str().unwrap().to_string();
    let args = up_resolver_dir(&dir_arg);

    // a file dockroute did not write
    std::fs::write(dir.join("docker"), "nameserver 9.9.9.9\n").unwrap();
    let run = lab.dockroute(&args);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("is not dockroute's") && run.stderr.lines().count() == 1,
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("docker")).unwrap(),
        "nameserver 9.9.9.9\n"
    );
    assert_eq!(lab.snapshot(), before);

    // a symlink, even to a file that looks like dockroute's
    std::fs::remove_file(dir.join("docker")).unwrap();
    let target = lab.dir.path().join("elsewhere");
    std::fs::write(
        &target,
        "# managed by dockroute: `dockroute down` removes this file\nnameserver 1.1.1.1\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(&target, dir.join("docker")).unwrap();
    let run = lab.dockroute(&args);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("not a regular file"), "{}", run.stderr);
    assert!(
        std::fs::read_to_string(&target)
            .unwrap()
            .contains("1.1.1.1")
    );
    assert_eq!(lab.snapshot(), before);
    assert!(!lab.state_dir().join("state.json").exists());
}

#[test]
fn switching_backends_undoes_the_previous_one() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let original = std::fs::read(lab.resolv_conf()).unwrap();
    let dir = lab.dir.path().join("resolver");
    lab.dockroute(&["up", "--vm-ip", VM_IP]).ok(); // resolv-conf
    let dir_arg = dir.to_str().unwrap();
    lab.dockroute(&up_resolver_dir(dir_arg)).ok();
    assert_eq!(
        std::fs::read(lab.resolv_conf()).unwrap(),
        original,
        "old backend not undone"
    );
    assert!(dir.join("docker").exists());
    lab.dockroute(&[
        "up",
        "--vm-ip",
        VM_IP,
        "--dns",
        "off",
        "--resolver-dir",
        dir_arg,
    ])
    .ok();
    assert!(!dir.join("docker").exists());
}

/// Issue 11, point 1: `up` asks the VM's DNS (through the routes it installs) before it names it
/// first in resolv.conf; a server that does not answer is refused, and nothing is left behind.
#[test]
fn up_refuses_a_vm_dns_that_does_not_answer_and_leaves_nothing_behind() {
    if !privileged() {
        return;
    }
    for how in ["dnsmasq stopped", "VM address removed"] {
        let lab = Lab::new();
        let before = lab.snapshot();
        let resolv = std::fs::read(lab.resolv_conf()).unwrap();
        match how {
            "dnsmasq stopped" => lab.stop_vm_dns(),
            _ => {
                ip_in(&lab.vm(), &format!("addr del {VM_IP}/24 dev eth0"));
            }
        }
        let started = std::time::Instant::now();
        let run = lab.dockroute(&["up", "--vm-ip", VM_IP]);
        let took = started.elapsed();
        assert_ne!(run.code, 0, "{how}: {}", run.stdout);
        assert_eq!(run.stderr.lines().count(), 1, "{how}: {}", run.stderr);
        assert!(
            run.stderr
                .starts_with("error: DNS: the VM's DNS server 172.17.0.1:53 does not answer")
                && run.stderr.contains("--dns off"),
            "{how}: {}",
            run.stderr
        );
        assert!(took.as_secs_f64() < 4.0, "{how}: took {took:?}");
        assert_eq!(std::fs::read(lab.resolv_conf()).unwrap(), resolv, "{how}");
        assert_eq!(lab.snapshot(), before, "{how}: routes left behind");
        assert!(
            !lab.state_dir().join("state.json").exists(),
            "{how}: recorded"
        );
        // the way out: without DNS, the routes go in
        lab.dockroute(&["up", "--vm-ip", VM_IP, "--dns", "off"])
            .ok();
        assert_eq!(lab.tagged(), 5, "{how}");
        assert_eq!(std::fs::read(lab.resolv_conf()).unwrap(), resolv, "{how}");
    }
}

/// A hook's `up` after the VM's DNS went away takes the stale line out (it would stall every
/// lookup) and says so; the routes of the earlier `up` stay.
#[test]
fn up_withdraws_its_line_when_the_server_stopped_answering() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let resolv = std::fs::read(lab.resolv_conf()).unwrap();
    up(&lab);
    assert_ne!(std::fs::read(lab.resolv_conf()).unwrap(), resolv);
    lab.stop_vm_dns();
    let run = lab.dockroute(&["up", "--vm-ip", VM_IP]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr
            .contains("took dockroute's line out of /etc/resolv.conf"),
        "{}",
        run.stderr
    );
    assert_eq!(std::fs::read(lab.resolv_conf()).unwrap(), resolv);
    assert_eq!(lab.tagged(), 5);
    lab.dockroute(&["down"]).ok();
    assert_eq!(std::fs::read(lab.resolv_conf()).unwrap(), resolv);
}

/// `status` asks the server too: one that does not answer is reported (human and JSON).
#[test]
fn status_reports_a_vm_dns_that_does_not_answer() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    up(&lab);
    let st = lab.dockroute(&["--json", "status"]).ok().json();
    assert_eq!(st["dns"]["answers"], true, "{st}");
    assert_eq!(st["dns"]["degraded"], false, "{st}");
    lab.stop_vm_dns();
    let run = lab.dockroute(&["--json", "status"]);
    assert_eq!(
        run.code, 3,
        "a silent VM DNS is a degraded state: {}",
        run.stderr
    );
    assert!(run.stderr.contains("DNS for *.docker"), "{}", run.stderr);
    let st = run.json();
    assert_eq!(st["dns"]["in_place"], true, "{st}");
    assert_eq!(st["dns"]["answers"], false, "{st}");
    assert_eq!(st["dns"]["degraded"], true, "{st}");
    let text = lab.dockroute(&["status"]).stdout;
    assert!(text.contains("172.17.0.1:53 DOES NOT ANSWER"), "{text}");
}
