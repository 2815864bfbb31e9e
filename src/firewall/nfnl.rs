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

    /// Privileged (root; in CI it must not skip): in a network namespace of its own (unshare on
    /// a dedicated thread; the programs it runs inherit it), the id moves with every change
    /// iptables-nft and nft commit, and not with their reads (`iptables -S`, `nft list`), which
    /// is what lets `watch` reuse a reading while it stays.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_generation_moves_with_each_change_and_not_with_reads() {
        if !nix::unistd::geteuid().is_root() {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "a privileged test in CI without root"
            );
            return;
        }
        let ids = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
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
        })
        .join()
        .unwrap();
        let moved: Vec<bool> = ids.windows(2).map(|w| w[0] != w[1]).collect();
        assert_eq!(
            moved,
            [true, false, false, true, false, true],
            "generation ids {ids:?}"
        );
    }
}
