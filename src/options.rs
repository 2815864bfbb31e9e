//! The values of options that several layers share: the command line (cli), the config file and
//! its validation (settings), the DNS backends (dns) and the record of the last `up` (record).
//! Plain data: this module imports nothing of dockroute's, so none of those layers has to import
//! another for them.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DnsMode {
    Auto,
    Resolved,
    ResolvConf,
    ResolverDir,
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FirewallMode {
    Auto,
    Off,
}

/// The settings flags of an `up` (and `DOCKER_HOST`, when it named the VM), as the record keeps
/// them so that a bare `up` (a VPN hook's, the boot job's) can do the same again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpFlags {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_ip: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<Ipv4Net>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nameserver: Option<SocketAddrV4>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolver_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firewall: Option<FirewallMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker_host: Option<String>,
    /// `--docker`, or the engine the last `up` found (so the boot job and the hooks, which run
    /// without the user's environment, ask the same one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker: Option<crate::docker::endpoint::Explicit>,
    /// `--open-vm-firewall`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub open_vm_firewall: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helper_image: Option<String>,
}

impl UpFlags {
    /// Whether no settings flag is given (`--wait` and `--dry-run` are not settings).
    pub fn is_empty(&self) -> bool {
        *self == UpFlags::default()
    }

    /// The flags as the record keeps them: only what found `target`. `DOCKER_HOST` is the
    /// environment's, not a flag, and often names something else (an `ssh://` build host, a unix
    /// socket): it is kept only when the VM's IP came from it.
    pub fn used_by(&self, target: &crate::discover::Target) -> UpFlags {
        let mut flags = self.clone();
        if target.vm_ip_source != crate::discover::VmIpSource::DockerHost {
            flags.docker_host = None;
        }
        flags
    }
}

impl std::fmt::Display for UpFlags {
    /// As the command line would give them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        let mut add = |flag: &str, v: Option<String>| {
            if let Some(v) = v {
                parts.push(format!("--{flag} {v}"));
            }
        };
        add("interface", self.interface.clone());
        add("vm-ip", self.vm_ip.map(|v| v.to_string()));
        add("machine", self.machine.clone());
        for s in &self.subnets {
            add("subnet", Some(s.to_string()));
        }
        add("domain", self.domain.clone());
        add("nameserver", self.nameserver.map(|v| v.to_string()));
        add("dns", self.dns.and_then(value_name));
        add(
            "resolver-dir",
            self.resolver_dir.as_ref().map(|p| p.display().to_string()),
        );
        add("firewall", self.firewall.and_then(value_name));
        add("docker", self.docker.as_ref().map(|d| d.to_string()));
        if let Some(d) = &self.docker_host {
            parts.push(format!("DOCKER_HOST={d}"));
        }
        if parts.is_empty() {
            write!(f, "no flags")
        } else {
            write!(f, "{}", parts.join(" "))
        }
    }
}

fn value_name<T: clap::ValueEnum>(v: T) -> Option<String> {
    v.to_possible_value().map(|p| p.get_name().to_string())
}
