//! The daemon's pickup of `<spool>/incoming/`, where `sendmail` drops
//! submissions: each regular file of bounded size becomes a queued
//! message (with a `Received:` line naming its owner's uid), everything
//! else is quarantined with a reason, and leftovers are cleared away.
//! Nothing in `incoming/` is trusted: the spool's group writes there.

use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::envelope::Envelope;
use crate::ingest::cleanup;
use crate::ingest::incoming::{IncomingEnvelope, IncomingLimits};
use crate::queue::spool::{layout, sync_dir};
use crate::queue::{MessageId, Queue};

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

    /// Queues every complete file in `incoming/`. A file is removed only
    /// once its message is durable in the queue. One file that cannot be
    /// taken now never holds up the others.
    pub fn run(&mut self, queue: &Queue) -> usize {
        let dir = layout::incoming(&queue.options().spool);
        let corrupt = layout::corrupt(&queue.options().spool);
        let Ok(entries) = fs::read_dir(&dir) else {
            return 0;
        };
        let mut left = std::collections::HashMap::new();
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
        let mut changes = Changes::default();
        let now = std::time::Instant::now();
        let previous = std::mem::take(&mut self.seen);
        let mut seen = std::collections::HashMap::new();
        let mut first_seen = |path: &Path| {
            let t = previous.get(path).copied().unwrap_or(now);
            seen.insert(path.to_path_buf(), t);
            now.duration_since(t)
        };
        for path in temporary {
            let known = first_seen(&path);
            changes.removed |= remove_if_stale(&path, known);
        }
        // A queue over quota would refuse every file, after reading it
        // whole: leave them all for a later pass.
        let mut open = true;
        if !names.is_empty() {
            if let Err(e) = queue.check_quota(0) {
                self.refused_now(&e.to_string(), names.len());
                names.clear();
                open = false;
            }
        }
        let mut queued = 0;
        let mut refused = None;
        for path in names {
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
                        changes.removed = true;
                    }
                    queued += 1;
                }
                Err(PickupError::Later(why)) if first_seen(&path) < STALE_TMP_AGE => {
                    self.note(&path, &why, log::Level::Warn, |why| {
                        format!("left for a later pass: {why}")
                    });
                    left.insert(path, why);
                }
                Err(PickupError::Later(why)) => {
                    // Unreadable for an hour (its owner took the daemon's
                    // read right away, say): it will not get better, and
                    // would stay outside every quota.
                    let why = format!("{why}, for over {}s", STALE_TMP_AGE.as_secs());
                    changes.quarantined |= self.quarantine(&path, &corrupt, why, &mut left);
                }
                Err(PickupError::Queue(e)) => {
                    // The queue refuses (full, closing): so it would for the rest.
                    refused = Some(e.to_string());
                    break;
                }
                Err(PickupError::Corrupt(why)) => {
                    changes.quarantined |= self.quarantine(&path, &corrupt, why, &mut left);
                }
            }
        }
        match refused {
            Some(why) => self.refused_now(&why, 1),
            None if open => self.refused = None,
            None => {}
        }
        if changes.quarantined {
            // The new names first, then the old ones' removal: a crash in
            // between leaves a file in both places, never in neither.
            if let Err(e) = sync_dir(&corrupt) {
                log::warn!("{}: {e}", corrupt.display());
            }
        }
        if changes.removed || changes.quarantined {
            // A removal lost in a crash would queue the message a second
            // time, or bring back a file already quarantined.
            if let Err(e) = sync_dir(&dir) {
                log::warn!("{}: {e}", dir.display());
            }
        }
        self.left = left;
        self.seen = seen;
        queued
    }

    /// Moves `path` into `corrupt/`; true when it did. A failure is said
    /// once: it would fail alike every pass (another user's directory
    /// cannot be moved out of the sticky `incoming/`).
    fn quarantine(
        &self,
        path: &Path,
        corrupt: &Path,
        why: String,
        left: &mut std::collections::HashMap<PathBuf, String>,
    ) -> bool {
        let to = corrupt.join(path.file_name().unwrap_or_default());
        match fs::rename(path, &to) {
            Ok(()) => {
                log::error!("{}: moved to {}: {why}", shown(path), shown(&to));
                true
            }
            Err(e) => {
                let why = format!("{why}; cannot move it to {}: {e}", shown(&to));
                self.note(path, &why, log::Level::Error, |why| why.to_string());
                left.insert(path.to_path_buf(), why);
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

/// Removes a temporary file, or any file not named `*.mail` (a symbolic
/// link is removed, never followed), that has not changed for
/// [`STALE_TMP_AGE`]; true when it did. Directories, FIFOs and the like
/// are left alone (they hold no data).
fn remove_if_stale(path: &Path, known: std::time::Duration) -> bool {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return false;
    };
    let kind = meta.file_type();
    if !(kind.is_file() || kind.is_symlink()) {
        return false;
    }
    // Unchanged for the hour by its mtime, or known to this process that
    // long: a time stamp in the future must not keep a file for ever.
    let age = meta
        .modified()
        .ok()
        .and_then(|m| m.elapsed().ok())
        .unwrap_or_default()
        .max(known);
    if age < STALE_TMP_AGE {
        return false;
    }
    match fs::remove_file(path) {
        Ok(()) => {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let what = if name.starts_with('.') && name.ends_with(".tmp") {
                "an unfinished submission"
            } else {
                "not a submission"
            };
            log::info!(
                "{}: removed, {what} of userid {} ({} bytes, unchanged for {}s)",
                shown(path),
                meta.uid(),
                meta.len(),
                age.as_secs()
            );
            true
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => {
            log::warn!("{}: cannot remove a stale temporary file: {e}", shown(path));
            false
        }
    }
}

/// Why a file in `incoming/` was not queued.
#[derive(Debug, thiserror::Error)]
enum PickupError {
    /// This file cannot be read now (permissions, an I/O error): try it
    /// again at the next pass, and go on with the others.
    #[error("{0}")]
    Later(String),
    /// The queue refuses new mail now: the other files would fail alike.
    #[error(transparent)]
    Queue(crate::queue::QueueError),
    /// The file is not a submission and never will be: quarantine it.
    #[error("{0}")]
    Corrupt(String),
}

fn pickup_one(
    queue: &Queue,
    limits: IncomingLimits,
    path: &Path,
) -> Result<(MessageId, u32), PickupError> {
    // Look before opening: opening a FIFO would block and opening a
    // device may act on it.
    let meta = fs::symlink_metadata(path).map_err(|e| PickupError::Later(e.to_string()))?;
    if !meta.file_type().is_file() {
        return Err(PickupError::Corrupt(format!(
            "not a regular file but {}",
            file_kind(&meta)
        )));
    }
    // And check again what was opened: the name may have been replaced
    // in between. O_NOFOLLOW refuses a symlink put there meanwhile;
    // O_NONBLOCK keeps a FIFO from blocking.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => PickupError::Corrupt("a symbolic link".into()),
            _ => PickupError::Later(format!("cannot open it: {e}")),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| PickupError::Later(e.to_string()))?;
    if !meta.file_type().is_file() {
        return Err(PickupError::Corrupt(format!(
            "not a regular file but {}",
            file_kind(&meta)
        )));
    }
    // sendmail's file has one name. A second one is a hard link some
    // submitter made to a file of someone else's, which the daemon may
    // be able to read and they not.
    if meta.nlink() != 1 {
        return Err(PickupError::Corrupt(format!(
            "{} hard links to it: not a file sendmail wrote",
            meta.nlink()
        )));
    }
    let uid = meta.uid();
    let max_message = limits.max_message();
    let max_line = limits.max_envelope_line();
    let max_file = max_message.saturating_add(max_line);
    if meta.len() > max_file {
        return Err(PickupError::Corrupt(format!(
            "{} bytes, more than a submission may have ({max_file}: [listen] max_message_size \
             and the envelope line)",
            meta.len()
        )));
    }

    let mut reader = io::BufReader::new(file);
    let mut line = Vec::new();
    (&mut reader)
        .take(max_line)
        .read_until(b'\n', &mut line)
        .map_err(|e| PickupError::Later(format!("reading it: {e}")))?;
    if line.last() != Some(&b'\n') {
        return Err(PickupError::Corrupt(format!(
            "no envelope line (a JSON line of at most {max_line} bytes)"
        )));
    }
    let env: IncomingEnvelope = serde_json::from_slice(&line)
        .map_err(|e| PickupError::Corrupt(format!("bad envelope line: {e}")))?;
    if env.recipients.is_empty() {
        return Err(PickupError::Corrupt("no recipients".into()));
    }
    // sendmail enforces the limit; a file written into incoming/ directly
    // (the spool's group may) must not get past it either.
    // Each recipient once, as sendmail writes them: a list that repeats
    // one address must not carry it past the limit.
    let max = limits.max_recipients;
    let recipients = cleanup::unique_recipients(env.recipients);
    if recipients.len() > max {
        return Err(PickupError::Corrupt(format!(
            "{} recipients, more than [listen] max_recipients ({max})",
            recipients.len()
        )));
    }
    let envelope = Envelope::new(env.sender, recipients);

    // Who submitted is what the kernel says owns the file, never a name
    // the submitter wrote (as Postfix's pickup does).
    let received = cleanup::received(
        &queue.options().hostname,
        &cleanup::Origin::Local { uid },
        std::time::SystemTime::now(),
    );
    let mut body = Bounded {
        inner: reader,
        left: max_message,
        failure: None,
    };
    let mut message = received.as_bytes().chain(&mut body);
    let queued = queue.enqueue_from(&envelope, &mut message);
    match (queued, body.failure) {
        (Ok(id), _) => Ok((id, uid)),
        (Err(_), Some(SourceFailure::TooLarge)) => Err(PickupError::Corrupt(format!(
            "the message grew past {max_message} bytes while being read"
        ))),
        (Err(_), Some(SourceFailure::Read(e))) => {
            Err(PickupError::Later(format!("reading it: {e}")))
        }
        (Err(e), None) => Err(PickupError::Queue(e)),
    }
}

fn file_kind(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "of an unknown kind"
    }
}

/// Why reading the submitted file (not writing the queue) failed.
enum SourceFailure {
    TooLarge,
    Read(io::Error),
}

/// A reader that fails past `left` bytes, and remembers whether a failure
/// was its own, so pickup can tell a bad file from a queue that refuses.
struct Bounded<R> {
    inner: R,
    left: u64,
    failure: Option<SourceFailure>,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // One byte past the limit tells a file that ends there from one
        // that goes on.
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX).max(1));
        let n = match self.inner.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.failure = Some(SourceFailure::Read(e));
                return Err(copy);
            }
        };
        if n as u64 > self.left {
            self.failure = Some(SourceFailure::TooLarge);
            return Err(io::Error::other("the message is too large"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
