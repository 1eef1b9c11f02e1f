//! The scheduling lag of recent attempts: the last minute and the last
//! 15 minutes, beside the histogram since start that the metrics export.
//! One flush of a large backlog puts every later p99 of the cumulative
//! histogram at the backlog's wait for the rest of the process's life;
//! these windows forget it once it is over.
//!
//! A ring of histograms, one per 10-second slice: recording is a few
//! relaxed atomic additions, as for the cumulative histogram. The first
//! record of a new slice clears the slot it reuses (16 minutes old); a
//! record racing with that clear may be lost, which a statistic can bear.

use std::sync::atomic::{AtomicU64, Ordering::AcqRel, Ordering::Acquire, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::stats::{bucket, upper_bound, BUCKETS};

/// The width of one slice.
const SLICE: Duration = Duration::from_secs(10);
/// Slices kept: 16 minutes, one more than the longest window.
const SLICES: usize = 96;

/// The lag of the attempts started in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LagWindow {
    /// Attempts started in the window.
    pub attempts: u64,
    /// Quantiles and maximum, in microseconds; 0 without attempts.
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// One slice's histogram, with the slice it holds (`u64::MAX`: none).
struct Slot {
    slice: AtomicU64,
    counts: [AtomicU64; BUCKETS],
    max_us: AtomicU64,
}

/// The recent attempts' lags, by 10-second slice.
pub struct RecentLag {
    start: Instant,
    ring: Box<[Slot]>,
}

impl std::fmt::Debug for RecentLag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecentLag").finish_non_exhaustive()
    }
}

impl Default for RecentLag {
    fn default() -> Self {
        RecentLag {
            start: Instant::now(),
            ring: (0..SLICES)
                .map(|_| Slot {
                    slice: AtomicU64::new(u64::MAX),
                    counts: std::array::from_fn(|_| AtomicU64::new(0)),
                    max_us: AtomicU64::new(0),
                })
                .collect(),
        }
    }
}

impl RecentLag {
    /// Records an attempt that started `lag` late, now.
    pub fn record(&self, lag: Duration) {
        self.record_at(self.start.elapsed(), lag);
    }

    /// The lag of the attempts started in the last `window`, now.
    pub fn window(&self, window: Duration) -> LagWindow {
        self.window_at(self.start.elapsed(), window)
    }

    /// [`record`](Self::record) at `at` after the start.
    fn record_at(&self, at: Duration, lag: Duration) {
        let slice = slice_of(at);
        let slot = &self.ring[(slice % SLICES as u64) as usize];
        let held = slot.slice.load(Acquire);
        if held != slice
            && slot
                .slice
                .compare_exchange(held, slice, AcqRel, Acquire)
                .is_ok()
        {
            for c in slot.counts.iter() {
                c.store(0, Relaxed);
            }
            slot.max_us.store(0, Relaxed);
        }
        let us = lag.as_micros().min(u128::from(u64::MAX)) as u64;
        slot.counts[bucket(us)].fetch_add(1, Relaxed);
        slot.max_us.fetch_max(us, Relaxed);
    }

    /// [`window`](Self::window) at `at` after the start: the slices that
    /// end within `window` of `at` (the current one partly).
    fn window_at(&self, at: Duration, window: Duration) -> LagWindow {
        let now = slice_of(at);
        let span = (window.as_secs() / SLICE.as_secs()).clamp(1, SLICES as u64 - 1);
        let mut counts = [0u64; BUCKETS];
        let mut max_us = 0;
        for slot in self.ring.iter() {
            let slice = slot.slice.load(Acquire);
            if slice > now || now - slice >= span {
                continue;
            }
            for (total, c) in counts.iter_mut().zip(slot.counts.iter()) {
                *total += c.load(Relaxed);
            }
            max_us = max_us.max(slot.max_us.load(Relaxed));
        }
        let attempts = counts.iter().sum();
        LagWindow {
            attempts,
            p50_us: quantile(&counts, attempts, 0.50, max_us),
            p99_us: quantile(&counts, attempts, 0.99, max_us),
            max_us,
        }
    }
}

fn slice_of(at: Duration) -> u64 {
    at.as_secs() / SLICE.as_secs()
}

/// The lag a fraction `q` of `total` records do not exceed, rounded up to
/// its bucket's bound and never above the maximum.
fn quantile(counts: &[u64; BUCKETS], total: u64, q: f64, max_us: u64) -> u64 {
    if total == 0 {
        return 0;
    }
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (b, n) in counts.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return upper_bound(b).min(max_us);
        }
    }
    max_us
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn a_burst_of_long_lags_leaves_the_windows_once_it_is_old_enough() {
        let r = RecentLag::default();
        // A flush of a backlog at minute 0: 1 000 attempts 12 s late.
        for _ in 0..1000 {
            r.record_at(Duration::ZERO, Duration::from_secs(12));
        }
        // Then steady mail, 2 ms late, one attempt each 5 s from minute 5.
        let steady = |from: u64, to: u64| {
            for s in (from..to).step_by(5) {
                r.record_at(Duration::from_secs(s), Duration::from_millis(2));
            }
        };
        steady(5 * 60, 10 * 60);
        // At minute 10 the burst is within 15 minutes, not within one.
        let quarter = r.window_at(10 * MIN, 15 * MIN);
        assert_eq!(quarter.attempts, 1000 + 60, "{quarter:?}");
        assert_eq!(quarter.max_us, 12_000_000, "{quarter:?}");
        assert!(quarter.p99_us >= 12_000_000 / 2, "{quarter:?}");
        let last = r.window_at(10 * MIN, MIN);
        assert!(last.max_us == 2_000 && last.p99_us <= 2_500, "{last:?}");
        steady(10 * 60, 20 * 60);
        // At minute 20 it has left both. The last minute: the slices that
        // began 50..60 s ago up to now (1150..1199 s), ten attempts.
        let at = 20 * MIN;
        let last = r.window_at(at, MIN);
        assert_eq!(last.attempts, 10, "{last:?}");
        assert!(last.p99_us <= 2_500 && last.max_us == 2_000, "{last:?}");
        // 310..1199 s.
        let quarter = r.window_at(at, 15 * MIN);
        assert_eq!(quarter.attempts, 178, "{quarter:?}");
        assert_eq!(quarter.max_us, 2_000, "{quarter:?}");
    }

    #[test]
    fn a_slot_reused_after_16_minutes_starts_empty_and_nothing_is_a_zero_window() {
        let r = RecentLag::default();
        assert_eq!(r.window_at(Duration::ZERO, MIN), LagWindow::default());
        r.record_at(Duration::from_secs(3), Duration::from_secs(1));
        // 96 slices later the same slot holds the new slice only.
        let again = Duration::from_secs(3 + 960);
        r.record_at(again, Duration::from_millis(1));
        let w = r.window_at(again, 15 * MIN);
        assert_eq!((w.attempts, w.max_us), (1, 1_000), "{w:?}");
        // Nothing recorded for a while: the last minute is empty.
        assert_eq!(r.window_at(again + 2 * MIN, MIN).attempts, 0);
    }
}
