//! The namespace lab for integration tests: scripts/lab.sh builds it, `Drop` removes it (also
//! when a test panics). Commands run inside the lab's host namespace only.

#![allow(dead_code)] // each test binary uses a different part

pub mod docker_lab;
pub mod relay;
pub mod served;
pub mod watch;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_dockroute");
pub const LAB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/lab.sh");
pub const RESOLVED_LAB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/resolved-lab.sh");
pub const RESOLVECTL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/target/test-deps/systemd-resolved/usr/bin/resolvectl"
);
pub const VM_IP: &str = "192.168.99.100";
pub const CONTAINER: &str = "172.17.0.2:6379";

/// Privileged tests run as root. Outside CI a non-root run may skip them only when asked to with
/// DOCKROUTE_SKIP_PRIVILEGED=1; in CI (CI=true) they never skip.
pub fn privileged() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let skip = std::env::var("DOCKROUTE_SKIP_PRIVILEGED").is_ok_and(|v| v == "1");
    if skip && !ci {
        eprintln!("SKIPPED (not root, DOCKROUTE_SKIP_PRIVILEGED=1)");
        return false;
    }
    panic!(
        "this test needs root (network namespaces); set DOCKROUTE_SKIP_PRIVILEGED=1 to skip outside CI"
    );
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// In a private mount namespace, hide the machine's system bus (see [`Lab::command`]), then run
/// the arguments that follow.
pub const HIDE_BUS: &[&str] = &[
    "--mount",
    "--propagation",
    "private",
    "sh",
    "-c",
    "if [ -d /run/dbus ]; then mount -t tmpfs -o mode=755 tmpfs /run/dbus; fi; exec \"$@\"",
    "sh",
];

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// What a finished program said and how it ended (-1 if a signal ended it).
    pub fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "failed: stdout={} stderr={}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

pub struct Lab {
    pub prefix: String,
    pub dir: tempfile::TempDir,
}

impl Lab {
    pub fn new() -> Lab {
        Lab::created_by("create", &[])
    }

    /// The lab `scripts/lab.sh COMMAND PREFIX ARGS` builds (removed by `destroy` on drop).
    pub fn created_by(command: &str, args: &[&str]) -> Lab {
        let prefix = format!(
            "drt{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.path().join("config.toml"), "").unwrap();
        let lab = Lab { prefix, dir };
        let out = Command::new(LAB)
            .args([command, &lab.prefix])
            .args(args)
            .output()
            .expect("running scripts/lab.sh");
        assert!(
            out.status.success(),
            "lab.sh {command} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Every dockroute run sees this file as /etc/resolv.conf, never the machine's.
        assert!(
            lab.resolv_conf().is_file(),
            "the lab has no private resolv.conf"
        );
        lab
    }

    /// The host namespace's resolv.conf (bind-mounted over /etc/resolv.conf by `ip netns exec`).
    pub fn resolv_conf(&self) -> PathBuf {
        PathBuf::from(format!("/etc/netns/{}/resolv.conf", self.host()))
    }

    /// `getent hosts NAME` in the host namespace: the addresses the system resolver returns.
    pub fn getent(&self, name: &str) -> Option<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.host(), "getent", "hosts", name])
            .output()
            .expect("running getent");
        out.status.success().then(|| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string()
        })
    }

    pub fn host(&self) -> String {
        format!("{}-host", self.prefix)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// `dockroute ARGS` in the lab's host namespace, with a private config and state dir, in a
    /// private mount namespace where /run/dbus is empty: as root, dockroute talks to the system
    /// bus at its fixed socket (never through DBUS_SYSTEM_BUS_ADDRESS), and it must never reach
    /// the machine's bus (a developer's systemd-resolved).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("unshare");
        c.args(HIDE_BUS)
            .args(["ip", "netns", "exec", &self.host(), BIN]);
        self.isolate(&mut c, args).stdin(Stdio::null());
        c
    }

    /// `--config` and ARGS, the lab's state dir, and none of the caller's environment that
    /// would point dockroute elsewhere; for runs that are not root (which honour it), a bus
    /// address that is never the machine's bus either.
    fn isolate<'c>(&self, c: &'c mut Command, args: &[&str]) -> &'c mut Command {
        c.arg("--config")
            .arg(self.config())
            .args(args)
            .env("DOCKROUTE_STATE_DIR", self.state_dir())
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONFIG")
            // the user's Docker files (contexts, Colima, Lima) only where a test puts them
            .env("HOME", self.dir.path().join("no-home"))
            .env_remove("MACHINE_STORAGE_PATH")
            .env_remove("SUDO_USER")
            .env_remove("DOCKROUTE_TEST_STALL_AFTER")
            .env(
                "DBUS_SYSTEM_BUS_ADDRESS",
                format!("unix:path={}/no-bus", self.dir.path().display()),
            )
    }

    pub fn dockroute(&self, args: &[&str]) -> Run {
        self.dockroute_env(args, &[])
    }

    /// `dockroute ARGS` with extra environment variables.
    pub fn dockroute_env(&self, args: &[&str], env: &[(&str, &dyn AsRef<std::ffi::OsStr>)]) -> Run {
        let mut c = self.command(args);
        for (k, v) in env {
            c.env(k, v);
        }
        Run::from(c.output().expect("running dockroute"))
    }

    /// `dockroute ARGS` as user nobody (through a copy of the binary: the checkout may live
    /// where nobody cannot reach, e.g. under /root).
    pub fn as_nobody(&self, args: &[&str]) -> Run {
        let bin = self.dir.path().join("dockroute");
        if !bin.exists() {
            copy_exe(Path::new(BIN), &bin, 0o755);
        }
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.host(),
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
            ])
            .arg("--clear-groups")
            .arg(&bin)
            .arg("--config")
            .arg(self.config())
            .args(args)
            .env("DOCKROUTE_STATE_DIR", self.state_dir())
            .output()
            .expect("running dockroute as nobody");
        Run::from(out)
    }

    pub fn spawn(&self, args: &[&str], env: &[(&str, &str)]) -> Child {
        let mut c = self.command(args);
        c.envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c.spawn().expect("spawning dockroute")
    }

    /// `ip ARGS` in the host namespace, ARGS split on whitespace (no shell); panics on failure.
    pub fn ip(&self, args: &str) -> String {
        ip_in(&self.host(), args)
    }

    /// Every route in every table and every rule, as `ip` prints them.
    pub fn snapshot(&self) -> String {
        format!(
            "{}\n--- rules ---\n{}",
            self.ip("route show table all"),
            self.ip("rule show")
        )
    }

    /// Routes and rules carrying dockroute's protocol tag (numeric, whether or not the
    /// machine has dockroute's names installed in /etc/iproute2).
    pub fn tagged(&self) -> usize {
        let routes = self.ip("-4 route show table all proto 100");
        let rules = self.ip("-N -4 rule show");
        routes.lines().count() + rules.lines().filter(|l| l.contains("proto 100")).count()
    }

    /// Start a real systemd-resolved for the host namespace (scripts/resolved-lab.sh); commands
    /// run through [`Lab::nsenter`] then see it, its private bus and its stub resolv.conf.
    pub fn start_resolved(&self) -> u32 {
        let out = Command::new(RESOLVED_LAB)
            .args(["start", &self.prefix])
            .output()
            .expect("running resolved-lab.sh");
        assert!(
            out.status.success(),
            "resolved-lab.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("holder pid")
    }

    /// PROGRAM ARGS inside the resolved holder's mount and network namespaces.
    pub fn nsenter(&self, holder: u32, program: &str, args: &[&str]) -> Run {
        let out = Command::new("nsenter")
            .args(["-t", &holder.to_string(), "-m", "-n", program])
            .args(args)
            .env("DOCKROUTE_STATE_DIR", self.state_dir())
            .env_remove("DOCKER_HOST")
            .output()
            .expect("running nsenter");
        Run::from(out)
    }

    /// dockroute inside the resolved holder's namespaces.
    pub fn dockroute_resolved(&self, holder: u32, args: &[&str]) -> Run {
        let config = self.config();
        let mut all = vec!["--config", config.to_str().unwrap()];
        all.extend_from_slice(args);
        self.nsenter(holder, BIN, &all)
    }

    /// A VPN tunnel: a real tun device with no client behind it, so everything sent into it is
    /// lost (dockroute recognises tunnels by their kind, not their name).
    pub fn add_tunnel(&self, name: &str, addr: &str) {
        self.ip(&format!("tuntap add dev {name} mode tun"));
        self.ip(&format!("addr add {addr} dev {name}"));
        self.ip(&format!("link set {name} up"));
    }

    /// Run `f` on a thread inside the host namespace.
    pub fn in_host<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(&self.host(), f)
    }

    /// A real TCP exchange with the container's echo service, from the host namespace.
    pub fn reaches_container(&self) -> bool {
        self.in_host(|| echo(CONTAINER))
    }
}

/// Run `f` on a thread inside the named network namespace.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("namespace thread")
}

/// `ip -n NS ARGS`, ARGS split on whitespace (no shell); panics on failure.
pub fn ip_in(ns: &str, args: &str) -> String {
    let mut c = Command::new("ip");
    c.args(["-n", ns]).args(args.split_whitespace());
    stdout_of(c, &format!("ip {args}"))
}

/// Runs `c` and returns its stdout; panics (naming it `what`, with its stderr) unless it
/// succeeds.
pub fn stdout_of(mut c: Command, what: &str) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("running {what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `PROGRAM ARGS` in the lab's host namespace (no shell); panics on failure.
pub fn in_lab(lab: &Lab, program: &str, args: &[&str]) -> String {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &lab.host(), program]).args(args);
    stdout_of(c, &format!("{program} {args:?}"))
}

/// `PROGRAM ARGS` (ARGS split on whitespace, no shell) in the lab's host namespace; panics on
/// failure.
pub fn fw(lab: &Lab, program: &str, args: &str) -> String {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &lab.host(), program])
        .args(args.split_whitespace());
    stdout_of(c, &format!("{program} {args}"))
}

/// Loads an nft ruleset from the file `name` in the lab's directory, in its host namespace.
pub fn nft_load(lab: &Lab, name: &str, rules: &str) {
    let f = lab.dir.path().join(name);
    std::fs::write(&f, rules).unwrap();
    fw(lab, "nft", &format!("-f {}", f.display()));
}

/// A VPN's nftables table in the style of Mullvad's: policy drop, only lo and tun0.
pub const MULLVAD_LIKE: &str = "table inet vpn {
    chain input {
        type filter hook input priority 0; policy drop;
        iifname \"lo\" accept
        iifname \"tun0\" accept
    }
    chain output {
        type filter hook output priority 0; policy drop;
        oifname \"lo\" accept
        oifname \"tun0\" accept
    }
}
";

/// `up` with the resolver-dir DNS backend writing into `dir`.
pub fn up_resolver_dir(dir: &str) -> [&str; 7] {
    [
        "up",
        "--vm-ip",
        VM_IP,
        "--dns",
        "resolver-dir",
        "--resolver-dir",
        dir,
    ]
}

/// A VPN kill switch as iptables rules: policy DROP, only lo and tun0.
pub const KILL_SWITCH: [&str; 6] = [
    "-A INPUT -i lo -j ACCEPT",
    "-A INPUT -i tun0 -j ACCEPT",
    "-A OUTPUT -o lo -j ACCEPT",
    "-A OUTPUT -o tun0 -j ACCEPT",
    "-P INPUT DROP",
    "-P OUTPUT DROP",
];

/// Connect, send a line, expect it back.
pub fn echo(addr: &str) -> bool {
    let addr: SocketAddr = addr.parse().unwrap();
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(800)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"ping dockroute\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 15];
    s.read_exact(&mut buf).is_ok() && &buf == b"ping dockroute\n"
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(LAB).args(["destroy", &self.prefix]).status();
    }
}

/// Put an executable at `dst`, a copy of `src`, mode `mode`. The copy is written by a child
/// process (`cp`), never through a descriptor of this one: tests run on many threads, and a write
/// descriptor inherited by another thread's forked child makes every exec of the file fail with
/// ETXTBSY until that child execs.
pub fn copy_exe(src: &Path, dst: &Path, mode: u32) {
    let out = Command::new("/bin/cp")
        .arg("--")
        .arg(src)
        .arg(dst)
        .output()
        .expect("running cp");
    assert!(
        out.status.success(),
        "cp {} {}: {}",
        src.display(),
        dst.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// An executable shell script at `path` (root's, `mode`), written as [`copy_exe`] writes.
pub fn write_script(path: &Path, body: &str, mode: u32) {
    let staged = tempfile::NamedTempFile::new().expect("temporary file");
    std::fs::write(staged.path(), format!("#!/bin/sh\n{body}\n")).unwrap();
    copy_exe(staged.path(), path, mode);
}

pub fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// `dockroute up --vm-ip VM_IP`, which must succeed.
pub fn up(lab: &Lab) -> Run {
    lab.dockroute(&["up", "--vm-ip", VM_IP]).ok()
}

/// A snapshot without dockroute's own lines (its protocol, numeric or named).
pub fn without_dockroute(snapshot: &str) -> String {
    snapshot
        .split_inclusive('\n')
        .filter(|l| !l.contains("proto 100") && !l.contains("proto dockroute"))
        .collect()
}

/// Each VPN routing pattern of issue 2, point 4. The developer's old manual route
/// (`route add 172.17.0.0/16 <vm>`) breaks under the VPN; dockroute's routes keep working, and
/// `down` leaves the VPN's objects and the manual route exactly as they were.
pub fn vpn_scenario(manual_metric: &str, vpn: impl Fn(&Lab), manual_survives_vpn: bool) {
    let lab = Lab::new();
    lab.add_tunnel("tun0", "10.66.0.2/24");
    lab.ip(&format!(
        "route add 172.17.0.0/16 via {VM_IP} metric {manual_metric}"
    ));
    assert!(lab.reaches_container(), "the manual route does not work");
    vpn(&lab);
    assert_eq!(
        lab.reaches_container(),
        manual_survives_vpn,
        "the VPN simulation does not behave like the real client"
    );
    let with_vpn = lab.snapshot();

    up(&lab);
    assert!(lab.reaches_container(), "dockroute lost against the VPN");
    assert_eq!(
        without_dockroute(&lab.snapshot()),
        with_vpn,
        "up touched routes or rules that are not its own"
    );
    let status = lab.dockroute(&["--json", "status"]).ok().json();
    assert!(
        status["probes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["ok"] == true),
        "{status}"
    );
    let again = lab.dockroute(&["--json", "up", "--vm-ip", VM_IP]).ok();
    assert_eq!(again.json()["changes"], serde_json::json!([]));

    lab.dockroute(&["down"]).ok();
    assert_eq!(
        lab.snapshot(),
        with_vpn,
        "down touched something not its own"
    );

    // The other order: dockroute first, then the VPN connects.
    let lab = Lab::new();
    lab.add_tunnel("tun0", "10.66.0.2/24");
    up(&lab);
    vpn(&lab);
    assert!(
        lab.reaches_container(),
        "a VPN connecting after up broke the route"
    );
}

impl Lab {
    /// `dockroute ARGS` in the host namespace with `etc` bind-mounted over /etc, in a mount
    /// namespace made for this run on a dedicated thread (the machine's /etc is never touched:
    /// the mounts are private to it), under `umask`.
    pub fn spawn_private_etc(
        &self,
        etc: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        umask: u32,
    ) -> Child {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(BIN);
        self.isolate(&mut c, args)
            .env_remove("DOCKROUTE_TEST_STALL_RENAME")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mask = nix::sys::stat::Mode::from_bits_truncate(umask);
        // SAFETY: umask(2) is async-signal-safe and touches no memory.
        unsafe {
            c.pre_exec(move || {
                nix::sys::stat::umask(mask);
                Ok(())
            });
        }
        let netns = format!("/run/netns/{}", self.host());
        let etc = etc.to_path_buf();
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare mount ns");
            // private first, so that the bind mount below never propagates to the machine
            for args in [
                vec!["--make-rprivate".into(), "/".into()],
                vec!["--bind".into(), etc.into_os_string(), "/etc".into()],
            ] {
                let st = Command::new("mount").args(&args).status().expect("mount");
                assert!(st.success(), "mount {args:?}");
            }
            let ns = std::fs::File::open(&netns).expect("open netns");
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            c.spawn().expect("spawning dockroute")
        })
        .join()
        .expect("private /etc thread")
    }

    /// [`Lab::spawn_private_etc`], waited for.
    pub fn private_etc(&self, etc: &Path, args: &[&str], umask: u32) -> Run {
        let child = self.spawn_private_etc(etc, args, &[], umask);
        Run::from(child.wait_with_output().expect("waiting for dockroute"))
    }

    /// A private /etc for [`Lab::spawn_private_etc`]: a root-owned 0755 directory holding
    /// `resolv.conf` ("nameserver 127.0.0.1", 0644).
    pub fn make_etc(&self) -> PathBuf {
        let etc = self.dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o755)).unwrap();
        let resolv = etc.join("resolv.conf");
        std::fs::write(&resolv, "nameserver 127.0.0.1\n").unwrap();
        std::fs::set_permissions(&resolv, std::fs::Permissions::from_mode(0o644)).unwrap();
        etc
    }
}

/// The names in `dir` that look like dockroute's temporary files.
pub fn leftovers(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".dockroute-"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

impl Lab {
    /// The VM's namespace.
    pub fn vm(&self) -> String {
        format!("{}-vm", self.prefix)
    }

    /// Stop the VM's DNS server: the lab's dnsmasq (a process in the VM namespace, which only
    /// this lab's lab.sh started), killed and waited for until nothing listens on port 53.
    pub fn stop_vm_dns(&self) {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.vm()])
            .output()
            .expect("ip netns pids");
        let mut killed = 0;
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "dnsmasq" {
                let pid = nix::unistd::Pid::from_raw(pid.parse().unwrap());
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
                killed += 1;
            }
        }
        assert_eq!(killed, 1, "the lab's dnsmasq not found");
        for _ in 0..300 {
            let ss = Command::new("ip")
                .args(["netns", "exec", &self.vm(), "ss", "-Hlun", "sport = :53"])
                .output()
                .expect("ss");
            if !String::from_utf8_lossy(&ss.stdout).contains("53") {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("dnsmasq still listens");
    }

    /// `getent hosts NAME` in the host namespace, and how long it took.
    pub fn timed_getent(&self, name: &str) -> (Option<String>, Duration) {
        let t = std::time::Instant::now();
        let r = self.getent(name);
        (r, t.elapsed())
    }
}

/// A link that is not host-only, as a laptop's Wi-Fi would be: a veth called wlan0 on 10.77.0.0/24.
pub fn lan_link(lab: &Lab) {
    lab.ip("link add wlan0 type veth peer name wlan0p");
    lab.ip("addr add 10.77.0.2/24 dev wlan0");
    lab.ip("link set wlan0p up");
    lab.ip("link set wlan0 up");
}

/// A docker-machine store under the lab's directory whose machine `default` has `ip`, written as
/// docker-machine does (a new file renamed over the old one). Returns the store.
pub fn machine(lab: &Lab, ip: &str) -> PathBuf {
    let store = lab.dir.path().join("machine");
    let config = store.join("machines/default/config.json");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    let tmp = config.with_extension("tmp");
    std::fs::write(&tmp, format!("{{\"Driver\": {{\"IPAddress\": \"{ip}\"}}}}")).unwrap();
    std::fs::rename(&tmp, &config).unwrap();
    store
}

/// Routes, rules, the firewall and the record: what a refusal must leave byte-identical.
pub fn state(lab: &Lab) -> String {
    format!(
        "{}\n--- nft ---\n{}\n--- record ---\n{}",
        lab.snapshot(),
        fw(lab, "nft", "list ruleset"),
        lab.state_dir().join("state.json").exists()
    )
}

/// A second "VM" on the host-only link: a namespace with a macvlan on the VM's side of the link
/// (its own link-layer address) at 192.168.99.200, answering DNS for every name. Removed on drop.
pub struct Rogue {
    ns: String,
}

impl Rogue {
    pub fn new(lab: &Lab) -> Rogue {
        let ns = format!("{}-rogue", lab.prefix);
        let rogue = Rogue { ns: ns.clone() };
        stdout_of(
            {
                let mut c = Command::new("ip");
                c.args(["netns", "add", &ns]);
                c
            },
            "ip netns add",
        );
        ip_in(
            &lab.vm(),
            "link add rogue link eth0 type macvlan mode bridge",
        );
        ip_in(&lab.vm(), &format!("link set rogue netns {ns}"));
        ip_in(&ns, "addr add 192.168.99.200/24 dev rogue");
        ip_in(&ns, "link set rogue up");
        ip_in(&ns, "link set lo up");
        rogue
    }
}

impl Drop for Rogue {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.ns])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// Make the host learn `ip` as a neighbour on vboxnet0 (an ARP exchange, as any traffic does).
pub fn touch(lab: &Lab, ip: &'static str) {
    lab.in_host(move || {
        let addr: std::net::SocketAddr = format!("{ip}:1").parse().unwrap();
        let _ = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300));
    });
}

pub fn vm_route(lab: &Lab) -> String {
    lab.ip("route show table 5017")
}

/// `mount ARGS`, which must succeed.
pub fn mount(args: &[&str]) {
    let st = Command::new("mount").args(args).status().expect("mount");
    assert!(st.success(), "mount {args:?}");
}

/// Move the calling thread into a mount namespace of its own (private: nothing mounted in it
/// reaches the machine) with a fresh tmpfs on /run that holds only the labs' namespaces
/// (/run/netns) and an empty /run/dbus. What the thread starts afterwards shares it.
pub fn private_run() {
    let held = tempfile::tempdir().expect("tempdir");
    let held = held.path().to_str().unwrap();
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare mount ns");
    mount(&["--make-rprivate", "/"]);
    mount(&["--rbind", "/run/netns", held]);
    mount(&["-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run"]);
    for d in ["/run/netns", "/run/dbus"] {
        std::fs::create_dir(d).unwrap();
    }
    mount(&["--move", held, "/run/netns"]);
}
