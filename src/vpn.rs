//! Recognising VPN clients from what they leave behind (link names, policy rules, firewall
//! tables and chains), and the vendor switches that fix the same problem at the source. Pure.

use crate::firewall::Repair;
use crate::net::ForeignRule;
use ipnet::Ipv4Net;
use serde::Serialize;

/// A link that looks like a VPN tunnel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VpnLink {
    pub name: String,
    /// The client this name usually belongs to.
    pub client: &'static str,
}

/// The client a link name usually belongs to, if it looks like a tunnel.
pub fn classify(name: &str) -> Option<&'static str> {
    let table: &[(&str, &str)] = &[
        ("cscotun", "Cisco AnyConnect / Secure Client"),
        ("tailscale", "Tailscale"),
        ("nordlynx", "NordVPN"),
        ("pvpn", "Proton VPN (kill switch)"),
        ("ipv6leakintrf", "Proton VPN (kill switch)"),
        ("proton", "Proton VPN"),
        ("gpd", "GlobalProtect"),
        ("ppp", "PPP (openfortivpn, pppd)"),
        ("utun", "macOS tunnel"),
        ("tun", "OpenVPN / OpenConnect (tun)"),
        ("tap", "OpenVPN (tap)"),
    ];
    if name.starts_with("wg") {
        return Some(if name.ends_with("-mullvad") {
            "Mullvad"
        } else {
            "WireGuard"
        });
    }
    table
        .iter()
        .find(|(prefix, _)| name.starts_with(prefix))
        .map(|(_, client)| *client)
}

/// Whether a rule is one of the kernel's three defaults (local, main, default).
pub fn is_default_rule(r: &ForeignRule) -> bool {
    matches!(
        (r.pref, r.text.as_str()),
        (0, "from all lookup local")
            | (32766, "from all lookup main")
            | (32767, "from all lookup default")
    )
}

/// Vendor switches that let the host reach the VM without dockroute's repairs, for the clients
/// seen in links, rules and firewall repairs.
pub fn hints(
    links: &[VpnLink],
    rules: &[ForeignRule],
    fw: &[Repair],
    nets: &[Ipv4Net],
) -> Vec<String> {
    let nets_list: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
    let seen = |needle: &str| {
        links.iter().any(|l| l.client.contains(needle))
            || fw.iter().any(|r| {
                r.table.contains(&needle.to_lowercase()) || r.chain.contains(&needle.to_lowercase())
            })
    };
    let mut out = Vec::new();
    if seen("Mullvad") {
        out.push("Mullvad: `mullvad lan set allow` lets local networks (10/8, 172.16/12, 192.168/16) through its firewall for good".to_string());
    }
    if seen("NordVPN") {
        for n in &nets_list {
            out.push(format!("NordVPN: `nordvpn allowlist add subnet {n}`"));
        }
    }
    if links.iter().any(|l| l.client == "Tailscale")
        || rules.iter().any(|r| r.text.ends_with("lookup 52"))
    {
        out.push("Tailscale: `tailscale set --exit-node-allow-lan-access` covers the host-only network only, not the container subnets behind the VM; dockroute's rules handle both".to_string());
    }
    if seen("AnyConnect") || fw.iter().any(|r| r.chain.starts_with("ciscovpn")) {
        out.push(format!(
            "Cisco AnyConnect: ask the VPN admins for a split-exclude of {}; until then dockroute repairs the ciscovpn chain after every connect (the post-connect hook)",
            nets_list.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_tunnel_names() {
        assert_eq!(
            classify("cscotun0"),
            Some("Cisco AnyConnect / Secure Client")
        );
        assert_eq!(classify("wg0-mullvad"), Some("Mullvad"));
        assert_eq!(classify("wg0"), Some("WireGuard"));
        assert_eq!(classify("tailscale0"), Some("Tailscale"));
        assert_eq!(classify("tun0"), Some("OpenVPN / OpenConnect (tun)"));
        assert_eq!(classify("vboxnet0"), None);
        assert_eq!(classify("eth0"), None);
    }

    #[test]
    fn names_vendor_switches() {
        let links = vec![VpnLink {
            name: "nordlynx".into(),
            client: "NordVPN",
        }];
        let nets: Vec<Ipv4Net> = vec!["172.17.0.0/16".parse().unwrap()];
        let h = hints(&links, &[], &[], &nets);
        assert_eq!(h, ["NordVPN: `nordvpn allowlist add subnet 172.17.0.0/16`"]);
        let rule = ForeignRule {
            pref: 5270,
            dst: None,
            selective: false,
            text: "from all lookup 52".into(),
            protocol: "unspec".into(),
        };
        assert!(hints(&[], &[rule], &[], &nets)[0].starts_with("Tailscale"));
        assert!(hints(&[], &[], &[], &nets).is_empty());
    }
}
