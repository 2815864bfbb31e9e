//! The macOS routing-socket codec (`net::rtmsg`) and the route logic on what it decodes
//! (`net::darwin`): input = bytes as the kernel would hand them over (one reply, or a sysctl
//! dump of several messages).
//! Beyond "no panic":
//! - a decoded message's length is within the input and at least its 4-byte header;
//! - a route message (the only kind the codec encodes) re-encodes to bytes that decode to the
//!   same message, and re-encoding that gives the same bytes (the encoding is canonical);
//! - a dump's route messages, re-encoded one after the other, split back into the same messages;
//! - dockroute's own requests (RTM_ADD, RTM_DELETE, RTM_GET for a prefix and a gateway taken
//!   from the first input bytes) decode to themselves and read back as that prefix and gateway.
#![no_main]

use dockroute::net::darwin::{self, KRoute};
use dockroute::net::rtmsg::{self, Message};
use ipnet::Ipv4Net;
use libfuzzer_sys::fuzz_target;
use std::net::Ipv4Addr;

fn round_trip(m: &rtmsg::RtMsg) {
    let wire = m.encode();
    let (back, len) = rtmsg::decode(&wire)
        .unwrap_or_else(|e| panic!("{m:?} encodes to bytes it cannot decode: {e}"));
    assert_eq!(len, wire.len());
    assert_eq!(back, Message::Route(m.clone()), "{wire:02x?}");
    let Message::Route(back) = back else {
        unreachable!()
    };
    assert_eq!(back.encode(), wire, "the encoding is not canonical");
}

/// What `status`, `up` and `watch` do with a message: none of it may panic.
fn use_message(m: &Message) {
    darwin::is_event(m);
    darwin::is_reply(m, 1, 1);
    if let Message::Route(r) = m
        && let Some(k) = KRoute::from_msg(r)
    {
        assert_eq!(k.dst, k.dst.trunc());
        let _ = (
            k.to_string(),
            k.is_ours(),
            k.is_cache(),
            k.entry("vboxnet0"),
        );
        let _ = (k.foreign(Some("en0")), k.lookup(None));
    }
}

fuzz_target!(|data: &[u8]| {
    // one message
    if let Ok((m, len)) = rtmsg::decode(data) {
        assert!((4..=data.len()).contains(&len), "length {len}");
        use_message(&m);
        if let Message::Route(r) = &m {
            round_trip(r);
        }
    }

    // a dump
    if let Ok(msgs) = rtmsg::split(data) {
        for m in &msgs {
            use_message(m);
        }
        darwin::routes(&msgs);
        darwin::neighbours(&msgs);
        let routes: Vec<Message> = msgs
            .iter()
            .filter(|m| matches!(m, Message::Route(_)))
            .cloned()
            .collect();
        let mut wire = Vec::new();
        for m in &routes {
            let Message::Route(r) = m else { unreachable!() };
            wire.extend(r.encode());
        }
        assert_eq!(
            rtmsg::split(&wire).as_ref(),
            Ok(&routes),
            "the re-encoded dump"
        );
    }

    // dockroute's requests
    if data.len() >= 13 {
        let dst = Ipv4Addr::new(data[0], data[1], data[2], data[3]);
        let dst = Ipv4Net::new(dst, data[4] % 33).unwrap().trunc();
        let gw = Ipv4Addr::new(data[5], data[6], data[7], data[8]);
        let seq = i32::from_le_bytes([data[9], data[10], data[11], data[12]]);
        let add = darwin::add_request(dst, gw, seq);
        round_trip(&add);
        let k = KRoute::from_msg(&add).expect("an RTM_ADD reads as a route");
        assert_eq!((k.dst, k.gateway()), (dst, Some(gw)));
        assert!(k.is_ours(), "{k}");
        for req in [
            darwin::delete_request(dst, seq),
            darwin::get_exact_request(dst, seq),
        ] {
            round_trip(&req);
            let k = KRoute::from_msg(&req).expect("a request for a prefix reads as a route");
            assert_eq!(k.dst, dst);
            assert!(darwin::is_reply(&Message::Route(req.clone()), 0, seq));
        }
        round_trip(&darwin::lookup_request(gw, seq));
    }
});
