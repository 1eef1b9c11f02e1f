//! Reading what the spool holds: a message's metadata, its header, the
//! message itself.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};

use super::lock::MessageLock;
use super::trailer::{read_trailer, too_short, TrailerError};
use super::{io_error, Spool};
use crate::queue::meta::MessageMeta;
use crate::queue::{MessageId, QueueError};

impl Spool {
    /// A message's current metadata: its `.meta` file if it has one, else
    /// the trailer of its message file.
    pub fn read_meta(&self, id: &MessageId) -> Result<MessageMeta, QueueError> {
        self.read_meta_with(id, None)
    }

    /// As [`Spool::read_meta`], reading the trailer through the lock's
    /// open file.
    pub fn read_locked(
        &self,
        id: &MessageId,
        lock: &MessageLock,
    ) -> Result<MessageMeta, QueueError> {
        self.read_meta_with(id, Some(&lock.file))
    }

    fn read_meta_with(
        &self,
        id: &MessageId,
        open: Option<&File>,
    ) -> Result<MessageMeta, QueueError> {
        let path = self.meta_path(id);
        match fs::read(&path) {
            Ok(bytes) => {
                let meta = MessageMeta::from_json(&bytes).map_err(|e| QueueError::Corrupt {
                    path,
                    reason: e.to_string(),
                })?;
                if let Some(file) = open {
                    // The start-up load leaves this check to the attempt.
                    let path = self.message_path(id);
                    let len = file.metadata().map_err(io_error(&path))?.len();
                    if let Some(reason) = too_short(len, meta.size) {
                        return Err(QueueError::Corrupt { path, reason });
                    }
                }
                return Ok(meta);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&path)(e)),
        }
        let path = self.message_path(id);
        let opened;
        let file = match open {
            Some(f) => f,
            None => {
                opened = File::open(&path).map_err(io_error(&path))?;
                &opened
            }
        };
        let corrupt = |reason: String| QueueError::Corrupt {
            path: path.clone(),
            reason,
        };
        let (body_len, json) = read_trailer(file).map_err(|e| match e {
            TrailerError::Missing => corrupt("no metadata trailer (an unfinished write)".into()),
            TrailerError::Corrupt(reason) => corrupt(reason),
            TrailerError::Io(e) => io_error(&path)(e),
        })?;
        let meta = MessageMeta::from_json(&json).map_err(|e| corrupt(e.to_string()))?;
        if meta.id != *id && open.is_none() {
            // Opened as this message, read after it was finished and its
            // file recycled for another: this one is gone.
            return Err(gone(&path));
        }
        if meta.size != body_len {
            return Err(corrupt(format!(
                "the message is {body_len} bytes, its metadata says {}",
                meta.size
            )));
        }
        Ok(meta)
    }

    /// Reads a whole message, as received, if it is at most `limit` bytes.
    pub fn read_message(
        &self,
        meta: &MessageMeta,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, QueueError> {
        if meta.size > limit {
            return Ok(None);
        }
        let path = self.message_path(&meta.id);
        let mut bytes = Vec::with_capacity(meta.size as usize);
        let file = File::open(&path).map_err(io_error(&path))?;
        (&file)
            .take(meta.size)
            .read_to_end(&mut bytes)
            .map_err(io_error(&path))?;
        check_named(&file, &path)?;
        if let Some(reason) = too_short(bytes.len() as u64, meta.size) {
            return Err(QueueError::Corrupt { path, reason });
        }
        Ok(Some(bytes))
    }

    /// Reads the message's header block (up to the first empty line).
    pub fn read_header(&self, meta: &MessageMeta, limit: usize) -> Result<Vec<u8>, QueueError> {
        let path = self.message_path(&meta.id);
        let file = File::open(&path).map_err(io_error(&path))?;
        let mut reader = BufReader::new((&file).take(meta.size));
        let mut header = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(io_error(&path))?;
            if n == 0 || line == b"\r\n" || line == b"\n" || header.len() + n > limit {
                break;
            }
            header.extend_from_slice(&line);
        }
        check_named(&file, &path)?;
        Ok(header)
    }
}

/// What a reader that opened a message file by name finds when the
/// message was finished meanwhile.
fn gone(path: &std::path::Path) -> QueueError {
    io_error(path)(io::Error::new(
        io::ErrorKind::NotFound,
        "the message was removed while it was read",
    ))
}

/// Fails with [`gone`] unless `path` still names `file`: what was read
/// through an open file is the message's only if its file was not
/// recycled meanwhile (it never comes back under the old name).
fn check_named(file: &File, path: &std::path::Path) -> Result<(), QueueError> {
    match super::pool::still_named(file, path) {
        Ok(true) => Ok(()),
        Ok(false) => Err(gone(path)),
        Err(e) => Err(io_error(path)(e)),
    }
}
