//! The kernel's network view, as dockroute needs it: links, addresses, neighbours, routes, policy
//! rules, route lookups and change events.
//!
//! The types here are plain data with no `cfg`, so planning, diffing and rendering are tested on
//! every platform. [`Net`] is the one interface; the OS picks its implementation below.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Instant;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) mod rtnl;
#[cfg(target_os = "linux")]
pub use linux::System;

// The BSD routing socket as macOS speaks it: pure, tested everywhere.
pub mod darwin;
pub mod rtmsg;

#[cfg(target_os = "macos")]
mod macos;
#[cfg(target_os = "macos")]
pub(crate) mod macos_store;
#[cfg(target_os = "macos")]
pub use macos::System;

/// The route protocol number that marks routes and rules as dockroute's. Values above
/// `RTPROT_STATIC` (4) are not interpreted by the kernel; 100 is unassigned in iproute2's list.
pub const PROTO: u8 = 100;
/// The name shipped for `/etc/iproute2/rt_protos.d/dockroute.conf`.
pub const PROTO_NAME: &str = "dockroute";
/// dockroute's own routing table.
pub const TABLE: u32 = 5017;
/// Preference of dockroute's policy rules: below every VPN client's (Tailscale starts at 5210).
pub const RULE_PREF: u32 = 5100;
/// The kernel's main table.
pub const MAIN_TABLE: u32 = 254;
/// Metric of the copy of each subnet route that dockroute keeps in the main table, for rules that
/// VPN clients insert ahead of dockroute's (`lookup main suppress_prefixlength 0`).
pub const MAIN_METRIC: u32 = 5017;

/// Whether a route carrying dockroute's protocol tag has the shape of one dockroute creates: in
/// its own table without a metric, or a copy in the main table with its metric. Anything else
/// with the tag (another table, another metric) is somebody else's and is never removed.
pub fn owned_route_shape(table: u32, metric: u32) -> bool {
    (table, metric) == (TABLE, 0) || (table, metric) == (MAIN_TABLE, MAIN_METRIC)
}

/// Whether a plain `to NET lookup TABLE` rule carrying the tag has dockroute's shape: its
/// preference, its table.
pub fn owned_rule_shape(pref: u32, table: u32) -> bool {
    pref == RULE_PREF && table == TABLE
}

/// A route dockroute installs (or found carrying its protocol tag).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    pub table: u32,
    pub dst: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub ifindex: u32,
    pub ifname: String,
    pub prefsrc: Option<Ipv4Addr>,
    pub metric: u32,
}

/// A policy rule `to DST lookup TABLE` at preference `pref`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSpec {
    pub pref: u32,
    pub dst: Ipv4Net,
    pub table: u32,
}

/// One object dockroute owns in the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Entry {
    Route(RouteSpec),
    Rule(RuleSpec),
}

/// A change to apply: add or remove one owned entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", content = "entry", rename_all = "lowercase")]
pub enum Change {
    Add(Entry),
    Remove(Entry),
}

impl Change {
    /// The change that undoes this one.
    pub fn inverse(&self) -> Change {
        match self {
            Change::Add(e) => Change::Remove(e.clone()),
            Change::Remove(e) => Change::Add(e.clone()),
        }
    }
}

/// A link with its IPv4 addresses (each with its prefix length).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub up: bool,
    pub loopback: bool,
    pub addrs: Vec<Ipv4Net>,
    /// The link's kind as the kernel names it (IFLA_INFO_KIND: tun, wireguard, veth, bridge,
    /// ...); `None` for physical links and where the platform does not say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// A neighbour table entry (ARP) for an IPv4 address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub ifindex: u32,
    pub ip: Ipv4Addr,
    /// Reachable, stale, delay, probe or permanent: an entry a host really answered for.
    pub live: bool,
    /// The link-layer address the entry holds (`aa:bb:cc:dd:ee:ff`), if any.
    pub lladdr: Option<String>,
}

/// A link-layer address as `ip neigh` prints it; `None` when it is empty or all zeros (an entry
/// nobody answered for).
pub fn lladdr_text(bytes: &[u8]) -> Option<String> {
    if bytes.is_empty() || bytes.iter().all(|b| *b == 0) {
        return None;
    }
    let parts: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Some(parts.join(":"))
}

/// A route that is not dockroute's, as far as status needs to describe it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ForeignRoute {
    pub table: u32,
    pub dst: Ipv4Net,
    /// unicast, local, blackhole, unreachable, prohibit, throw, ...
    #[serde(rename = "type")]
    pub kind: String,
    pub gateway: Option<Ipv4Addr>,
    pub dev: Option<String>,
    pub protocol: String,
    pub metric: u32,
}

/// A policy rule that is not dockroute's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ForeignRule {
    pub pref: u32,
    /// `None` means the rule matches every destination.
    pub dst: Option<Ipv4Net>,
    /// Whether the rule has other selectors (source, fwmark, interface, ...), so it may not match
    /// every packet to `dst`.
    pub selective: bool,
    /// What `ip rule` prints for it, e.g. `not from all fwmark 0xca6c lookup 51820`.
    pub text: String,
    pub protocol: String,
}

/// Every IPv4 route and rule, split into dockroute's and everybody else's. Routes and rules that
/// carry dockroute's protocol tag without its shape are in the foreign lists (with protocol
/// [`PROTO_NAME`]): see [`Snapshot::tagged_not_owned`].
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub owned: Vec<Entry>,
    pub foreign_routes: Vec<ForeignRoute>,
    pub foreign_rules: Vec<ForeignRule>,
}

/// A route or rule tagged like dockroute's but not of its shape: left alone, reported by `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Tagged {
    Route(ForeignRoute),
    Rule(ForeignRule),
}

impl Snapshot {
    /// The foreign routes and rules that carry dockroute's protocol tag.
    pub fn tagged_not_owned(&self) -> Vec<Tagged> {
        let routes = self
            .foreign_routes
            .iter()
            .filter(|r| r.protocol == PROTO_NAME)
            .cloned()
            .map(Tagged::Route);
        let rules = self
            .foreign_rules
            .iter()
            .filter(|r| r.protocol == PROTO_NAME)
            .cloned()
            .map(Tagged::Rule);
        routes.chain(rules).collect()
    }
}

impl fmt::Display for Tagged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tagged::Route(r) => write!(f, "route {r}"),
            Tagged::Rule(r) => write!(f, "rule {r}"),
        }
    }
}

/// What the kernel does with a packet to one address (`ip route get`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Lookup {
    Route {
        table: u32,
        #[serde(rename = "type")]
        kind: String,
        gateway: Option<Ipv4Addr>,
        dev: Option<String>,
        prefsrc: Option<Ipv4Addr>,
    },
    /// The kernel refused: no route, unreachable, prohibited, ...
    Unreachable { reason: String },
}

/// How a platform's routing is laid out, which decides the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Linux: dockroute's own table reached by policy rules (`plan::desired`).
    PolicyTable,
    /// macOS: one table, no rules (`plan::single`).
    SingleTable,
}

impl Layout {
    /// The layout of the platform dockroute is built for.
    pub const HOST: Layout = if cfg!(target_os = "macos") {
        Layout::SingleTable
    } else {
        Layout::PolicyTable
    };
}

/// A route which is not dockroute's, in the table dockroute adds to (on macOS, where there is
/// one table: the longest prefix wins, and an add of the same prefix fails): its prefix, the
/// interface it is bound to, and a description of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Held {
    pub prefix: Ipv4Net,
    pub ifindex: u32,
    pub by: String,
}

/// The platform's network interface. One implementation per OS, chosen above.
#[allow(async_fn_in_trait)] // single-threaded runtime: no Send bounds needed
pub trait Net {
    /// How routing is laid out here.
    fn layout(&self) -> Layout {
        Layout::HOST
    }
    /// Links with their IPv4 addresses.
    async fn links(&mut self) -> Result<Vec<LinkInfo>, NetError>;
    /// The IPv4 neighbour (ARP) table.
    async fn neighbours(&mut self) -> Result<Vec<Neighbour>, NetError>;
    /// All IPv4 routes and rules, split by owner.
    async fn snapshot(&mut self) -> Result<Snapshot, NetError>;
    /// A snapshot whose foreign routes are only those that may matter to `status`: covering or
    /// inside one of `nets`, default routes, through one of the links `ifindexes`, or tagged like
    /// dockroute's (everything else may be left out: a VPN's thousands of routes elsewhere are
    /// not parsed). Rules and dockroute's own entries are complete.
    async fn snapshot_near(
        &mut self,
        nets: &[Ipv4Net],
        ifindexes: &[u32],
    ) -> Result<Snapshot, NetError> {
        let _ = (nets, ifindexes);
        self.snapshot().await
    }
    /// dockroute's own routes and rules only (what `up` and `down` need), as in
    /// [`Snapshot::owned`]; an implementation may ask the kernel for less than a snapshot.
    async fn owned(&mut self) -> Result<Vec<Entry>, NetError> {
        Ok(self.snapshot().await?.owned)
    }
    /// dockroute's own entries as far as the kernel lists them without walking a table that
    /// others fill: [`OwnedView::unread`] names the table whose dockroute routes were left out
    /// (Linux: main, where a VPN may put thousands of routes, all of which the kernel walks to
    /// find dockroute's few even when it filters the dump). By default: all of [`Net::owned`].
    async fn owned_cheaply(&mut self) -> Result<OwnedView, NetError> {
        Ok(OwnedView {
            entries: self.owned().await?,
            unread: None,
        })
    }
    /// The routes that are not dockroute's, in the table dockroute adds its routes to, whose
    /// prefix equals or lies inside one of `subnets` and which carry ordinary traffic (not
    /// scoped to an interface, not the kernel's cache entries). Only a single-table platform
    /// (macOS) needs to know: on Linux dockroute's own table holds nobody else's routes.
    async fn held(&mut self, _subnets: &[Ipv4Net]) -> Result<Vec<Held>, NetError> {
        Ok(Vec::new())
    }
    /// The route the kernel picks for `dst`.
    async fn lookup(&mut self, dst: Ipv4Addr) -> Result<Lookup, NetError>;
    /// Apply `changes` in order, each on its own: one failing does not stop the ones after it.
    /// Returns each change's result, in order; `Err` when the results are unknown (the request
    /// or its answer was lost). Removing what is gone already is not an error; adding what
    /// exists is, when something else's object is in the way.
    async fn apply(&mut self, changes: &[Change]) -> Result<Vec<Result<(), NetError>>, NetError>;
    /// Make sure each of `routes` is in the kernel exactly as given, without touching anything
    /// else: `Ok(true)` it was missing and is added, `Ok(false)` it is there, [`NetError::Exists`]
    /// somebody else's route holds its place (same prefix and metric in that table). Needed
    /// where [`Net::owned_cheaply`] leaves a table unread; elsewhere unsupported.
    async fn ensure(
        &mut self,
        routes: &[RouteSpec],
    ) -> Result<Vec<Result<bool, NetError>>, NetError> {
        let _ = routes;
        Err(NetError::Unsupported("checking routes by adding them"))
    }
    /// Start receiving link, address and neighbour events (before checking the state, so no
    /// event between the check and the wait is lost).
    async fn subscribe(&mut self) -> Result<(), NetError>;
    /// Wait for the next event, or until `deadline`. Returns false on timeout.
    async fn next_event(&mut self, deadline: Instant) -> Result<bool, NetError>;
}

/// What [`Net::owned_cheaply`] read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnedView {
    pub entries: Vec<Entry>,
    /// The table whose dockroute routes are not in `entries`, if any.
    pub unread: Option<u32>,
}

/// Errors of the network layer. Each message carries its cause (no `source()` chain), so the
/// CLI's one-line rendering never repeats it.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{op}: {err}")]
    Os { op: String, err: std::io::Error },
    #[error("{0}")]
    Conflict(String),
    /// An add found an entry with the same key (a route with that prefix and metric in that
    /// table): dockroute's own, or somebody else's in its place.
    #[error("{0}")]
    Exists(String),
    #[error("{0} is not supported on this platform yet")]
    Unsupported(&'static str),
}

impl NetError {
    pub fn os(op: impl Into<String>, err: std::io::Error) -> Self {
        NetError::Os { op: op.into(), err }
    }
}

fn table_name(t: u32) -> String {
    match t {
        MAIN_TABLE => "main".into(),
        255 => "local".into(),
        253 => "default".into(),
        TABLE => "dockroute".into(),
        t => t.to_string(),
    }
}

impl fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        write!(f, " dev {}", self.ifname)?;
        if self.gateway.is_none() {
            write!(f, " scope link")?;
        }
        if let Some(src) = self.prefsrc {
            write!(f, " src {src}")?;
        }
        write!(f, " table {} proto {PROTO_NAME}", table_name(self.table))?;
        if self.metric != 0 {
            write!(f, " metric {}", self.metric)?;
        }
        Ok(())
    }
}

impl fmt::Display for RuleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pref {} to {} lookup {} proto {PROTO_NAME}",
            self.pref,
            self.dst,
            table_name(self.table)
        )
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Route(r) => write!(f, "route {r}"),
            Entry::Rule(r) => write!(f, "rule {r}"),
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Add(e) => write!(f, "+ {e}"),
            Change::Remove(e) => write!(f, "- {e}"),
        }
    }
}

impl fmt::Display for ForeignRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind != "unicast" {
            write!(f, "{} ", self.kind)?;
        }
        write!(f, "{}", self.dst)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(dev) = &self.dev {
            write!(f, " dev {dev}")?;
        }
        write!(
            f,
            " table {} proto {}",
            table_name(self.table),
            self.protocol
        )?;
        if self.metric != 0 {
            write!(f, " metric {}", self.metric)?;
        }
        Ok(())
    }
}

impl fmt::Display for ForeignRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} proto {}", self.pref, self.text, self.protocol)
    }
}

impl fmt::Display for Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lookup::Route {
                table,
                kind,
                gateway,
                dev,
                prefsrc,
            } => {
                if kind != "unicast" {
                    write!(f, "{kind} ")?;
                }
                if let Some(gw) = gateway {
                    write!(f, "via {gw} ")?;
                }
                if let Some(dev) = dev {
                    write!(f, "dev {dev} ")?;
                }
                write!(f, "table {}", table_name(*table))?;
                if let Some(src) = prefsrc {
                    write!(f, " src {src}")?;
                }
                Ok(())
            }
            Lookup::Unreachable { reason } => write!(f, "unreachable ({reason})"),
        }
    }
}

/// Name of a route protocol number, as iproute2 prints it.
pub fn protocol_name(p: u8) -> String {
    match p {
        0 => "unspec".into(),
        1 => "redirect".into(),
        2 => "kernel".into(),
        3 => "boot".into(),
        4 => "static".into(),
        16 => "dhcp".into(),
        PROTO => PROTO_NAME.into(),
        p => p.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> RouteSpec {
        RouteSpec {
            table: TABLE,
            dst: "172.17.0.0/16".parse().unwrap(),
            gateway: Some(Ipv4Addr::new(192, 168, 99, 100)),
            ifindex: 3,
            ifname: "vboxnet0".into(),
            prefsrc: None,
            metric: 0,
        }
    }

    #[test]
    fn renders_like_ip_route() {
        assert_eq!(
            Change::Add(Entry::Route(route())).to_string(),
            "+ route 172.17.0.0/16 via 192.168.99.100 dev vboxnet0 table dockroute proto dockroute"
        );
        let rule = RuleSpec {
            pref: RULE_PREF,
            dst: "192.168.99.0/24".parse().unwrap(),
            table: TABLE,
        };
        assert_eq!(
            Change::Remove(Entry::Rule(rule)).to_string(),
            "- rule pref 5100 to 192.168.99.0/24 lookup dockroute proto dockroute"
        );
    }

    #[test]
    fn owns_only_its_own_shapes() {
        assert!(owned_route_shape(TABLE, 0));
        assert!(owned_route_shape(MAIN_TABLE, MAIN_METRIC));
        assert!(!owned_route_shape(777, 0));
        assert!(!owned_route_shape(MAIN_TABLE, 0));
        assert!(!owned_route_shape(MAIN_TABLE, 99));
        assert!(!owned_route_shape(TABLE, 7));
        assert!(owned_rule_shape(RULE_PREF, TABLE));
        assert!(!owned_rule_shape(5200, TABLE));
        assert!(!owned_rule_shape(RULE_PREF, 777));
    }

    #[test]
    fn inverse_round_trips() {
        let c = Change::Add(Entry::Route(route()));
        assert_eq!(c.inverse().inverse(), c);
        assert_ne!(c.inverse(), c);
    }

    #[test]
    fn serializes_for_the_record() {
        let e = Entry::Route(route());
        let json = serde_json::to_string(&e).unwrap();
        assert!(
            json.starts_with(r#"{"kind":"route","table":5017,"#),
            "{json}"
        );
        let back: Entry = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
    }
}
