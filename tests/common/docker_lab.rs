//! A lab whose VM runs a real Docker engine: `scripts/lab.sh docker-create` builds the host and VM
//! namespaces without the simulated docker0, and starts Debian's dockerd in the VM's namespace
//! (in a private mount namespace: its own /run, /etc overlaid, vfs storage), listening on a
//! socket of the lab and on tcp://VM_IP:2375. `Drop` (also on a panic) removes the containers,
//! stops dockerd by its pid, removes its cgroups and files, and deletes the namespaces.
//!
//! The tests drive the engine with the docker CLI of the extracted package; dockroute itself
//! never runs it.

use super::{LAB, Lab, Run, VM_IP, in_netns, stdout_of};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::ops::Deref;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Where scripts/lab.sh keeps a running engine's files (data root, socket, pid file, log).
pub const DOCKER_LABS: &str = "/var/lib/dockroute-lab";
/// The docker CLI of the extracted package (scripts/lab.sh docker-fetch).
pub const DOCKER_CLI: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/target/test-deps/docker/usr/bin/docker"
);
/// The lab's image (busybox httpd on port 80); also tagged busybox:latest.
pub const IMAGE: &str = "busybox-httpd";
/// What the image's httpd serves at /.
pub const PAGE: &str = "dockroute lab\n";
/// The VM's side of the host-only link.
pub const VM_IF: &str = "eth0";

pub struct DockerLab {
    pub lab: Lab,
}

impl Deref for DockerLab {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl DockerLab {
    /// A fresh VM: forwarding off when dockerd starts, so dockerd turns it on and sets the
    /// FORWARD policy to DROP.
    pub fn new() -> DockerLab {
        sweep_stale();
        DockerLab {
            lab: Lab::created_by("docker-create", &[]),
        }
    }

    /// A VM whose forwarding was on before dockerd started: the FORWARD policy stays ACCEPT.
    pub fn with_forwarding() -> DockerLab {
        sweep_stale();
        DockerLab {
            lab: Lab::created_by("docker-create", &["--forwarding"]),
        }
    }

    /// The engine's files.
    pub fn dir(&self) -> PathBuf {
        PathBuf::from(DOCKER_LABS).join(&self.prefix)
    }

    /// The engine's socket, as a DOCKER_HOST value.
    pub fn socket_url(&self) -> String {
        format!("unix://{}/docker.sock", self.dir().display())
    }

    /// The engine's TCP endpoint, reachable from the lab's host namespace only.
    pub fn tcp_url(&self) -> String {
        format!("tcp://{VM_IP}:2375")
    }

    /// `docker ARGS` against the lab's engine (a private CLI config, nothing of the caller's
    /// environment).
    pub fn docker(&self, args: &[&str]) -> Run {
        let out = Command::new(DOCKER_CLI)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("DOCKER_HOST", self.socket_url())
            .env("DOCKER_CONFIG", self.dir().join("cli"))
            .output()
            .expect("running docker");
        Run::from(out)
    }

    /// `docker ARGS`, which must succeed; its stdout, trimmed.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        self.docker(args).ok().stdout.trim().to_string()
    }

    /// `docker run -d --name NAME [--network NET] [--label K=V]... busybox-httpd`; the id.
    pub fn run(&self, name: &str, network: Option<&str>, labels: &[(&str, &str)]) -> String {
        let mut args = vec!["run".to_string(), "-d".into(), "--name".into(), name.into()];
        if let Some(net) = network {
            args.extend(["--network".into(), net.into()]);
        }
        for (k, v) in labels {
            args.extend(["--label".into(), format!("{k}={v}")]);
        }
        args.push(IMAGE.into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.docker_ok(&args)
    }

    /// `docker network create --subnet SUBNET NAME` (a bridge network); the id.
    pub fn network_create(&self, name: &str, subnet: &str) -> String {
        self.docker_ok(&["network", "create", "--subnet", subnet, name])
    }

    pub fn network_rm(&self, name: &str) {
        self.docker_ok(&["network", "rm", name]);
    }

    /// The container's IPv4 address (its first network's).
    pub fn container_ip(&self, name: &str) -> Ipv4Addr {
        let out = self.docker_ok(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            name,
        ]);
        let first = out.split_whitespace().next().unwrap_or("");
        first
            .parse()
            .unwrap_or_else(|e| panic!("{name} has no IPv4 address ({e}): {out:?}"))
    }

    /// The Linux bridge of a network: docker0 for the default one, br-<id> for the others.
    pub fn bridge_of(&self, network: &str) -> String {
        let named = self.docker_ok(&[
            "network",
            "inspect",
            "-f",
            "{{index .Options \"com.docker.network.bridge.name\"}}",
            network,
        ]);
        if !named.is_empty() && named != "<no value>" {
            return named;
        }
        let id = self.docker_ok(&["network", "inspect", "-f", "{{.Id}}", network]);
        format!("br-{}", &id[..12])
    }

    /// SIGTERM dockerd and start it again on the same data (it rebuilds its chains).
    pub fn restart_dockerd(&self) {
        let out = Command::new(LAB)
            .args(["docker-restart", &self.prefix])
            .output()
            .expect("running lab.sh");
        assert!(
            out.status.success(),
            "lab.sh docker-restart: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGKILL dockerd (a crash: its containers keep running, nothing is cleaned up).
    pub fn kill_dockerd(&self) {
        let pid =
            std::fs::read_to_string(self.dir().join("docker.pid")).expect("dockerd's pid file");
        let pid: i32 = pid.trim().parse().expect("a pid");
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        assert_eq!(comm.trim(), "dockerd", "pid {pid} is not the lab's dockerd");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill dockerd");
    }

    /// Drop the lab and check that nothing of it is left.
    pub fn remove(self) {
        let prefix = self.prefix.clone();
        drop(self);
        assert_eq!(
            leftovers(&prefix),
            Vec::<String>::new(),
            "the lab left things behind"
        );
    }

    /// `PROGRAM ARGS` inside the VM's network namespace (no shell); its stdout.
    fn in_vm(&self, program: &str, args: &[&str]) -> String {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.vm(), program]).args(args);
        stdout_of(c, &format!("{program} {args:?} in the VM"))
    }

    /// `iptables ARGS` inside the VM's network namespace; its stdout.
    pub fn vm_iptables(&self, args: &[&str]) -> String {
        self.in_vm("iptables", args)
    }

    /// Docker 28's raw-table drop for a container address arriving on any interface but its
    /// bridge, written in the VM as Docker writes it.
    pub fn docker28_raw_drop(&self, ip: Ipv4Addr, bridge: &str) {
        let addr = ip.to_string();
        self.vm_iptables(&[
            "-t",
            "raw",
            "-A",
            "PREROUTING",
            "-d",
            &addr,
            "!",
            "-i",
            bridge,
            "-j",
            "DROP",
        ]);
    }

    /// `nft ARGS` inside the VM's network namespace; its stdout.
    pub fn vm_nft(&self, args: &[&str]) -> String {
        self.in_vm("nft", args)
    }

    /// The VM's nftables without counters and handles (what `down` must leave as it was).
    pub fn vm_nft_ruleset(&self) -> String {
        self.vm_nft(&["-s", "list", "ruleset"])
    }

    /// Docker 29's own nftables table (`firewall-backend: nftables`) in the VM, as Docker 29
    /// writes it for `bridges` (each with the addresses of its containers): `filter-FORWARD`
    /// with policy drop (a fresh VM, whose forwarding dockerd turned on), a jump per bridge to
    /// a chain that ends in "UNPUBLISHED PORT DROP", and `raw-PREROUTING`'s "DROP DIRECT
    /// ACCESS" for each container arriving on any interface but its bridge. Loaded in one
    /// transaction, replacing the table a previous call loaded (as a restarted dockerd does).
    pub fn docker29_nft_tables(&self, bridges: &[(&str, &[Ipv4Addr])]) {
        let mut rules = String::from(
            "table ip docker-bridges\ndelete table ip docker-bridges\ntable ip docker-bridges {\n",
        );
        let jumps = |dir: &str| {
            bridges
                .iter()
                .map(|(b, _)| format!("\"{b}\" : jump filter-forward-{dir}__{b}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for dir in ["in", "out"] {
            rules += &format!(
                "  map filter-forward-{dir}-jumps {{\n    type ifname : verdict\n    elements = {{ {} }}\n  }}\n",
                jumps(dir)
            );
        }
        for (b, _) in bridges {
            rules += &format!(
                "  chain filter-forward-in__{b} {{\n    ct state established,related counter accept\n    iifname \"{b}\" counter accept comment \"ICC\"\n    counter drop comment \"UNPUBLISHED PORT DROP\"\n  }}\n  chain filter-forward-out__{b} {{\n    ct state established,related counter accept\n    counter accept comment \"OUTGOING\"\n  }}\n"
            );
        }
        rules += "  chain filter-FORWARD {\n    type filter hook forward priority filter; policy drop;\n    oifname vmap @filter-forward-in-jumps\n    iifname vmap @filter-forward-out-jumps\n  }\n";
        rules += "  chain raw-PREROUTING {\n    type filter hook prerouting priority raw; policy accept;\n";
        for (b, ips) in bridges {
            for ip in *ips {
                rules += &format!(
                    "    ip daddr {ip} iifname != \"{b}\" counter drop comment \"DROP DIRECT ACCESS\"\n"
                );
            }
        }
        rules += "  }\n}\n";
        let file = self.dir().join("docker29.nft");
        std::fs::write(&file, rules).expect("writing the nft file");
        self.vm_nft(&["-f", &file.to_string_lossy()]);
    }

    /// The VM's iptables as iptables-save prints them, without its comment lines.
    pub fn vm_iptables_save(&self) -> String {
        without_comments(&self.in_vm("iptables-save", &[]))
    }

    /// The policy of the VM's FORWARD chain (ACCEPT or DROP).
    pub fn forward_policy(&self) -> String {
        let rules = self.vm_iptables(&["-S", "FORWARD"]);
        rules
            .lines()
            .find_map(|l| l.strip_prefix("-P FORWARD "))
            .unwrap_or("")
            .to_string()
    }

    /// The host namespace's routes, rules, firewalls (iptables, iptables-legacy, nftables) and
    /// resolv.conf: what `down` must leave byte-identical.
    pub fn host_state(&self) -> String {
        let host = self.host();
        let run = |program: &str, args: &[&str]| {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &host, program]).args(args);
            without_comments(&stdout_of(c, program))
        };
        format!(
            "{}\n--- iptables ---\n{}--- iptables-legacy ---\n{}--- nft ---\n{}--- resolv.conf ---\n{}",
            self.snapshot(),
            run("iptables-save", &[]),
            run("iptables-legacy-save", &[]),
            run("nft", &["list", "ruleset"]),
            std::fs::read_to_string(self.resolv_conf()).unwrap_or_default(),
        )
    }

    /// `dockroute down`, which must succeed and leave [`DockerLab::host_state`] as `before`.
    pub fn down_restores(&self, before: &str) {
        self.dockroute(&["down"]).ok();
        assert_eq!(self.host_state(), before, "down left the host changed");
    }

    /// A real HTTP exchange with IP:80 from the host namespace: the page, or None when the
    /// connection fails or times out.
    pub fn http_from_host(&self, ip: Ipv4Addr) -> Option<String> {
        in_netns(&self.host(), move || http_get(ip))
    }

    /// The engine's `/_ping` over its TCP endpoint, asked from the host namespace.
    pub fn ping_over_tcp(&self) -> Option<String> {
        in_netns(&self.host(), || {
            let addr: SocketAddr = format!("{VM_IP}:2375").parse().ok()?;
            request(addr, "/_ping")
        })
    }

    /// The same from inside the VM (not routed: the container itself answers).
    pub fn http_from_vm(&self, ip: Ipv4Addr) -> Option<String> {
        in_netns(&self.vm(), move || http_get(ip))
    }
}

/// `GET /` on IP:80; the body.
pub fn http_get(ip: Ipv4Addr) -> Option<String> {
    request(SocketAddr::from((ip, 80)), "/")
}

/// `GET PATH` over HTTP/1.0 (connect timeout 800 ms, read timeout 2 s); the body.
fn request(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(800)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    let (head, body) = reply.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_string())
}

fn without_comments(text: &str) -> String {
    text.split_inclusive('\n')
        .filter(|l| !l.starts_with('#'))
        .collect()
}

/// This machine's own network and firewall, read from the test's own namespaces: its link
/// names, routes and rules, iptables, iptables-legacy and nftables, and which of the engine's
/// usual directories exist. No lab may change them.
pub fn machine_state() -> String {
    let run = |program: &str, args: &[&str]| {
        let mut c = Command::new(program);
        c.args(args);
        without_comments(&stdout_of(c, program))
    };
    let links: Vec<String> = run("ip", &["-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1).map(str::to_string))
        .collect();
    // where an engine running in the machine's own mount namespace would write
    let engine_dirs: Vec<&str> = [
        "/etc/docker",
        "/run/docker",
        "/run/containerd",
        "/var/lib/docker",
        "/var/lib/containerd",
    ]
    .into_iter()
    .filter(|p| std::fs::symlink_metadata(p).is_ok())
    .collect();
    format!(
        "{}\n{}\n--- routes ---\n{}--- rules ---\n{}--- iptables ---\n{}--- legacy ---\n{}--- nft ---\n{}",
        links.join(" "),
        engine_dirs.join(" "),
        run("ip", &["route", "show", "table", "all"]),
        run("ip", &["rule", "show"]),
        run("iptables-save", &[]),
        run("iptables-legacy-save", &[]),
        run("nft", &["list", "ruleset"]),
    )
}

/// This machine's own state ([`machine_state`]) when a test began, checked when it ends.
pub struct Untouched(String);

impl Untouched {
    pub fn now() -> Untouched {
        Untouched(machine_state())
    }

    pub fn check(&self) {
        assert_eq!(
            machine_state(),
            self.0,
            "the machine's own network or firewall changed"
        );
    }
}

/// Engines of earlier test runs that were killed (SIGKILL, a timeout) before their labs were
/// dropped: a lab's prefix is `drt<pid>x<n>`, and one whose test process is gone is destroyed.
fn sweep_stale() {
    let Ok(rd) = std::fs::read_dir(DOCKER_LABS) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("drt")
            .and_then(|r| r.split_once('x'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = Command::new(LAB).args(["destroy", &name]).status();
    }
}

/// What a lab with this prefix could leave behind: its namespaces, its engine's files, its
/// cgroups, and processes of its VM. Empty when it is gone.
pub fn leftovers(prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    for ns in ["host", "vm", "c1"] {
        let path = format!("/run/netns/{prefix}-{ns}");
        if std::fs::symlink_metadata(&path).is_ok() {
            found.push(path);
        }
    }
    let dir = format!("{DOCKER_LABS}/{prefix}");
    if std::fs::symlink_metadata(&dir).is_ok() {
        found.push(dir);
    }
    // cgroup v2 at /sys/fs/cgroup, v1 one hierarchy per directory under it
    let cgroup = format!("dockroute-lab-{prefix}");
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        roots.extend(rd.flatten().map(|e| e.path()));
    }
    for root in roots {
        let p = root.join(&cgroup);
        if p.is_dir() {
            found.push(p.display().to_string());
        }
    }
    found
}
