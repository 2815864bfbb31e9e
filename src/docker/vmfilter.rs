//! The VM's own Docker filter: why a routed container may still not answer, and the narrow
//! accept rules `--open-vm-firewall` inserts in the VM (through [`super::helper`]).
//!
//! Two filters of Docker's drop routed packets inside the VM: the FORWARD policy DROP that
//! dockerd sets when it had to turn forwarding on (a freshly booted VM), and from Docker 28 the
//! raw table's PREROUTING drops for each container address arriving on any interface but its
//! bridge. This module only encodes, parses and words them (no `cfg`, no I/O).

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// The comment every rule of dockroute's in the VM carries.
pub const MARK: &str = "dockroute";

/// The default helper image: it needs only a `chroot` program (busybox's is static); the
/// iptables that runs is the VM's own, from the engine's root filesystem.
pub const DEFAULT_HELPER_IMAGE: &str = "busybox:latest";

/// Which of the VM's firewalls a rule is in: the one dockerd writes its rules to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// iptables (either of its backends: the VM's own `iptables` program picks).
    #[default]
    Iptables,
    /// Docker's own nftables table (`firewall-backend: nftables`, [`super::vmnft`]).
    Nftables,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Iptables, Backend::Nftables];

    /// The backend of the engine's rules, as `/info` says (older engines: iptables).
    pub fn of(engine: &EngineFilter) -> Backend {
        if engine.nftables() {
            Backend::Nftables
        } else {
            Backend::Iptables
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Iptables => "iptables",
            Backend::Nftables => "nftables",
        }
    }

    /// The command that prints the VM's rules of this backend.
    pub fn list_argv(self) -> Vec<String> {
        match self {
            Backend::Iptables => vec!["iptables-save".into()],
            Backend::Nftables => super::vmnft::list_argv(),
        }
    }
}

/// One accept rule of dockroute's in the VM's firewall.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRule {
    /// Records written before nftables engines were opened have none: iptables.
    #[serde(default)]
    pub backend: Backend,
    /// iptables: `filter` or `raw`; nftables: Docker's table (`docker-bridges`).
    pub table: String,
    pub chain: String,
    pub host: Ipv4Addr,
    pub subnet: Ipv4Net,
    pub interface: String,
}

impl VmRule {
    /// The rule's match and target, as iptables takes them after `-I CHAIN` or `-D CHAIN`.
    pub fn spec(&self) -> Vec<String> {
        [
            "-s",
            &format!("{}/32", self.host),
            "-d",
            &self.subnet.to_string(),
            "-i",
            &self.interface,
            "-m",
            "comment",
            "--comment",
            MARK,
            "-j",
            "ACCEPT",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// The line iptables-save prints for it (to find it in the VM's rules).
    pub fn saved(&self) -> String {
        format!("-A {} {}", self.chain, self.spec().join(" "))
    }

    /// The command that inserts it at the top of its chain.
    pub fn insert_argv(&self) -> Vec<String> {
        match self.backend {
            Backend::Iptables => self.argv("-I"),
            Backend::Nftables => super::vmnft::insert_argv(self),
        }
    }

    /// The rule in its backend's own words (for messages).
    pub fn text(&self) -> String {
        match self.backend {
            Backend::Iptables => format!("iptables -t {} {}", self.table, self.saved()),
            Backend::Nftables => super::vmnft::rule_text(self),
        }
    }

    /// `iptables -w -t TABLE VERB CHAIN SPEC`, as an argument vector.
    pub fn argv(&self, verb: &str) -> Vec<String> {
        let mut v: Vec<String> = ["iptables", "-w", "-t", &self.table, verb, &self.chain]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(self.spec());
        v
    }
}

/// What the VM's iptables-save says, as far as dockroute cares.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Saved {
    /// Docker's DOCKER-USER chain exists (the FORWARD policy's escape hatch).
    pub docker_user: bool,
    /// The FORWARD policy (ACCEPT, DROP).
    pub forward_policy: Option<String>,
    /// The destination addresses of raw PREROUTING drops (Docker 28's), as written.
    pub raw_drops: Vec<Ipv4Net>,
    /// Every rule line (`-A ...`), per table.
    pub lines: Vec<(String, String)>,
}

/// Parse iptables-save's output (untrusted: lines that do not parse are ignored).
pub fn parse_saved(text: &str) -> Saved {
    let mut s = Saved::default();
    let mut table = String::new();
    for line in text.lines().map(str::trim) {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
        } else if let Some(chain) = line.strip_prefix(':') {
            let mut it = chain.split_whitespace();
            let (name, policy) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
            if table == "filter" && name == "DOCKER-USER" {
                s.docker_user = true;
            }
            if table == "filter" && name == "FORWARD" {
                s.forward_policy = Some(policy.to_string());
            }
        } else if line.starts_with("-A ") {
            let words: Vec<&str> = line.split_whitespace().collect();
            if table == "raw"
                && words.get(1) == Some(&"PREROUTING")
                && words.ends_with(&["-j", "DROP"])
                && let Some(d) = words
                    .iter()
                    .position(|w| *w == "-d")
                    .and_then(|i| words.get(i + 1))
                    .and_then(|a| a.parse::<Ipv4Net>().ok())
            {
                s.raw_drops.push(d);
            }
            s.lines.push((table.clone(), line.to_string()));
        }
    }
    s
}

impl Saved {
    pub fn has(&self, rule: &VmRule) -> bool {
        let want = rule.saved();
        self.lines
            .iter()
            .any(|(t, l)| *t == rule.table && *l == want)
    }
}

/// What the VM's firewall holds, in the backend dockerd uses.
#[derive(Debug, PartialEq, Eq)]
pub enum VmRules {
    Iptables(Saved),
    Nftables(super::vmnft::NftState),
}

impl VmRules {
    /// Read what [`Backend::list_argv`] printed (untrusted).
    pub fn read(backend: Backend, text: &str) -> Result<VmRules, String> {
        match backend {
            Backend::Iptables => Ok(VmRules::Iptables(parse_saved(text))),
            Backend::Nftables => super::vmnft::parse(text).map(VmRules::Nftables),
        }
    }

    /// Whether `rule` is in the VM (a rule of the other backend never is).
    pub fn has(&self, rule: &VmRule) -> bool {
        match self {
            VmRules::Iptables(s) => rule.backend == Backend::Iptables && s.has(rule),
            VmRules::Nftables(s) => s.handle(rule).is_some(),
        }
    }

    /// The commands that delete exactly those of `rules` that are in the VM (iptables: one per
    /// rule; nftables: one transaction for them all, by the handles read), and how many.
    pub fn deletion(&self, rules: &[&VmRule]) -> (Vec<Vec<String>>, usize) {
        match self {
            VmRules::Iptables(_) => {
                let argvs: Vec<Vec<String>> = rules
                    .iter()
                    .filter(|r| self.has(r))
                    .map(|r| r.argv("-D"))
                    .collect();
                let n = argvs.len();
                (argvs, n)
            }
            VmRules::Nftables(s) => {
                let found: Vec<(&VmRule, u64)> = rules
                    .iter()
                    .filter_map(|r| s.handle(r).map(|h| (*r, h)))
                    .collect();
                match found.len() {
                    0 => (Vec::new(), 0),
                    n => (vec![super::vmnft::delete_argv(&found)], n),
                }
            }
        }
    }

    /// Why nothing is to be opened in a VM whose rules these are, when nothing is.
    pub fn nothing_to_open(&self) -> &'static str {
        match self {
            VmRules::Iptables(_) => {
                "the VM's iptables have no DOCKER-USER chain and no raw-table drops of Docker's (dockerd filters nothing there, or runs with iptables off)"
            }
            VmRules::Nftables(_) => {
                "the engine runs its rules on nftables, but the VM has no table ip docker-bridges with Docker's base chains (filter-FORWARD, raw-PREROUTING)"
            }
        }
    }

    /// The accepts `--open-vm-firewall` wants here (see [`wanted`] and [`super::vmnft::wanted`]).
    pub fn wanted(&self, host: Ipv4Addr, interface: &str, subnets: &[Ipv4Net]) -> Vec<VmRule> {
        match self {
            VmRules::Iptables(s) => wanted(s, host, interface, subnets),
            VmRules::Nftables(s) => super::vmnft::wanted(s, host, interface, subnets),
        }
    }
}

/// The rules `--open-vm-firewall` wants in a VM whose rules are `saved`: a DOCKER-USER accept
/// per routed subnet, and a raw PREROUTING accept for each subnet Docker's raw drops cover
/// (only there: iptables-nft would create the raw table on the first insert).
pub fn wanted(saved: &Saved, host: Ipv4Addr, interface: &str, subnets: &[Ipv4Net]) -> Vec<VmRule> {
    let rule = |table: &str, chain: &str, subnet: Ipv4Net| VmRule {
        backend: Backend::Iptables,
        table: table.into(),
        chain: chain.into(),
        host,
        subnet,
        interface: interface.into(),
    };
    let mut out = Vec::new();
    if saved.docker_user {
        out.extend(subnets.iter().map(|s| rule("filter", "DOCKER-USER", *s)));
    }
    for s in subnets {
        if saved
            .raw_drops
            .iter()
            .any(|d| s.contains(&d.network()) || d.contains(&s.network()))
        {
            out.push(rule("raw", "PREROUTING", *s));
        }
    }
    out
}

/// The interface `ip -o route get HOST` names (`... dev IF ...`), if it is a valid name.
pub fn route_dev(text: &str) -> Option<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let dev = words
        .iter()
        .position(|w| *w == "dev")
        .and_then(|i| words.get(i + 1))?;
    crate::validate::interface(dev).ok()
}

/// A helper image reference: `[registry/]name[:tag][@digest]`, no option-like or odd text.
pub fn helper_image(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 255
        && !s.starts_with(['-', '.', '/', ':'])
        // it becomes part of an API path (/images/NAME/json): no `..`, no empty component
        && !s.contains("..")
        && !s.contains("//")
        && !s.contains("/.")
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "'{}' is not an image reference (NAME[:TAG], e.g. {DEFAULT_HELPER_IMAGE})",
            s.escape_default()
        ))
    }
}

/// What the engine says about its filter (`/info`, each routed network's options).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineFilter {
    /// The engine's version (e.g. 20.10.24, 28.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `iptables` or `nftables` (Docker 28.2 and later say; older engines use iptables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall_backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_forward: Option<bool>,
    /// Networks whose options let routed traffic in (`gateway_mode_ipv4` nat-unprotected or
    /// routed, or trusted host interfaces): Docker 28's raw drops do not apply to them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub direct_routing_networks: Vec<String>,
}

impl EngineFilter {
    /// The major version, if the version says.
    pub fn major(&self) -> Option<u32> {
        self.version.as_deref()?.split('.').next()?.parse().ok()
    }

    /// Whether the engine's rules are in nftables (`nftables`, or `nftables+firewalld` when
    /// firewalld runs beside it).
    pub fn nftables(&self) -> bool {
        self.firewall_backend
            .as_deref()
            .is_some_and(|b| b.split('+').next() == Some("nftables"))
    }
}

/// Whether a network's options let routed traffic past Docker 28's raw drops.
pub fn opens_direct_routing(options: &[(String, String)]) -> bool {
    options.iter().any(|(k, v)| {
        (k == "com.docker.network.bridge.gateway_mode_ipv4"
            && (v == "nat-unprotected" || v == "routed"))
            || (k == "com.docker.network.bridge.trusted_host_interfaces" && !v.is_empty())
    })
}

/// One running container, connected to from the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reach {
    pub container: String,
    pub network: String,
    pub ip: Ipv4Addr,
    pub port: u16,
    pub outcome: Outcome,
}

/// How a TCP connect from the host to a container ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The container accepted: the path is open.
    Answered,
    /// The container's kernel refused (nothing listens on the port): the path is open, the
    /// container itself is the reason a service there does not answer.
    Refused,
    /// No answer: something on the way drops the packets.
    TimedOut,
    /// An ICMP error or a local failure.
    Failed,
}

impl Outcome {
    pub fn reached(self) -> bool {
        matches!(self, Outcome::Answered | Outcome::Refused)
    }
}

impl std::fmt::Display for Reach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match self.outcome {
            Outcome::Answered => "answers",
            Outcome::Refused => "reached (nothing listens on the port: the container itself)",
            Outcome::TimedOut => "no answer (dropped on the way)",
            Outcome::Failed => "failed",
        };
        write!(
            f,
            "{} ({}, {}:{}): {how}",
            super::networks::shown(&self.container),
            super::networks::shown(&self.network),
            self.ip,
            self.port
        )
    }
}

/// What `status` (and `up`) found about the VM's filter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnosis {
    pub engine: EngineFilter,
    /// Containers probed from the host (those whose route goes via the VM).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<Reach>,
    /// Why the engine's filter could not be checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unchecked: Option<String>,
    /// `up` did not ask the engine about its filter (`engine` holds its version only): no probe
    /// found traffic dropped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub filter_unasked: bool,
}

impl Diagnosis {
    /// Whether the VM's Docker drops routed traffic: a container the host routes to via the VM
    /// does not answer at all.
    pub fn blocked(&self) -> bool {
        self.probes.iter().any(|p| p.outcome == Outcome::TimedOut)
    }

    /// The problem and its VM-side fix, in words a user can paste; `host` is the host's
    /// address on the host-only network.
    pub fn problem(&self, host: Ipv4Addr) -> Option<String> {
        if !self.blocked() {
            return None;
        }
        let dropped: Vec<String> = self
            .probes
            .iter()
            .filter(|p| p.outcome == Outcome::TimedOut)
            .map(|p| p.ip.to_string())
            .collect();
        let mut fixes = Vec::new();
        if self.engine.ip_forward == Some(false) {
            fixes.push(
                "the VM does not forward IPv4: run in the VM `sysctl -w net.ipv4.ip_forward=1`"
                    .to_string(),
            );
        }
        if self.engine.major().is_some_and(|m| m >= 28) || self.engine.nftables() {
            fixes.push(
                "Docker 28 and later drop routed packets in the raw table: set \"allow-direct-routing\": true in the VM's /etc/docker/daemon.json and restart dockerd (or create the network with -o com.docker.network.bridge.gateway_mode_ipv4=nat-unprotected)"
                    .to_string(),
            );
        }
        if self.engine.nftables() {
            fixes.push(
                "dockerd runs its rules on nftables, where an accept in a table of your own does not beat Docker's drops: run in the VM `nft insert rule ip docker-bridges filter-FORWARD iifname <the VM's host-only interface> ip saddr {host} accept`, and the same in raw-PREROUTING (dockerd deletes both when it restarts)"
                    .replace("{host}", &host.to_string()),
            );
        } else {
            fixes.push(format!(
                "dockerd's FORWARD policy DROP: run in the VM `iptables -I DOCKER-USER -s {host} -i <the VM's host-only interface> -j ACCEPT`"
            ));
        }
        fixes.push(
            "or run `dockroute up --open-vm-firewall` (a short-lived helper container in the VM inserts these accepts, marked and removed by `down`)"
                .to_string(),
        );
        Some(format!(
            "the VM's Docker drops routed traffic: {} routed via the VM but not answering; {}",
            dropped.join(", "),
            fixes.join("; ")
        ))
    }
}

/// The accept rules dockroute inserted in the VM, recorded for `down` and re-applied by `up`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opened {
    pub image: String,
    pub rules: Vec<VmRule>,
}

impl Opened {
    /// Where the accepts are: `iptables`, `nftables` (or `firewall`, when there are none).
    pub fn backend_name(&self) -> &'static str {
        self.rules.first().map_or("firewall", |r| r.backend.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED: &str = "# Generated\n*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A PREROUTING -d 172.17.0.2/32 ! -i docker0 -j DROP\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\n-A DOCKER-USER -s 192.168.99.1/32 -d 172.17.0.0/16 -i eth0 -m comment --comment dockroute -j ACCEPT\n-A DOCKER-USER -j RETURN\nCOMMIT\n";

    #[test]
    fn reads_the_vm_rules_and_wants_only_where_docker_drops() {
        let s = parse_saved(SAVED);
        assert!(s.docker_user);
        assert_eq!(s.forward_policy.as_deref(), Some("DROP"));
        assert_eq!(s.raw_drops, vec!["172.17.0.2/32".parse().unwrap()]);
        let host = "192.168.99.1".parse().unwrap();
        let nets = [
            "172.17.0.0/16".parse().unwrap(),
            "172.30.0.0/16".parse().unwrap(),
        ];
        let w = wanted(&s, host, "eth0", &nets);
        assert_eq!(w.len(), 3);
        assert!(s.has(&w[0]) && !s.has(&w[1]) && !s.has(&w[2]));
        assert_eq!((w[2].table.as_str(), w[2].subnet), ("raw", nets[0]));
        assert_eq!(
            w[2].argv("-I").join(" "),
            "iptables -w -t raw -I PREROUTING -s 192.168.99.1/32 -d 172.17.0.0/16 -i eth0 -m comment --comment dockroute -j ACCEPT"
        );
        // no raw table: nothing there
        let bare = parse_saved("*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n");
        assert!(wanted(&bare, host, "eth0", &nets).is_empty());
    }

    #[test]
    fn a_rule_recorded_before_nftables_is_an_iptables_rule() {
        let old = r#"{"table":"filter","chain":"DOCKER-USER","host":"192.168.99.1","subnet":"172.17.0.0/16","interface":"eth0"}"#;
        let r: VmRule = serde_json::from_str(old).unwrap();
        assert_eq!(r.backend, Backend::Iptables);
        assert_eq!(
            r.insert_argv().join(" "),
            "iptables -w -t filter -I DOCKER-USER -s 192.168.99.1/32 -d 172.17.0.0/16 -i eth0 -m comment --comment dockroute -j ACCEPT"
        );
        // an iptables rule is never found among the nftables rules, nor the other way round
        let nft = VmRules::read(Backend::Nftables, r#"{"nftables": []}"#).unwrap();
        assert!(!nft.has(&r));
        let ipt = VmRules::read(Backend::Iptables, SAVED).unwrap();
        assert!(ipt.has(&r));
        let as_nft = VmRule {
            backend: Backend::Nftables,
            ..r
        };
        assert!(!ipt.has(&as_nft));
    }

    #[test]
    fn words_the_fix() {
        let mut d = Diagnosis {
            engine: EngineFilter {
                version: Some("20.10.24".into()),
                ..Default::default()
            },
            probes: vec![Reach {
                container: "web".into(),
                network: "bridge".into(),
                ip: "172.17.0.2".parse().unwrap(),
                port: 80,
                outcome: Outcome::TimedOut,
            }],
            ..Default::default()
        };
        let p = d.problem("192.168.99.1".parse().unwrap()).unwrap();
        assert!(p.contains("iptables -I DOCKER-USER -s 192.168.99.1"), "{p}");
        assert!(p.contains("--open-vm-firewall") && !p.contains("allow-direct-routing"));
        d.engine.version = Some("28.1.1".into());
        d.engine.ip_forward = Some(false);
        let p = d.problem("192.168.99.1".parse().unwrap()).unwrap();
        assert!(
            p.contains("allow-direct-routing") && p.contains("gateway_mode_ipv4"),
            "{p}"
        );
        assert!(p.contains("net.ipv4.ip_forward=1"), "{p}");
        assert!(
            p.contains("DOCKER-USER") && !p.contains("nft insert"),
            "{p}"
        );
        d.engine.firewall_backend = Some("iptables+firewalld".into());
        assert!(!d.engine.nftables());
        d.engine.firewall_backend = Some("nftables+firewalld".into());
        assert!(d.engine.nftables());
        d.engine.firewall_backend = Some("nftables".into());
        let p = d.problem("192.168.99.1".parse().unwrap()).unwrap();
        assert!(
            p.contains("nft insert rule ip docker-bridges filter-FORWARD")
                && p.contains("ip saddr 192.168.99.1")
                && !p.contains("DOCKER-USER"),
            "{p}"
        );
        d.probes[0].outcome = Outcome::Refused;
        assert_eq!(d.problem("192.168.99.1".parse().unwrap()), None);
    }

    #[test]
    fn parses_route_and_image() {
        assert_eq!(
            route_dev("192.168.99.1 dev eth0 src 192.168.99.100 uid 0 \n    cache ").as_deref(),
            Some("eth0")
        );
        assert_eq!(route_dev("local 1.2.3.4 dev $(x)"), None);
        assert!(helper_image("busybox:latest").is_ok());
        assert!(helper_image("registry.example:5000/tools/bb@sha256:ab").is_ok());
        for bad in [
            "",
            "-v",
            "a b",
            "x;y",
            "\u{1b}[2J",
            "a/../../containers/x",
            "a//b",
        ] {
            assert!(helper_image(bad).is_err(), "{bad}");
        }
        assert!(opens_direct_routing(&[(
            "com.docker.network.bridge.gateway_mode_ipv4".into(),
            "routed".into()
        )]));
    }
}
