//! Finding the VM and its host-only link.
//!
//! VM IP sources, in order, first that answers: `--vm-ip`, the config file, `--machine NAME`
//! (docker-machine store), `DOCKER_HOST=tcp://IP:PORT`, and the neighbour table of a host-only
//! link (`vboxnet*`, `virbr*`) with exactly one live neighbour. The link is `--interface`, else
//! the link whose IPv4 network contains the VM IP. [`choose`] is pure; [`discover`] feeds it the
//! kernel's view and, with `--wait`, tries again on every link, address or neighbour event.

pub mod dhcpd_leases;

use crate::machine::{self, DockerHost};
use crate::net::{LinkInfo, Neighbour, Net, NetError};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Link names that host-only networks of local VMs get on Linux.
pub const HOST_ONLY_PREFIXES: &[&str] = &["vboxnet", "virbr"];

/// Where the VM IP came from; `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum VmIpSource {
    Flag,
    Config {
        path: PathBuf,
    },
    Machine {
        name: String,
        path: PathBuf,
    },
    DockerHost,
    Neighbour {
        interface: String,
    },
    /// An unexpired lease of macOS's DHCP server for vmnet networks.
    Lease {
        interface: String,
        path: PathBuf,
    },
}

impl fmt::Display for VmIpSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmIpSource::Flag => write!(f, "--vm-ip"),
            VmIpSource::Config { path } => write!(f, "config file {}", path.display()),
            VmIpSource::Machine { name, path } => {
                write!(f, "docker-machine '{name}' ({})", path.display())
            }
            VmIpSource::DockerHost => write!(f, "DOCKER_HOST"),
            VmIpSource::Neighbour { interface } => {
                write!(f, "the neighbour table of {interface}")
            }
            VmIpSource::Lease { interface, path } => {
                write!(f, "the DHCP leases in {} on {interface}", path.display())
            }
        }
    }
}

/// What discovery is asked to find, from settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// The settings flags this `up` was given (or re-applied), for the record.
    pub flags: crate::options::UpFlags,
    /// A bare `up` re-applying the last `up`'s flags: those flags.
    pub replayed: Option<crate::options::UpFlags>,
    pub interface: Option<String>,
    /// A VM IP given directly (flag or config file), with its source.
    pub vm_ip: Option<SourcedIp>,
    pub machine: Option<String>,
    pub docker_host: Option<String>,
    pub subnets: Vec<Ipv4Net>,
    pub wait: Option<Duration>,
}

/// The VM, its link and the subnets behind it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    #[serde(rename = "interface")]
    pub ifname: String,
    pub ifindex: u32,
    /// The host's address on the link, with the link network's prefix length.
    pub host_addr: Ipv4Net,
    pub vm_ip: Ipv4Addr,
    pub vm_ip_source: VmIpSource,
    pub subnets: Vec<Ipv4Net>,
}

impl Target {
    /// The host-only network itself, e.g. 192.168.99.0/24.
    pub fn host_net(&self) -> Ipv4Net {
        self.host_addr.trunc()
    }

    /// Every network reached through the VM's link: the subnets, then the host-only network.
    pub fn networks(&self) -> Vec<Ipv4Net> {
        self.subnets
            .iter()
            .copied()
            .chain([self.host_net()])
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// Something is missing that may still appear (a link, an address, a neighbour).
    #[error("{0}")]
    NotYet(String),
    /// The inputs or the system are such that waiting cannot help.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Net(#[from] NetError),
}

/// A VM IP and where it came from.
pub type SourcedIp = (Ipv4Addr, VmIpSource);

/// Resolve the VM IP from the sources outside the kernel. Returns the IP if one answered, and
/// notes on the sources tried (for the error message if none does).
pub fn external_vm_ip(req: &Request) -> Result<(Option<SourcedIp>, Vec<String>), DiscoverError> {
    if let Some(v) = &req.vm_ip {
        return Ok((Some(v.clone()), vec![]));
    }
    let mut tried = vec!["--vm-ip (not given)".to_string()];
    if let Some(name) = &req.machine {
        let path = machine::machine_config_path(name).map_err(DiscoverError::Invalid)?;
        let ip = machine::read_machine_ip(name, &path).map_err(DiscoverError::Invalid)?;
        let source = VmIpSource::Machine {
            name: name.clone(),
            path,
        };
        return Ok((Some((ip, source)), tried));
    }
    tried.push("--machine (not given)".into());
    match req.docker_host.as_deref() {
        Some(v) if !v.is_empty() => match machine::parse_docker_host(v) {
            DockerHost::Ip(ip) => return Ok((Some((ip, VmIpSource::DockerHost)), tried)),
            DockerHost::NotAnIp(v) => {
                if let Some(host) = machine::docker_host_name(&v) {
                    tracing::warn!(
                        "DOCKER_HOST={v} names a host ({host}), not an IP: dockroute does not resolve names (a name may resolve through the very routes it sets up); ignored, pass --vm-ip"
                    );
                }
                tried.push(format!("DOCKER_HOST ('{v}' is not tcp://IP)"))
            }
        },
        _ => tried.push("DOCKER_HOST (unset)".into()),
    }
    Ok((None, tried))
}

fn is_host_only(name: &str) -> bool {
    HOST_ONLY_PREFIXES.iter().any(|p| name.starts_with(p)) || is_vmnet_bridge(name)
}

/// macOS vmnet networks (Lima, Colima, minikube on vfkit/qemu, VirtualBox 7 host-only networks)
/// appear as `bridge100`, `bridge101`, ...: the number shifts with the order VMs start in.
pub fn is_vmnet_bridge(name: &str) -> bool {
    name.strip_prefix("bridge")
        .filter(|n| n.len() == 3 && n.bytes().all(|b| b.is_ascii_digit()))
        .is_some_and(|n| n.starts_with('1'))
}

/// The one VM with an unexpired lease in `path` (macOS's DHCP server for vmnet) on the
/// host-only links (or on `--interface`), if exactly one.
fn lease_vm(links: &[LinkInfo], req: &Request, path: &std::path::Path) -> Option<SourcedIp> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > dhcpd_leases::MAX_LEN {
        return None;
    }
    let leases = dhcpd_leases::parse(&std::fs::read_to_string(path).ok()?);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    let mut found: Vec<(String, Ipv4Addr)> = Vec::new();
    for l in links.iter().filter(|l| match &req.interface {
        Some(name) => &l.name == name,
        None => !l.loopback && is_host_only(&l.name),
    }) {
        for a in &l.addrs {
            for ip in dhcpd_leases::live_on(&leases, a.trunc(), a.addr(), now) {
                found.push((l.name.clone(), ip));
            }
        }
    }
    match found.as_slice() {
        [(interface, ip)] => Some((
            *ip,
            VmIpSource::Lease {
                interface: interface.clone(),
                path: path.to_path_buf(),
            },
        )),
        _ => None,
    }
}

fn names(links: &[&LinkInfo]) -> String {
    if links.is_empty() {
        return "none".into();
    }
    links
        .iter()
        .map(|l| {
            let addrs: Vec<String> = l.addrs.iter().map(|a| a.to_string()).collect();
            if addrs.is_empty() {
                l.name.clone()
            } else {
                format!("{} {}", l.name, addrs.join(","))
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether `ip` is the network or broadcast address of `net` (which /31 and /32 networks do not
/// have), and which.
pub fn not_a_host(net: Ipv4Net, ip: Ipv4Addr) -> Option<&'static str> {
    if net.prefix_len() >= 31 {
        None
    } else if ip == net.network() {
        Some("network address")
    } else if ip == net.broadcast() {
        Some("broadcast address")
    } else {
        None
    }
}

/// Pick the link and VM from the kernel's view. Pure.
pub fn choose(
    links: &[LinkInfo],
    neighbours: &[Neighbour],
    req: &Request,
    vm: Option<SourcedIp>,
    tried: &[String],
) -> Result<Target, DiscoverError> {
    let usable: Vec<&LinkInfo> = links.iter().filter(|l| !l.loopback).collect();
    let host_only: Vec<&LinkInfo> = usable
        .iter()
        .copied()
        .filter(|l| is_host_only(&l.name))
        .collect();
    if let Some(name) = &req.interface
        && links.iter().any(|l| &l.name == name && l.loopback)
    {
        return Err(DiscoverError::Invalid(format!(
            "--interface {name} is the loopback link: traffic on it never leaves this host, so it cannot reach the VM; name the VM's host-only link ({})",
            names(&host_only)
        )));
    }
    let explicit = match &req.interface {
        Some(name) => Some(*usable.iter().find(|l| &l.name == name).ok_or_else(|| {
            DiscoverError::NotYet(format!(
                "no link named '{name}' (host-only links here: {})",
                names(&host_only)
            ))
        })?),
        None => None,
    };

    let (link, vm_ip, source) = match vm {
        Some((ip, source)) => {
            let link = match explicit {
                Some(l) => {
                    if !l.addrs.iter().any(|a| a.trunc().contains(&ip)) {
                        return Err(DiscoverError::NotYet(format!(
                            "VM IP {ip} is not on {}'s networks ({})",
                            l.name,
                            names(&[l])
                        )));
                    }
                    l
                }
                None => {
                    let on: Vec<&LinkInfo> = usable
                        .iter()
                        .copied()
                        .filter(|l| l.addrs.iter().any(|a| a.trunc().contains(&ip)))
                        .collect();
                    match on.as_slice() {
                        [] => {
                            return Err(DiscoverError::NotYet(format!(
                                "VM IP {ip} (from {source}) is on no local link (links: {}); is the VM's host-only network up?",
                                names(&usable)
                            )));
                        }
                        [l] => *l,
                        many => {
                            return Err(DiscoverError::Invalid(format!(
                                "VM IP {ip} is on several links ({}); pass --interface",
                                names(many)
                            )));
                        }
                    }
                }
            };
            (link, ip, source)
        }
        None => {
            let scope: Vec<&LinkInfo> = match explicit {
                Some(l) => vec![l],
                None => host_only.clone(),
            };
            let mut found: Vec<(&LinkInfo, Ipv4Addr)> = Vec::new();
            for n in neighbours.iter().filter(|n| n.live) {
                if let Some(l) = scope.iter().find(|l| l.index == n.ifindex)
                    && l.addrs
                        .iter()
                        .any(|a| a.trunc().contains(&n.ip) && a.addr() != n.ip)
                    && !found.iter().any(|(_, ip)| *ip == n.ip)
                {
                    found.push((l, n.ip));
                }
            }
            match found.as_slice() {
                [] => {
                    let where_ = match explicit {
                        Some(l) => l.name.clone(),
                        None => format!(
                            "{}* links: {}",
                            HOST_ONLY_PREFIXES.join("*/"),
                            names(&host_only)
                        ),
                    };
                    return Err(DiscoverError::NotYet(format!(
                        "cannot find the VM IP: tried {}, the neighbour table ({where_}: no live neighbour); pass --vm-ip IP or --machine NAME",
                        tried.join(", ")
                    )));
                }
                [(l, ip)] => (
                    *l,
                    *ip,
                    VmIpSource::Neighbour {
                        interface: l.name.clone(),
                    },
                ),
                many => {
                    let list: Vec<String> = many
                        .iter()
                        .map(|(l, ip)| format!("{ip} on {}", l.name))
                        .collect();
                    return Err(DiscoverError::Invalid(format!(
                        "several live neighbours could be the VM ({}); pass --vm-ip",
                        list.join(", ")
                    )));
                }
            }
        }
    };

    let host_addr = *link
        .addrs
        .iter()
        .find(|a| a.trunc().contains(&vm_ip))
        .ok_or_else(|| DiscoverError::NotYet(format!("{} has no address", link.name)))?;
    if host_addr.addr() == vm_ip {
        return Err(DiscoverError::Invalid(format!(
            "VM IP {vm_ip} is this host's own address on {}",
            link.name
        )));
    }
    if let Some(what) = not_a_host(host_addr, vm_ip) {
        return Err(DiscoverError::Invalid(format!(
            "VM IP {vm_ip} is the {what} of {}'s network {}, not a machine on it",
            link.name,
            host_addr.trunc()
        )));
    }
    if !link.up {
        return Err(DiscoverError::NotYet(format!(
            "link {} is down (is the VM running?)",
            link.name
        )));
    }
    for s in &req.subnets {
        if s.contains(&vm_ip) || host_addr.trunc().contains(&s.network()) {
            return Err(DiscoverError::Invalid(format!(
                "subnet {s} overlaps the host-only network {} of {}",
                host_addr.trunc(),
                link.name
            )));
        }
        for l in &usable {
            if let Some(a) = l.addrs.iter().find(|a| s.contains(&a.addr())) {
                return Err(DiscoverError::Invalid(format!(
                    "subnet {s} is already a local network here ({a} on {}): a Docker daemon on this host? pick another --subnet",
                    l.name
                )));
            }
        }
    }
    Ok(Target {
        ifname: link.name.clone(),
        ifindex: link.index,
        host_addr,
        vm_ip,
        vm_ip_source: source,
        subnets: req.subnets.clone(),
    })
}

/// Discover the target; with `req.wait`, keep trying on netlink events until the deadline.
pub async fn discover<N: Net>(net: &mut N, req: &Request) -> Result<Target, DiscoverError> {
    let (vm, tried) = external_vm_ip(req)?;
    let deadline = req.wait.map(|w| Instant::now() + w);
    if deadline.is_some() {
        net.subscribe().await?;
    }
    let start = Instant::now();
    let mut waited = false;
    loop {
        let links = net.links().await?;
        let neighbours = if vm.is_none() {
            net.neighbours().await?
        } else {
            Vec::new()
        };
        let mut chosen = choose(&links, &neighbours, req, vm.clone(), &tried);
        if vm.is_none()
            && let Err(DiscoverError::NotYet(_)) = &chosen
            && let Some(leased) = lease_vm(&links, req, std::path::Path::new(dhcpd_leases::PATH))
        {
            chosen = choose(&links, &[], req, Some(leased), &tried);
        }
        match chosen {
            Ok(t) => {
                if waited {
                    tracing::info!(
                        "found after {:.1}s: {} on {}",
                        start.elapsed().as_secs_f64(),
                        t.vm_ip,
                        t.ifname
                    );
                }
                return Ok(t);
            }
            Err(DiscoverError::NotYet(msg)) => match deadline {
                Some(d) => {
                    if !waited {
                        let secs = req.wait.unwrap_or_default().as_secs_f64();
                        tracing::warn!("waiting up to {secs}s: {msg}");
                        waited = true;
                    } else {
                        tracing::debug!("still waiting: {msg}");
                    }
                    if !net.next_event(d).await? {
                        let secs = req.wait.unwrap_or_default().as_secs_f64();
                        return Err(DiscoverError::NotYet(format!("{msg} (waited {secs}s)")));
                    }
                }
                None => return Err(DiscoverError::NotYet(msg)),
            },
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, addr: &str) -> LinkInfo {
        LinkInfo {
            index,
            name: name.into(),
            up: true,
            loopback: false,
            addrs: if addr.is_empty() {
                vec![]
            } else {
                vec![addr.parse().unwrap()]
            },
            kind: None,
        }
    }

    fn lab() -> Vec<LinkInfo> {
        vec![
            LinkInfo {
                index: 1,
                name: "lo".into(),
                up: true,
                loopback: true,
                addrs: vec!["127.0.0.1/8".parse().unwrap()],
                kind: None,
            },
            link(2, "eth0", "10.0.2.15/24"),
            link(3, "vboxnet0", "192.168.99.1/24"),
            link(4, "virbr0", "192.168.122.1/24"),
        ]
    }

    fn req() -> Request {
        Request {
            subnets: vec!["172.17.0.0/16".parse().unwrap()],
            ..Default::default()
        }
    }

    fn vm(ip: &str) -> Option<(Ipv4Addr, VmIpSource)> {
        Some((ip.parse().unwrap(), VmIpSource::Flag))
    }

    fn neigh(ifindex: u32, ip: &str, live: bool) -> Neighbour {
        Neighbour {
            ifindex,
            ip: ip.parse().unwrap(),
            live,
        }
    }

    fn err(r: Result<Target, DiscoverError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn link_is_the_one_whose_network_holds_the_vm() {
        let t = choose(&lab(), &[], &req(), vm("192.168.99.100"), &[]).unwrap();
        assert_eq!((t.ifname.as_str(), t.ifindex), ("vboxnet0", 3));
        assert_eq!(t.host_addr.to_string(), "192.168.99.1/24");
        assert_eq!(t.host_net().to_string(), "192.168.99.0/24");
    }

    #[test]
    fn explicit_interface_must_exist_and_hold_the_vm() {
        let mut r = req();
        r.interface = Some("vboxnet9".into());
        let e = err(choose(&lab(), &[], &r, vm("192.168.99.100"), &[]));
        assert!(
            e.contains("no link named 'vboxnet9'") && e.contains("vboxnet0 192.168.99.1/24"),
            "{e}"
        );
        r.interface = Some("virbr0".into());
        let e = err(choose(&lab(), &[], &r, vm("192.168.99.100"), &[]));
        assert!(e.contains("is not on virbr0's networks"), "{e}");
    }

    #[test]
    fn vm_on_no_link_says_so() {
        let e = err(choose(&lab(), &[], &req(), vm("10.9.9.9"), &[]));
        assert!(
            e.contains("VM IP 10.9.9.9 (from --vm-ip) is on no local link"),
            "{e}"
        );
    }

    #[test]
    fn vm_on_two_links_is_ambiguous() {
        let mut links = lab();
        links.push(link(5, "vboxnet1", "192.168.99.2/24"));
        let r = choose(&links, &[], &req(), vm("192.168.99.100"), &[]);
        assert!(matches!(r, Err(DiscoverError::Invalid(_))));
        let e = err(r);
        assert!(
            e.contains("vboxnet0") && e.contains("vboxnet1") && e.contains("--interface"),
            "{e}"
        );
    }

    #[test]
    fn single_live_neighbour_on_a_host_only_link_is_the_vm() {
        let n = [
            neigh(2, "10.0.2.2", true),       // the NAT gateway on eth0: not host-only
            neigh(3, "192.168.99.100", true), // the VM
            neigh(3, "192.168.99.101", false), // failed entry
            neigh(4, "192.168.200.5", true),  // not on virbr0's network
        ];
        let t = choose(&lab(), &n, &req(), None, &[]).unwrap();
        assert_eq!(t.vm_ip.to_string(), "192.168.99.100");
        assert_eq!(
            t.vm_ip_source,
            VmIpSource::Neighbour {
                interface: "vboxnet0".into()
            }
        );
    }

    #[test]
    fn several_live_neighbours_are_listed() {
        let n = [
            neigh(3, "192.168.99.100", true),
            neigh(4, "192.168.122.50", true),
        ];
        let e = err(choose(&lab(), &n, &req(), None, &[]));
        assert!(
            e.contains("192.168.99.100 on vboxnet0") && e.contains("192.168.122.50 on virbr0"),
            "{e}"
        );
    }

    #[test]
    fn no_source_names_what_was_tried() {
        let tried = [
            "--vm-ip (not given)".to_string(),
            "DOCKER_HOST (unset)".to_string(),
        ];
        let e = err(choose(&lab(), &[], &req(), None, &tried));
        assert!(
            e.contains("tried --vm-ip (not given), DOCKER_HOST (unset)"),
            "{e}"
        );
        assert!(e.contains("pass --vm-ip IP or --machine NAME"), "{e}");
    }

    #[test]
    fn subnet_that_is_local_or_overlaps_the_link_is_refused() {
        let mut links = lab();
        links.push(link(6, "docker0", "172.17.0.1/16"));
        let e = err(choose(&links, &[], &req(), vm("192.168.99.100"), &[]));
        assert!(
            e.contains("already a local network here (172.17.0.1/16 on docker0)"),
            "{e}"
        );
        let mut r = req();
        r.subnets = vec!["192.168.0.0/16".parse().unwrap()];
        let e = err(choose(&lab(), &[], &r, vm("192.168.99.100"), &[]));
        assert!(e.contains("overlaps the host-only network"), "{e}");
    }

    #[test]
    fn down_link_and_own_address() {
        let mut links = lab();
        links[2].up = false;
        assert!(matches!(
            choose(&links, &[], &req(), vm("192.168.99.100"), &[]),
            Err(DiscoverError::NotYet(_))
        ));
        let e = err(choose(&lab(), &[], &req(), vm("192.168.99.1"), &[]));
        assert!(e.contains("own address"), "{e}");
        for (ip, what) in [("192.168.99.0", "network"), ("192.168.99.255", "broadcast")] {
            let r = choose(&lab(), &[], &req(), vm(ip), &[]);
            assert!(matches!(r, Err(DiscoverError::Invalid(_))), "{ip}");
            assert!(err(r).contains(&format!("{what} address of vboxnet0's network")));
        }
        let mut p2p = lab();
        p2p[2].addrs = vec!["192.168.99.0/31".parse().unwrap()];
        assert!(choose(&p2p, &[], &req(), vm("192.168.99.1"), &[]).is_ok());
    }

    #[test]
    fn external_sources_in_order() {
        let mut r = req();
        r.docker_host = Some("tcp://192.168.99.100:2376".into());
        let (v, _) = external_vm_ip(&r).unwrap();
        assert_eq!(v.unwrap().1, VmIpSource::DockerHost);
        r.vm_ip = vm("192.168.99.7");
        let (v, _) = external_vm_ip(&r).unwrap();
        assert_eq!(v.unwrap().0.to_string(), "192.168.99.7");
        let mut r = req();
        r.docker_host = Some("unix:///var/run/docker.sock".into());
        let (v, tried) = external_vm_ip(&r).unwrap();
        assert!(v.is_none());
        assert!(tried.iter().any(|t| t.contains("is not tcp://IP")));
    }

    #[test]
    fn vmnet_bridges_are_host_only_links_and_leases_name_the_vm() {
        assert!(is_vmnet_bridge("bridge100") && is_vmnet_bridge("bridge101"));
        assert!(!is_vmnet_bridge("bridge0") && !is_vmnet_bridge("bridge1000"));
        assert!(!is_vmnet_bridge("bridge200") && !is_vmnet_bridge("br-1234"));
        let mut links = lab();
        links.push(link(21, "bridge100", "192.168.64.1/24"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dhcpd_leases");
        let far = 0xffff_ffffu64;
        std::fs::write(
            &path,
            format!(
                "{{\n\tname=lima-default\n\tip_address=192.168.64.7\n\thw_address=1,5e:a:bc:0:12:34\n\tlease={far:#x}\n}}\n{{\n\tname=gone\n\tip_address=192.168.64.5\n\tlease=0x10\n}}\n"
            ),
        )
        .unwrap();
        let (ip, source) = lease_vm(&links, &req(), &path).unwrap();
        assert_eq!(ip, Ipv4Addr::new(192, 168, 64, 7));
        let t = choose(&links, &[], &req(), Some((ip, source)), &[]).unwrap();
        assert_eq!(t.ifname, "bridge100");
        assert!(
            t.vm_ip_source.to_string().contains("DHCP leases")
                && t.vm_ip_source.to_string().contains("bridge100"),
            "{}",
            t.vm_ip_source
        );
        // a second live VM makes it ambiguous: no guess
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&format!(
            "{{\n\tip_address=192.168.64.8\n\tlease={far:#x}\n}}\n"
        ));
        std::fs::write(&path, text).unwrap();
        assert_eq!(lease_vm(&links, &req(), &path), None);
        assert_eq!(lease_vm(&links, &req(), &dir.path().join("absent")), None);
    }
}
