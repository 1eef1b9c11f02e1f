//! What the start-up load makes of one message's files: its state, or
//! why it is an unfinished write, damaged, or gone. Reads only, through
//! the open `queue/` directory; the load acts on the verdicts.

use std::fs::File;
use std::io::{self, Read};

use super::at::DirAt;
use super::listing::{META, MSG};
use super::trailer::{read_trailer, TrailerError};
use super::Spool;
use crate::queue::meta::Queued;
use crate::queue::MessageId;

/// What the load makes of one message.
#[derive(Debug)]
pub(super) enum Verdict {
    /// A message to schedule, or, when nothing is pending, to remove.
    Queued(Queued),
    /// A message file without footer written since the last start: a
    /// write never acknowledged.
    Unfinished,
    Corrupt(String),
    /// Its files went since the listing (delivered or deleted).
    Gone,
    /// A `.meta` without message: a removal cut short by a crash.
    LoneMeta,
    /// Out of file descriptors or memory: nothing is wrong with the
    /// message, but the load cannot go on now.
    Failed(io::Error),
}

/// How much of a `.meta` the first read asks for; they are 0.5–2 KB.
const META_READ: usize = 8 * 1024;

/// True for errors that say nothing about the file.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EINTR | libc::EAGAIN)
    )
}

impl Spool {
    /// Inspects one message's files; `buf` is scratch space.
    pub(super) fn inspect(
        &self,
        dir: &DirAt,
        id: &MessageId,
        kinds: u8,
        buf: &mut Vec<u8>,
    ) -> Verdict {
        match self.inspect_files(dir, id, kinds, buf) {
            // Finished while it was read (new mail is delivered during
            // the load) and its file recycled for another message: what
            // was read is not this message's, and it is gone. Its name
            // never comes back, so a name still there is the file read.
            Verdict::Corrupt(_) | Verdict::Unfinished
                if kinds & MSG != 0 && !self.message_path(id).exists() =>
            {
                Verdict::Gone
            }
            verdict => verdict,
        }
    }

    fn inspect_files(&self, dir: &DirAt, id: &MessageId, kinds: u8, buf: &mut Vec<u8>) -> Verdict {
        if kinds & MSG == 0 {
            return Verdict::LoneMeta;
        }
        let read = if kinds & META != 0 {
            self.inspect_meta(dir, id, buf)
        } else {
            self.inspect_trailer(dir, id)
        };
        let (queued, body_len) = match read {
            Ok(read) => read,
            Err(verdict) => return verdict,
        };
        if queued.id != *id {
            return Verdict::Corrupt(format!("metadata names another id, {}", queued.id));
        }
        // A message of another size than the one acknowledged was
        // damaged after the fact.
        if queued.size != body_len {
            return Verdict::Corrupt(format!(
                "the message is {body_len} bytes, its metadata says {}",
                queued.size
            ));
        }
        Verdict::Queued(queued)
    }

    /// The verdict on an error opening or measuring one of `id`'s files.
    fn open_failed(&self, id: &MessageId, ext: &str, e: io::Error) -> Verdict {
        if e.kind() == io::ErrorKind::NotFound {
            Verdict::Gone
        } else if transient(&e) {
            Verdict::Failed(e)
        } else {
            let path = self.queue.join(format!("{id}.{ext}"));
            Verdict::Corrupt(format!("{}: {e}", path.display()))
        }
    }

    /// The state of a message with a `.meta` file, and the length of the
    /// message it names.
    ///
    /// The message file is not looked at: at 10^6 messages its `fstatat`
    /// (a lookup in a directory of 2·10^6 names) was a third of the
    /// load's CPU. Whether it still holds the message is checked when an
    /// attempt opens it (`Spool::read_locked`), on the open file.
    fn inspect_meta(
        &self,
        dir: &DirAt,
        id: &MessageId,
        buf: &mut Vec<u8>,
    ) -> Result<(Queued, u64), Verdict> {
        match dir.open_file(id, "meta") {
            Ok(file) => self.parse_meta(id, file, buf).map(|q| {
                let size = q.size;
                (q, size)
            }),
            // Gone with its message (removals unlink the message first):
            // the message file says which.
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.inspect_trailer(dir, id),
            Err(e) => Err(self.open_failed(id, "meta", e)),
        }
    }

    /// Parses a `.meta` from one read, which nearly always holds it
    /// whole. A read ends short of a full buffer only at the end of a
    /// file but for a signal; should a short read ever cut the JSON, the
    /// file is read again whole before it is called damaged.
    fn parse_meta(
        &self,
        id: &MessageId,
        mut file: File,
        buf: &mut Vec<u8>,
    ) -> Result<Queued, Verdict> {
        let mut filled = 0;
        buf.resize(META_READ, 0);
        loop {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.open_failed(id, "meta", e)),
            }
            if filled < buf.len() {
                break;
            }
            buf.resize(buf.len() * 2, 0);
        }
        if let Ok(q) = Queued::from_json(&buf[..filled]) {
            return Ok(q);
        }
        let path = self.meta_path(id);
        match std::fs::read(&path) {
            Ok(bytes) => Queued::from_json(&bytes).map_err(|e| Verdict::Corrupt(e.to_string())),
            Err(e) => Err(self.open_failed(id, "meta", e)),
        }
    }

    /// The state of a message from its file's trailer, and the length of
    /// the message before it.
    fn inspect_trailer(&self, dir: &DirAt, id: &MessageId) -> Result<(Queued, u64), Verdict> {
        let file = dir
            .open_file(id, "msg")
            .map_err(|e| self.open_failed(id, "msg", e))?;
        match read_trailer(&file) {
            Ok((body_len, json)) => match Queued::from_json(&json) {
                Ok(q) => Ok((q, body_len)),
                Err(e) => Err(Verdict::Corrupt(e.to_string())),
            },
            Err(TrailerError::Missing) => Err(self.missing_footer(&file)),
            Err(TrailerError::Corrupt(reason)) => Err(Verdict::Corrupt(reason)),
            Err(TrailerError::Io(e)) => Err(self.open_failed(id, "msg", e)),
        }
    }

    /// A message file without footer: the write that made it never
    /// finished (it was never acknowledged) if it is newer than the last
    /// start; older, it was complete then and lost its end since.
    fn missing_footer(&self, file: &File) -> Verdict {
        let last_start = *self.last_start.lock().unwrap_or_else(|p| p.into_inner());
        let Some(last_start) = last_start else {
            return Verdict::Unfinished;
        };
        match file.metadata().and_then(|m| m.modified()) {
            Ok(written) if written >= last_start => Verdict::Unfinished,
            Ok(_) => Verdict::Corrupt(
                "no metadata trailer in a file older than the last start: damaged".into(),
            ),
            Err(e) => Verdict::Corrupt(format!("no metadata trailer: {e}")),
        }
    }
}
