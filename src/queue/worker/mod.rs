//! One delivery attempt of one message: read its state, run the
//! transaction against the target, then record each recipient's outcome,
//! send notices, and either reschedule the message or remove it.
//!
//! The message lock is held only while reading and while recording, not
//! during the network transaction, so an operator's hold, delete or expire
//! never waits for a slow server. Recording re-reads the metadata: a
//! message deleted meanwhile stays deleted, a hold set meanwhile stays
//! set, and an expire issued meanwhile is applied after the attempt's
//! results, to the recipients it left pending.

use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::delivery::tls_report::TlsReport;
use crate::delivery::{
    Body, DeliveryError, DeliveryTarget, ErrorKind, Handoff, MessageInfo, RecipientOutcome,
    Severity,
};
use crate::envelope::Recipient;
use crate::logline;
use crate::queue::admin::give_up_pending;
use crate::queue::dsn::{self, Action};
use crate::queue::meta::{MessageMeta, RcptStatus, RecipientMeta, Throttle, Timestamp};
use crate::queue::{Job, MessageId, QueueError, Shared};
use crate::smtp::reply::SmtpReply;

mod panics;
mod schedule;

use panics::{contain_panic, forget_panics};
use schedule::{reschedule, throttle_wait};

/// Panics of one message's attempts before it is quarantined: a bug hit
/// by that message alone must neither stop the queue nor loop forever.
pub(crate) const MAX_PANICS: u32 = 3;

/// Worker thread body: attempts messages until the job channel closes.
pub(crate) fn run(shared: &Shared, jobs: &Receiver<Job>) {
    while let Ok(Job { id, due }) = jobs.recv() {
        shared
            .stats
            .attempt_started(Instant::now().saturating_duration_since(due));
        if shared.stopping.load(Ordering::SeqCst) {
            // Still on disk: the next start schedules it again.
            continue;
        }
        // A panic (a bug, a parser edge, a panicking target) ends this
        // attempt only: the worker lives on, and the message is deferred
        // with its metadata as it was, so no outcome is half-recorded.
        // The guards (in-flight mark, message lock) are released by the
        // unwinding; every mutex the workers share tolerates poisoning.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| attempt(shared, id)));
        match result {
            Ok(Ok(next)) => {
                forget_panics(shared, id);
                if let Some(next) = next {
                    shared.schedule(id, next);
                }
            }
            Ok(Err(e)) => {
                // Typically a full disk: the results of this attempt could
                // not be written, so it will be repeated later.
                let wait = shared.policy.retry().initial.min(Duration::from_secs(60));
                log::error!(
                    "{id}: attempt not recorded, retrying in {}s: {e}",
                    wait.as_secs()
                );
                shared.schedule(id, Timestamp::now().plus(wait));
            }
            Err(payload) => contain_panic(shared, id, &*payload),
        }
    }
}

/// Marks a message as having an attempt running, for as long as it lives.
struct InFlight<'a> {
    shared: &'a Shared,
    id: MessageId,
}

impl<'a> InFlight<'a> {
    fn claim(shared: &'a Shared, id: MessageId) -> Option<Self> {
        let mut set = shared.inflight.lock().unwrap_or_else(|p| p.into_inner());
        set.insert(id).then_some(InFlight { shared, id })
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.shared
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// Reads the metadata under the lock, taken through `file` when an
/// earlier lock opened it; `None` when the message is gone.
fn read(
    shared: &Shared,
    id: &MessageId,
    file: Option<Arc<File>>,
) -> Result<Option<(MessageMeta, crate::queue::spool::MessageLock)>, QueueError> {
    let lock = match file {
        Some(file) => shared.spool.relock_message(id, file)?,
        None => shared.spool.lock_message(id)?,
    };
    let Some(lock) = lock else {
        return Ok(None);
    };
    match shared.spool.read_locked(id, &lock) {
        Ok(m) => Ok(Some((m, lock))),
        Err(QueueError::Corrupt { reason, .. }) => {
            shared.spool.quarantine(id.as_str(), &reason);
            Ok(None)
        }
        Err(QueueError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Runs one attempt; returns when to try again, or `None` when the
/// message is finished (or held, or gone, or already being attempted).
///
/// Wherever the message lock is held, the in-flight mark is dropped
/// before the lock: an operator command that holds the lock and sees the
/// mark knows this attempt will still read the metadata it writes.
fn attempt(shared: &Shared, id: MessageId) -> Result<Option<Timestamp>, QueueError> {
    let Some(inflight) = InFlight::claim(shared, id) else {
        // The running attempt reschedules the message when it ends.
        return Ok(None);
    };
    let Some((mut meta, lock)) = read(shared, &id, None)? else {
        return Ok(None);
    };
    if meta.expire_requested {
        // Expired by the operator at the very start of this attempt.
        let result = record(shared, &mut meta, &[], Vec::new());
        drop(inflight);
        return result;
    }
    if meta.hold {
        drop(inflight);
        return Ok(None);
    }
    let pending: Vec<usize> = (0..meta.recipients.len())
        .filter(|&i| meta.recipients[i].status == RcptStatus::Pending)
        .collect();
    if pending.is_empty() {
        shared.spool.finish(&id)?;
        drop(inflight);
        return Ok(None);
    }
    let file = lock.file();
    drop(lock);

    let target = choose_target(shared, &meta);
    let info = MessageInfo {
        id,
        sender: meta.sender.clone(),
        params: meta.params.clone(),
        size: meta.size,
    };
    let recipients: Vec<Recipient> = pending
        .iter()
        .map(|&i| meta.recipients[i].to_recipient())
        .collect();
    let body = Body::from_open_file(Arc::clone(&file), meta.size, meta.checksum);
    let outcomes = match &target {
        Ok(target) => deliver(&**target, &info, &recipients, &body),
        Err(e) => RecipientOutcome::all(recipients.len(), Err(e.clone())),
    };

    let Some((mut meta, lock)) = read(shared, &id, Some(file))? else {
        log::info!("{id}: removed during the attempt; its results are dropped");
        return Ok(None);
    };
    let result = record(shared, &mut meta, &pending, outcomes);
    drop(inflight);
    drop(lock);
    result
}

/// Recipients reported in notices, by index in the metadata, with what
/// the notice says about them.
type Reported = Vec<(usize, Action)>;

/// Applies the outcomes to the metadata, sends the notices and writes (or
/// removes) the message. Runs under the message lock.
fn record(
    shared: &Shared,
    meta: &mut MessageMeta,
    pending: &[usize],
    outcomes: Vec<RecipientOutcome>,
) -> Result<Option<Timestamp>, QueueError> {
    let now = Timestamp::now();
    meta.last_attempt = Some(now);
    let age = meta.age(now);
    let mut applied = Applied::default();
    for (&i, outcome) in pending.iter().zip(outcomes) {
        apply(shared, meta, i, outcome, now, &mut applied);
    }
    // An expire the operator issued during the attempt, applied after its
    // results: what it delivered stays delivered and is not bounced.
    if meta.expire_requested {
        let expired = operator_expire(meta);
        shared.stats.expired_by_operator(expired.len());
        applied.failed.extend(expired);
    }
    let delayed = delay_warnings(shared, meta, age);
    // Notices are made durable before the outcomes are recorded: a crash
    // in between repeats a notice rather than losing it.
    send_notices(shared, meta, &applied.failed, &delayed, &applied.succeeded);
    reschedule(shared, meta, now)
}

/// What the outcomes of an attempt call for beyond the metadata.
#[derive(Default)]
struct Applied {
    failed: Reported,
    succeeded: Reported,
}

/// Records one recipient's outcome and logs it.
fn apply(
    shared: &Shared,
    meta: &mut MessageMeta,
    i: usize,
    outcome: RecipientOutcome,
    now: Timestamp,
    applied: &mut Applied,
) {
    let id = meta.id;
    let age = meta.age(now);
    let Some(r) = meta
        .recipients
        .get_mut(i)
        .filter(|r| r.status == RcptStatus::Pending)
    else {
        return;
    };
    let RecipientOutcome {
        result,
        relay,
        reply,
        tls,
        ..
    } = outcome;
    if let Err(e) = &result {
        if throttled(id, r, e, now) {
            return;
        }
    }
    r.throttled = None;
    r.tries += 1;
    let (status, relay, reply) = match result {
        Ok(handoff) => {
            r.status = RcptStatus::Delivered;
            match handoff {
                Handoff::Delivered => applied.succeeded.push((i, Action::Delivered)),
                Handoff::Relayed => applied.succeeded.push((i, Action::Relayed)),
                Handoff::Passed => {}
            }
            ("sent", relay, reply)
        }
        Err(e) => {
            let status = if fail(shared, r, &e, age) {
                applied.failed.push((i, Action::Failed));
                "bounced"
            } else {
                "deferred"
            };
            // The server connected when it failed; none when no
            // server answered (DNS, connect).
            (
                status,
                relay.or_else(|| e.relay().map(str::to_string)),
                Some(e.reply().clone()),
            )
        }
    };
    shared.stats.outcome(status, r.expired);
    log_outcome(id, r, age, status, relay.as_deref(), tls, reply);
}

/// Records a recipient whose try waits for its destination's rate
/// limit; false for any other failure.
fn throttled(id: MessageId, r: &mut RecipientMeta, e: &DeliveryError, now: Timestamp) -> bool {
    if e.severity() != Severity::Throttled {
        return false;
    }
    // Not tried: no try counted, no error recorded; the wait is
    // recorded, for the schedule and for the operator to see.
    log::debug!("{id}: to=<{}>, waiting: {}", r.address, e.reply());
    r.throttled = Some(Throttle {
        until: now.plus(throttle_wait(e.wait_hint())),
        reason: e.reply().text.clone(),
    });
    true
}

/// The log line of one recipient's try, in Postfix's shape.
fn log_outcome(
    id: MessageId,
    r: &RecipientMeta,
    age: Duration,
    status: &str,
    relay: Option<&str>,
    tls: Option<TlsReport>,
    reply: Option<SmtpReply>,
) {
    log::info!(
        "{id}: to=<{}>, relay={}, tries={}, delay={:.1}s, {}status={status}{}",
        r.address,
        relay.unwrap_or("none"),
        r.tries,
        age.as_secs_f64(),
        tls.map(|t| format!("tls={t}, ")).unwrap_or_default(),
        reply
            .map(|r| format!(" ({})", logline::clean(&r.to_string(), logline::REPLY)))
            .unwrap_or_default()
    );
}

/// Records a failed try of `r`; true when it failed for good.
fn fail(shared: &Shared, r: &mut RecipientMeta, e: &DeliveryError, age: Duration) -> bool {
    if let Some(mta) = e.remote_mta() {
        r.remote_mta = Some(mta.to_string());
    }
    r.last_error = Some(e.reply().clone());
    if e.is_permanent() || shared.policy.gives_up(r.tries, age) {
        r.status = RcptStatus::Failed;
        r.expired = !e.is_permanent();
        return true;
    }
    false
}

/// Gives up the recipients still pending, as the operator asked; returns
/// them for the failure notice.
fn operator_expire(meta: &mut MessageMeta) -> Reported {
    give_up_pending(meta)
        .into_iter()
        .map(|i| (i, Action::Failed))
        .collect()
}

/// One delay warning per recipient, once it has waited long enough.
fn delay_warnings(shared: &Shared, meta: &mut MessageMeta, age: Duration) -> Reported {
    let mut delayed = Vec::new();
    let warn_after = shared.policy.options().delay_warning;
    if !warn_after.is_zero() && age >= warn_after {
        for (i, r) in meta.recipients.iter_mut().enumerate() {
            if r.status == RcptStatus::Pending && !r.delay_warned && r.tries > 0 {
                r.delay_warned = true;
                delayed.push((i, Action::Delayed));
            }
        }
    }
    delayed
}

/// Queues the notices for the sender: failures, delays, successes.
fn send_notices(
    shared: &Shared,
    meta: &MessageMeta,
    failed: &Reported,
    delayed: &Reported,
    succeeded: &Reported,
) {
    for (reported, what) in [
        (failed, "non-delivery notification"),
        (delayed, "delay notification"),
        (succeeded, "delivery status notification"),
    ] {
        if reported.is_empty() {
            continue;
        }
        if let Some((envelope, bytes)) =
            dsn::notice(&shared.policy.options(), &shared.spool, meta, reported)
        {
            match shared.store_notice(&envelope, &bytes) {
                Ok(dsn_id) => log::info!("{}: sender {what}: {dsn_id}", meta.id),
                Err(e) => log::error!("{}: cannot queue the {what}: {e}", meta.id),
            }
        }
    }
}

/// Where this attempt delivers: the notice target for a notice, the
/// target the operator pinned the message to, or the queue's target.
fn choose_target(
    shared: &Shared,
    meta: &MessageMeta,
) -> Result<Arc<dyn DeliveryTarget>, DeliveryError> {
    if meta.is_dsn {
        return Ok(shared.bounce_target.clone());
    }
    match &meta.target {
        None => Ok(shared.target.clone()),
        // A target that cannot be built defers the message: the operator
        // chose it, so the routes are not a silent substitute.
        Some(url) => shared.pinned.get(url).map_err(|why| {
            DeliveryError::new(
                ErrorKind::Config,
                &format!("the target the message is pinned to ({url}): {why}"),
            )
        }),
    }
}

/// Runs the delivery; returns one outcome per recipient, in order.
fn deliver(
    target: &dyn DeliveryTarget,
    info: &MessageInfo,
    recipients: &[Recipient],
    body: &Body,
) -> Vec<RecipientOutcome> {
    let outcomes = target.deliver(info, recipients, body);
    complete(info.id, outcomes, recipients.len())
}

/// Makes `outcomes` one per recipient. A target that returns another
/// number has a bug: a recipient without an outcome is not known to be
/// delivered, so it is retried (a temporary failure), never counted as
/// delivered.
fn complete(id: MessageId, mut outcomes: Vec<RecipientOutcome>, n: usize) -> Vec<RecipientOutcome> {
    if outcomes.len() != n {
        log::error!(
            "{id}: the delivery target returned {} outcomes for {n} recipients \
             (a bug of the target); recipients without one are tried again later",
            outcomes.len()
        );
        outcomes.resize_with(n, || RecipientOutcome::new(Err(internal())));
    }
    outcomes
}

/// Stands in for an outcome the target failed to report, which is a bug;
/// temporary, so the recipient is retried rather than lost.
fn internal() -> DeliveryError {
    DeliveryError::new(
        crate::ErrorKind::Local,
        "internal error: no outcome recorded",
    )
}

#[cfg(test)]
mod tests {
    use super::schedule::MAX_THROTTLE_SPREAD;
    use super::*;

    fn ok() -> RecipientOutcome {
        RecipientOutcome::new(Ok(Handoff::Relayed))
    }

    #[test]
    fn a_throttled_wait_is_soon_or_the_limit_s_own_spread_a_little() {
        let soon = Duration::from_millis(500)..=Duration::from_millis(1500);
        for _ in 0..200 {
            assert!(soon.contains(&throttle_wait(None)));
            assert!(soon.contains(&throttle_wait(Some(Duration::from_millis(100)))));
            let hour = Duration::from_secs(3600);
            let w = throttle_wait(Some(hour));
            assert!(w >= hour && w <= hour + MAX_THROTTLE_SPREAD, "{w:?}");
            let five = Duration::from_secs(5);
            let w = throttle_wait(Some(five));
            assert!(w >= five && w <= five + five / 4, "{w:?}");
        }
    }

    #[test]
    fn missing_outcomes_are_temporary_failures_never_deliveries() {
        let id = MessageId::generate();
        let outcomes = complete(id, vec![ok()], 3);
        assert_eq!(outcomes.len(), 3);
        assert_eq!(outcomes[0], ok());
        for o in &outcomes[1..] {
            let e = o
                .result
                .as_ref()
                .expect_err("a recipient without an outcome was delivered");
            assert_eq!(e.severity(), Severity::Temporary);
            assert_eq!(e.reply().code, 451);
        }
    }

    #[test]
    fn extra_outcomes_are_dropped_and_a_full_set_is_kept_as_it_is() {
        let id = MessageId::generate();
        assert_eq!(complete(id, vec![ok(), ok(), ok()], 2), vec![ok(), ok()]);
        let e = RecipientOutcome::new(Err(DeliveryError::from_reply(crate::SmtpReply::with_code(
            550,
            (5, 1, 1),
            "no",
        ))));
        assert_eq!(complete(id, vec![e.clone(), ok()], 2), vec![e, ok()]);
        assert!(complete(id, Vec::new(), 0).is_empty());
    }
}
