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

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::address::Address;
use crate::delivery::{
    Body, Delivery, DeliveryError, DeliveryTarget, Handoff, MessageInfo, Severity, StatusCollector,
};
use crate::envelope::Recipient;
use crate::queue::admin::give_up_pending;
use crate::queue::dsn::{self, Action};
use crate::queue::meta::{MessageMeta, RcptStatus, Timestamp};
use crate::queue::{Job, MessageId, QueueError, Shared};

/// Panics of one message's attempts before it is quarantined: a bug hit
/// by that message alone must neither stop the queue nor loop forever.
pub(crate) const MAX_PANICS: u32 = 3;

/// Worker thread body: attempts messages until the job channel closes.
pub(crate) fn run(shared: &Shared, jobs: &Receiver<Job>) {
    while let Ok(Job { id, due }) = jobs.recv() {
        shared
            .stats
            .lag
            .record(Instant::now().saturating_duration_since(due));
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
                let wait = shared.policy.initial.min(Duration::from_secs(60));
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

/// Clears the panic count of a message whose attempt ended normally.
fn forget_panics(shared: &Shared, id: MessageId) {
    let mut panics = shared.panics.lock().unwrap_or_else(|p| p.into_inner());
    if !panics.is_empty() {
        panics.remove(&id);
    }
}

/// Defers a message whose attempt panicked, or quarantines it once it
/// has panicked [`MAX_PANICS`] times in this process.
fn contain_panic(shared: &Shared, id: MessageId, payload: &(dyn std::any::Any + Send)) {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without message".to_string());
    let count = {
        let mut panics = shared.panics.lock().unwrap_or_else(|p| p.into_inner());
        let n = panics.entry(id).or_insert(0);
        *n += 1;
        *n
    };
    if count >= MAX_PANICS {
        log::error!("{id}: attempt panicked ({what}), {count} times: quarantining the message");
        // Under its lock, so no operator command is halfway through it.
        let lock = shared.spool.lock_message(&id).ok().flatten();
        let size = lock
            .as_ref()
            .and_then(|l| shared.spool.read_locked(&id, l).ok())
            .map(|m| m.size);
        if lock.is_some() {
            shared.spool.quarantine(
                id.as_str(),
                &format!("its delivery attempts panicked {count} times: {what}"),
            );
            shared.forget(size.unwrap_or(0));
        }
        shared
            .panics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        return;
    }
    let wait = shared.policy.delay(count);
    log::error!(
        "{id}: attempt panicked ({what}), {count} of {MAX_PANICS} times; retrying in {:.1}s",
        wait.as_secs_f64()
    );
    shared.schedule(id, Timestamp::now().plus(wait));
}

/// What happened to one recipient in an attempt: delivered (through which
/// relay, when known) or an error.
type Outcome = Result<Handoff, DeliveryError>;

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

/// Reads the metadata under the lock; `None` when the message is gone.
fn read(
    shared: &Shared,
    id: &MessageId,
) -> Result<Option<(MessageMeta, crate::queue::spool::MessageLock)>, QueueError> {
    let Some(lock) = shared.spool.lock_message(id)? else {
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
    let Some((mut meta, lock)) = read(shared, &id)? else {
        return Ok(None);
    };
    if meta.expire_requested {
        // Expired by the operator at the very start of this attempt.
        let result = record(shared, &mut meta, &[], Vec::new(), Vec::new());
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
        shared.spool.remove(&id)?;
        shared.forget(meta.size);
        drop(inflight);
        return Ok(None);
    }
    let file = lock.file();
    drop(lock);

    let target: &dyn DeliveryTarget = if meta.is_dsn {
        &*shared.bounce_target
    } else {
        &*shared.target
    };
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
    let body = Body::from_open_file(file, meta.size, meta.checksum);
    let (outcomes, relays) = deliver(target, &info, &recipients, &body);

    let Some((mut meta, lock)) = read(shared, &id)? else {
        log::info!("{id}: removed during the attempt; its results are dropped");
        return Ok(None);
    };
    let result = record(shared, &mut meta, &pending, outcomes, relays);
    drop(inflight);
    drop(lock);
    result
}

/// Applies the outcomes to the metadata, sends the failure notice and
/// writes (or removes) the message. Runs under the message lock.
fn record(
    shared: &Shared,
    meta: &mut MessageMeta,
    pending: &[usize],
    outcomes: Vec<Outcome>,
    relays: Vec<Option<String>>,
) -> Result<Option<Timestamp>, QueueError> {
    let id = meta.id;
    let now = Timestamp::now();
    meta.last_attempt = Some(now);
    let age = meta.age(now);
    let mut failed = Vec::new();
    let mut succeeded = Vec::new();
    let mut throttled = false;
    for ((&i, outcome), relay) in pending.iter().zip(outcomes).zip(relays) {
        let Some(r) = meta
            .recipients
            .get_mut(i)
            .filter(|r| r.status == RcptStatus::Pending)
        else {
            continue;
        };
        if let Err(e) = &outcome {
            if e.severity == Severity::Throttled {
                // Not tried: no try counted, no error recorded.
                log::debug!("{id}: to=<{}>, waiting: {}", r.address, e.reply);
                throttled = true;
                continue;
            }
        }
        r.tries += 1;
        let (status, relay, reply) = match outcome {
            Ok(handoff) => {
                r.status = RcptStatus::Delivered;
                match handoff {
                    Handoff::Delivered => succeeded.push((i, Action::Delivered)),
                    Handoff::Relayed => succeeded.push((i, Action::Relayed)),
                    Handoff::Passed => {}
                }
                ("sent", relay, None)
            }
            Err(e) => {
                if e.remote_mta.is_some() {
                    r.remote_mta = e.remote_mta.clone();
                }
                r.last_error = Some(e.reply.clone());
                let status = if e.is_permanent() || shared.policy.gives_up(r.tries, age) {
                    r.status = RcptStatus::Failed;
                    r.expired = !e.is_permanent();
                    failed.push((i, Action::Failed));
                    "bounced"
                } else {
                    "deferred"
                };
                (status, relay.or(e.remote_mta), Some(e.reply))
            }
        };
        log::info!(
            "{id}: to=<{}>, relay={}, tries={}, delay={:.1}s, status={status}{}",
            r.address,
            relay.as_deref().unwrap_or("none"),
            r.tries,
            age.as_secs_f64(),
            reply.map(|r| format!(" ({r})")).unwrap_or_default()
        );
    }

    // An expire the operator issued during the attempt, applied after its
    // results: what it delivered stays delivered and is not bounced.
    if meta.expire_requested {
        for i in give_up_pending(meta) {
            let r = &meta.recipients[i];
            log::info!(
                "{id}: to=<{}>, relay=none, tries={}, delay={:.1}s, status=bounced (expired by the operator)",
                r.address,
                r.tries,
                age.as_secs_f64()
            );
            failed.push((i, Action::Failed));
        }
    }

    // One delay warning per recipient, once it has waited long enough.
    let mut delayed = Vec::new();
    let warn_after = shared.config.queue.delay_warning;
    if !warn_after.is_zero() && age >= warn_after {
        for (i, r) in meta.recipients.iter_mut().enumerate() {
            if r.status == RcptStatus::Pending && !r.delay_warned && r.tries > 0 {
                r.delay_warned = true;
                delayed.push((i, Action::Delayed));
            }
        }
    }

    // Notices are made durable before the outcomes are recorded: a crash
    // in between repeats a notice rather than losing it.
    for (reported, what) in [
        (&failed, "non-delivery notification"),
        (&delayed, "delay notification"),
        (&succeeded, "delivery status notification"),
    ] {
        if reported.is_empty() {
            continue;
        }
        if let Some((envelope, bytes)) = dsn::notice(&shared.config, &shared.spool, meta, reported)
        {
            match shared.store_notice(&envelope, &bytes) {
                Ok(dsn_id) => log::info!("{id}: sender {what}: {dsn_id}"),
                Err(e) => log::error!("{id}: cannot queue the {what}: {e}"),
            }
        }
    }

    if !meta.has_pending() {
        shared.spool.remove(&id)?;
        shared.forget(meta.size);
        return Ok(None);
    }
    let tries = meta.pending().map(|r| r.tries).min().unwrap_or(1);
    meta.next_attempt = now.plus(shared.policy.delay(tries));
    if throttled {
        // Back soon, spread out so the waiting messages do not all come
        // back at the same instant.
        let soon = now.plus(Duration::from_millis(500 + fastrand::u64(..1000)));
        meta.next_attempt = meta.next_attempt.min(soon);
    }
    shared.spool.write_meta(meta)?;
    // Held while the attempt ran: stays out of the schedule until released.
    Ok((!meta.hold).then_some(meta.next_attempt))
}

/// Runs the transaction; returns one outcome per recipient, in order.
fn deliver(
    target: &dyn DeliveryTarget,
    info: &MessageInfo,
    recipients: &[Recipient],
    body: &Body,
) -> (Vec<Outcome>, Vec<Option<String>>) {
    let mut delivery = match target.start(info) {
        Ok(d) => d,
        Err(e) => {
            return (
                recipients.iter().map(|_| Err(e.clone())).collect(),
                vec![None; recipients.len()],
            )
        }
    };
    let mut outcomes: Vec<Option<Outcome>> = vec![None; recipients.len()];
    let mut accepted = Vec::new();
    for (i, r) in recipients.iter().enumerate() {
        match delivery.add_rcpt(r) {
            Ok(()) => accepted.push(i),
            Err(e) => outcomes[i] = Some(Err(e)),
        }
    }
    // The server that answered for each recipient, for the log lines.
    let relays = |d: &dyn Delivery| -> Vec<Option<String>> {
        recipients.iter().map(|r| d.relay(&r.address)).collect()
    };
    if accepted.is_empty() {
        let relays = relays(&*delivery);
        delivery.abort();
        return (finish(outcomes), relays);
    }

    let mut per_recipient = None;
    if let Some(partial) = delivery.as_partial() {
        let mut collector = Collector::default();
        partial.body_per_recipient(body, &mut collector);
        per_recipient = Some(collector.0);
    }
    let body_result = match &per_recipient {
        Some(_) => Ok(()),
        None => delivery.body(body),
    };
    // Recipients still in the running after the body.
    let mut ok = Vec::new();
    for &i in &accepted {
        let result = match (&body_result, &mut per_recipient) {
            (Err(e), _) => Err(e.clone()),
            (Ok(()), Some(map)) => map.remove(&recipients[i].address).unwrap_or(Ok(())),
            (Ok(()), None) => Ok(()),
        };
        match result {
            Ok(()) => ok.push(i),
            Err(e) => outcomes[i] = Some(Err(e)),
        }
    }
    let relays = relays(&*delivery);
    if ok.is_empty() {
        delivery.abort();
    } else {
        let handoffs: Vec<Handoff> = ok
            .iter()
            .map(|&i| delivery.handoff(&recipients[i].address))
            .collect();
        match delivery.commit() {
            Ok(()) => {
                for (&i, h) in ok.iter().zip(handoffs) {
                    outcomes[i] = Some(Ok(h));
                }
            }
            Err(e) => {
                for &i in &ok {
                    outcomes[i] = Some(Err(e.clone()));
                }
            }
        }
    }
    (finish(outcomes), relays)
}

fn finish(outcomes: Vec<Option<Outcome>>) -> Vec<Outcome> {
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err(internal())))
        .collect()
}

/// Stands in for an outcome the code above failed to set, which would be
/// a bug; temporary, so the recipient is retried rather than lost.
fn internal() -> DeliveryError {
    DeliveryError::temporary(451, (4, 3, 0), "internal error: no outcome recorded")
}

#[derive(Default)]
struct Collector(HashMap<Address, Result<(), DeliveryError>>);

impl StatusCollector for Collector {
    fn set_status(&mut self, rcpt: &Address, result: Result<(), DeliveryError>) {
        self.0.insert(rcpt.clone(), result);
    }
}
