//! Reading what the spool holds: a message's metadata, its header, the
//! message itself.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};

use super::lock::MessageLock;
use super::trailer::{read_trailer, TrailerError};
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
                return MessageMeta::from_json(&bytes).map_err(|e| QueueError::Corrupt {
                    path,
                    reason: e.to_string(),
                })
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
        File::open(&path)
            .and_then(|f| f.take(meta.size).read_to_end(&mut bytes))
            .map_err(io_error(&path))?;
        Ok(Some(bytes))
    }

    /// Reads the message's header block (up to the first empty line).
    pub fn read_header(&self, meta: &MessageMeta, limit: usize) -> Result<Vec<u8>, QueueError> {
        let path = self.message_path(&meta.id);
        let file = File::open(&path).map_err(io_error(&path))?;
        let mut reader = BufReader::new(file.take(meta.size));
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
        Ok(header)
    }
}
