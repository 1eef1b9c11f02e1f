//! The operator's commands on queued messages: list, show, flush, hold,
//! release, delete and expire.
//!
//! Each works either inside the running daemon (it then also updates the
//! schedule; the spool counts every change) or directly on a spool no
//! daemon is running on. In the daemon, each reads the spool itself, so
//! during the start-up load it sees and acts on every message, loaded or
//! not: a message it changes is then the command's (the load leaves it
//! alone), and whatever it makes due is scheduled here, not found in the
//! schedule. Either way it takes the message's lock, so it never races
//! an attempt's bookkeeping: the worker re-reads the metadata after its
//! transaction, so a delete or hold made meanwhile stands.

use std::sync::Arc;

use crate::queue::meta::{MessageMeta, RcptStatus, Timestamp};
use crate::queue::options::QueueOptions;
use crate::queue::spool::{io_error, MessageLock, Spool};
use crate::queue::timer::Command;
use crate::queue::{dsn, MessageId, QueueError, Shared};
use crate::smtp::reply::SmtpReply;

mod bulk;
mod scan;
mod select;

pub use scan::Messages;
pub use select::{BulkOutcome, Filter, IncomingFile, Selection};

/// Largest header `show` prints.
const MAX_SHOWN_HEADER: usize = 64 * 1024;

/// Management operations on one spool.
pub struct Admin<'a> {
    spool: &'a Spool,
    /// For notices: in the daemon, its settings in force when the
    /// command started (a reload may have changed them since it opened).
    options: Arc<QueueOptions>,
    shared: Option<&'a Shared>,
}

impl<'a> Admin<'a> {
    pub(crate) fn daemon(shared: &'a Shared) -> Admin<'a> {
        Admin {
            spool: &shared.spool,
            options: shared.policy.options(),
            shared: Some(shared),
        }
    }

    /// Counts recipients the operator expired in the running daemon's
    /// metrics (none to count without a daemon).
    fn count_expired(&self, n: usize) {
        if let Some(shared) = self.shared {
            shared.stats.expired_by_operator(n);
        }
    }

    /// Operations on a spool that no daemon is running on.
    pub fn direct(spool: &'a Spool, options: &'a QueueOptions) -> Admin<'a> {
        Admin {
            spool,
            options: Arc::new(options.clone()),
            shared: None,
        }
    }

    /// The ids of every queued message, oldest first.
    pub fn list_ids(&self) -> Result<Vec<MessageId>, QueueError> {
        let dir = self.spool.queue_dir();
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
            let name = entry.map_err(io_error(dir))?.file_name();
            if let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".msg"))
                .and_then(|stem| stem.parse::<MessageId>().ok())
            {
                out.push(id);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every queued message, oldest first. Holds them all: for the whole
    /// queue, [`Admin::messages`] reads one at a time.
    pub fn list(&self) -> Result<Vec<MessageMeta>, QueueError> {
        let mut out = self.messages()?.collect::<Result<Vec<_>, _>>()?;
        out.sort_by_key(|m| m.id);
        Ok(out)
    }

    /// Every queued message, one at a time, in directory order.
    pub fn messages(&self) -> Result<Messages<'_>, QueueError> {
        Messages::open(self.spool)
    }

    /// The messages a selection names: every message matching its filter
    /// (`all`), or the ids given that match it. An id given that is not
    /// queued is a failure; one that does not match the filter is left out.
    pub fn select(&self, sel: &Selection) -> Result<BulkOutcome, QueueError> {
        self.select_ids(sel).map(|(ids, mut out)| {
            out.done = ids.len();
            out
        })
    }

    fn select_ids(&self, sel: &Selection) -> Result<(Vec<MessageId>, BulkOutcome), QueueError> {
        let now = Timestamp::now();
        let mut out = BulkOutcome::default();
        if sel.all && sel.filter.is_empty() {
            // Every message: the directory's names say which, without
            // reading each message's metadata twice.
            return Ok((self.list_ids()?, out));
        }
        if sel.all {
            // Only the ids are kept, not every message's metadata.
            let mut ids = Vec::new();
            for meta in self.messages()? {
                let meta = meta?;
                if sel.filter.matches(&meta, now) {
                    ids.push(meta.id);
                }
            }
            ids.sort();
            return Ok((ids, out));
        }
        if sel.filter.is_empty() {
            return Ok((sel.ids.clone(), out));
        }
        let mut ids = Vec::new();
        for &id in &sel.ids {
            match self.read(id) {
                Ok(m) if sel.filter.matches(&m, now) => ids.push(id),
                Ok(_) => {}
                Err(e) => out.fail(id, e),
            }
        }
        Ok((ids, out))
    }

    /// The files waiting in `incoming/` for pickup (not those still being
    /// written), by name.
    pub fn incoming(&self) -> Result<Vec<IncomingFile>, QueueError> {
        let dir = self.spool.incoming_dir();
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
            let entry = entry.map_err(io_error(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            // Picked up meanwhile: not an error.
            let Ok(md) = entry.metadata() else { continue };
            if !md.is_file() {
                continue;
            }
            out.push(IncomingFile {
                name,
                size: md.len(),
                modified: md
                    .modified()
                    .map(Timestamp::from_system)
                    .unwrap_or(Timestamp(0)),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// A whole message as received, its metadata first.
    pub fn message(&self, id: MessageId) -> Result<(MessageMeta, Vec<u8>), QueueError> {
        let meta = self.read(id)?;
        let bytes = self
            .spool
            .read_message(&meta, u64::MAX)?
            .unwrap_or_default();
        Ok((meta, bytes))
    }

    /// A message's metadata and header.
    pub fn show(&self, id: MessageId) -> Result<(MessageMeta, Vec<u8>), QueueError> {
        let meta = self.read(id)?;
        let header = self.spool.read_header(&meta, MAX_SHOWN_HEADER)?;
        Ok((meta, header))
    }

    /// Makes messages due now (all when `ids` is empty). Held ones stay held.
    pub fn flush(&self, ids: &[MessageId]) -> Result<(), QueueError> {
        if ids.is_empty() {
            match self.shared {
                Some(s) => s.flush_all(),
                None => {
                    for id in self.list_ids()? {
                        // Gone meanwhile: nothing to flush.
                        let _ = self.update(id, |m| m.next_attempt = Timestamp::now());
                    }
                }
            }
            return Ok(());
        }
        for &id in ids {
            let mut held = false;
            self.update(id, |m| {
                m.next_attempt = Timestamp::now();
                held = m.hold;
            })?;
            if let (Some(s), false) = (self.shared, held) {
                s.schedule(id, Timestamp::now());
            }
        }
        Ok(())
    }

    /// Stops delivery of a message until it is released.
    pub fn hold(&self, id: MessageId) -> Result<(), QueueError> {
        self.update(id, |m| {
            if !m.hold {
                m.hold = true;
                m.held_since = Some(Timestamp::now());
            }
        })?;
        if let Some(s) = self.shared {
            let _ = s.timer.send(Command::Remove(id));
        }
        log::info!("{id}: held by the operator");
        Ok(())
    }

    /// Resumes delivery of a held message, at once. Time spent held does
    /// not count towards `max_lifetime`.
    pub fn release(&self, id: MessageId) -> Result<(), QueueError> {
        let now = Timestamp::now();
        self.update(id, |m| release_meta(m, now))?;
        if let Some(s) = self.shared {
            s.schedule(id, now);
        }
        log::info!("{id}: released by the operator");
        Ok(())
    }

    /// Removes a message without telling the sender.
    pub fn delete(&self, id: MessageId) -> Result<(), QueueError> {
        let (meta, _lock) = self.lock(id)?;
        self.spool.remove(&id)?;
        self.forget(&meta);
        log::info!("{id}: deleted by the operator");
        Ok(())
    }

    /// Gives up a message now: every pending recipient fails and the
    /// sender gets a failure notice. During an attempt the decision is
    /// recorded and carried out by the attempt once its results are in,
    /// so a recipient it delivers is neither failed nor bounced.
    pub fn expire(&self, id: MessageId) -> Result<(), QueueError> {
        let (mut meta, _lock) = self.lock(id)?;
        if let Some(s) = self.shared {
            // Under the message lock: the worker takes it to record its
            // results and leaves the in-flight set before releasing it,
            // so it re-reads this flag or has not started yet.
            let inflight = s
                .inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&id);
            if inflight {
                meta.expire_requested = true;
                self.spool.write_meta(&meta)?;
                log::info!("{id}: expired by the operator; applied when the running attempt ends");
                return Ok(());
            }
        }
        let failed = give_up_pending(&mut meta);
        self.count_expired(failed.len());
        if let Some((envelope, bytes)) =
            dsn::failure_notice(&self.options, self.spool, &meta, &failed)
        {
            let stored = match self.shared {
                Some(s) => s.store_notice(&envelope, &bytes),
                None => self.spool.create_message().and_then(|mut w| {
                    w.copy_from(&mut &bytes[..])?;
                    super::stage::sign_notice(self.spool, &self.options.dkim, &mut w)?;
                    self.spool.store(w, &envelope, true).map(|m| m.id)
                }),
            };
            // Without its notice the message must stay, or the sender
            // would never hear of it.
            let dsn_id = stored?;
            log::info!("{id}: expired by the operator; notice {dsn_id}");
        } else {
            log::info!("{id}: expired by the operator");
        }
        self.spool.remove(&id)?;
        self.forget(&meta);
        Ok(())
    }

    /// Takes a removed message off the schedule (the spool stopped
    /// counting it).
    fn forget(&self, meta: &MessageMeta) {
        if let Some(s) = self.shared {
            let _ = s.timer.send(Command::Remove(meta.id));
        }
    }

    fn read(&self, id: MessageId) -> Result<MessageMeta, QueueError> {
        self.spool.read_meta(&id).map_err(|e| match e {
            QueueError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                QueueError::UnknownId(id)
            }
            e => e,
        })
    }

    fn lock(&self, id: MessageId) -> Result<(MessageMeta, MessageLock), QueueError> {
        let lock = self
            .spool
            .lock_message(&id)?
            .ok_or(QueueError::UnknownId(id))?;
        match self.spool.read_locked(&id, &lock) {
            Ok(meta) => Ok((meta, lock)),
            Err(QueueError::Corrupt { path, reason }) => {
                // As an attempt would: out of the queue, kept for a look.
                // Held, it would otherwise stay there, damaged, for good.
                self.spool.quarantine(id.as_str(), &reason);
                if let Some(s) = self.shared {
                    let _ = s.timer.send(Command::Remove(id));
                }
                Err(QueueError::Corrupt { path, reason })
            }
            Err(e) => Err(e),
        }
    }

    /// Changes a message's metadata under its lock.
    fn update(
        &self,
        id: MessageId,
        change: impl FnOnce(&mut MessageMeta),
    ) -> Result<(), QueueError> {
        let (mut meta, _lock) = self.lock(id)?;
        change(&mut meta);
        self.spool.write_meta(&meta)
    }
}

/// A released message's metadata: due at `now`, the time it was held
/// added to the time that does not count towards its lifetime.
fn release_meta(m: &mut MessageMeta, now: Timestamp) {
    if let Some(since) = m.held_since.take() {
        m.held_ms = m
            .held_ms
            .saturating_add(now.since(since).as_millis() as u64);
    }
    m.hold = false;
    m.next_attempt = now;
}

/// Fails every pending recipient of a message the operator expired,
/// logging a line for each; returns their indexes, for the failure notice.
pub(crate) fn give_up_pending(meta: &mut MessageMeta) -> Vec<usize> {
    let now = Timestamp::now();
    meta.last_attempt.get_or_insert(now);
    meta.expire_requested = false;
    let age = meta.age(now);
    let mut failed = Vec::new();
    for (i, r) in meta.recipients.iter_mut().enumerate() {
        if r.status == RcptStatus::Pending {
            log::info!(
                "{}: to=<{}>, relay=none, tries={}, delay={:.1}s, status=bounced (expired by the operator)",
                meta.id,
                r.address,
                r.tries,
                age.as_secs_f64()
            );
            r.status = RcptStatus::Failed;
            r.expired = true;
            r.throttled = None;
            r.last_error.get_or_insert_with(|| {
                SmtpReply::with_code(
                    554,
                    (5, 4, 7),
                    "delivery time expired: given up by the operator",
                )
            });
            failed.push(i);
        }
    }
    failed
}
