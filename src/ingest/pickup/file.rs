//! One file of `incoming/`, checked and queued: only a regular file
//! with one name, of bounded size, with a valid envelope line.

use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::envelope::Envelope;
use crate::ingest::cleanup;
use crate::ingest::incoming::{valid_envid, IncomingEnvelope, IncomingLimits, MAX_ENVID};
use crate::queue::{MessageId, Queue};

/// Why a file in `incoming/` was not queued.
#[derive(Debug, thiserror::Error)]
pub(super) enum PickupError {
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

pub(super) fn pickup_one(
    queue: &Queue,
    limits: IncomingLimits,
    path: &Path,
) -> Result<(MessageId, u32), PickupError> {
    let (file, meta) = open_submission(path)?;
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
    let envelope = read_envelope(&mut reader, limits)?;

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
    let queued = queue.begin().and_then(|mut incoming| {
        incoming.set_origin(format!("uid={uid}"));
        incoming.copy_from(&mut message)?;
        incoming.commit_local(&envelope)
    });
    match (queued, body.failure) {
        (Ok(id), _) => Ok((id, uid)),
        (Err(_), Some(SourceFailure::TooLarge)) => Err(PickupError::Corrupt(format!(
            "the message grew past {max_message} bytes while being read"
        ))),
        (Err(_), Some(SourceFailure::Read(e))) => {
            Err(PickupError::Later(format!("reading it: {e}")))
        }
        // Refused for what it holds: sendmail refuses the same, so only
        // a file written into incoming/ by hand gets here; never queueable.
        (Err(crate::queue::QueueError::BadMessage(why)), None) => {
            Err(PickupError::Corrupt(format!("refused: {why}")))
        }
        (Err(e), None) => Err(PickupError::Queue(e)),
    }
}

/// Opens a file of `incoming/` if it is what sendmail writes: a regular
/// file with one name.
fn open_submission(path: &Path) -> Result<(fs::File, fs::Metadata), PickupError> {
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
    Ok((file, meta))
}

/// Reads the envelope line, within the limits.
fn read_envelope(
    reader: &mut io::BufReader<fs::File>,
    limits: IncomingLimits,
) -> Result<Envelope, PickupError> {
    let max_line = limits.max_envelope_line();
    let mut line = Vec::new();
    (&mut *reader)
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
    let mut envelope = Envelope::new(env.sender, recipients);
    if let Some(envid) = env.envid {
        if !valid_envid(&envid) {
            return Err(PickupError::Corrupt(format!(
                "bad envid (printable ASCII, at most {MAX_ENVID} characters): {:?}",
                envid.chars().take(MAX_ENVID).collect::<String>()
            )));
        }
        envelope.params.envid = Some(envid);
    }
    envelope.params.ret = env.ret;
    for r in &mut envelope.recipients {
        r.notify = env.notify;
    }
    Ok(envelope)
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
pub(super) enum SourceFailure {
    TooLarge,
    Read(io::Error),
}

/// A reader that fails past `left` bytes, and remembers whether a failure
/// was its own, so pickup can tell a bad file from a queue that refuses.
pub(super) struct Bounded<R> {
    pub(super) inner: R,
    pub(super) left: u64,
    pub(super) failure: Option<SourceFailure>,
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
