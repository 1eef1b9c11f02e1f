//! The daemon's pickup of `<spool>/incoming/`, where `sendmail` drops
//! submissions: each regular file of bounded size becomes a queued
//! message (with a `Received:` line naming its owner's uid), everything
//! else is quarantined with a reason, and leftovers are cleared away.
//! Nothing in `incoming/` is trusted: the spool's group writes there.

use std::fs;
use std::path::{Path, PathBuf};

use crate::ingest::incoming::IncomingLimits;
use crate::queue::spool::{layout, sync_dir};
use crate::queue::Queue;

mod file;
mod stale;

use file::{pickup_one, PickupError};
use stale::remove_if_stale;

/// Daemon side, one pass: queues every complete file in `incoming/`.
pub fn pickup(queue: &Queue, limits: IncomingLimits) -> usize {
    Pickup::new(limits).run(queue)
}

/// Makes every rename into `incoming/` made so far durable: a
/// submitter that may not open the directory asks the daemon for this.
pub fn sync_incoming(queue: &Queue) -> Result<(), crate::queue::QueueError> {
    sync_dir(&layout::incoming(&queue.options().spool))
}

/// How long a temporary file (or any other file not named `*.mail`) may
/// stay in `incoming/` unchanged before pickup removes it. sendmail holds
/// one only while it writes and fsyncs a message it has already read
/// whole; one this old was left by a submitter that was killed (or ran
/// out of file size) before the rename, and would otherwise stay for
/// ever, filling the disk outside any queue quota.
pub const STALE_TMP_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// The daemon's pickup of `incoming/`, pass after pass. It remembers the
/// files it had to leave (or could not quarantine), so that one it cannot
/// handle is reported when first met (and when the reason changes), not
/// every few seconds.
#[derive(Debug)]
pub struct Pickup {
    limits: IncomingLimits,
    left: std::collections::HashMap<PathBuf, String>,
    /// When this process first saw each name that is not taken at once:
    /// its own clock, where a file's mtime is its owner's to set.
    seen: std::collections::HashMap<PathBuf, std::time::Instant>,
    /// Why the queue refused new mail at the last pass, if it did.
    refused: Option<String>,
}

/// A path for a log line: control characters escaped, so that a file
/// name cannot forge log lines (the spool's group chooses the names).
fn shown(path: &Path) -> String {
    path.to_string_lossy().escape_debug().to_string()
}

/// What one pass changed in the directories, to be made durable at its end.
#[derive(Default)]
struct Changes {
    /// Names removed from `incoming/` (queued, or stale temporary files).
    removed: bool,
    /// Names renamed from `incoming/` into `corrupt/`.
    quarantined: bool,
}

/// One pass's bookkeeping.
struct Pass {
    corrupt: PathBuf,
    now: std::time::Instant,
    /// When the files were first seen, as the last pass left it.
    previous: std::collections::HashMap<PathBuf, std::time::Instant>,
    /// The same for the files still there in this pass.
    seen: std::collections::HashMap<PathBuf, std::time::Instant>,
    /// Files left in `incoming/`, and why.
    left: std::collections::HashMap<PathBuf, String>,
    changes: Changes,
}

impl Pass {
    fn new(
        corrupt: PathBuf,
        previous: std::collections::HashMap<PathBuf, std::time::Instant>,
    ) -> Pass {
        Pass {
            corrupt,
            now: std::time::Instant::now(),
            previous,
            seen: Default::default(),
            left: Default::default(),
            changes: Changes::default(),
        }
    }

    /// How long this process has known of `path`.
    fn first_seen(&mut self, path: &Path) -> std::time::Duration {
        let t = self.previous.get(path).copied().unwrap_or(self.now);
        self.seen.insert(path.to_path_buf(), t);
        self.now.duration_since(t)
    }

    /// Makes the pass's renames and removals durable.
    fn make_durable(&self, incoming: &Path) {
        if self.changes.quarantined {
            // The new names first, then the old ones' removal: a crash in
            // between leaves a file in both places, never in neither.
            if let Err(e) = sync_dir(&self.corrupt) {
                log::warn!("{}: {e}", self.corrupt.display());
            }
        }
        if self.changes.removed || self.changes.quarantined {
            // A removal lost in a crash would queue the message a second
            // time, or bring back a file already quarantined.
            if let Err(e) = sync_dir(incoming) {
                log::warn!("{}: {e}", incoming.display());
            }
        }
    }
}

impl Pickup {
    /// A pickup that takes files within `limits`.
    pub fn new(limits: IncomingLimits) -> Pickup {
        Pickup {
            limits,
            left: Default::default(),
            seen: Default::default(),
            refused: None,
        }
    }

    /// Checks the files of later passes against `limits`.
    pub fn set_limits(&mut self, limits: IncomingLimits) {
        self.limits = limits;
    }

    /// Queues every complete file in `incoming/`. A file is removed only
    /// once its message is durable in the queue. One file that cannot be
    /// taken now never holds up the others.
    pub fn run(&mut self, queue: &Queue) -> usize {
        let dir = layout::incoming(&queue.options().spool);
        let Ok(entries) = fs::read_dir(&dir) else {
            return 0;
        };
        let mut names = Vec::new();
        let mut temporary = Vec::new();
        for path in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
            if path.extension().is_some_and(|x| x == "mail") {
                names.push(path);
            } else {
                // sendmail's temporary files, and whatever else a member
                // of the spool's group dropped there under another name.
                temporary.push(path);
            }
        }
        names.sort();
        let mut pass = Pass::new(
            layout::corrupt(&queue.options().spool),
            std::mem::take(&mut self.seen),
        );
        for path in temporary {
            let known = pass.first_seen(&path);
            pass.changes.removed |= remove_if_stale(&path, known);
        }
        let queued = self.take_all(queue, names, &mut pass);
        pass.make_durable(&dir);
        self.left = pass.left;
        self.seen = pass.seen;
        queued
    }

    /// Takes the `*.mail` files in order, until the queue refuses.
    fn take_all(&mut self, queue: &Queue, names: Vec<PathBuf>, pass: &mut Pass) -> usize {
        if names.is_empty() {
            self.refused = None;
            return 0;
        }
        // A queue over quota would refuse every file, after reading it
        // whole: leave them all for a later pass.
        if let Err(e) = queue.check_quota(0) {
            self.refused_now(&e.to_string(), names.len());
            return 0;
        }
        let mut queued = 0;
        for path in names {
            match self.take(queue, path, pass) {
                Ok(true) => queued += 1,
                Ok(false) => {}
                Err(refused) => {
                    self.refused_now(&refused, 1);
                    return queued;
                }
            }
        }
        self.refused = None;
        queued
    }

    /// Takes one file: true when queued, false when left or quarantined,
    /// an error when the queue refuses (full, closing), as it would for
    /// the files after it.
    fn take(&self, queue: &Queue, path: PathBuf, pass: &mut Pass) -> Result<bool, String> {
        // A bug hit by one file (a parser edge) must not stop the
        // others: the file is quarantined, as a bad one would be.
        let taken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pickup_one(queue, self.limits, &path)
        }))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(PickupError::Corrupt(format!(
                "pickup panicked on it: {what}"
            )))
        });
        match taken {
            Ok((id, uid)) => {
                if let Err(e) = fs::remove_file(&path) {
                    // It would be queued again at the next pass.
                    log::error!("{id}: picked up {} but cannot remove it: {e}", shown(&path));
                } else {
                    log::info!("{id}: picked up {} from userid {uid}", shown(&path));
                    pass.changes.removed = true;
                }
                return Ok(true);
            }
            Err(PickupError::Later(why)) if pass.first_seen(&path) < STALE_TMP_AGE => {
                self.note(&path, &why, log::Level::Warn, |why| {
                    format!("left for a later pass: {why}")
                });
                pass.left.insert(path, why);
            }
            Err(PickupError::Later(why)) => {
                // Unreadable for an hour (its owner took the daemon's
                // read right away, say): it will not get better, and
                // would stay outside every quota.
                let why = format!("{why}, for over {}s", STALE_TMP_AGE.as_secs());
                pass.changes.quarantined |= self.quarantine(&path, why, pass);
            }
            Err(PickupError::Queue(e)) => return Err(e.to_string()),
            Err(PickupError::Corrupt(why)) => {
                pass.changes.quarantined |= self.quarantine(&path, why, pass);
            }
        }
        Ok(false)
    }

    /// Moves `path` into `corrupt/`; true when it did. A failure is said
    /// once: it would fail alike every pass (another user's directory
    /// cannot be moved out of the sticky `incoming/`).
    fn quarantine(&self, path: &Path, why: String, pass: &mut Pass) -> bool {
        let to = pass.corrupt.join(path.file_name().unwrap_or_default());
        match fs::rename(path, &to) {
            Ok(()) => {
                log::error!("{}: moved to {}: {why}", shown(path), shown(&to));
                true
            }
            Err(e) => {
                let why = format!("{why}; cannot move it to {}: {e}", shown(&to));
                self.note(path, &why, log::Level::Error, |why| why.to_string());
                pass.left.insert(path.to_path_buf(), why);
                false
            }
        }
    }

    /// Logs what happened to `path`: at `level` when first met or when
    /// the reason changed since the last pass, at debug level after that.
    fn note(&self, path: &Path, why: &str, level: log::Level, text: impl Fn(&str) -> String) {
        let level = if self.left.get(path).is_some_and(|w| w == why) {
            log::Level::Debug
        } else {
            level
        };
        log::log!(level, "{}: {}", shown(path), text(why));
    }

    /// The queue refuses new mail: say so when it starts, not every pass.
    fn refused_now(&mut self, why: &str, waiting: usize) {
        let level = if self.refused.as_deref() == Some(why) {
            log::Level::Debug
        } else {
            log::Level::Warn
        };
        log::log!(
            level,
            "incoming: {waiting} file(s) left for a later pass: {why}"
        );
        self.refused = Some(why.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::file::{Bounded, SourceFailure};
    use super::*;
    use std::io::Read;

    #[test]
    fn a_stale_file_goes_by_the_daemons_clock_when_its_mtime_lies() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk");
        fs::write(&junk, b"filler").unwrap();
        // Its owner set the time stamp a century ahead.
        let future =
            std::time::SystemTime::now() + std::time::Duration::from_secs(100 * 365 * 86_400);
        fs::File::options()
            .write(true)
            .open(&junk)
            .unwrap()
            .set_modified(future)
            .unwrap();
        assert!(!remove_if_stale(&junk, std::time::Duration::ZERO));
        assert!(junk.exists());
        // Known to the daemon for the hour: gone, whatever its mtime says.
        assert!(remove_if_stale(&junk, STALE_TMP_AGE));
        assert!(!junk.exists());
    }

    #[test]
    fn names_in_log_lines_cannot_start_a_line() {
        let forged = Path::new("/s/incoming/x\n[2026] INFO 1: to=<a>, status=sent\n.mail");
        assert!(!shown(forged).contains('\n'), "{}", shown(forged));
    }

    #[test]
    fn bounded_reads_up_to_its_limit_and_fails_past_it() {
        let mut ok = Bounded {
            inner: &b"12345"[..],
            left: 5,
            failure: None,
        };
        let mut out = Vec::new();
        ok.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"12345");
        assert!(ok.failure.is_none());

        let mut over = Bounded {
            inner: &b"123456"[..],
            left: 5,
            failure: None,
        };
        assert!(over.read_to_end(&mut Vec::new()).is_err());
        assert!(matches!(over.failure, Some(SourceFailure::TooLarge)));
    }
}
