//! Taking messages out of the queue: removal of a finished message, and
//! quarantine of a damaged one into `corrupt/`.

use std::fs;
use std::io;

use super::sync::sync_dir;
use super::{io_error, Spool};
use crate::queue::{MessageId, QueueError};

impl Spool {
    /// Removes a finished message, durably: when this returns, a power
    /// loss cannot bring the message back to be sent again. The message
    /// file goes first: a crash in between leaves a lone `.meta`, which
    /// start-up removes, where the other order would leave a message file
    /// whose trailer still lists every recipient as pending. The directory
    /// fsync is shared with concurrent creations and removals.
    ///
    /// Logs `<id>: removed` once that is durable, as Postfix's qmgr does.
    ///
    /// The message file is unlinked, its space freed: what an operator
    /// who deletes mail to make room expects. A message the queue has
    /// finished goes through [`Spool::finish`] instead.
    pub fn remove(&self, id: &MessageId) -> Result<(), QueueError> {
        self.unlink(id, false)?;
        self.queue_sync.sync(&self.queue)?;
        log::info!("{id}: removed");
        Ok(())
    }

    /// Removes a message the queue has finished (delivered, or bounced),
    /// as [`Spool::remove`] does, except that its file is kept in `free/`
    /// to be written over by a new message.
    pub fn finish(&self, id: &MessageId) -> Result<(), QueueError> {
        self.unlink(id, true)?;
        self.queue_sync.sync(&self.queue)?;
        log::info!("{id}: removed");
        Ok(())
    }

    /// Removes many messages with one directory fsync; the caller holds
    /// their locks. One result per message, in order; each removal that
    /// is durable is logged as [`Spool::remove`] logs it.
    pub fn remove_many(&self, ids: &[MessageId]) -> Vec<Result<(), QueueError>> {
        let mut results: Vec<_> = ids.iter().map(|id| self.unlink(id, false)).collect();
        if let Err(e) = self.queue_sync.sync(&self.queue) {
            let why = e.to_string();
            for r in results.iter_mut().filter(|r| r.is_ok()) {
                *r = Err(QueueError::Io {
                    path: self.queue.clone(),
                    source: io::Error::other(why.clone()),
                });
            }
        }
        for (id, _) in ids.iter().zip(&results).filter(|(_, r)| r.is_ok()) {
            log::info!("{id}: removed");
        }
        results
    }

    /// Takes a message's files out of `queue/` without making that
    /// durable: the message file into the pool of files to write over
    /// when `recycle` (or unlinked), the `.meta` unlinked.
    pub(super) fn unlink(&self, id: &MessageId, recycle: bool) -> Result<(), QueueError> {
        for (path, is_msg) in [(self.message_path(id), true), (self.meta_path(id), false)] {
            let gone = if is_msg && recycle {
                self.pool.recycle(&path)
            } else {
                fs::remove_file(&path)
            };
            match gone {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&path)(e)),
            }
            // Without its message file it is no longer listed: no longer
            // counted, whatever happens to its `.meta`.
            self.census.remove(id);
        }
        Ok(())
    }

    /// Moves whatever files a message has into `corrupt/`, logging why.
    pub fn quarantine(&self, id: &str, reason: &str) {
        self.move_to_corrupt(id, reason);
        self.sync_quarantine();
    }

    pub(super) fn move_to_corrupt(&self, id: &str, reason: &str) {
        log::error!("{id}: moved to {}: {reason}", self.corrupt.display());
        if let Ok(id) = id.parse::<MessageId>() {
            self.census.remove(&id);
        }
        for ext in ["meta", "msg"] {
            let from = self.queue.join(format!("{id}.{ext}"));
            let to = self.corrupt.join(format!("{id}.{ext}"));
            match fs::rename(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => log::error!("{id}: cannot quarantine {}: {e}", from.display()),
            }
        }
    }

    /// Makes renames into `corrupt/` durable: the new entries first, so a
    /// power loss never leaves a quarantined file in neither directory.
    fn sync_quarantine(&self) {
        for dir in [&self.corrupt, &self.queue] {
            if let Err(e) = sync_dir(dir) {
                log::error!("{e}");
            }
        }
    }
}
