//! Files root writes or reads: what the record, a user-chosen directory or a config file can make
//! root do. Each test runs in a lab, with a private /etc where it needs one (never the
//! machine's).
#![cfg(target_os = "linux")]

mod common;
use common::*;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

/// Exit non-zero with exactly one line `error: ...` containing `want`.
fn refused(run: &Run, want: &str) {
    assert_ne!(run.code, 0, "accepted; stdout={}", run.stdout);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {:?}", run.stderr);
    assert!(lines[0].starts_with("error: "), "{:?}", lines[0]);
    assert!(lines[0].contains(want), "{:?} lacks {want:?}", lines[0]);
}

/// A path and an attribute name as C strings.
fn c_names(p: &Path, name: &str) -> (CString, CString) {
    (
        CString::new(p.as_os_str().as_bytes()).unwrap(),
        CString::new(name).unwrap(),
    )
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let (path, name) = c_names(p, name);
    // SAFETY: NUL-terminated path and name, `value` readable for its length.
    let rc = unsafe {
        nix::libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
}

fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let (path, name) = c_names(p, name);
    let mut buf = vec![0u8; 256];
    // SAFETY: NUL-terminated path and name, `buf` writable for its length.
    let n = unsafe {
        nix::libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    usize::try_from(n).ok().map(|n| buf[..n].to_vec())
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect(program);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Mode, owner, group, the user.* attribute and the ACL of a file.
fn attrs(p: &Path) -> (u32, u32, u32, Option<Vec<u8>>, String) {
    let m = std::fs::symlink_metadata(p).unwrap();
    let acl = run(
        "getfacl",
        &["--omit-header", "--numeric", p.to_str().unwrap()],
    );
    (
        m.mode() & 0o7777,
        m.uid(),
        m.gid(),
        get_xattr(p, "user.dockroute-test"),
        acl,
    )
}

#[test]
fn a_rewritten_resolv_conf_keeps_mode_owner_and_extended_attributes_whatever_the_umask() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let etc = lab.make_etc();
    let resolv = etc.join("resolv.conf");
    std::os::unix::fs::chown(&resolv, Some(0), Some(65534)).unwrap();
    set_xattr(&resolv, "user.dockroute-test", b"kept");
    // an extended ACL whose mask keeps the mode 0644
    run("setfacl", &["-m", "u:65534:r", resolv.to_str().unwrap()]);
    let original = std::fs::read(&resolv).unwrap();
    let before = attrs(&resolv);
    assert_eq!(before.0, 0o644);
    assert!(before.4.contains("user:65534:r--"), "{}", before.4);

    let up = &["up", "--vm-ip", VM_IP, "--dns", "resolv-conf"];
    lab.private_etc(&etc, up, 0o027).ok();
    let content = std::fs::read_to_string(&resolv).unwrap();
    assert!(content.starts_with("# dockroute:"), "{content}");
    assert_eq!(
        attrs(&resolv),
        before,
        "up changed mode, owner or attributes"
    );
    assert!(leftovers(&etc).is_empty(), "{:?}", leftovers(&etc));

    lab.private_etc(&etc, &["down"], 0o027).ok();
    assert_eq!(std::fs::read(&resolv).unwrap(), original);
    assert_eq!(
        attrs(&resolv),
        before,
        "down changed mode, owner or attributes"
    );
    assert!(leftovers(&etc).is_empty());
}

/// A victim: a root-only file that starts with dockroute's resolv.conf lines (which `down`
/// would strip) and a resolver file with dockroute's header (which `down` would delete).
fn victims(lab: &Lab) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = lab.dir.path().join("victims");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("shadow");
    std::fs::write(
        &file,
        "# dockroute: the next line asks the VM's DNS first (for *.docker); `dockroute down` removes both\nnameserver 172.17.0.1\nroot:secret:0:0\n",
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let resolver = dir.join("victim");
    std::fs::write(
        &resolver,
        "# managed by dockroute: `dockroute down` removes this file\nnameserver 1.1.1.1\n",
    )
    .unwrap();
    (file, resolver)
}

/// Rewrite the record's DNS entry.
fn forge(lab: &Lab, backend: &str, path: &Path, domain: &str) {
    let p = lab.state_dir().join("state.json");
    let mut rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    rec["dns"] = serde_json::json!({
        "backend": backend,
        "domain": domain,
        "nameserver": "172.17.0.1:53",
        "ifname": "vboxnet0",
        "ifindex": 2,
        "path": path,
    });
    std::fs::write(&p, serde_json::to_vec(&rec).unwrap()).unwrap();
}

#[test]
fn a_forged_record_never_makes_root_rewrite_or_remove_another_file() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let (file, resolver) = victims(&lab);
    let (file_before, resolver_before) = (
        std::fs::read(&file).unwrap(),
        std::fs::read(&resolver).unwrap(),
    );
    let resolv_before = std::fs::read(lab.resolv_conf()).unwrap();
    let unchanged = || {
        assert_eq!(std::fs::read(&file).unwrap(), file_before);
        assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&resolver).unwrap(), resolver_before);
    };

    // resolv-conf at another path: down edits the lab's resolv.conf, never the victim
    up(&lab);
    forge(&lab, "resolv-conf", &file, "docker");
    lab.dockroute(&["down"]).ok();
    unchanged();
    assert_eq!(std::fs::read(lab.resolv_conf()).unwrap(), resolv_before);

    // a resolver file in a directory a user can change: down refuses and says why
    let victims = resolver.parent().unwrap();
    std::os::unix::fs::chown(victims, Some(65534), None).unwrap();
    up(&lab);
    forge(&lab, "resolver-dir", victims, "victim");
    let run = lab.dockroute(&["down"]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("is not safe"), "{}", run.stderr);
    unchanged();
    // ... and `up` replacing that previous setting leaves it alone as well
    lab.dockroute(&["up", "--vm-ip", VM_IP, "--dns", "resolv-conf"])
        .ok();
    unchanged();
    std::os::unix::fs::chown(victims, Some(0), None).unwrap();

    // a recorded directory that is not a plain absolute path
    let climbing = lab.dir.path().join("resolver/../victims");
    forge(&lab, "resolver-dir", &climbing, "victim");
    let run = lab.dockroute(&["down"]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("not an absolute path of plain names"),
        "{}",
        run.stderr
    );
    unchanged();

    // a domain that climbs out of the recorded resolver dir
    let dir = lab.dir.path().join("resolver");
    std::fs::create_dir(&dir).unwrap();
    forge(&lab, "resolver-dir", &dir, "../victims/victim");
    let dir_arg = dir.to_str().unwrap();
    let run = lab.dockroute(&["down", "--resolver-dir", dir_arg]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("cannot name a resolver file"),
        "{}",
        run.stderr
    );
    unchanged();
}

#[test]
fn as_root_a_user_owned_state_dir_is_refused_outright() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let before = lab.snapshot();
    let (file, _) = victims(&lab);
    let file_before = std::fs::read(&file).unwrap();
    let state = lab.state_dir();
    std::fs::create_dir(&state).unwrap();
    let record = serde_json::json!({
        "version": 1,
        "target": {
            "ifname": "vboxnet0", "ifindex": 2, "host_addr": "192.168.99.1/24",
            "vm_ip": VM_IP, "vm_ip_source": "flag", "subnets": ["172.17.0.0/16"]
        },
        "entries": [],
        "dns": {
            "backend": "resolv-conf", "domain": "docker", "nameserver": "172.17.0.1:53",
            "ifname": "vboxnet0", "ifindex": 2, "path": file,
        },
    });
    std::fs::write(state.join("state.json"), record.to_string()).unwrap();
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
    std::os::unix::fs::chown(state.join("state.json"), Some(65534), Some(65534)).unwrap();

    refused(&lab.dockroute(&["down"]), "owned by uid 65534");
    refused(
        &lab.dockroute(&["up", "--vm-ip", VM_IP]),
        "owned by uid 65534",
    );
    assert_eq!(std::fs::read(&file).unwrap(), file_before);
    assert_eq!(lab.snapshot(), before);

    // one the user could replace further up is refused as well
    std::os::unix::fs::chown(&state, Some(0), Some(0)).unwrap();
    std::os::unix::fs::chown(lab.dir.path(), Some(65534), None).unwrap();
    refused(&lab.dockroute(&["down"]), "owned by uid 65534");
    std::os::unix::fs::chown(lab.dir.path(), Some(0), None).unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), file_before);
}

#[test]
fn a_resolver_dir_that_is_not_one_is_refused() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let before = lab.snapshot();
    let etc = lab.make_etc();
    std::fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    let run = lab.private_etc(
        &etc,
        &[&up_resolver_dir("/etc")[..], &["--domain", "ld.so.preload"]].concat(),
        0o022,
    );
    refused(&run, "/etc/passwd, which is not a resolver file");
    assert!(!run.stderr.contains("root:x"), "{}", run.stderr);
    assert!(!etc.join("ld.so.preload").exists());
    assert_eq!(lab.snapshot(), before);

    // a resolver dir another user owns (or could replace)
    let dir = lab.dir.path().join("resolver");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
    for d in [dir.clone(), dir.join("sub")] {
        let run = lab.dockroute(&up_resolver_dir(d.to_str().unwrap()));
        refused(&run, "owned by uid 65534");
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    assert_eq!(lab.snapshot(), before);
}

#[test]
fn errors_about_a_config_file_others_cannot_read_never_quote_it() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    std::fs::write(
        lab.config(),
        "interface = \"vboxnet0\"\nvm_ip = \"hunter2-secret\"\n",
    )
    .unwrap();
    std::fs::set_permissions(lab.config(), std::fs::Permissions::from_mode(0o600)).unwrap();
    let run = lab.dockroute(&["up"]);
    refused(&run, &format!("{} line 2:", lab.config().display()));
    assert!(!run.stderr.contains("hunter2"), "{}", run.stderr);
    assert!(!run.stderr.contains("vm_ip"), "{}", run.stderr);

    // as root the config file must be root's all the way up
    std::fs::write(lab.config(), "").unwrap();
    std::os::unix::fs::chown(lab.config(), Some(65534), None).unwrap();
    refused(
        &lab.dockroute(&["up", "--vm-ip", VM_IP]),
        "owned by uid 65534",
    );
}

/// `dockroute ARGS` that must end on its own within 20 s (a FIFO must never make it wait).
fn ends(lab: &Lab, args: &[&str], env: &[(&str, &dyn AsRef<std::ffi::OsStr>)]) -> Run {
    let mut c = lab.command(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("dockroute {args:?} did not end");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Run::from(child.wait_with_output().unwrap())
}

/// Without sudo (after `su`, in the boot job) root reads a docker-machine store that someone else
/// can change with that user's rights: a link in it to a file only root may read is not read
/// (and nothing of that file shows), the user's own config.json still is; a FIFO or a link as
/// config.json is refused at once.
#[test]
fn a_users_machine_store_is_read_with_that_users_rights_even_without_sudo() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    // root's secret, in a directory only root may enter
    let secret = lab.dir.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(
        secret.join("config.json"),
        r#"{"Driver":{"IPAddress":"hunter2-secret"}}"#,
    )
    .unwrap();
    // nobody's store: the machine `dev` is a link to root's directory
    let store = lab.dir.path().join("machine");
    std::fs::create_dir_all(store.join("machines")).unwrap();
    for d in [&store, &store.join("machines")] {
        std::os::unix::fs::chown(d, Some(65534), Some(65534)).unwrap();
    }
    std::os::unix::fs::symlink(&secret, store.join("machines/dev")).unwrap();
    let env: [(&str, &dyn AsRef<std::ffi::OsStr>); 1] = [("MACHINE_STORAGE_PATH", &store)];
    let before = lab.snapshot();
    let run = ends(&lab, &["up", "--machine", "dev"], &env);
    refused(&run, "docker-machine 'dev': cannot read");
    assert!(run.stderr.contains("Permission denied"), "{}", run.stderr);
    assert!(!run.stderr.contains("hunter2"), "{}", run.stderr);
    assert_eq!(lab.snapshot(), before);

    // the user's own config.json, readable by that user only, is read
    let own = store.join("machines/own");
    std::fs::create_dir(&own).unwrap();
    let config = own.join("config.json");
    std::fs::write(&config, r#"{"Driver":{"IPAddress":"192.168.99.100"}}"#).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    for p in [&own, &config] {
        std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
    }
    let run = ends(&lab, &["up", "--dry-run", "--machine", "own"], &env).ok();
    assert!(
        run.stdout.contains("docker-machine 'own'"),
        "{}",
        run.stdout
    );

    // a FIFO or a link in config.json's place: refused at once, nothing read through it
    std::fs::remove_file(&config).unwrap();
    nix::unistd::mkfifo(&config, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    let run = ends(&lab, &["up", "--machine", "own"], &env);
    refused(&run, "not a regular file");
    std::fs::remove_file(&config).unwrap();
    std::os::unix::fs::symlink(secret.join("config.json"), &config).unwrap();
    let run = ends(&lab, &["up", "--machine", "own"], &env);
    refused(&run, "symbolic link");
    assert!(!run.stderr.contains("hunter2"), "{}", run.stderr);
    assert_eq!(lab.snapshot(), before);
}
