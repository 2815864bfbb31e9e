//! The engine's networks → the subnets `up` routes, and the ones it skips with the reason. Pure.
//!
//! The engine's answer is untrusted input, like a config file: every name, id and subnet is
//! checked here before anything reaches `plan`. A subnet that would take over the host's own
//! traffic (the default route, anything wider than /8, a range that is not unicast, one that
//! overlaps an address or a directly connected network of the host, the host-only network
//! included) is skipped with its reason, and an answer listing more than [`MAX_NETWORKS`]
//! networks is refused whole.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The most networks an answer may list (Docker's default address pools hold 31 /16 and 256
/// /20 networks; a developer machine has tens).
pub const MAX_NETWORKS: usize = 1000;
/// The widest subnet routed, as for `--subnet`.
pub const WIDEST_PREFIX: u8 = 8;

/// A network as the engine describes it (GET /networks), before any check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listed {
    pub name: Option<String>,
    pub id: Option<String>,
    pub driver: Option<String>,
    pub scope: Option<String>,
    pub internal: Option<bool>,
    /// The `Subnet` of each IPAM config entry, as given.
    pub subnets: Vec<String>,
}

/// A network whose subnet `up` routes through the VM; the record keeps these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    pub id: String,
    pub subnet: Ipv4Net,
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ({})", self.subnet, self.name, short_id(&self.id))
    }
}

/// A network (or one subnet of it) that is not routed, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The name as given, escaped and cut to 64 characters (it is untrusted text).
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    pub reason: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subnet {
            Some(s) => write!(f, "{s} {}: {}", self.name, self.reason),
            None => write!(f, "{}: {}", self.name, self.reason),
        }
    }
}

/// What the host has that no Docker network may cover.
#[derive(Clone, Debug, Default)]
pub struct Host {
    /// Each address of the host with its link's prefix length, and the link's name.
    pub addrs: Vec<(String, Ipv4Net)>,
    /// The VM's host-only network.
    pub host_only: Option<Ipv4Net>,
    /// The fixed subnets (`--subnet`, the config file), routed anyway.
    pub fixed: Vec<Ipv4Net>,
}

impl Host {
    /// The host as its links show it (loopback left out: its range is refused anyway), with the
    /// host-only network and the fixed subnets.
    pub fn new(links: &[crate::net::LinkInfo], host_only: Ipv4Net, fixed: &[Ipv4Net]) -> Host {
        Host {
            addrs: links
                .iter()
                .filter(|l| !l.loopback)
                .flat_map(|l| l.addrs.iter().map(|a| (l.name.clone(), *a)))
                .collect(),
            host_only: Some(host_only),
            fixed: fixed.to_vec(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Filtered {
    pub routed: Vec<Network>,
    pub skipped: Vec<Skipped>,
}

/// Untrusted text, safe to print: escaped, at most 64 characters.
pub fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(64).flat_map(char::escape_default).collect();
    if s.chars().count() > 64 {
        out.push_str("...");
    }
    out
}

fn short_id(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Docker's network names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, here at most 255 bytes.
fn valid_name(n: &str) -> bool {
    let mut b = n.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && n.len() <= 255
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Docker's ids: 64 lower-case hex digits.
fn valid_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// Why `subnet` may not be routed through the VM, if it may not. `routed` are the Docker
/// networks accepted so far.
fn refusal(net: Ipv4Net, host: &Host, routed: &[Network]) -> Option<String> {
    let overlaps = |other: &Ipv4Net| net.contains(other) || other.contains(&net);
    if net.prefix_len() == 0 {
        return Some("the default route (0.0.0.0/0): refused".into());
    }
    if net.prefix_len() < WIDEST_PREFIX {
        return Some(format!("wider than /{WIDEST_PREFIX}: refused"));
    }
    let special: [(Ipv4Net, &str); 6] = [
        (
            Ipv4Net::new_assert([0, 0, 0, 0].into(), 8),
            "\"this network\"",
        ),
        (Ipv4Net::new_assert([127, 0, 0, 0].into(), 8), "loopback"),
        (
            Ipv4Net::new_assert([169, 254, 0, 0].into(), 16),
            "link-local",
        ),
        (Ipv4Net::new_assert([224, 0, 0, 0].into(), 4), "multicast"),
        (Ipv4Net::new_assert([240, 0, 0, 0].into(), 4), "reserved"),
        (
            Ipv4Net::new_assert([100, 64, 0, 0].into(), 10),
            "carrier-grade NAT (VPNs, Tailscale)",
        ),
    ];
    if let Some((_, what)) = special.iter().find(|(s, _)| overlaps(s)) {
        return Some(format!("overlaps the {what} range: refused"));
    }
    if let Some(h) = host.host_only.filter(|h| overlaps(h)) {
        return Some(format!("overlaps the host-only network {h}: refused"));
    }
    if let Some((link, a)) = host.addrs.iter().find(|(_, a)| overlaps(&a.trunc())) {
        return Some(format!(
            "overlaps {link}'s network {} (the host's address {}): refused",
            a.trunc(),
            a.addr()
        ));
    }
    if host.fixed.contains(&net) {
        return Some("routed already as a fixed subnet (--subnet)".into());
    }
    if let Some(f) = host.fixed.iter().find(|f| overlaps(f)) {
        return Some(format!("overlaps the fixed subnet {f}"));
    }
    if let Some(n) = routed.iter().find(|n| overlaps(&n.subnet)) {
        return Some(format!("overlaps network {}'s {}", n.name, n.subnet));
    }
    None
}

/// Check every network the engine listed and pick the subnets to route. `Err`: the answer is
/// refused whole (too many networks).
pub fn filter(listed: &[Listed], host: &Host) -> Result<Filtered, String> {
    if listed.len() > MAX_NETWORKS {
        return Err(format!(
            "the engine lists {} networks, more than the {MAX_NETWORKS} dockroute accepts: refused",
            listed.len()
        ));
    }
    let mut out = Filtered::default();
    let mut ids: std::collections::HashSet<&str> = std::collections::HashSet::new();
    // The engine lists in no fixed order: by name (then id), so the same networks give the same
    // report, record and winner among overlapping subnets each time.
    let mut listed: Vec<&Listed> = listed.iter().collect();
    listed.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    for l in listed {
        let name = l.name.as_deref().unwrap_or("");
        let skip = |subnet: Option<&str>, reason: String| Skipped {
            name: shown(name),
            subnet: subnet.map(shown),
            reason,
        };
        let id = l.id.as_deref().unwrap_or("");
        let whole = if !valid_name(name) {
            Some("not a Docker network name: refused".to_string())
        } else if !valid_id(id) {
            Some(format!(
                "id '{}' is not a Docker network id: refused",
                shown(id)
            ))
        } else if ids.contains(id) {
            Some("listed twice: refused".into())
        } else if l.driver.as_deref() != Some("bridge") {
            Some(format!(
                "driver {}: only bridge networks are routed",
                shown(l.driver.as_deref().unwrap_or("(none)"))
            ))
        } else if l.scope.as_deref() != Some("local") {
            Some(format!(
                "scope {}: only local networks are routed",
                shown(l.scope.as_deref().unwrap_or("(none)"))
            ))
        } else if l.internal == Some(true) {
            Some("internal: its containers are not reachable from outside by design".into())
        } else if l.subnets.is_empty() {
            Some("no subnet".into())
        } else {
            None
        };
        if let Some(reason) = whole {
            out.skipped.push(skip(None, reason));
            continue;
        }
        ids.insert(id);
        for s in &l.subnets {
            if s.contains(':') {
                out.skipped
                    .push(skip(Some(s), "IPv6: not routed yet".into()));
                continue;
            }
            let net = match s.parse::<Ipv4Net>() {
                Ok(n) if n == n.trunc() => n,
                Ok(_) => {
                    out.skipped.push(skip(
                        Some(s),
                        "host bits set: not a network, refused".into(),
                    ));
                    continue;
                }
                Err(_) => {
                    out.skipped
                        .push(skip(Some(s), "not an IPv4 subnet: refused".into()));
                    continue;
                }
            };
            match refusal(net, host, &out.routed) {
                Some(reason) => out.skipped.push(skip(Some(s), reason)),
                None => out.routed.push(Network {
                    name: name.to_string(),
                    id: id.to_string(),
                    subnet: net,
                }),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> String {
        format!("{n:064x}")
    }

    fn bridge(name: &str, n: u32, subnets: &[&str]) -> Listed {
        Listed {
            name: Some(name.into()),
            id: Some(id(n)),
            driver: Some("bridge".into()),
            scope: Some("local".into()),
            internal: Some(false),
            subnets: subnets.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn host() -> Host {
        Host {
            addrs: vec![
                ("eth0".into(), "192.168.1.20/24".parse().unwrap()),
                ("vboxnet0".into(), "192.168.99.1/24".parse().unwrap()),
            ],
            host_only: Some("192.168.99.0/24".parse().unwrap()),
            fixed: vec!["172.17.0.0/16".parse().unwrap()],
        }
    }

    fn reasons(f: &Filtered) -> Vec<String> {
        f.skipped.iter().map(|s| s.to_string()).collect()
    }

    /// Why the network `name` was skipped.
    fn why(f: &Filtered, name: &str) -> String {
        match f.skipped.iter().find(|s| s.name == name) {
            Some(s) => s.reason.clone(),
            None => panic!("{name} not skipped: {:?}", reasons(f)),
        }
    }

    #[test]
    fn the_engines_order_changes_nothing() {
        let listed = vec![
            bridge("b_default", 2, &["172.20.0.0/16"]),
            bridge("a_default", 1, &["172.20.0.0/16"]),
            bridge("c_default", 3, &["172.21.0.0/16"]),
        ];
        let mut reversed = listed.clone();
        reversed.reverse();
        let f = filter(&listed, &host()).unwrap();
        assert_eq!(f, filter(&reversed, &host()).unwrap());
        // of two overlapping networks, the first by name is routed
        let routed: Vec<&str> = f.routed.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(routed, ["a_default", "c_default"]);
        assert_eq!(f.skipped.len(), 1);
        assert_eq!(f.skipped[0].name, "b_default");
    }

    #[test]
    fn routes_local_bridge_networks() {
        let f = filter(
            &[
                bridge("bridge", 1, &["172.17.0.0/16"]),
                bridge("app_default", 2, &["172.18.0.0/16", "fd00::/64"]),
                bridge("web", 3, &["192.168.48.0/20"]),
            ],
            &host(),
        )
        .unwrap();
        let routed: Vec<String> = f.routed.iter().map(|n| n.subnet.to_string()).collect();
        assert_eq!(routed, ["172.18.0.0/16", "192.168.48.0/20"]);
        assert_eq!(f.routed[0].name, "app_default");
        assert_eq!(f.routed[0].id, id(2));
        assert_eq!(
            reasons(&f),
            [
                "fd00::/64 app_default: IPv6: not routed yet",
                "172.17.0.0/16 bridge: routed already as a fixed subnet (--subnet)",
            ]
        );
    }

    #[test]
    fn skips_other_drivers_scopes_and_internal_networks() {
        let mut internal = bridge("secret", 4, &["172.30.0.0/16"]);
        internal.internal = Some(true);
        let mut overlay = bridge("ov", 5, &["10.0.1.0/24"]);
        overlay.driver = Some("overlay".into());
        overlay.scope = Some("swarm".into());
        let mut swarm_bridge = bridge("sb", 6, &["10.0.2.0/24"]);
        swarm_bridge.scope = Some("swarm".into());
        let mut host_net = bridge("host", 7, &[]);
        host_net.driver = Some("host".into());
        let mut macvlan = bridge("mv", 8, &["10.0.3.0/24"]);
        macvlan.driver = Some("macvlan".into());
        let f = filter(
            &[
                internal,
                overlay,
                swarm_bridge,
                host_net,
                macvlan,
                bridge("empty", 9, &[]),
            ],
            &host(),
        )
        .unwrap();
        assert!(f.routed.is_empty());
        assert_eq!(
            reasons(&f),
            [
                "empty: no subnet",
                "host: driver host: only bridge networks are routed",
                "mv: driver macvlan: only bridge networks are routed",
                "ov: driver overlay: only bridge networks are routed",
                "sb: scope swarm: only local networks are routed",
                "secret: internal: its containers are not reachable from outside by design",
            ]
        );
    }

    #[test]
    fn refuses_what_would_hurt_the_host() {
        let f = filter(
            &[
                bridge("all", 1, &["0.0.0.0/0"]),
                bridge("wide", 2, &["10.0.0.0/7"]),
                bridge("lan", 3, &["192.168.0.0/20"]),
                bridge("lan2", 4, &["192.168.1.128/25"]),
                bridge("hostonly", 5, &["192.168.99.0/24"]),
                bridge("lo", 6, &["127.0.0.0/8"]),
                bridge("cgnat", 7, &["100.64.0.0/10"]),
                bridge("bits", 8, &["172.20.0.1/16"]),
                bridge("junk", 9, &["172.20.0.0/33"]),
                bridge("inside", 10, &["172.17.5.0/24"]),
                bridge("a", 11, &["172.21.0.0/16"]),
                bridge("b", 12, &["172.21.128.0/17"]),
            ],
            &host(),
        )
        .unwrap();
        assert_eq!(f.routed.len(), 1, "{:?}", reasons(&f));
        assert_eq!(f.routed[0].name, "a");
        assert!(
            why(&f, "all").contains("default route"),
            "{:?}",
            reasons(&f)
        );
        assert!(why(&f, "wide").contains("wider than /8"));
        assert!(why(&f, "lan").contains("eth0's network 192.168.1.0/24"));
        assert!(why(&f, "lan2").contains("eth0's network"));
        assert!(why(&f, "hostonly").contains("host-only network"));
        assert!(why(&f, "lo").contains("loopback"));
        assert!(why(&f, "cgnat").contains("carrier-grade NAT"));
        assert!(why(&f, "bits").contains("host bits set"));
        assert!(why(&f, "junk").contains("not an IPv4 subnet"));
        assert!(why(&f, "inside").contains("overlaps the fixed subnet 172.17.0.0/16"));
        assert!(why(&f, "b").contains("overlaps network a's 172.21.0.0/16"));
        assert_eq!(f.skipped.len(), 11);
    }

    #[test]
    fn refuses_bad_names_ids_and_too_many() {
        let mut noid = bridge("x", 1, &["172.22.0.0/16"]);
        noid.id = Some("zz".into());
        let f = filter(
            &[
                bridge("bad\nname\x1b[2K", 2, &["172.23.0.0/16"]),
                bridge("", 3, &["172.24.0.0/16"]),
                noid,
                bridge("one", 4, &["172.25.0.0/16"]),
                bridge("two", 4, &["172.26.0.0/16"]),
            ],
            &host(),
        )
        .unwrap();
        assert_eq!(f.routed.len(), 1);
        assert_eq!(f.routed[0].name, "one");
        let r = reasons(&f);
        assert_eq!(r[0], ": not a Docker network name: refused");
        assert_eq!(
            r[1],
            "bad\\nname\\u{1b}[2K: not a Docker network name: refused"
        );
        assert!(r.iter().all(|l| !l.contains(|c: char| c.is_control())));
        assert!(why(&f, "two").contains("listed twice"));
        assert!(why(&f, "x").contains("not a Docker network id"));

        let many: Vec<Listed> = (0..=MAX_NETWORKS as u32)
            .map(|i| bridge(&format!("n{i}"), i, &["10.1.0.0/24"]))
            .collect();
        assert!(filter(&many, &host()).unwrap_err().contains("more than"));
        assert!(filter(&many[..MAX_NETWORKS], &host()).is_ok());
    }
}
