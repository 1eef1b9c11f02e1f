//! What the queue counts while it runs, for operators (`mailqueue stats`)
//! and the benchmarks: attempts started, and how late each started
//! against the time it was due (the scheduling lag).
//!
//! Recording is a few relaxed atomic additions, so every attempt is
//! counted without a lock between the workers.
//!
//! The event counters (messages received, refused, delivery outcomes,
//! notices, connections) are what the daemon's metrics endpoint renders;
//! they count from the queue's start.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::recent_lag::{LagWindow, RecentLag};
use crate::delivery::tls_report::TlsReport;
use crate::smtp::reply::SmtpReply;

/// Four buckets per power of two of microseconds: a quantile read off the
/// histogram is at most 25 % above the true value. 160 buckets reach past
/// 10^12 µs (11 days); longer lags land in the last one.
pub(crate) const BUCKETS: usize = 160;

pub(crate) fn bucket(us: u64) -> usize {
    if us < 8 {
        return us as usize;
    }
    let log = 63 - us.leading_zeros() as usize;
    let quarter = ((us >> (log - 2)) & 3) as usize;
    (4 * (log - 1) + quarter).min(BUCKETS - 1)
}

/// The smallest lag, in microseconds, that falls in the bucket after `b`.
pub(crate) fn upper_bound(b: usize) -> u64 {
    if b < 8 {
        return b as u64 + 1;
    }
    let log = b / 4 + 1;
    let quarter = (b % 4) as u64;
    (4 + quarter + 1) << (log - 2)
}

/// A histogram of durations that many threads record into at once.
#[derive(Debug)]
pub struct LagHistogram {
    counts: [AtomicU64; BUCKETS],
    max_us: AtomicU64,
    sum_us: AtomicU64,
}

impl Default for LagHistogram {
    fn default() -> Self {
        LagHistogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            max_us: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl LagHistogram {
    pub fn record(&self, lag: Duration) {
        let us = lag.as_micros().min(u128::from(u64::MAX)) as u64;
        self.counts[bucket(us)].fetch_add(1, Relaxed);
        self.max_us.fetch_max(us, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// The sum of every recorded lag, in microseconds.
    pub fn sum_us(&self) -> u64 {
        self.sum_us.load(Relaxed)
    }

    /// Cumulative counts at power-of-two bounds: `(bound_us, records
    /// below it)` for 1 µs, 2 µs, 4 µs … up to `max_bound_us`. Each bound is
    /// a bucket edge, so the counts are exact (as a Prometheus histogram's
    /// `le` buckets need).
    pub fn cumulative(&self, max_bound_us: u64) -> Vec<(u64, u64)> {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Relaxed)).collect();
        let mut out = Vec::new();
        let mut bound = 1u64;
        while bound <= max_bound_us {
            // Values below `bound` are exactly the buckets before bucket(bound).
            let below: u64 = counts[..bucket(bound)].iter().sum();
            out.push((bound, below));
            bound *= 2;
        }
        out
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// The lag that a fraction `q` (0..=1) of the records do not exceed,
    /// rounded up to its bucket's bound; 0 when nothing was recorded.
    ///
    /// ```
    /// use std::time::Duration;
    /// use mailqueue::queue::stats::LagHistogram;
    /// let h = LagHistogram::default();
    /// for ms in 1..=100 {
    ///     h.record(Duration::from_millis(ms));
    /// }
    /// let p99 = h.quantile_us(0.99);
    /// assert!((99_000..=99_000 * 5 / 4).contains(&p99), "{p99}");
    /// ```
    pub fn quantile_us(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return upper_bound(b).min(self.max_us.load(Relaxed));
            }
        }
        self.max_us.load(Relaxed)
    }
}

/// How a message came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Over SMTP, through the listener.
    Smtp,
    /// Handed to the library (`Queue::enqueue`), or picked up from
    /// `incoming/` (sendmail).
    Local,
}

/// Why the listener refused a command, as its reply's enhanced code
/// says; the label values of `mailqueue_refused_total`.
pub const REFUSAL_REASONS: [&str; 8] = [
    "relay_denied",
    "message_size",
    "quota",
    "too_many_recipients",
    "bad_address",
    "protocol",
    "other",
    "too_many_connections",
];

/// The index in [`REFUSAL_REASONS`] of a connection refused past
/// `[listen] max_connections` (its 421 4.7.0 says no more than "other").
const TOO_MANY_CONNECTIONS: usize = 7;

/// The index in [`REFUSAL_REASONS`] of a refusal with this reply.
fn refusal_reason(reply: &SmtpReply) -> usize {
    let e = reply.status();
    match (e.subject, e.detail) {
        (7, 1) => 0,
        (3, 4) => 1,
        (3, 1) => 2,
        (5, 3) => 3,
        (1, _) | (6, 7) => 4,
        (5, _) => 5,
        _ => 6,
    }
}

/// Recipient outcomes of attempts; the label values of
/// `mailqueue_deliveries_total`.
pub const OUTCOMES: [&str; 4] = ["sent", "deferred", "bounced", "expired"];

/// Outbound sessions established by every delivery target of the
/// process (the SMTP client knows no queue), by TLS version and
/// certificate verification. A session is counted once it is set up.
static OUTBOUND_SESSIONS: Mutex<BTreeMap<(&str, &str), u64>> = Mutex::new(BTreeMap::new());

/// Counts an outbound session with its TLS.
pub fn count_outbound_session(tls: TlsReport) {
    let mut counts = OUTBOUND_SESSIONS.lock().unwrap_or_else(|p| p.into_inner());
    *counts
        .entry((tls.version(), tls.verification()))
        .or_default() += 1;
}

/// Outbound sessions since the process started, by (TLS version,
/// verification), `("none", "none")` for clear text.
pub fn outbound_sessions() -> Vec<((&'static str, &'static str), u64)> {
    let counts = OUTBOUND_SESSIONS.lock().unwrap_or_else(|p| p.into_inner());
    counts.iter().map(|(k, n)| (*k, *n)).collect()
}

/// Outbound TLS sessions established since the process started.
pub fn outbound_tls() -> u64 {
    outbound_sessions()
        .into_iter()
        .filter(|((version, _), _)| *version != "none")
        .map(|(_, n)| n)
        .sum()
}

/// The running queue's counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// From the time an attempt was due to the time a worker began it.
    pub lag: LagHistogram,
    /// The same, for the last minute and the last 15 minutes.
    pub recent_lag: RecentLag,
    /// Messages queued, by [`Way`] (notices not included).
    received: [AtomicU64; 2],
    /// Listener replies refusing a command, by [`REFUSAL_REASONS`].
    refused: [AtomicU64; REFUSAL_REASONS.len()],
    /// Recipient outcomes, by [`OUTCOMES`].
    outcomes: [AtomicU64; OUTCOMES.len()],
    /// Notices (bounces, delay warnings, success reports) queued.
    notices: AtomicU64,
    /// SMTP connections the listener took on.
    connections: AtomicU64,
}

impl Stats {
    /// Counts an attempt that a worker began `lag` after it was due.
    pub fn attempt_started(&self, lag: Duration) {
        self.lag.record(lag);
        self.recent_lag.record(lag);
    }

    /// Counts a message queued.
    pub fn received(&self, way: Way) {
        self.received[way as usize].fetch_add(1, Relaxed);
    }

    /// Counts a listener reply if it refuses something (4xx, 5xx).
    pub fn reply_sent(&self, reply: &SmtpReply) {
        if reply.code >= 400 {
            self.refused[refusal_reason(reply)].fetch_add(1, Relaxed);
        }
    }

    /// Counts one recipient's outcome: `sent`, `deferred` or `bounced`
    /// (`expired` when a bounce is for time or tries, not a permanent error).
    pub fn outcome(&self, status: &str, expired: bool) {
        let i = match status {
            "sent" => 0,
            "deferred" => 1,
            _ if expired => 3,
            _ => 2,
        };
        self.outcomes[i].fetch_add(1, Relaxed);
    }

    /// Counts `n` recipients the operator expired (`expired` outcomes).
    pub fn expired_by_operator(&self, n: usize) {
        self.outcomes[3].fetch_add(n as u64, Relaxed);
    }

    /// Counts a notice queued.
    pub fn notice(&self) {
        self.notices.fetch_add(1, Relaxed);
    }

    /// Counts a connection refused (421) past `max_connections`.
    pub fn connection_refused(&self) {
        self.refused[TOO_MANY_CONNECTIONS].fetch_add(1, Relaxed);
    }

    /// Counts a connection the listener took on.
    pub fn connection(&self) {
        self.connections.fetch_add(1, Relaxed);
    }

    /// Messages received: `(smtp, local)`.
    pub fn received_counts(&self) -> (u64, u64) {
        (
            self.received[0].load(Relaxed),
            self.received[1].load(Relaxed),
        )
    }

    /// Refusals, in the order of [`REFUSAL_REASONS`].
    pub fn refused_counts(&self) -> Vec<u64> {
        self.refused.iter().map(|c| c.load(Relaxed)).collect()
    }

    /// Outcomes, in the order of [`OUTCOMES`].
    pub fn outcome_counts(&self) -> Vec<u64> {
        self.outcomes.iter().map(|c| c.load(Relaxed)).collect()
    }

    /// Notices queued.
    pub fn notices(&self) -> u64 {
        self.notices.load(Relaxed)
    }

    /// Connections taken on.
    pub fn connections(&self) -> u64 {
        self.connections.load(Relaxed)
    }
}

/// A copy of the counters at one moment, as the control socket sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Messages and bytes in the queue.
    pub messages: u64,
    pub bytes: u64,
    /// Attempts started since the queue opened.
    pub attempts: u64,
    /// Scheduling lag quantiles and maximum since the queue opened, in
    /// microseconds.
    pub lag_p50_us: u64,
    pub lag_p99_us: u64,
    pub lag_max_us: u64,
    /// The scheduling lag of the attempts of the last minute.
    #[serde(default)]
    pub lag_1m: LagWindow,
    /// The same over the last 15 minutes.
    #[serde(default)]
    pub lag_15m: LagWindow,
    /// The start-up load is still reading the spool: `messages` and
    /// `bytes` count what it has loaded so far and the new mail.
    #[serde(default)]
    pub loading: bool,
    /// Messages the start-up load has scheduled.
    #[serde(default)]
    pub loaded: u64,
    /// Messages the start-up load has listed and not read yet.
    #[serde(default)]
    pub to_load: u64,
}

impl Stats {
    pub fn snapshot(&self, messages: u64, bytes: u64) -> StatsSnapshot {
        StatsSnapshot {
            messages,
            bytes,
            attempts: self.lag.count(),
            lag_p50_us: self.lag.quantile_us(0.50),
            lag_p99_us: self.lag.quantile_us(0.99),
            lag_max_us: self.lag.max_us.load(Relaxed),
            lag_1m: self.recent_lag.window(Duration::from_secs(60)),
            lag_15m: self.recent_lag.window(Duration::from_secs(15 * 60)),
            loading: false,
            loaded: 0,
            to_load: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_bound_their_values() {
        let mut last = 0;
        for us in (0..100_000u64).chain([1 << 30, 1 << 39, u64::MAX]) {
            let b = bucket(us);
            assert!(b >= last, "{us}");
            last = b;
            if b < BUCKETS - 1 {
                assert!(us < upper_bound(b), "{us} in {b}");
                assert!(b == 0 || us >= upper_bound(b - 1), "{us} in {b}");
                // A bucket is at most a quarter of its lower bound wide.
                assert!(upper_bound(b) <= (us.max(4) * 5).div_ceil(4) + 1, "{us}");
            }
        }
    }

    #[test]
    fn quantiles_of_a_known_spread() {
        let h = LagHistogram::default();
        assert_eq!(h.quantile_us(0.99), 0);
        for _ in 0..990 {
            h.record(Duration::from_micros(100));
        }
        for _ in 0..10 {
            h.record(Duration::from_millis(50));
        }
        assert_eq!(h.count(), 1000);
        let p50 = h.quantile_us(0.5);
        assert!((100..=125).contains(&p50), "{p50}");
        let p99 = h.quantile_us(0.99);
        assert!((100..=125).contains(&p99), "{p99}");
        let p999 = h.quantile_us(0.999);
        assert_eq!(p999, 50_000, "capped at the maximum");
        let s = Stats {
            lag: h,
            ..Stats::default()
        }
        .snapshot(3, 4);
        assert_eq!((s.messages, s.bytes, s.attempts), (3, 4, 1000));
        assert_eq!(s.lag_max_us, 50_000);
    }

    #[test]
    fn cumulative_counts_are_exact_at_power_of_two_bounds() {
        let h = LagHistogram::default();
        for us in [0, 1, 3, 7, 8, 100, 1000, 1023, 1024, 5000] {
            h.record(Duration::from_micros(us));
        }
        let c = h.cumulative(1 << 20);
        assert_eq!(c.len(), 21);
        for (bound, below) in c {
            let expected = [0u64, 1, 3, 7, 8, 100, 1000, 1023, 1024, 5000]
                .iter()
                .filter(|&&us| us < bound)
                .count() as u64;
            assert_eq!(below, expected, "below {bound}");
        }
        assert_eq!(h.sum_us(), 8166);
    }

    #[test]
    fn refusals_are_told_apart_by_their_enhanced_code() {
        let s = Stats::default();
        for (code, e) in [
            (554, (5, 7, 1)),
            (552, (5, 3, 4)),
            (452, (4, 3, 1)),
            (452, (4, 5, 3)),
            (553, (5, 1, 3)),
            (553, (5, 6, 7)),
            (500, (5, 5, 2)),
            (421, (4, 4, 2)),
            (250, (2, 0, 0)),
        ] {
            s.reply_sent(&SmtpReply::with_code(code, e, "x"));
        }
        assert_eq!(s.refused_counts(), [1, 1, 1, 1, 2, 1, 1, 0]);
        s.connection_refused();
        assert_eq!(s.refused_counts(), [1, 1, 1, 1, 2, 1, 1, 1]);
        s.outcome("sent", false);
        s.outcome("bounced", true);
        s.outcome("bounced", false);
        s.outcome("deferred", false);
        assert_eq!(s.outcome_counts(), [1, 1, 1, 1]);
    }
}
