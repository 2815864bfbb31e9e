//! The responder's sockets: one UDP socket and one TCP listener on the same loopback port,
//! served by a current-thread tokio runtime on the responder's own thread.
//!
//! Bounded everywhere: one receive buffer for UDP (no queue but the kernel's), at most
//! [`MAX_TCP_CONNECTIONS`] connections each holding one query of at most [`MAX_QUERY`] bytes
//! and closed when idle for [`TCP_IDLE`], at most [`MAX_FORWARDS`] forwarded UDP queries in
//! flight (SERVFAIL beyond), each waiting at most [`UPSTREAM_TIMEOUT`].

use super::answer::{self, Forward, Outcome, Transport};
use super::{
    MAX_FORWARDS, MAX_QUERY, MAX_TCP_CONNECTIONS, ResponderError, Shared, TCP_IDLE,
    UPSTREAM_TIMEOUT,
};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::time::timeout;

/// Bound sockets and the runtime that will serve them, made on the caller's thread so that
/// every error is the caller's to report.
pub(super) struct Sockets {
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
    runtime: tokio::runtime::Runtime,
}

pub(super) fn bind(listen: SocketAddr) -> Result<(Sockets, SocketAddr), ResponderError> {
    let io = |op: &str| {
        let op = format!("{op} {listen}");
        move |e| ResponderError::io(op, e)
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| ResponderError::io("its runtime", e))?;
    // Port 0: the UDP socket picks the port, TCP takes the same one; retry if that is taken.
    let mut tries = 0;
    loop {
        let udp = std::net::UdpSocket::bind(listen).map_err(io("binding UDP"))?;
        let local = udp.local_addr().map_err(io("binding UDP"))?;
        let tcp = match std::net::TcpListener::bind(local) {
            Ok(t) => t,
            Err(e)
                if listen.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse && tries < 8 =>
            {
                tries += 1;
                continue;
            }
            Err(e) => return Err(io("binding TCP")(e)),
        };
        udp.set_nonblocking(true).map_err(io("binding UDP"))?;
        tcp.set_nonblocking(true).map_err(io("binding TCP"))?;
        return Ok((Sockets { udp, tcp, runtime }, local));
    }
}

pub(super) struct Server {
    pub(super) shared: Arc<Shared>,
    pub(super) upstream: Option<SocketAddr>,
}

impl Server {
    /// Serve until `stopped` fires (or the sender is dropped). Dropping the runtime at the end
    /// cancels every connection and forwarded query.
    pub(super) fn run(self, s: Sockets, stopped: tokio::sync::oneshot::Receiver<()>) {
        let me = Arc::new(self);
        s.runtime.block_on(async move {
            let udp = match UdpSocket::from_std(s.udp) {
                Ok(u) => Arc::new(u),
                Err(e) => return tracing::error!("DNS responder: UDP socket: {e}"),
            };
            let tcp = match TcpListener::from_std(s.tcp) {
                Ok(t) => t,
                Err(e) => return tracing::error!("DNS responder: TCP socket: {e}"),
            };
            let serving =
                futures_lite::future::or(Arc::clone(&me).udp(udp), Arc::clone(&me).tcp(tcp));
            futures_lite::future::or(serving, async {
                let _ = stopped.await;
            })
            .await;
        });
        tracing::debug!("DNS responder stopped");
    }

    async fn udp(self: Arc<Self>, udp: Arc<UdpSocket>) {
        let forwards = Arc::new(Semaphore::new(MAX_FORWARDS));
        let mut buf = vec![0u8; MAX_QUERY];
        loop {
            let (n, peer) = match udp.recv_from(&mut buf).await {
                Ok(got) => got,
                Err(e) => {
                    tracing::debug!("DNS responder: UDP receive: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let table = self.shared.current();
            let upstream = self.upstream;
            match answer::handle(&table, &buf[..n], Transport::Udp, upstream.is_some(), id()) {
                Outcome::Reply(r) => {
                    let _ = udp.send_to(&r, peer).await;
                }
                Outcome::Forward(f) => {
                    let permit = Arc::clone(&forwards).try_acquire_owned();
                    match (upstream, permit) {
                        (Some(up), Ok(permit)) => {
                            let udp = Arc::clone(&udp);
                            tokio::spawn(async move {
                                let got = ask(up, &f).await;
                                let r = answer::forwarded(&table, &f, got.as_deref());
                                let _ = udp.send_to(&r, peer).await;
                                drop(permit);
                            });
                        }
                        _ => {
                            let r = answer::forwarded(&table, &f, None);
                            let _ = udp.send_to(&r, peer).await;
                        }
                    }
                }
                Outcome::Drop => {}
            }
        }
    }

    async fn tcp(self: Arc<Self>, tcp: TcpListener) {
        let connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
        loop {
            let stream = match tcp.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // e.g. out of file descriptors: wait instead of spinning
                    tracing::debug!("DNS responder: TCP accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
                continue; // full: the new connection is closed as it drops
            };
            let me = Arc::clone(&self);
            tokio::spawn(async move {
                me.connection(stream).await;
                drop(permit);
            });
        }
    }

    /// Length-prefixed queries, one after the other, until the client closes, stalls or sends
    /// something too long.
    async fn connection(&self, mut s: TcpStream) {
        let mut buf = Vec::new();
        loop {
            let mut len = [0u8; 2];
            if !matches!(timeout(TCP_IDLE, s.read_exact(&mut len)).await, Ok(Ok(_))) {
                return;
            }
            let n = usize::from(u16::from_be_bytes(len));
            if n > MAX_QUERY {
                return;
            }
            buf.resize(n, 0);
            if !matches!(timeout(TCP_IDLE, s.read_exact(&mut buf)).await, Ok(Ok(_))) {
                return;
            }
            let table = self.shared.current();
            let upstream = self.upstream;
            let reply = match answer::handle(&table, &buf, Transport::Tcp, upstream.is_some(), id())
            {
                Outcome::Reply(r) => r,
                Outcome::Forward(f) => {
                    let got = match upstream {
                        Some(up) => ask(up, &f).await,
                        None => None,
                    };
                    answer::forwarded(&table, &f, got.as_deref())
                }
                Outcome::Drop => return,
            };
            let Ok(len) = u16::try_from(reply.len()) else {
                return;
            };
            let mut out = Vec::with_capacity(2 + reply.len());
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&reply);
            if !matches!(timeout(TCP_IDLE, s.write_all(&out)).await, Ok(Ok(()))) {
                return;
            }
        }
    }
}

/// The upstream's reply to a forwarded query over UDP, from a fresh socket (a port of the
/// kernel's choosing) and a random ID; `None` after [`UPSTREAM_TIMEOUT`] or an error.
async fn ask(upstream: SocketAddr, f: &Forward) -> Option<Vec<u8>> {
    let any: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let exchange = async {
        let sock = UdpSocket::bind(any).await.ok()?;
        sock.connect(upstream).await.ok()?;
        sock.send(&f.query).await.ok()?;
        let mut buf = vec![0u8; MAX_QUERY];
        loop {
            let n = sock.recv(&mut buf).await.ok()?;
            if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == f.id {
                buf.truncate(n);
                return Some(buf);
            }
        }
    };
    let got = timeout(UPSTREAM_TIMEOUT, exchange).await.ok().flatten();
    if got.is_none() {
        tracing::debug!("DNS responder: no answer from {upstream} for {}", f.name());
    }
    got
}

/// A DNS ID nobody can guess from the previous ones (std's per-instance random hash keys).
fn id() -> u16 {
    use std::hash::BuildHasher;
    let h = std::collections::hash_map::RandomState::new().hash_one(0u8);
    (h & 0xffff) as u16
}
