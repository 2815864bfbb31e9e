//! Finding the VM: every source in its order, against the real kernel.
#![cfg(target_os = "linux")]

mod common;
use common::*;
use std::time::{Duration, Instant};

fn source(lab: &Lab) -> serde_json::Value {
    lab.dockroute(&["--json", "status"]).ok().json()["target"]["vm_ip_source"].clone()
}

/// The host talks to the VM once (as the docker CLI would): the kernel learns its neighbour.
fn learn_the_vm(lab: &Lab) {
    lab.in_host(|| {
        let _ = std::net::TcpStream::connect_timeout(
            &"192.168.99.100:2376".parse().unwrap(),
            Duration::from_secs(1),
        );
    });
}

#[test]
fn the_single_live_neighbour_on_the_host_only_link_is_the_vm() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let err = lab.dockroute(&["up"]);
    assert_ne!(err.code, 0);
    assert!(err.stderr.contains("no live neighbour"), "{}", err.stderr);
    learn_the_vm(&lab);
    let out = lab.dockroute(&["up"]).ok();
    assert!(
        out.stdout
            .contains("VM IP from the neighbour table of vboxnet0"),
        "{}",
        out.stdout
    );
    assert!(lab.reaches_container());
    assert_eq!(source(&lab)["type"], "neighbour");
}

#[test]
fn docker_host_names_the_vm() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    lab.dockroute_env(&["up"], &[("DOCKER_HOST", &"tcp://192.168.99.100:2376")])
        .ok();
    assert!(lab.reaches_container());
    assert_eq!(source(&lab)["type"], "docker-host");

    // A DOCKER_HOST that is not tcp://IP is skipped and named in the error.
    let lab = Lab::new();
    let run = lab.dockroute_env(&["up"], &[("DOCKER_HOST", &"unix:///var/run/docker.sock")]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr
            .contains("DOCKER_HOST ('unix:///var/run/docker.sock' is not tcp://IP)"),
        "{}",
        run.stderr
    );
}

/// The record (state.json) is root's only, and holds a DOCKER_HOST only when that named the VM:
/// one that points elsewhere (an ssh:// build host) is not written down, one that named the VM
/// still replays for a bare `up`.
#[test]
fn the_record_is_private_and_keeps_only_a_docker_host_that_was_used() {
    if !privileged() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::new();
    let record = lab.state_dir().join("state.json");
    let elsewhere = "ssh://alice@build.corp.internal:2222";
    // the VM comes from the neighbour table; DOCKER_HOST names another machine
    learn_the_vm(&lab);
    lab.dockroute_env(&["up"], &[("DOCKER_HOST", &elsewhere)])
        .ok();
    assert_eq!(source(&lab)["type"], "neighbour");
    let text = std::fs::read_to_string(&record).unwrap();
    assert!(!text.contains("build.corp.internal"), "{text}");
    let mode = std::fs::metadata(&record).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "state.json mode {mode:o}");
    lab.dockroute(&["down"]).ok();

    // a DOCKER_HOST that named the VM is recorded, and a bare `up` without it does the same
    let lab = Lab::new();
    lab.dockroute_env(&["up"], &[("DOCKER_HOST", &"tcp://192.168.99.100:2376")])
        .ok();
    let text = std::fs::read_to_string(lab.state_dir().join("state.json")).unwrap();
    assert!(text.contains("tcp://192.168.99.100:2376"), "{text}");
    let out = lab.dockroute(&["up"]).ok();
    assert!(
        out.stdout
            .contains("last up's settings (DOCKER_HOST=tcp://192.168.99.100:2376)"),
        "{}",
        out.stdout
    );
    assert!(lab.reaches_container());
    assert_eq!(source(&lab)["type"], "docker-host");
}

#[test]
fn a_docker_machine_store_names_the_vm() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let store = lab.dir.path().join("machine");
    std::fs::create_dir_all(store.join("machines/dev")).unwrap();
    std::fs::write(
        store.join("machines/dev/config.json"),
        r#"{"ConfigVersion":3,"Driver":{"IPAddress":"192.168.99.100","MachineName":"dev"},"DriverName":"virtualbox"}"#,
    )
    .unwrap();
    // a DOCKER_HOST pointing elsewhere loses: --machine comes first
    let env: [(&str, &dyn AsRef<std::ffi::OsStr>); 2] = [
        ("MACHINE_STORAGE_PATH", &store),
        ("DOCKER_HOST", &"tcp://10.1.1.1:2376"),
    ];
    lab.dockroute_env(&["up", "--machine", "dev"], &env).ok();
    assert!(lab.reaches_container());
    let src = source(&lab);
    assert_eq!(src["type"], "machine");
    assert_eq!(src["name"], "dev");
}

#[test]
fn under_sudo_the_store_is_in_the_invoking_users_home() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    // the passwd entry of nobody, as the system's NSS answers it (Debian: /nonexistent)
    let passwd = std::process::Command::new("getent")
        .args(["passwd", "nobody"])
        .output()
        .unwrap();
    let home = String::from_utf8(passwd.stdout).unwrap();
    let home = home.trim().split(':').nth(5).unwrap().to_string();
    // sudo keeps HOME of the caller on some systems: $SUDO_USER's home wins over it
    let env: [(&str, &dyn AsRef<std::ffi::OsStr>); 2] =
        [("SUDO_USER", &"nobody"), ("HOME", &lab.dir.path())];
    let before = lab.snapshot();
    let run = lab.dockroute_env(&["up", "--machine", "dev"], &env);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let want = format!("cannot read {home}/.docker/machine/machines/dev/config.json");
    assert!(run.stderr.contains(&want), "{}", run.stderr);
    let env: [(&str, &dyn AsRef<std::ffi::OsStr>); 1] = [("SUDO_USER", &"no-such-user-dr")];
    let run = lab.dockroute_env(&["up", "--machine", "dev"], &env);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .starts_with("error: cannot find the home of SUDO_USER 'no-such-user-dr'"),
        "{}",
        run.stderr
    );
    assert_eq!(lab.snapshot(), before);
}

#[test]
fn the_config_file_names_the_vm_and_flags_override_it() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    std::fs::write(
        lab.config(),
        "vm_ip = \"192.168.99.100\"\ninterface = \"vboxnet0\"\nsubnets = [\"172.17.0.0/16\"]\n",
    )
    .unwrap();
    lab.dockroute(&["up"]).ok();
    assert!(lab.reaches_container());
    assert_eq!(source(&lab)["type"], "config");
    // --vm-ip beats the config file
    let run = lab
        .dockroute(&["up", "--vm-ip", "192.168.99.77", "--dry-run"])
        .ok();
    assert!(
        run.stdout.contains("via VM 192.168.99.77"),
        "{}",
        run.stdout
    );
}

#[test]
fn wait_follows_netlink_events_until_the_link_is_ready() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    // The host-only link loses its address, as before VirtualBox configures it.
    lab.ip("addr flush dev vboxnet0");
    let start = Instant::now();
    let child = lab.spawn(&["up", "--vm-ip", VM_IP, "--wait", "20"], &[]);
    std::thread::sleep(Duration::from_millis(300));
    lab.ip("addr add 192.168.99.1/24 dev vboxnet0");
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It woke on the address event, long before its 20 s deadline.
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "did not wake on the event"
    );
    assert!(lab.reaches_container());

    // A link that never appears: an error naming the wait, after the deadline.
    let lab = Lab::new();
    let run = lab.dockroute(&[
        "up",
        "--vm-ip",
        VM_IP,
        "--interface",
        "vboxnet5",
        "--wait",
        "0.3",
    ]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("no link named 'vboxnet5'") && run.stderr.contains("(waited 0.3s)"),
        "{}",
        run.stderr
    );
}

/// A docker-machine store under the lab's directory, with `machines/dev/` made and returned.
fn machine_store(lab: &Lab) -> (std::path::PathBuf, std::path::PathBuf) {
    let store = lab.dir.path().join("machine");
    let dev = store.join("machines/dev");
    std::fs::create_dir_all(&dev).unwrap();
    (store, dev.join("config.json"))
}

/// `dockroute up --machine dev --dry-run` with the store and `env`, limited to 256 MiB of address
/// space and killed after `limit` (so the unfixed code fails the test instead of the machine).
fn bounded_up(lab: &Lab, store: &std::path::Path, env: &[(&str, &str)], limit: Duration) -> Run {
    use std::os::unix::process::CommandExt;
    let mut c = lab.command(&["up", "--machine", "dev", "--dry-run"]);
    c.env("MACHINE_STORAGE_PATH", store)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        c.pre_exec(|| {
            let lim = nix::libc::rlimit {
                rlim_cur: 256 << 20,
                rlim_max: 256 << 20,
            };
            if nix::libc::setrlimit(nix::libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = c.spawn().unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dockroute did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    Run::from(out)
}

#[test]
fn a_machine_config_that_is_a_symlink_to_dev_zero_is_refused_at_once() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let (store, config) = machine_store(&lab);
    std::os::unix::fs::symlink("/dev/zero", &config).unwrap();
    let run = bounded_up(&lab, &store, &[], Duration::from_secs(5));
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .starts_with("error: docker-machine 'dev': cannot read")
            && run.stderr.contains("symbolic link"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_machine_config_that_is_a_fifo_is_refused_without_waiting() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let (store, config) = machine_store(&lab);
    nix::unistd::mkfifo(&config, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let run = bounded_up(&lab, &store, &[], Duration::from_secs(5));
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("not a regular file"), "{}", run.stderr);
}

#[test]
fn under_sudo_a_machine_config_is_read_with_the_invoking_users_rights() {
    if !privileged() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::new();
    let (store, config) = machine_store(&lab);
    let nobody = [("SUDO_UID", "65534"), ("SUDO_GID", "65534")];
    // A root-only file: refused, and its value is never shown.
    std::fs::write(&config, r#"{"Driver":{"IPAddress":"hunter2-secret"}}"#).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let run = bounded_up(&lab, &store, &nobody, Duration::from_secs(10));
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("Permission denied") && !run.stderr.contains("hunter2"),
        "{}",
        run.stderr
    );
    // Without sudo (root itself) the same file is root's own to read.
    let run = bounded_up(&lab, &store, &[], Duration::from_secs(10));
    assert!(run.stderr.contains("hunter2-secret"), "{}", run.stderr);

    // A file the user can read works under sudo as before.
    std::fs::write(&config, r#"{"Driver":{"IPAddress":"192.168.99.100"}}"#).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = bounded_up(&lab, &store, &nobody, Duration::from_secs(10));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("via VM 192.168.99.100 on vboxnet0"),
        "{}",
        run.stdout
    );
    // A group-readable file of root's group is not readable through root's groups.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).unwrap();
    let run = bounded_up(&lab, &store, &nobody, Duration::from_secs(10));
    assert_eq!(run.code, 1, "{}", run.stderr);
}
