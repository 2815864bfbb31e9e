//! The engine asked ahead: `watch`'s event thread asks for the networks and containers the
//! moment the engine says a network was created (or the stream opened), on the connection
//! pool and runtime it already has, while the loop wakes up and discovers the host. The
//! reconcile the event causes then waits for that answer ([`super::Asking::resume`]) instead
//! of starting a thread and runtime and asking anew. An answer is taken once, only by a
//! reconcile for the same engine and only while it is fresh ([`FRESH`]); otherwise the
//! reconcile asks itself, as `up` does.

use super::client::Client;
use super::endpoint::Endpoint;
use super::{DockerError, Fetched, TIMEOUT};
use std::fmt;
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How old an answer asked ahead may be when a reconcile takes it (a reconcile held back by
/// the pacer's back-off asks again).
pub const FRESH: Duration = Duration::from_secs(2);

/// The engine's answer, as [`super::fetch`] gives it.
type Answer = Result<Fetched, DockerError>;

/// The answer to come, as the event thread hands it to the loop (through `watch`'s causes).
#[derive(Clone)]
pub struct Ahead {
    endpoint: Endpoint,
    asked: Instant,
    answer: Arc<Mutex<Option<Receiver<Answer>>>>,
}

impl Ahead {
    /// Ask `client`'s engine (`endpoint`) on the current tokio runtime, within [`TIMEOUT`],
    /// holding `permit` (the caller's bound on asks at once) until the answer came.
    pub fn ask(
        client: Arc<Client>,
        endpoint: &Endpoint,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Ahead {
        let (tx, rx) = sync_channel(1);
        tokio::spawn(async move {
            let _permit = permit;
            let answer = tokio::time::timeout(TIMEOUT, super::fetch(&*client))
                .await
                .unwrap_or(Err(DockerError::Timeout(TIMEOUT)));
            // the reconcile may have gone by without it
            let _ = tx.send(answer);
        });
        Ahead::from_receiver(endpoint, rx)
    }

    fn from_receiver(endpoint: &Endpoint, rx: Receiver<Answer>) -> Ahead {
        Ahead {
            endpoint: endpoint.clone(),
            asked: Instant::now(),
            answer: Arc::new(Mutex::new(Some(rx))),
        }
    }

    /// The answer to wait for, when it was asked of `endpoint`, is fresh, and was not taken.
    pub(super) fn take(&self, endpoint: &Endpoint) -> Option<Waiting> {
        if *endpoint != self.endpoint || self.asked.elapsed() > FRESH {
            return None;
        }
        let rx = self
            .answer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        Some(Waiting(rx))
    }
}

/// An ask whose answer the caller sends (tests of the hand-over).
#[cfg(test)]
pub(crate) fn answered(
    endpoint: &Endpoint,
) -> (
    Ahead,
    std::sync::mpsc::SyncSender<Result<Fetched, DockerError>>,
) {
    let (tx, rx) = sync_channel(1);
    (Ahead::from_receiver(endpoint, rx), tx)
}

/// An answer asked ahead, taken by one reconcile.
pub struct Waiting(Receiver<Answer>);

impl Waiting {
    /// The answer; `None` when the event thread ended before it came (then ask anew).
    pub(super) fn wait(self) -> Option<Answer> {
        // the thread bounds its own conversation by TIMEOUT; a little more for the hand-over
        match self.0.recv_timeout(TIMEOUT + Duration::from_secs(1)) {
            Ok(answer) => Some(answer),
            Err(RecvTimeoutError::Timeout) => Some(Err(DockerError::Timeout(TIMEOUT))),
            Err(RecvTimeoutError::Disconnected) => None,
        }
    }
}

impl fmt::Debug for Ahead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Ahead({}, {:?} ago)",
            self.endpoint,
            self.asked.elapsed()
        )
    }
}

/// One ask is equal only to itself.
impl PartialEq for Ahead {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.answer, &other.answer)
    }
}

impl Eq for Ahead {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::EngineVersion;

    fn unix(p: &str) -> Endpoint {
        Endpoint::Unix { path: p.into() }
    }

    fn answered() -> (
        Ahead,
        std::sync::mpsc::SyncSender<Result<Fetched, DockerError>>,
    ) {
        super::answered(&unix("/run/docker.sock"))
    }

    #[test]
    fn an_answer_is_taken_once_and_only_for_its_engine() {
        let (a, tx) = answered();
        assert!(a.take(&unix("/other.sock")).is_none());
        let copy = a.clone();
        let w = a
            .take(&unix("/run/docker.sock"))
            .expect("the first reconcile takes it");
        assert!(copy.take(&unix("/run/docker.sock")).is_none(), "taken once");
        tx.send(Ok(Fetched {
            version: EngineVersion::default(),
            listed: Vec::new(),
            containers: Ok(Vec::new()),
        }))
        .unwrap();
        assert!(matches!(w.wait(), Some(Ok(_))));
    }

    #[test]
    fn a_thread_that_ended_leaves_the_reconcile_to_ask() {
        let (a, tx) = answered();
        let w = a.take(&unix("/run/docker.sock")).unwrap();
        drop(tx);
        assert!(w.wait().is_none());
    }

    #[test]
    fn a_stale_answer_is_not_taken() {
        let (mut a, _tx) = answered();
        a.asked = Instant::now() - FRESH - Duration::from_millis(1);
        assert!(a.take(&unix("/run/docker.sock")).is_none());
    }
}
