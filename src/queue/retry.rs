//! When to try a recipient again, and when to stop trying.

use std::time::Duration;

/// The retry curve and the two limits that end retrying.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// The wait after the first failed try.
    pub initial: Duration,
    /// Each further wait is this many times the one before.
    pub scale: f64,
    /// The longest wait between two tries.
    pub max_interval: Duration,
    /// Tries after which a recipient is given up.
    pub max_tries: u32,
    /// Age after which a message's recipients are given up.
    pub max_lifetime: Duration,
}

impl Default for RetryPolicy {
    /// 15 minutes, then 1.25 times longer each time up to 8 hours; give
    /// up after 20 tries or 5 days.
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_secs(15 * 60),
            scale: 1.25,
            max_interval: Duration::from_secs(8 * 3600),
            max_tries: 20,
            max_lifetime: Duration::from_secs(5 * 86400),
        }
    }
}

impl RetryPolicy {
    /// The wait after the `tries`-th failed try:
    /// `initial × scale^(tries−1)`, computed as a real number and capped.
    ///
    /// ```
    /// use std::time::Duration;
    /// use mailqueue::RetryPolicy;
    /// let p = RetryPolicy::default(); // 900 s, ×1.25, at most 8 hours
    /// assert_eq!(p.delay(1), Duration::from_secs(900));
    /// assert_eq!(p.delay(2), Duration::from_secs(1125));
    /// assert_eq!(p.delay(40), Duration::from_secs(8 * 3600));
    /// ```
    pub fn delay(&self, tries: u32) -> Duration {
        let exponent = tries.saturating_sub(1).min(4096) as i32;
        let secs = self.initial.as_secs_f64() * self.scale.powi(exponent);
        let cap = self.max_interval.as_secs_f64();
        if secs.is_finite() && secs < cap {
            Duration::from_secs_f64(secs)
        } else {
            self.max_interval
        }
    }

    /// True once a recipient that failed temporarily must be given up:
    /// it has had `max_tries` tries, or the message is older than
    /// `max_lifetime`. `>=` so that lowering `max_tries` also ends mail
    /// already past the new limit.
    pub fn gives_up(&self, tries: u32, age: Duration) -> bool {
        tries >= self.max_tries || age >= self.max_lifetime
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::default()
    }

    #[test]
    fn delays_for_tries_1_to_20_follow_the_formula_and_the_cap() {
        let p = policy();
        let cap = 8.0 * 3600.0;
        let mut capped = 0;
        for n in 1..=20u32 {
            let want = (900.0 * 1.25f64.powf(f64::from(n) - 1.0)).min(cap);
            let got = p.delay(n).as_secs_f64();
            assert!((got - want).abs() < 1e-6, "try {n}: {got} != {want}");
            if want == cap {
                capped += 1;
            }
        }
        // 900·1.25^15 ≈ 25 579 s < 28 800 s ≤ 900·1.25^16: tries 17..=20 are capped.
        assert_eq!(capped, 4);
        // No integer truncation: 1.25 is not rounded to 1.
        assert_eq!(p.delay(3), Duration::from_secs_f64(1406.25));
    }

    #[test]
    fn huge_try_counts_stay_at_the_cap() {
        let p = RetryPolicy {
            scale: 10.0,
            ..policy()
        };
        assert_eq!(p.delay(u32::MAX), p.max_interval);
        assert_eq!(p.delay(0), p.initial);
    }

    #[test]
    fn giving_up_uses_greater_or_equal() {
        let p = policy();
        assert!(!p.gives_up(19, Duration::ZERO));
        assert!(p.gives_up(20, Duration::ZERO));
        assert!(p.gives_up(25, Duration::ZERO));
        assert!(p.gives_up(1, Duration::from_secs(5 * 86400)));
        assert!(!p.gives_up(1, Duration::from_secs(5 * 86400 - 1)));
    }
}
