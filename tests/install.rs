//! `dockroute install` and `uninstall`: the boot job's files (systemd unit, launchd plist), the
//! hooks, the refusals (a binary a user could replace, symlinked directories under the install
//! root), and `uninstall` running `down`. Everything is written under private roots, or under a
//! private copy of /etc bind-mounted in a private mount namespace of a lab: never the machine's.
#![cfg(target_os = "linux")]

mod common;
use common::*;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const ANALYZE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/analyze.sh");

/// A copy of the binary in a fresh directory under /tmp, root's and mode 0755 (the checkout may
/// live somewhere a user can write). `owner`: chown the directory to this uid.
fn binary_copy(owner: Option<u32>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("dockroute");
    copy_exe(Path::new(BIN), &bin, 0o755);
    if let Some(uid) = owner {
        std::os::unix::fs::chown(dir.path(), Some(uid), None).unwrap();
    }
    (dir, bin)
}

/// `BIN ARGS` with umask 077 (the modes installed must not depend on root's umask).
fn run(bin: &Path, args: &[&str]) -> Run {
    let mut c = Command::new(bin);
    c.args(args).env_remove("DOCKROUTE_CONFIG");
    // SAFETY: umask is async-signal-safe and touches nothing else.
    unsafe {
        c.pre_exec(|| {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
            Ok(())
        });
    }
    let o = c.output().unwrap();
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Every entry under `root`: type, mode, owner, and a file's content.
fn walk(root: &Path) -> BTreeMap<String, String> {
    fn go(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let kind = if m.file_type().is_symlink() {
                format!("link -> {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                "dir".into()
            } else {
                format!("file {:?}", std::fs::read_to_string(&p).unwrap_or_default())
            };
            out.insert(
                rel,
                format!("{:04o} {}:{} {kind}", m.mode() & 0o7777, m.uid(), m.gid()),
            );
            if m.is_dir() {
                go(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    go(root, root, &mut out);
    out
}

fn private_root(dirs: &[&str]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for d in dirs {
        std::fs::create_dir_all(root.path().join(d)).unwrap();
    }
    root
}

fn one_error_line(r: &Run) {
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(
        r.stderr.starts_with("error: ") && r.stderr.lines().count() == 1,
        "{}",
        r.stderr
    );
}

#[test]
fn install_refuses_a_binary_a_user_could_replace_and_writes_nothing() {
    if !privileged() {
        return;
    }
    let root = private_root(&["etc/NetworkManager/dispatcher.d"]);
    let r = root.path().to_str().unwrap();
    let before = walk(root.path());

    // in a directory the user owns (e.g. ~/.cargo/bin)
    let (_d, bin) = binary_copy(Some(65534));
    for args in [
        vec!["install", "--root", r],
        vec!["install", "--hooks", "--root", r],
    ] {
        let out = run(&bin, &args);
        one_error_line(&out);
        assert!(out.stderr.contains("owned by uid 65534"), "{}", out.stderr);
        // the advice names the binary that was refused (a build is in target/<triple>/release)
        assert!(
            out.stderr.contains(&format!(
                "sudo install -m 755 {} /usr/local/bin/",
                bin.display()
            )),
            "{}",
            out.stderr
        );
        assert_eq!(walk(root.path()), before);
    }

    // the binary itself the user's, or its directory writable by a group
    let (d, bin) = binary_copy(None);
    std::os::unix::fs::chown(&bin, Some(65534), None).unwrap();
    let out = run(&bin, &["install", "--hooks", "--root", r]);
    one_error_line(&out);
    assert_eq!(walk(root.path()), before);
    std::os::unix::fs::chown(&bin, Some(0), None).unwrap();
    std::os::unix::fs::chown(d.path(), None, Some(65534)).unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o775)).unwrap();
    let out = run(&bin, &["install", "--hooks", "--root", r]);
    one_error_line(&out);
    assert!(
        out.stderr.contains("writable by users other than root"),
        "{}",
        out.stderr
    );
    assert_eq!(walk(root.path()), before);

    // where only root can change it: installed
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run(&bin, &["install", "--hooks", "--root", r]).ok();
    assert!(out.stdout.contains("installed: "), "{}", out.stdout);
    assert!(
        root.path()
            .join("etc/systemd/system/dockroute.service")
            .exists()
    );
}

#[test]
fn install_root_writes_exactly_its_files_and_uninstall_removes_exactly_them() {
    if !privileged() {
        return;
    }
    let (_d, bin) = binary_copy(None);
    let b = bin.to_str().unwrap();
    let root = private_root(&["etc/NetworkManager/dispatcher.d", "etc/vpnc/post-connect.d"]);
    let r = root.path().to_str().unwrap();
    // somebody else's file beside ours stays
    std::fs::write(
        root.path().join("etc/NetworkManager/dispatcher.d/50-other"),
        "x\n",
    )
    .unwrap();
    let before = walk(root.path());

    // --print writes nothing, so --root with it is refused (and nothing is written)
    one_error_line(&run(&bin, &["install", "--print", "--hooks", "--root", r]));
    assert_eq!(walk(root.path()), before);

    let out = run(&bin, &["install", "--hooks", "--root", r]).ok();
    assert!(
        out.stdout
            .contains("systemctl enable --now dockroute.service"),
        "{}",
        out.stdout
    );
    let after = walk(root.path());
    // mode, owner and type of each new entry
    let added: BTreeMap<String, String> = after
        .iter()
        .filter(|(k, _)| !before.contains_key(*k))
        .map(|(k, v)| {
            (
                k.clone(),
                v.split(' ').take(3).collect::<Vec<_>>().join(" "),
            )
        })
        .collect();
    let expected: BTreeMap<String, String> = [
        ("etc/systemd", "0755 0:0 dir"),
        ("etc/systemd/system", "0755 0:0 dir"),
        ("etc/systemd/system/dockroute.service", "0644 0:0 file"),
        (
            "etc/NetworkManager/dispatcher.d/90-dockroute",
            "0755 0:0 file",
        ),
        ("etc/vpnc/post-connect.d/dockroute", "0644 0:0 file"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .into();
    assert_eq!(added, expected);
    for (k, v) in &before {
        assert_eq!(after.get(k), Some(v), "{k} changed");
    }
    let unit =
        std::fs::read_to_string(root.path().join("etc/systemd/system/dockroute.service")).unwrap();
    assert!(unit.contains(&format!("\nExecStart={b} watch\n")), "{unit}");
    let hook = std::fs::read_to_string(
        root.path()
            .join("etc/NetworkManager/dispatcher.d/90-dockroute"),
    )
    .unwrap();
    assert!(hook.contains(&format!("'{b}' up")));

    // again: unchanged, nothing rewritten
    let again = run(&bin, &["install", "--hooks", "--root", r]).ok();
    assert_eq!(
        again.stdout.matches("unchanged: ").count(),
        3,
        "{}",
        again.stdout
    );
    assert_eq!(walk(root.path()), after);

    // the launchd job, root:wheel 0644
    run(&bin, &["install", "--init", "launchd", "--root", r]).ok();
    let plist = root
        .path()
        .join("Library/LaunchDaemons/io.github.dockroute.plist");
    let m = std::fs::metadata(&plist).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o644, 0, 0));

    let gone = run(&bin, &["uninstall", "--root", r]).ok();
    assert_eq!(
        gone.stdout.matches("removed: ").count(),
        4,
        "{}",
        gone.stdout
    );
    let left = walk(root.path());
    let mut expected_left = before.clone();
    for d in [
        "etc/systemd",
        "etc/systemd/system",
        "Library",
        "Library/LaunchDaemons",
    ] {
        expected_left.insert(d.into(), left[d].clone());
    }
    assert_eq!(left, expected_left);
}

#[test]
fn install_root_does_not_write_through_symlinked_directories() {
    if !privileged() {
        return;
    }
    let (_d, bin) = binary_copy(None);
    // the hooks' directory, and the job's directory, each a symlink to another directory
    for (link, dirs) in [
        (
            "etc/NetworkManager/dispatcher.d",
            vec!["etc/NetworkManager", "elsewhere"],
        ),
        ("etc/systemd", vec!["etc", "elsewhere"]),
    ] {
        let root = private_root(&dirs);
        std::os::unix::fs::symlink(root.path().join("elsewhere"), root.path().join(link)).unwrap();
        let before = walk(root.path());
        let out = run(
            &bin,
            &[
                "install",
                "--hooks",
                "--root",
                root.path().to_str().unwrap(),
            ],
        );
        one_error_line(&out);
        assert!(out.stderr.contains("is a symbolic link"), "{}", out.stderr);
        assert_eq!(walk(root.path()), before);
        // uninstall leaves a dockroute file reached through it alone too
        std::fs::create_dir_all(root.path().join("elsewhere/system")).unwrap();
        std::fs::write(
            root.path().join("elsewhere/system/dockroute.service"),
            "# dockroute: x\n",
        )
        .unwrap();
        std::fs::write(
            root.path().join("elsewhere/90-dockroute"),
            "# dockroute: x\n",
        )
        .unwrap();
        let before = walk(root.path());
        run(
            &bin,
            &["uninstall", "--root", root.path().to_str().unwrap()],
        )
        .ok();
        assert_eq!(walk(root.path()), before);
    }

    // as root, an install root a user can change is refused
    let root = private_root(&["etc"]);
    std::os::unix::fs::chown(root.path().join("etc"), Some(65534), None).unwrap();
    let before = walk(root.path());
    let out = run(&bin, &["install", "--root", root.path().to_str().unwrap()]);
    one_error_line(&out);
    assert!(out.stderr.contains("owned by uid 65534"), "{}", out.stderr);
    assert_eq!(walk(root.path()), before);
}

#[test]
fn the_printed_unit_passes_systemd_analyze_verify() {
    if !privileged() {
        return;
    }
    let (d, bin) = binary_copy(None);
    let out = run(&bin, &["install", "--print"]).ok();
    assert!(
        out.stdout
            .contains(&format!("ExecStart={} watch", bin.display()))
    );
    let unit = d.path().join("dockroute.service");
    std::fs::write(&unit, &out.stdout).unwrap();
    let v = Command::new(ANALYZE)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    assert!(v.status.success(), "{said}");
    // warnings (unknown keys, bad values) do not fail verify: none may be about our unit
    assert!(!said.contains("dockroute.service"), "{said}");

    // and it fails when the binary is not there
    std::fs::remove_file(&bin).unwrap();
    let v = Command::new(ANALYZE)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    assert!(!v.status.success());
}

#[test]
fn the_printed_plist_parses_back_with_every_key() {
    if !privileged() {
        return;
    }
    let (_d, bin) = binary_copy(None);
    let out = run(&bin, &["install", "--print", "--init", "launchd"]).ok();
    let v = plist::Value::from_reader_xml(out.stdout.as_bytes()).unwrap();
    let job = v.as_dictionary().unwrap();
    assert_eq!(job["Label"].as_string(), Some("io.github.dockroute"));
    let args: Vec<&str> = job["ProgramArguments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_string().unwrap())
        .collect();
    assert_eq!(args, [bin.to_str().unwrap(), "watch"]);
    assert!(Path::new(args[0]).is_file());
    assert_eq!(job["RunAtLoad"].as_boolean(), Some(true));
    assert_eq!(job["KeepAlive"].as_boolean(), Some(true));
    assert_eq!(
        job["StandardOutPath"].as_string(),
        Some("/var/log/dockroute.log")
    );
    assert_eq!(
        job["StandardErrorPath"].as_string(),
        Some("/var/log/dockroute.log")
    );
}

/// `install` and `uninstall` at / as a user runs them, in a private mount namespace of the lab's
/// host where /etc is a private copy: uninstall runs `down` and removes the job and the hooks.
#[test]
fn uninstall_runs_down_and_removes_the_job_and_the_hooks() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    std::fs::write(lab.config(), format!("vm_ip = \"{VM_IP}\"\n")).unwrap();
    up(&lab);
    assert!(lab.reaches_container());
    let (_d, bin) = binary_copy(None);
    let etc = private_root(&[]);
    let copy = Command::new("cp")
        .args(["-a", "/etc/."])
        .arg(etc.path())
        .status()
        .unwrap();
    assert!(copy.success());
    std::fs::create_dir_all(etc.path().join("NetworkManager/dispatcher.d")).unwrap();
    let in_private_etc = |args: &[&str]| -> Run {
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.host(),
                "unshare",
                "-m",
                "--propagation",
                "private",
            ])
            .args(["sh", "-c", "mount --bind \"$0\" /etc && exec \"$@\""])
            .arg(etc.path())
            .arg(&bin)
            .arg("--config")
            .arg(lab.config())
            .args(args)
            .env("DOCKROUTE_STATE_DIR", lab.state_dir())
            .env_remove("SUDO_USER")
            .env(
                "DBUS_SYSTEM_BUS_ADDRESS",
                "unix:path=/nonexistent/dockroute-test-bus",
            )
            .output()
            .unwrap();
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    };
    let out = in_private_etc(&["install", "--hooks"]).ok();
    assert!(
        out.stdout.contains("systemctl enable --now"),
        "{}",
        out.stdout
    );
    let unit = etc.path().join("systemd/system/dockroute.service");
    let hook = etc.path().join("NetworkManager/dispatcher.d/90-dockroute");
    assert!(unit.exists() && hook.exists());

    let out = in_private_etc(&["uninstall"]).ok();
    assert!(
        out.stdout
            .contains("removed: /etc/systemd/system/dockroute.service"),
        "{}",
        out.stdout
    );
    assert!(!unit.exists() && !hook.exists());
    assert_eq!(lab.tagged(), 0, "uninstall did not run down");
    assert!(!lab.reaches_container());
}

/// `--root` must name an existing directory (a relative one is taken from the working
/// directory); `--print` writes nothing, so `--root` with it is refused rather than ignored.
#[test]
fn install_root_must_exist_and_print_refuses_a_root() {
    if !privileged() {
        return;
    }
    let (_d, bin) = binary_copy(None);
    let work = private_root(&["r"]);
    let before = walk(work.path());
    let in_work = |args: &[&str]| -> Run {
        Run::from(
            Command::new(&bin)
                .args(args)
                .current_dir(work.path())
                .output()
                .unwrap(),
        )
    };
    for missing in ["missing", "missing/deeper"] {
        for verb in ["install", "uninstall"] {
            let out = in_work(&[verb, "--root", missing]);
            one_error_line(&out);
            assert!(
                out.stderr.contains("no such directory")
                    && out.stderr.contains("the install root must exist")
                    && out
                        .stderr
                        .contains(&format!("mkdir -p {}", work.path().join(missing).display())),
                "{}",
                out.stderr
            );
        }
    }
    let out = in_work(&["install", "--root", "/nonexistent/dockroute-root"]);
    one_error_line(&out);
    assert!(out.stderr.contains("must exist"), "{}", out.stderr);
    let out = in_work(&["install", "--print", "--root", "r"]);
    one_error_line(&out);
    assert!(out.stdout.is_empty());
    assert!(out.stderr.contains("--root has no use"), "{}", out.stderr);
    assert_eq!(walk(work.path()), before);

    // a relative root that exists is the one below the working directory
    in_work(&["install", "--root", "r"]).ok();
    assert!(
        work.path()
            .join("r/etc/systemd/system/dockroute.service")
            .is_file()
    );
    in_work(&["uninstall", "--root", "r"]).ok();
    assert!(
        !work
            .path()
            .join("r/etc/systemd/system/dockroute.service")
            .exists()
    );
}

/// `install --print` of a binary `install` would refuse warns on stderr and in each printed
/// file, so neither `-q` nor a redirection hides it; the plist stays a plist.
#[test]
fn install_print_of_an_untrusted_binary_says_so_in_what_it_prints() {
    if !privileged() {
        return;
    }
    let (_d, bin) = binary_copy(Some(65534));
    let out = run(&bin, &["install", "--print", "--hooks"]).ok();
    assert!(out.stderr.contains("not safe to install"), "{}", out.stderr);
    let quiet = run(&bin, &["-q", "install", "--print", "--hooks"]).ok();
    assert_eq!(
        quiet
            .stdout
            .matches("# WARNING: not safe to install")
            .count(),
        4,
        "{}",
        quiet.stdout
    );
    assert!(
        quiet.stdout.contains("owned by uid 65534"),
        "{}",
        quiet.stdout
    );
    let unit = quiet.stdout.split("# ==> ").next().unwrap();
    assert!(unit.starts_with("# dockroute: "), "{unit}");
    let plist = run(&bin, &["-q", "install", "--print", "--init", "launchd"]).ok();
    assert!(plist.stdout.contains("<!-- WARNING: not safe to install"));
    plist::Value::from_reader_xml(plist.stdout.as_bytes()).unwrap();

    // a binary only root can change: no warning
    let (_d, bin) = binary_copy(None);
    let out = run(&bin, &["install", "--print", "--hooks"]).ok();
    assert!(!out.stdout.contains("WARNING") && !out.stderr.contains("not safe"));
}

/// `uninstall --root` with somebody else's file at a hook's place: left alone, with uninstall's
/// own words (not install's "remove it first"); the other OS's job is not listed when absent.
#[test]
fn uninstall_root_leaves_a_foreign_hook_in_its_own_words() {
    if !privileged() {
        return;
    }
    let (_d, bin) = binary_copy(None);
    let root = private_root(&["etc/NetworkManager/dispatcher.d"]);
    let hook = root
        .path()
        .join("etc/NetworkManager/dispatcher.d/90-dockroute");
    std::fs::write(&hook, "#!/bin/sh\nexit 0\n").unwrap();
    let before = walk(root.path());
    let out = run(
        &bin,
        &["uninstall", "--root", root.path().to_str().unwrap()],
    )
    .ok();
    assert!(
        out.stdout
            .contains(&format!("left alone (not dockroute's): {}", hook.display())),
        "{}",
        out.stdout
    );
    assert!(!out.stderr.contains("remove it first"), "{}", out.stderr);
    assert!(
        out.stderr.contains("uninstall leaves it in place"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("plist"), "{}", out.stdout);
    assert!(
        out.stdout.contains("absent: ") && out.stdout.contains("dockroute.service"),
        "{}",
        out.stdout
    );
    assert_eq!(walk(root.path()), before);
}
