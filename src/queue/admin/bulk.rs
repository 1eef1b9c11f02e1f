//! Commands on many messages at once, in batches: each batch locked,
//! changed, made durable with a few syncs for all of it, then unlocked.

use super::select::{batch_size, BulkOutcome, Selection};
use super::*;
use crate::queue::spool::MessageWriter;

impl Admin<'_> {
    /// Holds the selected messages; see [`Admin::hold`].
    pub fn hold_selected(&self, sel: &Selection) -> Result<BulkOutcome, QueueError> {
        let now = Timestamp::now();
        self.update_selected(
            sel,
            |m| {
                if !m.hold {
                    m.hold = true;
                    m.held_since = Some(now);
                }
                true
            },
            |id| {
                if let Some(s) = self.shared {
                    let _ = s.timer.send(Command::Remove(id));
                }
                log::info!("{id}: held by the operator");
            },
        )
    }

    /// Releases the selected messages; see [`Admin::release`].
    pub fn release_selected(&self, sel: &Selection) -> Result<BulkOutcome, QueueError> {
        let now = Timestamp::now();
        self.update_selected(
            sel,
            |m| {
                release_meta(m, now);
                true
            },
            |id| {
                if let Some(s) = self.shared {
                    s.schedule(id, now);
                }
                log::info!("{id}: released by the operator");
            },
        )
    }

    /// Makes the selected messages due now; held ones stay held and are
    /// not counted. An empty selection (no ids, not `all`) is every message.
    pub fn flush_selected(&self, sel: &Selection) -> Result<BulkOutcome, QueueError> {
        let mut sel = sel.clone();
        if sel.ids.is_empty() {
            sel.all = true;
        }
        let now = Timestamp::now();
        self.update_selected(
            &sel,
            |m| {
                if m.hold {
                    return false;
                }
                m.next_attempt = now;
                true
            },
            |id| {
                if let Some(s) = self.shared {
                    s.schedule(id, now);
                }
            },
        )
    }

    /// Sends the selected messages through routing again, now: pinned to
    /// `target` (a URL) until they leave the queue, or, with `None`, back
    /// to the routes (Postfix's `postsuper -r`; here routing is decided
    /// at every attempt, so nothing else needs redoing). Held ones stay
    /// held and are not counted. Tries and schedules are kept.
    pub fn requeue_selected(
        &self,
        sel: &Selection,
        target: Option<&str>,
    ) -> Result<BulkOutcome, QueueError> {
        let now = Timestamp::now();
        let to = target.map(|t| format!(" to {t}")).unwrap_or_default();
        self.update_selected(
            sel,
            |m| {
                if m.hold {
                    return false;
                }
                m.target = target.map(str::to_string);
                m.next_attempt = now;
                true
            },
            |id| {
                if let Some(s) = self.shared {
                    s.schedule(id, now);
                }
                log::info!("{id}: requeued by the operator{to}");
            },
        )
    }

    /// Deletes the selected messages: one directory fsync per batch.
    pub fn delete_selected(&self, sel: &Selection) -> Result<BulkOutcome, QueueError> {
        let (ids, mut out) = self.select_ids(sel)?;
        for chunk in ids.chunks(batch_size()) {
            let mut locked = Vec::with_capacity(chunk.len());
            for &id in chunk {
                match self.lock(id) {
                    Ok(l) => locked.push(l),
                    // Gone since it was listed (delivered): not a failure.
                    Err(QueueError::UnknownId(_)) if sel.all => {}
                    Err(e) => out.fail(id, e),
                }
            }
            let gone: Vec<MessageId> = locked.iter().map(|(m, _)| m.id).collect();
            let results = self.spool.remove_many(&gone);
            for ((meta, lock), result) in locked.into_iter().zip(results) {
                drop(lock);
                match result {
                    Ok(()) => {
                        self.forget(&meta);
                        log::info!("{}: deleted by the operator", meta.id);
                        out.done += 1;
                    }
                    Err(e) => out.fail(meta.id, e),
                }
            }
        }
        Ok(out)
    }

    /// Expires the selected messages in batches: each batch locked, its
    /// notices stored with two syncs in all, then the messages removed
    /// with one directory fsync. A message with an attempt running is
    /// marked, as [`Admin::expire`] does.
    pub fn expire_selected(&self, sel: &Selection) -> Result<BulkOutcome, QueueError> {
        let (ids, mut out) = self.select_ids(sel)?;
        for chunk in ids.chunks(batch_size()) {
            let batch = self.stage_expiry(chunk, sel.all, &mut out);
            self.mark_running_expired(batch.running, &mut out);
            let stored = if batch.notices.is_empty() {
                Vec::new()
            } else {
                self.spool.store_many(batch.notices, true)
            };
            let removing = self.keep_unnoticed(batch.giving_up, &stored, &mut out);
            let gone: Vec<MessageId> = removing.iter().map(|(m, _)| m.id).collect();
            for ((meta, lock), result) in removing.into_iter().zip(self.spool.remove_many(&gone)) {
                drop(lock);
                match result {
                    Ok(()) => {
                        self.forget(&meta);
                        out.done += 1;
                    }
                    Err(e) => out.fail(meta.id, e),
                }
            }
        }
        Ok(out)
    }

    /// Locks a batch to expire: messages with an attempt running are
    /// set apart to be marked; the others give up their pending
    /// recipients, and their notices are written (not yet synced).
    fn stage_expiry(&self, chunk: &[MessageId], all: bool, out: &mut BulkOutcome) -> ExpiryBatch {
        let mut batch = ExpiryBatch::default();
        for &id in chunk {
            let (mut meta, lock) = match self.lock(id) {
                Ok(l) => l,
                // Gone since it was listed (delivered): not a failure.
                Err(QueueError::UnknownId(_)) if all => continue,
                Err(e) => {
                    out.fail(id, e);
                    continue;
                }
            };
            if self.is_inflight(id) {
                meta.expire_requested = true;
                batch.running.push((meta, lock));
                continue;
            }
            let failed = give_up_pending(&mut meta);
            self.count_expired(failed.len());
            let notice = match dsn::failure_notice(&self.options, self.spool, &meta, &failed) {
                Some((envelope, bytes)) => match self.spool.create_message().and_then(|mut w| {
                    w.copy_from(&mut &bytes[..])?;
                    super::super::stage::sign_notice(self.spool, &self.options.dkim, &mut w)?;
                    Ok(w)
                }) {
                    Ok(w) => {
                        batch.notices.push((w, envelope));
                        Some(batch.notices.len() - 1)
                    }
                    Err(e) => {
                        out.fail(id, e);
                        continue;
                    }
                },
                None => None,
            };
            batch.giving_up.push((meta, lock, notice));
        }
        batch
    }

    /// Marks messages whose attempt is running: the worker expires them
    /// when it ends, as [`Admin::expire`] does.
    fn mark_running_expired(
        &self,
        running: Vec<(MessageMeta, MessageLock)>,
        out: &mut BulkOutcome,
    ) {
        let (metas, locks): (Vec<MessageMeta>, Vec<MessageLock>) = running.into_iter().unzip();
        for (meta, result) in metas.iter().zip(self.spool.write_metas(&metas)) {
            match result {
                Ok(()) => {
                    log::info!(
                        "{}: expired by the operator; applied when the running attempt ends",
                        meta.id
                    );
                    out.done += 1;
                }
                Err(e) => out.fail(meta.id, e),
            }
        }
        drop(locks);
    }

    /// The messages that may leave: without its notice a message must
    /// stay, or the sender would never hear of it.
    fn keep_unnoticed(
        &self,
        giving_up: Vec<(MessageMeta, MessageLock, Option<usize>)>,
        stored: &[Result<MessageMeta, QueueError>],
        out: &mut BulkOutcome,
    ) -> Vec<(MessageMeta, MessageLock)> {
        let mut removing = Vec::new();
        for (meta, lock, notice) in giving_up {
            match notice.map(|i| &stored[i]) {
                Some(Err(e)) => out.fail(
                    meta.id,
                    QueueError::Io {
                        path: self.spool.queue_dir().to_path_buf(),
                        source: std::io::Error::other(e.to_string()),
                    },
                ),
                Some(Ok(n)) => {
                    if let Some(s) = self.shared {
                        s.stored(n);
                    }
                    log::info!("{}: expired by the operator; notice {}", meta.id, n.id);
                    removing.push((meta, lock));
                }
                None => {
                    log::info!("{}: expired by the operator", meta.id);
                    removing.push((meta, lock));
                }
            }
        }
        removing
    }

    fn is_inflight(&self, id: MessageId) -> bool {
        self.shared.is_some_and(|s| {
            s.inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&id)
        })
    }

    /// Changes the metadata of the selected messages in batches: each
    /// batch locked, changed, written with two syncs in all, then
    /// unlocked; `after` runs for each message once its change is
    /// durable. `change` returns false to leave a message as it is (it is
    /// then not counted).
    fn update_selected(
        &self,
        sel: &Selection,
        change: impl Fn(&mut MessageMeta) -> bool,
        after: impl Fn(MessageId),
    ) -> Result<BulkOutcome, QueueError> {
        let (ids, mut out) = self.select_ids(sel)?;
        for chunk in ids.chunks(batch_size()) {
            let mut metas = Vec::with_capacity(chunk.len());
            let mut locks = Vec::with_capacity(chunk.len());
            for &id in chunk {
                match self.lock(id) {
                    Ok((mut meta, lock)) => {
                        if change(&mut meta) {
                            metas.push(meta);
                            locks.push(lock);
                        }
                    }
                    Err(QueueError::UnknownId(_)) if sel.all => {}
                    Err(e) => out.fail(id, e),
                }
            }
            let results = self.spool.write_metas(&metas);
            drop(locks);
            for (meta, result) in metas.iter().zip(results) {
                match result {
                    Ok(()) => {
                        after(meta.id);
                        out.done += 1;
                    }
                    Err(e) => out.fail(meta.id, e),
                }
            }
        }
        Ok(out)
    }
}

/// One batch of `expire`, locked.
#[derive(Default)]
struct ExpiryBatch {
    /// Messages with an attempt running: marked, not removed.
    running: Vec<(MessageMeta, MessageLock)>,
    /// Messages giving up, with the index of their notice in `notices`.
    giving_up: Vec<(MessageMeta, MessageLock, Option<usize>)>,
    notices: Vec<(MessageWriter, crate::envelope::Envelope)>,
}
