//! resolver(5) files (`dns::resolver_dir`): input = a header line `DOMAIN IP PORT`, then a file.
//! Beyond "no panic": the file dockroute writes reads back (as resolver(5) reads it) to the
//! nameserver and port it was written for and is recognised as dockroute's; a file is taken for
//! dockroute's only if it starts with the header line; a domain that validates names a file
//! directly inside the resolver directory.
#![no_main]

use dockroute::dns::resolver_dir::{HEADER, is_ours, path, render};
use dockroute::validate;
use libfuzzer_sys::fuzz_target;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Component, Path};

/// What resolver(5) takes from a file: the first nameserver and the port (53 by default).
fn read(content: &str) -> (Option<Ipv4Addr>, u16) {
    let mut ns = None;
    let mut port = 53;
    for l in content.lines() {
        let mut w = l.split_whitespace();
        match (w.next(), w.next()) {
            (Some("nameserver"), Some(ip)) if ns.is_none() => ns = ip.parse().ok(),
            (Some("port"), Some(p)) => port = p.parse().unwrap_or(53),
            _ => {}
        }
    }
    (ns, port)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (header, content) = text.split_once('\n').unwrap_or(("", text));
    let mut h = header.split(' ');
    let domain = h.next().unwrap_or("");
    let ip = h
        .next()
        .and_then(|ip| validate::ipv4(ip).ok())
        .unwrap_or([172, 17, 0, 1].into());
    let port = h
        .next()
        .and_then(|p| p.parse().ok())
        .filter(|p| *p != 0)
        .unwrap_or(53);
    let ns = SocketAddrV4::new(ip, port);

    let body = render(ns);
    assert!(is_ours(&body));
    assert_eq!(read(&body), (Some(ip), port), "{body:?}");

    if is_ours(content) {
        let rest = content
            .strip_prefix(HEADER)
            .expect("ours starts with the header");
        assert!(
            rest.is_empty() || rest.starts_with('\n') || rest.starts_with("\r\n"),
            "{content:?}"
        );
    }

    if let Ok(d) = validate::domain(domain) {
        let dir = Path::new("/etc/resolver");
        let p = path(dir, &d);
        assert_eq!(p.parent(), Some(dir), "{d:?} -> {}", p.display());
        let last: Vec<_> = p.strip_prefix(dir).unwrap().components().collect();
        assert!(
            matches!(last[..], [Component::Normal(n)] if n == d.as_str()),
            "{d:?}"
        );
    }
});
