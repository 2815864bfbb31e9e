//! nfnetlink (NETLINK_NETFILTER) messages, as far as dockroute needs them: the walk over the
//! messages of a datagram and the attributes of a message (`watch` reads nftables' change
//! notifications with it), and the nftables generation id: NFT_MSG_GETGEN, answered with
//! NFT_MSG_NEWGEN carrying NFTA_GEN_ID (u32, big-endian). The kernel bumps that id on every
//! committed nftables transaction, iptables-nft's included. Encoding and decoding are pure; the
//! socket is [`generation`] (Linux).

pub const NLMSG_HDRLEN: usize = 16;
/// struct nfgenmsg: family, version, resource id.
pub const NFGENMSG_LEN: usize = 4;
pub const NETLINK_NETFILTER: isize = 12;
/// NFNL_SUBSYS_NFTABLES, the high byte of an nftables message's type.
pub const NFTABLES: u16 = 10;
/// NFT_MSG_NEWGEN: the reply to GETGEN, and the last notification of every transaction.
pub const NFT_MSG_NEWGEN: u16 = (NFTABLES << 8) | 15;
pub const NFT_MSG_GETGEN: u16 = (NFTABLES << 8) | 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NFTA_GEN_ID: u16 = 1;
const NLMSG_DONE: u16 = 3;
const NLM_F_DUMP: u16 = 0x300;
/// NFT_MSG_GETTABLE and its answer NFT_MSG_NEWTABLE.
const NFT_MSG_GETTABLE: u16 = (NFTABLES << 8) | 1;
const NFT_MSG_NEWTABLE: u16 = NFTABLES << 8;
const NFTA_TABLE_NAME: u16 = 1;

/// The messages of one netlink datagram: (nlmsg_type, the message from its header on, cut at
/// the datagram's end). Stops at a length shorter than a header (it would never advance).
pub fn messages(datagram: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        if rest.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        if len < NLMSG_HDRLEN {
            rest = &[];
            return None;
        }
        let msg = &rest[..len.min(rest.len())];
        rest = rest.get((len + 3) & !3..).unwrap_or_default();
        Some((kind, msg))
    })
}

/// The attributes of a message whose fixed header (after the netlink header) is `header` bytes
/// long: (type without the nested/byte-order flags, value). Stops at a malformed one.
pub fn attributes(msg: &[u8], header: usize) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = NLMSG_HDRLEN + header;
    std::iter::from_fn(move || {
        let head = msg.get(at..at + 4)?;
        let nla_len = u16::from_ne_bytes([head[0], head[1]]) as usize;
        let nla_type = u16::from_ne_bytes([head[2], head[3]]) & 0x3fff;
        if nla_len < 4 {
            return None;
        }
        let value = msg.get(at + 4..at + nla_len)?;
        at += (nla_len + 3) & !3;
        Some((nla_type, value))
    })
}

/// The request for the nftables generation id, with sequence number `seq`.
pub fn getgen_request(seq: u32) -> [u8; NLMSG_HDRLEN + NFGENMSG_LEN] {
    let mut req = [0u8; NLMSG_HDRLEN + NFGENMSG_LEN];
    req[0..4].copy_from_slice(&((NLMSG_HDRLEN + NFGENMSG_LEN) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&NFT_MSG_GETGEN.to_ne_bytes());
    req[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    // port 0 (the kernel's); nfgenmsg: AF_UNSPEC, NFNETLINK_V0, resource 0
    req
}

/// The answer to the GETGEN request `seq` in one datagram: `Some(Ok(id))`, `Some(Err(errno))`
/// when the kernel refused it, `None` when the datagram holds no answer to it.
pub fn gen_reply(datagram: &[u8], seq: u32) -> Option<Result<u32, i32>> {
    for (kind, msg) in messages(datagram) {
        let their_seq = u32::from_ne_bytes([msg[8], msg[9], msg[10], msg[11]]);
        if their_seq != seq {
            continue;
        }
        match kind {
            NLMSG_ERROR => {
                let code = msg.get(16..20)?;
                let code = i32::from_ne_bytes([code[0], code[1], code[2], code[3]]);
                // 0 is an acknowledgement: no id in it
                return Some(Err(if code == 0 { 0 } else { -code }));
            }
            NFT_MSG_NEWGEN => {
                let id = attributes(msg, NFGENMSG_LEN)
                    .find(|(t, v)| *t == NFTA_GEN_ID && v.len() == 4)
                    .map(|(_, v)| u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
                return Some(id.ok_or(0));
            }
            _ => {}
        }
    }
    None
}

/// A dump request for every nftables table, with sequence number `seq`.
pub fn gettable_request(seq: u32) -> [u8; NLMSG_HDRLEN + NFGENMSG_LEN] {
    let mut req = getgen_request(seq);
    req[4..6].copy_from_slice(&NFT_MSG_GETTABLE.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req
}

/// One datagram of the answer to [`gettable_request`]: the (NFPROTO_* family, name) of each
/// table in it are added to `out`; `Some(Ok)` at its end, `Some(Err(errno))` when the kernel
/// refused it, `None` when more datagrams follow.
pub fn tables_reply(datagram: &[u8], out: &mut Vec<(u8, String)>) -> Option<Result<(), i32>> {
    for (kind, msg) in messages(datagram) {
        match kind {
            NLMSG_DONE => return Some(Ok(())),
            NLMSG_ERROR => {
                let code = msg
                    .get(16..20)
                    .map_or(0, |c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
                return Some(if code == 0 { Ok(()) } else { Err(-code) });
            }
            NFT_MSG_NEWTABLE => {
                let Some(&family) = msg.get(NLMSG_HDRLEN) else {
                    continue;
                };
                if let Some((_, name)) =
                    attributes(msg, NFGENMSG_LEN).find(|(t, _)| *t == NFTA_TABLE_NAME)
                {
                    let name = name.split(|b| *b == 0).next().unwrap_or_default();
                    out.push((family, String::from_utf8_lossy(name).into_owned()));
                }
            }
            _ => {}
        }
    }
    None
}

/// The nftables tables in this network namespace, as (NFPROTO_* family, name), through one
/// netlink dump (NFT_MSG_GETTABLE). `nft list tables` reads the whole ruleset, iptables-nft's
/// thousands of rules included; this reads the table list only.
#[cfg(target_os = "linux")]
pub fn tables() -> std::io::Result<Vec<(u8, String)>> {
    use rtnetlink::sys::{Socket, SocketAddr};
    use std::io::Error;
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let req = gettable_request(1);
    if socket.send(&req, 0)? != req.len() {
        return Err(Error::other("short send"));
    }
    let mut out = Vec::new();
    let mut buf = Vec::with_capacity(32 * 1024);
    loop {
        buf.clear();
        let n = socket.recv(&mut buf, nix::libc::MSG_TRUNC)?;
        if n > buf.len() {
            return Err(Error::other(format!("a reply of {n} bytes did not fit")));
        }
        match tables_reply(&buf, &mut out) {
            Some(Ok(())) => return Ok(out),
            Some(Err(errno)) => return Err(Error::from_raw_os_error(errno)),
            None => {}
        }
    }
}

/// The nftables generation id of this network namespace, through one GETGEN request. The kernel
/// answers within the send, so the reply is read without waiting: none is an error.
#[cfg(target_os = "linux")]
pub fn generation() -> std::io::Result<u32> {
    use rtnetlink::sys::{Socket, SocketAddr};
    use std::io::{Error, ErrorKind};
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.set_non_blocking(true)?;
    let seq = 1;
    let req = getgen_request(seq);
    if socket.send(&req, 0)? != req.len() {
        return Err(Error::other("short send"));
    }
    let mut buf = Vec::with_capacity(4096);
    loop {
        buf.clear();
        socket.recv(&mut buf, 0)?; // WouldBlock: no answer
        match gen_reply(&buf, seq) {
            Some(Ok(id)) => return Ok(id),
            Some(Err(0)) => return Err(Error::new(ErrorKind::InvalidData, "no generation id")),
            Some(Err(errno)) => return Err(Error::from_raw_os_error(errno)),
            None => {}
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub fn generation() -> std::io::Result<u32> {
    Err(std::io::ErrorKind::Unsupported.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A netlink message of `kind` with sequence number `seq` and `body` after the header.
    fn message(kind: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        m.resize((m.len() + 3) & !3, 0);
        m
    }

    fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(value);
        a.resize((a.len() + 3) & !3, 0);
        a
    }

    /// What the kernel answers (nf_tables_fill_gen_info): nfgenmsg with the id's low 16 bits,
    /// then NFTA_GEN_ID, NFTA_GEN_PROC_PID and NFTA_GEN_PROC_NAME.
    fn newgen(seq: u32, id: u32) -> Vec<u8> {
        let mut body = vec![0, 0];
        body.extend_from_slice(&(id as u16).to_be_bytes());
        body.extend(attribute(1, &id.to_be_bytes()));
        body.extend(attribute(2, &4242u32.to_be_bytes()));
        body.extend(attribute(3, b"nft\0"));
        message(NFT_MSG_NEWGEN, seq, &body)
    }

    #[test]
    fn the_getgen_request_is_an_nfnetlink_request_of_20_bytes() {
        let r = getgen_request(7);
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 20);
        assert_eq!(u16::from_ne_bytes([r[4], r[5]]), 0x0a10);
        assert_eq!(
            u16::from_ne_bytes([r[6], r[7]]),
            1,
            "NLM_F_REQUEST, no dump"
        );
        assert_eq!(u32::from_ne_bytes(r[8..12].try_into().unwrap()), 7);
        assert_eq!(&r[16..], [0, 0, 0, 0], "AF_UNSPEC, version 0");
    }

    #[test]
    fn the_generation_id_is_read_big_endian_from_the_answer_to_our_request() {
        assert_eq!(gen_reply(&newgen(1, 0x0102_0304), 1), Some(Ok(0x0102_0304)));
        // an answer to another request, then ours, in one datagram
        let mut d = newgen(9, 5);
        d.extend(newgen(1, 6));
        assert_eq!(gen_reply(&d, 1), Some(Ok(6)));
        assert_eq!(gen_reply(&newgen(9, 5), 1), None);
        // the kernel refuses (EPERM without CAP_NET_ADMIN)
        let err = message(NLMSG_ERROR, 1, &(-1i32).to_ne_bytes());
        assert_eq!(gen_reply(&err, 1), Some(Err(1)));
        // a NEWGEN without its id attribute, or with one of the wrong size
        let bare = message(NFT_MSG_NEWGEN, 1, &[0, 0, 0, 0]);
        assert_eq!(gen_reply(&bare, 1), Some(Err(0)));
        let mut short = vec![0, 0, 0, 0];
        short.extend(attribute(1, &[1, 2]));
        assert_eq!(
            gen_reply(&message(NFT_MSG_NEWGEN, 1, &short), 1),
            Some(Err(0))
        );
        // a datagram cut before the id's last byte gives no id (and does not panic)
        let whole = newgen(1, 3);
        let id_end = NLMSG_HDRLEN + NFGENMSG_LEN + 8;
        for cut in 0..whole.len() {
            let got = gen_reply(&whole[..cut], 1);
            assert_eq!(got == Some(Ok(3)), cut >= id_end, "cut at {cut}: {got:?}");
        }
    }

    #[test]
    fn attributes_stop_at_a_malformed_one() {
        let mut body = vec![0, 0, 0, 0];
        body.extend(attribute(1, b"vpn\0"));
        body.extend_from_slice(&[2, 0, 5, 0]); // nla_len 2: shorter than its own header
        body.extend(attribute(3, b"never"));
        let m = message(NFTABLES << 8, 1, &body);
        let found: Vec<(u16, &[u8])> = attributes(&m, NFGENMSG_LEN).collect();
        assert_eq!(found, [(1, &b"vpn\0"[..])]);
    }

    /// Run `f` on a thread of its own in a network namespace of its own (the programs it runs
    /// inherit it); `None` without root, which in CI (CI=true) fails instead: there the
    /// privileged tests must run.
    #[cfg(target_os = "linux")]
    fn in_own_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        if !nix::unistd::geteuid().is_root() {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "a privileged test in CI without root"
            );
            return None;
        }
        let run = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            f()
        });
        Some(run.join().unwrap())
    }

    /// Privileged (root; in CI it must not skip): in a network namespace of its own (unshare on
    /// a dedicated thread; the programs it runs inherit it), the id moves with every change
    /// iptables-nft and nft commit, and not with their reads (`iptables -S`, `nft list`), which
    /// is what lets `watch` reuse a reading while it stays.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_generation_moves_with_each_change_and_not_with_reads() {
        let Some(ids) = in_own_netns(|| {
            let run = |program: &str, args: &[&str]| {
                let st = std::process::Command::new(program)
                    .args(args)
                    .stdout(std::process::Stdio::null())
                    .status()
                    .expect(program);
                assert!(st.success(), "{program} {args:?}");
                generation().expect("the generation id")
            };
            let start = generation().expect("the generation id");
            vec![
                start,
                run("iptables-nft", &["-w", "-A", "OUTPUT", "-j", "ACCEPT"]),
                run("iptables-nft", &["-w", "-t", "filter", "-S"]),
                run("nft", &["-j", "list", "ruleset"]),
                run("nft", &["add", "table", "inet", "vpn"]),
                run("nft", &["list", "table", "inet", "vpn"]),
                run("iptables-nft", &["-w", "-P", "OUTPUT", "DROP"]),
            ]
        }) else {
            return;
        };
        let moved: Vec<bool> = ids.windows(2).map(|w| w[0] != w[1]).collect();
        assert_eq!(
            moved,
            [true, false, false, true, false, true],
            "generation ids {ids:?}"
        );
    }

    #[test]
    fn the_table_list_reads_each_table_and_ends_at_done_or_an_error() {
        let req = gettable_request(7);
        assert_eq!(u16::from_ne_bytes([req[4], req[5]]), (10 << 8) | 1);
        assert_eq!(u16::from_ne_bytes([req[6], req[7]]), 0x301);
        let table = |family: u8, name: &[u8]| {
            let mut body = vec![family, 0, 0, 0];
            let len = 4 + name.len();
            body.extend_from_slice(&(len as u16).to_ne_bytes());
            body.extend_from_slice(&1u16.to_ne_bytes()); // NFTA_TABLE_NAME
            body.extend_from_slice(name);
            body.resize(body.len().next_multiple_of(4), 0);
            message(10 << 8, 7, &body)
        };
        let mut first = table(1, b"vpn\0");
        first.extend(table(2, b"filter\0"));
        let mut out = Vec::new();
        assert_eq!(tables_reply(&first, &mut out), None, "more follows");
        assert_eq!(
            tables_reply(&message(3, 7, &[0; 4]), &mut out),
            Some(Ok(()))
        );
        assert_eq!(out, [(1, "vpn".to_string()), (2, "filter".to_string())]);
        let refused = message(2, 7, &(-1i32).to_ne_bytes());
        assert_eq!(tables_reply(&refused, &mut out), Some(Err(1)));
        // a table message cut short names nothing, and breaks nothing
        let mut cut = table(1, b"vpn\0");
        cut.truncate(18);
        cut[0..4].copy_from_slice(&18u32.to_ne_bytes());
        let mut none = Vec::new();
        assert_eq!(tables_reply(&cut, &mut none), None);
        assert!(none.is_empty());
    }

    /// Privileged (root; in CI it must not skip): in a network namespace of its own (unshare on
    /// a dedicated thread; the programs it runs inherit it), the netlink table list names every
    /// table nft made, in every family, and iptables-nft's.
    #[cfg(target_os = "linux")]
    #[test]
    fn tables_lists_every_table_of_this_namespace() {
        let Some(found) = in_own_netns(|| {
            assert_eq!(tables().unwrap(), []);
            let mut nft = std::process::Command::new("nft")
                .args(["-f", "-"])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .expect("nft");
            use std::io::Write;
            nft.stdin
                .take()
                .unwrap()
                .write_all(b"table inet vpn {}\ntable ip nordvpn {}\ntable ip6 six {}\n")
                .unwrap();
            assert!(nft.wait().unwrap().success());
            let ipt = std::process::Command::new("iptables-nft")
                .args(["-w", "-A", "OUTPUT", "-j", "ACCEPT"])
                .status()
                .expect("iptables-nft");
            assert!(ipt.success());
            tables().unwrap()
        }) else {
            return;
        };
        let mut found = found;
        found.sort();
        assert_eq!(
            found,
            [
                (1, "vpn".to_string()),
                (2, "filter".to_string()),
                (2, "nordvpn".to_string()),
                (10, "six".to_string())
            ]
        );
    }
}
