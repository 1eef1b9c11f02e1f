//! Reading the queue one message at a time, in directory order: what
//! `list` streams, so that neither the daemon nor the command ever holds
//! the whole queue's metadata.

use std::fs::ReadDir;
use std::path::PathBuf;

use crate::queue::meta::MessageMeta;
use crate::queue::spool::{io_error, Spool};
use crate::queue::{MessageId, QueueError};

/// The queued messages' metadata, read one at a time as the directory
/// lists them (not sorted: sorting needs every name first, which delays
/// the first message by the time to read the whole directory).
///
/// A message that disappears between the directory's listing and the
/// read of its metadata (delivered, deleted) is skipped, as is one whose
/// metadata cannot be read (the start-up check quarantines those). An
/// error reading the directory itself ends the iteration with that error.
pub struct Messages<'a> {
    spool: &'a Spool,
    dir: PathBuf,
    entries: Option<ReadDir>,
}

impl<'a> Messages<'a> {
    pub(super) fn open(spool: &'a Spool) -> Result<Messages<'a>, QueueError> {
        let dir = spool.queue_dir().to_path_buf();
        let entries = std::fs::read_dir(&dir).map_err(io_error(&dir))?;
        Ok(Messages {
            spool,
            dir,
            entries: Some(entries),
        })
    }
}

impl Iterator for Messages<'_> {
    type Item = Result<MessageMeta, QueueError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let entry = match self.entries.as_mut()?.next()? {
                Ok(e) => e,
                Err(e) => {
                    // One error, then the end: a directory that failed
                    // once is not read on.
                    self.entries = None;
                    return Some(Err(io_error(&self.dir)(e)));
                }
            };
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".msg"))
                .and_then(|stem| stem.parse::<MessageId>().ok())
            else {
                continue;
            };
            // Gone meanwhile (delivered): not an error.
            if let Ok(meta) = self.spool.read_meta(&id) {
                return Some(Ok(meta));
            }
        }
    }
}
