//! The DNS responder's query handling (`dns::responder::answer`): input = a query packet, then
//! (after the first 0xFF 0xFE 0xFD marker, if any) the upstream's reply to a forwarded query.
//! Beyond "no panic":
//! - every answer parses as a DNS response with the query's ID, never offers recursion, and
//!   over UDP fits the client's size (512 without EDNS, at most 1232 with it);
//! - a query is never silently dropped unless it has no header or is itself a response;
//! - no record in any answer is named outside the domain or the routed reverse zone, and an
//!   answer with records has a question inside them;
//! - only names inside the domain are forwarded, and the reply built from any upstream bytes
//!   keeps the client's ID and only records named inside the domain.
#![no_main]

use dockroute::dns::responder::answer::{
    MAX_UDP_PAYLOAD, Outcome, PLAIN_UDP_PAYLOAD, Transport, forwarded, handle,
};
use dockroute::dns::responder::names::{Attachment, Container, LABEL_NAMES, Table, Zone};
use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::{LowerName, Name};
use libfuzzer_sys::fuzz_target;
use std::net::Ipv4Addr;
use std::sync::OnceLock;

const MARKER: &[u8] = &[0xff, 0xfe, 0xfd];

fn table() -> &'static Table {
    static T: OnceLock<Table> = OnceLock::new();
    T.get_or_init(|| {
        let zone = Zone::new("docker", Some(Ipv4Addr::new(127, 0, 0, 153))).unwrap();
        let containers: Vec<Container> = (0..50u8)
            .map(|i| {
                Container::new(
                    &format!("c{i}"),
                    &[(LABEL_NAMES, "many,x.y")],
                    vec![Attachment::new("bridge", Ipv4Addr::new(172, 17, 0, i), &[])],
                )
            })
            .collect();
        Table::build(&zone, &containers, &["172.17.0.0/16".parse().unwrap()]).table
    })
}

/// Whether a record's owner is one the responder may speak for.
fn ours(name: &Name) -> bool {
    let n = LowerName::new(name);
    if LowerName::new(&table().zone().domain).zone_of(&n) {
        return true;
    }
    let reverse = LowerName::new(&Name::from_ascii("17.172.in-addr.arpa.").unwrap());
    reverse.zone_of(&n)
}

fn check(query: &[u8], reply: &[u8], transport: Transport, forwarded_reply: bool) -> Message {
    let m = Message::from_vec(reply).expect("every answer parses");
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert_eq!(
        m.metadata.id,
        u16::from_be_bytes([query[0], query[1]]),
        "ID"
    );
    assert!(
        !m.metadata.recursion_available,
        "never a recursive resolver"
    );
    if transport == Transport::Udp {
        let limit = if m.edns.is_some() {
            MAX_UDP_PAYLOAD
        } else {
            PLAIN_UDP_PAYLOAD
        };
        assert!(
            reply.len() <= usize::from(limit),
            "{} > {limit}",
            reply.len()
        );
    }
    for r in m.all_sections() {
        assert!(ours(&r.name), "a record outside the domain: {r}");
    }
    if !forwarded_reply && m.all_sections().next().is_some() {
        assert!(
            ours(m.queries[0].name()),
            "records for {}",
            m.queries[0].name()
        );
    }
    m
}

fuzz_target!(|data: &[u8]| {
    let (query, upstream) = match data.windows(3).position(|w| w == MARKER) {
        Some(i) => (&data[..i], Some(&data[i + 3..])),
        None => (data, None),
    };
    for transport in [Transport::Udp, Transport::Tcp] {
        match handle(table(), query, transport, true, 0x4242) {
            Outcome::Reply(r) => {
                check(query, &r, transport, false);
            }
            Outcome::Forward(f) => {
                assert!(
                    LowerName::new(&table().zone().domain).zone_of(&LowerName::new(f.name())),
                    "forwarded outside the domain: {}",
                    f.name()
                );
                let sent = Message::from_vec(&f.query).expect("the forwarded query parses");
                assert_eq!(sent.metadata.id, 0x4242);
                let r = forwarded(table(), &f, upstream);
                check(query, &r, transport, true);
            }
            Outcome::Drop => assert!(
                query.len() < 12 || query[2] & 0x80 != 0,
                "a query was dropped: {query:?}"
            ),
        }
    }
});
