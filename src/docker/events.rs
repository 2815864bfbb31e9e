//! The engine's event stream (`GET /events`), as `watch` follows it: networks created and
//! destroyed (a reason to list them again), containers started, stopped, renamed, connected
//! (the names), and the daemon's own events. The stream is untrusted input like every answer of
//! the engine: each event is one JSON line of at most [`MAX_EVENT`] bytes (a longer one ends the
//! stream, and `watch` connects again), parsed into the few fields dockroute looks at.

use super::DockerError;
use serde::Deserialize;

/// The most one event may hold (Docker's are a few hundred bytes; a container's labels make
/// them longer).
pub const MAX_EVENT: usize = 64 << 10;

/// What one event means to dockroute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A network was created (or destroyed, with no id to name it): list the networks again.
    Network,
    /// The network with this id (the engine's hex id) was destroyed: its route can go without
    /// asking the engine, which is busy taking the network down.
    NetworkGone(String),
    /// A container started, stopped, or was renamed.
    Container,
    /// A container joined or left a network. The engine says so before its container list
    /// shows it (Docker 20.10 lists the container as it was for a moment): look again shortly.
    Attachment,
    /// The daemon says something about itself (its configuration reloaded).
    Daemon,
    /// Anything else (the filter asks for none of it; an engine may send it all the same).
    Other,
}

/// The actions the stream asks for, all types together (the engine's filter matches an action
/// of any of the types): networks created and destroyed (connect and disconnect are the
/// containers'), containers started, stopped, dying, renamed, destroyed, and the daemon's reload.
const ACTIONS: [&str; 9] = [
    "create",
    "destroy",
    "start",
    "die",
    "stop",
    "rename",
    "connect",
    "disconnect",
    "reload",
];

/// The request path: `/events` filtered to the types and actions above, percent-encoded.
pub fn path() -> String {
    let filters = serde_json::json!({
        "type": ["network", "container", "daemon"],
        "event": ACTIONS,
    });
    format!("/events?filters={}", encode(&filters.to_string()))
}

/// Percent-encode everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The fields of an event dockroute reads; everything else is ignored.
#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "Type")]
    kind: Option<String>,
    #[serde(rename = "Action")]
    action: Option<String>,
    #[serde(rename = "Actor")]
    actor: Option<Actor>,
}

#[derive(Deserialize)]
struct Actor {
    #[serde(rename = "ID")]
    id: Option<serde_json::Value>,
}

/// A network id as the engine gives them: 1 to 64 hex digits (anything else names nothing).
fn network_id(actor: Option<Actor>) -> Option<String> {
    let id = actor?.id?;
    let id = id.as_str()?;
    (!id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| id.to_ascii_lowercase())
}

/// One line of the stream, classified. A line that is not a JSON object with string `Type` and
/// `Action` (or without them) is an error: the engine is not speaking the protocol.
pub fn parse(line: &[u8]) -> Result<Event, String> {
    let raw: Raw = serde_json::from_slice(line)
        .map_err(|e| format!("an event that is not valid JSON ({e})"))?;
    let (Some(kind), Some(action)) = (raw.kind, raw.action) else {
        return Err("an event without a Type or Action".into());
    };
    Ok(match (kind.as_str(), action.as_str()) {
        ("network", "destroy") => match network_id(raw.actor) {
            Some(id) => Event::NetworkGone(id),
            None => Event::Network,
        },
        ("network", "create") => Event::Network,
        ("container", "start" | "die" | "stop" | "rename" | "destroy" | "create") => {
            Event::Container
        }
        ("network", "connect" | "disconnect") => Event::Attachment,
        ("daemon", _) => Event::Daemon,
        _ => Event::Other,
    })
}

/// The stream's bytes cut into lines, each at most [`MAX_EVENT`] bytes.
#[derive(Debug, Default)]
pub struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    /// Add `bytes`; the complete lines they end (empty lines skipped), or an error when a line
    /// grows beyond [`MAX_EVENT`] (nothing more should be read).
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        let mut out = Vec::new();
        while let Some(nl) = bytes.iter().position(|b| *b == b'\n') {
            if self.partial.len() + nl > MAX_EVENT {
                return Err(too_long());
            }
            self.partial.extend_from_slice(&bytes[..nl]);
            let line = std::mem::take(&mut self.partial);
            if !line.iter().all(u8::is_ascii_whitespace) {
                out.push(line);
            }
            bytes = &bytes[nl + 1..];
        }
        if self.partial.len() + bytes.len() > MAX_EVENT {
            return Err(too_long());
        }
        self.partial.extend_from_slice(bytes);
        Ok(out)
    }
}

fn too_long() -> String {
    format!("an event longer than {} KiB (refused)", MAX_EVENT >> 10)
}

/// An open event stream: the response body, read a frame at a time.
pub struct Events {
    body: hyper::body::Incoming,
    lines: Lines,
    ready: std::collections::VecDeque<Event>,
}

impl Events {
    pub(super) fn new(body: hyper::body::Incoming) -> Events {
        Events {
            body,
            lines: Lines::default(),
            ready: Default::default(),
        }
    }

    /// The next event; `Ok(None)` when the engine ended the stream.
    pub async fn next(&mut self) -> Result<Option<Event>, DockerError> {
        use hyper::body::Body;
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Ok(Some(e));
            }
            let frame =
                std::future::poll_fn(|cx| std::pin::Pin::new(&mut self.body).poll_frame(cx)).await;
            let Some(frame) = frame else { return Ok(None) };
            let frame = frame.map_err(|e| DockerError::Engine(format!("the event stream: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            for line in self.lines.push(&data).map_err(DockerError::Refused)? {
                self.ready
                    .push_back(parse(&line).map_err(DockerError::Refused)?);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_what_watch_acts_on() {
        let e = |t: &str, a: &str| {
            parse(format!(r#"{{"Type":"{t}","Action":"{a}","Actor":{{"ID":"x","Attributes":{{"name":"n"}}}},"time":1}}"#).as_bytes())
        };
        assert_eq!(e("network", "create"), Ok(Event::Network));
        // the helper's Actor.ID is "x": no network id, so the networks are listed again
        assert_eq!(e("network", "destroy"), Ok(Event::Network));
        let gone = |id: &str| {
            parse(
                format!(r#"{{"Type":"network","Action":"destroy","Actor":{{"ID":"{id}"}}}}"#)
                    .as_bytes(),
            )
        };
        let id = "a".repeat(64);
        assert_eq!(gone(&id), Ok(Event::NetworkGone(id.clone())));
        assert_eq!(gone(&"A".repeat(64)), Ok(Event::NetworkGone(id)));
        assert_eq!(gone(&"a".repeat(65)), Ok(Event::Network));
        assert_eq!(gone("../../etc"), Ok(Event::Network));
        assert_eq!(
            parse(br#"{"Type":"network","Action":"destroy","Actor":{"ID":7}}"#),
            Ok(Event::Network)
        );
        assert_eq!(e("network", "connect"), Ok(Event::Attachment));
        assert_eq!(e("network", "disconnect"), Ok(Event::Attachment));
        assert_eq!(e("container", "rename"), Ok(Event::Container));
        assert_eq!(e("daemon", "reload"), Ok(Event::Daemon));
        assert_eq!(e("image", "pull"), Ok(Event::Other));
        assert!(parse(b"{\"Type\":\"network\"}").is_err());
        assert!(parse(b"{\"Type\":1,\"Action\":\"create\"}").is_err());
        assert!(parse(b"[1,2").is_err());
        assert!(parse(b"\x1b]0;x\x07").is_err());
    }

    #[test]
    fn lines_are_cut_and_capped() {
        let mut l = Lines::default();
        assert_eq!(l.push(b"{\"a\"").unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(
            l.push(b":1}\n\n{\"b\":2}\n{").unwrap(),
            vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]
        );
        // a line that never ends is refused once it passes the cap, whatever the chunks
        let mut l = Lines::default();
        let chunk = vec![b'x'; 4096];
        let mut refused = false;
        for _ in 0..(MAX_EVENT / 4096 + 2) {
            if l.push(&chunk).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused);
        assert!(l.partial.len() <= MAX_EVENT);
        let mut l = Lines::default();
        let mut long = vec![b'x'; MAX_EVENT + 1];
        long.push(b'\n');
        assert!(l.push(&long).is_err());
    }

    #[test]
    fn the_filter_is_percent_encoded_json() {
        let p = path();
        assert!(p.starts_with("/events?filters=%7B%22"), "{p}");
        assert!(
            p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/?=%-._~".contains(&b))
        );
        assert!(p.contains("network") && p.contains("destroy") && p.contains("daemon"));
    }
}
