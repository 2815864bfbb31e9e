//! resolv.conf editing (`dns::resolv_conf`): input = a header line `DOMAIN IP` (invalid values
//! fall back to docker 172.17.0.1), then the file.
//! Beyond "no panic": applying then reverting dockroute's lines gives back the file
//! byte-identical (when it had none of dockroute's lines); applying is idempotent, shows as set,
//! adds exactly one nameserver; what revert leaves has no dockroute line in it.
#![no_main]

use dockroute::dns::resolv_conf::{MARKER_PREFIX, insert, is_set, lines, nameservers, strip};
use dockroute::validate;
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddrV4;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (header, content) = text.split_once('\n').unwrap_or(("", text));
    let mut h = header.split(' ');
    let domain = h
        .next()
        .and_then(|d| validate::domain(d).ok())
        .unwrap_or_else(|| "docker".into());
    let ip = h
        .next()
        .and_then(|ip| validate::ipv4(ip).ok())
        .unwrap_or([172, 17, 0, 1].into());
    let ns = SocketAddrV4::new(ip, 53);

    let ours = lines(&domain, ns);
    assert_eq!(ours.matches('\n').count(), 2, "{ours:?}");

    let (base, found) = strip(content);
    assert!(
        base.split_inclusive('\n')
            .all(|l| !l.starts_with(MARKER_PREFIX)),
        "revert left a dockroute line: {base:?}"
    );
    assert_eq!(strip(&base), (base.clone(), false));
    if !found {
        assert_eq!(base, content);
    }

    let applied = insert(content, &domain, ns);
    assert!(is_set(&applied, &domain, ns));
    assert_eq!(
        insert(&applied, &domain, ns),
        applied,
        "apply is not idempotent"
    );
    assert_eq!(strip(&applied), (base.clone(), true));
    assert_eq!(nameservers(&applied), nameservers(&base) + 1);
    if !found {
        assert_eq!(
            strip(&applied).0,
            content,
            "apply then revert is not byte-identical"
        );
    }
});
