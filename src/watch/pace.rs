//! When `watch` reconciles: events are hints, so a burst of them (a VPN connect is dozens of
//! messages) becomes one reconcile once they stop for a moment. The first event after a quiet
//! spell is acted on at once (an isolated change, such as a route deleted, heals in about a
//! millisecond); what follows it within the burst waits for the burst to end. A reconcile that changed something
//! is followed by one more (its own echoes trigger it) that must find nothing; when reconciles keep
//! changing things (something fights dockroute, or a failure rolls back and echoes) they back off;
//! and with no events at all a backstop re-check runs at most once per `backstop`. Pure: the
//! caller passes the clock.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// A burst ends when no event came for this long.
    pub quiet: Duration,
    /// A burst that never pauses is cut after this long.
    pub burst_max: Duration,
    /// The re-check with no event (covers what sends none: iptables-legacy).
    pub backstop: Duration,
    /// The first delay once reconciles keep changing things.
    pub backoff_start: Duration,
    pub backoff_max: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            quiet: Duration::from_millis(10),
            burst_max: Duration::from_millis(250),
            backstop: Duration::from_secs(60),
            backoff_start: Duration::from_millis(250),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// How a reconcile ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to change: the kernel was as wanted.
    Clean,
    /// It changed something (its echoes will trigger one confirming reconcile).
    Changed,
    /// It failed. `touched`: it may have changed and rolled back something (which echoes).
    Failed { touched: bool },
}

/// Reconciles in a row that changed something before backing off. 2: the heal and a second one
/// for a concurrent change are normal; a third means something undoes what dockroute does.
const STREAK_FREE: u32 = 2;

#[derive(Debug)]
pub struct Pacer {
    timing: Timing,
    first: Option<Instant>,
    last: Option<Instant>,
    last_run: Instant,
    streak: u32,
    not_before: Option<Instant>,
    /// The pending events began after a quiet spell: reconcile at once.
    leading: bool,
}

impl Pacer {
    /// `now`: when the first reconcile ran.
    pub fn new(timing: Timing, now: Instant) -> Self {
        Pacer {
            timing,
            first: None,
            last: None,
            last_run: now,
            streak: 0,
            not_before: None,
            leading: false,
        }
    }

    /// An event arrived.
    pub fn event(&mut self, now: Instant) {
        if self.first.is_none() {
            // Echoes of the last reconcile arrive right after it: they wait for the quiet gap.
            self.leading = now.saturating_duration_since(self.last_run) >= self.timing.quiet;
            self.first = Some(now);
        }
        self.last = Some(now);
    }

    /// Whether events are waiting for a reconcile.
    pub fn pending(&self) -> bool {
        self.first.is_some()
    }

    /// When the next reconcile is due: the end of the current burst, or the backstop; never
    /// before the back-off allows.
    pub fn due(&self) -> Instant {
        let at = match (self.first, self.last) {
            (Some(first), Some(_)) if self.leading => first,
            (Some(first), Some(last)) => {
                (last + self.timing.quiet).min(first + self.timing.burst_max)
            }
            _ => self.last_run + self.timing.backstop,
        };
        match self.not_before {
            Some(nb) => at.max(nb),
            None => at,
        }
    }

    /// A reconcile ran (it ended at `now`).
    pub fn ran(&mut self, now: Instant, verdict: Verdict) {
        self.first = None;
        self.last = None;
        self.leading = false;
        self.last_run = now;
        self.streak = match verdict {
            Verdict::Clean | Verdict::Failed { touched: false } => 0,
            Verdict::Changed | Verdict::Failed { touched: true } => self.streak.saturating_add(1),
        };
        self.not_before = (self.streak > STREAK_FREE).then(|| now + self.backoff());
    }

    /// The current back-off delay (zero while reconciles settle normally).
    pub fn backoff(&self) -> Duration {
        if self.streak <= STREAK_FREE {
            return Duration::ZERO;
        }
        let doublings = (self.streak - STREAK_FREE - 1).min(16);
        (self.timing.backoff_start * 2u32.pow(doublings)).min(self.timing.backoff_max)
    }
}

/// The least time between two reloads a changed file causes.
pub const RELOAD_GAP: Duration = Duration::from_secs(1);

/// When a changed config file (or docker-machine's config.json) is read again: at once when the
/// last reload is at least `gap` ago, else when the gap ends, so that a file touched every few
/// milliseconds is read at most once per gap, and the last change of a burst is still read
/// (trailing edge). Pure, as [`Pacer`].
#[derive(Debug)]
pub struct ReloadPace {
    gap: Duration,
    last: Option<Instant>,
    pending: bool,
}

impl ReloadPace {
    pub fn new(gap: Duration) -> Self {
        ReloadPace {
            gap,
            last: None,
            pending: false,
        }
    }

    /// A watched file changed.
    pub fn changed(&mut self) {
        self.pending = true;
    }

    /// When the pending reload is due (`None`: nothing changed since the last one).
    pub fn due(&self, now: Instant) -> Option<Instant> {
        self.pending.then(|| match self.last {
            Some(last) => (last + self.gap).max(now),
            None => now,
        })
    }

    /// The settings were read again at `now` (for a file change or for SIGHUP).
    pub fn reloaded(&mut self, now: Instant) {
        self.pending = false;
        self.last = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_first_event_after_quiet_acts_at_once_and_the_rest_of_its_burst_after_the_gap() {
        let t0 = Instant::now();
        let mut p = Pacer::new(Timing::default(), t0);
        assert!(!p.pending());
        let t1 = t0 + Duration::from_secs(5);
        p.event(t1);
        assert!(p.pending());
        assert_eq!(p.due(), t1, "an isolated change heals at once");
        p.ran(t1 + ms(1), Verdict::Changed);
        // the rest of the burst (and the echoes of that reconcile) coalesce
        for i in 0..5 {
            p.event(t1 + ms(1 + i * 3));
        }
        assert_eq!(p.due(), t1 + ms(13 + 10));
    }

    #[test]
    fn an_endless_burst_is_cut_at_the_upper_bound() {
        let t0 = Instant::now();
        let mut p = Pacer::new(Timing::default(), t0);
        for i in 0..1000 {
            p.event(t0 + ms(i * 5)); // began right after a reconcile: no leading edge
        }
        assert_eq!(p.due(), t0 + ms(250));
    }

    #[test]
    fn without_events_only_the_backstop_wakes() {
        let t0 = Instant::now();
        let mut p = Pacer::new(Timing::default(), t0);
        assert_eq!(p.due(), t0 + Duration::from_secs(60));
        p.ran(t0 + ms(5), Verdict::Clean);
        assert_eq!(p.due(), t0 + ms(5) + Duration::from_secs(60));
    }

    #[test]
    fn a_heal_and_its_echo_settle_without_back_off() {
        let t0 = Instant::now();
        let mut p = Pacer::new(Timing::default(), t0);
        let t1 = t0 + Duration::from_secs(1);
        p.event(t1);
        assert_eq!(p.due(), t1);
        p.ran(t1 + ms(1), Verdict::Changed);
        p.event(t1 + ms(1)); // the echo of our own change
        assert_eq!(p.due(), t1 + ms(11));
        let t0 = t1;
        p.ran(t0 + ms(25), Verdict::Clean);
        assert!(!p.pending());
        assert_eq!(p.backoff(), Duration::ZERO);
        assert_eq!(p.due(), t0 + ms(25) + Duration::from_secs(60));
    }

    #[test]
    fn a_fight_or_a_rolled_back_failure_backs_off_exponentially_up_to_the_cap() {
        let t0 = Instant::now();
        let mut p = Pacer::new(Timing::default(), t0);
        let mut now = t0;
        let mut delays = Vec::new();
        // each reconcile's echo arrives right after it: never a leading edge
        for _ in 0..12 {
            p.event(now);
            now = p.due().max(now);
            p.ran(now, Verdict::Failed { touched: true });
            delays.push(p.backoff());
        }
        assert_eq!(&delays[..5], &[ms(0), ms(0), ms(250), ms(500), ms(1000)]);
        assert_eq!(delays[11], Duration::from_secs(60));
        p.event(now);
        assert_eq!(p.due(), now + Duration::from_secs(60));
        p.ran(now, Verdict::Clean);
        assert_eq!(p.backoff(), Duration::ZERO);
    }

    #[test]
    fn a_failure_that_touched_nothing_does_not_back_off() {
        // the link is gone: nothing was changed, nothing echoes, the next event is worth acting on
        let t0 = Instant::now();
        let mut p = Pacer::new(Timing::default(), t0);
        for i in 0..10 {
            p.ran(t0 + ms(i), Verdict::Failed { touched: false });
        }
        p.event(t0 + ms(20));
        assert_eq!(p.due(), t0 + ms(20));
    }

    #[test]
    fn a_file_touched_every_12_ms_is_read_once_a_second_and_its_last_change_is_read() {
        let t0 = Instant::now();
        let mut r = ReloadPace::new(RELOAD_GAP);
        assert_eq!(r.due(t0), None);
        let mut reloads = Vec::new();
        let mut now = t0;
        // 10 s of a change every 12 ms; the loop reloads whenever one is due
        while now < t0 + Duration::from_secs(10) {
            r.changed();
            if r.due(now).is_some_and(|d| d <= now) {
                r.reloaded(now);
                reloads.push(now);
            }
            now += ms(12);
        }
        assert!(reloads.len() <= 11, "{} reloads", reloads.len());
        assert_eq!(reloads[0], t0, "the first change is read at once");
        for w in reloads.windows(2) {
            assert!(w[1] - w[0] >= RELOAD_GAP);
        }
        // the last change is still pending, and read when the gap ends
        let last = *reloads.last().unwrap();
        assert_eq!(r.due(now), Some((last + RELOAD_GAP).max(now)));
        r.reloaded(now);
        assert_eq!(r.due(now), None);
        // after a quiet gap, a change is read at once again
        let later = now + Duration::from_secs(5);
        r.changed();
        assert_eq!(r.due(later), Some(later));
    }
}
