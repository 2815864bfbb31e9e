//! [`Net`] on macOS: not implemented yet. Every call says so plainly instead of pretending.
//! The routing-socket implementation belongs to the macOS issue.

use super::{Change, LinkInfo, Lookup, Neighbour, Net, NetError, Snapshot};
use std::net::Ipv4Addr;
use std::time::Instant;

const WHAT: &str = "dockroute's routing on macOS";

pub struct System;

impl System {
    pub fn new() -> Result<Self, NetError> {
        Ok(System)
    }
}

impl Net for System {
    async fn links(&mut self) -> Result<Vec<LinkInfo>, NetError> {
        Err(NetError::Unsupported(WHAT))
    }
    async fn neighbours(&mut self) -> Result<Vec<Neighbour>, NetError> {
        Err(NetError::Unsupported(WHAT))
    }
    async fn snapshot(&mut self) -> Result<Snapshot, NetError> {
        Err(NetError::Unsupported(WHAT))
    }
    async fn lookup(&mut self, _dst: Ipv4Addr) -> Result<Lookup, NetError> {
        Err(NetError::Unsupported(WHAT))
    }
    async fn apply(&mut self, _changes: &[Change]) -> Result<Vec<Result<(), NetError>>, NetError> {
        Err(NetError::Unsupported(WHAT))
    }
    async fn subscribe(&mut self) -> Result<(), NetError> {
        Err(NetError::Unsupported(WHAT))
    }
    async fn next_event(&mut self, _deadline: Instant) -> Result<bool, NetError> {
        Err(NetError::Unsupported(WHAT))
    }
}
