//! `/var/db/dhcpd_leases`: the leases macOS's own DHCP server (bootpd) hands out on vmnet
//! networks (Lima, Colima, minikube on vfkit/qemu, Virtualization.framework NAT). Pure.
//!
//! The file is a list of blocks:
//!
//! ```text
//! {
//!     name=lima-default
//!     ip_address=192.168.64.7
//!     hw_address=1,5e:a:bc:0:12:34
//!     identifier=1,5e:a:bc:0:12:34
//!     lease=0x69a1c3f0
//! }
//! ```
//!
//! Inside a block each line starts with a tab. `hw_address` is `<hardware type>,<MAC>` with the
//! leading zeros of each octet dropped; `lease` is the expiry as hexadecimal Unix time. Expired blocks stay in the file, so only
//! leases that have not expired count. VirtualBox's own host-only DHCP does not write here.

use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

pub const PATH: &str = "/var/db/dhcpd_leases";
/// Refuse to read more than this (the file holds a few hundred bytes per VM).
pub const MAX_LEN: u64 = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub name: Option<String>,
    pub ip: Ipv4Addr,
    /// The MAC address, when `hw_address` is Ethernet (type 1) and well formed.
    pub mac: Option<[u8; 6]>,
    /// Expiry, Unix seconds.
    pub expires: Option<u64>,
}

/// The leases in `text`. Blocks without a valid `ip_address` are skipped; text outside blocks
/// and unknown keys are ignored.
pub fn parse(text: &str) -> Vec<Lease> {
    let mut out = Vec::new();
    let mut block: Option<Vec<(&str, &str)>> = None;
    for line in text.lines() {
        let t = line.trim();
        match t {
            "{" => block = Some(Vec::new()),
            "}" => {
                if let Some(kv) = block.take()
                    && let Some(l) = lease(&kv)
                {
                    out.push(l);
                }
            }
            _ => {
                if let (Some(kv), Some((k, v))) = (block.as_mut(), t.split_once('=')) {
                    kv.push((k.trim(), v.trim()));
                }
            }
        }
    }
    out
}

fn lease(kv: &[(&str, &str)]) -> Option<Lease> {
    let get = |key: &str| kv.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let ip = get("ip_address")?.parse().ok()?;
    Some(Lease {
        name: get("name").map(str::to_string),
        ip,
        mac: get("hw_address").and_then(mac),
        expires: get("lease").and_then(|v| {
            let hex = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X"))?;
            u64::from_str_radix(hex, 16).ok()
        }),
    })
}

/// `1,5e:a:bc:0:12:34` → the six octets.
fn mac(v: &str) -> Option<[u8; 6]> {
    let (htype, addr) = v.split_once(',')?;
    if htype.trim() != "1" {
        return None;
    }
    let parts: Vec<&str> = addr.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut out = [0u8; 6];
    for (o, p) in out.iter_mut().zip(parts) {
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        *o = u8::from_str_radix(p, 16).ok()?;
    }
    Some(out)
}

/// The distinct addresses of unexpired leases (at `now`, Unix seconds) on `net`, other than
/// `host` (the Mac's own address there).
pub fn live_on(leases: &[Lease], net: Ipv4Net, host: Ipv4Addr, now: u64) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = Vec::new();
    for l in leases {
        let live = l.expires.is_some_and(|e| e > now);
        if live && net.contains(&l.ip) && l.ip != host && !out.contains(&l.ip) {
            out.push(l.ip);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "{
\tname=lima-default
\tip_address=192.168.64.7
\thw_address=1,5e:a:bc:0:12:34
\tidentifier=1,5e:a:bc:0:12:34
\tlease=0x69a1c3f0
}
{
\tname=old-vm
\tip_address=192.168.64.3
\thw_address=1,2:0:0:0:0:1
\tidentifier=1,2:0:0:0:0:1
\tlease=0x5f000000
}
{
\tname=colima
\tip_address=192.168.106.2
\thw_address=1,52:55:55:a1:b2:c3
\tlease=0x69a1c3f0
}
{
\tname=broken
\tip_address=not-an-ip
\tlease=0x69a1c3f0
}
garbage outside a block
{
\tname=no-end
\tip_address=192.168.64.9
";

    #[test]
    fn reads_blocks_and_the_stripped_mac() {
        let l = parse(FILE);
        assert_eq!(l.len(), 3, "{l:?}");
        assert_eq!(l[0].name.as_deref(), Some("lima-default"));
        assert_eq!(l[0].ip, Ipv4Addr::new(192, 168, 64, 7));
        assert_eq!(l[0].mac, Some([0x5e, 0x0a, 0xbc, 0x00, 0x12, 0x34]));
        assert_eq!(l[0].expires, Some(0x69a1c3f0));
        assert_eq!(mac("6,1:2:3:4:5:6"), None, "not Ethernet");
        assert_eq!(mac("1,1:2:3:4:5"), None);
        assert_eq!(mac("1,1:2:3:4:5:123"), None);
    }

    #[test]
    fn only_unexpired_leases_on_the_network_count() {
        let l = parse(FILE);
        let now = 0x69a1c3f0 - 60;
        let bridge = "192.168.64.0/24".parse().unwrap();
        let host = Ipv4Addr::new(192, 168, 64, 1);
        assert_eq!(
            live_on(&l, bridge, host, now),
            vec![Ipv4Addr::new(192, 168, 64, 7)]
        );
        assert!(
            live_on(&l, bridge, host, 0x69a1c3f0 + 1).is_empty(),
            "all expired"
        );
        assert_eq!(
            live_on(&l, "192.168.106.0/24".parse().unwrap(), host, now),
            vec![Ipv4Addr::new(192, 168, 106, 2)]
        );
    }
}
