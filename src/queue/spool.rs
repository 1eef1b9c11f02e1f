//! The on-disk spool: one `.msg` file (never rewritten) and one `.meta`
//! file (replaced atomically) per message, and the locks that keep two
//! processes or threads from working on the same thing.
//!
//! Write order, so that a crash at any point leaves either nothing
//! acknowledged or a complete message:
//! 1. `queue/<id>.msg` is created with `create_new`, written and fsynced;
//! 2. the metadata is written to `tmp/<id>.meta`, fsynced and renamed to
//!    `queue/<id>.meta`;
//! 3. the `queue/` directory is fsynced. Only then is the message acknowledged.
//!
//! A `.msg` without `.meta` is therefore an unfinished write and is removed
//! at start; a `.meta` without `.msg` cannot come from this code and is
//! quarantined.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

use rayon::prelude::*;

use crate::queue::meta::MessageMeta;
use crate::queue::{MessageId, QueueError};

/// The spool directory of one queue.
#[derive(Debug)]
pub struct Spool {
    queue_sync: GroupSync,
    root: PathBuf,
    queue: PathBuf,
    tmp: PathBuf,
    corrupt: PathBuf,
    incoming: PathBuf,
}

/// Holds the exclusive lock on a spool for as long as it lives.
#[derive(Debug)]
pub struct SpoolLock {
    _file: File,
}

/// Holds a message's lock: no worker, management command or other process
/// touches the message while it lives.
#[derive(Debug)]
pub struct MessageLock {
    _file: File,
}

/// A message being written into the spool.
#[derive(Debug)]
pub struct MessageWriter {
    id: MessageId,
    path: PathBuf,
    file: io::BufWriter<File>,
    size: u64,
    done: bool,
}

/// What a start-up scan of the spool found.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub messages: Vec<MessageMeta>,
    /// Messages moved to `corrupt/`.
    pub quarantined: usize,
    /// Unfinished writes removed.
    pub removed: usize,
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> QueueError + '_ {
    move |source| QueueError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Makes a directory entry change durable.
/// Group commit of a directory's fsync: callers that arrive while one
/// fsync runs share the next one, so N concurrent enqueues cost about two
/// directory fsyncs instead of N. A caller returns only after an fsync
/// that began after its own rename has completed.
#[derive(Debug, Default)]
struct GroupSync {
    state: Mutex<SyncState>,
    done_cond: Condvar,
}

#[derive(Debug, Default)]
struct SyncState {
    /// Tickets handed out; a ticket is taken after the caller's rename.
    requested: u64,
    /// Every ticket up to this one is durable.
    done: u64,
    running: bool,
}

impl GroupSync {
    fn sync(&self, dir: &Path) -> Result<(), QueueError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.requested += 1;
        let ticket = st.requested;
        loop {
            if st.done >= ticket {
                return Ok(());
            }
            if st.running {
                st = self.done_cond.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.running = true;
            let covers = st.requested;
            drop(st);
            let result = sync_dir(dir);
            st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.running = false;
            if result.is_ok() {
                st.done = st.done.max(covers);
            }
            self.done_cond.notify_all();
            result?;
        }
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), QueueError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

impl Spool {
    /// Opens (creating if needed) the spool directories.
    pub fn open(root: &Path) -> Result<Spool, QueueError> {
        let spool = Spool {
            root: root.to_path_buf(),
            queue: root.join("queue"),
            tmp: root.join("tmp"),
            corrupt: root.join("corrupt"),
            incoming: root.join("incoming"),
            queue_sync: GroupSync::default(),
        };
        // Private to the spool's owner; `incoming/` also lets the owner's
        // group drop mail (sendmail run by users in that group) without
        // letting anyone list or read what waits there.
        for (dir, mode) in [
            (&spool.root, 0o700),
            (&spool.queue, 0o700),
            (&spool.tmp, 0o700),
            (&spool.corrupt, 0o700),
            (&spool.incoming, 0o730),
        ] {
            if !dir.exists() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(mode)
                    .create(dir)
                    .map_err(io_error(dir))?;
                // The umask would take the group's write bit off incoming/.
                fs::set_permissions(dir, fs::Permissions::from_mode(mode))
                    .map_err(io_error(dir))?;
            }
        }
        Ok(spool)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn queue_dir(&self) -> &Path {
        &self.queue
    }

    pub fn incoming_dir(&self) -> &Path {
        &self.incoming
    }

    /// Takes the exclusive lock that one running queue holds on a spool.
    pub fn lock_exclusive(&self) -> Result<SpoolLock, QueueError> {
        let path = self.root.join("lock");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_error(&path))?;
        if fs2::FileExt::try_lock_exclusive(&file).is_err() {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(QueueError::Locked {
                spool: self.root.clone(),
                holder: pid.trim().to_string(),
            });
        }
        // The pid is only a hint for the operator; the lock is what counts.
        let _ = file.set_len(0);
        let _ = writeln!(file, "{}", std::process::id());
        Ok(SpoolLock { _file: file })
    }

    pub fn message_path(&self, id: &MessageId) -> PathBuf {
        self.queue.join(format!("{id}.msg"))
    }

    pub fn meta_path(&self, id: &MessageId) -> PathBuf {
        self.queue.join(format!("{id}.meta"))
    }

    /// Starts writing a new message under a fresh id.
    pub fn create_message(&self) -> Result<MessageWriter, QueueError> {
        loop {
            let id = MessageId::generate();
            let path = self.message_path(&id);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(MessageWriter {
                        id,
                        path,
                        file: io::BufWriter::with_capacity(64 * 1024, file),
                        size: 0,
                        done: false,
                    })
                }
                // An id collision: never overwrite, take another id.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_error(&path)(e)),
            }
        }
    }

    /// Makes a written message and its metadata durable. When this
    /// returns, the message survives a crash or power loss.
    pub fn commit_message(
        &self,
        mut writer: MessageWriter,
        meta: &MessageMeta,
    ) -> Result<(), QueueError> {
        debug_assert_eq!(writer.id, meta.id);
        let path = writer.path.clone();
        writer.file.flush().map_err(io_error(&path))?;
        writer.file.get_ref().sync_data().map_err(io_error(&path))?;
        self.write_meta_file(meta)?;
        self.queue_sync.sync(&self.queue)?;
        writer.done = true;
        Ok(())
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
        self.commit_message(writer, &meta)?;
        log::info!(
            "{}: from=<{}>, size={}, nrcpt={}{}",
            meta.id,
            envelope.sender.as_ref().map(|a| a.as_str()).unwrap_or(""),
            meta.size,
            meta.recipients.len(),
            if is_dsn { ", notice" } else { "" }
        );
        Ok(meta)
    }

    /// Replaces a message's metadata atomically and durably.
    pub fn write_meta(&self, meta: &MessageMeta) -> Result<(), QueueError> {
        self.write_meta_file(meta)?;
        self.queue_sync.sync(&self.queue)
    }

    fn write_meta_file(&self, meta: &MessageMeta) -> Result<(), QueueError> {
        let tmp = self.tmp.join(format!("{}.meta", meta.id));
        let mut file = File::create(&tmp).map_err(io_error(&tmp))?;
        file.write_all(&meta.to_json())
            .and_then(|_| file.sync_data())
            .map_err(io_error(&tmp))?;
        let dst = self.meta_path(&meta.id);
        fs::rename(&tmp, &dst).map_err(io_error(&dst))
    }

    pub fn read_meta(&self, id: &MessageId) -> Result<MessageMeta, QueueError> {
        let path = self.meta_path(id);
        let bytes = fs::read(&path).map_err(io_error(&path))?;
        MessageMeta::from_json(&bytes).map_err(|reason| QueueError::Corrupt { path, reason })
    }

    /// Locks a message, waiting for whoever holds it. `None` when the
    /// message is gone (delivered or deleted meanwhile).
    pub fn lock_message(&self, id: &MessageId) -> Result<Option<MessageLock>, QueueError> {
        let path = self.message_path(id);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(&path)(e)),
        };
        fs2::FileExt::lock_exclusive(&file).map_err(io_error(&path))?;
        // Removed between open and lock: the lock is on a dead inode.
        if !self.meta_path(id).exists() {
            return Ok(None);
        }
        Ok(Some(MessageLock { _file: file }))
    }

    /// Removes a finished message. Metadata goes first, so a crash in
    /// between leaves a bare `.msg` that start-up removes.
    pub fn remove(&self, id: &MessageId) -> Result<(), QueueError> {
        for path in [self.meta_path(id), self.message_path(id)] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&path)(e)),
            }
        }
        Ok(())
    }

    /// Moves whatever files a message has into `corrupt/`, logging why.
    pub fn quarantine(&self, id: &str, reason: &str) {
        log::error!("{id}: moved to {}: {reason}", self.corrupt.display());
        for ext in ["meta", "msg"] {
            let from = self.queue.join(format!("{id}.{ext}"));
            let to = self.corrupt.join(format!("{id}.{ext}"));
            match fs::rename(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => log::error!("{id}: cannot quarantine {}: {e}", from.display()),
            }
        }
        let _ = sync_dir(&self.queue);
    }

    /// Reads the message's header block (up to the first empty line).
    pub fn read_header(&self, id: &MessageId, limit: usize) -> Result<Vec<u8>, QueueError> {
        let path = self.message_path(id);
        let file = File::open(&path).map_err(io_error(&path))?;
        let mut reader = BufReader::new(file);
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

    /// Scans the spool at start: clears `tmp/`, removes unfinished writes,
    /// quarantines what does not parse and returns every message.
    pub fn load(&self) -> Result<LoadReport, QueueError> {
        let mut report = LoadReport::default();
        for entry in fs::read_dir(&self.tmp).map_err(io_error(&self.tmp))? {
            let path = entry.map_err(io_error(&self.tmp))?.path();
            if fs::remove_file(&path).is_ok() {
                report.removed += 1;
            }
        }

        #[derive(Default)]
        struct Found {
            msg: bool,
            meta: bool,
        }
        let mut found: HashMap<String, Found> = HashMap::new();
        for entry in fs::read_dir(&self.queue).map_err(io_error(&self.queue))? {
            let entry = entry.map_err(io_error(&self.queue))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            match name.rsplit_once('.') {
                Some((stem, "msg")) => found.entry(stem.to_string()).or_default().msg = true,
                Some((stem, "meta")) => found.entry(stem.to_string()).or_default().meta = true,
                _ => {
                    log::error!(
                        "{name}: moved to {}: not a spool file",
                        self.corrupt.display()
                    );
                    let _ = fs::rename(self.queue.join(&name), self.corrupt.join(&name));
                    report.quarantined += 1;
                }
            }
        }

        let mut complete = Vec::new();
        for (stem, f) in found {
            let Ok(id) = stem.parse::<MessageId>() else {
                self.quarantine(&stem, "file name is not a queue id");
                report.quarantined += 1;
                continue;
            };
            match (f.msg, f.meta) {
                (true, true) => complete.push(id),
                (true, false) => {
                    log::info!("{id}: removing unfinished write (message without metadata)");
                    let path = self.message_path(&id);
                    fs::remove_file(&path).map_err(io_error(&path))?;
                    report.removed += 1;
                }
                (false, true) => {
                    self.quarantine(id.as_str(), "metadata without message file");
                    report.quarantined += 1;
                }
                (false, false) => {}
            }
        }

        let parsed: Vec<(MessageId, Result<MessageMeta, String>)> = complete
            .into_par_iter()
            .map(|id| {
                let result = self
                    .read_meta(&id)
                    .map_err(|e| e.to_string())
                    .and_then(|m| {
                        if m.id != id {
                            return Err(format!("metadata names another id, {}", m.id));
                        }
                        // A message file of another size than the one
                        // acknowledged was damaged after the fact.
                        let path = self.message_path(&id);
                        match fs::metadata(&path) {
                            Ok(f) if f.len() == m.size => Ok(m),
                            Ok(f) => Err(format!(
                                "message file is {} bytes, the metadata says {}",
                                f.len(),
                                m.size
                            )),
                            Err(e) => Err(format!("{}: {e}", path.display())),
                        }
                    });
                (id, result)
            })
            .collect();
        for (id, result) in parsed {
            match result {
                Ok(meta) if !meta.has_pending() => {
                    // Finished, but the crash came before the files were removed.
                    self.remove(&id)?;
                    report.removed += 1;
                }
                Ok(meta) => report.messages.push(meta),
                Err(reason) => {
                    self.quarantine(id.as_str(), &reason);
                    report.quarantined += 1;
                }
            }
        }
        report.messages.sort_by_key(|m| m.id);
        Ok(report)
    }
}

impl MessageWriter {
    pub fn id(&self) -> MessageId {
        self.id
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Copies everything from `reader` into the message.
    pub fn copy_from(&mut self, reader: &mut dyn Read) -> Result<u64, QueueError> {
        let n = io::copy(reader, &mut self.file).map_err(io_error(&self.path))?;
        self.size += n;
        Ok(n)
    }
}

impl Write for MessageWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for MessageWriter {
    /// A message dropped before commit was never acknowledged: remove it.
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.path);
        }
    }
}
