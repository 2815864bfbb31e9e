//! A relay in front of the lab's real dockerd that answers as a newer engine would: every
//! request goes to the lab's engine, and only what names the engine comes back changed (each
//! answer's `Server` header, `/version` and `/info`: the version, and `FirewallBackend`). The
//! lab's engine is Debian's 20.10; with the relay, dockroute meets what Docker 28 or 29 (on
//! nftables) says about itself, while every
//! container, network and helper run is real. Each request is relayed on a connection of its
//! own (`Connection: close`; request bodies are read by their `Content-Length`, as dockroute
//! sends them), and each answer is sent back with a `Content-Length`; the event
//! stream (`/events`) is passed through as it comes, and ends the client's connection when it
//! ends. The relay keeps the paths it was asked for.

use super::docker_lab::DockerLab;
use super::served::{Served, api_path, read_head};
use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Mutex;

/// What the relayed engine says it is.
#[derive(Clone)]
pub struct Claims {
    /// The version to claim (none: the engine's own).
    pub version: Option<String>,
    /// `FirewallBackend.Driver` in `/info` (`nftables`, `iptables`), or none (before 28.2).
    pub firewall_backend: Option<String>,
}

impl Claims {
    /// Docker 29 with `"firewall-backend": "nftables"`.
    pub fn docker29_nftables() -> Claims {
        Claims {
            version: Some("29.1.2".into()),
            firewall_backend: Some("nftables".into()),
        }
    }

    /// Docker 28 on iptables (its raw-table drops are Docker 28's).
    pub fn docker28_iptables() -> Claims {
        Claims {
            version: Some("28.3.3".into()),
            firewall_backend: Some("iptables".into()),
        }
    }

    /// The engine as it is (the relay only counts).
    pub fn unchanged() -> Claims {
        Claims {
            version: None,
            firewall_backend: None,
        }
    }
}

pub struct Relay(Served);

impl Relay {
    /// A relay to `lab`'s engine, listening on a socket in the lab's directory.
    pub fn start(lab: &DockerLab, claims: Claims) -> Relay {
        let upstream = lab.dir().join("docker.sock");
        Relay(Served::start(
            lab.dir().join("relay.sock"),
            move |conn, asked| serve(conn, &upstream, &claims, asked),
        ))
    }

    /// How many times `path` (`/events`, `/networks`) was asked for so far.
    pub fn times_asked(&self, path: &str) -> usize {
        self.0.times_asked(path, false)
    }

    pub fn url(&self) -> String {
        self.0.url()
    }
}

/// Relay the requests of one client connection, one after the other.
fn serve(conn: UnixStream, upstream: &Path, claims: &Claims, asked: &Mutex<Vec<String>>) {
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut conn = conn;
    loop {
        let Some(lines) = read_head(&mut reader) else {
            return;
        };
        let first = lines[0].clone();
        let mut head = first.clone().into_bytes();
        let mut length = 0usize;
        for line in &lines[1..] {
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if !lower.starts_with("connection:") {
                head.extend_from_slice(line.as_bytes());
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        head.extend_from_slice(b"Connection: close\r\n\r\n");
        head.extend_from_slice(&body);
        let path = api_path(&first, asked);
        if path == "/events" {
            stream(upstream, &head, &mut conn);
            return;
        }
        let Some(answer) = ask(upstream, &head) else {
            return;
        };
        let mut answer = answer;
        if let Some(version) = &claims.version {
            // every answer names the engine (`Server: Docker/20.10.24+dfsg1 (linux)`)
            for h in answer.head.iter_mut() {
                if h.to_ascii_lowercase().starts_with("server:") {
                    *h = format!("Server: Docker/{version} (linux)");
                }
            }
        }
        let answer = match path.as_str() {
            "/version" => claim(answer, |v| {
                if let Some(version) = &claims.version {
                    v["Version"] = version.clone().into();
                }
            }),
            "/info" => claim(answer, |v| {
                if let Some(version) = &claims.version {
                    v["ServerVersion"] = version.clone().into();
                }
                if let Some(f) = &claims.firewall_backend {
                    v["FirewallBackend"] = serde_json::json!({ "Driver": f });
                }
            }),
            _ => answer,
        };
        if conn.write_all(&answer.framed()).is_err() {
            return;
        }
    }
}

/// Pass the engine's answer to `request` through to `client` as it comes, until it ends.
fn stream(upstream: &Path, request: &[u8], client: &mut UnixStream) {
    let Ok(mut up) = UnixStream::connect(upstream) else {
        return;
    };
    if up.write_all(request).is_ok() {
        let _ = std::io::copy(&mut up, client);
    }
    let _ = client.shutdown(std::net::Shutdown::Both);
}

/// One answer of the engine: its status line and headers (without framing), and its body.
struct Answer {
    head: Vec<String>,
    body: Vec<u8>,
}

impl Answer {
    /// The answer with a `Content-Length` of its own, for a connection that stays open (none
    /// for 204 and 304, which have no body).
    fn framed(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for h in &self.head {
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        let status = self.head.first().and_then(|l| l.split_whitespace().nth(1));
        if !matches!(status, Some("204" | "304")) {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// Send one request to the engine and read its whole answer (it closes the connection).
fn ask(upstream: &Path, request: &[u8]) -> Option<Answer> {
    let mut up = UnixStream::connect(upstream).ok()?;
    up.write_all(request).ok()?;
    let mut raw = Vec::new();
    up.read_to_end(&mut raw).ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head_text = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut chunked = false;
    let mut head = Vec::new();
    for line in head_text.split("\r\n") {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("transfer-encoding:") {
            chunked = lower.contains("chunked");
        } else if !lower.starts_with("content-length:") && !lower.starts_with("connection:") {
            head.push(line.to_string());
        }
    }
    let rest = &raw[split + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Some(Answer { head, body })
}

/// The body of a chunked transfer.
fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&rest[..end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

/// The answer with its JSON body changed by `f` (an answer that is not JSON stays as it was).
fn claim(mut answer: Answer, f: impl Fn(&mut serde_json::Value)) -> Answer {
    if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&answer.body) {
        f(&mut v);
        answer.body = serde_json::to_vec(&v).unwrap_or(answer.body);
    }
    answer
}
