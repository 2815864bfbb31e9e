//! [`Net`] over rtnetlink.

use super::{
    Change, Entry, ForeignRoute, ForeignRule, LinkInfo, Lookup, Neighbour, Net, NetError, PROTO,
    RouteSpec, RuleSpec, Snapshot, protocol_name,
};
use futures_util::{StreamExt, TryStreamExt};
use ipnet::Ipv4Net;
use rtnetlink::packet_core::NetlinkMessage;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::SocketAddr;
use rtnetlink::{Handle, MulticastGroup, RouteMessageBuilder};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

type Events =
    futures_channel::mpsc::UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

/// The Linux kernel, reached over one rtnetlink socket (plus a multicast one when subscribed).
pub struct System {
    handle: Handle,
    events: Option<Events>,
    /// Link names from the last link dump of this run, so one command dumps links once.
    names: Option<HashMap<u32, String>>,
}

fn nl_err(op: impl Into<String>, e: rtnetlink::Error) -> NetError {
    let source = match &e {
        rtnetlink::Error::NetlinkError(m) if m.raw_code() != 0 => m.to_io(),
        other => io::Error::other(other.to_string()),
    };
    NetError::os(op, source)
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) if m.raw_code() != 0 => Some(m.raw_code().abs()),
        _ => None,
    }
}

impl System {
    /// Open a netlink connection. Must run inside a tokio runtime.
    pub fn new() -> Result<Self, NetError> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| NetError::os("opening a netlink socket", e))?;
        tokio::spawn(conn);
        Ok(System {
            handle,
            events: None,
            names: None,
        })
    }

    async fn link_names(&mut self) -> Result<HashMap<u32, String>, NetError> {
        if let Some(names) = &self.names {
            return Ok(names.clone());
        }
        let mut links = self.handle.link().get().execute();
        let mut out = HashMap::new();
        while let Some(l) = links
            .try_next()
            .await
            .map_err(|e| nl_err("listing links", e))?
        {
            for a in &l.attributes {
                if let LinkAttribute::IfName(n) = a {
                    out.insert(l.header.index, n.clone());
                }
            }
        }
        Ok(out)
    }
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

impl Net for System {
    async fn links(&mut self) -> Result<Vec<LinkInfo>, NetError> {
        let mut out = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Some(l) = links
            .try_next()
            .await
            .map_err(|e| nl_err("listing links", e))?
        {
            let name = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            });
            out.push(LinkInfo {
                index: l.header.index,
                name: name.unwrap_or_default(),
                up: l.header.flags.contains(LinkFlags::Up),
                loopback: l.header.flags.contains(LinkFlags::Loopback),
                addrs: Vec::new(),
            });
        }
        self.names = Some(out.iter().map(|l| (l.index, l.name.clone())).collect());
        let mut addrs = self.handle.address().get().execute();
        while let Some(a) = addrs
            .try_next()
            .await
            .map_err(|e| nl_err("listing addresses", e))?
        {
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
        let mut out = Vec::new();
        let mut req = self.handle.neighbours().get();
        req.message_mut().header.family = AddressFamily::Inet;
        let mut stream = req.execute();
        while let Some(n) = stream
            .try_next()
            .await
            .map_err(|e| nl_err("listing neighbours", e))?
        {
            let ip = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            let Some(ip) = ip else { continue };
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
            });
        }
        Ok(out)
    }

    async fn snapshot(&mut self) -> Result<Snapshot, NetError> {
        let names = self.link_names().await?;
        let name_of = |i: Option<u32>| i.map(|i| names.get(&i).cloned().unwrap_or(i.to_string()));
        let mut snap = Snapshot::default();

        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(m) = routes
            .try_next()
            .await
            .map_err(|e| nl_err("listing routes", e))?
        {
            let Some(r) = parse_route(&m) else { continue };
            if m.header.protocol == RouteProtocol::Other(PROTO) {
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

        let mut rules = self.handle.rule().get(rtnetlink::IpVersion::V4).execute();
        while let Some(m) = rules
            .try_next()
            .await
            .map_err(|e| nl_err("listing rules", e))?
        {
            let (pref, table, proto) = rule_of(&m);
            let (dst, selective, text) = rule_text(&m, table);
            let plain = !selective && m.header.action == RuleAction::ToTable;
            // Only rules of the one shape dockroute creates count as its own.
            match dst {
                Some(dst) if proto == PROTO && plain => {
                    snap.owned.push(Entry::Rule(RuleSpec { pref, dst, table }))
                }
                _ => snap.foreign_rules.push(ForeignRule {
                    pref,
                    dst,
                    selective,
                    text,
                    protocol: protocol_name(proto),
                }),
            }
        }
        Ok(snap)
    }

    async fn lookup(&mut self, dst: Ipv4Addr) -> Result<Lookup, NetError> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = 32;
        // Without this flag the kernel reports every result as table main.
        m.header.flags = RouteFlags::LookupTable;
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        let mut stream = self.handle.route().get(m).execute();
        let reply = match stream.next().await {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                return match errno(&e) {
                    Some(code) => Ok(Lookup::Unreachable {
                        reason: io::Error::from_raw_os_error(code).to_string(),
                    }),
                    None => Err(nl_err(format!("looking up the route to {dst}"), e)),
                };
            }
            None => {
                return Ok(Lookup::Unreachable {
                    reason: "no answer".into(),
                });
            }
        };
        let r = parse_route(&reply).ok_or_else(|| {
            NetError::os(
                format!("looking up the route to {dst}"),
                io::Error::other("unexpected reply"),
            )
        })?;
        let dev = match r.oif {
            Some(i) => Some(self.link_names().await?.remove(&i).unwrap_or(i.to_string())),
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

    async fn apply(&mut self, change: &Change) -> Result<(), NetError> {
        let result = match change {
            Change::Add(Entry::Route(r)) => {
                self.handle.route().add(route_message(r)).execute().await
            }
            Change::Remove(Entry::Route(r)) => {
                self.handle.route().del(route_message(r)).execute().await
            }
            Change::Add(Entry::Rule(r)) => {
                let mut req = self.handle.rule().add();
                *req.message_mut() = rule_message(r);
                req.execute().await
            }
            Change::Remove(Entry::Rule(r)) => {
                self.handle.rule().del(rule_message(r)).execute().await
            }
        };
        let Err(e) = result else { return Ok(()) };
        let (verb, entry) = match change {
            Change::Add(entry) => ("add", entry),
            Change::Remove(entry) => ("remove", entry),
        };
        match (change, errno(&e)) {
            // Already gone: the goal is reached.
            (Change::Remove(_), Some(ESRCH | ENOENT)) => Ok(()),
            (Change::Add(Entry::Route(r)), Some(EEXIST)) => Err(NetError::Conflict(format!(
                "cannot add {entry}: another route for {} with metric {} is already in that table",
                r.dst, r.metric
            ))),
            _ => Err(nl_err(format!("cannot {verb} {entry}"), e)),
        }
    }

    async fn subscribe(&mut self) -> Result<(), NetError> {
        let (conn, _handle, events) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Link,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Neigh,
        ])
        .map_err(|e| NetError::os("subscribing to netlink events", e))?;
        tokio::spawn(conn);
        self.events = Some(events);
        Ok(())
    }

    async fn next_event(&mut self, deadline: Instant) -> Result<bool, NetError> {
        let Some(events) = self.events.as_mut() else {
            return Ok(false);
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(_)) => Ok(true),
            Ok(None) => Err(NetError::os(
                "waiting for netlink events",
                io::Error::other("event socket closed"),
            )),
            Err(_) => Ok(false),
        }
    }
}
