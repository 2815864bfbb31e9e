//! Whether the VM's DNS server answers: one small query (the SOA of the domain, a random id) over
//! UDP, and any well-formed reply to it counts, whatever its code (NXDOMAIN and REFUSED are
//! answers too: the resolver moves on at once). What counts as no answer is what stalls the host
//! behind a resolv.conf that names the server first: silence (the VM is gone) and an ICMP
//! unreachable (the VM is up but nothing listens on the port).
//!
//! Answering is not enough to be trusted with every lookup: [`answers_outside`] asks for the
//! address of a name outside the domain that exists nowhere, and a server that answers it with an
//! address (a wildcard server, another host's) is not the VM's DNS server.
//!
//! The encoder and the reply checker are pure; [`ask`] is the blocking probe (`up`, `status`) and
//! [`Pending`] the non-blocking one (`watch`, which polls its socket).

use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

/// How long one query waits for its reply.
pub const TIMEOUT: Duration = Duration::from_secs(1);
/// Queries `up` and `status` send before they call a server silent.
pub const TRIES: u32 = 2;

const HEADER: usize = 12;
const QTYPE_SOA: u16 = 6;
const QTYPE_A: u16 = 1;
const QCLASS_IN: u16 = 1;
/// A reply is at most this long over UDP without EDNS (a bigger datagram is cut; the header and
/// question, all that is checked, come first).
const MAX_REPLY: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot ask about '{0}': not a DNS name")]
    BadName(String),
    #[error("no answer within {:.1} s", .0.as_secs_f64())]
    Timeout(Duration),
    #[error("{}", unreachable_text(.0))]
    Unreachable(io::Error),
    #[error("{op}: {err}")]
    Io { op: &'static str, err: io::Error },
}

/// A reply to our query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    pub rcode: u8,
    /// How many records the answer section holds.
    pub records: u16,
    pub took: Duration,
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "answers ({} in {:.1} ms)",
            rcode_name(self.rcode),
            self.took.as_secs_f64() * 1000.0
        )
    }
}

pub fn rcode_name(rcode: u8) -> String {
    match rcode {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        n => format!("rcode {n}"),
    }
}

/// A query id nobody off the path can guess (std's per-process random hash keys, and the clock).
pub fn random_id() -> u16 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish() as u16
}

/// The query: header (id, recursion desired, one question), then `domain` SOA IN.
pub fn query(id: u16, domain: &str) -> Result<Vec<u8>, ProbeError> {
    query_type(id, domain, QTYPE_SOA)
}

/// A query for `name`'s records of type `qtype` (class IN).
fn query_type(id: u16, domain: &str, qtype: u16) -> Result<Vec<u8>, ProbeError> {
    let bad = || ProbeError::BadName(domain.escape_debug().to_string());
    let name = domain.strip_suffix('.').unwrap_or(domain);
    let mut q = Vec::with_capacity(HEADER + name.len() + 6);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00]); // RD
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // QD=1 AN=0 NS=0 AR=0
    if name.is_empty() {
        return Err(bad());
    }
    for label in name.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(bad());
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    if q.len() - HEADER > 255 {
        return Err(bad());
    }
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&QCLASS_IN.to_be_bytes());
    Ok(q)
}

/// The reply code, when `reply` is a well-formed reply to `query`: the same id, the response
/// bit, a standard query, and our question (or none: servers omit it in some errors). Anything
/// else (a stray or forged datagram) is `None` and the wait goes on.
pub fn check_reply(query: &[u8], reply: &[u8]) -> Option<u8> {
    if query.len() < HEADER || reply.len() < HEADER || reply[..2] != query[..2] {
        return None;
    }
    let (flags, rcode) = (reply[2], reply[3] & 0x0f);
    if flags & 0x80 == 0 || (flags >> 3) & 0x0f != 0 {
        return None;
    }
    match u16::from_be_bytes([reply[4], reply[5]]) {
        0 => Some(rcode),
        1 => {
            let question = &query[HEADER..];
            let theirs = reply.get(HEADER..HEADER + question.len())?;
            theirs.eq_ignore_ascii_case(question).then_some(rcode)
        }
        _ => None,
    }
}

fn unreachable_text(e: &io::Error) -> String {
    if e.raw_os_error() == Some(nix::errno::Errno::ECONNREFUSED as i32) {
        "port unreachable: nothing listens there".into()
    } else {
        format!("unreachable: {e}")
    }
}

/// Errors that mean the server cannot be reached: an ICMP error came back, or there is no route.
fn unreachable(e: &io::Error) -> bool {
    use nix::errno::Errno;
    let Some(code) = e.raw_os_error() else {
        return false;
    };
    [
        Errno::ECONNREFUSED,
        Errno::EHOSTUNREACH,
        Errno::ENETUNREACH,
        Errno::EHOSTDOWN,
        Errno::ENETDOWN,
    ]
    .iter()
    .any(|e| *e as i32 == code)
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> ProbeError {
    move |err| {
        if unreachable(&err) {
            ProbeError::Unreachable(err)
        } else {
            ProbeError::Io { op, err }
        }
    }
}

/// A query sent and not yet answered. The socket is connected to the server, so the kernel drops
/// datagrams from anyone else and reports the server's ICMP errors.
#[derive(Debug)]
pub struct Pending {
    socket: UdpSocket,
    query: Vec<u8>,
    pub sent: Instant,
}

impl Pending {
    /// Send one query (the SOA of `domain`) to `server`, from a fresh socket (a new random source
    /// port).
    pub fn send(server: SocketAddrV4, domain: &str) -> Result<Pending, ProbeError> {
        Pending::send_query(server, query(random_id(), domain)?)
    }

    fn send_query(server: SocketAddrV4, query: Vec<u8>) -> Result<Pending, ProbeError> {
        let socket = UdpSocket::bind("0.0.0.0:0").map_err(io_err("opening a UDP socket"))?;
        socket
            .connect(server)
            .map_err(io_err("connecting the UDP socket"))?;
        socket
            .set_nonblocking(true)
            .map_err(io_err("setting the socket non-blocking"))?;
        let sent = Instant::now();
        socket.send(&query).map_err(io_err("sending the query"))?;
        Ok(Pending {
            socket,
            query,
            sent,
        })
    }

    /// The socket, to wait on for readability.
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Read what has arrived: `Some` once the reply (or an error) is there, `None` to go on
    /// waiting.
    pub fn read(&self) -> Option<Result<Answer, ProbeError>> {
        let mut buf = [0u8; MAX_REPLY];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    if let Some(rcode) = check_reply(&self.query, &buf[..n]) {
                        return Some(Ok(Answer {
                            rcode,
                            records: u16::from_be_bytes([buf[6], buf[7]]),
                            took: self.sent.elapsed(),
                        }));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(io_err("reading the reply")(e))),
            }
        }
    }

    /// Wait for the reply, up to `timeout` after sending.
    pub fn wait(self, timeout: Duration) -> Result<Answer, ProbeError> {
        let deadline = self.sent + timeout;
        loop {
            if let Some(r) = self.read() {
                return r;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ProbeError::Timeout(timeout));
            }
            let mut fds = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&self.socket),
                nix::poll::PollFlags::POLLIN,
            )];
            let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            let timeout =
                nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::MAX);
            match nix::poll::poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    return Err(ProbeError::Io {
                        op: "waiting for the reply",
                        err: e.into(),
                    });
                }
            }
        }
    }
}

/// Ask `server` about `domain` up to `tries` times, each waiting `timeout`; the first answer, or
/// the last failure.
pub fn ask(
    server: SocketAddrV4,
    domain: &str,
    tries: u32,
    timeout: Duration,
) -> Result<Answer, ProbeError> {
    let mut last = ProbeError::Timeout(timeout);
    for i in 0..tries.max(1) {
        match Pending::send(server, domain).and_then(|p| p.wait(timeout)) {
            Ok(a) => return Ok(a),
            Err(e @ ProbeError::BadName(_)) => return Err(e),
            Err(e) => {
                tracing::debug!("DNS probe {} of {tries} to {server}: {e}", i + 1);
                last = e;
            }
        }
    }
    Err(last)
}

/// A name outside `domain` that exists nowhere: a random label under `.invalid` (RFC 6761: never
/// delegated, every resolver answers NXDOMAIN), or under `.test` for a domain inside `.invalid`.
pub fn outside_name(domain: &str) -> String {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    let tld = if d == "invalid" || d.ends_with(".invalid") {
        "test"
    } else {
        "invalid"
    };
    format!("dockroute-{:04x}{:04x}.{tld}", random_id(), random_id())
}

/// Whether an answer to the address query for a name that exists nowhere says the server answers
/// every name: NOERROR with records. NXDOMAIN, REFUSED, SERVFAIL and NOERROR without records
/// (a server that forwards, refuses, or knows only its domain) do not.
pub fn answers_anything(a: &Answer) -> bool {
    a.rcode == 0 && a.records > 0
}

/// Whether `server` answers a name outside `domain` that exists nowhere with an address: then it
/// is not the VM's DNS server for `domain` (a wildcard server, another host's) and must not be
/// named first for every lookup. `Some(why)` if it does; silence or an error says nothing.
pub fn answers_outside(server: SocketAddrV4, domain: &str, timeout: Duration) -> Option<String> {
    let name = outside_name(domain);
    let answer = query_type(random_id(), &name, QTYPE_A)
        .and_then(|q| Pending::send_query(server, q))
        .and_then(|p| p.wait(timeout));
    match answer {
        Ok(a) if answers_anything(&a) => Some(format!(
            "it answers NOERROR with an address for {name}, a name outside .{domain} that exists nowhere"
        )),
        Ok(a) => {
            tracing::debug!("DNS: {server} {a} for {name}, outside .{domain}");
            None
        }
        Err(e) => {
            tracing::debug!("DNS: {server} about {name}: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_a_soa_query_for_the_domain() {
        let q = query(0xbeef, "dev.docker").unwrap();
        assert_eq!(
            q,
            [
                0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, // header
                3, b'd', b'e', b'v', 6, b'd', b'o', b'c', b'k', b'e', b'r', 0, // name
                0, 6, 0, 1, // SOA IN
            ]
        );
        assert_eq!(query(1, "docker.").unwrap(), query(1, "docker").unwrap());
        let long = "a".repeat(63);
        assert!(query(1, &format!("{long}.{long}.{long}.{long}")).is_err()); // 257 octets
        assert!(query(1, &format!("{long}.{long}.{long}.{}", "a".repeat(61))).is_ok());
        for bad in ["", ".", "a..b", ".docker", &"a".repeat(64), "do cker", "dö"] {
            assert!(query(1, bad).is_err(), "{bad:?} accepted");
        }
    }

    /// A reply as a server builds it: the query with QR set, the code, and an answer appended.
    fn reply_to(q: &[u8], rcode: u8) -> Vec<u8> {
        let mut r = q.to_vec();
        r[2] |= 0x80;
        r[3] = 0x80 | rcode; // RA
        r[7] = 1; // one answer record (content not checked)
        r.extend_from_slice(&[0xc0, 12, 0, 6, 0, 1, 0, 0, 0, 60, 0, 0]);
        r
    }

    #[test]
    fn any_well_formed_reply_with_our_id_and_question_is_an_answer() {
        let q = query(0x1234, "docker").unwrap();
        assert_eq!(check_reply(&q, &reply_to(&q, 0)), Some(0));
        assert_eq!(check_reply(&q, &reply_to(&q, 3)), Some(3), "NXDOMAIN");
        assert_eq!(check_reply(&q, &reply_to(&q, 5)), Some(5), "REFUSED");
        // the question echoed in another case (0x20 randomisation) is ours
        let mut upper = reply_to(&q, 0);
        upper[13..19].copy_from_slice(b"DOCKER");
        assert_eq!(check_reply(&q, &upper), Some(0));
        // a header-only error reply (no question)
        let mut bare = q[..HEADER].to_vec();
        bare[2] |= 0x80;
        bare[3] = 1;
        bare[5] = 0;
        assert_eq!(check_reply(&q, &bare), Some(1));
    }

    #[test]
    fn stray_forged_or_truncated_datagrams_are_not_answers() {
        let q = query(0x1234, "docker").unwrap();
        let good = reply_to(&q, 0);
        let mut other_id = good.clone();
        other_id[1] ^= 1;
        assert_eq!(check_reply(&q, &other_id), None);
        assert_eq!(check_reply(&q, &q), None, "our own query echoed back");
        let mut other_q = good.clone();
        other_q[14] = b'x';
        assert_eq!(check_reply(&q, &other_q), None);
        let mut opcode = good.clone();
        opcode[2] |= 0x10; // opcode 2 (status)
        assert_eq!(check_reply(&q, &opcode), None);
        let mut two = good.clone();
        two[5] = 2;
        assert_eq!(check_reply(&q, &two), None);
        for n in 0..HEADER + 4 {
            assert_eq!(check_reply(&q, &good[..n]), None, "cut at {n}");
        }
        assert_eq!(check_reply(&[], &good), None);
    }

    #[test]
    fn the_outside_name_is_outside_the_domain_and_exists_nowhere() {
        let n = outside_name("docker");
        assert!(
            n.starts_with("dockroute-") && n.ends_with(".invalid"),
            "{n}"
        );
        assert!(query_type(1, &n, QTYPE_A).is_ok());
        assert_ne!(outside_name("docker"), outside_name("docker"));
        assert!(outside_name("dev.invalid").ends_with(".test"));
        let a = |rcode, records| Answer {
            rcode,
            records,
            took: Duration::ZERO,
        };
        assert!(answers_anything(&a(0, 1)));
        for (rcode, records) in [(3, 0), (5, 0), (2, 0), (0, 0)] {
            assert!(!answers_anything(&a(rcode, records)), "{rcode} {records}");
        }
    }

    /// A UDP socket on loopback (never anything outside this host), and its address.
    fn loopback_server() -> (UdpSocket, SocketAddrV4) {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        match server.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => (server, a),
            _ => unreachable!(),
        }
    }

    /// A server on loopback that answers the next query with `rcode` and `records` answers.
    fn one_reply(rcode: u8, records: u8) -> (SocketAddrV4, std::thread::JoinHandle<Vec<u8>>) {
        let (server, addr) = loopback_server();
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let (n, from) = server.recv_from(&mut buf).unwrap();
            let mut r = buf[..n].to_vec();
            r[2] |= 0x80;
            r[3] = 0x80 | rcode;
            r[7] = records;
            for _ in 0..records {
                r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 6, 6, 6, 6]);
            }
            server.send_to(&r, from).unwrap();
            buf[..n].to_vec()
        });
        (addr, t)
    }

    #[test]
    fn a_server_that_answers_a_name_that_exists_nowhere_is_caught() {
        let (addr, t) = one_reply(0, 1);
        let why = answers_outside(addr, "docker", TIMEOUT).unwrap();
        assert!(why.contains("outside .docker"), "{why}");
        let asked = t.join().unwrap();
        // an A query for a name under .invalid
        assert_eq!(&asked[asked.len() - 4..], &[0, 1, 0, 1]);
        assert!(String::from_utf8_lossy(&asked).contains("invalid"));
        for (rcode, records) in [(3, 0), (5, 0), (0, 0)] {
            let (addr, t) = one_reply(rcode, records);
            assert_eq!(answers_outside(addr, "docker", TIMEOUT), None);
            t.join().unwrap();
        }
    }

    #[test]
    fn ids_vary() {
        let ids: std::collections::HashSet<u16> = (0..64).map(|_| random_id()).collect();
        assert!(ids.len() > 32, "{ids:?}");
    }

    #[test]
    fn a_local_server_answers_and_a_closed_port_or_silence_does_not() {
        // loopback only: a server on 127.0.0.1 that answers REFUSED, one that never answers
        let (server, addr) = loopback_server();
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let (n, from) = server.recv_from(&mut buf).unwrap();
            // a stray datagram first, then the reply
            server.send_to(b"junk", from).unwrap();
            let mut r = buf[..n].to_vec();
            r[2] |= 0x80;
            r[3] = 5;
            server.send_to(&r, from).unwrap();
            server // kept open (silent) until joined
        });
        let a = ask(addr, "docker", 1, TIMEOUT).unwrap();
        assert_eq!(a.rcode, 5);
        let silent = t.join().unwrap();
        let e = ask(addr, "docker", 1, Duration::from_millis(100)).unwrap_err();
        assert!(matches!(e, ProbeError::Timeout(_)), "{e}");
        drop(silent);
        let e = ask(addr, "docker", 2, TIMEOUT).unwrap_err();
        assert!(matches!(e, ProbeError::Unreachable(_)), "{e}");
    }
}
