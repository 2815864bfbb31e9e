//! Finding the VM and its host-only link.
//!
//! VM IP sources, in order, first that answers: `--vm-ip`, the config file, `--machine NAME`
//! (docker-machine store), `DOCKER_HOST=tcp://IP:PORT`, and the neighbour table of a host-only
//! link (`vboxnet*`, `virbr*`) with exactly one live neighbour. The link is `--interface`, else
//! the link whose IPv4 network contains the VM IP. [`choose`] is pure; [`discover`] feeds it the
//! kernel's view and, with `--wait`, tries again on every link, address or neighbour event.

pub mod dhcpd_leases;

use crate::machine::{self, DockerHost};
use crate::net::{ForeignRoute, LinkInfo, Neighbour, Net, NetError};
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
    /// The VM an earlier `up` found on its own, from the record: kept.
    pub pinned: Option<Pin>,
}

/// The VM an earlier `up` found on its own (the neighbour table, a DHCP lease), as its record
/// says: later runs keep it, report any other candidate and never adopt one; `down` forgets it
/// with the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    pub ip: Ipv4Addr,
    pub lladdr: Option<String>,
    pub ifname: String,
    pub source: VmIpSource,
}

impl Pin {
    /// The pin a recorded target stands for: only a VM that discovery found itself (an IP
    /// given by a flag, a file or DOCKER_HOST is taken from there again).
    pub fn of(t: &Target) -> Option<Pin> {
        matches!(
            t.vm_ip_source,
            VmIpSource::Neighbour { .. } | VmIpSource::Lease { .. }
        )
        .then(|| Pin {
            ip: t.vm_ip,
            lladdr: t.vm_lladdr.clone(),
            ifname: t.ifname.clone(),
            source: t.vm_ip_source.clone(),
        })
    }
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
    /// The VM's link-layer address, when discovery found it in the neighbour table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_lladdr: Option<String>,
    /// Other live neighbours on the host-only links besides the recorded VM (`IP (LLADDR) on
    /// LINK`): reported, never adopted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub others: Vec<String>,
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
        None => is_host_only_link(l),
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

/// The kernel's view [`choose`] picks from.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub links: Vec<LinkInfo>,
    pub neighbours: Vec<Neighbour>,
    /// The links a default route (of any table) leaves by: this host's ways out, never the VM's.
    pub default_links: Vec<String>,
}

/// The links that default routes (in any table) leave by.
pub fn default_links(routes: &[ForeignRoute]) -> Vec<String> {
    let mut out: Vec<String> = routes
        .iter()
        .filter(|r| r.dst.prefix_len() == 0 && r.kind == "unicast")
        .filter_map(|r| r.dev.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The widest host-only network dockroute routes and opens firewalls for: a /16. Host-only
/// networks are /24s (VirtualBox, libvirt, vmnet); anything wider is a LAN or a carrier network
/// that a rewritten config file or a misconfigured link would open to the whole VPN bypass.
pub const WIDEST_HOST_NET: u8 = 16;

/// Sources of the VM IP that a user who is not root can change: docker-machine's `config.json`
/// (in the user's home) and `DOCKER_HOST` (the user's environment). An IP from them is trusted
/// only on a host-only link, unless root named the link.
fn user_controlled(source: &VmIpSource) -> bool {
    matches!(source, VmIpSource::Machine { .. } | VmIpSource::DockerHost)
}

/// A host-only link by name (`vboxnet*`, `virbr*`, `bridge1NN`) and by kind (not a tunnel).
fn is_host_only_link(l: &LinkInfo) -> bool {
    !l.loopback && is_host_only(&l.name) && !crate::vpn::may_be_tunnel(l)
}

/// What the neighbour table gave: the VM, its link-layer address, and the other candidates.
struct Picked<'a> {
    link: &'a LinkInfo,
    ip: Ipv4Addr,
    source: VmIpSource,
    lladdr: Option<String>,
    others: Vec<String>,
}

/// Pick the link and VM from the kernel's view. Pure.
pub fn choose(
    view: &View,
    req: &Request,
    vm: Option<SourcedIp>,
    tried: &[String],
) -> Result<Target, DiscoverError> {
    let usable: Vec<&LinkInfo> = view.links.iter().filter(|l| !l.loopback).collect();
    let host_only: Vec<&LinkInfo> = usable
        .iter()
        .copied()
        .filter(|l| is_host_only_link(l))
        .collect();
    let explicit = named_link(&view.links, &usable, &host_only, req)?;
    let picked = match vm {
        Some((ip, source)) => Picked {
            link: link_holding(&usable, explicit, ip, &source)?,
            ip,
            source,
            lladdr: None,
            others: Vec::new(),
        },
        None => from_neighbours(&view.neighbours, req, explicit, &host_only, tried)?,
    };
    let link = picked.link;
    trust_link(view, req, link, picked.ip, &picked.source)?;
    let host_addr = on_link(link, picked.ip)?;
    check_subnets(&usable, link, host_addr, picked.ip, &req.subnets)?;
    Ok(Target {
        ifname: link.name.clone(),
        ifindex: link.index,
        host_addr,
        vm_ip: picked.ip,
        vm_ip_source: picked.source,
        subnets: req.subnets.clone(),
        vm_lladdr: picked.lladdr,
        others: picked.others,
    })
}

/// The link `--interface` names, if it does: it must exist and not be the loopback link.
fn named_link<'a>(
    links: &[LinkInfo],
    usable: &[&'a LinkInfo],
    host_only: &[&LinkInfo],
    req: &Request,
) -> Result<Option<&'a LinkInfo>, DiscoverError> {
    let Some(name) = &req.interface else {
        return Ok(None);
    };
    if links.iter().any(|l| &l.name == name && l.loopback) {
        return Err(DiscoverError::Invalid(format!(
            "--interface {name} is the loopback link: traffic on it never leaves this host, so it cannot reach the VM; name the VM's host-only link ({})",
            names(host_only)
        )));
    }
    let found = usable.iter().find(|l| &l.name == name).ok_or_else(|| {
        DiscoverError::NotYet(format!(
            "no link named '{name}' (host-only links here: {})",
            names(host_only)
        ))
    })?;
    Ok(Some(*found))
}

/// The link whose network holds `ip`: `explicit` if given (it must hold it), else the one link.
fn link_holding<'a>(
    usable: &[&'a LinkInfo],
    explicit: Option<&'a LinkInfo>,
    ip: Ipv4Addr,
    source: &VmIpSource,
) -> Result<&'a LinkInfo, DiscoverError> {
    if let Some(l) = explicit {
        if !l.addrs.iter().any(|a| a.trunc().contains(&ip)) {
            return Err(DiscoverError::NotYet(format!(
                "VM IP {ip} is not on {}'s networks ({})",
                l.name,
                names(&[l])
            )));
        }
        return Ok(l);
    }
    let on: Vec<&LinkInfo> = usable
        .iter()
        .copied()
        .filter(|l| l.addrs.iter().any(|a| a.trunc().contains(&ip)))
        .collect();
    match on.as_slice() {
        [] => Err(DiscoverError::NotYet(format!(
            "VM IP {ip} (from {source}) is on no local link (links: {}); is the VM's host-only network up?",
            names(usable)
        ))),
        [l] => Ok(*l),
        many => Err(DiscoverError::Invalid(format!(
            "VM IP {ip} is on several links ({}); pass --interface",
            names(many)
        ))),
    }
}

/// How a neighbour is named in reports: `IP (LLADDR) on LINK`.
fn describe(ip: Ipv4Addr, lladdr: Option<&str>, link: &str) -> String {
    match lladdr {
        Some(ll) => format!("{ip} ({ll}) on {link}"),
        None => format!("{ip} on {link}"),
    }
}

/// The VM from the neighbour table: the recorded one ([`Pin`]) if there is one, else the one live
/// neighbour on the host-only links (or on `--interface`).
fn from_neighbours<'a>(
    neighbours: &'a [Neighbour],
    req: &Request,
    explicit: Option<&'a LinkInfo>,
    host_only: &[&'a LinkInfo],
    tried: &[String],
) -> Result<Picked<'a>, DiscoverError> {
    let scope: Vec<&LinkInfo> = match explicit {
        Some(l) => vec![l],
        None => host_only.to_vec(),
    };
    let mut found: Vec<(&LinkInfo, &Neighbour)> = Vec::new();
    for n in neighbours.iter().filter(|n| n.live) {
        if let Some(l) = scope.iter().find(|l| l.index == n.ifindex)
            && l.addrs
                .iter()
                .any(|a| a.trunc().contains(&n.ip) && a.addr() != n.ip)
            && !found.iter().any(|(_, m)| m.ip == n.ip)
        {
            found.push((l, n));
        }
    }
    if let Some(pin) = &req.pinned {
        return keep_pinned(pin, &scope, &found);
    }
    match found.as_slice() {
        [] => {
            let where_ = match explicit {
                Some(l) => l.name.clone(),
                None => format!(
                    "{}* links: {}",
                    HOST_ONLY_PREFIXES.join("*/"),
                    names(host_only)
                ),
            };
            Err(DiscoverError::NotYet(format!(
                "cannot find the VM IP: tried {}, the neighbour table ({where_}: no live neighbour); pass --vm-ip IP or --machine NAME",
                tried.join(", ")
            )))
        }
        [(l, n)] => Ok(Picked {
            link: l,
            ip: n.ip,
            source: VmIpSource::Neighbour {
                interface: l.name.clone(),
            },
            lladdr: n.lladdr.clone(),
            others: Vec::new(),
        }),
        many => {
            let list: Vec<String> = many
                .iter()
                .map(|(l, n)| describe(n.ip, n.lladdr.as_deref(), &l.name))
                .collect();
            Err(DiscoverError::Invalid(format!(
                "several live neighbours could be the VM ({}); pass --vm-ip",
                list.join(", ")
            )))
        }
    }
}

/// The recorded VM, kept whatever else answers now. It is the neighbour with its link-layer
/// address, at whatever address it has now (a VM whose DHCP lease moved), else its recorded
/// address; another neighbour is reported in [`Target::others`], and the VM's address answered
/// from another link-layer address is refused (some other machine took it).
fn keep_pinned<'a>(
    pin: &Pin,
    scope: &[&'a LinkInfo],
    found: &[(&'a LinkInfo, &Neighbour)],
) -> Result<Picked<'a>, DiscoverError> {
    let link = scope.iter().find(|l| l.name == pin.ifname).ok_or_else(|| {
        DiscoverError::NotYet(format!(
            "the recorded VM {} was on {}, which is gone (run `dockroute down` to forget it)",
            pin.ip, pin.ifname
        ))
    })?;
    let on_link = |n: &&(&LinkInfo, &Neighbour)| n.0.index == link.index;
    let moved = pin.lladdr.as_ref().and_then(|want| {
        found
            .iter()
            .filter(on_link)
            .find(|(_, n)| n.lladdr.as_ref() == Some(want))
    });
    let at_ip = found.iter().filter(on_link).find(|(_, n)| n.ip == pin.ip);
    let ip = match (moved, at_ip) {
        (Some((_, n)), _) => n.ip,
        (None, Some((_, n))) => match (&pin.lladdr, &n.lladdr) {
            (Some(want), Some(now)) if want != now => {
                return Err(DiscoverError::Invalid(format!(
                    "the recorded VM {} ({want}) on {} now answers from {now}: another machine holds its address, and dockroute does not adopt it; if the VM was re-created, `dockroute down` forgets the old one",
                    pin.ip, pin.ifname
                )));
            }
            _ => n.ip,
        },
        (None, None) => pin.ip,
    };
    let lladdr = pin
        .lladdr
        .clone()
        .or_else(|| at_ip.or(moved).and_then(|(_, n)| n.lladdr.clone()));
    let others = found
        .iter()
        .filter(|(_, n)| n.ip != ip)
        .map(|(l, n)| describe(n.ip, n.lladdr.as_deref(), &l.name))
        .collect();
    Ok(Picked {
        link,
        ip,
        source: pin.source.clone(),
        lladdr,
        others,
    })
}

/// Whether `link` may be the VM's: never a tunnel, nor a link a default route leaves by (even
/// when root names it); and when the VM IP comes from something a user controls, a host-only
/// link only, unless root named the link (`--interface`, the config file's `interface`).
fn trust_link(
    view: &View,
    req: &Request,
    link: &LinkInfo,
    ip: Ipv4Addr,
    source: &VmIpSource,
) -> Result<(), DiscoverError> {
    let refuse = "dockroute routes and opens firewalls only for a local VM's host-only link";
    if crate::vpn::may_be_tunnel(link) {
        return Err(DiscoverError::Invalid(format!(
            "VM IP {ip} (from {source}) is on {}, which is a tunnel ({}): {refuse}",
            link.name,
            link.kind.as_deref().unwrap_or("by its name")
        )));
    }
    if view.default_links.contains(&link.name) {
        return Err(DiscoverError::Invalid(format!(
            "VM IP {ip} (from {source}) is on {}, which carries a default route (this host's way out, not a link to a VM): {refuse}",
            link.name
        )));
    }
    if user_controlled(source) && req.interface.is_none() && !is_host_only_link(link) {
        return Err(DiscoverError::Invalid(format!(
            "VM IP {ip} (from {source}, which a user can change) is on {}, which is not a host-only link ({}*, bridge1NN): {refuse}; if the VM really is there, name the link as root (--interface {}, or `interface` in the config file)",
            link.name,
            HOST_ONLY_PREFIXES.join("*, "),
            link.name
        )));
    }
    Ok(())
}

/// The host's address on `link` whose network holds the VM, checked: the VM is not the host, nor
/// the network or broadcast address; the network is at most [`WIDEST_HOST_NET`] wide; the link
/// is up.
fn on_link(link: &LinkInfo, vm_ip: Ipv4Addr) -> Result<Ipv4Net, DiscoverError> {
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
    if host_addr.prefix_len() < WIDEST_HOST_NET {
        return Err(DiscoverError::Invalid(format!(
            "{}'s network {} is wider than a /{WIDEST_HOST_NET}: dockroute would route all of it around a VPN and open all of it in the VPN's firewall; a host-only network is usually a /24",
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
    Ok(host_addr)
}

/// The subnets neither overlap the host-only network nor are local networks here.
fn check_subnets(
    usable: &[&LinkInfo],
    link: &LinkInfo,
    host_addr: Ipv4Net,
    vm_ip: Ipv4Addr,
    subnets: &[Ipv4Net],
) -> Result<(), DiscoverError> {
    for s in subnets {
        if s.contains(&vm_ip) || host_addr.trunc().contains(&s.network()) {
            return Err(DiscoverError::Invalid(format!(
                "subnet {s} overlaps the host-only network {} of {}",
                host_addr.trunc(),
                link.name
            )));
        }
        for l in usable {
            if let Some(a) = l.addrs.iter().find(|a| s.contains(&a.addr())) {
                return Err(DiscoverError::Invalid(format!(
                    "subnet {s} is already a local network here ({a} on {}): a Docker daemon on this host? pick another --subnet",
                    l.name
                )));
            }
        }
    }
    Ok(())
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
        let default_links = default_links(&net.snapshot_near(&[], &[]).await?.foreign_routes);
        let mut view = View {
            links,
            neighbours,
            default_links,
        };
        let mut chosen = choose(&view, req, vm.clone(), &tried);
        if vm.is_none()
            && let Err(DiscoverError::NotYet(_)) = &chosen
            && let Some(leased) =
                lease_vm(&view.links, req, std::path::Path::new(dhcpd_leases::PATH))
        {
            view.neighbours.clear();
            chosen = choose(&view, req, Some(leased), &tried);
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
                for other in &t.others {
                    tracing::warn!(
                        "{other} also answers on a host-only link: not the recorded VM {} ({}), left alone",
                        t.vm_ip,
                        t.vm_lladdr
                            .as_deref()
                            .unwrap_or("link-layer address unknown")
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

    fn at(links: Vec<LinkInfo>, neighbours: &[Neighbour]) -> View {
        View {
            links,
            neighbours: neighbours.to_vec(),
            default_links: vec![],
        }
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
            lladdr: live.then(|| format!("02:00:00:00:{:02x}:01", ifindex)),
        }
    }

    fn err(r: Result<Target, DiscoverError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn link_is_the_one_whose_network_holds_the_vm() {
        let t = choose(&at(lab(), &[]), &req(), vm("192.168.99.100"), &[]).unwrap();
        assert_eq!((t.ifname.as_str(), t.ifindex), ("vboxnet0", 3));
        assert_eq!(t.host_addr.to_string(), "192.168.99.1/24");
        assert_eq!(t.host_net().to_string(), "192.168.99.0/24");
    }

    #[test]
    fn explicit_interface_must_exist_and_hold_the_vm() {
        let mut r = req();
        r.interface = Some("vboxnet9".into());
        let e = err(choose(&at(lab(), &[]), &r, vm("192.168.99.100"), &[]));
        assert!(
            e.contains("no link named 'vboxnet9'") && e.contains("vboxnet0 192.168.99.1/24"),
            "{e}"
        );
        r.interface = Some("virbr0".into());
        let e = err(choose(&at(lab(), &[]), &r, vm("192.168.99.100"), &[]));
        assert!(e.contains("is not on virbr0's networks"), "{e}");
    }

    #[test]
    fn vm_on_no_link_says_so() {
        let e = err(choose(&at(lab(), &[]), &req(), vm("10.9.9.9"), &[]));
        assert!(
            e.contains("VM IP 10.9.9.9 (from --vm-ip) is on no local link"),
            "{e}"
        );
    }

    #[test]
    fn vm_on_two_links_is_ambiguous() {
        let mut links = lab();
        links.push(link(5, "vboxnet1", "192.168.99.2/24"));
        let r = choose(&at(links.clone(), &[]), &req(), vm("192.168.99.100"), &[]);
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
        let t = choose(&at(lab(), &n), &req(), None, &[]).unwrap();
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
        let e = err(choose(&at(lab(), &n), &req(), None, &[]));
        assert!(
            e.contains("192.168.99.100 (02:00:00:00:03:01) on vboxnet0")
                && e.contains("192.168.122.50 (02:00:00:00:04:01) on virbr0"),
            "{e}"
        );
    }

    #[test]
    fn no_source_names_what_was_tried() {
        let tried = [
            "--vm-ip (not given)".to_string(),
            "DOCKER_HOST (unset)".to_string(),
        ];
        let e = err(choose(&at(lab(), &[]), &req(), None, &tried));
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
        let e = err(choose(
            &at(links.clone(), &[]),
            &req(),
            vm("192.168.99.100"),
            &[],
        ));
        assert!(
            e.contains("already a local network here (172.17.0.1/16 on docker0)"),
            "{e}"
        );
        let mut r = req();
        r.subnets = vec!["192.168.0.0/16".parse().unwrap()];
        let e = err(choose(&at(lab(), &[]), &r, vm("192.168.99.100"), &[]));
        assert!(e.contains("overlaps the host-only network"), "{e}");
    }

    #[test]
    fn down_link_and_own_address() {
        let mut links = lab();
        links[2].up = false;
        assert!(matches!(
            choose(&at(links.clone(), &[]), &req(), vm("192.168.99.100"), &[]),
            Err(DiscoverError::NotYet(_))
        ));
        let e = err(choose(&at(lab(), &[]), &req(), vm("192.168.99.1"), &[]));
        assert!(e.contains("own address"), "{e}");
        for (ip, what) in [("192.168.99.0", "network"), ("192.168.99.255", "broadcast")] {
            let r = choose(&at(lab(), &[]), &req(), vm(ip), &[]);
            assert!(matches!(r, Err(DiscoverError::Invalid(_))), "{ip}");
            assert!(err(r).contains(&format!("{what} address of vboxnet0's network")));
        }
        let mut p2p = lab();
        p2p[2].addrs = vec!["192.168.99.0/31".parse().unwrap()];
        assert!(choose(&at(p2p.clone(), &[]), &req(), vm("192.168.99.1"), &[]).is_ok());
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

    fn machine_ip(ip: &str) -> Option<SourcedIp> {
        Some((
            ip.parse().unwrap(),
            VmIpSource::Machine {
                name: "default".into(),
                path: "/home/alice/.docker/machine/machines/default/config.json".into(),
            },
        ))
    }

    fn lan() -> Vec<LinkInfo> {
        let mut links = lab();
        links.push(link(7, "wlan0", "10.77.0.2/24"));
        links
    }

    #[test]
    fn a_user_controlled_vm_ip_is_trusted_only_on_a_host_only_link() {
        // docker-machine's config.json (or DOCKER_HOST) naming an address on the LAN: refused
        let e = err(choose(
            &at(lan(), &[]),
            &req(),
            machine_ip("10.77.0.50"),
            &[],
        ));
        assert!(
            e.contains("which a user can change) is on wlan0, which is not a host-only link")
                && e.contains("--interface wlan0"),
            "{e}"
        );
        let docker_host = Some(("10.77.0.50".parse().unwrap(), VmIpSource::DockerHost));
        assert!(matches!(
            choose(&at(lan(), &[]), &req(), docker_host, &[]),
            Err(DiscoverError::Invalid(_))
        ));
        // on a host-only link it is the VM as before
        assert!(choose(&at(lan(), &[]), &req(), machine_ip("192.168.99.100"), &[]).is_ok());
        // root named the link: accepted; so is an IP root gave
        let mut r = req();
        r.interface = Some("wlan0".into());
        let t = choose(&at(lan(), &[]), &r, machine_ip("10.77.0.50"), &[]).unwrap();
        assert_eq!(t.ifname, "wlan0");
        assert!(choose(&at(lan(), &[]), &req(), vm("10.77.0.50"), &[]).is_ok());
    }

    #[test]
    fn a_default_route_link_or_a_tunnel_is_never_the_vms_even_when_named() {
        let mut r = req();
        r.interface = Some("wlan0".into());
        let mut view = at(lan(), &[]);
        view.default_links = vec!["wlan0".into()];
        let e = err(choose(&view, &r, vm("10.77.0.50"), &[]));
        assert!(e.contains("wlan0, which carries a default route"), "{e}");
        // a tunnel by kind, whatever its name, and by name
        for (name, kind) in [("vboxnet5", Some("wireguard")), ("tun0", Some("veth"))] {
            let mut links = lab();
            let mut l = link(8, name, "10.8.0.2/24");
            l.kind = kind.map(Into::into);
            links.push(l);
            let mut r = req();
            r.interface = Some(name.into());
            let e = err(choose(&at(links, &[]), &r, vm("10.8.0.1"), &[]));
            assert!(e.contains(&format!("on {name}, which is a tunnel")), "{e}");
        }
        // a wireguard link named like a host-only one is no host-only link for neighbours either
        let mut links = lab();
        links[2].kind = Some("wireguard".into());
        let n = [neigh(3, "192.168.99.100", true)];
        assert!(choose(&at(links, &n), &req(), None, &[]).is_err());
    }

    #[test]
    fn a_host_network_wider_than_a_16_is_refused() {
        let mut links = lab();
        links[2].addrs = vec!["10.0.0.1/8".parse().unwrap()];
        let e = err(choose(&at(links.clone(), &[]), &req(), vm("10.1.2.3"), &[]));
        assert!(e.contains("10.0.0.0/8 is wider than a /16"), "{e}");
        links[2].addrs = vec!["10.9.0.1/16".parse().unwrap()];
        assert!(choose(&at(links, &[]), &req(), vm("10.9.2.3"), &[]).is_ok());
    }

    #[test]
    fn default_links_are_those_of_default_routes_in_any_table() {
        let route = |table, dst: &str, dev: &str, kind: &str| ForeignRoute {
            table,
            dst: dst.parse().unwrap(),
            kind: kind.into(),
            gateway: None,
            dev: Some(dev.into()),
            protocol: "boot".into(),
            metric: 0,
        };
        let routes = [
            route(254, "0.0.0.0/0", "wlan0", "unicast"),
            route(51820, "0.0.0.0/0", "wg0", "unicast"),
            route(254, "0.0.0.0/0", "lo", "blackhole"),
            route(254, "192.168.99.0/24", "vboxnet0", "unicast"),
        ];
        assert_eq!(default_links(&routes), ["wg0", "wlan0"]);
    }

    fn pinned(ip: &str, lladdr: &str) -> Request {
        let mut r = req();
        r.pinned = Some(Pin {
            ip: ip.parse().unwrap(),
            lladdr: Some(lladdr.into()),
            ifname: "vboxnet0".into(),
            source: VmIpSource::Neighbour {
                interface: "vboxnet0".into(),
            },
        });
        r
    }

    #[test]
    fn the_recorded_vm_is_kept_and_another_neighbour_reported() {
        let mine = "02:00:00:00:03:01";
        // the VM went quiet and another host answers: the VM stays, the other is reported
        let mut other = neigh(3, "192.168.99.200", true);
        other.lladdr = Some("02:00:00:00:99:99".into());
        let n = [neigh(3, "192.168.99.100", false), other];
        let t = choose(&at(lab(), &n), &pinned("192.168.99.100", mine), None, &[]).unwrap();
        assert_eq!(t.vm_ip.to_string(), "192.168.99.100");
        assert_eq!(t.vm_lladdr.as_deref(), Some(mine));
        assert_eq!(t.others, ["192.168.99.200 (02:00:00:00:99:99) on vboxnet0"]);
        // two live candidates: no error, the recorded one
        let n = [
            neigh(3, "192.168.99.100", true),
            neigh(4, "192.168.122.50", true),
        ];
        let t = choose(&at(lab(), &n), &pinned("192.168.99.100", mine), None, &[]).unwrap();
        assert_eq!(t.vm_ip.to_string(), "192.168.99.100");
        assert_eq!(t.others, ["192.168.122.50 (02:00:00:00:04:01) on virbr0"]);
        // the VM's address answered from another link-layer address: refused
        let e = err(choose(
            &at(lab(), &n),
            &pinned("192.168.99.100", "08:00:27:00:00:01"),
            None,
            &[],
        ));
        assert!(
            e.contains("now answers from 02:00:00:00:03:01") && e.contains("does not adopt"),
            "{e}"
        );
        // the VM itself (its link-layer address) at a new address is followed
        let mut moved = neigh(3, "192.168.99.101", true);
        moved.lladdr = Some("08:00:27:00:00:01".into());
        let n = [moved, neigh(3, "192.168.99.100", true)];
        let r = pinned("192.168.99.100", "08:00:27:00:00:01");
        let t = choose(&at(lab(), &n), &r, None, &[]).unwrap();
        assert_eq!(t.vm_ip.to_string(), "192.168.99.101");
        assert_eq!(t.others, ["192.168.99.100 (02:00:00:00:03:01) on vboxnet0"]);
        // only a VM discovery found is pinned
        let mut t = t;
        assert!(Pin::of(&t).is_some());
        t.vm_ip_source = VmIpSource::DockerHost;
        assert!(Pin::of(&t).is_none());
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
        let t = choose(&at(links.clone(), &[]), &req(), Some((ip, source)), &[]).unwrap();
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
