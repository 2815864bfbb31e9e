//! systemd-resolved exists only on Linux: the resolved backend says so elsewhere.

use super::{DnsError, LinkDns};
use std::net::SocketAddrV4;

fn unsupported() -> DnsError {
    DnsError::Refused("systemd-resolved exists only on Linux; use --dns resolver-dir".into())
}

pub async fn check(_ifindex: u32) -> Result<(), DnsError> {
    Err(unsupported())
}

pub async fn current(_ifindex: u32) -> Result<LinkDns, DnsError> {
    Err(unsupported())
}

pub async fn apply(_ifindex: u32, _domain: &str, _ns: SocketAddrV4) -> Result<bool, DnsError> {
    Err(unsupported())
}

pub async fn revert(_ifindex: u32, _domain: &str, _ns: SocketAddrV4) -> Result<bool, DnsError> {
    Err(unsupported())
}
