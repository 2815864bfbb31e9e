//! One query in, one answer out (pure: no sockets, no clock). The wire format is hickory-proto's.
//!
//! | query | answer |
//! |---|---|
//! | shorter than a header, or a response | dropped |
//! | not one question, records in answer/authority, an unparsable body | FORMERR |
//! | opcode other than QUERY | NOTIMP |
//! | EDNS version above 0 | BADVERS |
//! | class other than IN, zone transfer | REFUSED |
//! | a name of the table | its A records (AA) |
//! | the domain itself | SOA, NS (with `ns.<domain>`'s A) |
//! | a name of the table or its parents, another type | NODATA: no answer, SOA in authority |
//! | any other name in the domain | forwarded when an upstream is set, else NXDOMAIN with SOA |
//! | `d.c.b.a.in-addr.arpa` with a.b.c.d in a routed subnet | PTR, or NXDOMAIN |
//! | anything else (other domains, recursion) | REFUSED: never an open resolver |
//!
//! Over UDP the answer fits the client's size (512 bytes, or its EDNS size up to
//! [`MAX_UDP_PAYLOAD`]); a longer one goes out with only the question and the TC bit, and the
//! client asks again over TCP.

use super::TTL;
use super::names::Table;
use hickory_proto::op::{
    Edns, Header, Message, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_proto::rr::rdata::{A, NS, PTR, SOA};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use std::net::Ipv4Addr;

/// The largest UDP answer, whatever EDNS size a client offers (the DNS flag day 2020 size: no
/// IP fragmentation on common paths).
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// An answer without EDNS.
pub const PLAIN_UDP_PAYLOAD: u16 = 512;
/// Records in a query's additional section (OPT, and perhaps a cookie or TSIG we ignore).
const MAX_ADDITIONAL: u16 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Ask the upstream, then [`forwarded`] gives the reply.
    Forward(Forward),
    /// Say nothing (not a query).
    Drop,
}

/// A query for a name in the domain the table does not know, for the upstream.
#[derive(Debug, PartialEq, Eq)]
pub struct Forward {
    /// The query for the upstream, with its own ID.
    pub query: Vec<u8>,
    /// That ID.
    pub id: u16,
    request: Request,
}

impl Forward {
    /// The name asked for (always inside the domain).
    pub fn name(&self) -> &Name {
        self.request.query.name()
    }
}

/// What the reply to a parsed query needs from it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Request {
    metadata: Metadata,
    query: Query,
    /// The client's EDNS size, if it sent OPT.
    edns: Option<u16>,
    transport: Transport,
}

impl Request {
    fn reply(&self, code: ResponseCode) -> Message {
        let mut m = Message::response(self.metadata.id, self.metadata.op_code);
        m.metadata = Metadata::response_from_request(&self.metadata);
        m.metadata.response_code = code;
        m.add_query(self.query.clone());
        if self.edns.is_some() {
            m.set_edns(our_edns());
        }
        m
    }

    /// The most bytes the answer may have.
    fn limit(&self) -> usize {
        match (self.transport, self.edns) {
            (Transport::Tcp, _) => usize::from(u16::MAX),
            (Transport::Udp, None) => usize::from(PLAIN_UDP_PAYLOAD),
            (Transport::Udp, Some(size)) => {
                usize::from(size.clamp(PLAIN_UDP_PAYLOAD, MAX_UDP_PAYLOAD))
            }
        }
    }

    /// The message as bytes that fit: whole, or (UDP) header, question and OPT with TC set.
    fn encode(&self, m: Message) -> Vec<u8> {
        match m.to_vec() {
            Ok(bytes) if bytes.len() <= self.limit() => bytes,
            Ok(_) => {
                let mut cut = m.truncate();
                cut.metadata.truncation = true;
                match cut.to_vec() {
                    Ok(bytes) if bytes.len() <= self.limit() => bytes,
                    _ => bare(
                        self.metadata.id,
                        self.metadata.op_code,
                        ResponseCode::ServFail,
                    ),
                }
            }
            Err(_) => bare(
                self.metadata.id,
                self.metadata.op_code,
                ResponseCode::ServFail,
            ),
        }
    }
}

fn our_edns() -> Edns {
    let mut e = Edns::new();
    e.set_max_payload(MAX_UDP_PAYLOAD);
    e
}

/// An error reply with only a header (no question: the query could not be read).
fn bare(id: u16, op: OpCode, code: ResponseCode) -> Vec<u8> {
    Message::error_msg(id, op, code)
        .to_vec()
        .unwrap_or_else(|_| {
            // a header always encodes; keep the ID and the error code regardless
            let [a, b] = id.to_be_bytes();
            vec![a, b, 0x80, code.low(), 0, 0, 0, 0, 0, 0, 0, 0]
        })
}

/// Answer one query. `upstream`: a name in the domain the table does not know is forwarded
/// (with `upstream_id` as its ID) instead of answered NXDOMAIN.
pub fn handle(
    table: &Table,
    packet: &[u8],
    transport: Transport,
    upstream: bool,
    upstream_id: u16,
) -> Outcome {
    let header = match Header::read(&mut BinDecoder::new(packet)) {
        Ok(h) => h,
        Err(_) => return Outcome::Drop,
    };
    let (id, op) = (header.metadata.id, header.metadata.op_code);
    if header.metadata.message_type == MessageType::Response {
        return Outcome::Drop; // never answer an answer: no loops between servers
    }
    if op != OpCode::Query {
        return Outcome::Reply(bare(id, op, ResponseCode::NotImp));
    }
    // Counts are checked before the body is read: no allocation follows a forged count.
    let c = header.counts;
    if c.queries != 1 || c.answers != 0 || c.authorities != 0 || c.additionals > MAX_ADDITIONAL {
        return Outcome::Reply(bare(id, op, ResponseCode::FormErr));
    }
    let Ok(msg) = Message::from_vec(packet) else {
        return Outcome::Reply(bare(id, op, ResponseCode::FormErr));
    };
    let Some(query) = msg.queries.first().cloned() else {
        return Outcome::Reply(bare(id, op, ResponseCode::FormErr));
    };
    let req = Request {
        metadata: msg.metadata,
        query,
        edns: msg.edns.as_ref().map(Edns::max_payload),
        transport,
    };
    if msg.edns.as_ref().is_some_and(|e| e.version() > 0) {
        return Outcome::Reply(req.encode(req.reply(ResponseCode::BADVERS)));
    }
    match answer(table, &req) {
        Answer::Message(m) => Outcome::Reply(req.encode(m)),
        Answer::Unknown if upstream => Outcome::Forward(Forward {
            query: upstream_query(&req, upstream_id),
            id: upstream_id,
            request: req,
        }),
        Answer::Unknown => Outcome::Reply(req.encode(nxdomain(table, &req))),
    }
}

enum Answer {
    Message(Message),
    /// A name in the domain the table does not have.
    Unknown,
}

fn answer(table: &Table, req: &Request) -> Answer {
    let q = &req.query;
    let refused = || Answer::Message(req.reply(ResponseCode::Refused));
    if q.query_class() != DNSClass::IN {
        return refused();
    }
    if matches!(q.query_type(), RecordType::AXFR | RecordType::IXFR) {
        return refused();
    }
    let zone = table.zone();
    let name = LowerName::new(q.name());
    if LowerName::new(&zone.domain).zone_of(&name) {
        return in_domain(table, req, &name);
    }
    match reverse_address(q.name()) {
        Some(addr) if table.is_routed(addr) => {
            let mut m = req.reply(ResponseCode::NoError);
            m.metadata.authoritative = true;
            match table.name_of(addr) {
                Some(target) => {
                    if matches!(q.query_type(), RecordType::PTR | RecordType::ANY) {
                        m.add_answer(record(q.name(), RData::PTR(PTR(target.clone()))));
                    } else {
                        m.add_authority(soa(table, reverse_zone(table, addr)));
                    }
                }
                None => {
                    m.metadata.response_code = ResponseCode::NXDomain;
                    m.add_authority(soa(table, reverse_zone(table, addr)));
                }
            }
            Answer::Message(m)
        }
        _ => refused(),
    }
}

fn in_domain(table: &Table, req: &Request, name: &LowerName) -> Answer {
    let zone = table.zone();
    let q = &req.query;
    let mut m = req.reply(ResponseCode::NoError);
    m.metadata.authoritative = true;
    let qtype = q.query_type();
    let want = |t: RecordType| qtype == t || qtype == RecordType::ANY;
    if *name == LowerName::new(&zone.domain) {
        if want(RecordType::SOA) {
            m.add_answer(soa(table, q.name().clone()));
        }
        if want(RecordType::NS) {
            m.add_answer(record(q.name(), RData::NS(NS(zone.ns.clone()))));
            if let Some(a) = zone.ns_address {
                m.add_additional(record(&zone.ns, RData::A(A(a))));
            }
        }
    } else if let Some(addrs) = table.lookup(q.name()) {
        if want(RecordType::A) {
            for a in addrs {
                m.add_answer(record(q.name(), RData::A(A(*a))));
            }
        }
    } else if !table.parents.contains(name) {
        return Answer::Unknown;
    }
    if m.answers.is_empty() {
        m.add_authority(soa(table, zone.domain.clone()));
    }
    Answer::Message(m)
}

fn nxdomain(table: &Table, req: &Request) -> Message {
    let mut m = req.reply(ResponseCode::NXDomain);
    m.metadata.authoritative = true;
    m.add_authority(soa(table, table.zone().domain.clone()));
    m
}

fn record(name: &Name, data: RData) -> Record {
    Record::from_rdata(name.clone(), TTL, data)
}

/// The SOA of the domain (or a reverse zone), owned by `owner`. Its minimum is the TTL, so a
/// "no such name" is not cached longer than a name is.
fn soa(table: &Table, owner: Name) -> Record {
    let zone = table.zone();
    record(
        &owner,
        RData::SOA(SOA::new(
            zone.ns.clone(),
            zone.hostmaster.clone(),
            table.serial,
            60,
            10,
            600,
            TTL,
        )),
    )
}

/// `d.c.b.a.in-addr.arpa.` -> a.b.c.d; `None` for anything else (shorter names included).
fn reverse_address(name: &Name) -> Option<Ipv4Addr> {
    match name.parse_arpa_name().ok()? {
        ipnet::IpNet::V4(n) if n.prefix_len() == 32 => Some(n.addr()),
        _ => None,
    }
}

/// The reverse zone the routed subnet holding `addr` falls in (whole octets, at least one).
fn reverse_zone(table: &Table, addr: Ipv4Addr) -> Name {
    let prefix = table
        .routed
        .iter()
        .filter(|n| n.contains(&addr))
        .map(|n| n.prefix_len())
        .max()
        .unwrap_or(8);
    let octets = usize::from(prefix / 8).clamp(1, 4);
    let labels: Vec<String> = addr.octets()[..octets]
        .iter()
        .rev()
        .map(u8::to_string)
        .collect();
    Name::from_ascii(format!("{}.in-addr.arpa.", labels.join("."))).unwrap_or_else(|_| Name::root())
}

/// The query as the upstream gets it: same question, recursion desired, our EDNS size.
fn upstream_query(req: &Request, id: u16) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(req.query.clone());
    m.set_edns(our_edns());
    m.to_vec().unwrap_or_default()
}

/// The client's reply from the upstream's (`None`: no answer in time). Only records named
/// inside the domain pass, with TTLs no longer than the responder's; anything but a matching
/// NOERROR or NXDOMAIN answer becomes SERVFAIL.
pub fn forwarded(table: &Table, f: &Forward, upstream: Option<&[u8]>) -> Vec<u8> {
    let req = &f.request;
    let fail = || req.encode(req.reply(ResponseCode::ServFail));
    let Some(bytes) = upstream else {
        return fail();
    };
    let Ok(up) = Message::from_vec(bytes) else {
        return fail();
    };
    let same_question = up.queries.len() == 1
        && up.queries[0].query_type() == req.query.query_type()
        && up.queries[0].query_class() == req.query.query_class()
        && LowerName::new(up.queries[0].name()) == LowerName::new(req.query.name());
    if up.metadata.message_type != MessageType::Response || up.metadata.id != f.id || !same_question
    {
        return fail();
    }
    let code = up.metadata.response_code;
    if code != ResponseCode::NoError && code != ResponseCode::NXDomain {
        return fail();
    }
    let domain = LowerName::new(&table.zone().domain);
    let ours =
        |r: &Record| r.record_type() != RecordType::OPT && domain.zone_of(&LowerName::new(&r.name));
    let keep = |rs: &[Record]| -> Vec<Record> {
        rs.iter()
            .filter(|r| ours(r))
            .map(|r| {
                let mut r = r.clone();
                r.ttl = r.ttl.min(TTL);
                r
            })
            .collect()
    };
    let mut m = req.reply(code);
    m.metadata.truncation = up.metadata.truncation;
    m.insert_answers(keep(&up.answers));
    m.insert_authorities(keep(&up.authorities));
    m.insert_additionals(keep(&up.additionals));
    req.encode(m)
}

#[cfg(test)]
mod tests {
    use super::super::names::{
        Attachment, Container, LABEL_NAMES, LABEL_PROJECT, LABEL_SERVICE, Zone,
    };
    use super::*;

    fn table() -> Table {
        let c = |name: &str, ip: [u8; 4], labels: &[(&str, &str)]| {
            Container::new(
                name,
                labels,
                vec![Attachment::new("bridge", ip.into(), &[])],
            )
        };
        let mut containers = vec![
            c("redis", [172, 17, 0, 2], &[]),
            c(
                "web-1",
                [172, 17, 0, 3],
                &[(LABEL_SERVICE, "web"), (LABEL_PROJECT, "shop")],
            ),
            c(
                "web-2",
                [172, 17, 0, 4],
                &[(LABEL_SERVICE, "web"), (LABEL_PROJECT, "shop")],
            ),
        ];
        // a service whose answer does not fit 512 bytes
        for i in 0..40u8 {
            containers.push(c(
                &format!("big-{i}"),
                [172, 17, 1, i],
                &[(LABEL_NAMES, "many")],
            ));
        }
        let zone = Zone::new("docker", Some(Ipv4Addr::new(127, 0, 0, 153))).unwrap();
        let mut t = Table::build(&zone, &containers, &["172.17.0.0/16".parse().unwrap()]).table;
        t.serial = 7;
        t
    }

    fn query(name: &str, qtype: RecordType) -> Message {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m
    }

    fn ask(m: &Message, transport: Transport) -> Message {
        match handle(&table(), &m.to_vec().unwrap(), transport, false, 0) {
            Outcome::Reply(r) => Message::from_vec(&r).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    fn udp(name: &str, qtype: RecordType) -> Message {
        let r = ask(&query(name, qtype), Transport::Udp);
        assert_eq!(r.metadata.id, 0x1234);
        assert_eq!(r.metadata.message_type, MessageType::Response);
        assert!(
            !r.metadata.recursion_available,
            "never a recursive resolver"
        );
        r
    }

    fn answers(m: &Message) -> Vec<String> {
        m.answers.iter().map(|r| r.data.to_string()).collect()
    }

    #[test]
    fn a_records_for_names_any_case() {
        let r = udp("Redis.Docker.", RecordType::A);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.metadata.authoritative);
        assert_eq!(answers(&r), ["172.17.0.2"]);
        assert_eq!(
            r.answers[0].name.to_ascii(),
            "Redis.Docker.",
            "the asker's case"
        );
        assert_eq!(r.answers[0].ttl, TTL);
        assert_eq!(
            answers(&udp("web.shop.docker.", RecordType::A)),
            ["172.17.0.3", "172.17.0.4"]
        );
    }

    #[test]
    fn nodata_for_other_types_and_parents() {
        for (name, qtype) in [
            ("redis.docker.", RecordType::AAAA),
            ("redis.docker.", RecordType::MX),
            ("shop.docker.", RecordType::A),
            ("docker.", RecordType::A),
        ] {
            let r = udp(name, qtype);
            assert_eq!(
                r.metadata.response_code,
                ResponseCode::NoError,
                "{name} {qtype}"
            );
            assert!(r.answers.is_empty());
            assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
        }
    }

    #[test]
    fn soa_and_ns_of_the_domain() {
        let r = udp("docker.", RecordType::SOA);
        let RData::SOA(soa) = &r.answers[0].data else {
            panic!("{r}")
        };
        assert_eq!(soa.mname.to_ascii(), "ns.docker.");
        assert_eq!(soa.serial, 7);
        assert_eq!(
            soa.minimum, TTL,
            "negative answers cached no longer than names"
        );
        let r = udp("docker.", RecordType::NS);
        assert_eq!(answers(&r), ["ns.docker."]);
        assert_eq!(r.additionals[0].data.to_string(), "127.0.0.153");
        assert_eq!(answers(&udp("ns.docker.", RecordType::A)), ["127.0.0.153"]);
    }

    #[test]
    fn nxdomain_in_the_domain_refused_outside() {
        let r = udp("nothing.docker.", RecordType::A);
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
        for name in ["example.com.", "docker.com.", "xdocker.", ".", "localhost."] {
            let r = udp(name, RecordType::A);
            assert_eq!(r.metadata.response_code, ResponseCode::Refused, "{name}");
            assert!(r.answers.is_empty() && r.authorities.is_empty());
        }
        let r = udp("redis.docker.", RecordType::AXFR);
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
        let mut chaos = query("version.bind.", RecordType::TXT);
        chaos.queries[0].set_query_class(DNSClass::CH);
        assert_eq!(
            ask(&chaos, Transport::Udp).metadata.response_code,
            ResponseCode::Refused
        );
    }

    #[test]
    fn ptr_for_routed_addresses_only() {
        let r = udp("2.0.17.172.in-addr.arpa.", RecordType::PTR);
        assert_eq!(answers(&r), ["redis.docker."]);
        let r = udp("99.0.17.172.in-addr.arpa.", RecordType::PTR);
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(r.authorities[0].name.to_ascii(), "17.172.in-addr.arpa.");
        for name in [
            "1.0.0.10.in-addr.arpa.",
            "17.172.in-addr.arpa.",
            "in-addr.arpa.",
        ] {
            let r = udp(name, RecordType::PTR);
            assert_eq!(r.metadata.response_code, ResponseCode::Refused, "{name}");
        }
    }

    #[test]
    fn truncated_over_udp_whole_over_tcp() {
        let r = udp("many.docker.", RecordType::A);
        assert!(r.metadata.truncation);
        assert!(r.answers.is_empty());
        assert_eq!(r.queries.len(), 1);
        let r = ask(&query("many.docker.", RecordType::A), Transport::Tcp);
        assert!(!r.metadata.truncation);
        assert_eq!(r.answers.len(), 40);
        // an EDNS client gets up to its size (capped)
        let mut q = query("many.docker.", RecordType::A);
        let mut e = Edns::new();
        e.set_max_payload(4096);
        q.set_edns(e);
        let bytes = match handle(&table(), &q.to_vec().unwrap(), Transport::Udp, false, 0) {
            Outcome::Reply(b) => b,
            o => panic!("{o:?}"),
        };
        let r = Message::from_vec(&bytes).unwrap();
        assert!(!r.metadata.truncation, "40 records fit 1232 bytes");
        assert!(bytes.len() <= usize::from(MAX_UDP_PAYLOAD));
        assert_eq!(r.edns.unwrap().max_payload(), MAX_UDP_PAYLOAD);
    }

    #[test]
    fn edns_versions_and_malformed_packets() {
        let mut q = query("redis.docker.", RecordType::A);
        let mut e = Edns::new();
        e.set_version(1);
        q.set_edns(e);
        let r = ask(&q, Transport::Udp);
        // 16 on the wire (BADSIG shares the number)
        assert_eq!(u16::from(r.metadata.response_code), 16);
        assert!(r.edns.is_some(), "the high bits of the code travel in OPT");

        let good = query("redis.docker.", RecordType::A).to_vec().unwrap();
        let t = table();
        let code = |p: &[u8]| match handle(&t, p, Transport::Udp, false, 0) {
            Outcome::Reply(r) => {
                let m = Message::from_vec(&r).unwrap();
                assert_eq!(m.metadata.id, u16::from_be_bytes([p[0], p[1]]));
                Some(m.metadata.response_code)
            }
            Outcome::Drop => None,
            o => panic!("{o:?}"),
        };
        assert_eq!(code(&good[..5]), None, "no header: dropped");
        assert_eq!(
            code(&good[..good.len() - 3]),
            Some(ResponseCode::FormErr),
            "cut short"
        );
        let mut two = good.clone();
        two[5] = 2;
        assert_eq!(code(&two), Some(ResponseCode::FormErr), "two questions");
        let mut forged = good.clone();
        forged[4..6].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(
            code(&forged),
            Some(ResponseCode::FormErr),
            "65535 questions"
        );
        let mut response = good.clone();
        response[2] |= 0x80;
        assert_eq!(code(&response), None, "a response is never answered");
        let mut notify = good.clone();
        notify[2] = 4 << 3;
        assert_eq!(code(&notify), Some(ResponseCode::NotImp));
        let mut long = good.clone();
        long.extend(std::iter::repeat_n(0u8, 60_000));
        assert_eq!(
            code(&long),
            Some(ResponseCode::NoError),
            "trailing bytes are ignored"
        );
    }

    #[test]
    fn unknown_names_go_upstream_and_only_domain_records_come_back() {
        let t = table();
        let q = query("legacy.docker.", RecordType::A);
        let Outcome::Forward(f) = handle(&t, &q.to_vec().unwrap(), Transport::Udp, true, 77) else {
            panic!("not forwarded");
        };
        assert_eq!(f.id, 77);
        let sent = Message::from_vec(&f.query).unwrap();
        assert_eq!(sent.metadata.id, 77);
        assert_eq!(sent.queries, q.queries);
        // names outside the domain are never forwarded; known names never leave
        for (name, qtype) in [
            ("example.com.", RecordType::A),
            ("redis.docker.", RecordType::A),
        ] {
            let q = query(name, qtype);
            assert!(matches!(
                handle(&t, &q.to_vec().unwrap(), Transport::Udp, true, 1),
                Outcome::Reply(_)
            ));
        }

        let mut up = Message::response(77, OpCode::Query);
        up.add_query(sent.queries[0].clone());
        up.add_answer(Record::from_rdata(
            Name::from_ascii("legacy.docker.").unwrap(),
            3600,
            RData::A(A(Ipv4Addr::new(172, 17, 0, 50))),
        ));
        up.add_answer(Record::from_rdata(
            Name::from_ascii("evil.example.").unwrap(),
            3600,
            RData::A(A(Ipv4Addr::new(6, 6, 6, 6))),
        ));
        let r = Message::from_vec(&forwarded(&t, &f, Some(&up.to_vec().unwrap()))).unwrap();
        assert_eq!(r.metadata.id, 0x1234);
        assert_eq!(
            answers(&r),
            ["172.17.0.50"],
            "records outside the domain dropped"
        );
        assert_eq!(r.answers[0].ttl, TTL);

        let fail = |bytes: Option<&[u8]>| {
            Message::from_vec(&forwarded(&t, &f, bytes))
                .unwrap()
                .metadata
                .response_code
        };
        assert_eq!(fail(None), ResponseCode::ServFail, "timeout");
        let mut wrong_id = up.clone();
        wrong_id.metadata.id = 78;
        assert_eq!(
            fail(Some(&wrong_id.to_vec().unwrap())),
            ResponseCode::ServFail
        );
        let mut wrong_q = up.clone();
        wrong_q.queries[0].set_name(Name::from_ascii("other.docker.").unwrap());
        assert_eq!(
            fail(Some(&wrong_q.to_vec().unwrap())),
            ResponseCode::ServFail
        );
        assert_eq!(fail(Some(b"garbage")), ResponseCode::ServFail);
    }
}
