//! dockroute's routes on macOS, in terms of routing-socket messages ([`super::rtmsg`]): which
//! requests to send, how to read the kernel's answers and dumps, and which routes are
//! dockroute's. Pure and tested everywhere; the socket itself is in `macos.rs`.
//!
//! macOS has one routing table and no policy rules. dockroute adds an unscoped route per subnet
//! via the VM's IP (a route scoped to an interface is not used for ordinary traffic), flagged
//! `RTF_STATIC | RTF_PROTO1 | RTF_PROTO2`. The two protocol flags together are dockroute's mark:
//! the kernel gives them no meaning (route(8) exposes them as `-proto1`/`-proto2`). `RTF_PROTO3`
//! is never set: the kernel uses it for its own expiring clones.
//!
//! The kernel's RTM_DELETE removes whatever route has the prefix, whoever's it is, so a removal
//! first reads the route back (RTM_GET with the mask: an exact match) and deletes it only when
//! its flags carry the mark and its gateway is the one dockroute set. RTM_ADD of a prefix that
//! already has a route fails with EEXIST whatever the gateway, and a longer prefix of someone
//! else's inside a subnet wins over dockroute's route: [`held`] reads such routes from a dump,
//! and [`crate::plan::single`] routes around them with longer prefixes still.

use super::rtmsg::errno;
use super::rtmsg::{self, LinkAddr, Message, RtMsg, Sockaddr, rtax, rtf, rtm};
use super::{
    Entry, ForeignRoute, Held, LinkInfo, Lookup, MAIN_TABLE, Neighbour, NetError, RouteSpec,
};
use ipnet::Ipv4Net;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::Ipv4Addr;

/// The flags that mark a route as dockroute's.
pub const MARK: u32 = rtf::PROTO1 | rtf::PROTO2;
/// The flags dockroute's RTM_ADD carries: route(8)'s `-net ... GATEWAY` plus the mark.
pub const ADD_FLAGS: u32 = rtf::UP | rtf::GATEWAY | rtf::STATIC | MARK;
/// The flags of the other requests (as route(8) sends them; the kernel does not match on them).
pub const REQUEST_FLAGS: u32 = rtf::UP | rtf::GATEWAY | rtf::STATIC;

/// The SCDynamicStore keys whose changes say a link's IPv4 configuration or the primary
/// service changed (regular expressions, as `SCDynamicStoreSetNotificationKeys` takes them).
pub const STORE_PATTERNS: &[&str] = &[
    "State:/Network/Interface/[^/]+/IPv4",
    "State:/Network/Global/IPv4",
];

/// The key configd publishes while `ifname` has an IPv4 address.
pub fn store_key(ifname: &str) -> String {
    format!("State:/Network/Interface/{ifname}/IPv4")
}

/// Where a route sends packets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// To a gateway (RTF_GATEWAY with an AF_INET gateway).
    Gateway(Ipv4Addr),
    /// Out of an interface directly (a link-level gateway: connected networks, ARP entries).
    Link(LinkAddr),
    /// Nothing the kernel told.
    None,
}

/// An IPv4 route as the kernel reports it (RTM_GET reply, route dump, broadcast).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KRoute {
    pub dst: Ipv4Net,
    pub via: Via,
    pub flags: u32,
    /// The interface the route is bound to (`rtm_index`).
    pub index: u16,
    /// The interface's name, when the message carried RTA_IFP.
    pub ifname: Option<String>,
    /// The interface's address the route uses (RTA_IFA).
    pub ifa: Option<Ipv4Addr>,
}

impl KRoute {
    /// Read a route message about an IPv4 destination; `None` for other families, a mask with
    /// holes, or a message without a destination.
    pub fn from_msg(m: &RtMsg) -> Option<KRoute> {
        let dst = m.dst()?.inet()?;
        let prefix = if m.flags & rtf::HOST != 0 {
            32
        } else {
            match m.netmask() {
                Some(Sockaddr::Mask(mask)) => rtmsg::prefix_len(*mask)?,
                // a network route always has a mask; without one it is a host route
                _ => 32,
            }
        };
        let via = match m.gateway() {
            Some(Sockaddr::Inet(gw)) if m.flags & rtf::GATEWAY != 0 => Via::Gateway(*gw),
            Some(Sockaddr::Link(l)) => Via::Link(l.clone()),
            _ => Via::None,
        };
        Some(KRoute {
            dst: Ipv4Net::new(dst, prefix).ok()?.trunc(),
            via,
            flags: m.flags,
            index: m.index,
            ifname: m.ifp().map(|l| l.name.clone()).filter(|n| !n.is_empty()),
            ifa: m.ifa().and_then(Sockaddr::inet),
        })
    }

    pub fn gateway(&self) -> Option<Ipv4Addr> {
        match self.via {
            Via::Gateway(g) => Some(g),
            _ => None,
        }
    }

    /// Whether the route has dockroute's mark and shape: a network route via a gateway, not
    /// scoped to an interface.
    pub fn is_ours(&self) -> bool {
        self.flags & MARK == MARK
            && self.flags & (rtf::HOST | rtf::IFSCOPE | rtf::PROTO3 | rtf::WASCLONED) == 0
            && self.gateway().is_some()
    }

    /// A cache entry the kernel made (ARP, cloned host routes), not a route anyone added.
    pub fn is_cache(&self) -> bool {
        self.flags & (rtf::LLINFO | rtf::WASCLONED | rtf::LOCAL | rtf::BROADCAST | rtf::MULTICAST)
            != 0
    }

    /// The route as one of dockroute's entries (macOS has one table: shown as `main`).
    pub fn entry(&self, ifname: &str) -> Entry {
        Entry::Route(RouteSpec {
            table: MAIN_TABLE,
            dst: self.dst,
            gateway: self.gateway(),
            ifindex: u32::from(self.index),
            ifname: ifname.to_string(),
            prefsrc: None,
            metric: 0,
        })
    }

    /// What `status` shows for a route that is not dockroute's.
    pub fn foreign(&self, ifname: Option<&str>) -> ForeignRoute {
        ForeignRoute {
            table: MAIN_TABLE,
            dst: self.dst,
            kind: kind(self.flags).to_string(),
            gateway: self.gateway(),
            dev: ifname.map(str::to_string),
            protocol: protocol(self.flags).to_string(),
            metric: 0,
        }
    }

    /// The route as `status` shows a lookup of it.
    pub fn lookup(&self, ifname: Option<&str>) -> Lookup {
        Lookup::Route {
            table: MAIN_TABLE,
            kind: kind(self.flags).to_string(),
            gateway: self.gateway(),
            dev: ifname.map(str::to_string),
            prefsrc: self.ifa,
        }
    }
}

impl fmt::Display for KRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dst)?;
        match &self.via {
            Via::Gateway(g) => write!(f, " via {g}")?,
            Via::Link(l) if !l.name.is_empty() => write!(f, " link {}", l.name.escape_debug())?,
            _ => {}
        }
        match &self.ifname {
            Some(n) => write!(f, " dev {}", n.escape_debug())?,
            None => write!(f, " ifindex {}", self.index)?,
        }
        write!(f, " flags {}", flag_letters(self.flags))
    }
}

/// `unicast`, `blackhole` or `unreachable`, as on Linux.
fn kind(flags: u32) -> &'static str {
    if flags & rtf::BLACKHOLE != 0 {
        "blackhole"
    } else if flags & rtf::REJECT != 0 {
        "unreachable"
    } else {
        "unicast"
    }
}

/// Who made a route, as far as its flags tell.
fn protocol(flags: u32) -> &'static str {
    if flags & MARK == MARK {
        super::PROTO_NAME
    } else if flags & rtf::STATIC != 0 {
        "static"
    } else if flags & rtf::DYNAMIC != 0 {
        "redirect"
    } else {
        "kernel"
    }
}

/// The flags as `netstat -rn` prints them (`UGSc`), plus 1/2/3 for the protocol flags.
pub fn flag_letters(flags: u32) -> String {
    const LETTERS: &[(u32, char)] = &[
        (rtf::UP, 'U'),
        (rtf::GATEWAY, 'G'),
        (rtf::HOST, 'H'),
        (rtf::REJECT, 'R'),
        (rtf::DYNAMIC, 'D'),
        (rtf::MODIFIED, 'M'),
        (rtf::CLONING, 'C'),
        (rtf::PRCLONING, 'c'),
        (rtf::LLINFO, 'L'),
        (rtf::STATIC, 'S'),
        (rtf::BLACKHOLE, 'B'),
        (rtf::PROTO1, '1'),
        (rtf::PROTO2, '2'),
        (rtf::PROTO3, '3'),
        (rtf::WASCLONED, 'W'),
        (rtf::IFSCOPE, 'I'),
        (rtf::ROUTER, 'r'),
    ];
    LETTERS
        .iter()
        .filter(|(f, _)| flags & f != 0)
        .map(|(_, c)| *c)
        .collect()
}

fn addrs(pairs: Vec<(usize, Sockaddr)>) -> rtmsg::Addrs {
    let mut a: rtmsg::Addrs = Default::default();
    for (i, s) in pairs {
        a[i] = Some(s);
    }
    a
}

/// The addresses that name exactly the prefix `dst` (destination and mask), and `more`.
fn prefix_addrs(dst: Ipv4Net, more: Option<(usize, Sockaddr)>) -> rtmsg::Addrs {
    let mut pairs = vec![
        (rtax::DST, Sockaddr::Inet(dst.network())),
        (rtax::NETMASK, Sockaddr::Mask(dst.netmask())),
    ];
    pairs.extend(more);
    addrs(pairs)
}

/// RTM_ADD of `route` (which must have a gateway): unscoped, marked.
pub fn add_request(dst: Ipv4Net, gateway: Ipv4Addr, seq: i32) -> RtMsg {
    RtMsg::request(
        rtm::ADD,
        ADD_FLAGS,
        seq,
        prefix_addrs(dst, Some((rtax::GATEWAY, Sockaddr::Inet(gateway)))),
    )
}

/// RTM_DELETE of the route with exactly this prefix (whoever's it is: read it back first).
pub fn delete_request(dst: Ipv4Net, seq: i32) -> RtMsg {
    RtMsg::request(rtm::DELETE, REQUEST_FLAGS, seq, prefix_addrs(dst, None))
}

/// RTM_GET of exactly this prefix, asking for the interface's name and address in the answer.
pub fn get_exact_request(dst: Ipv4Net, seq: i32) -> RtMsg {
    RtMsg::request(
        rtm::GET,
        REQUEST_FLAGS,
        seq,
        prefix_addrs(dst, Some((rtax::IFP, Sockaddr::Link(LinkAddr::default())))),
    )
}

/// RTM_GET of the route the kernel picks for `addr` (longest prefix match), with interface.
pub fn lookup_request(addr: Ipv4Addr, seq: i32) -> RtMsg {
    RtMsg::request(
        rtm::GET,
        REQUEST_FLAGS,
        seq,
        addrs(vec![
            (rtax::DST, Sockaddr::Inet(addr)),
            (rtax::IFP, Sockaddr::Link(LinkAddr::default())),
        ]),
    )
}

/// Whether `m` answers our request `seq` (the kernel echoes every request to every routing
/// socket, with the sender's pid).
pub fn is_reply(m: &Message, pid: i32, seq: i32) -> bool {
    matches!(m, Message::Route(r) if r.pid == pid && r.seq == seq)
}

/// Whether a message read while waiting says links, addresses or routes changed.
pub fn is_event(m: &Message) -> bool {
    match m {
        Message::Link(_) | Message::Addr(_) => true,
        Message::Route(r) => {
            matches!(r.kind, rtm::ADD | rtm::DELETE | rtm::CHANGE)
                && r.errno == 0
                && KRoute::from_msg(r).is_some_and(|k| !k.is_cache())
        }
        Message::Other { .. } => false,
    }
}

/// Routes of a dump (`sysctl NET_RT_DUMP`), without the kernel's cache entries.
pub fn routes(msgs: &[Message]) -> Vec<KRoute> {
    msgs.iter()
        .filter_map(|m| match m {
            Message::Route(r) => KRoute::from_msg(r),
            _ => None,
        })
        .filter(|r| !r.is_cache())
        .collect()
}

/// The ARP table from a dump of the routes flagged RTF_LLINFO (`sysctl NET_RT_FLAGS`): an
/// entry is live when it holds a hardware address (an unanswered one has none).
pub fn neighbours(msgs: &[Message]) -> Vec<Neighbour> {
    msgs.iter()
        .filter_map(|m| match m {
            Message::Route(r) if r.flags & rtf::LLINFO != 0 => {
                let ip = r.dst()?.inet()?;
                let Some(Sockaddr::Link(l)) = r.gateway() else {
                    return None;
                };
                let ifindex = if r.index != 0 { r.index } else { l.index };
                Some(Neighbour {
                    ifindex: u32::from(ifindex),
                    ip,
                    live: l.addr.len() == 6
                        && l.addr.iter().any(|b| *b != 0)
                        && r.flags & rtf::REJECT == 0,
                    lladdr: super::lladdr_text(&l.addr),
                })
            }
            _ => None,
        })
        .collect()
}

/// Before an add: the route's interface must exist, be up and have an address on the gateway's
/// network. Without that the kernel binds the route to the default route's interface (a VPN's
/// utun, Wi-Fi) and still reports success.
pub fn link_ready(links: &[LinkInfo], route: &RouteSpec) -> Result<(), String> {
    let Some(gw) = route.gateway else {
        return Err(format!("{}: no gateway", route.dst));
    };
    let link = links
        .iter()
        .find(|l| l.index == route.ifindex && l.name == route.ifname)
        .ok_or_else(|| {
            format!(
                "link {} (index {}) is gone; not adding {} via {gw}",
                route.ifname, route.ifindex, route.dst
            )
        })?;
    if !link.up {
        return Err(format!(
            "link {} is down; not adding {}",
            link.name, route.dst
        ));
    }
    if !link.addrs.iter().any(|a| a.trunc().contains(&gw)) {
        return Err(format!(
            "link {} has no address on the network of {gw}; not adding {} (the kernel would send it another way)",
            link.name, route.dst
        ));
    }
    Ok(())
}

/// What reading a route back says about one dockroute wants there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// dockroute's route, via the wanted gateway over the wanted interface.
    Ours,
    /// dockroute's mark and gateway, but bound to another interface.
    WrongLink { index: u16 },
    /// Someone else's route (or ours with another gateway).
    Other(KRoute),
}

/// Compare what the kernel has for `want.dst` with `want`.
pub fn check(found: &KRoute, want: &RouteSpec) -> Check {
    if found.is_ours() && found.gateway() == want.gateway && found.dst == want.dst {
        if u32::from(found.index) == want.ifindex {
            Check::Ours
        } else {
            Check::WrongLink { index: found.index }
        }
    } else {
        Check::Other(found.clone())
    }
}

/// Whether a route read back before a removal may be deleted: it carries the mark and the
/// gateway dockroute set (RTM_DELETE itself would remove anyone's route of that prefix).
pub fn may_delete(found: &KRoute, want: &RouteSpec) -> bool {
    found.is_ours() && found.dst == want.dst && found.gateway() == want.gateway
}

/// What the kernel answered to one request.
#[derive(Debug)]
pub enum Answer {
    /// The echo of the request, filled in (RTM_GET: the route found).
    Done(Box<RtMsg>),
    /// The request failed with this (Darwin) errno.
    Errno(i32),
}

/// Something that sends a routing message and returns the kernel's answer to it: the routing
/// socket on macOS, a simulated kernel in tests. It sets the sequence number.
pub trait Requester {
    fn request(&mut self, m: RtMsg, what: &str) -> Result<Answer, NetError>;
}

fn os_errno(what: String, e: i32) -> NetError {
    NetError::os(what, io::Error::other(errno::describe(e)))
}

/// The route with exactly this prefix, if any (RTM_GET with the mask).
pub fn get_exact<R: Requester>(k: &mut R, dst: Ipv4Net) -> Result<Option<KRoute>, NetError> {
    let what = format!("reading the route {dst}");
    match k.request(get_exact_request(dst, 0), &what)? {
        Answer::Done(r) => Ok(KRoute::from_msg(&r)),
        Answer::Errno(errno::ESRCH) => Ok(None),
        Answer::Errno(e) => Err(os_errno(what, e)),
    }
}

/// Of the routes of a dump ([`routes`]), those of others that take traffic for part or all of
/// one of `subnets` from dockroute: a prefix equal to or inside a subnet (a shorter one never
/// beats dockroute's), not dockroute's, and not scoped. A scoped route (RTF_IFSCOPE, as VPN
/// clients and configd add them for a utun) is keyed by its interface and only carries traffic
/// bound to that interface; it neither beats an unscoped route nor blocks adding one of the same
/// prefix. `names` maps interface indexes to names (a dump carries none).
pub fn held(routes: &[KRoute], subnets: &[Ipv4Net], names: &HashMap<u32, String>) -> Vec<Held> {
    routes
        .iter()
        .filter(|r| {
            !r.is_ours()
                && !r.is_cache()
                && r.flags & rtf::IFSCOPE == 0
                && subnets.iter().any(|s| s.contains(&r.dst))
        })
        .map(|r| {
            let mut named = r.clone();
            if named.ifname.is_none() {
                named.ifname = names.get(&u32::from(r.index)).cloned();
            }
            Held {
                prefix: r.dst,
                ifindex: u32::from(r.index),
                by: named.to_string(),
            }
        })
        .collect()
}

/// The route the kernel picks for `dst`; `names` maps interface indexes to names for answers
/// that carry no interface name.
pub fn lookup<R: Requester>(
    k: &mut R,
    dst: Ipv4Addr,
    names: &HashMap<u32, String>,
) -> Result<Lookup, NetError> {
    let what = format!("looking up the route to {dst}");
    match k.request(lookup_request(dst, 0), &what)? {
        Answer::Done(r) => Ok(match KRoute::from_msg(&r) {
            Some(route) => {
                let ifname = route
                    .ifname
                    .clone()
                    .or_else(|| names.get(&u32::from(route.index)).cloned());
                route.lookup(ifname.as_deref())
            }
            None => Lookup::Unreachable {
                reason: "the kernel's answer names no IPv4 route".into(),
            },
        }),
        Answer::Errno(e) => Ok(Lookup::Unreachable {
            reason: errno::describe(e),
        }),
    }
}

/// Add dockroute's route `r`: only when its link is ready ([`link_ready`]); then read it back.
/// EEXIST with dockroute's own route there (an earlier run) is success; with anyone else's it is
/// a conflict that names the other route, which stays as it is. A route the kernel bound to
/// another interface is taken back out and reported.
pub fn add<R: Requester>(k: &mut R, r: &RouteSpec, links: &[LinkInfo]) -> Result<(), NetError> {
    link_ready(links, r).map_err(NetError::Conflict)?;
    let Some(gw) = r.gateway else {
        return Err(NetError::Unsupported("a route without a gateway on macOS"));
    };
    let what = format!("adding route {} via {gw}", r.dst);
    let existed = match k.request(add_request(r.dst, gw, 0), &what)? {
        Answer::Done(_) => false,
        Answer::Errno(errno::EEXIST) => true,
        Answer::Errno(e) => return Err(os_errno(what, e)),
    };
    let Some(found) = get_exact(k, r.dst)? else {
        return Err(NetError::Conflict(format!(
            "{}: added, but the kernel has no such route right after",
            r.dst
        )));
    };
    match check(&found, r) {
        Check::Ours => Ok(()),
        Check::WrongLink { index } => {
            // ours (mark and gateway): take it back rather than leave traffic on the wrong link
            let _ = k.request(delete_request(r.dst, 0), &what);
            Err(NetError::Conflict(format!(
                "{}: the kernel bound the route via {gw} to interface index {index}, not {} (index {}); removed it",
                r.dst, r.ifname, r.ifindex
            )))
        }
        Check::Other(other) if existed => Err(NetError::Conflict(format!(
            "{}: {}: {other} is not dockroute's and is left alone",
            r.dst,
            errno::describe(errno::EEXIST)
        ))),
        Check::Other(other) => Err(NetError::Conflict(format!(
            "{}: added, but reading it back shows {other}",
            r.dst
        ))),
    }
}

/// Remove dockroute's route `r`: read back first, delete only a route with dockroute's mark and
/// `r`'s gateway (RTM_DELETE itself would remove anyone's route of that prefix). Gone already,
/// or someone else's now: nothing to do.
pub fn remove<R: Requester>(k: &mut R, r: &RouteSpec) -> Result<(), NetError> {
    let Some(found) = get_exact(k, r.dst)? else {
        return Ok(());
    };
    if !may_delete(&found, r) {
        tracing::info!(
            "{}: the route there is not dockroute's now ({found}); left alone",
            r.dst
        );
        return Ok(());
    }
    let what = format!("deleting route {}", r.dst);
    match k.request(delete_request(r.dst, 0), &what)? {
        Answer::Done(_) | Answer::Errno(errno::ESRCH) => Ok(()),
        Answer::Errno(e) => Err(os_errno(what, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::rtmsg::{decode, mask_of, rta};

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn want() -> RouteSpec {
        RouteSpec {
            table: MAIN_TABLE,
            dst: net("172.17.0.0/16"),
            gateway: Some("192.168.99.100".parse().unwrap()),
            ifindex: 7,
            ifname: "vboxnet0".into(),
            prefsrc: None,
            metric: 0,
        }
    }

    /// What the kernel answers to an RTM_GET: `flags`, bound to `index`, with IFP and IFA.
    fn reply(dst: &str, gw: Sockaddr, flags: u32, index: u16, ifname: &str) -> RtMsg {
        let d = net(dst);
        let mut a: rtmsg::Addrs = Default::default();
        a[rtax::DST] = Some(Sockaddr::Inet(d.network()));
        a[rtax::GATEWAY] = Some(gw);
        a[rtax::NETMASK] = Some(Sockaddr::Mask(d.netmask()));
        a[rtax::IFP] = Some(Sockaddr::Link(LinkAddr {
            index,
            kind: 6,
            name: ifname.into(),
            addr: vec![0xa, 0, 0x27, 0, 0, 1],
        }));
        a[rtax::IFA] = Some(Sockaddr::Inet("192.168.99.1".parse().unwrap()));
        let mut m = RtMsg::request(rtm::GET, flags, 9, a);
        m.index = index;
        m.pid = 4242;
        m
    }

    /// Through the wire and back, as the socket layer will see it.
    fn wire(m: &RtMsg) -> RtMsg {
        match decode(&m.encode()).unwrap().0 {
            Message::Route(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn inet(s: &str) -> Sockaddr {
        Sockaddr::Inet(s.parse().unwrap())
    }

    #[test]
    fn add_is_route8s_add_with_the_mark() {
        let m = add_request(net("172.17.0.0/16"), "192.168.99.100".parse().unwrap(), 1);
        let bytes = m.encode();
        // route(8)'s vector, except the flags word: 0x803 | PROTO1 | PROTO2 = 0xc803
        assert_eq!(&bytes[..12], &[0x84, 0, 5, 1, 0, 0, 0, 0, 0x03, 0xc8, 0, 0]);
        assert_eq!(bytes.len(), 132);
        assert_eq!(m.flags & rtf::PROTO3, 0);
        assert_eq!(&bytes[124..], &[6, 2, 0, 0, 0xff, 0xff, 0, 0]);
        let d = delete_request(net("172.17.0.0/16"), 2).encode();
        assert_eq!(d.len(), 116);
        assert_eq!(
            get_exact_request(net("172.17.0.0/16"), 3).encode().len(),
            136
        );
        let l = lookup_request("172.17.0.1".parse().unwrap(), 4);
        assert_eq!(l.addr_bits(), rta::DST | rta::IFP);
    }

    #[test]
    fn reads_a_get_reply_and_tells_ours_from_theirs() {
        let ours = wire(&reply(
            "172.17.0.0/16",
            inet("192.168.99.100"),
            ADD_FLAGS | rtf::PRCLONING | rtf::DONE,
            7,
            "vboxnet0",
        ));
        let k = KRoute::from_msg(&ours).unwrap();
        assert_eq!(
            k.to_string(),
            "172.17.0.0/16 via 192.168.99.100 dev vboxnet0 flags UGcS12"
        );
        assert!(k.is_ours());
        assert_eq!(check(&k, &want()), Check::Ours);
        assert!(may_delete(&k, &want()));

        // the same route bound to the VPN's interface: the kernel took another way
        let wrong = KRoute::from_msg(&wire(&reply(
            "172.17.0.0/16",
            inet("192.168.99.100"),
            ADD_FLAGS | rtf::DONE,
            12,
            "utun3",
        )))
        .unwrap();
        assert_eq!(check(&wrong, &want()), Check::WrongLink { index: 12 });

        // AnyConnect's route for the same prefix: not ours, never deleted
        let vpn = KRoute::from_msg(&wire(&reply(
            "172.17.0.0/16",
            inet("10.8.0.1"),
            rtf::UP | rtf::GATEWAY | rtf::STATIC | rtf::DONE,
            12,
            "utun3",
        )))
        .unwrap();
        assert!(!vpn.is_ours());
        assert!(matches!(check(&vpn, &want()), Check::Other(_)));
        assert!(!may_delete(&vpn, &want()));
        assert_eq!(
            vpn.foreign(Some("utun3")).to_string(),
            "172.17.0.0/16 via 10.8.0.1 dev utun3 table main proto static"
        );

        // marked but with another gateway (a VM that moved): ours to replace, not this one's
        let mut moved = k.clone();
        moved.via = Via::Gateway("192.168.99.101".parse().unwrap());
        assert!(!may_delete(&moved, &want()));
        // marked with only one protocol flag, or scoped: not ours
        let mut one = k.clone();
        one.flags &= !rtf::PROTO2;
        assert!(!one.is_ours());
        let mut scoped = k.clone();
        scoped.flags |= rtf::IFSCOPE;
        assert!(!scoped.is_ours());
    }

    #[test]
    fn reads_a_dump_into_routes_and_neighbours() {
        let connected = reply(
            "192.168.99.0/24",
            Sockaddr::Link(LinkAddr {
                index: 7,
                kind: 6,
                name: String::new(),
                addr: vec![],
            }),
            rtf::UP | rtf::CLONING,
            7,
            "",
        );
        let mut arp_ok = reply(
            "192.168.99.100/32",
            Sockaddr::Link(LinkAddr {
                index: 7,
                kind: 6,
                name: String::new(),
                addr: vec![8, 0, 0x27, 0xaa, 0xbb, 0xcc],
            }),
            rtf::UP | rtf::HOST | rtf::LLINFO | rtf::WASCLONED,
            7,
            "",
        );
        arp_ok.addrs[rtax::NETMASK] = None;
        let mut arp_incomplete = arp_ok.clone();
        arp_incomplete.addrs[rtax::DST] = Some(inet("192.168.99.101"));
        arp_incomplete.addrs[rtax::GATEWAY] = Some(Sockaddr::Link(LinkAddr {
            index: 7,
            kind: 6,
            name: String::new(),
            addr: vec![],
        }));
        let ours = reply("172.17.0.0/16", inet("192.168.99.100"), ADD_FLAGS, 7, "");
        let mut buf = Vec::new();
        for m in [&connected, &arp_ok, &arp_incomplete, &ours] {
            buf.extend(m.encode());
        }
        let msgs = rtmsg::split(&buf).unwrap();
        let rs = routes(&msgs);
        assert_eq!(rs.len(), 2, "ARP entries are not routes: {rs:?}");
        assert_eq!(rs[0].foreign(Some("vboxnet0")).protocol, "kernel");
        assert!(rs[1].is_ours());
        assert_eq!(
            rs[1].entry("vboxnet0").to_string(),
            "route 172.17.0.0/16 via 192.168.99.100 dev vboxnet0 table main proto dockroute"
        );
        let n = neighbours(&msgs);
        assert_eq!(
            n,
            vec![
                Neighbour {
                    ifindex: 7,
                    ip: "192.168.99.100".parse().unwrap(),
                    live: true,
                    lladdr: Some("08:00:27:aa:bb:cc".into()),
                },
                Neighbour {
                    ifindex: 7,
                    ip: "192.168.99.101".parse().unwrap(),
                    live: false,
                    lladdr: None,
                },
            ]
        );
    }

    #[test]
    fn held_reads_others_routes_inside_the_subnets_from_a_dump_and_skips_scoped_ones() {
        let vpn_flags = rtf::UP | rtf::GATEWAY | rtf::STATIC;
        let msgs = [
            // a VPN's scoped route for the whole subnet (RTF_IFSCOPE, rtm_index = utun3): it
            // only carries traffic bound to utun3, and does not block an unscoped add
            reply(
                "172.17.0.0/16",
                inet("10.8.0.1"),
                vpn_flags | rtf::IFSCOPE,
                12,
                "",
            ),
            // the VPN's unscoped route for one /24 inside it: wins over a /16 of dockroute's
            reply("172.17.5.0/24", inet("10.8.0.1"), vpn_flags, 12, ""),
            // dockroute's own route
            reply("172.17.0.0/16", inet("192.168.99.100"), ADD_FLAGS, 7, ""),
            // a shorter prefix covering the subnet: never wins
            reply("172.16.0.0/12", inet("10.8.0.1"), vpn_flags, 12, ""),
            // elsewhere
            reply("10.0.0.0/8", inet("10.8.0.1"), vpn_flags, 12, ""),
            // a host route a VPN added for one container address
            reply(
                "172.17.0.9/32",
                inet("10.8.0.1"),
                vpn_flags | rtf::HOST,
                12,
                "",
            ),
            // a clone the kernel made (cache): not a route anyone added
            reply(
                "172.17.0.2/32",
                inet("192.168.99.100"),
                rtf::UP | rtf::GATEWAY | rtf::HOST | rtf::WASCLONED,
                7,
                "",
            ),
        ];
        let mut buf = Vec::new();
        for m in &msgs {
            buf.extend(m.encode());
        }
        let all = routes(&rtmsg::split(&buf).unwrap());
        let names = HashMap::from([(12, "utun3".to_string())]);
        let h = held(&all, &[net("172.17.0.0/16")], &names);
        let seen: Vec<(String, u32, String)> = h
            .iter()
            .map(|h| (h.prefix.to_string(), h.ifindex, h.by.clone()))
            .collect();
        assert_eq!(
            seen,
            [
                (
                    "172.17.5.0/24".to_string(),
                    12,
                    "172.17.5.0/24 via 10.8.0.1 dev utun3 flags UGS".to_string()
                ),
                (
                    "172.17.0.9/32".to_string(),
                    12,
                    "172.17.0.9/32 via 10.8.0.1 dev utun3 flags UGHS".to_string()
                ),
            ]
        );
        // with the scoped route alone, nothing is held: no needless split
        let scoped = routes(&rtmsg::split(&msgs[0].encode()).unwrap());
        assert_eq!(scoped.len(), 1);
        assert_eq!(held(&scoped, &[net("172.17.0.0/16")], &names), vec![]);
    }

    #[test]
    fn a_host_route_and_odd_masks() {
        let mut m = reply(
            "10.1.2.3/32",
            inet("10.0.0.1"),
            rtf::UP | rtf::GATEWAY | rtf::HOST,
            4,
            "en0",
        );
        m.addrs[rtax::NETMASK] = None;
        assert_eq!(KRoute::from_msg(&m).unwrap().dst, net("10.1.2.3/32"));
        let mut holes = m.clone();
        holes.flags &= !rtf::HOST;
        holes.addrs[rtax::NETMASK] = Some(Sockaddr::Mask("255.0.255.0".parse().unwrap()));
        assert_eq!(KRoute::from_msg(&holes), None);
        let mut default = m.clone();
        default.flags &= !rtf::HOST;
        default.addrs[rtax::DST] = Some(inet("0.0.0.0"));
        default.addrs[rtax::NETMASK] = Some(Sockaddr::Mask(mask_of(0)));
        assert_eq!(KRoute::from_msg(&default).unwrap().dst, net("0.0.0.0/0"));
    }

    #[test]
    fn an_add_waits_for_the_link_and_its_address() {
        let mut links = vec![LinkInfo {
            index: 7,
            name: "vboxnet0".into(),
            up: true,
            loopback: false,
            addrs: vec!["192.168.99.1/24".parse().unwrap()],
            kind: None,
        }];
        assert_eq!(link_ready(&links, &want()), Ok(()));
        links[0].addrs = vec!["192.168.56.1/24".parse().unwrap()];
        let e = link_ready(&links, &want()).unwrap_err();
        assert!(
            e.contains("no address on the network of 192.168.99.100"),
            "{e}"
        );
        links[0].up = false;
        assert!(link_ready(&links, &want()).unwrap_err().contains("is down"));
        links[0].index = 8; // re-created with another index
        assert!(link_ready(&links, &want()).unwrap_err().contains("is gone"));
    }

    #[test]
    fn store_keys_cover_every_interface() {
        assert_eq!(
            store_key("bridge100"),
            "State:/Network/Interface/bridge100/IPv4"
        );
        let re = STORE_PATTERNS[0];
        assert_eq!(re, "State:/Network/Interface/[^/]+/IPv4");
        let key = store_key("vboxnet0");
        let (pre, post) = re.split_once("[^/]+").unwrap();
        let name = key
            .strip_prefix(pre)
            .and_then(|k| k.strip_suffix(post))
            .unwrap();
        assert!(!name.contains('/'));
    }

    #[test]
    fn replies_are_matched_by_pid_and_seq_and_events_filtered() {
        let m = Message::Route(reply(
            "172.17.0.0/16",
            inet("192.168.99.100"),
            ADD_FLAGS,
            7,
            "vboxnet0",
        ));
        assert!(is_reply(&m, 4242, 9));
        assert!(!is_reply(&m, 4243, 9));
        assert!(!is_reply(&m, 4242, 10));
        assert!(!is_event(&m), "an RTM_GET is no change");
        let Message::Route(mut add) = m else { panic!() };
        add.kind = rtm::ADD;
        assert!(is_event(&Message::Route(add.clone())));
        add.errno = rtmsg::errno::EEXIST;
        assert!(
            !is_event(&Message::Route(add)),
            "a failed add changed nothing"
        );
        assert!(is_event(&Message::Link(rtmsg::IfMsg {
            index: 7,
            flags: 1
        })));
    }

    /// A simulated XNU routing table speaking bytes: one table keyed by prefix; RTM_ADD of a
    /// prefix that has a route fails with EEXIST whatever the gateway; RTM_DELETE removes the
    /// prefix's route whoever's it is; RTM_GET with a mask is exact, without one the longest
    /// prefix. A gateway on 192.168.99.0/24 binds to vboxnet0 (index 7) unless `vbox_down`,
    /// then to the default route's interface (en0, index 4), as the kernel does.
    struct Sim {
        routes: Vec<(Ipv4Net, Ipv4Addr, u32, u16)>,
        vbox_down: bool,
        seq: i32,
        requests: Vec<u8>,
    }

    impl Sim {
        fn new() -> Sim {
            Sim {
                routes: vec![(
                    net("0.0.0.0/0"),
                    "10.0.0.1".parse().unwrap(),
                    rtf::UP | rtf::GATEWAY | rtf::STATIC,
                    4,
                )],
                vbox_down: false,
                seq: 0,
                requests: Vec::new(),
            }
        }

        /// The table as a sysctl NET_RT_DUMP returns it, read back with [`routes`].
        fn dump(&self) -> Vec<KRoute> {
            let mut buf = Vec::new();
            for r in &self.routes {
                let mut a: rtmsg::Addrs = Default::default();
                a[rtax::DST] = Some(Sockaddr::Inet(r.0.network()));
                a[rtax::GATEWAY] = Some(Sockaddr::Inet(r.1));
                a[rtax::NETMASK] = Some(Sockaddr::Mask(r.0.netmask()));
                let mut m = RtMsg::request(rtm::GET, r.2 | rtf::DONE, 0, a);
                m.index = r.3;
                buf.extend(m.encode());
            }
            routes(&rtmsg::split(&buf).unwrap())
        }

        fn has(&self, dst: &str, gw: &str) -> bool {
            let (d, g): (Ipv4Net, Ipv4Addr) = (net(dst), gw.parse().unwrap());
            self.routes.iter().any(|r| r.0 == d && r.1 == g)
        }

        fn name(index: u16) -> &'static str {
            match index {
                7 => "vboxnet0",
                12 => "utun3",
                _ => "en0",
            }
        }

        fn reply(&self, m: &RtMsg, r: &(Ipv4Net, Ipv4Addr, u32, u16)) -> RtMsg {
            let mut a: rtmsg::Addrs = Default::default();
            a[rtax::DST] = Some(Sockaddr::Inet(r.0.network()));
            a[rtax::GATEWAY] = Some(Sockaddr::Inet(r.1));
            a[rtax::NETMASK] = Some(Sockaddr::Mask(r.0.netmask()));
            a[rtax::IFP] = Some(Sockaddr::Link(LinkAddr {
                index: r.3,
                kind: 6,
                name: Sim::name(r.3).into(),
                addr: vec![0xa, 0, 0x27, 0, 0, r.3 as u8],
            }));
            let mut out = RtMsg::request(m.kind, r.2 | rtf::DONE, m.seq, a);
            out.index = r.3;
            out.pid = 4242;
            // the kernel trims the mask it returns: go through the wire as it would
            let mut bytes = out.encode();
            let mask_at = RT_OFF + 16 + 16;
            let used = 4 + r
                .0
                .netmask()
                .octets()
                .iter()
                .rposition(|b| *b != 0)
                .map_or(0, |i| i + 1);
            bytes[mask_at] = used as u8;
            bytes[mask_at + 1] = 0xff;
            match decode(&bytes).unwrap().0 {
                Message::Route(r) => r,
                _ => unreachable!(),
            }
        }
    }

    const RT_OFF: usize = rtmsg::RT_MSGHDR_LEN;

    impl Requester for Sim {
        fn request(&mut self, m: RtMsg, _what: &str) -> Result<Answer, NetError> {
            self.seq += 1;
            let mut m = m;
            m.seq = self.seq;
            let bytes = m.encode();
            self.requests.extend(&bytes);
            let Message::Route(m) = decode(&bytes).unwrap().0 else {
                panic!("not a route message")
            };
            assert_eq!(m.flags & rtf::PROTO3, 0, "never PROTO3");
            let dst = m.dst().and_then(Sockaddr::inet).unwrap();
            let mask = match m.netmask() {
                Some(Sockaddr::Mask(mk)) => Some(rtmsg::prefix_len(*mk).unwrap()),
                _ => None,
            };
            let exact = |mask: u8| Ipv4Net::new(dst, mask).unwrap().trunc();
            match m.kind {
                rtm::ADD => {
                    let d = exact(mask.unwrap());
                    if self.routes.iter().any(|r| r.0 == d) {
                        return Ok(Answer::Errno(errno::EEXIST));
                    }
                    let gw = m.gateway().and_then(Sockaddr::inet).unwrap();
                    let on_vbox = net("192.168.99.0/24").contains(&gw) && !self.vbox_down;
                    let index = if on_vbox { 7 } else { 4 };
                    self.routes.push((d, gw, m.flags | rtf::PRCLONING, index));
                    Ok(Answer::Done(Box::new(m)))
                }
                rtm::DELETE => {
                    let d = exact(mask.unwrap());
                    match self.routes.iter().position(|r| r.0 == d) {
                        Some(i) => {
                            self.routes.remove(i);
                            Ok(Answer::Done(Box::new(m)))
                        }
                        None => Ok(Answer::Errno(errno::ESRCH)),
                    }
                }
                rtm::GET => {
                    let found = match mask {
                        Some(p) => self.routes.iter().find(|r| r.0 == exact(p)),
                        None => self
                            .routes
                            .iter()
                            .filter(|r| r.0.contains(&dst))
                            .max_by_key(|r| r.0.prefix_len()),
                    };
                    match found {
                        Some(r) => Ok(Answer::Done(Box::new(self.reply(&m, r)))),
                        None => Ok(Answer::Errno(errno::ESRCH)),
                    }
                }
                k => panic!("unexpected request {k}"),
            }
        }
    }

    fn vbox_links() -> Vec<LinkInfo> {
        vec![LinkInfo {
            index: 7,
            name: "vboxnet0".into(),
            up: true,
            loopback: false,
            addrs: vec!["192.168.99.1/24".parse().unwrap()],
            kind: None,
        }]
    }

    fn spec(dst: &str) -> RouteSpec {
        RouteSpec {
            dst: net(dst),
            ..want()
        }
    }

    #[test]
    fn against_a_simulated_kernel_a_vpn_route_is_never_touched() {
        let mut k = Sim::new();
        let links = vbox_links();
        // a clean add, read back on vboxnet0; adding again (EEXIST, ours) is fine
        add(&mut k, &want(), &links).unwrap();
        assert!(k.has("172.17.0.0/16", "192.168.99.100"));
        add(&mut k, &want(), &links).unwrap();
        assert_eq!(k.routes.len(), 2);
        remove(&mut k, &want()).unwrap();
        assert!(!k.has("172.17.0.0/16", "192.168.99.100"));
        remove(&mut k, &want()).unwrap(); // gone already: fine

        // a VPN takes the exact prefix
        k.routes.push((
            net("172.17.0.0/16"),
            "10.8.0.1".parse().unwrap(),
            rtf::UP | rtf::GATEWAY | rtf::STATIC,
            12,
        ));
        let e = add(&mut k, &want(), &links).unwrap_err().to_string();
        assert!(
            e.contains("EEXIST") && e.contains("via 10.8.0.1 dev utun3"),
            "{e}"
        );
        // removing "our" /16 must not delete the VPN's route of the same prefix
        remove(&mut k, &want()).unwrap();
        assert!(
            k.has("172.17.0.0/16", "10.8.0.1"),
            "the VPN's route was deleted"
        );

        // held() sees it; the halves go in and win by longest prefix; the VPN's route stays
        let utun = HashMap::from([(12, "utun3".to_string())]);
        let h = held(&k.dump(), &[net("172.17.0.0/16")], &utun);
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].prefix, net("172.17.0.0/16"));
        assert_eq!(h[0].by, "172.17.0.0/16 via 10.8.0.1 dev utun3 flags UGS");
        for half in ["172.17.0.0/17", "172.17.128.0/17"] {
            add(&mut k, &spec(half), &links).unwrap();
        }
        let names: HashMap<u32, String> = HashMap::new();
        for probe in ["172.17.0.1", "172.17.200.9"] {
            let l = lookup(&mut k, probe.parse().unwrap(), &names).unwrap();
            assert_eq!(
                l.to_string(),
                "via 192.168.99.100 dev vboxnet0 table main",
                "{probe}"
            );
        }
        assert!(k.has("172.17.0.0/16", "10.8.0.1"));
        // held() ignores dockroute's own halves
        assert_eq!(held(&k.dump(), &[net("172.17.0.0/17")], &names), vec![]);
        // a route at our prefix with our mark but another gateway is not deleted either
        k.routes.retain(|r| r.0 != net("172.17.0.0/17"));
        k.routes.push((
            net("172.17.0.0/17"),
            "192.168.99.7".parse().unwrap(),
            ADD_FLAGS,
            7,
        ));
        remove(&mut k, &spec("172.17.0.0/17")).unwrap();
        assert!(k.has("172.17.0.0/17", "192.168.99.7"));
    }

    #[test]
    fn against_a_simulated_kernel_a_route_bound_elsewhere_is_taken_back() {
        let mut k = Sim::new();
        // the link looks ready to dockroute, but the kernel binds the gateway elsewhere
        k.vbox_down = true;
        let e = add(&mut k, &want(), &vbox_links()).unwrap_err().to_string();
        assert!(
            e.contains("interface index 4") && e.contains("removed it"),
            "{e}"
        );
        assert_eq!(
            k.routes.len(),
            1,
            "only the default route is left: {:?}",
            k.routes
        );
        // and with the link gone, nothing is even sent
        let before = k.requests.len();
        let e = add(&mut k, &want(), &[]).unwrap_err().to_string();
        assert!(e.contains("is gone"), "{e}");
        assert_eq!(k.requests.len(), before);
        // a lookup with no route at all
        k.routes.clear();
        let l = lookup(&mut k, "172.17.0.1".parse().unwrap(), &HashMap::new()).unwrap();
        assert!(matches!(l, Lookup::Unreachable { .. }), "{l}");
    }
}
