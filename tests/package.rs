//! The Debian package's maintainer scripts (scripts/deb/, shipped by scripts/deb.sh), run as dpkg
//! runs them on `apt remove` and `apt purge`, against a lab where `up` ran and the boot job
//! (`dockroute watch`) is enabled and running. They run in a private mount namespace of the lab's
//! host: /usr/bin, /etc and /var/lib are overlays whose changes stay in a tmpfs, /usr/bin holds the
//! binary as /usr/bin/dockroute and a stub `systemctl` that records its calls and stops the job
//! when told to, and /run is a tmpfs where /run/systemd/system exists (systemd "is running").
//! Nothing of the machine's changes.
#![cfg(target_os = "linux")]

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/deb");

/// The stub: `is-enabled`/`is-active` answer from flag files in STATE; `disable --now` and
/// `stop` kill the job (its pid is in STATE/pid) and wait until it has exited, as systemctl does.
const STUB: &str = r#"S=@STATE@
echo "$*" >>"$S/calls"
stop() {
    rm -f "$S/active"
    pid=$(cat "$S/pid")
    kill "$pid" 2>/dev/null || true
    while [ -r "/proc/$pid/stat" ] && [ "$(cut -d' ' -f3 "/proc/$pid/stat")" != Z ]; do
        sleep 0.05
    done
}
case "$1" in
is-enabled) if [ -e "$S/enabled" ]; then echo enabled; else echo disabled; exit 1; fi ;;
is-active) if [ -e "$S/active" ]; then echo active; else echo inactive; exit 3; fi ;;
disable)
    rm -f "$S/enabled"
    if [ "$2" = --now ]; then stop; fi
    ;;
stop) stop ;;
esac
exit 0
"#;

/// The job's process, killed if the test ends before the stub stopped it.
struct Job(std::process::Child);

impl Drop for Job {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            self.0.kill().ok();
            self.0.wait().ok();
        }
    }
}

/// What `up` changes in the lab: routes and rules, the firewall, the DNS file.
fn lab_state(lab: &Lab) -> String {
    format!(
        "{}\n--- nft ---\n{}\n--- resolv.conf ---\n{}",
        lab.snapshot(),
        fw(lab, "nft", "list ruleset"),
        std::fs::read_to_string("/etc/resolv.conf").unwrap()
    )
}

/// A maintainer script as dpkg runs it: by path, with its argument and dpkg's variables.
fn maintainer_script(name: &str, arg: &str) -> Run {
    Run::from(
        Command::new(Path::new(SCRIPTS).join(name))
            .arg(arg)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("DPKG_MAINTSCRIPT_PACKAGE", "dockroute")
            .env("DPKG_MAINTSCRIPT_NAME", name)
            .stdin(Stdio::null())
            .output()
            .unwrap(),
    )
}

#[test]
fn apt_remove_stops_and_disables_the_job_and_undoes_up_and_purge_removes_the_state() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    let stub_state = tempfile::tempdir().unwrap();
    let s = stub_state.path().to_path_buf();
    let netns = format!("/run/netns/{}", lab.host());
    let resolv = std::fs::read_to_string(lab.resolv_conf()).unwrap();
    let lab = &lab;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let ns = std::fs::File::open(&netns).unwrap();
                private_run();
                for dir in ["usr/bin", "etc", "var/lib"] {
                    let top = format!("/run/.overlay/{}", dir.replace('/', "-"));
                    for d in ["upper", "work"] {
                        std::fs::create_dir_all(format!("{top}/{d}")).unwrap();
                    }
                    std::fs::set_permissions(
                        format!("{top}/upper"),
                        std::fs::Permissions::from_mode(0o755),
                    )
                    .unwrap();
                    let opts = format!("lowerdir=/{dir},upperdir={top}/upper,workdir={top}/work");
                    mount(&["-t", "overlay", "overlay", "-o", &opts, &format!("/{dir}")]);
                }
                std::fs::create_dir_all("/run/systemd/system").unwrap();
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();

                // the package's files, the lab's DNS file and settings
                copy_exe(Path::new(BIN), Path::new("/usr/bin/dockroute"), 0o755);
                let stub = STUB.replace("@STATE@", s.to_str().unwrap());
                write_script(Path::new("/usr/bin/systemctl"), &stub, 0o755);
                std::fs::remove_file("/etc/resolv.conf").ok();
                std::fs::write("/etc/resolv.conf", &resolv).unwrap();
                std::fs::create_dir_all("/etc/dockroute").unwrap();
                std::fs::write(
                    "/etc/dockroute/config.toml",
                    format!("vm_ip = \"{VM_IP}\"\n"),
                )
                .unwrap();
                let before = lab_state(lab);

                // `systemctl enable --now dockroute`: up, then the job's watch keeps it
                let up = Command::new("/usr/bin/dockroute")
                    .arg("up")
                    .env_clear()
                    .output()
                    .unwrap();
                assert!(
                    up.status.success(),
                    "{}",
                    String::from_utf8_lossy(&up.stderr)
                );
                assert!(lab.reaches_container());
                let during = lab_state(lab);
                assert_ne!(during, before);
                let mut watch = Job(Command::new("/usr/bin/dockroute")
                    .arg("watch")
                    .env_clear()
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap());
                std::fs::write(s.join("pid"), watch.0.id().to_string()).unwrap();
                std::fs::write(s.join("enabled"), "").unwrap();
                std::fs::write(s.join("active"), "").unwrap();

                // apt remove: prerm remove, the files go, postrm remove
                let prerm = maintainer_script("prerm", "remove");
                assert_eq!(prerm.code, 0, "{}{}", prerm.stdout, prerm.stderr);
                std::fs::remove_file("/usr/bin/dockroute").unwrap();
                let postrm = maintainer_script("postrm", "remove");
                assert_eq!(postrm.code, 0, "{}{}", postrm.stdout, postrm.stderr);

                let calls = std::fs::read_to_string(s.join("calls")).unwrap();
                assert!(
                    calls
                        .lines()
                        .any(|l| l == "disable --now dockroute.service"),
                    "the job was not stopped and disabled: {calls}"
                );
                assert!(!s.join("enabled").exists() && !s.join("active").exists());
                assert!(
                    watch.0.try_wait().unwrap().is_some(),
                    "the job's watch still runs after prerm: {calls}"
                );
                assert_eq!(lab_state(lab), before, "prerm did not undo up");
                assert!(!lab.reaches_container());
                assert!(
                    Path::new("/var/lib/dockroute").exists(),
                    "remove keeps the state directory (only purge removes it)"
                );

                // apt purge: postrm purge
                let purge = maintainer_script("postrm", "purge");
                assert_eq!(purge.code, 0, "{}{}", purge.stdout, purge.stderr);
                assert!(!Path::new("/var/lib/dockroute").exists());
                assert!(Path::new("/etc/dockroute/config.toml").exists());
                assert_eq!(lab_state(lab), before);

                // an upgrade stops nothing; an unknown argument fails as dpkg expects
                let upgrade = maintainer_script("prerm", "upgrade");
                assert_eq!(upgrade.code, 0);
                assert_ne!(maintainer_script("postrm", "bogus").code, 0);
            })
            .join()
            .unwrap()
    });
}
