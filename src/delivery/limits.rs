//! Whether a destination may be used now: at most so many connections
//! at once (a [`Limiter`]), and at most so many transactions per
//! interval (a [`RateLimiter`], a token bucket per destination).
//!
//! A destination is whatever the target calls one: the next hop of a
//! relay target, the recipient domain of the MX client. A refusal is a
//! [`DeliveryError`] of kind [`ErrorKind::Throttled`](crate::ErrorKind):
//! the recipients wait without using up a try, and a rate refusal says
//! how long until the destination has a token again.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::delivery::DeliveryError;

/// Messages per interval: `55/1m` is 55 a minute, in a burst of up to
/// 55, refilled one every 60/55 seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Transactions per interval; also the largest burst. At least 1.
    pub count: u32,
    /// The interval; longer than zero.
    pub per: Duration,
}

impl Rate {
    /// The time one token takes to come back.
    fn token_interval(&self) -> Duration {
        self.per / self.count.max(1)
    }
}

impl fmt::Display for Rate {
    /// As the configuration writes it: `55/1m`, `1000/1h`, `5/1s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.per.as_millis();
        let unit = [
            (86_400_000, "d"),
            (3_600_000, "h"),
            (60_000, "m"),
            (1000, "s"),
        ]
        .into_iter()
        .find(|(n, _)| ms >= *n && ms % n == 0);
        match unit {
            Some((n, u)) => write!(f, "{}/{}{u}", self.count, ms / n),
            None => write!(f, "{}/{ms}ms", self.count),
        }
    }
}

/// One destination's token bucket, kept as a generic cell rate
/// algorithm: `tat` (the theoretical arrival time) is when the bucket
/// would be full again. Integer time, so a token comes back exactly when
/// its interval is over, with no rounding drift.
#[derive(Debug, Clone, Copy)]
struct TokenBucket {
    tat: Instant,
}

impl TokenBucket {
    /// A full bucket.
    fn full(now: Instant) -> TokenBucket {
        TokenBucket { tat: now }
    }

    /// Takes a token at `now`; when none is left, how long until one is.
    fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        let interval = rate.token_interval();
        // How far ahead of now the bucket may run: a burst of `count`.
        let burst = interval * rate.count.saturating_sub(1);
        let tat = self.tat.max(now);
        let ahead = tat - now;
        if ahead > burst {
            return Err(ahead - burst);
        }
        self.tat = tat + interval;
        Ok(())
    }

    /// True when the bucket is full again at `now`: it can be forgotten.
    fn is_full(&self, now: Instant) -> bool {
        self.tat <= now
    }
}

/// Buckets kept before the full ones are swept out (one per destination
/// seen lately; the MX client sees many).
const SWEEP_AT: usize = 1024;

/// A token bucket per destination; no limit without a rate.
#[derive(Debug, Default)]
pub struct RateLimiter {
    rate: Option<Rate>,
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl RateLimiter {
    pub fn new(rate: Option<Rate>) -> RateLimiter {
        RateLimiter {
            rate,
            buckets: Mutex::default(),
        }
    }

    /// The rate enforced, if any.
    pub fn rate(&self) -> Option<Rate> {
        self.rate
    }

    /// Takes a token for one transaction to `key` at `now`; when there is
    /// none, the time until there is one.
    pub fn take_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let Some(rate) = self.rate else {
            return Ok(());
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= SWEEP_AT && !buckets.contains_key(key) {
            // A full bucket is the same as none.
            buckets.retain(|_, b| !b.is_full(now));
        }
        buckets
            .entry(key.to_string())
            .or_insert_with(|| TokenBucket::full(now))
            .take(rate, now)
    }
}

/// Counts connections per destination.
#[derive(Debug)]
pub struct Limiter {
    limit: usize,
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

/// One connection's place at its destination, given back when dropped.
#[derive(Debug)]
pub struct Permit {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    key: String,
}

impl Limiter {
    pub fn new(limit: usize) -> Limiter {
        Limiter {
            limit,
            counts: Arc::default(),
        }
    }

    /// The most connections at once to one destination.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A place at `key`, unless it is at its limit.
    pub fn try_acquire(&self, key: &str) -> Option<Permit> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key.to_string()).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Permit {
            counts: Arc::clone(&self.counts),
            key: key.to_string(),
        })
    }

    /// Connections open to `key` now.
    pub fn count(&self, key: &str) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Both limits of a target's destinations.
#[derive(Debug)]
pub struct DestinationLimits {
    concurrency: Limiter,
    rate: RateLimiter,
}

impl DestinationLimits {
    /// At most `concurrency` connections at once to each destination, and
    /// at most `rate` transactions (none: no rate limit).
    pub fn new(concurrency: usize, rate: Option<Rate>) -> DestinationLimits {
        DestinationLimits {
            concurrency: Limiter::new(concurrency),
            rate: RateLimiter::new(rate),
        }
    }

    /// Leave to run one transaction to `destination` now, for as long as
    /// the permit lives; or the throttled error its recipients wait with.
    /// The connection place is taken first, so a destination at its
    /// connection limit does not use up tokens.
    pub fn admit(&self, destination: &str) -> Result<Permit, DeliveryError> {
        let Some(permit) = self.concurrency.try_acquire(destination) else {
            let text = format!(
                "concurrency {} to {destination}: all connections busy",
                self.concurrency.limit()
            );
            return Err(DeliveryError::throttled(&text));
        };
        match self.rate.take_at(destination, Instant::now()) {
            Ok(()) => Ok(permit),
            Err(wait) => {
                let rate = self.rate.rate().map(|r| r.to_string()).unwrap_or_default();
                let text = format!("rate {rate} to {destination}");
                Err(DeliveryError::throttled_for(&text, wait))
            }
        }
    }

    /// Connections open to `destination` now.
    pub fn connections(&self, destination: &str) -> usize {
        self.concurrency.count(destination)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::{ErrorKind, Severity};

    fn rate(count: u32, per_ms: u64) -> Rate {
        Rate {
            count,
            per: Duration::from_millis(per_ms),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_bucket_gives_a_burst_of_count_then_one_token_per_interval() {
        let t0 = Instant::now();
        let l = RateLimiter::new(Some(rate(5, 1000)));
        for _ in 0..5 {
            assert_eq!(l.take_at("d", t0), Ok(()));
        }
        // Empty: the next token comes 1/5 s after the first was taken.
        assert_eq!(l.take_at("d", t0), Err(ms(200)));
        assert_eq!(l.take_at("d", t0 + ms(50)), Err(ms(150)));
        assert_eq!(l.take_at("d", t0 + ms(200)), Ok(()));
        assert_eq!(l.take_at("d", t0 + ms(200)), Err(ms(200)));
        // Refill is even, one token each 200 ms, up to the burst.
        assert_eq!(l.take_at("d", t0 + ms(600)), Ok(()));
        assert_eq!(l.take_at("d", t0 + ms(600)), Ok(()));
        assert_eq!(l.take_at("d", t0 + ms(600)), Err(ms(200)));
    }

    #[test]
    fn an_idle_bucket_refills_to_its_burst_and_no_further() {
        let t0 = Instant::now();
        let l = RateLimiter::new(Some(rate(3, 3000)));
        for _ in 0..3 {
            l.take_at("d", t0).unwrap();
        }
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(l.take_at("d", later), Ok(()));
        }
        assert_eq!(l.take_at("d", later), Err(ms(1000)));
    }

    #[test]
    fn over_any_window_no_more_than_the_burst_plus_the_refill_pass() {
        // A caller that asks every 10 ms for 10 s of injected time.
        let t0 = Instant::now();
        let r = rate(5, 1000);
        let l = RateLimiter::new(Some(r));
        let granted: Vec<u64> = (0..1000u64)
            .filter(|i| l.take_at("d", t0 + ms(i * 10)).is_ok())
            .map(|i| i * 10)
            .collect();
        // 5 at once, then one each 200 ms: 5 + 9990 / 200 = 54.
        assert_eq!(granted.len(), 54);
        for (i, &start) in granted.iter().enumerate() {
            let in_window = granted[i..]
                .iter()
                .take_while(|&&t| t < start + 1000)
                .count();
            assert!(in_window <= 5 + 5, "{in_window} within 1 s from {start} ms");
        }
    }

    #[test]
    fn destinations_have_their_own_buckets_and_no_rate_is_no_limit() {
        let t0 = Instant::now();
        let l = RateLimiter::new(Some(rate(1, 3_600_000)));
        assert_eq!(l.take_at("a", t0), Ok(()));
        assert_eq!(l.take_at("b", t0), Ok(()));
        assert_eq!(l.take_at("a", t0), Err(Duration::from_secs(3600)));
        let none = RateLimiter::new(None);
        for _ in 0..10_000 {
            assert_eq!(none.take_at("a", t0), Ok(()));
        }
    }

    #[test]
    fn full_buckets_are_swept_out_when_there_are_many() {
        let t0 = Instant::now();
        let l = RateLimiter::new(Some(rate(2, 1000)));
        for i in 0..SWEEP_AT {
            l.take_at(&format!("d{i}"), t0).unwrap();
        }
        // A second on, every bucket is full again: a new one sweeps them.
        l.take_at("new", t0 + ms(1000)).unwrap();
        assert_eq!(l.buckets.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_rate_reads_as_the_configuration_writes_it() {
        assert_eq!(rate(55, 60_000).to_string(), "55/1m");
        assert_eq!(rate(1000, 3_600_000).to_string(), "1000/1h");
        assert_eq!(rate(5, 1000).to_string(), "5/1s");
        assert_eq!(rate(5, 90_000).to_string(), "5/90s");
        assert_eq!(rate(5, 1500).to_string(), "5/1500ms");
        assert_eq!(rate(1, 86_400_000).to_string(), "1/1d");
    }

    #[test]
    fn permits_count_connections_until_dropped() {
        let l = Limiter::new(2);
        let a = l.try_acquire("d").unwrap();
        let _b = l.try_acquire("d").unwrap();
        assert!(l.try_acquire("d").is_none());
        assert!(l.try_acquire("e").is_some());
        assert_eq!(l.count("d"), 2);
        drop(a);
        assert_eq!(l.count("d"), 1);
        assert!(l.try_acquire("d").is_some());
    }

    #[test]
    fn a_refusal_is_throttled_and_a_rate_refusal_says_how_long() {
        let limits = DestinationLimits::new(1, Some(rate(1, 3_600_000)));
        let permit = limits.admit("relay.test").unwrap();
        let busy = limits.admit("relay.test").unwrap_err();
        assert_eq!(busy.kind(), ErrorKind::Throttled);
        assert_eq!(busy.severity(), Severity::Throttled);
        assert_eq!(busy.wait_hint(), None);
        assert!(
            busy.reply().text.contains("concurrency 1 to relay.test"),
            "{busy}"
        );
        drop(permit);
        let later = limits.admit("relay.test").unwrap_err();
        assert_eq!(later.kind(), ErrorKind::Throttled);
        assert_eq!(later.reply().text, "rate 1/1h to relay.test");
        let wait = later.wait_hint().expect("a rate refusal has a wait");
        assert!(wait > Duration::from_secs(3500) && wait <= Duration::from_secs(3600));
        // The refused transaction gave its connection place back.
        assert_eq!(limits.connections("relay.test"), 0);
    }
}
