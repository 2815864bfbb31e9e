//! Which routing-socket messages wake `watch` on macOS, and when a reconcile there reads pf.
//! Pure and tested on every platform with messages built and read by [`crate::net::rtmsg`];
//! the socket and the loop are in `macos.rs`.
//!
//! A reconcile re-observes everything, so a message is only a hint of *when* to look. The ones
//! worth a look:
//! - links and IPv4 addresses (RTM_IFINFO, RTM_NEWADDR, RTM_DELADDR): the host-only link came,
//!   went, or got or lost its address; a VPN's utun came up.
//! - routes (RTM_ADD, RTM_DELETE, RTM_CHANGE that succeeded) whose destination lies inside one
//!   of the subnets (the subnet itself, its halves, anything longer): dockroute's route deleted,
//!   someone else's route for the subnet or a part of it added (a VPN's utun route: dockroute
//!   then outdoes it with longer prefixes), or that route gone again (back to the whole subnet). A shorter prefix (a default
//!   route, a VPN's 172.16.0.0/12) never beats dockroute's longer one, so it is no reason to look.
//! - ARP entries (routes flagged RTF_LLINFO), only when the VM IP comes from the ARP table.
//!
//! Not worth one: the kernel's cache entries (cloned host routes, broadcast and multicast
//! entries), RTM_GET answers and failed requests (which change nothing), IPv6 routes and
//! addresses, multicast memberships, and every route outside the subnets.

use super::Causes;
use crate::net::darwin::{KRoute, MARK};
use crate::net::rtmsg::{self, Message, Sockaddr, rtf, rtm};
use ipnet::Ipv4Net;
use std::time::Duration;

/// What the current settings make relevant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interest {
    /// The subnets routed through the VM (empty: every route counts).
    pub subnets: Vec<Ipv4Net>,
    /// Whether the VM IP comes from the ARP table (then its entries count).
    pub neighbours: bool,
}

impl Interest {
    fn covers(&self, dst: Ipv4Net) -> bool {
        self.subnets.is_empty() || self.subnets.iter().any(|s| s.contains(&dst))
    }
}

/// The event one routing message is, as the log names it; `None` for the ones `watch` ignores.
pub fn event(m: &Message, interest: &Interest) -> Option<&'static str> {
    match m {
        Message::Link(_) => Some("link changed"),
        Message::Addr(a) => {
            // an address message without RTA_IFA names no family: look anyway
            if matches!(
                a.addrs[rtmsg::rtax::IFA],
                Some(Sockaddr::Other { .. } | Sockaddr::Link(_))
            ) {
                return None;
            }
            Some(match a.kind {
                rtm::NEWADDR => "address added",
                _ => "address deleted",
            })
        }
        Message::Route(r) => {
            if r.errno != 0 || !matches!(r.kind, rtm::ADD | rtm::DELETE | rtm::CHANGE) {
                return None;
            }
            let k = KRoute::from_msg(r)?;
            if k.flags & rtf::LLINFO != 0 {
                return interest.neighbours.then_some(match r.kind {
                    rtm::DELETE => "neighbour deleted",
                    _ => "neighbour changed",
                });
            }
            if k.is_cache() || !interest.covers(k.dst) {
                return None;
            }
            let ours = k.flags & MARK == MARK;
            Some(match (r.kind, ours) {
                (rtm::DELETE, true) => "dockroute's route deleted",
                (rtm::DELETE, false) => "route deleted",
                (rtm::ADD, true) => "route added",
                (rtm::ADD, false) => "conflicting route added",
                _ => "route changed",
            })
        }
        Message::Other { .. } => None,
    }
}

/// Add the events of one read from the routing socket (one message per read) to `causes`. An
/// unreadable message counts too: looking costs less than missing a change.
pub fn read(buf: &[u8], interest: &Interest, causes: &mut Causes) {
    match rtmsg::decode(buf) {
        Ok((m, _)) => {
            if let Some(what) = event(&m, interest) {
                causes.add(what);
            }
        }
        Err(e) => {
            tracing::debug!("unreadable routing message: {e}");
            causes.add("unreadable routing message");
        }
    }
}

/// Whether a reconcile reads pf (runs pfctl). pf sends no change events, so it is read when
/// something other than routes changed (a link, an address, configd's state: a VPN connecting),
/// after a failure, and otherwise at least once per `backstop`, however many route events come.
/// With no events at all the pacer's own backstop runs a full reconcile once per `backstop`:
/// pf is never read more often than that while nothing happens.
pub fn reads_firewall(
    causes: &Causes,
    last_failed: bool,
    since_read: Duration,
    backstop: Duration,
) -> bool {
    !causes.routes_only() || last_failed || since_read >= backstop
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::darwin::{ADD_FLAGS, add_request, delete_request};
    use crate::net::rtmsg::{IF_MSGHDR_LEN, IFA_MSGHDR_LEN, LinkAddr, RtMsg, rtax};
    use std::net::Ipv4Addr;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    fn interest() -> Interest {
        Interest {
            subnets: vec!["172.17.0.0/16".parse().unwrap()],
            neighbours: false,
        }
    }

    fn causes_of(msgs: &[Vec<u8>], i: &Interest) -> String {
        let mut c = Causes::default();
        for m in msgs {
            read(m, i, &mut c);
        }
        if c.is_empty() {
            String::new()
        } else {
            c.to_string()
        }
    }

    /// The kernel's broadcast of a request: the sender's pid, RTF_DONE on success.
    fn broadcast(mut m: RtMsg, errno: i32) -> Vec<u8> {
        m.pid = 4242;
        m.errno = errno;
        if errno == 0 {
            m.flags |= rtf::DONE;
        }
        m.encode()
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    const VM: Ipv4Addr = Ipv4Addr::new(192, 168, 99, 100);

    /// route(8)'s `route -n add -net 172.17.0.0/16 192.168.99.100` (no protocol flags: not
    /// dockroute's), as the kernel broadcasts it: msglen 130, the mask not padded.
    const ROUTE8_ADD: &str = "
        82 00 05 01 00 00 00 00 43 08 00 00 07 00 00 00
        39 30 00 00 01 00 00 00 00 00 00 00 00 00 00 00
        00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
        00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
        00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
        00 00 00 00 00 00 00 00 00 00 00 00 10 02 00 00
        ac 11 00 00 00 00 00 00 00 00 00 00 10 02 00 00
        c0 a8 63 64 00 00 00 00 00 00 00 00 06 02 00 00
        ff ff";

    #[test]
    fn route_changes_inside_the_subnets_wake_watch_and_say_whose() {
        let i = interest();
        let ours = net("172.17.0.0/16");
        assert_eq!(
            causes_of(&[hex(ROUTE8_ADD)], &i),
            "conflicting route added",
            "someone else's route for the subnet"
        );
        assert_eq!(
            causes_of(&[broadcast(add_request(ours, VM, 1), 0)], &i),
            "route added"
        );
        // RTM_DELETE's request carries no flags of the route; the kernel's broadcast carries
        // the deleted route's flags
        let mut del = delete_request(ours, 2);
        del.flags = ADD_FLAGS;
        assert_eq!(
            causes_of(&[broadcast(del.clone(), 0)], &i),
            "dockroute's route deleted"
        );
        del.flags = rtf::UP | rtf::GATEWAY | rtf::STATIC;
        let half = delete_request(net("172.17.128.0/17"), 3);
        assert_eq!(
            causes_of(&[broadcast(del, 0), broadcast(half, 0)], &i),
            "route deleted x2",
            "a VPN's route leaving (the halves go back to the whole subnet)"
        );
        let mut change = add_request(net("172.17.0.0/24"), VM, 4);
        change.kind = rtm::CHANGE;
        assert_eq!(causes_of(&[broadcast(change, 0)], &i), "route changed");
        let c = {
            let mut c = Causes::default();
            read(&hex(ROUTE8_ADD), &i, &mut c);
            c
        };
        assert!(c.routes_only(), "route events leave pf unread");
    }

    #[test]
    fn what_cannot_matter_does_not_wake_watch() {
        let i = interest();
        let theirs = |mut m: RtMsg| {
            m.flags &= !MARK;
            m
        };
        let vpn_12 = theirs(add_request(
            net("172.16.0.0/12"),
            Ipv4Addr::new(10, 8, 0, 1),
            1,
        ));
        let default = theirs(add_request(net("0.0.0.0/0"), Ipv4Addr::new(10, 8, 0, 1), 2));
        let elsewhere = theirs(add_request(net("10.0.0.0/8"), VM, 3));
        let failed = add_request(net("172.17.0.0/16"), VM, 4);
        let get = {
            let mut m = add_request(net("172.17.0.0/16"), VM, 5);
            m.kind = rtm::GET;
            m
        };
        // a host route the kernel cloned once traffic flowed to a container
        let mut clone = add_request(net("172.17.0.5/32"), VM, 6);
        clone.flags = rtf::UP | rtf::GATEWAY | rtf::HOST | rtf::WASCLONED;
        let msgs = [
            broadcast(vpn_12, 0),
            broadcast(default, 0),
            broadcast(elsewhere, 0),
            broadcast(failed, rtmsg::errno::EEXIST),
            broadcast(get, 0),
            broadcast(clone, 0),
        ];
        assert_eq!(causes_of(&msgs, &i), "");
        // with no subnets known, every route that is not a cache entry counts
        let all = Interest::default();
        assert_eq!(causes_of(&msgs[..3], &all), "conflicting route added x3");
    }

    /// An ARP entry as the kernel announces it: host route, link-level gateway with the MAC.
    fn arp(kind: u8) -> Vec<u8> {
        let mut a: rtmsg::Addrs = Default::default();
        a[rtax::DST] = Some(Sockaddr::Inet(VM));
        a[rtax::GATEWAY] = Some(Sockaddr::Link(LinkAddr {
            index: 7,
            kind: 6,
            name: String::new(),
            addr: vec![8, 0, 0x27, 1, 2, 3],
        }));
        let mut m = RtMsg::request(
            kind,
            rtf::UP | rtf::HOST | rtf::LLINFO | rtf::WASCLONED,
            0,
            a,
        );
        m.index = 7;
        broadcast(m, 0)
    }

    #[test]
    fn arp_entries_count_only_when_the_vm_ip_comes_from_the_arp_table() {
        let msgs = [arp(rtm::ADD), arp(rtm::DELETE)];
        assert_eq!(causes_of(&msgs, &interest()), "");
        let i = Interest {
            neighbours: true,
            ..interest()
        };
        assert_eq!(causes_of(&msgs, &i), "neighbour changed, neighbour deleted");
    }

    fn ifa(kind: u8, addr: &str) -> Vec<u8> {
        let mut v = vec![0u8; IFA_MSGHDR_LEN];
        v[2] = 5;
        v[3] = kind;
        v[4] = 0x20; // RTA_IFA
        v[12] = 9;
        v.extend(hex(addr));
        v[0] = v.len() as u8;
        v
    }

    #[test]
    fn links_and_ipv4_addresses_wake_watch_and_pf_is_read_then() {
        let mut ifinfo = vec![0u8; IF_MSGHDR_LEN];
        ifinfo[..4].copy_from_slice(&[IF_MSGHDR_LEN as u8, 0, 5, rtm::IFINFO]);
        ifinfo[8] = 0x41;
        ifinfo[12] = 9;
        let v4 = "10 02 00 00 c0 a8 40 01 00 00 00 00 00 00 00 00";
        // sockaddr_in6 fe80::1 (len 28, AF_INET6 30)
        let v6 = "1c 1e 00 00 00 00 00 00 fe 80 00 00 00 00 00 00
                  00 00 00 00 00 00 00 01 00 00 00 00";
        let msgs = [
            ifinfo,
            ifa(rtm::NEWADDR, v4),
            ifa(rtm::DELADDR, v4),
            ifa(rtm::NEWADDR, v6),
        ];
        let i = interest();
        assert_eq!(
            causes_of(&msgs, &i),
            "address added, address deleted, link changed"
        );
        let mut c = Causes::default();
        read(&msgs[0], &i, &mut c);
        assert!(!c.routes_only());
        let min = Duration::from_secs(60);
        assert!(reads_firewall(&c, false, Duration::ZERO, min));
    }

    #[test]
    fn garbage_counts_as_a_reason_to_look() {
        let mut c = Causes::default();
        read(&[0x10, 0x00, 0x04, 0x01], &interest(), &mut c);
        assert_eq!(c.to_string(), "unreadable routing message");
    }

    #[test]
    fn pf_is_read_at_least_once_per_backstop_while_only_routes_change() {
        let min = Duration::from_secs(60);
        let mut routes = Causes::default();
        routes.add("route deleted");
        assert!(!reads_firewall(
            &routes,
            false,
            Duration::from_secs(59),
            min
        ));
        assert!(reads_firewall(&routes, false, Duration::from_secs(60), min));
        assert!(
            reads_firewall(&routes, true, Duration::ZERO, min),
            "after a failure"
        );
        assert!(
            reads_firewall(&Causes::default(), false, Duration::ZERO, min),
            "the pacer's backstop (no events) reads everything"
        );
    }
}
