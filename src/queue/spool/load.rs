//! The start-up load: lists `queue/`, then reads it a chunk at a time,
//! oldest message first, in parallel: removes unfinished writes and the
//! leftovers of interrupted removals, quarantines what does not parse,
//! and hands every other message over, counted in the census, chunk by
//! chunk, to be scheduled.
//!
//! It may run while the queue takes new mail, delivers, and obeys the
//! operator: the census's claims keep it off every message someone else
//! has created, changed or removed since the load began (see
//! `census.rs`). New messages are claimed *before* their file exists, so
//! the file of a write in progress, which has no footer yet, is never
//! taken for an unfinished write of an earlier run and removed.

use std::fs;
use std::io;

use rayon::prelude::*;

use super::at::DirAt;
use super::inspect::Verdict;
use super::listing::Listing;
use super::sync::sync_dir;
use super::{io_error, Spool};
use crate::queue::meta::Queued;
use crate::queue::{MessageId, QueueError};

/// Messages read per chunk: small enough that the first are scheduled
/// within milliseconds, large enough to keep both cores busy.
const CHUNK: usize = 4096;

/// What a start-up load of the spool found.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Every message to schedule, oldest first: filled by [`Spool::load`]
    /// only (the queue's loader schedules them chunk by chunk instead).
    pub messages: Vec<Queued>,
    /// Messages found and counted.
    pub loaded: usize,
    /// Messages moved to `corrupt/`.
    pub quarantined: usize,
    /// Unfinished writes and leftovers removed.
    pub removed: usize,
}

/// Where a load's messages go as it finds them (from one of rayon's
/// threads).
pub(crate) trait LoadSink: Send {
    /// The listing is done: `n` message ids to read.
    fn listed(&mut self, n: usize);
    /// One chunk is done: `done` ids dealt with, of which `found` are
    /// messages to schedule (counted in the census already). False stops
    /// the load.
    fn found(&mut self, found: Vec<Queued>, done: usize) -> bool;
}

/// A load in progress. Every removal and quarantine is made durable by
/// one directory fsync at the end: one undone by a crash before it is
/// simply done again at the next start.
struct Scan<'a> {
    spool: &'a Spool,
    report: LoadReport,
    changed: bool,
}

impl Spool {
    /// Removes whatever `tmp/` holds: metadata never renamed into place.
    /// Only before the queue writes anything there. Returns how many
    /// files it removed; nothing there needs a directory fsync.
    pub fn clear_tmp(&self) -> Result<usize, QueueError> {
        let tmp = &self.tmp;
        let mut removed = 0;
        for entry in fs::read_dir(tmp).map_err(io_error(tmp))? {
            let path = entry.map_err(io_error(tmp))?.path();
            if fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Loads the spool at once, with nothing else running on it: clears
    /// `tmp/`, removes unfinished writes, quarantines what does not parse
    /// and returns every message.
    pub fn load(&self) -> Result<LoadReport, QueueError> {
        struct Collect(Vec<Queued>);
        impl LoadSink for Collect {
            fn listed(&mut self, n: usize) {
                self.0.reserve(n);
            }
            fn found(&mut self, found: Vec<Queued>, _: usize) -> bool {
                self.0.extend(found);
                true
            }
        }
        let cleared = self.clear_tmp()?;
        self.begin_load();
        let mut sink = Collect(Vec::new());
        let scanned = self.scan(&mut sink);
        self.end_load();
        let mut report = scanned?;
        report.messages = sink.0;
        report.removed += cleared;
        Ok(report)
    }

    /// Starts counting from nothing for a load: from now until
    /// [`Spool::end_load`], messages created, changed or removed by
    /// anyone but the load are the load's to leave alone.
    pub(crate) fn begin_load(&self) {
        self.census.begin_load();
    }

    /// The load is over (done, or given up for good).
    pub(crate) fn end_load(&self) {
        self.census.end_load();
    }

    /// True between [`Spool::begin_load`] and [`Spool::end_load`].
    pub(crate) fn loading(&self) -> bool {
        self.census.loading()
    }

    /// Lists `queue/` and deals with each message in it, handing those to
    /// schedule to `sink`; may run again after a failure (what it counted
    /// already is not counted twice). Call between [`Spool::begin_load`]
    /// and [`Spool::end_load`].
    pub(crate) fn scan(&self, sink: &mut dyn LoadSink) -> Result<LoadReport, QueueError> {
        let dir = DirAt::open(&self.queue).map_err(io_error(&self.queue))?;
        let mut scan = Scan {
            spool: self,
            report: LoadReport::default(),
            changed: false,
        };
        let mut listing = Listing::read(&self.queue)?;
        scan.quarantine_strays(&listing);
        self.census.reserve(listing.len());
        sink.listed(listing.len());
        // Each chunk is read while the one before is acted on and handed
        // over: the census and the schedule take their turn one chunk at
        // a time, and the other core reads on meanwhile.
        let mut read = (0, Vec::new());
        loop {
            let chunk = listing.take(CHUNK);
            let more = !chunk.is_empty();
            let (next, handed) = rayon::join(
                || (chunk.len(), self.read_chunk(&dir, chunk)),
                || scan.hand_over(std::mem::take(&mut read), sink),
            );
            if !handed? || !more {
                break;
            }
            read = next;
        }
        if scan.changed {
            sync_dir(&self.corrupt)?;
            sync_dir(&self.queue)?;
        }
        Ok(scan.report)
    }
}

impl Spool {
    /// Reads a chunk's messages (in parallel) but those claimed by others.
    fn read_chunk(
        &self,
        dir: &DirAt,
        mut chunk: Vec<(MessageId, u8)>,
    ) -> Vec<(MessageId, Verdict)> {
        self.census.retain_unclaimed(&mut chunk, |(id, _)| *id);
        chunk
            .into_par_iter()
            .map_init(Vec::new, |buf, (id, kinds)| {
                (id, self.inspect(dir, &id, kinds, buf))
            })
            .collect()
    }
}

impl Scan<'_> {
    /// Quarantines what `queue/` holds that is no message's file.
    fn quarantine_strays(&mut self, listing: &Listing) {
        let (queue, corrupt) = (&self.spool.queue, &self.spool.corrupt);
        for name in &listing.strays {
            log::error!("{name}: moved to {}: not a spool file", corrupt.display());
            let _ = fs::rename(queue.join(name), corrupt.join(name));
            self.quarantined();
        }
        for stem in &listing.bad_stems {
            self.spool
                .move_to_corrupt(stem, "file name is not a queue id");
            self.quarantined();
        }
    }

    fn removed(&mut self) {
        self.report.removed += 1;
        self.changed = true;
    }

    fn quarantined(&mut self) {
        self.report.quarantined += 1;
        self.changed = true;
    }

    /// Acts on what a chunk of `done` ids holds, and hands the messages
    /// to schedule, counted in the census, to `sink`; false when it says
    /// to stop.
    fn hand_over(
        &mut self,
        (done, verdicts): (usize, Vec<(MessageId, Verdict)>),
        sink: &mut dyn LoadSink,
    ) -> Result<bool, QueueError> {
        if done == 0 {
            return Ok(true);
        }
        let found = self.act(verdicts)?;
        self.report.loaded += found.len();
        Ok(sink.found(found, done))
    }

    /// Removes, quarantines or keeps each message of a chunk as its
    /// verdict says; returns those to schedule, counted in the census.
    fn act(&mut self, verdicts: Vec<(MessageId, Verdict)>) -> Result<Vec<Queued>, QueueError> {
        let spool = self.spool;
        let mut found = Vec::with_capacity(verdicts.len());
        for (id, verdict) in verdicts {
            match verdict {
                Verdict::Queued(q) if q.pending => found.push(q),
                // Finished, but the crash came before the files were removed.
                Verdict::Queued(_) => self.remove(id, None, &["msg", "meta"])?,
                Verdict::Unfinished => self.remove(
                    id,
                    Some("removing unfinished write (message without metadata)"),
                    &["msg", "meta"],
                )?,
                Verdict::LoneMeta => self.remove(
                    id,
                    Some("removing the metadata of a removal interrupted by a crash"),
                    &["meta"],
                )?,
                Verdict::Corrupt(reason) => {
                    if !spool.census.known(&id) {
                        spool.move_to_corrupt(id.as_str(), &reason);
                        self.quarantined();
                    }
                }
                Verdict::Gone => {}
                Verdict::Failed(e) => return Err(io_error(&spool.queue)(e)),
            }
        }
        Ok(spool.census.adopt(found))
    }

    /// Removes a message's files with the extensions `exts` (the message
    /// file first, as every removal), logging `why`, unless someone else
    /// has claimed the message since the chunk was read: a new message's
    /// file being written has no footer either.
    fn remove(
        &mut self,
        id: MessageId,
        why: Option<&str>,
        exts: &[&str],
    ) -> Result<(), QueueError> {
        if self.spool.census.known(&id) {
            return Ok(());
        }
        if let Some(why) = why {
            log::info!("{id}: {why}");
        }
        for ext in exts {
            let path = self.spool.queue.join(format!("{id}.{ext}"));
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&path)(e)),
            }
        }
        self.removed();
        Ok(())
    }
}
