//! [`Net`] over rtnetlink.

use super::rtnl::{Events, RawRoute, Rtnl};
use super::{
    Change, Entry, ForeignRoute, ForeignRule, LinkInfo, Lookup, MAIN_TABLE, Neighbour, Net,
    NetError, OwnedView, PROTO, RouteSpec, RuleSpec, Snapshot, TABLE, owned_route_shape,
    owned_rule_shape, protocol_name,
};
use ipnet::Ipv4Net;
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{MulticastGroup, RouteMessageBuilder};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

/// The Linux kernel, reached over one rtnetlink socket (plus a multicast one when subscribed).
pub struct System {
    rtnl: Rtnl,
    /// For filtered route dumps, opened on first use; `None` inside when the kernel has no
    /// strict checking (then the full dump is read and filtered here).
    strict: Option<Option<Rtnl>>,
    events: Option<Events>,
    /// Link names from the last link dump of this run, so one command dumps links once.
    names: Option<HashMap<u32, String>>,
}

impl System {
    /// Open a netlink socket.
    pub fn new() -> Result<Self, NetError> {
        let rtnl = Rtnl::open().map_err(|e| NetError::os("opening a netlink socket", e))?;
        Ok(System {
            rtnl,
            strict: None,
            events: None,
            names: None,
        })
    }

    fn dump(
        &mut self,
        what: &str,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NetError> {
        self.rtnl
            .dump(msg)
            .map_err(|e| NetError::os(format!("listing {what}"), e))
    }

    fn link_dump(&mut self) -> Result<Vec<LinkMessage>, NetError> {
        let all = self.dump(
            "links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
        )?;
        Ok(all
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .collect())
    }

    /// The strict-checking socket for filtered dumps, opened on first use; `None` when the
    /// kernel has none.
    fn strict(&mut self) -> Option<&mut Rtnl> {
        self.strict
            .get_or_insert_with(|| match Rtnl::open_strict() {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::debug!("no strict netlink checking ({e}): reading every route");
                    None
                }
            })
            .as_mut()
    }

    /// A route dump request for dockroute's protocol tag (and `table`, if given).
    fn tagged_request(table: Option<u32>) -> RouteNetlinkMessage {
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet;
        req.header.protocol = RouteProtocol::Other(PROTO);
        req.header.kind = RouteType::Unicast;
        if let Some(t) = table {
            req.attributes.push(RouteAttribute::Table(t));
        }
        RouteNetlinkMessage::GetRoute(req)
    }

    /// IPv4 routes carrying dockroute's protocol tag: filtered by the kernel where it can, the
    /// full dump otherwise (callers classify every message either way).
    fn tagged_routes(&mut self) -> Result<Vec<RouteNetlinkMessage>, NetError> {
        let msg = Self::tagged_request(None);
        match self.strict() {
            Some(rtnl) => rtnl
                .dump(msg)
                .map_err(|e| NetError::os("listing dockroute's routes", e)),
            None => self.dump("routes", msg),
        }
    }

    /// The routes carrying dockroute's tag in dockroute's own table alone, which the kernel
    /// walks without touching main; `None` without strict checking (the kernel would ignore
    /// the filter).
    fn own_table_routes(&mut self) -> Result<Option<Vec<RouteNetlinkMessage>>, NetError> {
        let msg = Self::tagged_request(Some(TABLE));
        let Some(rtnl) = self.strict() else {
            return Ok(None);
        };
        match rtnl.dump(msg) {
            Ok(all) => Ok(Some(all)),
            // The table does not exist (nothing was ever added to it): nothing of ours there.
            Err(e) if e.raw_os_error() == Some(ENOENT) => Ok(Some(Vec::new())),
            Err(e) => Err(NetError::os("listing dockroute's routes", e)),
        }
    }

    /// dockroute's routes and rules, from `routes` (messages of a route dump) and a rule dump.
    fn owned_from(&mut self, routes: Vec<RouteNetlinkMessage>) -> Result<Vec<Entry>, NetError> {
        let mut found = Vec::new();
        for m in routes {
            let RouteNetlinkMessage::NewRoute(m) = m else {
                continue;
            };
            match parse_route(&m) {
                Some(r) if owned_route(&m, &r) => found.push(r),
                _ => {}
            }
        }
        let mut owned = Vec::new();
        if !found.is_empty() {
            let names = self.link_names()?;
            for r in found {
                let ifindex = r.oif.unwrap_or(0);
                owned.push(Entry::Route(RouteSpec {
                    table: r.table,
                    dst: r.dst,
                    gateway: r.gateway,
                    ifindex,
                    ifname: names.get(&ifindex).cloned().unwrap_or(ifindex.to_string()),
                    prefsrc: r.prefsrc,
                    metric: r.metric,
                }));
            }
        }
        owned.extend(
            self.rule_dump()?
                .iter()
                .filter_map(owned_rule)
                .map(Entry::Rule),
        );
        Ok(owned)
    }

    /// Every IPv4 policy rule, in the kernel's order (the order it matches them in).
    fn rule_dump(&mut self) -> Result<Vec<RuleMessage>, NetError> {
        let mut req = RuleMessage::default();
        req.header.family = AddressFamily::Inet;
        Ok(self
            .dump("rules", RouteNetlinkMessage::GetRule(req))?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRule(m) => Some(m),
                _ => None,
            })
            .collect())
    }

    /// For each change, why it must not be sent. The kernel deletes the first rule that matches
    /// the fields a request names (preference, table, destination, protocol), whatever else that
    /// rule selects on: a tagged rule with more selectors (`iif lo`) ahead of dockroute's would be
    /// deleted instead of it. Such a removal is refused, checked against the rules as they are
    /// right now.
    fn shadowed(&mut self, changes: &[Change]) -> Result<Vec<Option<NetError>>, NetError> {
        let mut out: Vec<Option<NetError>> = changes.iter().map(|_| None).collect();
        if !changes
            .iter()
            .any(|c| matches!(c, Change::Remove(Entry::Rule(_))))
        {
            return Ok(out);
        }
        let mut rules = self.rule_dump()?;
        for (change, slot) in changes.iter().zip(&mut out) {
            let Change::Remove(Entry::Rule(r)) = change else {
                continue;
            };
            let Some(i) = rules.iter().position(|m| delete_matches(m, r)) else {
                continue; // gone already
            };
            if owned_rule(&rules[i]).is_some() {
                rules.remove(i);
                continue;
            }
            let (_, table, _) = rule_of(&rules[i]);
            let (_, _, text) = rule_text(&rules[i], table);
            *slot = Some(NetError::Conflict(format!(
                "cannot remove {}: the kernel would delete the rule '{text}' ahead of it, which carries dockroute's tag but is not its own; remove that rule (or move it after dockroute's) and run again",
                Entry::Rule(r.clone())
            )));
        }
        Ok(out)
    }

    /// Every IPv4 route (those `keep` refuses left out, unparsed) and every rule, by owner.
    fn snapshot_where(&mut self, keep: &dyn Fn(&[u8]) -> bool) -> Result<Snapshot, NetError> {
        let names = self.link_names()?;
        let name_of = |i: Option<u32>| i.map(|i| names.get(&i).cloned().unwrap_or(i.to_string()));
        let mut snap = Snapshot::default();

        let req = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let routes = self
            .rtnl
            .dump_where(RouteNetlinkMessage::GetRoute(req), keep)
            .map_err(|e| NetError::os("listing routes", e))?;
        for m in routes {
            let RouteNetlinkMessage::NewRoute(m) = m else {
                continue;
            };
            let Some(r) = parse_route(&m) else { continue };
            // Only routes of the shapes dockroute creates are its own, whatever else is tagged.
            if owned_route(&m, &r) {
                snap.owned.push(Entry::Route(RouteSpec {
                    table: r.table,
                    dst: r.dst,
                    gateway: r.gateway,
                    ifindex: r.oif.unwrap_or(0),
                    ifname: name_of(r.oif).unwrap_or_default(),
                    prefsrc: r.prefsrc,
                    metric: r.metric,
                }));
            } else {
                snap.foreign_routes.push(ForeignRoute {
                    table: r.table,
                    dst: r.dst,
                    kind: kind_name(m.header.kind),
                    gateway: r.gateway,
                    dev: name_of(r.oif),
                    protocol: protocol_name(u8::from(m.header.protocol)),
                    metric: r.metric,
                });
            }
        }

        for m in self.rule_dump()? {
            // Only rules of the one shape dockroute creates count as its own.
            if let Some(rule) = owned_rule(&m) {
                snap.owned.push(Entry::Rule(rule));
                continue;
            }
            let (pref, table, proto) = rule_of(&m);
            let (dst, selective, text) = rule_text(&m, table);
            snap.foreign_rules.push(ForeignRule {
                pref,
                dst,
                selective,
                text,
                protocol: protocol_name(proto),
            });
        }
        Ok(snap)
    }

    fn link_names(&mut self) -> Result<HashMap<u32, String>, NetError> {
        if let Some(names) = &self.names {
            return Ok(names.clone());
        }
        Ok(self
            .link_dump()?
            .iter()
            .filter_map(|l| Some((l.header.index, if_name(l)?)))
            .collect())
    }
}

fn if_name(l: &LinkMessage) -> Option<String> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

/// IFLA_INFO_KIND: what driver made the link (tun, wireguard, veth, ...).
fn link_kind(l: &LinkMessage) -> Option<String> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            rtnetlink::packet_route::link::LinkInfo::Kind(k) => Some(k.to_string()),
            _ => None,
        }),
        _ => None,
    })
}

fn table_of(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

fn v4(a: &RouteAddress) -> Option<Ipv4Addr> {
    match a {
        RouteAddress::Inet(ip) => Some(*ip),
        _ => None,
    }
}

fn kind_name(k: RouteType) -> String {
    match k {
        RouteType::Unicast => "unicast".into(),
        RouteType::Local => "local".into(),
        RouteType::Broadcast => "broadcast".into(),
        RouteType::Anycast => "anycast".into(),
        RouteType::Multicast => "multicast".into(),
        RouteType::BlackHole => "blackhole".into(),
        RouteType::Unreachable => "unreachable".into(),
        RouteType::Prohibit => "prohibit".into(),
        RouteType::Throw => "throw".into(),
        RouteType::Nat => "nat".into(),
        other => format!("type {}", u8::from(other)),
    }
}

struct ParsedRoute {
    table: u32,
    dst: Ipv4Net,
    gateway: Option<Ipv4Addr>,
    oif: Option<u32>,
    prefsrc: Option<Ipv4Addr>,
    metric: u32,
}

/// Whether a parsed route is dockroute's: its tag, and one of the shapes it creates.
fn owned_route(m: &RouteMessage, r: &ParsedRoute) -> bool {
    m.header.protocol == RouteProtocol::Other(PROTO)
        && m.header.kind == RouteType::Unicast
        && r.oif.is_some()
        && owned_route_shape(r.table, r.metric)
}

fn parse_route(m: &RouteMessage) -> Option<ParsedRoute> {
    if m.header.address_family != AddressFamily::Inet {
        return None;
    }
    let mut r = ParsedRoute {
        table: table_of(m),
        dst: Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).ok()?,
        gateway: None,
        oif: None,
        prefsrc: None,
        metric: 0,
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => {
                r.dst = Ipv4Net::new(v4(d)?, m.header.destination_prefix_length).ok()?
            }
            RouteAttribute::Gateway(g) => r.gateway = v4(g),
            RouteAttribute::Oif(i) => r.oif = Some(*i),
            RouteAttribute::PrefSource(s) => r.prefsrc = v4(s),
            RouteAttribute::Priority(p) => r.metric = *p,
            _ => {}
        }
    }
    Some(r)
}

fn rule_text(m: &RuleMessage, table: u32) -> (Option<Ipv4Net>, bool, String) {
    let mut dst = None;
    let mut parts = Vec::new();
    let mut selective = false;
    if m.header.flags.bits() & 0x2 != 0 {
        parts.push("not".to_string()); // FIB_RULE_INVERT
        selective = true;
    }
    let mut from = "all".to_string();
    let mut more = Vec::new();
    for a in &m.attributes {
        match a {
            RuleAttribute::Destination(IpAddr::V4(ip)) => {
                dst = Ipv4Net::new(*ip, m.header.dst_len).ok();
            }
            RuleAttribute::Source(IpAddr::V4(ip)) => {
                from = format!("{ip}/{}", m.header.src_len);
                selective = true;
            }
            RuleAttribute::FwMark(mark) => {
                more.push(format!("fwmark {mark:#x}"));
                selective = true;
            }
            RuleAttribute::Iifname(i) => {
                more.push(format!("iif {i}"));
                selective = true;
            }
            RuleAttribute::Oifname(o) => {
                more.push(format!("oif {o}"));
                selective = true;
            }
            // u32::MAX is how the kernel says "not set".
            RuleAttribute::SuppressPrefixLen(n) if *n != u32::MAX => {
                more.push(format!("suppress_prefixlength {n}"))
            }
            RuleAttribute::SuppressIfGroup(g) if *g != u32::MAX => {
                more.push(format!("suppress_ifgroup {g}"))
            }
            RuleAttribute::UidRange(_) | RuleAttribute::IpProtocol(_) => {
                more.push("(more selectors)".into());
                selective = true;
            }
            RuleAttribute::SourcePortRange(_) | RuleAttribute::DestinationPortRange(_) => {
                more.push("(port selectors)".into());
                selective = true;
            }
            _ => {}
        }
    }
    parts.push(format!("from {from}"));
    if let Some(d) = dst {
        parts.push(format!("to {d}"));
    }
    parts.extend(more);
    parts.push(match m.header.action {
        RuleAction::ToTable => format!("lookup {}", super::table_name(table)),
        RuleAction::Goto => "goto".into(),
        RuleAction::Nop => "nop".into(),
        RuleAction::Blackhole => "blackhole".into(),
        RuleAction::Unreachable => "unreachable".into(),
        RuleAction::Prohibit => "prohibit".into(),
        other => format!("action {}", u8::from(other)),
    });
    (dst, selective, parts.join(" "))
}

/// Whether a rule is a plain `to NET lookup TABLE` and nothing else, the shape dockroute adds.
fn plain_rule(m: &RuleMessage) -> bool {
    m.header.flags.bits() == 0
        && m.header.src_len == 0
        && m.header.tos == 0
        && m.header.action == RuleAction::ToTable
        && m.attributes.iter().all(|a| match a {
            RuleAttribute::Destination(IpAddr::V4(_))
            | RuleAttribute::Priority(_)
            | RuleAttribute::Table(_)
            | RuleAttribute::Protocol(_) => true,
            // u32::MAX: not set
            RuleAttribute::SuppressPrefixLen(n) | RuleAttribute::SuppressIfGroup(n) => {
                *n == u32::MAX
            }
            _ => false,
        })
}

/// The rule as dockroute's own, if it is tagged and of its exact shape.
fn owned_rule(m: &RuleMessage) -> Option<RuleSpec> {
    let (pref, table, proto) = rule_of(m);
    let dst = m.attributes.iter().find_map(|a| match a {
        RuleAttribute::Destination(IpAddr::V4(ip)) => Ipv4Net::new(*ip, m.header.dst_len).ok(),
        _ => None,
    })?;
    (proto == PROTO && plain_rule(m) && owned_rule_shape(pref, table)).then_some(RuleSpec {
        pref,
        dst,
        table,
    })
}

/// Whether the kernel's rule deletion for `r` (as [`rule_message`] asks for it) matches `m`.
fn delete_matches(m: &RuleMessage, r: &RuleSpec) -> bool {
    let (pref, table, proto) = rule_of(m);
    let dst = m.attributes.iter().find_map(|a| match a {
        RuleAttribute::Destination(IpAddr::V4(ip)) => Some(*ip),
        _ => None,
    });
    pref == r.pref
        && table == r.table
        && proto == PROTO
        && m.header.action == RuleAction::ToTable
        && m.header.dst_len == r.dst.prefix_len()
        && dst == Some(r.dst.network())
}

fn rule_of(m: &RuleMessage) -> (u32, u32, u8) {
    let mut pref = 0;
    let mut table = u32::from(m.header.table);
    let mut proto = 0;
    for a in &m.attributes {
        match a {
            RuleAttribute::Priority(p) => pref = *p,
            RuleAttribute::Table(t) => table = *t,
            RuleAttribute::Protocol(p) => proto = u8::from(*p),
            _ => {}
        }
    }
    (pref, table, proto)
}

fn route_message(r: &RouteSpec) -> RouteMessage {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .table_id(r.table)
        .destination_prefix(r.dst.network(), r.dst.prefix_len())
        .output_interface(r.ifindex)
        .protocol(RouteProtocol::Other(PROTO))
        .scope(if r.gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        });
    if let Some(gw) = r.gateway {
        b = b.gateway(gw);
    }
    if let Some(src) = r.prefsrc {
        b = b.pref_source(src);
    }
    if r.metric != 0 {
        b = b.priority(r.metric);
    }
    b.build()
}

fn rule_message(r: &RuleSpec) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.dst_len = r.dst.prefix_len();
    m.header.action = RuleAction::ToTable;
    if r.table <= 255 {
        m.header.table = r.table as u8;
    } else {
        m.attributes.push(RuleAttribute::Table(r.table));
    }
    m.attributes
        .push(RuleAttribute::Destination(IpAddr::V4(r.dst.network())));
    m.attributes.push(RuleAttribute::Priority(r.pref));
    m.attributes
        .push(RuleAttribute::Protocol(RouteProtocol::Other(PROTO)));
    m
}

const EEXIST: i32 = 17;
const ESRCH: i32 = 3;
const ENOENT: i32 = 2;

/// Header flags of a change beyond request and ack: adds must not replace what is there.
fn change_message(change: &Change) -> (RouteNetlinkMessage, u16) {
    const ADD: u16 = NLM_F_CREATE | NLM_F_EXCL;
    match change {
        Change::Add(Entry::Route(r)) => (RouteNetlinkMessage::NewRoute(route_message(r)), ADD),
        Change::Remove(Entry::Route(r)) => (RouteNetlinkMessage::DelRoute(route_message(r)), 0),
        Change::Add(Entry::Rule(r)) => (RouteNetlinkMessage::NewRule(rule_message(r)), ADD),
        Change::Remove(Entry::Rule(r)) => (RouteNetlinkMessage::DelRule(rule_message(r)), 0),
    }
}

/// What the kernel's answer to `change` means.
fn change_result(change: &Change, result: io::Result<()>) -> Result<(), NetError> {
    let Err(e) = result else { return Ok(()) };
    let (verb, entry) = match change {
        Change::Add(entry) => ("add", entry),
        Change::Remove(entry) => ("remove", entry),
    };
    match (change, e.raw_os_error()) {
        // Already gone: the goal is reached.
        (Change::Remove(_), Some(ESRCH | ENOENT)) => Ok(()),
        (Change::Add(Entry::Route(r)), Some(EEXIST)) => Err(NetError::Exists(format!(
            "cannot add {entry}: another route for {} with metric {} is already in that table",
            r.dst, r.metric
        ))),
        _ => Err(NetError::os(format!("cannot {verb} {entry}"), e)),
    }
}

impl Net for System {
    async fn links(&mut self) -> Result<Vec<LinkInfo>, NetError> {
        let mut out = Vec::new();
        for l in self.link_dump()? {
            out.push(LinkInfo {
                index: l.header.index,
                name: if_name(&l).unwrap_or_default(),
                up: l.header.flags.contains(LinkFlags::Up),
                loopback: l.header.flags.contains(LinkFlags::Loopback),
                addrs: Vec::new(),
                kind: link_kind(&l),
            });
        }
        self.names = Some(out.iter().map(|l| (l.index, l.name.clone())).collect());
        let mut req = AddressMessage::default();
        req.header.family = AddressFamily::Inet;
        for m in self.dump("addresses", RouteNetlinkMessage::GetAddress(req))? {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if a.header.family != AddressFamily::Inet {
                continue;
            }
            // IFA_LOCAL is the address itself; IFA_ADDRESS is the peer on point-to-point links.
            let local = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                })
            });
            if let (Some(ip), Some(link)) =
                (addr, out.iter_mut().find(|l| l.index == a.header.index))
                && let Ok(net) = Ipv4Net::new(ip, a.header.prefix_len)
            {
                link.addrs.push(net);
            }
        }
        Ok(out)
    }

    async fn neighbours(&mut self) -> Result<Vec<Neighbour>, NetError> {
        let mut req = NeighbourMessage::default();
        req.header.family = AddressFamily::Inet;
        let mut out = Vec::new();
        for m in self.dump("neighbours", RouteNetlinkMessage::GetNeighbour(req))? {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            let ip = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            let Some(ip) = ip else { continue };
            let lladdr = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(b) => super::lladdr_text(b),
                _ => None,
            });
            let live = matches!(
                n.header.state,
                NeighbourState::Reachable
                    | NeighbourState::Stale
                    | NeighbourState::Delay
                    | NeighbourState::Probe
                    | NeighbourState::Permanent
            );
            out.push(Neighbour {
                ifindex: n.header.ifindex,
                ip,
                live,
                lladdr,
            });
        }
        Ok(out)
    }

    async fn snapshot(&mut self) -> Result<Snapshot, NetError> {
        self.snapshot_where(&|_| true)
    }

    async fn snapshot_near(
        &mut self,
        nets: &[Ipv4Net],
        ifindexes: &[u32],
    ) -> Result<Snapshot, NetError> {
        let keep = |raw: &[u8]| {
            let Some(r) = RawRoute::read(raw) else {
                return true;
            };
            let Ok(dst) = Ipv4Net::new(Ipv4Addr::from(r.dst), r.dst_len) else {
                return true;
            };
            r.protocol == PROTO
                || r.table == super::TABLE
                || r.dst_len == 0
                || r.oif.is_some_and(|i| ifindexes.contains(&i))
                || nets
                    .iter()
                    .any(|n| n.contains(&dst.network()) || dst.contains(&n.network()))
        };
        self.snapshot_where(&keep)
    }

    async fn owned(&mut self) -> Result<Vec<Entry>, NetError> {
        let routes = self.tagged_routes()?;
        self.owned_from(routes)
    }

    async fn owned_cheaply(&mut self) -> Result<OwnedView, NetError> {
        match self.own_table_routes()? {
            Some(routes) => Ok(OwnedView {
                entries: self.owned_from(routes)?,
                unread: Some(MAIN_TABLE),
            }),
            None => Ok(OwnedView {
                entries: self.owned().await?,
                unread: None,
            }),
        }
    }

    async fn lookup(&mut self, dst: Ipv4Addr) -> Result<Lookup, NetError> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = 32;
        // Without this flag the kernel reports every result as table main.
        m.header.flags = RouteFlags::LookupTable;
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        let op = || format!("looking up the route to {dst}");
        let reply = match self
            .rtnl
            .get(RouteNetlinkMessage::GetRoute(m))
            .map_err(|e| NetError::os(op(), e))?
        {
            Ok(reply) => reply,
            // The kernel's answer "no route" (ENETUNREACH, EHOSTUNREACH, ...) is a result.
            Err(e) => {
                return Ok(Lookup::Unreachable {
                    reason: e.to_string(),
                });
            }
        };
        let (reply, r) = match reply {
            RouteNetlinkMessage::NewRoute(m) => parse_route(&m).map(|r| (m, r)),
            _ => None,
        }
        .ok_or_else(|| NetError::os(op(), io::Error::other("unexpected reply")))?;
        let dev = match r.oif {
            Some(i) => Some(self.link_names()?.remove(&i).unwrap_or(i.to_string())),
            None => None,
        };
        Ok(Lookup::Route {
            table: r.table,
            kind: kind_name(reply.header.kind),
            gateway: r.gateway,
            dev,
            prefsrc: r.prefsrc,
        })
    }

    /// All changes in one datagram: the kernel applies and acknowledges them one by one. A rule
    /// removal that would hit somebody else's rule is not sent (see [`System::shadowed`]).
    async fn apply(&mut self, changes: &[Change]) -> Result<Vec<Result<(), NetError>>, NetError> {
        let refused = self.shadowed(changes)?;
        let send: Vec<_> = changes
            .iter()
            .zip(&refused)
            .filter(|(_, r)| r.is_none())
            .map(|(c, _)| change_message(c))
            .collect();
        let mut results = self
            .rtnl
            .changes(send)
            .map_err(|e| NetError::os("sending route and rule changes", e))?
            .into_iter();
        Ok(changes
            .iter()
            .zip(refused)
            .map(|(change, refused)| match refused {
                Some(e) => Err(e),
                None => change_result(
                    change,
                    results
                        .next()
                        .unwrap_or_else(|| Err(io::Error::other("no acknowledgement"))),
                ),
            })
            .collect())
    }

    /// Two adds per route in one batch: one that must not find the route's place taken
    /// (NLM_F_EXCL), then one that fails only on an identical route (protocol, gateway, link and
    /// all: without NLM_F_EXCL the kernel refuses just that, and otherwise puts the route beside
    /// the one holding the place, as `ip route prepend` does). Their answers: added then
    /// identical = it was missing; both refused = it is there; refused then added = another
    /// route holds the place, and the copy just put beside it is taken out again.
    async fn ensure(
        &mut self,
        routes: &[RouteSpec],
    ) -> Result<Vec<Result<bool, NetError>>, NetError> {
        const ADD: u16 = NLM_F_CREATE | NLM_F_EXCL;
        let mut send = Vec::with_capacity(2 * routes.len());
        for r in routes {
            let m = RouteNetlinkMessage::NewRoute(route_message(r));
            send.push((m.clone(), ADD));
            send.push((m, NLM_F_CREATE));
        }
        let op = "checking dockroute's routes in the main table";
        let results = self.rtnl.changes(send).map_err(|e| NetError::os(op, e))?;
        let mut answers = results.into_iter();
        let mut out = Vec::with_capacity(routes.len());
        let mut beside = Vec::new();
        for r in routes {
            let (Some(first), Some(second)) = (answers.next(), answers.next()) else {
                return Err(NetError::os(op, io::Error::other("no acknowledgement")));
            };
            let code = |x: &io::Result<()>| x.as_ref().err().map(io::Error::raw_os_error);
            out.push(match (code(&first), code(&second)) {
                (None, _) => Ok(true),
                (Some(Some(EEXIST)), Some(Some(EEXIST))) => Ok(false),
                (Some(Some(EEXIST)), None) => {
                    beside.push(Change::Remove(Entry::Route(r.clone())));
                    change_result(&Change::Add(Entry::Route(r.clone())), first).map(|()| false)
                }
                _ => {
                    let e = first.and(second);
                    change_result(&Change::Add(Entry::Route(r.clone())), e).map(|()| true)
                }
            });
        }
        if !beside.is_empty() {
            for (change, result) in beside.iter().zip(self.apply(&beside).await?) {
                if let Err(e) = result {
                    tracing::warn!("could not take out {change} again: {e}");
                }
            }
        }
        Ok(out)
    }

    async fn subscribe(&mut self) -> Result<(), NetError> {
        let groups = [
            MulticastGroup::Link,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Neigh,
        ];
        let events = Events::subscribe(&groups.map(|g| g as u32))
            .map_err(|e| NetError::os("subscribing to netlink events", e))?;
        self.events = Some(events);
        Ok(())
    }

    async fn next_event(&mut self, deadline: Instant) -> Result<bool, NetError> {
        let Some(events) = self.events.as_mut() else {
            return Ok(false);
        };
        events
            .wait(deadline)
            .map_err(|e| NetError::os("waiting for netlink events", e))
    }
}
