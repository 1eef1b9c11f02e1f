//! What the queue counts while it runs, for operators (`mailqueue stats`)
//! and the benchmarks: attempts started, and how late each started
//! against the time it was due (the scheduling lag).
//!
//! Recording is a few relaxed atomic additions, so every attempt is
//! counted without a lock between the workers.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Four buckets per power of two of microseconds: a quantile read off the
/// histogram is at most 25 % above the true value. 160 buckets reach past
/// 10^12 µs (11 days); longer lags land in the last one.
const BUCKETS: usize = 160;

fn bucket(us: u64) -> usize {
    if us < 8 {
        return us as usize;
    }
    let log = 63 - us.leading_zeros() as usize;
    let quarter = ((us >> (log - 2)) & 3) as usize;
    (4 * (log - 1) + quarter).min(BUCKETS - 1)
}

/// The smallest lag, in microseconds, that falls in the bucket after `b`.
fn upper_bound(b: usize) -> u64 {
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
}

impl Default for LagHistogram {
    fn default() -> Self {
        LagHistogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            max_us: AtomicU64::new(0),
        }
    }
}

impl LagHistogram {
    pub fn record(&self, lag: Duration) {
        let us = lag.as_micros().min(u128::from(u64::MAX)) as u64;
        self.counts[bucket(us)].fetch_add(1, Relaxed);
        self.max_us.fetch_max(us, Relaxed);
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

/// The running queue's counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// From the time an attempt was due to the time a worker began it.
    pub lag: LagHistogram,
}

/// A copy of the counters at one moment, as the control socket sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Messages and bytes in the queue.
    pub messages: u64,
    pub bytes: u64,
    /// Attempts started since the queue opened.
    pub attempts: u64,
    /// Scheduling lag quantiles and maximum, in microseconds.
    pub lag_p50_us: u64,
    pub lag_p99_us: u64,
    pub lag_max_us: u64,
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
        let s = Stats { lag: h }.snapshot(3, 4);
        assert_eq!((s.messages, s.bytes, s.attempts), (3, 4, 1000));
        assert_eq!(s.lag_max_us, 50_000);
    }
}
