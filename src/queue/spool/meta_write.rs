//! Later states of a message: its `.meta` file written in `tmp/`,
//! renamed over the one in `queue/` and made durable, one message at a
//! time or many with two syncs in all.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{io_error, Spool};
use crate::queue::meta::MessageMeta;
use crate::queue::QueueError;

/// Up to this many metadata files, [`Spool::write_metas`] fdatasyncs each
/// rather than the whole file system.
const FEW_METAS: usize = 8;

impl Spool {
    /// Replaces a message's metadata atomically and durably.
    pub fn write_meta(&self, meta: &MessageMeta) -> Result<(), QueueError> {
        self.write_meta_file(meta)?;
        self.census.set(meta);
        self.queue_sync.sync(&self.queue)
    }

    /// Replaces the metadata of many messages, durably, with two syncs
    /// in all rather than two per message: every new file is written to
    /// `tmp/`, one `syncfs` makes their contents durable, each is renamed
    /// into `queue/`, and one fsync of `queue/` makes the renames durable.
    /// The caller holds the messages' locks. One result per message, in
    /// order; a failed sync fails them all.
    pub fn write_metas(&self, metas: &[MessageMeta]) -> Vec<Result<(), QueueError>> {
        // A few files: their own fdatasyncs cost less than flushing
        // whatever else the file system has to write.
        let each = metas.len() <= FEW_METAS;
        let mut results: Vec<Result<(), QueueError>> = metas
            .iter()
            .map(|meta| {
                let tmp = self.tmp.join(format!("{}.meta", meta.id));
                self.write_tmp_meta(meta, &tmp, each)
            })
            .collect();
        if results.iter().all(Result::is_err) {
            return results;
        }
        let synced = if each {
            Ok(())
        } else {
            File::open(&self.tmp)
                .and_then(|dir| crate::sys::syncfs(&dir))
                .map_err(io_error(&self.tmp))
        };
        if let Err(e) = synced {
            return metas
                .iter()
                .map(|_| {
                    Err(QueueError::Io {
                        path: self.tmp.clone(),
                        source: io::Error::other(e.to_string()),
                    })
                })
                .collect();
        }
        for (meta, result) in metas.iter().zip(results.iter_mut()) {
            if result.is_ok() {
                let tmp = self.tmp.join(format!("{}.meta", meta.id));
                let dst = self.meta_path(&meta.id);
                *result = fs::rename(&tmp, &dst).map_err(io_error(&dst));
                if result.is_ok() {
                    self.census.set(meta);
                }
            }
        }
        if let Err(e) = self.queue_sync.sync(&self.queue) {
            let why = e.to_string();
            for r in results.iter_mut().filter(|r| r.is_ok()) {
                *r = Err(QueueError::Io {
                    path: self.queue.clone(),
                    source: io::Error::other(why.clone()),
                });
            }
        }
        results
    }

    fn write_meta_file(&self, meta: &MessageMeta) -> Result<(), QueueError> {
        let tmp = self.tmp.join(format!("{}.meta", meta.id));
        self.write_tmp_meta(meta, &tmp, true)?;
        let dst = self.meta_path(&meta.id);
        fs::rename(&tmp, &dst).map_err(io_error(&dst))
    }

    /// Writes `tmp/<id>.meta`, fdatasynced when `sync`.
    fn write_tmp_meta(&self, meta: &MessageMeta, tmp: &Path, sync: bool) -> Result<(), QueueError> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(tmp)
            .map_err(io_error(tmp))?;
        self.adopt(&file, tmp)?;
        file.write_all(&meta.to_json())
            .and_then(|_| if sync { file.sync_data() } else { Ok(()) })
            .map_err(io_error(tmp))
    }
}
