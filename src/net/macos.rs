//! [`Net`] on macOS, over the BSD routing socket (`socket(PF_ROUTE, SOCK_RAW, 0)`), the
//! `sysctl` route dumps and `getifaddrs`. Only the system calls are here: the messages are
//! built and read by [`super::rtmsg`] and [`super::darwin`], which are tested on every platform.
//!
//! - links: `getifaddrs` (names, flags, IPv4 addresses; the index from each link's AF_LINK entry).
//! - neighbours: `sysctl {CTL_NET, PF_ROUTE, 0, AF_INET, NET_RT_FLAGS, RTF_LLINFO}`, the ARP table.
//! - snapshot / owned: `sysctl {..., NET_RT_DUMP, 0}`; dockroute's routes are those with its mark
//!   (see [`super::darwin`]).
//! - apply: RTM_ADD after checking that the host-only link is up with an address on the
//!   gateway's network, then an exact RTM_GET to check the route went to that link; RTM_DELETE
//!   only after an exact RTM_GET shows dockroute's mark and gateway. Replies are matched by pid
//!   and sequence number.
//! - lookup: RTM_GET without a mask (the route the kernel picks).
//! - subscribe / next_event: a second routing socket; RTM_IFINFO, RTM_NEWADDR, RTM_DELADDR and
//!   route additions and deletions wake the waiter, which then looks again. (configd's
//!   `State:/Network/Interface/IF/IPv4` keys are derived from the same kernel events.)

use super::darwin::{self, Answer, Requester};
use super::rtmsg::{self, Message, RtMsg, af, rtf};
use super::{Change, Entry, Held, LinkInfo, Lookup, Neighbour, Net, NetError, Snapshot};
use ipnet::Ipv4Net;
use nix::libc;
use nix::net::if_::InterfaceFlags;
use std::collections::HashMap;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// How long to wait for the kernel's answer to one request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// Big enough for any routing message.
const READ_BUF: usize = 4096;

/// How long one turn of waiting looks at the routing socket, then at configd's notifications.
const WAIT_SLICE: Duration = Duration::from_millis(100);

pub struct System {
    sock: OwnedFd,
    events: Option<OwnedFd>,
    store: Option<super::macos_store::Watch>,
    seq: i32,
    pid: i32,
}

fn route_socket() -> Result<OwnedFd, NetError> {
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(af::ROUTE, af::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(NetError::os(
            "opening a routing socket",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: fcntl on our own descriptor.
    unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
    }
    Ok(fd)
}

/// Wait up to `timeout` for `fd` to be readable.
fn readable(fd: &OwnedFd, timeout: Duration) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    loop {
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n >= 0 {
            return Ok(n > 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Read one message (a routing socket returns one per read).
fn read_msg(fd: &OwnedFd) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; READ_BUF];
    // SAFETY: buf is writable for its length.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// `sysctl {CTL_NET, PF_ROUTE, 0, AF_INET, what, arg}`: a dump of routing messages.
fn route_dump(what: i32, arg: i32) -> Result<Vec<Message>, NetError> {
    let mut mib = [af::CTL_NET, af::ROUTE, 0, i32::from(af::INET), what, arg];
    let op = || format!("reading the routing table (sysctl NET_RT {what})");
    for _ in 0..5 {
        let mut len: libc::size_t = 0;
        // SAFETY: size query, no output buffer.
        let rc = unsafe {
            libc::sysctl(
                mib.as_mut_ptr(),
                mib.len() as u32,
                std::ptr::null_mut(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        if rc != 0 {
            return Err(NetError::os(op(), io::Error::last_os_error()));
        }
        // the table may grow between the two calls
        let mut buf = vec![0u8; len + len / 4 + 1024];
        let mut got = buf.len();
        // SAFETY: buf is writable for `got` bytes.
        let rc = unsafe {
            libc::sysctl(
                mib.as_mut_ptr(),
                mib.len() as u32,
                buf.as_mut_ptr().cast(),
                &mut got,
                std::ptr::null_mut(),
                0,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOMEM) {
                continue;
            }
            return Err(NetError::os(op(), e));
        }
        buf.truncate(got);
        return rtmsg::split(&buf)
            .map_err(|e| NetError::os(op(), io::Error::new(io::ErrorKind::InvalidData, e)));
    }
    Err(NetError::os(
        op(),
        io::Error::other("the table kept growing while it was read"),
    ))
}

impl System {
    pub fn new() -> Result<Self, NetError> {
        Ok(System {
            sock: route_socket()?,
            events: None,
            store: None,
            seq: 0,
            pid: std::process::id() as i32,
        })
    }

    /// Drop what other processes' changes left queued on the request socket, so that it has
    /// room for the answer.
    fn drain(&self) {
        while readable(&self.sock, Duration::ZERO).unwrap_or(false) {
            if read_msg(&self.sock).is_err() {
                break;
            }
        }
    }

    fn names(&self) -> HashMap<u32, String> {
        links_now()
            .unwrap_or_default()
            .into_iter()
            .map(|l| (l.index, l.name))
            .collect()
    }
}

impl Requester for System {
    /// Send `m` (with the next sequence number) and wait for the kernel's echo of it.
    fn request(&mut self, mut m: RtMsg, what: &str) -> Result<Answer, NetError> {
        self.seq = self.seq.wrapping_add(1);
        m.seq = self.seq;
        let bytes = m.encode();
        self.drain();
        // SAFETY: bytes is readable for its length.
        let n = unsafe { libc::write(self.sock.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(code) if code != libc::EINTR && code != libc::ENOBUFS => {
                    Ok(Answer::Errno(code))
                }
                _ => Err(NetError::os(what, e)),
            };
        }
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if !readable(&self.sock, left).map_err(|e| NetError::os(what, e))? {
                return Err(NetError::os(
                    what,
                    io::Error::new(io::ErrorKind::TimedOut, "no answer from the kernel"),
                ));
            }
            let buf = read_msg(&self.sock).map_err(|e| NetError::os(what, e))?;
            let Ok((msg, _)) = rtmsg::decode(&buf) else {
                continue;
            };
            if darwin::is_reply(&msg, self.pid, self.seq) {
                let Message::Route(r) = msg else { continue };
                return Ok(if r.errno != 0 {
                    Answer::Errno(r.errno)
                } else {
                    Answer::Done(Box::new(r))
                });
            }
        }
    }
}

/// Links and their IPv4 addresses from `getifaddrs`.
fn links_now() -> Result<Vec<LinkInfo>, NetError> {
    let all = nix::ifaddrs::getifaddrs()
        .map_err(|e| NetError::os("listing interfaces (getifaddrs)", e.into()))?;
    let mut out: Vec<LinkInfo> = Vec::new();
    for a in all {
        let i = match out.iter().position(|l| l.name == a.interface_name) {
            Some(i) => i,
            None => {
                out.push(LinkInfo {
                    index: 0,
                    name: a.interface_name.clone(),
                    up: a.flags.contains(InterfaceFlags::IFF_UP),
                    loopback: a.flags.contains(InterfaceFlags::IFF_LOOPBACK),
                    addrs: Vec::new(),
                    kind: None,
                });
                out.len() - 1
            }
        };
        let Some(addr) = a.address else { continue };
        if let Some(link) = addr.as_link_addr() {
            out[i].index = link.ifindex() as u32;
        } else if let Some(sin) = addr.as_sockaddr_in() {
            let mask = a
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in())
                .map_or(Ipv4Addr::BROADCAST, |m| m.ip());
            if let Ok(net) = Ipv4Net::with_netmask(sin.ip(), mask) {
                out[i].addrs.push(net);
            }
        }
    }
    for l in out.iter_mut().filter(|l| l.index == 0) {
        l.index = nix::net::if_::if_nametoindex(l.name.as_str()).unwrap_or(0);
    }
    Ok(out)
}

impl Net for System {
    async fn links(&mut self) -> Result<Vec<LinkInfo>, NetError> {
        links_now()
    }

    async fn neighbours(&mut self) -> Result<Vec<Neighbour>, NetError> {
        Ok(darwin::neighbours(&route_dump(
            af::NET_RT_FLAGS,
            rtf::LLINFO as i32,
        )?))
    }

    async fn snapshot(&mut self) -> Result<Snapshot, NetError> {
        let names = self.names();
        let name = |i: u16| names.get(&u32::from(i)).cloned();
        let mut snap = Snapshot::default();
        for r in darwin::routes(&route_dump(af::NET_RT_DUMP, 0)?) {
            let ifname = r.ifname.clone().or_else(|| name(r.index));
            if r.is_ours() {
                snap.owned.push(r.entry(ifname.as_deref().unwrap_or("?")));
            } else {
                snap.foreign_routes.push(r.foreign(ifname.as_deref()));
            }
        }
        Ok(snap)
    }

    async fn held(&mut self, subnets: &[Ipv4Net]) -> Result<Vec<Held>, NetError> {
        let names = self.names();
        let all = darwin::routes(&route_dump(af::NET_RT_DUMP, 0)?);
        Ok(darwin::held(&all, subnets, &names))
    }

    async fn lookup(&mut self, dst: Ipv4Addr) -> Result<Lookup, NetError> {
        let names = self.names();
        darwin::lookup(self, dst, &names)
    }

    async fn apply(&mut self, changes: &[Change]) -> Result<Vec<Result<(), NetError>>, NetError> {
        let links = links_now()?;
        Ok(changes
            .iter()
            .map(|c| match c {
                Change::Add(Entry::Route(r)) => darwin::add(self, r, &links),
                Change::Remove(Entry::Route(r)) => darwin::remove(self, r),
                Change::Add(Entry::Rule(_)) => {
                    Err(NetError::Unsupported("policy routing rules on macOS"))
                }
                // there are none to remove
                Change::Remove(Entry::Rule(_)) => Ok(()),
            })
            .collect())
    }

    async fn subscribe(&mut self) -> Result<(), NetError> {
        if self.events.is_none() {
            self.events = Some(route_socket()?);
            self.store = super::macos_store::Watch::new();
            if self.store.is_none() {
                tracing::debug!(
                    "no SCDynamicStore notifications; waiting on the routing socket only"
                );
            }
        }
        Ok(())
    }

    async fn next_event(&mut self, deadline: Instant) -> Result<bool, NetError> {
        self.subscribe().await?;
        let Some(fd) = &self.events else {
            return Ok(false);
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let slice = match &self.store {
                Some(_) => left.min(WAIT_SLICE),
                None => left,
            };
            if !readable(fd, slice).map_err(|e| NetError::os("waiting for routing events", e))? {
                if let Some(store) = &self.store
                    && store.wait(
                        deadline
                            .saturating_duration_since(Instant::now())
                            .min(WAIT_SLICE),
                    )
                {
                    return Ok(true);
                }
                continue;
            }
            let buf = match read_msg(fd) {
                Ok(b) => b,
                // Never on xnu, which drops a message that does not fit the receive buffer
                // without setting an error (`raw_input`); the callers' backstop reconcile is what
                // recovers from lost events. Kept for a kernel that does report the overflow.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(true),
                Err(e) => return Err(NetError::os("reading routing events", e)),
            };
            match rtmsg::decode(&buf) {
                Ok((m, _)) if darwin::is_event(&m) => return Ok(true),
                Ok(_) => {}
                Err(e) => tracing::debug!("unreadable routing message: {e}"),
            }
        }
    }
}
