//! `DOCKER_HOST` -> the VM's IP, or "not an IP" (`machine::parse_docker_host`).
//! Beyond "no panic": an IP comes only from a `tcp://` value that names it, it is usable, and
//! the canonical forms of it parse back to it; anything else is passed through unchanged.
#![no_main]

use dockroute::machine::{DockerHost, parse_docker_host};
use dockroute::validate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    match parse_docker_host(value) {
        DockerHost::Ip(ip) => {
            let rest = value
                .strip_prefix("tcp://")
                .expect("an IP only from tcp://");
            assert!(rest.starts_with(&ip.to_string()), "{value:?} -> {ip}");
            assert_eq!(validate::ipv4(&ip.to_string()), Ok(ip));
            for form in [
                format!("tcp://{ip}"),
                format!("tcp://{ip}:2376"),
                format!("tcp://{ip}:2376/"),
            ] {
                assert_eq!(parse_docker_host(&form), DockerHost::Ip(ip), "{form}");
            }
        }
        DockerHost::NotAnIp(s) => assert_eq!(s, value),
    }
});
