//! The DNS responder (dns::responder) against a real client: each test runs on a thread of its
//! own inside a private network namespace (lo up, nothing else), starts the responder on a
//! loopback port there and asks it with `dig` (a child of that thread, so in the namespace too).
#![cfg(target_os = "linux")]

mod common;
use common::privileged;
use dockroute::dns::responder::names::{
    Attachment, Container, LABEL_NAMES, LABEL_PROJECT, LABEL_SERVICE,
};
use dockroute::dns::responder::{Config, MAX_TCP_CONNECTIONS, Responder};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Run `f` on a new thread in a new network namespace whose lo is up; the namespace goes away
/// with the thread, also when `f` panics.
fn in_private_net<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        let up = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("running ip");
        assert!(up.success(), "ip link set lo up");
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn container(name: &str, ip: [u8; 4], labels: &[(&str, &str)], aliases: &[&str]) -> Container {
    let mut c = Container::new(
        name,
        labels,
        vec![Attachment::new("bridge", ip.into(), aliases)],
    );
    // as the engine reports them
    c.id = format!("{name}-0123456789ab");
    c.name = format!("/{name}");
    c
}

fn containers() -> Vec<Container> {
    let compose = [(LABEL_SERVICE, "web"), (LABEL_PROJECT, "shop")];
    let mut all = vec![
        container("redis", [172, 17, 0, 2], &[(LABEL_NAMES, "cache")], &["db"]),
        container("shop-web-1", [172, 17, 0, 3], &compose, &[]),
        container("shop-web-2", [172, 17, 0, 4], &compose, &[]),
    ];
    // one container on a routed and on an unrouted network
    let mut both = container("both", [172, 17, 0, 5], &[], &[]);
    both.networks
        .push(Attachment::new("private", Ipv4Addr::new(10, 9, 0, 5), &[]));
    all.push(both);
    // a name with more A records than a 512-byte answer holds
    for i in 0..40u8 {
        all.push(container(
            &format!("big-{i}"),
            [172, 17, 1, i],
            &[(LABEL_NAMES, "many")],
            &[],
        ));
    }
    all
}

fn routed() -> Vec<ipnet::Ipv4Net> {
    vec!["172.17.0.0/16".parse().unwrap()]
}

fn start(upstream: Option<SocketAddr>) -> Responder {
    let mut config = Config::new("docker", "127.0.0.53:0".parse().unwrap());
    config.upstream = upstream;
    let r = Responder::start(config).expect("responder starts");
    assert!(r.update(&containers(), &routed()).is_empty());
    r
}

/// `dig @SERVER -p PORT ARGS`, one try; stdout.
fn dig(server: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+time=2", "+tries=1"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running dig (Debian: bind9-dnsutils)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The addresses or names `dig +short` prints, sorted.
fn short(server: SocketAddr, args: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = dig(server, &[&["+short"], args].concat())
        .lines()
        .map(str::to_string)
        .collect();
    a.sort();
    a
}

/// The status dig reports (NOERROR, NXDOMAIN, REFUSED, ...).
fn status(server: SocketAddr, args: &[&str]) -> String {
    let out = dig(server, args);
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no status in: {out}"))
        .to_string()
}

#[test]
fn dig_gets_a_ptr_soa_ns_nxdomain_and_refused() {
    if !privileged() {
        return;
    }
    in_private_net(|| {
        let r = start(None);
        let s = r.local_addr();
        assert_eq!(short(s, &["redis.docker"]), ["172.17.0.2"]);
        assert_eq!(short(s, &["REDIS.Docker", "A"]), ["172.17.0.2"]);
        assert_eq!(
            short(s, &["cache.docker"]),
            ["172.17.0.2"],
            "dockroute.names"
        );
        assert_eq!(short(s, &["db.docker"]), ["172.17.0.2"], "network alias");
        assert_eq!(
            short(s, &["web.shop.docker"]),
            ["172.17.0.3", "172.17.0.4"],
            "service.project, both replicas"
        );
        assert_eq!(
            short(s, &["both.docker"]),
            ["172.17.0.5"],
            "routed address only"
        );
        let a = dig(s, &["redis.docker"]);
        assert!(
            a.contains(" aa ") || a.contains(" aa;"),
            "authoritative: {a}"
        );
        assert!(
            a.contains("redis.docker.\t\t5\tIN\tA\t172.17.0.2"),
            "TTL 5: {a}"
        );

        assert_eq!(short(s, &["-x", "172.17.0.2"]), ["redis.docker."]);
        assert_eq!(status(s, &["-x", "172.17.0.99"]), "NXDOMAIN");
        assert_eq!(
            status(s, &["-x", "10.9.0.5"]),
            "REFUSED",
            "unrouted address"
        );

        let soa = short(s, &["docker", "SOA"]);
        assert_eq!(soa.len(), 1);
        assert!(
            soa[0].starts_with("ns.docker. hostmaster.docker. 1 "),
            "{soa:?}"
        );
        assert_eq!(short(s, &["docker", "NS"]), ["ns.docker."]);
        assert_eq!(short(s, &["ns.docker"]), ["127.0.0.53"]);

        assert_eq!(status(s, &["nothing.docker"]), "NXDOMAIN");
        assert_eq!(status(s, &["redis.docker", "AAAA"]), "NOERROR");
        assert_eq!(status(s, &["example.com"]), "REFUSED");
        assert_eq!(status(s, &["example.com", "+norecurse"]), "REFUSED");
        assert_eq!(status(s, &["."]), "REFUSED");
        assert!(
            dig(s, &["docker", "AXFR"]).contains("Transfer failed"),
            "no zone transfer"
        );
        r.stop();
    });
}

#[test]
fn a_long_answer_is_truncated_over_udp_and_whole_over_tcp() {
    if !privileged() {
        return;
    }
    in_private_net(|| {
        let r = start(None);
        let s = r.local_addr();
        let cut = dig(s, &["+noedns", "+ignore", "many.docker"]);
        assert!(cut.contains(" tc "), "TC bit: {cut}");
        assert!(cut.contains("ANSWER: 0"), "{cut}");
        let retried = dig(s, &["+noedns", "many.docker"]);
        assert!(
            retried.contains("Truncated, retrying in TCP mode"),
            "{retried}"
        );
        assert!(retried.contains("ANSWER: 40"), "{retried}");
        assert_eq!(short(s, &["+tcp", "many.docker"]).len(), 40);
        // an EDNS client gets it over UDP (1232 bytes hold 40 records)
        let edns = dig(s, &["+bufsize=4096", "many.docker"]);
        assert!(
            edns.contains("ANSWER: 40") && !edns.contains(" tc "),
            "{edns}"
        );
        assert!(edns.contains("udp: 1232"), "our EDNS size: {edns}");
        r.stop();
    });
}

#[test]
fn an_updated_table_answers_the_next_query() {
    if !privileged() {
        return;
    }
    in_private_net(|| {
        let r = start(None);
        let s = r.local_addr();
        assert_eq!(status(s, &["late.docker"]), "NXDOMAIN");
        let mut now = containers();
        now.retain(|c| c.name != "/redis");
        now.push(container("late", [172, 17, 0, 9], &[], &[]));
        assert!(r.update(&now, &routed()).is_empty());
        assert_eq!(short(s, &["late.docker"]), ["172.17.0.9"]);
        assert_eq!(short(s, &["+tcp", "late.docker"]), ["172.17.0.9"]);
        assert_eq!(
            status(s, &["redis.docker"]),
            "NXDOMAIN",
            "a removed container is gone"
        );
        assert_eq!(status(s, &["-x", "172.17.0.2"]), "NXDOMAIN");
        let soa = short(s, &["docker", "SOA"]);
        assert!(
            soa[0].starts_with("ns.docker. hostmaster.docker. 2 "),
            "serial: {soa:?}"
        );
        r.stop();
    });
}

#[test]
fn unknown_names_in_the_domain_go_to_the_upstream_and_nothing_else_does() {
    if !privileged() {
        return;
    }
    in_private_net(|| {
        let upstream: SocketAddr = "127.0.0.2:5300".parse().unwrap();
        let mut dnsmasq = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
                "--bind-interfaces",
                "--listen-address=127.0.0.2",
                "--port=5300",
                "--local=/docker/",
                "--host-record=legacy.docker,172.17.0.50",
                "--host-record=redis.docker,172.17.0.77",
                "--address=/example.com/6.6.6.6",
                "--pid-file=",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("running dnsmasq");
        // wait (bounded) for dnsmasq to answer
        let ready = (0..100).any(|_| {
            let ok = short(upstream, &["legacy.docker"]) == ["172.17.0.50"];
            if !ok {
                std::thread::sleep(Duration::from_millis(50));
            }
            ok
        });
        assert!(ready, "dnsmasq did not start");

        let r = start(Some(upstream));
        let s = r.local_addr();
        assert_eq!(short(s, &["legacy.docker"]), ["172.17.0.50"], "forwarded");
        assert_eq!(short(s, &["+tcp", "legacy.docker"]), ["172.17.0.50"]);
        assert_eq!(
            short(s, &["redis.docker"]),
            ["172.17.0.2"],
            "the table wins"
        );
        assert_eq!(
            status(s, &["gone.docker"]),
            "NXDOMAIN",
            "the upstream's NXDOMAIN"
        );
        assert_eq!(status(s, &["example.com"]), "REFUSED", "never forwarded");
        let _ = dnsmasq.kill();
        let _ = dnsmasq.wait();
        assert_eq!(status(s, &["legacy.docker"]), "SERVFAIL", "upstream gone");
        r.stop();
    });
}

#[test]
fn junk_and_floods_leave_it_answering() {
    if !privileged() {
        return;
    }
    in_private_net(|| {
        let r = start(None);
        let s = r.local_addr();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 4096];
        // a cut header: no answer; a header with a cut question: FORMERR with its ID
        udp.send_to(&[1, 2, 3], s).unwrap();
        udp.send_to(&[0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 5, b'r'], s)
            .unwrap();
        let (n, _) = udp
            .recv_from(&mut buf)
            .expect("an answer to the cut question");
        assert_eq!(&buf[..2], &[0xab, 0xcd]);
        assert_eq!(buf[3] & 0x0f, 1, "FORMERR: {:?}", &buf[..n]);
        // a datagram far over the receive size
        udp.send_to(&vec![0x55u8; 60_000], s).unwrap();
        assert_eq!(short(s, &["redis.docker"]), ["172.17.0.2"]);

        // TCP connections past the cap are closed at once; UDP still answers meanwhile
        let mut held: Vec<TcpStream> = (0..MAX_TCP_CONNECTIONS + 8)
            .map(|_| {
                let c = TcpStream::connect(s).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                c
            })
            .collect();
        for mut extra in held.split_off(MAX_TCP_CONNECTIONS) {
            assert!(
                matches!(extra.read(&mut buf), Ok(0) | Err(_)),
                "over the cap: closed"
            );
        }
        assert_eq!(short(s, &["redis.docker"]), ["172.17.0.2"]);
        // an idle connection is closed by the responder
        assert!(
            matches!(held[0].read(&mut buf), Ok(0) | Err(_)),
            "idle: closed"
        );
        drop(held);

        // TCP: a message longer than any query closes the connection
        let mut long = TcpStream::connect(s).unwrap();
        long.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        long.write_all(&[0xff, 0xff]).unwrap();
        let _ = long.write_all(&[0u8; 8192]);
        assert!(matches!(long.read(&mut buf), Ok(0) | Err(_)), "closed");

        // and TCP answers again once the connections are gone (they close as the responder
        // notices; a few tries, bounded)
        let tcp_ok = (0..50).any(|_| {
            let ok = short(s, &["+tcp", "redis.docker"]) == ["172.17.0.2"];
            if !ok {
                std::thread::sleep(Duration::from_millis(100));
            }
            ok
        });
        assert!(tcp_ok, "TCP answers after the flood");
        r.stop();
    });
}

#[test]
fn it_listens_on_loopback_only_and_stops_cleanly() {
    if !privileged() {
        return;
    }
    in_private_net(|| {
        let wide = Responder::start(Config::new("docker", "0.0.0.0:0".parse().unwrap()));
        assert!(wide.is_err(), "refused: not loopback");
        let r = start(None);
        let s = r.local_addr();
        assert!(r.is_running());
        r.stop();
        // the port is free again (UDP and TCP)
        let again = Responder::start(Config::new("docker", s)).expect("same port after stop");
        assert_eq!(again.local_addr(), s);
    });
}
