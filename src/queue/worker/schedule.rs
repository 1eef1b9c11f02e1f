//! When a message is tried again: its next attempt by the retry policy,
//! a throttled recipient's wait, and the timer told.

use std::time::Duration;

use crate::queue::meta::{MessageMeta, Timestamp};
use crate::queue::{QueueError, Shared};

/// Longest spread added to a throttled recipient's wait.
pub(super) const MAX_THROTTLE_SPREAD: Duration = Duration::from_secs(60);

/// How long a throttled recipient waits: soon (0.5–1.5 s) for a busy
/// destination, or until the limit says it has room again, when that is
/// later. Spread out, so the messages waiting for one destination do not
/// all come back at the same instant (only one of them would get the
/// token), yet never long after the room is there.
pub(super) fn throttle_wait(hint: Option<Duration>) -> Duration {
    let soon = Duration::from_millis(500 + fastrand::u64(..1000));
    match hint {
        Some(wait) if wait > soon => {
            let spread = (wait / 4).min(MAX_THROTTLE_SPREAD);
            wait + spread.mul_f64(fastrand::f64())
        }
        _ => soon,
    }
}

/// When to attempt a message next: the earliest of the retry time of the
/// recipients that were tried (after the fewest tries among them) and the
/// end of the wait of those that were throttled.
fn next_attempt(shared: &Shared, meta: &MessageMeta, now: Timestamp) -> Timestamp {
    let retry = meta
        .pending()
        .filter(|r| r.throttled.is_none())
        .map(|r| r.tries)
        .min()
        .map(|tries| now.plus(shared.policy.delay(tries)));
    let wake = meta
        .pending()
        .filter_map(|r| r.throttled.as_ref().map(|t| t.until))
        .min();
    retry
        .into_iter()
        .chain(wake)
        .min()
        .unwrap_or_else(|| now.plus(shared.policy.delay(1)))
}

/// Removes a finished message, or writes its metadata with the next
/// attempt's time and returns that time (`None` while it is held).
pub(super) fn reschedule(
    shared: &Shared,
    meta: &mut MessageMeta,
    now: Timestamp,
) -> Result<Option<Timestamp>, QueueError> {
    if !meta.has_pending() {
        shared.spool.finish(&meta.id)?;
        return Ok(None);
    }
    meta.next_attempt = next_attempt(shared, meta, now);
    shared.spool.write_meta(meta)?;
    // Held while the attempt ran: stays out of the schedule until released.
    Ok((!meta.hold).then_some(meta.next_attempt))
}
