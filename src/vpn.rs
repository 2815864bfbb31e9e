//! Recognising VPN clients from what they leave behind (link names, policy rules, firewall
//! tables and chains), and the vendor switches that fix the same problem at the source. Pure.

use crate::firewall::Repair;
use crate::net::{ForeignRoute, ForeignRule, LinkInfo};
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

/// Link kinds (IFLA_INFO_KIND) that are tunnels whatever their name, and what to call them when
/// the name says nothing more.
const TUNNEL_KINDS: &[(&str, &str)] = &[
    ("tun", "tun/tap device (OpenVPN, OpenConnect, ...)"),
    ("wireguard", "WireGuard"),
    ("ppp", "PPP (openfortivpn, pppd)"),
    ("ovpn", "OpenVPN (data channel offload)"),
    ("ovpn-dco", "OpenVPN (data channel offload)"),
    ("ipip", "IP-in-IP tunnel"),
    ("gre", "GRE tunnel"),
    ("sit", "SIT tunnel"),
    ("vti", "IPsec tunnel (vti)"),
    ("xfrm", "IPsec tunnel (xfrm)"),
];

/// Whether `l` may be a tunnel, judged strictly: a tunnel kind, or a tunnel-like name whatever its
/// kind (a link that could be the VPN's is never taken for the VM's).
pub fn may_be_tunnel(l: &LinkInfo) -> bool {
    let kind = l.kind.as_deref();
    kind.is_some_and(|k| TUNNEL_KINDS.iter().any(|(t, _)| *t == k)) || classify(&l.name).is_some()
}

/// The links that are VPN tunnels, recognised by what they are: a tunnel kind (tun, wireguard,
/// ...), whatever the name. A link whose kind the platform does not report is judged by its name
/// (macOS's utun, older kernels). A link of another kind (veth, dummy, bridge, ...) with a
/// tunnel-like name counts only when routes point at it beyond the kernel's own (a VPN's
/// kill-switch dummy carrying the default route does; a veth that happens to be called `tun0p`
/// does not). Pure.
pub fn tunnels(links: &[LinkInfo], routes: &[ForeignRoute]) -> Vec<VpnLink> {
    links
        .iter()
        .filter(|l| !l.loopback)
        .filter_map(|l| {
            let by_name = classify(&l.name);
            let client = match l.kind.as_deref() {
                None => by_name?,
                Some(kind) => match TUNNEL_KINDS.iter().find(|(k, _)| *k == kind) {
                    Some((k, generic)) => match (by_name, *k) {
                        // a tun device named wg0 is still not WireGuard
                        (Some(c), "tun") if !c.contains("WireGuard") && c != "Mullvad" => c,
                        (Some(c), "wireguard")
                            if c.contains("WireGuard") || c == "Mullvad" || c == "NordVPN" =>
                        {
                            c
                        }
                        (Some(c), "ppp") if c.starts_with("PPP") => c,
                        _ => generic,
                    },
                    None => {
                        let client = by_name?;
                        let routed = routes.iter().any(|r| {
                            r.dev.as_deref() == Some(l.name.as_str())
                                && r.table != 255
                                && r.protocol != "kernel"
                        });
                        if !routed {
                            return None;
                        }
                        client
                    }
                },
            };
            Some(VpnLink {
                name: l.name.clone(),
                client,
            })
        })
        .collect()
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

    fn link(name: &str, kind: Option<&str>) -> LinkInfo {
        LinkInfo {
            index: 7,
            name: name.into(),
            up: true,
            loopback: false,
            addrs: vec![],
            kind: kind.map(str::to_string),
        }
    }

    fn route(dev: &str, table: u32, protocol: &str) -> ForeignRoute {
        ForeignRoute {
            table,
            dst: "0.0.0.0/0".parse().unwrap(),
            kind: "unicast".into(),
            gateway: None,
            dev: Some(dev.into()),
            protocol: protocol.into(),
            metric: 0,
        }
    }

    #[test]
    fn tunnels_are_recognised_by_kind_not_name() {
        let names = |links: &[LinkInfo], routes: &[ForeignRoute]| -> Vec<(String, &str)> {
            tunnels(links, routes)
                .into_iter()
                .map(|l| (l.name, l.client))
                .collect()
        };
        // a veth named like a tunnel, with only the kernel's own routes: not a VPN
        let veth = [link("tun0p", Some("veth"))];
        let kernel = [route("tun0p", 254, "kernel"), route("tun0p", 255, "kernel")];
        assert!(names(&veth, &kernel).is_empty());
        // ... unless something routes through it (a kill switch's dummy)
        assert_eq!(names(&veth, &[route("tun0p", 52, "boot")]).len(), 1);
        // a real tun device with any name
        assert_eq!(
            names(&[link("corp0", Some("tun"))], &[]),
            [(
                "corp0".to_string(),
                "tun/tap device (OpenVPN, OpenConnect, ...)"
            )]
        );
        assert_eq!(
            names(&[link("cscotun0", Some("tun"))], &[])[0].1,
            "Cisco AnyConnect / Secure Client"
        );
        assert_eq!(
            names(&[link("wg0-mullvad", Some("wireguard"))], &[])[0].1,
            "Mullvad"
        );
        assert_eq!(
            names(&[link("home", Some("wireguard"))], &[])[0].1,
            "WireGuard"
        );
        // no kind reported (macOS): the name decides
        assert_eq!(names(&[link("utun3", None)], &[])[0].1, "macOS tunnel");
        assert!(names(&[link("eth0", None), link("br0", Some("bridge"))], &[]).is_empty());
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
