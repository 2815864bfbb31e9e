//! A blocking rtnetlink socket: requests and their replies matched by sequence number, a batch of
//! changes sent in one datagram, and an event socket for `--wait`.
//!
//! One-shot commands send a handful of requests to the kernel, which answers each within the
//! `sendto` call that carried it. A reactor buys nothing there, so there is none: no epoll, no
//! background task, no 64 KiB connection buffer. (netavark and innernet talk to rtnetlink the same
//! way.) The message types are netlink-packet-route's, through rtnetlink's re-exports.

use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::protocols::NETLINK_ROUTE;
use rtnetlink::sys::{Socket, SocketAddr};
use std::io;
use std::os::fd::AsFd;
use std::time::Instant;

/// The kernel caps one netlink datagram at 32 KiB when the reader offers that much.
const RECV_BUF: usize = 32 * 1024;
/// Changes sent in one datagram at most. The kernel queues an acknowledgement for each on the
/// socket before it is read, and each costs about a kilobyte of the receive buffer (the
/// socket buffer's overhead): a few hundred in one go overflow the default 208 KiB (ENOBUFS, as
/// `up` with 100 Docker networks, 300 changes, found).
const BATCH: usize = 64;
/// A dump the kernel marks as interrupted (the table changed under it) is read again, this often.
const DUMP_TRIES: usize = 3;

type Message = NetlinkMessage<RouteNetlinkMessage>;

/// Messages that carry link names: (type, length of the header after the netlink header, the
/// attributes that hold names). RTM_NEWLINK: IFLA_IFNAME, IFLA_QDISC, IFLA_IFALIAS,
/// IFLA_PHYS_PORT_NAME; RTM_NEWADDR: IFA_LABEL; RTM_NEWRULE: FRA_IIFNAME, FRA_OIFNAME.
const NAMED: [(u16, usize, &[u16]); 3] =
    [(16, 16, &[3, 6, 20, 38]), (20, 8, &[3]), (32, 12, &[3, 17])];
/// What a byte of a link name that is not UTF-8 becomes: ASCII SUB, a control character the
/// renderers show as `\x1a`, and never in a name dockroute accepts from a user.
pub const NOT_UTF8: u8 = 0x1a;

/// The kernel allows any byte but `/`, `:` and white space in a link name, and the parser refuses
/// a name that is not UTF-8, which would make every link dump fail. When a message that carries
/// names does not parse, each byte of an invalid sequence in its name attributes is replaced by
/// [`NOT_UTF8`] and it is parsed again (a copy; the lengths are unchanged).
fn with_link_names_repaired(raw: &[u8]) -> Option<Message> {
    let len = u32::from_ne_bytes(raw.get(..4)?.try_into().ok()?) as usize;
    let kind = u16::from_ne_bytes(raw.get(4..6)?.try_into().ok()?);
    let (_, header, attrs) = NAMED.iter().find(|(k, _, _)| *k == kind)?;
    let mut msg = raw.get(..len)?.to_vec();
    repair_names(&mut msg, 16 + header, attrs);
    Message::deserialize(&msg[..]).ok()
}

/// The attributes start at `at` (after the netlink header and the message's own header).
fn repair_names(msg: &mut [u8], mut at: usize, attrs: &[u16]) {
    while let Some(head) = msg.get(at..at + 4) {
        let nla_len = u16::from_ne_bytes([head[0], head[1]]) as usize;
        let nla_type = u16::from_ne_bytes([head[2], head[3]]) & 0x3fff;
        if nla_len < 4 || at + nla_len > msg.len() {
            return;
        }
        if attrs.contains(&nla_type) {
            replace_invalid_utf8(&mut msg[at + 4..at + nla_len]);
        }
        at += (nla_len + 3) & !3;
    }
}

fn replace_invalid_utf8(b: &mut [u8]) {
    let mut i = 0;
    while let Err(e) = std::str::from_utf8(&b[i..]) {
        let start = i + e.valid_up_to();
        let end = start + e.error_len().unwrap_or(b.len() - start);
        b[start..end].fill(NOT_UTF8);
        i = end;
    }
}

/// The first message of `datagram` when it is a whole RTM_NEWROUTE message.
fn raw_route(datagram: &[u8]) -> Option<&[u8]> {
    let len = u32::from_ne_bytes(datagram.get(..4)?.try_into().ok()?) as usize;
    let kind = u16::from_ne_bytes(datagram.get(4..6)?.try_into().ok()?);
    (kind == 24 && len >= 28)
        .then(|| datagram.get(..len))
        .flatten()
}

/// The fields of a raw IPv4 route message a filter needs, read without parsing the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawRoute {
    pub family: u8,
    pub dst: u32,
    pub dst_len: u8,
    pub table: u32,
    pub protocol: u8,
    pub oif: Option<u32>,
}

impl RawRoute {
    /// `msg`: a whole RTM_NEWROUTE message (netlink header, rtmsg, attributes).
    pub fn read(msg: &[u8]) -> Option<RawRoute> {
        let h = msg.get(16..28)?;
        let mut r = RawRoute {
            family: h[0],
            dst: 0,
            dst_len: h[1],
            table: u32::from(h[4]),
            protocol: h[5],
            oif: None,
        };
        let mut at = 28;
        while let Some(head) = msg.get(at..at + 4) {
            let nla_len = u16::from_ne_bytes([head[0], head[1]]) as usize;
            let nla_type = u16::from_ne_bytes([head[2], head[3]]) & 0x3fff;
            if nla_len < 4 {
                break;
            }
            let v = msg.get(at + 4..at + nla_len)?;
            match (nla_type, v.len()) {
                (1, 4) => r.dst = u32::from_be_bytes([v[0], v[1], v[2], v[3]]), // RTA_DST
                (4, 4) => r.oif = Some(u32::from_ne_bytes([v[0], v[1], v[2], v[3]])), // RTA_OIF
                (15, 4) => r.table = u32::from_ne_bytes([v[0], v[1], v[2], v[3]]), // RTA_TABLE
                _ => {}
            }
            at += (nla_len + 3) & !3;
        }
        Some(r)
    }
}

/// One rtnetlink request socket.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("netlink: {what}"))
}

/// The error a kernel answer carries, if any (`code` is a negative errno, 0 for an ack).
fn kernel_error(code: i32) -> Option<io::Error> {
    (code != 0).then(|| io::Error::from_raw_os_error(code.saturating_abs()))
}

impl Rtnl {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl {
            socket,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// A socket whose dump requests the kernel checks strictly and filters by the header's
    /// fields (NETLINK_GET_STRICT_CHK, Linux 4.20): a route dump with `rtm_protocol` set returns
    /// only that protocol's routes, so a main table of 20,000 routes is walked in the kernel but
    /// not copied out and parsed here.
    pub fn open_strict() -> io::Result<Self> {
        let rtnl = Self::open()?;
        rtnl.socket.set_netlink_get_strict_chk(true)?;
        Ok(rtnl)
    }

    /// Serialize `msgs` (each with its header flags) into one datagram with consecutive sequence
    /// numbers, and send it; returns the first sequence number.
    fn send(&mut self, msgs: Vec<(RouteNetlinkMessage, u16)>) -> io::Result<u32> {
        let first = self.seq.wrapping_add(1);
        let mut out = Vec::new();
        for (m, flags) in msgs {
            self.seq = self.seq.wrapping_add(1);
            let mut header = NetlinkHeader::default();
            header.flags = flags;
            header.sequence_number = self.seq;
            let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(m));
            msg.finalize();
            let at = out.len();
            out.resize(at + msg.buffer_len(), 0);
            msg.serialize(&mut out[at..]);
        }
        if self.socket.send(&out, 0)? != out.len() {
            return Err(invalid("short send"));
        }
        Ok(first)
    }

    /// Read one datagram and hand each message in it to `each`, until `each` says it is done.
    fn receive(&mut self, each: impl FnMut(Message) -> io::Result<bool>) -> io::Result<()> {
        self.receive_where(&|_| true, each)
    }

    /// [`Rtnl::receive`], skipping unparsed the route messages (RTM_NEWROUTE) `keep` refuses.
    fn receive_where(
        &mut self,
        keep: &dyn Fn(&[u8]) -> bool,
        mut each: impl FnMut(Message) -> io::Result<bool>,
    ) -> io::Result<()> {
        loop {
            self.buf.clear();
            let n = self.socket.recv(&mut self.buf, nix::libc::MSG_TRUNC)?;
            if n > self.buf.len() {
                return Err(invalid(format!("a reply of {n} bytes did not fit")));
            }
            let mut rest = &self.buf[..];
            while !rest.is_empty() {
                if let Some(raw) = raw_route(rest)
                    && !keep(raw)
                {
                    rest = rest.get((raw.len() + 3) & !3..).unwrap_or_default();
                    continue;
                }
                let msg = match Message::deserialize(rest) {
                    Ok(msg) => msg,
                    Err(e) => with_link_names_repaired(rest).ok_or_else(|| invalid(e))?,
                };
                let len = (msg.header.length as usize + 3) & !3;
                rest = rest.get(len.max(1)..).unwrap_or_default();
                if each(msg)? {
                    return Ok(());
                }
            }
        }
    }

    /// A dump request: every message of the reply, in order. Read again if the kernel says the
    /// dump was interrupted by a change.
    pub fn dump(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.dump_where(msg, &|_| true)
    }

    /// [`Rtnl::dump`], leaving out (unparsed: most of a large dump's cost) the route messages
    /// `keep` refuses; it sees each raw message, see [`RawRoute`].
    pub fn dump_where(
        &mut self,
        msg: RouteNetlinkMessage,
        keep: &dyn Fn(&[u8]) -> bool,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        let mut tries = 0;
        loop {
            tries += 1;
            let seq = self.send(vec![(msg.clone(), NLM_F_REQUEST | NLM_F_DUMP)])?;
            let mut out = Vec::new();
            let mut interrupted = false;
            self.receive_where(keep, |m| {
                if m.header.sequence_number != seq {
                    return Ok(false);
                }
                interrupted |= m.header.flags & NLM_F_DUMP_INTR != 0;
                match m.payload {
                    NetlinkPayload::InnerMessage(inner) => {
                        out.push(inner);
                        Ok(false)
                    }
                    NetlinkPayload::Done(d) => kernel_error(d.code).map_or(Ok(true), Err),
                    NetlinkPayload::Error(e) => kernel_error(e.raw_code()).map_or(Ok(true), Err),
                    NetlinkPayload::Noop => Ok(false),
                    _ => Err(invalid("unexpected reply to a dump")),
                }
            })?;
            if !interrupted || tries == DUMP_TRIES {
                return Ok(out);
            }
            tracing::debug!("netlink dump interrupted by a change; reading it again");
        }
    }

    /// A request with exactly one answer (a route lookup). The outer error is the socket's, the
    /// inner one the kernel's answer.
    pub fn get(
        &mut self,
        msg: RouteNetlinkMessage,
    ) -> io::Result<Result<RouteNetlinkMessage, io::Error>> {
        let seq = self.send(vec![(msg, NLM_F_REQUEST)])?;
        let mut answer = None;
        self.receive(|m| {
            if m.header.sequence_number != seq {
                return Ok(false);
            }
            answer = Some(match m.payload {
                NetlinkPayload::InnerMessage(inner) => Ok(inner),
                NetlinkPayload::Error(e) => {
                    Err(kernel_error(e.raw_code()).unwrap_or_else(|| invalid("empty answer")))
                }
                _ => return Err(invalid("unexpected reply")),
            });
            Ok(true)
        })?;
        answer.ok_or_else(|| invalid("no answer"))
    }

    /// Changes (`NLM_F_REQUEST | NLM_F_ACK | flags`), [`BATCH`] to a datagram. The kernel applies
    /// them in order and acknowledges each; one failing does not stop the others. Returns each
    /// change's result, in order. An `Err` from this function means the results are unknown.
    pub fn changes(
        &mut self,
        mut msgs: Vec<(RouteNetlinkMessage, u16)>,
    ) -> io::Result<Vec<Result<(), io::Error>>> {
        let mut results = Vec::with_capacity(msgs.len());
        while !msgs.is_empty() {
            let rest = msgs.split_off(msgs.len().min(BATCH));
            results.extend(self.batch(msgs)?);
            msgs = rest;
        }
        Ok(results)
    }

    /// [`Rtnl::changes`], in one datagram.
    fn batch(
        &mut self,
        msgs: Vec<(RouteNetlinkMessage, u16)>,
    ) -> io::Result<Vec<Result<(), io::Error>>> {
        let n = msgs.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let first = self.send(
            msgs.into_iter()
                .map(|(m, flags)| (m, NLM_F_REQUEST | NLM_F_ACK | flags))
                .collect(),
        )?;
        let mut results: Vec<Option<Result<(), io::Error>>> = (0..n).map(|_| None).collect();
        let mut left = n;
        self.receive(|m| {
            let i = m.header.sequence_number.wrapping_sub(first) as usize;
            if let (Some(slot @ None), NetlinkPayload::Error(e)) = (results.get_mut(i), &m.payload)
            {
                *slot = Some(kernel_error(e.raw_code()).map_or(Ok(()), Err));
                left -= 1;
            }
            Ok(left == 0)
        })?;
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(invalid("no acknowledgement"))))
            .collect())
    }
}

/// A socket subscribed to rtnetlink multicast groups. Events are hints: the caller re-reads.
pub struct Events {
    socket: Socket,
    buf: Vec<u8>,
}

impl Events {
    /// `groups`: `RTNLGRP_*` numbers.
    pub fn subscribe(groups: &[u32]) -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        for g in groups {
            socket.add_membership(*g)?;
        }
        Ok(Events {
            socket,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Wait until something arrives (true) or `deadline` passes (false). A lost event (the kernel
    /// says the socket overran) counts as one.
    pub fn wait(&mut self, deadline: Instant) -> io::Result<bool> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // Round up, so that a deadline less than a millisecond away is still waited for.
            let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
            match poll(
                &mut fds,
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(0) if Instant::now() >= deadline => return Ok(false),
                Ok(0) => continue,
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        self.buf.clear();
        match self.socket.recv(&mut self.buf, nix::libc::MSG_DONTWAIT) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
            Err(e) => Err(e),
        }
    }
}

/// A netlink socket joined to multicast groups of any netlink protocol, read without blocking:
/// the event sources of `watch` (rtnetlink's groups, nftables' change notifications). The caller
/// polls [`Subscription::fd`] and hands each datagram to its classifier.
pub struct Subscription {
    socket: Socket,
    buf: Vec<u8>,
}

impl Subscription {
    /// `protocol`: `NETLINK_*`; `groups`: that protocol's multicast group numbers.
    pub fn open(protocol: isize, groups: &[u32]) -> io::Result<Self> {
        let mut socket = Socket::new(protocol)?;
        socket.bind_auto()?;
        socket.set_non_blocking(true)?;
        // a VPN connect can send thousands of route messages at once
        let _ = socket.set_rx_buf_sz(1 << 20);
        for g in groups {
            socket.add_membership(*g)?;
        }
        Ok(Subscription {
            socket,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    pub fn join(&self, group: u32) -> io::Result<()> {
        self.socket.add_membership(group)
    }

    pub fn leave(&self, group: u32) -> io::Result<()> {
        self.socket.drop_membership(group)
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// Read every datagram waiting, handing each to `each`. Returns whether the kernel dropped
    /// messages because the socket overran (then the caller must assume anything changed).
    pub fn drain(&mut self, mut each: impl FnMut(&[u8])) -> io::Result<bool> {
        let mut overran = false;
        loop {
            self.buf.clear();
            match self.socket.recv(&mut self.buf, nix::libc::MSG_DONTWAIT) {
                Ok(_) => each(&self.buf),
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => overran = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(overran),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raw_route_reads_as_the_parser_reads_it() {
        use rtnetlink::RouteMessageBuilder;
        use rtnetlink::packet_route::route::RouteProtocol;
        use std::net::Ipv4Addr;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .table_id(5017)
            .destination_prefix(Ipv4Addr::new(172, 17, 0, 0), 16)
            .output_interface(7)
            .protocol(RouteProtocol::Other(100))
            .build();
        let mut msg = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)),
        );
        msg.header.message_type = 24;
        msg.finalize();
        let mut raw = vec![0; msg.buffer_len()];
        msg.serialize(&mut raw);
        let got = RawRoute::read(raw_route(&raw).unwrap()).unwrap();
        assert_eq!(
            got,
            RawRoute {
                family: 2,
                dst: u32::from(Ipv4Addr::new(172, 17, 0, 0)),
                dst_len: 16,
                table: 5017,
                protocol: 100,
                oif: Some(7),
            }
        );
        assert!(raw_route(&raw[..20]).is_none(), "a cut message is not read");
    }

    #[test]
    fn invalid_utf8_bytes_become_sub_and_valid_text_stays() {
        let mut b = *b"x\xffy\xc3\xa9\xe2\x82";
        replace_invalid_utf8(&mut b);
        assert_eq!(&b, b"x\x1ay\xc3\xa9\x1a\x1a");
    }

    #[test]
    fn a_link_message_with_a_name_that_is_not_utf8_parses() {
        use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
        let mut link = LinkMessage::default();
        link.header.index = 7;
        link.attributes.push(LinkAttribute::IfName("xAy".into()));
        let mut msg = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)),
        );
        msg.finalize();
        let mut raw = vec![0; msg.buffer_len()];
        msg.serialize(&mut raw);
        let at = raw.windows(3).position(|w| w == b"xAy").unwrap();
        raw[at + 1] = 0xff;
        assert!(Message::deserialize(&raw[..]).is_err());
        let parsed = with_link_names_repaired(&raw).unwrap();
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) = parsed.payload else {
            panic!("not a link");
        };
        assert_eq!(l.header.index, 7);
        assert!(
            l.attributes
                .contains(&LinkAttribute::IfName("x\u{1a}y".into()))
        );
    }
}
