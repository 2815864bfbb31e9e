//! What macOS's resolver configuration says for a domain: `scutil --dns` lists one resolver per
//! `/etc/resolver` file (and per network service), and that list, not the file, is what
//! applications' lookups go through. The parser is pure; [`describe`] runs
//! `/usr/sbin/scutil --dns` where it exists (macOS) and says nothing elsewhere.

/// One `resolver #N` block of `scutil --dns` (the unscoped part, before
/// `DNS configuration (for scoped queries)`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolver {
    pub number: u32,
    pub domain: Option<String>,
    pub nameservers: Vec<String>,
    pub port: Option<u16>,
    pub flags: Option<String>,
    pub reach: Option<String>,
}

/// The unscoped resolvers of `scutil --dns` output.
pub fn parse(text: &str) -> Vec<Resolver> {
    let mut out: Vec<Resolver> = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("DNS configuration (") {
            break;
        }
        if let Some(n) = t.strip_prefix("resolver #") {
            out.push(Resolver {
                number: n.trim().parse().unwrap_or(0),
                ..Default::default()
            });
            continue;
        }
        let (Some(r), Some((key, value))) = (out.last_mut(), t.split_once(" : ")) else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim().to_string());
        if key == "domain" {
            r.domain = Some(value);
        } else if key.starts_with("nameserver[") {
            r.nameservers.push(value);
        } else if key == "port" {
            r.port = value.parse().ok();
        } else if key == "flags" {
            r.flags = Some(value);
        } else if key == "reach" {
            r.reach = Some(value);
        }
    }
    out
}

/// The resolvers for exactly `domain` (case and a trailing dot ignored).
pub fn for_domain<'a>(all: &'a [Resolver], domain: &str) -> Vec<&'a Resolver> {
    let want = domain.trim_end_matches('.');
    all.iter()
        .filter(|r| {
            r.domain
                .as_deref()
                .is_some_and(|d| d.trim_end_matches('.').eq_ignore_ascii_case(want))
        })
        .collect()
}

/// One line for `status`.
pub fn summary(all: &[Resolver], domain: &str) -> String {
    let found = for_domain(all, domain);
    if found.is_empty() {
        return format!("scutil --dns: no resolver for {domain} (yet)");
    }
    let parts: Vec<String> = found
        .iter()
        .map(|r| {
            let mut s = format!(
                "resolver #{}: nameserver {}",
                r.number,
                if r.nameservers.is_empty() {
                    "none".to_string()
                } else {
                    r.nameservers.join(" ")
                }
            );
            if let Some(p) = r.port {
                s.push_str(&format!(" port {p}"));
            }
            if let Some(reach) = &r.reach {
                s.push_str(&format!(", reach {reach}"));
            }
            s
        })
        .collect();
    format!("scutil --dns for {domain}: {}", parts.join("; "))
}

/// `scutil --dns` for `domain`, when scutil is there to ask (macOS).
pub fn describe(domain: &str) -> Option<String> {
    if !crate::exec::installed("scutil") {
        return None;
    }
    match crate::exec::run("scutil", &["--dns".to_string()], None) {
        Ok(text) => Some(summary(&parse(&text), domain)),
        Err(e) => Some(format!("scutil --dns: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "\
DNS configuration

resolver #1
  search domain[0] : lan
  nameserver[0] : 192.168.1.1
  if_index : 6 (en0)
  flags    : Request A records
  reach    : 0x00020002 (Reachable,Directly Reachable Address)

resolver #2
  domain   : local
  options  : mdns
  timeout  : 5
  flags    : Request A records, Request AAAA records
  reach    : 0x00000000 (Not Reachable)
  order    : 300000

resolver #8
  domain   : docker
  nameserver[0] : 192.168.99.100
  flags    : Request A records, Request AAAA records
  reach    : 0x00000002 (Reachable)

DNS configuration (for scoped queries)

resolver #1
  domain   : docker
  nameserver[0] : 10.0.0.53
";

    #[test]
    fn finds_the_domains_resolver_and_ignores_scoped_ones() {
        let all = parse(OUT);
        assert_eq!(all.len(), 3);
        let d = for_domain(&all, "Docker.");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].number, 8);
        assert_eq!(d[0].nameservers, ["192.168.99.100"]);
        assert_eq!(
            summary(&all, "docker"),
            "scutil --dns for docker: resolver #8: nameserver 192.168.99.100, reach 0x00000002 (Reachable)"
        );
        assert_eq!(
            summary(&all, "test"),
            "scutil --dns: no resolver for test (yet)"
        );
    }
}
