//! `watch`'s look at the VM's DNS server, with the resolv-conf backend only (there the server is
//! the host's first nameserver: a silent one stalls every lookup; the other backends send it only
//! the domain's names, and are not probed, so an idle `watch` does not wake up for them).
//!
//! Link and neighbour events come too late for a VM that stopped (the kernel keeps its neighbour
//! entry "reachable" for 15-45 s), so `watch` asks the server one small query every
//! [`Timing::interval`], each waiting [`Timing::timeout`]; a miss is asked again after
//! [`Timing::retry`], and [`Timing::misses`] in a row mean it is down. A server that died right
//! after an answer is thus called down within interval + 2 × timeout + retry (3.6 s), and one
//! that answers again is seen within interval + timeout (2.5 s). The query
//! is non-blocking: its socket joins the loop's poll(2) and its deadline the poll timeout.
//! [`Health`] is the pure schedule (the caller passes the clock); [`Prober`] does the I/O.

use crate::dns::probe::{Pending, ProbeError};
use crate::dns::{self, Backend};
use crate::settings::Settings;
use std::net::SocketAddrV4;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Between two queries to a server in a steady state (answering, or known silent).
    pub interval: Duration,
    /// How long one query waits for its reply.
    pub timeout: Duration,
    /// The pause before asking again after a miss.
    pub retry: Duration,
    /// Misses in a row that make the server down.
    pub misses: u32,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            interval: Duration::from_millis(1500),
            timeout: dns::probe::TIMEOUT,
            retry: Duration::from_millis(100),
            misses: 2,
        }
    }
}

/// Whether the server answers, as the probes found it, and when to ask next.
#[derive(Debug)]
pub struct Health {
    timing: Timing,
    answers: Option<bool>,
    misses: u32,
    next: Instant,
    waiting_until: Option<Instant>,
}

impl Health {
    /// Not known yet: the first query goes out one interval after `now` (the first reconcile
    /// asks the server itself, see [`Health::learned`]).
    pub fn new(timing: Timing, now: Instant) -> Health {
        Health {
            timing,
            answers: None,
            misses: 0,
            next: now + timing.interval,
            waiting_until: None,
        }
    }

    pub fn answers(&self) -> Option<bool> {
        self.answers
    }

    /// When something is due: the reply's deadline while a query waits, else the next query.
    pub fn due(&self) -> Instant {
        self.waiting_until.unwrap_or(self.next)
    }

    pub fn waiting(&self) -> bool {
        self.waiting_until.is_some()
    }

    /// A query went out at `now`.
    pub fn sent(&mut self, now: Instant) {
        self.waiting_until = Some(now + self.timing.timeout);
    }

    /// A reply came. Returns the new state when it changed.
    pub fn answered(&mut self, now: Instant) -> Option<bool> {
        self.waiting_until = None;
        self.misses = 0;
        self.next = now + self.timing.interval;
        self.set(true)
    }

    /// No reply (the deadline passed, or an error such as port unreachable came back). Returns
    /// the new state when it changed.
    pub fn missed(&mut self, now: Instant) -> Option<bool> {
        self.waiting_until = None;
        self.misses = self.misses.saturating_add(1);
        if self.misses < self.timing.misses {
            self.next = now + self.timing.retry;
            return None;
        }
        self.next = now + self.timing.interval;
        self.set(false)
    }

    /// What a reconcile found when it asked the server itself.
    pub fn learned(&mut self, now: Instant, answers: bool) {
        self.waiting_until = None;
        self.misses = if answers { 0 } else { self.timing.misses };
        self.next = now + self.timing.interval;
        self.answers = Some(answers);
    }

    /// Something changed (routes put back, the link re-created): a server known silent is asked
    /// again now rather than at the end of the interval.
    pub fn soon(&mut self, now: Instant) {
        if self.answers == Some(false) && self.waiting_until.is_none() {
            self.next = self.next.min(now);
        }
    }

    fn set(&mut self, answers: bool) -> Option<bool> {
        (self.answers != Some(answers)).then(|| {
            self.answers = Some(answers);
            answers
        })
    }
}

/// The probes of one server, for the settings that name it.
#[derive(Debug)]
pub struct Prober {
    server: SocketAddrV4,
    domain: String,
    health: Health,
    pending: Option<Pending>,
}

impl Prober {
    /// A prober when the settings use the resolv-conf backend, else `None` (nothing to ask, no
    /// wake-ups).
    pub fn for_settings(settings: &Settings, timing: Timing, now: Instant) -> Option<Prober> {
        (dns::choose(settings.dns) == Some(Backend::ResolvConf)).then(|| Prober {
            server: settings.nameserver,
            domain: settings.domain.clone(),
            health: Health::new(timing, now),
            pending: None,
        })
    }

    /// Whether `settings` still name this server (else a new prober replaces this one).
    pub fn fits(&self, settings: &Settings) -> bool {
        dns::choose(settings.dns) == Some(Backend::ResolvConf)
            && settings.nameserver == self.server
            && settings.domain == self.domain
    }

    pub fn server(&self) -> SocketAddrV4 {
        self.server
    }

    pub fn health(&mut self) -> &mut Health {
        &mut self.health
    }

    pub fn answers(&self) -> Option<bool> {
        self.health.answers()
    }

    pub fn due(&self) -> Instant {
        self.health.due()
    }

    /// The socket of the query waiting for its reply, for poll(2).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.pending.as_ref().map(|p| p.socket().as_fd())
    }

    /// Read a reply that arrived (`readable`), give up on one past its deadline, send the next
    /// query when it is due. Returns the server's new state when it changed.
    pub fn step(&mut self, now: Instant, readable: bool) -> Option<bool> {
        let mut changed = None;
        if let Some(p) = &self.pending {
            let result = match p.read() {
                Some(r) => Some(r),
                None if now >= self.health.due() => Some(Err(ProbeError::Timeout(
                    now.saturating_duration_since(p.sent),
                ))),
                None => {
                    if readable {
                        tracing::trace!("DNS probe: a datagram that is not the reply");
                    }
                    None
                }
            };
            if let Some(r) = result {
                self.pending = None;
                changed = self.record(now, r);
            }
        }
        if self.pending.is_none() && now >= self.health.due() {
            match Pending::send(self.server, &self.domain) {
                Ok(p) => {
                    self.health.sent(now);
                    self.pending = Some(p);
                }
                Err(e) => changed = self.record(now, Err(e)).or(changed),
            }
        }
        changed
    }

    fn record(&mut self, now: Instant, r: Result<dns::probe::Answer, ProbeError>) -> Option<bool> {
        match r {
            Ok(a) => {
                tracing::trace!("DNS probe: {} {a}", self.server);
                self.health.answered(now)
            }
            Err(e) => {
                tracing::debug!("DNS probe: {}: {e}", self.server);
                self.health.missed(now)
            }
        }
    }

    /// What a reconcile found when it asked the server itself (any query of ours in flight is
    /// dropped: the reconcile's answer is newer).
    pub fn learned(&mut self, now: Instant, answers: bool) {
        self.pending = None;
        self.health.learned(now, answers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn an_answering_server_is_asked_once_per_interval() {
        let t0 = Instant::now();
        let mut h = Health::new(Timing::default(), t0);
        h.learned(t0, true);
        let mut now = t0;
        for _ in 0..5 {
            assert_eq!(h.due(), now + ms(1500));
            now = h.due();
            h.sent(now);
            assert_eq!(h.due(), now + ms(1000), "waits for the reply");
            now += ms(1);
            assert_eq!(h.answered(now), None, "no change");
        }
    }

    #[test]
    fn a_server_that_dies_is_down_within_5_s_and_up_at_its_first_answer() {
        let t0 = Instant::now();
        let mut h = Health::new(Timing::default(), t0);
        h.learned(t0, true);
        // it dies right after that answer: the next query, its retry, both time out
        let q1 = h.due();
        h.sent(q1);
        assert_eq!(h.missed(h.due()), None, "one miss is not down");
        let q2 = h.due();
        assert_eq!(q2, q1 + ms(1100));
        h.sent(q2);
        let down_at = h.due();
        assert_eq!(h.missed(down_at), Some(false));
        assert!(
            down_at - t0 <= Duration::from_millis(3600),
            "{:?}",
            down_at - t0
        );
        // down: asked once per interval, never in a tight loop
        assert_eq!(h.due(), down_at + ms(1500));
        h.sent(h.due());
        assert_eq!(h.missed(h.due()), None, "still down, no change");
        assert_eq!(h.due(), down_at + ms(4000));
        let back = h.due();
        h.sent(back);
        assert_eq!(h.answered(back + ms(1)), Some(true));
    }

    #[test]
    fn immediate_errors_are_retried_once_then_wait_an_interval() {
        // port unreachable comes back at once: two sends 100 ms apart, then an interval
        let t0 = Instant::now();
        let mut h = Health::new(Timing::default(), t0);
        h.learned(t0, true);
        let now = h.due();
        assert_eq!(h.missed(now), None);
        assert_eq!(h.due(), now + ms(100));
        assert_eq!(h.missed(now + ms(100)), Some(false));
        assert_eq!(h.due(), now + ms(1600));
    }

    #[test]
    fn a_change_asks_a_silent_server_again_at_once() {
        let t0 = Instant::now();
        let mut h = Health::new(Timing::default(), t0);
        h.soon(t0 + ms(5));
        assert_eq!(h.due(), t0 + ms(1500), "unknown: nothing to hurry");
        h.learned(t0, false);
        h.soon(t0 + ms(5));
        assert_eq!(h.due(), t0 + ms(5));
        h.sent(t0 + ms(5));
        h.soon(t0 + ms(6));
        assert_eq!(h.due(), t0 + ms(1005), "a query in flight is waited for");
        // answering: nothing to hurry either
        let mut h = Health::new(Timing::default(), t0);
        h.learned(t0, true);
        h.soon(t0 + ms(5));
        assert_eq!(h.due(), t0 + ms(1500));
    }
}
