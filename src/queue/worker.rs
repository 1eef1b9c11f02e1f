//! One delivery attempt of one message: lock it, run the transaction
//! against the target, record each recipient's outcome, send notices, and
//! either reschedule the message or remove it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crossbeam_channel::Receiver;

use crate::address::Address;
use crate::delivery::{
    Body, DeliveryError, DeliveryTarget, MessageInfo, Severity, StatusCollector,
};
use crate::envelope::Recipient;
use crate::queue::dsn::{self, Action, Notice, Reported};
use crate::queue::meta::{MessageMeta, RcptStatus, Timestamp};
use crate::queue::{MessageId, QueueError, Shared};

/// Largest original header a notice quotes.
const MAX_QUOTED_HEADER: usize = 64 * 1024;

/// Worker thread body: attempts messages until the job channel closes.
pub(crate) fn run(shared: &Shared, jobs: &Receiver<MessageId>) {
    while let Ok(id) = jobs.recv() {
        if shared.stopping.load(Ordering::SeqCst) {
            // Still on disk: the next start schedules it again.
            continue;
        }
        match attempt(shared, id) {
            Ok(Some(next)) => shared.schedule(id, next),
            Ok(None) => {}
            Err(e) => {
                // Typically a full disk: the results of this attempt could
                // not be written, so it will be repeated later.
                let wait = shared.policy.initial.min(Duration::from_secs(60));
                log::error!(
                    "{id}: attempt not recorded, retrying in {}s: {e}",
                    wait.as_secs()
                );
                shared.schedule(id, Timestamp::now().plus(wait));
            }
        }
    }
}

/// What happened to one recipient in an attempt: delivered (through which
/// relay, when known) or an error.
type Outcome = Result<Option<String>, DeliveryError>;

/// Runs one attempt; returns when to try again, or `None` when the
/// message is finished (or held, or gone).
fn attempt(shared: &Shared, id: MessageId) -> Result<Option<Timestamp>, QueueError> {
    let spool = &shared.spool;
    let Some(_lock) = spool.lock_message(&id)? else {
        return Ok(None);
    };
    let mut meta = match spool.read_meta(&id) {
        Ok(m) => m,
        Err(QueueError::Corrupt { reason, .. }) => {
            spool.quarantine(id.as_str(), &reason);
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    if meta.hold {
        return Ok(None);
    }
    let pending: Vec<usize> = (0..meta.recipients.len())
        .filter(|&i| meta.recipients[i].status == RcptStatus::Pending)
        .collect();
    if pending.is_empty() {
        spool.remove(&id)?;
        return Ok(None);
    }

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
    let body = Body::from_file(spool.message_path(&id), meta.size);
    let outcomes = deliver(target, &info, &recipients, &body);

    let now = Timestamp::now();
    meta.last_attempt = Some(now);
    let age = now.since(meta.arrival);
    let mut failed = Vec::new();
    let mut throttled = false;
    for (&i, outcome) in pending.iter().zip(outcomes) {
        let r = &mut meta.recipients[i];
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
            Ok(relay) => {
                r.status = RcptStatus::Delivered;
                ("sent", relay, None)
            }
            Err(e) => {
                if e.remote_mta.is_some() {
                    r.remote_mta = e.remote_mta.clone();
                }
                r.last_error = Some(e.reply.clone());
                let status = if e.is_permanent() || shared.policy.gives_up(r.tries, age) {
                    r.status = RcptStatus::Failed;
                    failed.push(i);
                    "bounced"
                } else {
                    "deferred"
                };
                (status, e.remote_mta, Some(e.reply))
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

    // The notice is made durable before the failures are recorded: a
    // crash in between repeats the notice rather than losing it.
    if !failed.is_empty() {
        notify_failures(shared, &meta, &failed);
    }

    if meta.has_pending() {
        let tries = meta.pending().map(|r| r.tries).min().unwrap_or(1);
        meta.next_attempt = now.plus(shared.policy.delay(tries));
        if throttled {
            // Back soon, spread out so the waiting messages do not all
            // come back at the same instant.
            let soon = now.plus(Duration::from_millis(500 + fastrand::u64(..1000)));
            meta.next_attempt = meta.next_attempt.min(soon);
        }
        spool.write_meta(&meta)?;
        Ok(Some(meta.next_attempt))
    } else {
        spool.remove(&id)?;
        Ok(None)
    }
}

/// Runs the transaction; returns one outcome per recipient, in order.
fn deliver(
    target: &dyn DeliveryTarget,
    info: &MessageInfo,
    recipients: &[Recipient],
    body: &Body,
) -> Vec<Outcome> {
    let mut delivery = match target.start(info) {
        Ok(d) => d,
        Err(e) => return recipients.iter().map(|_| Err(e.clone())).collect(),
    };
    let mut outcomes: Vec<Option<Outcome>> = vec![None; recipients.len()];
    let mut accepted = Vec::new();
    for (i, r) in recipients.iter().enumerate() {
        match delivery.add_rcpt(r) {
            Ok(()) => accepted.push(i),
            Err(e) => outcomes[i] = Some(Err(e)),
        }
    }
    if accepted.is_empty() {
        delivery.abort();
        return outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(internal())))
            .collect();
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
    if ok.is_empty() {
        delivery.abort();
    } else {
        let relays: Vec<Option<String>> = ok
            .iter()
            .map(|&i| delivery.relay(&recipients[i].address))
            .collect();
        match delivery.commit() {
            Ok(()) => {
                for (&i, relay) in ok.iter().zip(relays) {
                    outcomes[i] = Some(Ok(relay));
                }
            }
            Err(e) => {
                for &i in &ok {
                    outcomes[i] = Some(Err(e.clone()));
                }
            }
        }
    }
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

/// Queues a failure notice for the recipients at `failed`, unless the
/// sender is null, the message is itself a notice, or nobody asked for one.
fn notify_failures(shared: &Shared, meta: &MessageMeta, failed: &[usize]) {
    if meta.is_dsn {
        for &i in failed {
            log::warn!(
                "{}: notice to <{}> could not be delivered; dropped",
                meta.id,
                meta.recipients[i].address
            );
        }
        return;
    }
    if meta.sender.is_none() || !shared.config.bounce.enabled {
        return;
    }
    let last_attempt = meta.last_attempt.map(Timestamp::to_system);
    let reported: Vec<Reported<'_>> = failed
        .iter()
        .map(|&i| &meta.recipients[i])
        .filter(|r| r.notify().failure)
        .map(|r| Reported {
            rcpt: r,
            action: Action::Failed,
            reply: r.last_error.as_ref(),
            last_attempt,
        })
        .collect();
    if reported.is_empty() {
        return;
    }
    let header = shared
        .spool
        .read_header(&meta.id, MAX_QUOTED_HEADER)
        .unwrap_or_else(|e| {
            log::warn!("{}: cannot read the header for the notice: {e}", meta.id);
            Vec::new()
        });
    let from = shared.config.bounce_from();
    let unique = MessageId::generate().to_string();
    let notice = Notice {
        reporting_mta: &shared.config.hostname,
        from: &from,
        original: meta,
        original_header: &header,
        recipients: reported,
        now: std::time::SystemTime::now(),
        unique: &unique,
    };
    let Some((envelope, bytes)) = dsn::build(&notice) else {
        return;
    };
    let stored = shared.spool.create_message().and_then(|mut w| {
        w.copy_from(&mut &bytes[..])?;
        shared.store(w, &envelope, true)
    });
    match stored {
        Ok(dsn_id) => log::info!("{}: sender non-delivery notification: {dsn_id}", meta.id),
        Err(e) => log::error!(
            "{}: cannot queue the non-delivery notification: {e}",
            meta.id
        ),
    }
}
