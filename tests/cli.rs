//! The command-line conventions (issue 11, points 5, 7, 8): output to a closed pipe or a full
//! disk is an ordinary error with a documented exit status, usage errors keep clap's help,
//! `--json` errors are JSON, completions, the man page, `--version`, `-v`/`-q`.
//!
//! Commands that touch no system state run directly; `up` and `status` run in a namespace lab.

#![cfg(target_os = "linux")]

mod common;

use common::{BIN, Lab, VM_IP};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};

/// The exit statuses `dockroute --help` documents.
const USAGE: i32 = 2;
const OUTPUT_LOST: i32 = 4;

/// A stdout that fails every write with EPIPE: a pipe whose read end is already closed (what
/// `dockroute ... | true` becomes once `true` has exited).
fn closed_pipe() -> Stdio {
    let (read, write) = nix::unistd::pipe().expect("pipe");
    drop(read);
    Stdio::from(write)
}

/// A stdout that fails every write with ENOSPC.
fn dev_full() -> Stdio {
    Stdio::from(
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full"),
    )
}

fn run(mut c: Command) -> (i32, String, String) {
    let o: Output = c.output().expect("running dockroute");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn dockroute(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("DOCKROUTE_LOG")
        .env_remove("DOCKROUTE_CONFIG")
        .env("DOCKROUTE_STATE_DIR", "/nonexistent-dockroute-test-state")
        .stdin(Stdio::null());
    c
}

/// stderr is exactly one `error:` line saying the output was lost, and no panic.
fn assert_output_lost(code: i32, stderr: &str, what: &str) {
    assert_eq!(code, OUTPUT_LOST, "{what}: stderr={stderr}");
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{what}: {stderr}");
    assert!(
        errors[0].contains("could not write the output to stdout"),
        "{what}: {stderr}"
    );
}

#[test]
fn a_closed_or_full_stdout_is_an_error_not_a_panic() {
    for args in [
        &["install", "--print", "--init", "systemd"][..],
        &["--json", "install", "--print", "--init", "launchd"],
        &["completions", "bash"],
        &["manpage"],
        &["--help"],
    ] {
        for (name, out) in [
            ("closed pipe", closed_pipe as fn() -> Stdio),
            ("/dev/full", dev_full),
        ] {
            let mut c = dockroute(args);
            c.stdout(out());
            let (code, _, stderr) = run(c);
            assert_output_lost(code, &stderr, &format!("{args:?} > {name}"));
        }
    }
}

#[test]
fn usage_errors_keep_clap_help_and_exit_2() {
    for (args, wanted) in [
        (
            &["up", "--dns", "bogus"][..],
            "[possible values: auto, resolved, resolv-conf, resolver-dir, off]",
        ),
        (
            &["up", "--vmip", "1.2.3.4"],
            "a similar argument exists: '--vm-ip'",
        ),
        (&["stats"], "a similar subcommand exists: 'status'"),
        (&["up", "--wait", "-1"], "expected 0 to 3600 seconds"),
        (&[], "missing command: one of up, down, watch, status"),
    ] {
        let (code, stdout, stderr) = run(dockroute(args));
        assert_eq!(code, USAGE, "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains(wanted),
            "{args:?}: wanted {wanted:?} in {stderr}"
        );
        assert!(!stderr.contains("Usage:"), "{args:?}: {stderr}");
    }
}

#[test]
fn with_json_errors_are_json_on_stdout() {
    // a usage error, found before --json itself is parsed
    let (code, stdout, stderr) = run(dockroute(&["up", "--dns", "bogus", "--json"]));
    assert_eq!(code, USAGE, "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON error");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("invalid value 'bogus'"),
        "{v}"
    );
    assert!(v["help"].to_string().contains("possible values"), "{v}");
    // `--` ends the options: a `--json` after it is not the flag
    let (code, stdout, _) = run(dockroute(&["up", "--", "--json"]));
    assert_eq!(code, USAGE);
    assert!(stdout.is_empty(), "{stdout}");

    // a failure after parsing: a config file with a wrong type, refused before anything runs
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "wait = \"30\"\n").unwrap();
    let (code, stdout, stderr) = run(dockroute(&[
        "--json",
        "--config",
        config.to_str().unwrap(),
        "up",
        "--dry-run",
    ]));
    assert_eq!(code, 1, "{stdout} {stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON error");
    assert!(
        v["error"].as_str().unwrap().contains("config.toml line 1"),
        "{v}"
    );
    assert!(!stderr.contains("error:"), "{stderr}");
}

#[test]
fn help_shows_defaults_root_and_examples() {
    for cmd in [
        "up",
        "down",
        "watch",
        "status",
        "install",
        "uninstall",
        "completions",
        "manpage",
    ] {
        let (code, stdout, _) = run(dockroute(&[cmd, "--help"]));
        assert_eq!(code, 0);
        assert!(stdout.contains("Examples:"), "{cmd}: {stdout}");
        assert!(stdout.contains("root"), "{cmd}: {stdout}");
    }
    let (_, up, _) = run(dockroute(&["up", "--help"]));
    for d in [
        "[default: 172.17.0.0/16]",
        "[default: docker]",
        "[default: auto]",
        "[default: /etc/resolver]",
        "[default: /etc/dockroute/config.toml]",
    ] {
        assert!(up.contains(d), "{d}: {up}");
    }
    let (_, top, _) = run(dockroute(&["--help"]));
    assert!(top.contains("Exit status:\n  0  done\n"), "{top}");
}

/// Issue 16, point 10: `--help` names every command that needs root (watch too), keeps each
/// exit status's sentence whole, and shows a command's own options before the global ones.
#[test]
fn help_lists_root_commands_exit_statuses_and_own_options_first() {
    let (_, top, _) = run(dockroute(&["--help"]));
    let root = top.split("Needs root:").nth(1).unwrap_or_default();
    let root = root.split(" do not.").next().unwrap_or_default();
    assert!(root.contains("watch"), "{top}");
    let exit = top.split("Exit status:").nth(1).unwrap_or_default();
    let exit = exit.split("\n\n").next().unwrap_or_default();
    for status in 0..=4 {
        assert!(exit.contains(&format!("\n  {status}  ")), "{exit}");
    }
    // no line ends half-way through a sentence with a lone word
    assert!(!exit.lines().any(|l| l.trim() == "With"), "{exit}");
    for cmd in ["up", "down", "status", "watch"] {
        let (_, help, _) = run(dockroute(&[cmd, "--help"]));
        let own = help.find("\nOptions:\n").unwrap();
        let global = help.find("\nGlobal options:\n").unwrap();
        assert!(own < global, "{cmd}: {help}");
        let own_part = &help[own..global];
        for g in [
            "--config",
            "--state-dir",
            "--json",
            "--verbose",
            "--quiet",
            "--lock-timeout",
        ] {
            assert!(
                !own_part.contains(g),
                "{cmd}: {g} among its own options: {help}"
            );
        }
    }
}

/// Issue 16, point 10: `completions` and `manpage` refuse global options (usage error, exit 2),
/// and `completions` without a shell says which argument is missing in one line.
#[test]
fn completions_and_manpage_refuse_global_options_and_name_what_is_missing() {
    for args in [
        &["completions", "--json", "bash"][..],
        &["--state-dir", "/tmp/x", "completions", "bash"],
        &["manpage", "--config", "/tmp/c"],
        &["-q", "manpage"],
        &["manpage", "-v"],
        &["completions", "zsh", "--lock-timeout", "3"],
    ] {
        let (code, stdout, stderr) = run(dockroute(args));
        assert_eq!(code, USAGE, "{args:?}: {stdout}{stderr}");
        assert!(
            stderr.contains("does not apply to") || stdout.contains("does not apply to"),
            "{args:?}: {stdout}{stderr}"
        );
    }
    // the environment's settings are set for every command: fine here (DOCKROUTE_STATE_DIR is)
    let mut with_env = dockroute(&["completions", "bash"]);
    with_env.env("DOCKROUTE_CONFIG", "/nonexistent-dockroute-test-config");
    assert_eq!(run(with_env).0, 0);
    let (code, _, stderr) = run(dockroute(&["completions"]));
    assert_eq!(code, USAGE);
    assert_eq!(
        stderr.trim_end(),
        "error: the following required arguments were not provided: <SHELL>"
    );
}

#[test]
fn completions_name_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, stdout, stderr) = run(dockroute(&["completions", shell]));
        assert_eq!(code, 0, "{stderr}");
        for sub in [
            "up",
            "down",
            "status",
            "install",
            "uninstall",
            "completions",
            "manpage",
        ] {
            assert!(
                stdout.contains(&format!("dockroute__subcmd__{sub}"))
                    || stdout.contains(&format!("'{sub}:"))
                    || stdout.contains(&format!("-a \"{sub}\"")),
                "{shell} lacks {sub}"
            );
        }
        assert!(stdout.contains("vm-ip"), "{shell}");
    }
    // the bash script is valid bash
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("dockroute.bash");
    std::fs::write(&f, run(dockroute(&["completions", "bash"])).1).unwrap();
    let ok = Command::new("bash").arg("-n").arg(&f).status().unwrap();
    assert!(ok.success());
    let (code, _, _) = run(dockroute(&["completions", "tcsh"]));
    assert_eq!(code, USAGE);
}

#[test]
fn the_man_page_renders() {
    let (code, page, stderr) = run(dockroute(&["manpage"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(page.starts_with(".ie") || page.starts_with(".TH"), "{page}");
    assert!(page.contains(".TH dockroute 8"), "{page}");
    for s in [
        ".SH \"DOCKROUTE UP\"",
        "\\-\\-vm\\-ip",
        ".SH \"NOTES AND EXAMPLES\"",
    ] {
        assert!(page.contains(s), "{s}");
    }
    // man-db renders it without a warning, when it is installed
    if Command::new("man").arg("--version").output().is_ok() {
        let mut c = Command::new("man");
        c.args(["-P", "cat", "-l", "-"])
            .env("MANWIDTH", "100")
            .env("LC_ALL", "C.UTF-8")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(page.as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(
            o.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        for s in [
            "DOCKROUTE UP",
            "--vm-ip",
            "NOTES AND EXAMPLES",
            "Exit status",
        ] {
            assert!(text.contains(s), "{s}: {text}");
        }
    }
}

#[test]
fn version_names_the_commit_in_a_git_checkout() {
    let (code, stdout, _) = run(dockroute(&["--version"]));
    assert_eq!(code, 0);
    assert!(
        stdout.starts_with(&format!("dockroute {}", env!("CARGO_PKG_VERSION"))),
        "{stdout}"
    );
    let head = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short=12",
            "HEAD",
        ])
        .output();
    match head {
        Ok(o) if o.status.success() => {
            let hash = String::from_utf8_lossy(&o.stdout).trim().to_string();
            assert!(
                stdout.contains(&format!("(commit {hash})")),
                "{stdout} lacks {hash}"
            );
        }
        _ => assert!(!stdout.contains("commit"), "{stdout}"),
    }
}

#[test]
fn quiet_silences_warnings_and_wins_over_dockroute_log() {
    // A copy of the binary in a directory anyone can write: install --print warns about it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let bin = dir.path().join("dockroute");
    std::fs::copy(BIN, &bin).unwrap();
    let print = |pre: &[&str], log: Option<&str>| {
        let mut c = Command::new(&bin);
        c.args(pre).args(["install", "--print"]);
        match log {
            Some(l) => c.env("DOCKROUTE_LOG", l),
            None => c.env_remove("DOCKROUTE_LOG"),
        };
        run(c)
    };
    let (code, _, stderr) = print(&[], None);
    assert_eq!(code, 0);
    assert!(stderr.contains("WARN"), "{stderr}");
    let (code, _, stderr) = print(&["-q"], Some("debug"));
    assert_eq!(code, 0);
    assert!(stderr.is_empty(), "{stderr}");
    let (_, _, stderr) = print(&[], Some("error"));
    assert!(stderr.is_empty(), "{stderr}");
    let (code, _, stderr) = print(&["-q", "-v"], None);
    assert_eq!(code, USAGE, "{stderr}");
}

/// In a lab: `up` whose stdout is closed has applied and recorded its changes, says so on
/// stderr, exits 4; `status` to /dev/full exits 4; -v shows each change, -q nothing.
#[test]
fn up_and_status_with_a_lost_stdout_in_a_lab() {
    if !common::privileged() {
        return;
    }
    let lab = Lab::new();
    let mut c = lab.command(&["-q", "up", "--vm-ip", VM_IP]);
    c.stdout(closed_pipe());
    let (code, _, stderr) = run(c);
    assert_output_lost(code, &stderr, "up | true");
    assert!(
        stderr.contains("its changes are applied and recorded"),
        "{stderr}"
    );
    assert!(lab.reaches_container(), "up did not apply its changes");
    let st = lab.dockroute(&["--json", "status"]).ok().json();
    assert!(
        st["probes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["ok"] == true),
        "{st}"
    );
    assert!(
        st.to_string().contains(VM_IP),
        "the record does not name the VM: {st}"
    );

    for args in [&["status"][..], &["--json", "status"]] {
        let mut c = lab.command(args);
        c.stdout(dev_full());
        let (code, _, stderr) = run(c);
        assert_output_lost(code, &stderr, &format!("{args:?} > /dev/full"));
        let mut c = lab.command(args);
        c.stdout(closed_pipe());
        let (code, _, stderr) = run(c);
        assert_output_lost(code, &stderr, &format!("{args:?} | true"));
    }

    // an up with nothing to do says that instead
    let mut c = lab.command(&["up", "--vm-ip", VM_IP]);
    c.stdout(dev_full());
    let (code, _, stderr) = run(c);
    assert_output_lost(code, &stderr, "second up > /dev/full");
    assert!(stderr.contains("up is complete"), "{stderr}");

    // -v logs each change at info level; -q (above) logged nothing
    let down = lab.dockroute(&["-v", "down"]).ok();
    assert!(down.stderr.contains("INFO"), "{}", down.stderr);
    let up = lab.dockroute(&["-q", "up", "--vm-ip", VM_IP]).ok();
    assert!(up.stderr.is_empty(), "{}", up.stderr);
}
