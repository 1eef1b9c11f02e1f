//! Commands on many messages at once, in batches: each batch locked,
//! changed, made durable with a few syncs for all of it, then unlocked.

use super::select::{batch_size, BulkOutcome, Selection};
use super::*;

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
                    let _ = s.timer.send(Command::Flush(Some(id)));
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
                    let _ = s.timer.send(Command::Flush(Some(id)));
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
            let mut marked = Vec::new();
            let mut marked_locks = Vec::new();
            // (meta, lock, index of its notice in `notices`)
            let mut giving_up = Vec::new();
            let mut notices = Vec::new();
            for &id in chunk {
                let (mut meta, lock) = match self.lock(id) {
                    Ok(l) => l,
                    Err(QueueError::UnknownId(_)) if sel.all => continue,
                    Err(e) => {
                        out.fail(id, e);
                        continue;
                    }
                };
                if self.is_inflight(id) {
                    meta.expire_requested = true;
                    marked.push(meta);
                    marked_locks.push(lock);
                    continue;
                }
                let failed = give_up_pending(&mut meta);
                self.count_expired(failed.len());
                let notice = match dsn::failure_notice(&self.options, self.spool, &meta, &failed) {
                    Some((envelope, bytes)) => {
                        match self.spool.create_message().and_then(|mut w| {
                            w.copy_from(&mut &bytes[..])?;
                            Ok(w)
                        }) {
                            Ok(w) => {
                                notices.push((w, envelope));
                                Some(notices.len() - 1)
                            }
                            Err(e) => {
                                out.fail(id, e);
                                continue;
                            }
                        }
                    }
                    None => None,
                };
                giving_up.push((meta, lock, notice));
            }
            for (meta, result) in marked.iter().zip(self.spool.write_metas(&marked)) {
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
            drop(marked_locks);
            let stored = if notices.is_empty() {
                Vec::new()
            } else {
                self.spool.store_many(notices, true)
            };
            // Without its notice a message must stay, or the sender would
            // never hear of it.
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

    /// True when an attempt of the message runs now (in the daemon).
    /// Asked under the message lock: the worker takes it to record its
    /// results and leaves the in-flight set before releasing it.
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
