//! The engine's time: the wall clock as read at the process's first
//! reading, advanced by the time since boot (`CLOCK_BOOTTIME`: monotonic,
//! and counting time suspended).
//!
//! Every stamp the engine stores (arrival, next attempt, hold) and every
//! age it computes from them come from this one clock, so a step of the
//! system's wall clock while the daemon runs neither expires young mail
//! (a step forwards) nor parks the queue until a restart (a step back):
//! ages and waits follow elapsed time. The price is that stamps taken
//! after a step are off by that step until the next start; the step is
//! logged. Waits themselves are `Instant`s in the timer thread.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::queue::meta::Timestamp;

/// Where the clock reads its time; a seam for tests.
pub trait Source: Send + Sync {
    fn wall(&self) -> SystemTime;
    /// A clock that never steps, from any origin.
    fn mono(&self) -> Duration;
}

/// The system's clocks.
pub struct System;

impl Source for System {
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
    fn mono(&self) -> Duration {
        crate::sys::boot_time()
    }
}

/// Steps of the wall clock smaller than this are not logged.
const STEP_LOGGED: Duration = Duration::from_secs(60);

/// Wall-clock time that only moves with elapsed time.
pub struct SteadyClock<S: Source = System> {
    source: S,
    wall0: SystemTime,
    mono0: Duration,
    /// Offset of the wall clock from this clock last logged, in ms.
    logged_offset: AtomicI64,
}

impl<S: Source> SteadyClock<S> {
    pub fn new(source: S) -> SteadyClock<S> {
        SteadyClock {
            wall0: source.wall(),
            mono0: source.mono(),
            source,
            logged_offset: AtomicI64::new(0),
        }
    }

    /// Now, as the engine counts it.
    pub fn now(&self) -> Timestamp {
        let now = self.wall0 + self.source.mono().saturating_sub(self.mono0);
        self.note_step(now);
        Timestamp::from_system(now)
    }

    /// How far the wall clock is from this clock (positive: ahead), in ms.
    pub fn offset_ms(&self) -> i64 {
        let now = self.wall0 + self.source.mono().saturating_sub(self.mono0);
        millis(self.source.wall()) - millis(now)
    }

    fn note_step(&self, now: SystemTime) {
        let offset = millis(self.source.wall()) - millis(now);
        let logged = self.logged_offset.load(Ordering::Relaxed);
        if offset.abs_diff(logged) >= STEP_LOGGED.as_millis() as u64
            && self
                .logged_offset
                .compare_exchange(logged, offset, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            log::warn!(
                "the wall clock stepped: it is {:+.0}s from the queue's clock, which keeps \
                 counting elapsed time (ages and retry times are unaffected; new time stamps \
                 are off by the step until the next start)",
                offset as f64 / 1000.0
            );
        }
    }
}

fn millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// The process's clock.
pub fn now() -> Timestamp {
    static CLOCK: OnceLock<SteadyClock> = OnceLock::new();
    CLOCK.get_or_init(|| SteadyClock::new(System)).now()
}

/// How long to wait for a message due at `when`, at `now`, waiting at
/// most `longest` (the longest retry interval): a due time further out
/// can only come from a clock that was set back since it was stored, and
/// must not hold the message for the size of that step.
pub fn wait_until(when: Timestamp, now: Timestamp, longest: Duration) -> Duration {
    when.since(now).min(longest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::retry::RetryPolicy;
    use std::sync::{Arc, Mutex};

    /// Clocks the test sets by hand.
    #[derive(Clone)]
    struct Fake(Arc<Mutex<(SystemTime, Duration)>>);

    impl Fake {
        fn new() -> Fake {
            Fake(Arc::new(Mutex::new((
                SystemTime::now(),
                Duration::from_secs(1000),
            ))))
        }
        /// Time passes: both clocks move.
        fn pass(&self, d: Duration) {
            let mut c = self.0.lock().unwrap();
            c.0 += d;
            c.1 += d;
        }
        /// The wall clock is set: only it moves.
        fn step_forward(&self, d: Duration) {
            self.0.lock().unwrap().0 += d;
        }
        fn step_back(&self, d: Duration) {
            self.0.lock().unwrap().0 -= d;
        }
    }

    impl Source for Fake {
        fn wall(&self) -> SystemTime {
            self.0.lock().unwrap().0
        }
        fn mono(&self) -> Duration {
            self.0.lock().unwrap().1
        }
    }

    const DAY: Duration = Duration::from_secs(86_400);

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_lifetime: 5 * DAY,
            max_tries: 1000,
            initial: Duration::from_secs(900),
            max_interval: Duration::from_secs(8 * 3600),
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn a_step_forwards_does_not_age_a_young_message() {
        let fake = Fake::new();
        let clock = SteadyClock::new(fake.clone());
        let arrival = clock.now();
        fake.pass(Duration::from_secs(60));
        fake.step_forward(10 * DAY);
        fake.pass(Duration::from_secs(60));
        let age = clock.now().since(arrival);
        assert_eq!(age, Duration::from_secs(120));
        assert!(!policy().gives_up(1, age), "a 2-minute-old message expired");
        // What reading the wall clock itself would have made of it.
        let wall_age = Timestamp::from_system(fake.wall()).since(arrival);
        assert!(policy().gives_up(1, wall_age));
        assert_eq!(clock.offset_ms(), (10 * DAY).as_millis() as i64);
    }

    #[test]
    fn a_step_back_does_not_hold_a_retry_back() {
        let fake = Fake::new();
        let clock = SteadyClock::new(fake.clone());
        let p = policy();
        // Deferred for 15 minutes, then the clock is set a day back.
        let next = clock.now().plus(p.delay(1));
        fake.step_back(DAY);
        fake.pass(Duration::from_secs(600));
        let wait = wait_until(next, clock.now(), p.max_interval);
        assert_eq!(wait, Duration::from_secs(300));
        // The wall clock alone would have parked it for a day.
        let wall_wait = next.since(Timestamp::from_system(fake.wall()));
        assert!(wall_wait > DAY);
        // A due time stored before a step back between two runs waits
        // at most the longest retry interval.
        let stored = Timestamp::from_system(fake.wall()).plus(3 * DAY);
        let wait = wait_until(stored, Timestamp::from_system(fake.wall()), p.max_interval);
        assert_eq!(wait, p.max_interval);
    }

    #[test]
    fn time_passing_moves_the_clock_with_the_wall() {
        let fake = Fake::new();
        let clock = SteadyClock::new(fake.clone());
        let t0 = clock.now();
        fake.pass(Duration::from_millis(1500));
        assert_eq!(clock.now().since(t0), Duration::from_millis(1500));
        assert_eq!(clock.offset_ms(), 0);
    }
}
