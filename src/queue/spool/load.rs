//! The start-up scan: clears `tmp/`, removes unfinished writes and the
//! leftovers of interrupted removals, quarantines what does not parse and
//! returns every message to schedule.

use std::collections::HashMap;
use std::fs::{self, File};

use rayon::prelude::*;

use super::sync::sync_dir;
use super::trailer::{read_trailer, TrailerError, FOOTER_LEN};
use super::{io_error, Spool};
use crate::queue::meta::Queued;
use crate::queue::{MessageId, QueueError};

/// What a start-up scan of the spool found.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Every message to schedule, by id.
    pub messages: Vec<Queued>,
    /// Messages moved to `corrupt/`.
    pub quarantined: usize,
    /// Unfinished writes removed.
    pub removed: usize,
}

/// The files one queue id has in `queue/`.
#[derive(Default)]
struct Found {
    msg: bool,
    meta: bool,
}

/// What start-up makes of one message file.
enum Loaded {
    Meta(Queued),
    Unfinished,
    Corrupt(String),
}

/// A scan in progress: the report so far, and whether `queue/` or
/// `corrupt/` changed. Every removal and quarantine is made durable by
/// one directory fsync at the end, before any message is scheduled.
struct Scan<'a> {
    spool: &'a Spool,
    report: LoadReport,
    changed: bool,
}

impl Spool {
    /// Scans the spool at start: clears `tmp/`, removes unfinished writes,
    /// quarantines what does not parse and returns every message.
    pub fn load(&self) -> Result<LoadReport, QueueError> {
        let mut scan = Scan {
            spool: self,
            report: LoadReport::default(),
            changed: false,
        };
        scan.clear_tmp()?;
        let found = scan.list_queue()?;
        let candidates = scan.pair_files(found)?;
        scan.check(candidates)?;
        if scan.changed {
            sync_dir(&self.corrupt)?;
            sync_dir(&self.queue)?;
        }
        let mut report = scan.report;
        report.messages.sort_by_key(|m| m.id);
        self.census.reset(&report.messages);
        Ok(report)
    }
}

impl Scan<'_> {
    fn removed(&mut self) {
        self.report.removed += 1;
        self.changed = true;
    }

    fn quarantined(&mut self) {
        self.report.quarantined += 1;
        self.changed = true;
    }

    /// Removes whatever `tmp/` holds: metadata never renamed into place.
    /// Nothing there needs a directory fsync.
    fn clear_tmp(&mut self) -> Result<(), QueueError> {
        let tmp = &self.spool.tmp;
        for entry in fs::read_dir(tmp).map_err(io_error(tmp))? {
            let path = entry.map_err(io_error(tmp))?.path();
            if fs::remove_file(&path).is_ok() {
                self.report.removed += 1;
            }
        }
        Ok(())
    }

    /// The files in `queue/` by stem; any other file is quarantined.
    fn list_queue(&mut self) -> Result<HashMap<String, Found>, QueueError> {
        let (queue, corrupt) = (&self.spool.queue, &self.spool.corrupt);
        let mut found: HashMap<String, Found> = HashMap::new();
        for entry in fs::read_dir(queue).map_err(io_error(queue))? {
            let entry = entry.map_err(io_error(queue))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            match name.rsplit_once('.') {
                Some((stem, "msg")) => found.entry(stem.to_string()).or_default().msg = true,
                Some((stem, "meta")) => found.entry(stem.to_string()).or_default().meta = true,
                _ => {
                    log::error!("{name}: moved to {}: not a spool file", corrupt.display());
                    let _ = fs::rename(queue.join(&name), corrupt.join(&name));
                    self.quarantined();
                }
            }
        }
        Ok(found)
    }

    /// The message files to read, each with whether it has a `.meta`;
    /// quarantines stems that are not ids and removes lone `.meta` files.
    fn pair_files(
        &mut self,
        found: HashMap<String, Found>,
    ) -> Result<Vec<(MessageId, bool)>, QueueError> {
        let mut candidates = Vec::new();
        for (stem, f) in found {
            let Ok(id) = stem.parse::<MessageId>() else {
                self.spool
                    .move_to_corrupt(&stem, "file name is not a queue id");
                self.quarantined();
                continue;
            };
            match (f.msg, f.meta) {
                (true, has_meta) => candidates.push((id, has_meta)),
                (false, true) => {
                    log::info!("{id}: removing the metadata of a removal interrupted by a crash");
                    let path = self.spool.meta_path(&id);
                    fs::remove_file(&path).map_err(io_error(&path))?;
                    self.removed();
                }
                (false, false) => {}
            }
        }
        Ok(candidates)
    }

    /// Reads every candidate (in parallel) and acts on what it holds:
    /// unfinished writes are removed first, then finished messages
    /// removed, damaged ones quarantined and the rest reported.
    fn check(&mut self, candidates: Vec<(MessageId, bool)>) -> Result<(), QueueError> {
        let spool = self.spool;
        let checked: Vec<(MessageId, Loaded)> = candidates
            .into_par_iter()
            .map(|(id, has_meta)| (id, spool.load_one(&id, has_meta)))
            .collect();
        let mut parsed = Vec::with_capacity(checked.len());
        for (id, loaded) in checked {
            match loaded {
                Loaded::Unfinished => {
                    log::info!("{id}: removing unfinished write (message without metadata)");
                    let path = spool.message_path(&id);
                    fs::remove_file(&path).map_err(io_error(&path))?;
                    self.removed();
                }
                Loaded::Meta(m) => parsed.push((id, Ok(m))),
                Loaded::Corrupt(reason) => parsed.push((id, Err(reason))),
            }
        }
        for (id, result) in parsed {
            match result {
                Ok(meta) if !meta.pending => {
                    // Finished, but the crash came before the files were removed.
                    spool.unlink(&id, false)?;
                    self.removed();
                }
                Ok(meta) => self.report.messages.push(meta),
                Err(reason) => {
                    spool.move_to_corrupt(id.as_str(), &reason);
                    self.quarantined();
                }
            }
        }
        Ok(())
    }
}

impl Spool {
    fn load_one(&self, id: &MessageId, has_meta: bool) -> Loaded {
        let read = if has_meta {
            self.load_meta_file(id)
        } else {
            self.load_trailer(id)
        };
        let (queued, body_len) = match read {
            Ok(read) => read,
            Err(loaded) => return loaded,
        };
        if queued.id != *id {
            return Loaded::Corrupt(format!("metadata names another id, {}", queued.id));
        }
        // A message of another size than the one acknowledged was
        // damaged after the fact.
        if queued.size != body_len {
            return Loaded::Corrupt(format!(
                "the message is {body_len} bytes, its metadata says {}",
                queued.size
            ));
        }
        Loaded::Meta(queued)
    }

    /// The state of a message with a `.meta` file, and the length of the
    /// message it names.
    fn load_meta_file(&self, id: &MessageId) -> Result<(Queued, u64), Loaded> {
        // The `.meta` supersedes the trailer, which is not read: the
        // message file must only hold at least the message and a
        // footer.
        let path = self.meta_path(id);
        let queued = match fs::read(&path) {
            Ok(bytes) => Queued::from_json(&bytes).map_err(|e| e.to_string()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        };
        let msg = self.message_path(id);
        let len = match fs::metadata(&msg) {
            Ok(m) => m.len(),
            Err(e) => return Err(Loaded::Corrupt(format!("{}: {e}", msg.display()))),
        };
        match queued {
            // Exactly the message: a file written before messages
            // carried a trailer, still good with its `.meta`.
            Ok(q) if len == q.size => Ok((q, q.size)),
            Ok(q) if len < q.size + FOOTER_LEN => Err(Loaded::Corrupt(format!(
                "the message file is {len} bytes, too short for a message of {}",
                q.size
            ))),
            Ok(q) => Ok((q, q.size)),
            Err(reason) => Err(Loaded::Corrupt(reason)),
        }
    }

    /// The state of a message from its file's trailer, and the length of
    /// the message before it.
    fn load_trailer(&self, id: &MessageId) -> Result<(Queued, u64), Loaded> {
        let path = self.message_path(id);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => return Err(Loaded::Corrupt(format!("{}: {e}", path.display()))),
        };
        match read_trailer(&file) {
            Ok((body_len, json)) => match Queued::from_json(&json) {
                Ok(q) => Ok((q, body_len)),
                Err(e) => Err(Loaded::Corrupt(e.to_string())),
            },
            Err(TrailerError::Missing) => Err(self.missing_footer(&file)),
            Err(TrailerError::Corrupt(reason)) => Err(Loaded::Corrupt(reason)),
            Err(TrailerError::Io(e)) => Err(Loaded::Corrupt(format!("{}: {e}", path.display()))),
        }
    }

    /// A message file without footer: the write that made it never
    /// finished (it was never acknowledged) if it is newer than the last
    /// start; older, it was complete then and lost its end since.
    fn missing_footer(&self, file: &File) -> Loaded {
        let last_start = *self.last_start.lock().unwrap_or_else(|p| p.into_inner());
        let Some(last_start) = last_start else {
            return Loaded::Unfinished;
        };
        match file.metadata().and_then(|m| m.modified()) {
            Ok(written) if written >= last_start => Loaded::Unfinished,
            Ok(_) => Loaded::Corrupt(
                "no metadata trailer in a file older than the last start: damaged".into(),
            ),
            Err(e) => Loaded::Corrupt(format!("no metadata trailer: {e}")),
        }
    }
}
