//! Input validation shared by command-line flags and the config file.
//!
//! Every function returns a one-line message on failure, so the CLI can print `error: ...` and stop
//! before anything on the system is touched.

use ipnet::Ipv4Net;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

/// A network interface name as the kernel accepts it: 1 to 15 bytes of `[A-Za-z0-9_.-]`.
pub fn interface(s: &str) -> Result<String, String> {
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if s.is_empty() || s.len() > 15 || !ok_chars || s == "." || s == ".." {
        return Err(format!(
            "invalid interface name '{}': use 1 to 15 characters of A-Z a-z 0-9 _ . -",
            s.escape_default()
        ));
    }
    Ok(s.to_string())
}

/// A unicast IPv4 address (no network, broadcast, loopback, multicast or unspecified address).
pub fn ipv4(s: &str) -> Result<Ipv4Addr, String> {
    let ip: Ipv4Addr = s
        .parse()
        .map_err(|_| format!("invalid IPv4 address '{}'", s.escape_default()))?;
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
        return Err(format!("'{ip}' is not a usable unicast IPv4 address"));
    }
    Ok(ip)
}

/// A DNS server: `IP` or `IP:PORT` (port 53 when not given).
pub fn nameserver(s: &str) -> Result<SocketAddrV4, String> {
    let (ip, port) = match s.split_once(':') {
        Some((ip, port)) => {
            let port: u16 =
                port.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
                    format!("invalid nameserver port in '{}'", s.escape_default())
                })?;
            (ip, port)
        }
        None => (s, 53),
    };
    Ok(SocketAddrV4::new(ipv4(ip)?, port))
}

/// An IPv4 network in CIDR form whose host bits are zero, /8 or longer.
pub fn subnet(s: &str) -> Result<Ipv4Net, String> {
    if s.contains(':') {
        return Err(format!(
            "invalid subnet '{}': only IPv4 subnets are supported",
            s.escape_default()
        ));
    }
    let net: Ipv4Net = s.parse().map_err(|_| {
        format!(
            "invalid subnet '{}': expected CIDR like 172.17.0.0/16",
            s.escape_default()
        )
    })?;
    if net.trunc() != net {
        return Err(format!(
            "invalid subnet '{net}': host bits are set (did you mean {}?)",
            net.trunc()
        ));
    }
    if net.prefix_len() < 8 {
        return Err(format!(
            "refusing subnet '{net}': shorter than /8 would send most of the internet to the VM"
        ));
    }
    if net.network().is_loopback()
        || net.network().is_multicast()
        || net.network().is_unspecified()
        || net.network().is_broadcast()
    {
        return Err(format!("refusing subnet '{net}': not a unicast network"));
    }
    Ok(net)
}

/// A DNS domain such as `docker` or `dev.local`: labels of letters, digits and hyphens.
pub fn domain(s: &str) -> Result<String, String> {
    let d = s.trim_end_matches('.').to_ascii_lowercase();
    if d.is_empty() || d.len() > 253 || !d.split('.').all(dns_label) {
        return Err(format!(
            "invalid domain '{}': use labels of letters, digits and hyphens, like docker",
            s.escape_default()
        ));
    }
    Ok(d)
}

/// One label of a host name: 1 to 63 letters, digits and hyphens, no hyphen at either end.
pub fn dns_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && !l.starts_with('-')
        && !l.ends_with('-')
        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A docker-machine name: it becomes a path component, so no separators and no leading dot.
pub fn machine_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !ok {
        return Err(format!(
            "invalid machine name '{}': use letters, digits, _ . - (not starting with '.')",
            s.escape_default()
        ));
    }
    Ok(s.to_string())
}

/// A wait time in seconds (decimals allowed), at most one hour.
pub fn wait_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("invalid --wait '{}': expected seconds", s.escape_default()))?;
    if !secs.is_finite() || !(0.0..=3600.0).contains(&secs) {
        return Err(format!(
            "invalid --wait '{}': expected 0 to 3600 seconds",
            s.escape_default()
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        assert_eq!(interface("vboxnet0").unwrap(), "vboxnet0");
        assert!(interface("br-1.2_x").is_ok());
        assert!(interface("abcdefghijklmno").is_ok()); // 15 bytes
        for bad in [
            "",
            "abcdefghijklmnop",
            "eth 0",
            "eth0;rm",
            "vbox/0",
            "é",
            ".",
            "..",
        ] {
            assert!(interface(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(
            ipv4("192.168.99.100").unwrap(),
            Ipv4Addr::new(192, 168, 99, 100)
        );
        for bad in [
            "",
            "300.1.1.1",
            "1.2.3",
            "0.0.0.0",
            "127.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "1.2.3.4/32",
        ] {
            assert!(ipv4(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn nameservers() {
        assert_eq!(
            nameserver("172.17.0.1").unwrap().to_string(),
            "172.17.0.1:53"
        );
        assert_eq!(nameserver("172.17.0.1:5353").unwrap().port(), 5353);
        for bad in [
            "172.17.0.1:",
            "172.17.0.1:0",
            "172.17.0.1:99999",
            "x:53",
            "::1",
        ] {
            assert!(nameserver(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn subnets() {
        assert_eq!(
            subnet("172.17.0.0/16").unwrap().to_string(),
            "172.17.0.0/16"
        );
        assert!(subnet("10.0.0.0/8").is_ok());
        let e = subnet("172.17.0.1/16").unwrap_err();
        assert!(e.contains("did you mean 172.17.0.0/16"), "{e}");
        for bad in [
            "172.17.0.0",
            "172.17.0.0/33",
            "0.0.0.0/0",
            "0.0.0.0/1",
            "fd00::/64",
            "127.0.0.0/8",
            "junk",
        ] {
            assert!(subnet(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn domains() {
        assert_eq!(domain("Docker.").unwrap(), "docker");
        assert!(domain("dev.local").is_ok());
        for bad in ["", "-x", "a..b", "a b", "x_y", "a/b"] {
            assert!(domain(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn machine_names() {
        assert!(machine_name("default").is_ok());
        for bad in ["", "../etc", ".hidden", "a/b"] {
            assert!(machine_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn waits() {
        assert_eq!(wait_secs("1.5").unwrap(), Duration::from_millis(1500));
        for bad in ["-1", "nan", "inf", "3601", "x"] {
            assert!(wait_secs(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_broadcast_address_is_not_a_subnet() {
        // found by the fuzz target `settings`: `subnets = ["255.255.255.255/32"]` was accepted and
        // made the default nameserver 255.255.255.255, which `nameserver` refuses
        let e = subnet("255.255.255.255/32").unwrap_err();
        assert!(e.contains("not a unicast network"), "{e}");
        assert!(subnet("255.255.255.0/24").is_ok());
    }
}
