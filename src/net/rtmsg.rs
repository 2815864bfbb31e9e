//! The BSD routing-socket wire format as macOS (XNU) speaks it: `struct rt_msghdr` and the
//! sockaddrs that follow it, `if_msghdr` (RTM_IFINFO) and `ifa_msghdr` (RTM_NEWADDR,
//! RTM_DELADDR). Pure: no system calls and no `cfg`, so it is unit-tested on every platform
//! against fixed byte vectors.
//!
//! Layout (XNU `bsd/net/route.h`; every field fixed-width, identical on arm64 and x86_64, both
//! little-endian):
//!
//! | offset | field | type |
//! |---:|---|---|
//! | 0 | rtm_msglen | u16 |
//! | 2 | rtm_version | u8 (= 5) |
//! | 3 | rtm_type | u8 |
//! | 4 | rtm_index | u16 |
//! | 6 | padding | 2 bytes |
//! | 8 | rtm_flags | i32 |
//! | 12 | rtm_addrs | i32 (RTA_* bits) |
//! | 16 | rtm_pid | i32 |
//! | 20 | rtm_seq | i32 |
//! | 24 | rtm_errno | i32 |
//! | 28 | rtm_use | i32 |
//! | 32 | rtm_inits | u32 |
//! | 36 | rtm_rmx | struct rt_metrics, 56 bytes (rmx_expire, an i32, at 48) |
//! | 92 | one sockaddr per RTA bit, in RTAX order | |
//!
//! Each sockaddr starts with its length byte and is padded to a multiple of 4 bytes (XNU's
//! `ROUNDUP32`, not `sizeof(long)` as on FreeBSD); a zero length occupies 4 bytes and means an
//! all-zero sockaddr. Messages the kernel builds for broadcasts (`rt_msg1`) do not pad the last
//! sockaddr, so a final sockaddr whose padding runs past `rtm_msglen` is accepted. Netmasks come
//! back trimmed of trailing zero bytes, and their family byte may be 0xff: a mask is read as the
//! bytes from offset 4 up to its length, zero-filled, whatever its family says.
//!
//! The constants below are Darwin's, written out: Linux's `libc` values differ (AF_INET6,
//! AF_ROUTE, errno numbers), so nothing here takes them from the platform.

use std::fmt;
use std::net::Ipv4Addr;

/// `RTM_VERSION`: the kernel refuses any other with EPROTONOSUPPORT.
pub const RTM_VERSION: u8 = 5;
/// `sizeof(struct rt_msghdr)`.
pub const RT_MSGHDR_LEN: usize = 92;
/// `sizeof(struct if_msghdr)` (header plus `struct if_data`).
pub const IF_MSGHDR_LEN: usize = 112;
/// `sizeof(struct ifa_msghdr)`.
pub const IFA_MSGHDR_LEN: usize = 20;
/// `sizeof(struct sockaddr_storage)`: no sockaddr is longer.
pub const SOCKADDR_MAX: usize = 128;

/// Message types (`rtm_type`).
pub mod rtm {
    pub const ADD: u8 = 0x1;
    pub const DELETE: u8 = 0x2;
    pub const CHANGE: u8 = 0x3;
    pub const GET: u8 = 0x4;
    pub const LOSING: u8 = 0x5;
    pub const REDIRECT: u8 = 0x6;
    pub const MISS: u8 = 0x7;
    pub const LOCK: u8 = 0x8;
    pub const RESOLVE: u8 = 0xb;
    pub const NEWADDR: u8 = 0xc;
    pub const DELADDR: u8 = 0xd;
    pub const IFINFO: u8 = 0xe;
    pub const NEWMADDR: u8 = 0xf;
    pub const DELMADDR: u8 = 0x10;
    pub const IFINFO2: u8 = 0x12;
    pub const NEWMADDR2: u8 = 0x13;
    pub const GET2: u8 = 0x14;
}

/// Route flags (`rtm_flags`).
pub mod rtf {
    pub const UP: u32 = 0x1;
    pub const GATEWAY: u32 = 0x2;
    pub const HOST: u32 = 0x4;
    pub const REJECT: u32 = 0x8;
    pub const DYNAMIC: u32 = 0x10;
    pub const MODIFIED: u32 = 0x20;
    pub const DONE: u32 = 0x40;
    pub const DELCLONE: u32 = 0x80;
    pub const CLONING: u32 = 0x100;
    pub const XRESOLVE: u32 = 0x200;
    pub const LLINFO: u32 = 0x400;
    pub const STATIC: u32 = 0x800;
    pub const BLACKHOLE: u32 = 0x1000;
    pub const NOIFREF: u32 = 0x2000;
    pub const PROTO2: u32 = 0x4000;
    pub const PROTO1: u32 = 0x8000;
    pub const PRCLONING: u32 = 0x10000;
    pub const WASCLONED: u32 = 0x20000;
    /// The kernel's own marker for expiring cloned routes (`RTPRF_OURS`): never set it.
    pub const PROTO3: u32 = 0x40000;
    pub const PINNED: u32 = 0x100000;
    pub const LOCAL: u32 = 0x200000;
    pub const BROADCAST: u32 = 0x400000;
    pub const MULTICAST: u32 = 0x800000;
    pub const IFSCOPE: u32 = 0x1000000;
    pub const CONDEMNED: u32 = 0x2000000;
    pub const IFREF: u32 = 0x4000000;
    pub const PROXY: u32 = 0x8000000;
    pub const ROUTER: u32 = 0x10000000;
    pub const DEAD: u32 = 0x20000000;
    pub const GLOBAL: u32 = 0x40000000;
}

/// Which sockaddrs follow the header (`rtm_addrs`), and their order (RTAX index = bit number).
pub mod rta {
    pub const DST: u32 = 0x1;
    pub const GATEWAY: u32 = 0x2;
    pub const NETMASK: u32 = 0x4;
    pub const GENMASK: u32 = 0x8;
    pub const IFP: u32 = 0x10;
    pub const IFA: u32 = 0x20;
    pub const AUTHOR: u32 = 0x40;
    pub const BRD: u32 = 0x80;
}

/// `RTAX_*`: index of each sockaddr slot.
pub mod rtax {
    pub const DST: usize = 0;
    pub const GATEWAY: usize = 1;
    pub const NETMASK: usize = 2;
    pub const GENMASK: usize = 3;
    pub const IFP: usize = 4;
    pub const IFA: usize = 5;
    pub const AUTHOR: usize = 6;
    pub const BRD: usize = 7;
    pub const MAX: usize = 8;
}

/// Darwin address families and socket constants.
pub mod af {
    pub const UNSPEC: u8 = 0;
    pub const INET: u8 = 2;
    /// `AF_ROUTE` = `PF_ROUTE`.
    pub const ROUTE: i32 = 17;
    pub const LINK: u8 = 18;
    pub const INET6: u8 = 30;
    pub const SOCK_RAW: i32 = 3;
    pub const SO_USELOOPBACK: i32 = 0x40;
    /// `sysctl` names for route dumps: `{CTL_NET, PF_ROUTE, 0, AF_INET, NET_RT_*, arg}`.
    pub const CTL_NET: i32 = 4;
    pub const NET_RT_DUMP: i32 = 1;
    pub const NET_RT_FLAGS: i32 = 2;
    pub const NET_RT_IFLIST: i32 = 3;
}

/// Darwin errno values (XNU `bsd/sys/errno.h`); several differ from Linux's.
pub mod errno {
    pub const EPERM: i32 = 1;
    pub const ESRCH: i32 = 3;
    pub const EBUSY: i32 = 16;
    pub const EEXIST: i32 = 17;
    pub const EINVAL: i32 = 22;
    pub const EPROTONOSUPPORT: i32 = 43;
    pub const EAFNOSUPPORT: i32 = 47;
    pub const EADDRINUSE: i32 = 48;
    pub const EADDRNOTAVAIL: i32 = 49;
    pub const ENETUNREACH: i32 = 51;
    pub const ENOBUFS: i32 = 55;
    pub const EHOSTUNREACH: i32 = 65;

    /// What a routing-socket errno means for a route, in words (Darwin numbering).
    pub fn describe(e: i32) -> String {
        match e {
            EPERM => "operation not permitted (EPERM: only root may change routes)".into(),
            ESRCH => "not in table (ESRCH)".into(),
            EBUSY => "busy (EBUSY)".into(),
            EEXIST => "file exists (EEXIST: a route for this prefix is there already)".into(),
            EINVAL => "invalid argument (EINVAL)".into(),
            EPROTONOSUPPORT => "protocol not supported (EPROTONOSUPPORT: wrong RTM_VERSION)".into(),
            EAFNOSUPPORT => "address family not supported (EAFNOSUPPORT)".into(),
            EADDRINUSE => "address in use (EADDRINUSE)".into(),
            EADDRNOTAVAIL => "address not available (EADDRNOTAVAIL)".into(),
            ENETUNREACH => "network unreachable (ENETUNREACH: no interface for the gateway)".into(),
            ENOBUFS => "no buffer space (ENOBUFS)".into(),
            EHOSTUNREACH => "host unreachable (EHOSTUNREACH)".into(),
            e => format!("errno {e}"),
        }
    }
}

/// Why bytes are not a routing message dockroute can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtMsgError {
    #[error("routing message truncated: {what} needs {need} bytes, {have} there")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("routing message version {0}, expected {RTM_VERSION}")]
    Version(u8),
    #[error("routing message of type {kind:#x} with length {len}: {reason}")]
    Length {
        kind: u8,
        len: usize,
        reason: &'static str,
    },
    #[error("sockaddr {slot} of a routing message: {reason}")]
    Sockaddr { slot: usize, reason: String },
}

/// `ROUNDUP32`: the space a sockaddr of length `len` takes on the wire.
pub fn roundup(len: usize) -> usize {
    if len == 0 { 4 } else { (len + 3) & !3 }
}

/// A link-level address (`sockaddr_dl`): interface index, type, name and hardware address.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LinkAddr {
    pub index: u16,
    pub kind: u8,
    pub name: String,
    pub addr: Vec<u8>,
}

/// One sockaddr after the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sockaddr {
    /// `sockaddr_in` (16 bytes on the wire; shorter ones are zero-filled when read).
    Inet(Ipv4Addr),
    /// An IPv4 netmask (RTAX_NETMASK or RTAX_GENMASK of an IPv4 route), encoded as route(8)
    /// does: shortened to its last non-zero byte.
    Mask(Ipv4Addr),
    /// `sockaddr_dl`.
    Link(LinkAddr),
    /// Length 0: the all-zero sockaddr.
    Empty,
    /// Any other family, kept as its bytes (length byte included).
    Other { family: u8, bytes: Vec<u8> },
}

impl Sockaddr {
    /// The IPv4 address, when this is one.
    pub fn inet(&self) -> Option<Ipv4Addr> {
        match self {
            Sockaddr::Inet(a) => Some(*a),
            _ => None,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        match self {
            Sockaddr::Inet(a) => {
                out.extend_from_slice(&[16, af::INET, 0, 0]);
                out.extend_from_slice(&a.octets());
                out.extend_from_slice(&[0; 8]);
            }
            Sockaddr::Mask(m) => {
                let o = m.octets();
                let used = o.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
                // an all-zero mask keeps its address bytes: a zero length would make the kernel
                // stop reading the sockaddrs after it
                let used = if used == 0 { 4 } else { used };
                out.extend_from_slice(&[(4 + used) as u8, af::INET, 0, 0]);
                out.extend_from_slice(&o[..used]);
            }
            Sockaddr::Link(l) => {
                let data_len = (l.name.len() + l.addr.len()).max(12);
                let len = 8 + data_len;
                out.extend_from_slice(&[len as u8, af::LINK]);
                out.extend_from_slice(&l.index.to_le_bytes());
                out.extend_from_slice(&[l.kind, l.name.len() as u8, l.addr.len() as u8, 0]);
                out.extend_from_slice(l.name.as_bytes());
                out.extend_from_slice(&l.addr);
                out.resize(start + len, 0);
            }
            Sockaddr::Empty => {}
            Sockaddr::Other { bytes, .. } => out.extend_from_slice(bytes),
        }
        let written = out.len() - start;
        out.resize(start + roundup(written), 0);
    }
}

/// The sockaddr slots of a message, indexed by RTAX.
pub type Addrs = [Option<Sockaddr>; rtax::MAX];

/// A routing message with an `rt_msghdr` (RTM_ADD, RTM_DELETE, RTM_GET, RTM_CHANGE, ... and the
/// entries of a sysctl route dump).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtMsg {
    pub kind: u8,
    pub index: u16,
    pub flags: u32,
    pub pid: i32,
    pub seq: i32,
    pub errno: i32,
    pub use_count: i32,
    pub inits: u32,
    /// `struct rt_metrics`, as it came.
    pub rmx: [u8; 56],
    pub addrs: Addrs,
}

impl RtMsg {
    /// A request of type `kind` with `flags`, sequence number `seq` and these sockaddrs.
    pub fn request(kind: u8, flags: u32, seq: i32, addrs: Addrs) -> RtMsg {
        RtMsg {
            kind,
            index: 0,
            flags,
            pid: 0,
            seq,
            errno: 0,
            use_count: 0,
            inits: 0,
            rmx: [0; 56],
            addrs,
        }
    }

    /// The RTA_* bitmask of the sockaddrs present.
    pub fn addr_bits(&self) -> u32 {
        self.addrs
            .iter()
            .enumerate()
            .filter(|(_, a)| a.is_some())
            .fold(0, |bits, (i, _)| bits | 1 << i)
    }

    /// `rmx_expire`: when a (cloned, ARP) route expires; 0 for never.
    pub fn expire(&self) -> i32 {
        i32::from_le_bytes([self.rmx[12], self.rmx[13], self.rmx[14], self.rmx[15]])
    }

    pub fn dst(&self) -> Option<&Sockaddr> {
        self.addrs[rtax::DST].as_ref()
    }
    pub fn gateway(&self) -> Option<&Sockaddr> {
        self.addrs[rtax::GATEWAY].as_ref()
    }
    pub fn netmask(&self) -> Option<&Sockaddr> {
        self.addrs[rtax::NETMASK].as_ref()
    }
    pub fn ifp(&self) -> Option<&LinkAddr> {
        match self.addrs[rtax::IFP].as_ref() {
            Some(Sockaddr::Link(l)) => Some(l),
            _ => None,
        }
    }
    pub fn ifa(&self) -> Option<&Sockaddr> {
        self.addrs[rtax::IFA].as_ref()
    }

    /// The message on the wire: header, then each sockaddr padded to 4 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RT_MSGHDR_LEN + 64);
        out.extend_from_slice(&[0, 0, RTM_VERSION, self.kind]);
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&self.addr_bits().to_le_bytes());
        out.extend_from_slice(&self.pid.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.errno.to_le_bytes());
        out.extend_from_slice(&self.use_count.to_le_bytes());
        out.extend_from_slice(&self.inits.to_le_bytes());
        out.extend_from_slice(&self.rmx);
        for sa in self.addrs.iter().flatten() {
            sa.encode(&mut out);
        }
        let len = out.len() as u16;
        out[..2].copy_from_slice(&len.to_le_bytes());
        out
    }
}

/// RTM_IFINFO: a link's flags changed (up, down, created).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfMsg {
    pub index: u16,
    pub flags: i32,
}

/// RTM_NEWADDR or RTM_DELADDR: an address was added to or removed from a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfaMsg {
    pub kind: u8,
    pub index: u16,
    pub flags: i32,
    pub addrs: Addrs,
}

/// One message read from a routing socket or a sysctl dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Route(RtMsg),
    Link(IfMsg),
    Addr(IfaMsg),
    /// A type dockroute does not read (multicast addresses, RTM_IFINFO2, ...).
    Other {
        kind: u8,
    },
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn i32_at(b: &[u8], off: usize) -> i32 {
    i32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Split `buf` (one read, or a whole sysctl dump) into messages, each checked.
pub fn split(buf: &[u8]) -> Result<Vec<Message>, RtMsgError> {
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        let (msg, len) = decode(rest)?;
        out.push(msg);
        rest = &rest[len..];
    }
    Ok(out)
}

/// Decode the message at the start of `buf`; returns it and its length (`rtm_msglen`).
pub fn decode(buf: &[u8]) -> Result<(Message, usize), RtMsgError> {
    if buf.len() < 4 {
        return Err(RtMsgError::Truncated {
            what: "a message header",
            need: 4,
            have: buf.len(),
        });
    }
    let len = u16_at(buf, 0) as usize;
    let version = buf[2];
    let kind = buf[3];
    if version != RTM_VERSION {
        return Err(RtMsgError::Version(version));
    }
    if len > buf.len() {
        return Err(RtMsgError::Truncated {
            what: "the message rtm_msglen announces",
            need: len,
            have: buf.len(),
        });
    }
    let msg = &buf[..len];
    let need = |n: usize, reason| {
        if len < n {
            Err(RtMsgError::Length { kind, len, reason })
        } else {
            Ok(())
        }
    };
    let m = match kind {
        rtm::ADD
        | rtm::DELETE
        | rtm::CHANGE
        | rtm::GET
        | rtm::LOSING
        | rtm::REDIRECT
        | rtm::MISS
        | rtm::LOCK
        | rtm::RESOLVE => {
            need(RT_MSGHDR_LEN, "shorter than rt_msghdr (92 bytes)")?;
            let bits = i32_at(msg, 12) as u32;
            let mut rmx = [0u8; 56];
            rmx.copy_from_slice(&msg[36..92]);
            Message::Route(RtMsg {
                kind,
                index: u16_at(msg, 4),
                flags: i32_at(msg, 8) as u32,
                pid: i32_at(msg, 16),
                seq: i32_at(msg, 20),
                errno: i32_at(msg, 24),
                use_count: i32_at(msg, 28),
                inits: i32_at(msg, 32) as u32,
                rmx,
                addrs: sockaddrs(&msg[RT_MSGHDR_LEN..], bits)?,
            })
        }
        rtm::IFINFO => {
            need(IF_MSGHDR_LEN, "shorter than if_msghdr (112 bytes)")?;
            Message::Link(IfMsg {
                index: u16_at(msg, 12),
                flags: i32_at(msg, 8),
            })
        }
        rtm::NEWADDR | rtm::DELADDR => {
            need(IFA_MSGHDR_LEN, "shorter than ifa_msghdr (20 bytes)")?;
            let bits = i32_at(msg, 4) as u32;
            Message::Addr(IfaMsg {
                kind,
                index: u16_at(msg, 12),
                flags: i32_at(msg, 8),
                addrs: sockaddrs(&msg[IFA_MSGHDR_LEN..], bits)?,
            })
        }
        _ => {
            need(4, "shorter than its own header")?;
            Message::Other { kind }
        }
    };
    Ok((m, len))
}

/// Read the sockaddrs named by `bits` from `body`, as XNU's `rt_xaddrs` does, but without its
/// shortcut of stopping at a zero-length sockaddr (kernel output keeps going after a /0 mask).
fn sockaddrs(body: &[u8], bits: u32) -> Result<Addrs, RtMsgError> {
    let mut out: Addrs = Default::default();
    if bits >> rtax::MAX != 0 {
        return Err(RtMsgError::Sockaddr {
            slot: rtax::MAX,
            reason: format!("unknown RTA bits {bits:#x}"),
        });
    }
    let mut off = 0;
    let mut dst_family = None;
    for (slot, out_slot) in out.iter_mut().enumerate() {
        if bits & (1 << slot) == 0 {
            continue;
        }
        let bad = |reason: String| RtMsgError::Sockaddr { slot, reason };
        if off >= body.len() {
            return Err(bad(format!(
                "missing: the message ends at {} bytes of sockaddrs",
                body.len()
            )));
        }
        let sa_len = body[off] as usize;
        if sa_len == 1 {
            return Err(bad("length 1".into()));
        }
        if sa_len > SOCKADDR_MAX {
            return Err(bad(format!("length {sa_len} > {SOCKADDR_MAX}")));
        }
        if off + sa_len > body.len() {
            return Err(bad(format!(
                "length {sa_len} runs past the end of the message ({} bytes left)",
                body.len() - off
            )));
        }
        let sa = &body[off..off + sa_len];
        let is_mask = slot == rtax::NETMASK || slot == rtax::GENMASK;
        let parsed = if sa_len == 0 {
            if is_mask && dst_family == Some(af::INET) {
                Sockaddr::Mask(Ipv4Addr::UNSPECIFIED)
            } else {
                Sockaddr::Empty
            }
        } else if is_mask && dst_family == Some(af::INET) {
            // trimmed, family byte unreliable: the mask bytes are [4, sa_len), zero-filled
            let mut o = [0u8; 4];
            for (i, b) in sa.iter().skip(4).take(4).enumerate() {
                o[i] = *b;
            }
            Sockaddr::Mask(Ipv4Addr::from(o))
        } else {
            match sa[1] {
                af::INET => {
                    if sa_len < 4 {
                        return Err(bad(format!("AF_INET sockaddr of length {sa_len}")));
                    }
                    let mut o = [0u8; 4];
                    for (i, b) in sa.iter().skip(4).take(4).enumerate() {
                        o[i] = *b;
                    }
                    Sockaddr::Inet(Ipv4Addr::from(o))
                }
                af::LINK => Sockaddr::Link(link_addr(sa).map_err(bad)?),
                family => Sockaddr::Other {
                    family,
                    bytes: sa.to_vec(),
                },
            }
        };
        if slot == rtax::DST {
            dst_family = Some(if sa_len == 0 { af::UNSPEC } else { sa[1] });
        }
        *out_slot = Some(parsed);
        // the last sockaddr of a kernel broadcast is not padded: do not require the padding
        off = (off + roundup(sa_len)).min(body.len());
    }
    Ok(out)
}

fn link_addr(sa: &[u8]) -> Result<LinkAddr, String> {
    if sa.len() < 8 {
        return Err(format!("sockaddr_dl of length {}", sa.len()));
    }
    let (nlen, alen, slen) = (sa[5] as usize, sa[6] as usize, sa[7] as usize);
    if 8 + nlen + alen + slen > sa.len() {
        return Err(format!(
            "sockaddr_dl of length {} with name {nlen}, address {alen}, selector {slen} bytes",
            sa.len()
        ));
    }
    let name = std::str::from_utf8(&sa[8..8 + nlen])
        .map_err(|_| "sockaddr_dl name is not UTF-8".to_string())?
        .to_string();
    Ok(LinkAddr {
        index: u16_at(sa, 2),
        kind: sa[4],
        name,
        addr: sa[8 + nlen..8 + nlen + alen].to_vec(),
    })
}

/// The prefix length of a contiguous IPv4 mask; `None` for a mask with holes.
pub fn prefix_len(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    let ones = m.leading_ones();
    (m.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

/// The mask of an IPv4 prefix length (0..=32).
pub fn mask_of(prefix: u8) -> Ipv4Addr {
    let p = u32::from(prefix.min(32));
    Ipv4Addr::from(u32::MAX.checked_shl(32 - p).unwrap_or(0))
}

/// A MAC address as `arp -an` prints it (`0:1c:42:a:b:c`).
pub struct Mac<'a>(pub &'a [u8]);

impl fmt::Display for Mac<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    fn addrs(pairs: Vec<(usize, Sockaddr)>) -> Addrs {
        let mut a: Addrs = Default::default();
        for (i, s) in pairs {
            a[i] = Some(s);
        }
        a
    }

    const NET: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 0);
    const VM: Ipv4Addr = Ipv4Addr::new(192, 168, 99, 100);
    const ROUTE8_FLAGS: u32 = rtf::STATIC | rtf::UP | rtf::GATEWAY;

    /// route(8)'s `route -n add -net 172.17.0.0/16 192.168.99.100`, 132 bytes.
    const ADD_VECTOR: &str = "
        84 00 05 01 00 00 00 00 03 08 00 00 07 00 00 00
        00 00 00 00 01 00 00 00 00 00 00 00 00 00 00 00
        00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
        00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
        00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
        00 00 00 00 00 00 00 00 00 00 00 00 10 02 00 00
        ac 11 00 00 00 00 00 00 00 00 00 00 10 02 00 00
        c0 a8 63 64 00 00 00 00 00 00 00 00 06 02 00 00
        ff ff 00 00";

    fn header(first24: &str) -> Vec<u8> {
        let mut v = hex(first24);
        v.resize(RT_MSGHDR_LEN, 0);
        v
    }

    fn dst_16() -> Vec<u8> {
        hex("10 02 00 00 ac 11 00 00 00 00 00 00 00 00 00 00")
    }

    #[test]
    fn encodes_route8_add_byte_for_byte() {
        let m = RtMsg::request(
            rtm::ADD,
            ROUTE8_FLAGS,
            1,
            addrs(vec![
                (rtax::DST, Sockaddr::Inet(NET)),
                (rtax::GATEWAY, Sockaddr::Inet(VM)),
                (rtax::NETMASK, Sockaddr::Mask(mask_of(16))),
            ]),
        );
        let wire = m.encode();
        assert_eq!(wire, hex(ADD_VECTOR));
        assert_eq!(wire.len(), 132);
        let (back, len) = decode(&wire).unwrap();
        assert_eq!(len, 132);
        assert_eq!(back, Message::Route(m));
    }

    #[test]
    fn encodes_route8_delete_and_get() {
        let del = RtMsg::request(
            rtm::DELETE,
            ROUTE8_FLAGS,
            2,
            addrs(vec![
                (rtax::DST, Sockaddr::Inet(NET)),
                (rtax::NETMASK, Sockaddr::Mask(mask_of(16))),
            ]),
        );
        let mut want =
            header("74 00 05 02 00 00 00 00 03 08 00 00 05 00 00 00 00 00 00 00 02 00 00 00");
        want.extend(dst_16());
        want.extend(hex("06 02 00 00 ff ff 00 00"));
        assert_eq!(del.encode(), want);
        assert_eq!(want.len(), 116);

        let get = RtMsg::request(
            rtm::GET,
            ROUTE8_FLAGS,
            3,
            addrs(vec![
                (rtax::DST, Sockaddr::Inet(NET)),
                (rtax::NETMASK, Sockaddr::Mask(mask_of(16))),
                (rtax::IFP, Sockaddr::Link(LinkAddr::default())),
            ]),
        );
        let mut want =
            header("88 00 05 04 00 00 00 00 03 08 00 00 15 00 00 00 00 00 00 00 03 00 00 00");
        want.extend(dst_16());
        want.extend(hex("06 02 00 00 ff ff 00 00"));
        want.extend(hex("14 12 00 00"));
        want.extend([0u8; 16]);
        assert_eq!(get.encode(), want);
        assert_eq!(want.len(), 136);
        for (m, w) in [(del, 116), (get, 136)] {
            let wire = m.encode();
            assert_eq!(decode(&wire).unwrap(), (Message::Route(m), w));
        }
    }

    #[test]
    fn reads_a_full_length_netmask_as_the_same_route() {
        // Go's x/net and mullvad send the mask as a whole sockaddr_in: 140 bytes
        let mut v = hex(ADD_VECTOR);
        v.truncate(124);
        v.extend(hex("10 02 00 00 ff ff 00 00 00 00 00 00 00 00 00 00"));
        v[0] = 0x8c;
        let (m, len) = decode(&v).unwrap();
        assert_eq!(len, 140);
        let Message::Route(m) = m else { panic!() };
        assert_eq!(m.netmask(), Some(&Sockaddr::Mask(mask_of(16))));
        assert_eq!(m.encode(), hex(ADD_VECTOR), "re-encoded as route(8) does");
    }

    /// An RTM_GET reply as the kernel writes it: flags | DONE, the interface index, every
    /// sockaddr padded, the mask trimmed (and here with 0xff in its family byte), IFP and IFA.
    fn get_reply(mask: &str) -> Vec<u8> {
        let mut v =
            header("00 00 05 04 07 00 00 00 43 08 01 00 37 00 00 00 d2 04 00 00 03 00 00 00");
        v.extend(dst_16());
        v.extend(hex("10 02 00 00 c0 a8 63 64 00 00 00 00 00 00 00 00"));
        v.extend(hex(mask));
        // sockaddr_dl: len 24, AF_LINK, index 7, type 6 (ether), nlen 8, alen 6, "vboxnet0", MAC
        v.extend(hex("18 12 07 00 06 08 06 00 76 62 6f 78 6e 65 74 30"));
        v.extend(hex("0a 00 27 00 01 02 00 00"));
        v.extend(hex("10 02 00 00 c0 a8 63 01 00 00 00 00 00 00 00 00"));
        let len = v.len() as u16;
        v[..2].copy_from_slice(&len.to_le_bytes());
        v
    }

    #[test]
    fn parses_a_get_reply_with_a_trimmed_mask() {
        let v = get_reply("07 ff ff ff ff ff ff 00");
        let (m, _) = decode(&v).unwrap();
        let Message::Route(m) = m else { panic!() };
        assert_eq!(m.flags, 0x10843);
        assert_eq!((m.index, m.pid, m.seq, m.errno), (7, 1234, 3, 0));
        assert_eq!(m.dst(), Some(&Sockaddr::Inet(NET)));
        assert_eq!(m.gateway(), Some(&Sockaddr::Inet(VM)));
        assert_eq!(m.netmask(), Some(&Sockaddr::Mask(mask_of(24))));
        let ifp = m.ifp().unwrap();
        assert_eq!((ifp.index, ifp.name.as_str()), (7, "vboxnet0"));
        assert_eq!(Mac(&ifp.addr).to_string(), "a:0:27:0:1:2");
        assert_eq!(
            m.ifa(),
            Some(&Sockaddr::Inet(Ipv4Addr::new(192, 168, 99, 1)))
        );

        // /16 as golang/net saw it: 06 02 00 00 ff ff, padded
        let v = get_reply("06 02 00 00 ff ff 00 00");
        let Message::Route(m) = decode(&v).unwrap().0 else {
            panic!()
        };
        assert_eq!(m.netmask(), Some(&Sockaddr::Mask(mask_of(16))));
        assert_eq!(prefix_len(mask_of(16)), Some(16));
    }

    #[test]
    fn a_zero_length_mask_is_slash_zero_and_parsing_goes_on() {
        let mut v =
            header("00 00 05 04 01 00 00 00 43 08 00 00 07 00 00 00 00 00 00 00 00 00 00 00");
        v.extend(hex("10 02 00 00 00 00 00 00 00 00 00 00 00 00 00 00"));
        v.extend(hex("10 02 00 00 0a 00 02 02 00 00 00 00 00 00 00 00"));
        v.extend(hex("00 00 00 00"));
        let len = v.len() as u16;
        v[..2].copy_from_slice(&len.to_le_bytes());
        let Message::Route(m) = decode(&v).unwrap().0 else {
            panic!()
        };
        assert_eq!(m.netmask(), Some(&Sockaddr::Mask(Ipv4Addr::UNSPECIFIED)));
        assert_eq!(
            m.gateway(),
            Some(&Sockaddr::Inet(Ipv4Addr::new(10, 0, 2, 2)))
        );
    }

    #[test]
    fn accepts_an_unpadded_last_sockaddr_of_a_broadcast() {
        // rt_msg1: msglen = offset of the last sockaddr + its length (6), not rounded to 8
        let mut v = hex(ADD_VECTOR);
        v.truncate(130);
        v[0] = 130;
        let Message::Route(m) = decode(&v).unwrap().0 else {
            panic!()
        };
        assert_eq!(m.netmask(), Some(&Sockaddr::Mask(mask_of(16))));
    }

    #[test]
    fn refuses_malformed_and_truncated_messages() {
        let good = hex(ADD_VECTOR);
        // shorter than the header's first 4 bytes
        assert!(matches!(
            decode(&good[..3]),
            Err(RtMsgError::Truncated { .. })
        ));
        // msglen says more than the buffer holds
        assert!(matches!(
            decode(&good[..100]),
            Err(RtMsgError::Truncated { need: 132, .. })
        ));
        // wrong version
        let mut v = good.clone();
        v[2] = 4;
        assert_eq!(decode(&v), Err(RtMsgError::Version(4)));
        // msglen shorter than rt_msghdr
        let mut v = good.clone();
        v[0] = 60;
        assert!(matches!(decode(&v), Err(RtMsgError::Length { .. })));
        // a sockaddr of length 1
        let mut v = good.clone();
        v[92] = 1;
        assert!(matches!(
            decode(&v),
            Err(RtMsgError::Sockaddr { slot: 0, .. })
        ));
        // the netmask's length runs past msglen
        let mut v = good.clone();
        v[124] = 16;
        assert!(matches!(
            decode(&v),
            Err(RtMsgError::Sockaddr { slot: 2, .. })
        ));
        // an RTA bit whose sockaddr is missing
        let mut v = good.clone();
        v[12] = 0x17;
        assert!(matches!(
            decode(&v),
            Err(RtMsgError::Sockaddr { slot: 4, .. })
        ));
        // bits beyond RTAX_MAX
        let mut v = good.clone();
        v[13] = 1;
        assert!(decode(&v).is_err());
        // a sockaddr_dl whose name is longer than the sockaddr
        let mut v =
            header("00 00 05 04 00 00 00 00 00 00 00 00 10 00 00 00 00 00 00 00 00 00 00 00");
        v.extend(hex("0c 12 01 00 06 10 00 00 65 6e 30 00"));
        let len = v.len() as u16;
        v[..2].copy_from_slice(&len.to_le_bytes());
        assert!(matches!(
            decode(&v),
            Err(RtMsgError::Sockaddr { slot: 4, .. })
        ));
        // every truncation of a good message is refused, never a panic
        for n in 0..good.len() {
            let mut v = good[..n].to_vec();
            if n >= 2 {
                v[..2].copy_from_slice(&(n as u16).to_le_bytes());
            }
            let _ = decode(&v);
        }
    }

    #[test]
    fn splits_a_dump_and_reads_link_and_address_messages() {
        let mut buf = hex(ADD_VECTOR);
        // RTM_IFINFO for index 9, flags UP|RUNNING
        let mut ifm = vec![0u8; IF_MSGHDR_LEN];
        ifm[..4].copy_from_slice(&[IF_MSGHDR_LEN as u8, 0, 5, rtm::IFINFO]);
        ifm[8] = 0x41;
        ifm[12] = 9;
        buf.extend(&ifm);
        // RTM_NEWADDR on index 9: IFA 192.168.64.1 (netmask, ifp, ifa bits = 0x34)
        let mut ifa = vec![0u8; IFA_MSGHDR_LEN];
        ifa[2] = 5;
        ifa[3] = rtm::NEWADDR;
        ifa[4] = 0x20;
        ifa[12] = 9;
        ifa.extend(hex("10 02 00 00 c0 a8 40 01 00 00 00 00 00 00 00 00"));
        ifa[0] = ifa.len() as u8;
        buf.extend(&ifa);
        let msgs = split(&buf).unwrap();
        assert_eq!(msgs.len(), 3);
        assert_eq!(
            msgs[1],
            Message::Link(IfMsg {
                index: 9,
                flags: 0x41
            })
        );
        let Message::Addr(a) = &msgs[2] else { panic!() };
        assert_eq!((a.kind, a.index), (rtm::NEWADDR, 9));
        assert_eq!(
            a.addrs[rtax::IFA],
            Some(Sockaddr::Inet(Ipv4Addr::new(192, 168, 64, 1)))
        );
        // a short RTM_IFINFO is refused
        let mut short = ifm.clone();
        short[0] = 40;
        short.truncate(40);
        assert!(split(&short).is_err());
    }

    #[test]
    fn masks_and_errno_values_are_darwins() {
        assert_eq!(prefix_len(Ipv4Addr::new(255, 255, 0, 0)), Some(16));
        assert_eq!(prefix_len(Ipv4Addr::new(255, 0, 255, 0)), None);
        assert_eq!(prefix_len(Ipv4Addr::UNSPECIFIED), Some(0));
        assert_eq!(prefix_len(Ipv4Addr::BROADCAST), Some(32));
        assert_eq!(mask_of(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(mask_of(17), Ipv4Addr::new(255, 255, 128, 0));
        assert_eq!(
            (errno::EEXIST, errno::ESRCH, errno::ENETUNREACH),
            (17, 3, 51)
        );
        assert!(errno::describe(17).contains("EEXIST"));
        assert_eq!(roundup(0), 4);
        assert_eq!(roundup(6), 8);
        assert_eq!(roundup(16), 16);
        assert_eq!(roundup(20), 20);
        // a /0 mask is sent with its address bytes (length 8), never as length 0
        let mut out = Vec::new();
        Sockaddr::Mask(Ipv4Addr::UNSPECIFIED).encode(&mut out);
        assert_eq!(out, hex("08 02 00 00 00 00 00 00"));
    }
}
