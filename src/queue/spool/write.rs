//! Writing a message durably: the message file created under a fresh id,
//! its trailer written and fdatasynced, the directory fsync shared with
//! concurrent writers. Later states go to `.meta` files (`meta_write`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use super::pool::FilePool;
use super::trailer::trailer;
use super::{io_error, Spool};
use crate::queue::meta::MessageMeta;
use crate::queue::{MessageId, QueueError};

/// A message being written into the spool.
#[derive(Debug)]
pub struct MessageWriter {
    id: MessageId,
    /// Where the file is: in `free/` until committed, then `queue/<id>.msg`.
    path: PathBuf,
    /// Renamed into `queue/`.
    placed: bool,
    /// Written over a recycled file, which may be longer.
    recycled: bool,
    pool: Arc<FilePool>,
    file: io::BufWriter<File>,
    size: u64,
    checksum: crc32fast::Hasher,
    done: bool,
    /// The message's first bytes, where its header is, for the
    /// Message-ID the queueing line shows.
    head: Vec<u8>,
    /// Where the message came from, for the queueing line:
    /// `client=[ip]` or `uid=N`.
    origin: Option<String>,
}

/// How much of a message's start is kept for its Message-ID.
const HEAD_MAX: usize = 64 * 1024;

/// Up to this much of a message after its header, a new start (fields
/// added at queueing, a DKIM signature) is written into the same file.
const IN_PLACE_MAX: u64 = 1024 * 1024;

impl Spool {
    /// Starts writing a new message under a fresh id, over a recycled
    /// file when the pool has one.
    pub fn create_message(&self) -> Result<MessageWriter, QueueError> {
        let id = loop {
            let id = MessageId::generate();
            // While the start-up load runs, an id it has yet to read is
            // not taken (see `claim_new_id`).
            if self.census.loading() && !self.claim_new_id(&id) {
                continue;
            }
            // Two ids alike are all but impossible, so no file is looked
            // for: the rename at commit refuses to replace a message.
            break id;
        };
        let free = super::layout::free(&self.root);
        let blank = self
            .pool
            .take(|file, path| self.adopt(file, path).map_err(io::Error::other))
            .map_err(io_error(&free))?;
        Ok(MessageWriter {
            id,
            path: blank.path,
            placed: false,
            recycled: blank.recycled,
            pool: Arc::clone(&self.pool),
            file: io::BufWriter::with_capacity(16 * 1024, blank.file),
            size: 0,
            checksum: crc32fast::Hasher::new(),
            done: false,
            head: Vec::new(),
            origin: None,
        })
    }

    /// While the start-up load runs: keeps it off a new message's id
    /// before the message's file exists, so it never takes the write in
    /// progress for an unfinished one and removes it. False when the id
    /// names files on disk (a leftover `.meta` too: it would supersede
    /// the new message's state), which the load has yet to deal with:
    /// take another.
    pub(super) fn claim_new_id(&self, id: &MessageId) -> bool {
        // Nobody else creates files in `queue/` while the queue holds
        // the spool lock: what is not there now does not appear before
        // the message file is created.
        let taken = [self.message_path(id), self.meta_path(id)]
            .iter()
            .any(|p| p.symlink_metadata().is_ok());
        if !taken {
            self.census.claim(*id);
        }
        !taken
    }

    /// Makes a written message and its metadata durable, completing
    /// `meta` with the message's size and checksum. When this returns, the
    /// message survives a crash or power loss.
    pub fn commit_message(
        &self,
        mut writer: MessageWriter,
        meta: &mut MessageMeta,
    ) -> Result<(), QueueError> {
        debug_assert_eq!(writer.id, meta.id);
        meta.size = writer.size;
        meta.checksum = Some(writer.checksum.clone().finalize());
        writer.write_trailer(meta)?;
        let path = writer.path.clone();
        writer.file.get_ref().sync_data().map_err(io_error(&path))?;
        writer.place(&self.message_path(&meta.id))?;
        self.queue_sync.sync(&self.queue)?;
        writer.done = true;
        self.census.set(meta);
        Ok(())
    }

    /// Makes many written messages durable, with two syncs in all: each
    /// message's trailer is written, one `syncfs` makes them durable, and
    /// one fsync of `queue/` their directory entries. One result per
    /// message, in order.
    pub fn store_many(
        &self,
        messages: Vec<(MessageWriter, crate::envelope::Envelope)>,
        is_dsn: bool,
    ) -> Vec<Result<MessageMeta, QueueError>> {
        let mut written = Vec::with_capacity(messages.len());
        for (mut writer, envelope) in messages {
            if envelope.recipients.is_empty() {
                written.push(Err(QueueError::NoRecipients));
                continue;
            }
            let mut meta = MessageMeta::new(writer.id(), &envelope, writer.size());
            meta.is_dsn = is_dsn;
            meta.checksum = Some(writer.checksum.clone().finalize());
            match writer.write_trailer(&meta) {
                Ok(()) => written.push(Ok((writer, meta))),
                Err(e) => written.push(Err(e)),
            }
        }
        let synced = File::open(&self.queue)
            .and_then(|dir| crate::sys::syncfs(&dir))
            .map_err(io_error(&self.queue));
        // Renamed into `queue/` only once their contents are durable.
        let placed: Vec<_> = written
            .into_iter()
            .map(|w| {
                let (mut writer, meta) = w?;
                if synced.is_ok() {
                    writer.place(&self.message_path(&meta.id))?;
                }
                Ok((writer, meta))
            })
            .collect();
        let synced = synced
            .and_then(|()| self.queue_sync.sync(&self.queue))
            .map_err(|e| e.to_string());
        placed
            .into_iter()
            .map(|w: Result<_, QueueError>| {
                let (mut writer, meta) = w?;
                if let Err(why) = &synced {
                    // Never acknowledged: dropping the writer takes its
                    // file out of `queue/` again.
                    return Err(QueueError::Io {
                        path: writer.path.clone(),
                        source: io::Error::other(why.clone()),
                    });
                }
                writer.done = true;
                self.census.set(&meta);
                log_stored(&meta, is_dsn);
                Ok(meta)
            })
            .collect()
    }

    /// Makes a written message durable with metadata for `envelope`;
    /// returns the metadata.
    pub fn store(
        &self,
        writer: MessageWriter,
        envelope: &crate::envelope::Envelope,
        is_dsn: bool,
    ) -> Result<MessageMeta, QueueError> {
        if envelope.recipients.is_empty() {
            return Err(QueueError::NoRecipients);
        }
        let mut meta = MessageMeta::new(writer.id(), envelope, writer.size());
        meta.is_dsn = is_dsn;
        let origin = writer
            .origin
            .as_ref()
            .map(|o| format!(", {o}"))
            .unwrap_or_default();
        let message_id = crate::logline::message_id(&writer.head)
            .map(|m| format!(", message-id={m}"))
            .unwrap_or_default();
        self.commit_message(writer, &mut meta)?;
        log::info!(
            "{}: from=<{}>, size={}, nrcpt={}{origin}{message_id}{}",
            meta.id,
            envelope.sender.as_ref().map(|a| a.as_str()).unwrap_or(""),
            meta.size,
            meta.recipients.len(),
            if is_dsn { ", notice" } else { "" }
        );
        Ok(meta)
    }
}

/// The line that logs a message stored by [`Spool::store_many`].
fn log_stored(meta: &MessageMeta, is_dsn: bool) {
    log::info!(
        "{}: from=<{}>, size={}, nrcpt={}{}",
        meta.id,
        meta.sender.as_ref().map(|a| a.as_str()).unwrap_or(""),
        meta.size,
        meta.recipients.len(),
        if is_dsn { ", notice" } else { "" }
    );
}

impl MessageWriter {
    /// Appends the metadata trailer and cuts what a recycled file held
    /// beyond it, so that the footer is the file's end.
    fn write_trailer(&mut self, meta: &MessageMeta) -> Result<(), QueueError> {
        let trailer = trailer(meta);
        let end = self.size + trailer.len() as u64;
        let file = &mut self.file;
        file.write_all(&trailer)
            .and_then(|_| file.flush())
            .map_err(io_error(&self.path))?;
        if self.recycled {
            let file = self.file.get_ref();
            if file.metadata().map_err(io_error(&self.path))?.len() != end {
                file.set_len(end).map_err(io_error(&self.path))?;
            }
        }
        Ok(())
    }

    /// Renames the written (and fdatasynced) file into `queue/` under its
    /// id, never over another message.
    fn place(&mut self, to: &std::path::Path) -> Result<(), QueueError> {
        crate::sys::rename_noreplace(&self.path, to).map_err(io_error(to))?;
        self.path = to.to_path_buf();
        self.placed = true;
        Ok(())
    }

    pub fn id(&self) -> MessageId {
        self.id
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Names where the message came from (`client=[ip]`, `uid=N`) for
    /// the line that logs its queueing.
    pub fn set_origin(&mut self, origin: String) {
        self.origin = Some(origin);
    }

    /// Copies everything from `reader` into the message.
    pub fn copy_from(&mut self, reader: &mut dyn Read) -> Result<u64, QueueError> {
        io::copy(reader, self).map_err(io_error(&self.path.clone()))
    }

    /// The message's first bytes (up to 64 KiB), where its header is.
    pub(crate) fn head(&self) -> &[u8] {
        &self.head
    }

    /// What was written so far, read from byte `from` on (a recycled file
    /// may hold more after it).
    pub(crate) fn read_back(&mut self, from: u64) -> io::Result<io::Take<File>> {
        self.file.flush()?;
        let mut file = File::open(&self.path)?;
        file.seek(io::SeekFrom::Start(from))?;
        Ok(file.take(self.size.saturating_sub(from)))
    }

    /// Names the message file in an I/O error.
    pub(crate) fn io_error(&self) -> impl FnOnce(io::Error) -> QueueError {
        let path = self.path.clone();
        move |source| QueueError::Io { path, source }
    }

    /// Replaces the message's first `cut` bytes with `start`. Size,
    /// checksum and head then describe the new message. Nothing of it is
    /// acknowledged yet (no trailer): a crash half-way leaves an
    /// unfinished write, removed at the next start.
    pub(crate) fn replace_start(
        &mut self,
        spool: &Spool,
        cut: u64,
        start: &[u8],
    ) -> Result<(), QueueError> {
        if self.size.saturating_sub(cut) <= IN_PLACE_MAX {
            return self.rewrite_in_place(cut, start);
        }
        self.rewrite_into_new_file(spool, cut, start)
    }

    /// The rest of the message held in memory, and the file written again
    /// from its start: no second file, so no inode allocated and freed per
    /// message that gains a header field or a signature.
    fn rewrite_in_place(&mut self, cut: u64, start: &[u8]) -> Result<(), QueueError> {
        let mut old = self.read_back(cut).map_err(self.io_error())?;
        let mut rest = Vec::with_capacity(self.size.saturating_sub(cut) as usize);
        old.read_to_end(&mut rest).map_err(self.io_error())?;
        let failed = self.io_error();
        self.file
            .seek(io::SeekFrom::Start(0))
            .and_then(|_| {
                self.size = 0;
                self.checksum = crc32fast::Hasher::new();
                self.head.clear();
                self.write_all(start)?;
                self.write_all(&rest)?;
                self.file.flush()?;
                // The new message is never shorter, but a stale tail
                // must not survive if it were.
                self.file.get_ref().set_len(self.size)
            })
            .map_err(failed)
    }

    /// For a large message: the new message written to `tmp/` (`start`,
    /// then the old message from `cut` on) and renamed over the old file,
    /// which it replaces whole or not at all.
    fn rewrite_into_new_file(
        &mut self,
        spool: &Spool,
        cut: u64,
        start: &[u8],
    ) -> Result<(), QueueError> {
        let mut old = self.read_back(cut).map_err(self.io_error())?;
        let tmp = spool.tmp.join(format!("{}.staged", self.id));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_error(&tmp))?;
        let written = spool.adopt(&file, &tmp).and_then(|()| {
            self.file = io::BufWriter::with_capacity(16 * 1024, file);
            self.size = 0;
            self.checksum = crc32fast::Hasher::new();
            self.head.clear();
            self.write_all(start)
                .and_then(|()| io::copy(&mut old, self).map(|_| ()))
                .and_then(|()| self.file.flush())
                .map_err(io_error(&tmp))?;
            fs::rename(&tmp, &self.path).map_err(io_error(&self.path))
        });
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }
}

impl Write for MessageWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.size += n as u64;
        self.checksum.update(&buf[..n]);
        if self.head.len() < HEAD_MAX {
            let take = n.min(HEAD_MAX - self.head.len());
            self.head.extend_from_slice(&buf[..take]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for MessageWriter {
    /// A message dropped before commit was never acknowledged: its file
    /// goes back to the pool.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if self.placed {
            // In `queue/` but not acknowledged (its directory fsync failed).
            if self.pool.recycle(&self.path).is_err() {
                let _ = fs::remove_file(&self.path);
            }
        } else {
            self.pool.give_back(std::mem::take(&mut self.path));
        }
    }
}
