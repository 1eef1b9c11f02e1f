//! The on-disk spool: one `<id>.msg` file per message, holding the message
//! as received followed by its first metadata (a trailer), and, once an
//! attempt or an operator has changed that state, a `<id>.meta` file that
//! supersedes the trailer and is replaced atomically.
//!
//! One file, not two, because most messages leave at their first attempt:
//! such a message then costs one file creation, one fdatasync and one
//! unlink (besides the grouped directory fsyncs), where a separate metadata file doubled each of them (and added a
//! rename), and those file-system operations are most of the cost of
//! relaying a message.
//!
//! Write order, so that a crash at any point leaves either nothing
//! acknowledged or a complete message:
//! 1. `queue/<id>.msg` is created with `create_new`; the message, its
//!    metadata as JSON and a footer naming the JSON's length are written
//!    and fdatasynced;
//! 2. the `queue/` directory is fsynced. Only then is the message acknowledged.
//!
//! Later states go to `tmp/<id>.meta`, fsynced, renamed to `queue/<id>.meta`,
//! directory fsynced. A `.msg` without footer written since the last start
//! is an unfinished write and is removed at start; a garbled footer, or a
//! missing one on an older file, is damage and is quarantined. The metadata carries a CRC-32 of the message, checked
//! while it is sent: what a power loss tore in an unacknowledged write, or
//! the disk damaged later, is never passed on. Removal unlinks the `.msg`
//! first, so a crash in between leaves a lone `.meta`, removed at start,
//! and fsyncs the directory (grouped like creations) before the removal
//! counts as done: a deleted or finished message does not come back after
//! a power loss. Quarantines fsync `corrupt/`, then `queue/`.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};

use rayon::prelude::*;

use crate::queue::meta::{MessageMeta, Queued};
use crate::queue::{MessageId, QueueError};

/// How long a starting queue waits for commands that work on the spool
/// directly to finish.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The spool directory of one queue.
#[derive(Debug)]
pub struct Spool {
    queue_sync: GroupSync,
    /// The spool directory's owner and group: files this process creates
    /// are given to them when it runs as someone else (root running a
    /// command on a stopped daemon's spool), so the daemon can read them.
    owner: Option<(u32, u32)>,
    /// When the queue before this one started on the spool (the lock
    /// file's time before this start rewrote it); `None` when unknown.
    /// A message file without footer written since then is an unfinished
    /// write of that run; an older one was complete at that start, and
    /// has been damaged since.
    last_start: Mutex<Option<std::time::SystemTime>>,
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
    file: Arc<File>,
}

impl MessageLock {
    /// The message file, open for reading; it stays open (and unlocked)
    /// after the lock is dropped, so an attempt reads the message without
    /// opening it again.
    pub fn file(&self) -> Arc<File> {
        Arc::clone(&self.file)
    }
}

impl Drop for MessageLock {
    /// Unlocks explicitly: the file may stay open elsewhere.
    fn drop(&mut self) {
        let _ = fs2::FileExt::unlock(&*self.file);
    }
}

/// A message being written into the spool.
#[derive(Debug)]
pub struct MessageWriter {
    id: MessageId,
    path: PathBuf,
    file: io::BufWriter<File>,
    size: u64,
    checksum: crc32fast::Hasher,
    done: bool,
}

/// The footer that ends every message file: `\nMQMETA1 `, the length of
/// the metadata JSON before it in ten digits, `\n`.
const FOOTER_MAGIC: &[u8] = b"\nMQMETA1 ";
const FOOTER_LEN: u64 = 20;

fn footer(json_len: usize) -> Vec<u8> {
    format!("\nMQMETA1 {json_len:010}\n").into_bytes()
}

/// What follows the message in its file: the metadata JSON and the footer.
fn trailer(meta: &MessageMeta) -> Vec<u8> {
    let mut out = meta.to_json();
    let footer = footer(out.len());
    out.extend_from_slice(&footer);
    out
}

/// The bytes of a complete message file: `body`, then `meta` (with the
/// body's size and checksum filled in) as the trailer. For tools and
/// benchmarks that build a spool without going through the queue.
pub fn message_file_bytes(body: &[u8], meta: &MessageMeta) -> Vec<u8> {
    let mut meta = meta.clone();
    meta.size = body.len() as u64;
    meta.checksum = Some(crc32fast::hash(body));
    let mut out = body.to_vec();
    out.extend_from_slice(&trailer(&meta));
    out
}

/// Why a message file's trailer cannot be read.
#[derive(Debug)]
enum TrailerError {
    /// No footer: the write never finished.
    Missing,
    Corrupt(String),
    Io(io::Error),
}

/// Reads the trailer of a message file: the length of the message before
/// it, and the metadata JSON.
fn read_trailer(file: &File) -> Result<(u64, Vec<u8>), TrailerError> {
    let len = file.metadata().map_err(TrailerError::Io)?.len();
    if len < FOOTER_LEN {
        return Err(TrailerError::Missing);
    }
    // One read covers the footer and, nearly always, the JSON.
    let tail_len = len.min(4096);
    let mut tail = vec![0u8; tail_len as usize];
    file.read_exact_at(&mut tail, len - tail_len)
        .map_err(TrailerError::Io)?;
    let foot = &tail[tail.len() - FOOTER_LEN as usize..];
    let digits = &foot[FOOTER_MAGIC.len()..FOOTER_LEN as usize - 1];
    // The footer is written last and whole: a cut one does not begin
    // where a footer begins. Its magic there with the rest garbled is
    // damage to a file that was complete.
    if !foot.starts_with(FOOTER_MAGIC) {
        return Err(TrailerError::Missing);
    }
    let json_len: u64 = std::str::from_utf8(digits)
        .ok()
        .filter(|d| d.bytes().all(|b| b.is_ascii_digit()) && foot[FOOTER_LEN as usize - 1] == b'\n')
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| {
            TrailerError::Corrupt(format!(
                "garbled footer {:?}",
                String::from_utf8_lossy(foot)
            ))
        })?;
    if json_len + FOOTER_LEN > len {
        return Err(TrailerError::Corrupt(format!(
            "the footer names {json_len} bytes of metadata in a file of {len}"
        )));
    }
    let body_len = len - FOOTER_LEN - json_len;
    let json = if json_len + FOOTER_LEN <= tail_len {
        let end = tail.len() - FOOTER_LEN as usize;
        tail[end - json_len as usize..end].to_vec()
    } else {
        let mut json = vec![0u8; json_len as usize];
        file.read_exact_at(&mut json, body_len)
            .map_err(TrailerError::Io)?;
        json
    };
    Ok((body_len, json))
}

/// What a start-up scan of the spool found.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Every message to schedule, by id.
    pub messages: Vec<Queued>,
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

/// Group commit of a directory's fsync: callers that arrive while one
/// fsync runs share the next one, so N concurrent enqueues cost about two
/// directory fsyncs instead of N. A caller returns only after an fsync
/// that began after its own rename has completed.
#[derive(Debug, Default)]
struct GroupSync {
    state: Mutex<SyncState>,
    done_cond: Condvar,
    /// The directory, opened once for all its fsyncs.
    dir: std::sync::OnceLock<File>,
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
            let result = self.sync_now(dir);
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

impl GroupSync {
    fn sync_now(&self, dir: &Path) -> Result<(), QueueError> {
        let file = match self.dir.get() {
            Some(f) => f,
            None => {
                let f = File::open(dir).map_err(io_error(dir))?;
                self.dir.get_or_init(|| f)
            }
        };
        file.sync_all().map_err(io_error(dir))
    }
}

/// Makes a directory entry change durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), QueueError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

impl Spool {
    /// Opens (creating if needed) the spool directories.
    pub fn open(root: &Path) -> Result<Spool, QueueError> {
        let mut spool = Spool {
            root: root.to_path_buf(),
            queue: root.join("queue"),
            tmp: root.join("tmp"),
            corrupt: root.join("corrupt"),
            incoming: root.join("incoming"),
            queue_sync: GroupSync::default(),
            owner: None,
            last_start: Mutex::new(None),
        };
        let root_existed = root.exists();
        // Private to the spool's owner, except that the owner's group may
        // pass through the spool (0710) to drop mail into `incoming/` and
        // reach the control socket: sendmail run by users in that group,
        // or installed set-group-id to it. They may not list or read what
        // waits in `incoming/`, and the sticky bit keeps them from
        // removing or replacing each other's files there.
        for (dir, mode) in [
            (&spool.root, 0o710),
            (&spool.queue, 0o700),
            (&spool.tmp, 0o700),
            (&spool.corrupt, 0o700),
            (&spool.incoming, 0o1730),
        ] {
            if !dir.exists() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(mode)
                    .create(dir)
                    .map_err(io_error(dir))?;
                // The umask would take the group's bits off.
                fs::set_permissions(dir, fs::Permissions::from_mode(mode))
                    .map_err(io_error(dir))?;
                if root_existed {
                    let owner = fs::metadata(root).map_err(io_error(root))?;
                    let created = fs::metadata(dir).map_err(io_error(dir))?;
                    if created.uid() != owner.uid() {
                        std::os::unix::fs::chown(dir, Some(owner.uid()), Some(owner.gid()))
                            .map_err(io_error(dir))?;
                    }
                }
            }
        }
        spool.owner = fs::metadata(root).ok().map(|m| (m.uid(), m.gid()));
        Ok(spool)
    }

    /// Gives a file this process created to the spool's owner, if the
    /// process runs as another user: a file root leaves behind with mode
    /// 0600 would otherwise be unreadable to the daemon, which would then
    /// quarantine it as corrupt.
    fn adopt(&self, file: &File, path: &Path) -> Result<(), QueueError> {
        let Some((uid, gid)) = self.owner else {
            return Ok(());
        };
        // Only the user differing counts: a daemon whose primary group
        // is not the directory's is still the owner. One fstat, next to
        // the fsyncs every created file costs.
        let needed = file.metadata().map_err(io_error(path))?.uid() != uid;
        if needed {
            std::os::unix::fs::fchown(file, Some(uid), Some(gid)).map_err(io_error(path))?;
        }
        Ok(())
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

    fn open_lock_file(&self) -> Result<(File, PathBuf), QueueError> {
        let path = self.root.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_error(&path))?;
        self.adopt(&file, &path)?;
        // The spool's group may pass through the spool: were the lock
        // readable to it, a member could hold it shared and keep the
        // daemon from starting. Spools made before were 0644.
        let mode = file.metadata().map_err(io_error(&path))?.mode();
        if mode & 0o077 != 0 {
            file.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(io_error(&path))?;
        }
        Ok((file, path))
    }

    /// Takes the exclusive lock that one running queue holds on a spool.
    /// Commands run directly on the spool hold it shared for a moment:
    /// those are waited for (up to [`LOCK_WAIT`]); a running queue is
    /// not, and the result is [`QueueError::Locked`].
    pub fn lock_exclusive(&self) -> Result<SpoolLock, QueueError> {
        let (mut file, path) = self.open_lock_file()?;
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        while fs2::FileExt::try_lock_exclusive(&file).is_err() {
            // Shared lockers only (no queue): the lock can be had shared.
            let other = File::open(&path).map_err(io_error(&path))?;
            let commands_only = fs2::FileExt::try_lock_shared(&other).is_ok();
            drop(other);
            if !commands_only || std::time::Instant::now() >= deadline {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                return Err(QueueError::Locked {
                    spool: self.root.clone(),
                    holder: pid.trim().to_string(),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // Empty: no queue ever started here (a command created the file).
        let before = file
            .metadata()
            .ok()
            .filter(|m| m.len() > 0)
            .and_then(|m| m.modified().ok());
        *self.last_start.lock().unwrap_or_else(|p| p.into_inner()) = before;
        // The pid is only a hint for the operator; the lock is what counts.
        let _ = file.set_len(0);
        let _ = writeln!(file, "{}", std::process::id());
        Ok(SpoolLock { _file: file })
    }

    /// Takes the spool lock shared, for a command that works on the spool
    /// with no queue running; `None` when a queue holds it (it may still
    /// be starting: its control socket is not up yet). While this lock
    /// lives, no queue starts on the spool.
    pub fn lock_shared(&self) -> Result<Option<SpoolLock>, QueueError> {
        let (file, _) = self.open_lock_file()?;
        match fs2::FileExt::try_lock_shared(&file) {
            Ok(()) => Ok(Some(SpoolLock { _file: file })),
            Err(_) => Ok(None),
        }
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
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(file) => {
                    if let Err(e) = self.adopt(&file, &path) {
                        let _ = fs::remove_file(&path);
                        return Err(e);
                    }
                    return Ok(MessageWriter {
                        id,
                        path,
                        file: io::BufWriter::with_capacity(16 * 1024, file),
                        size: 0,
                        checksum: crc32fast::Hasher::new(),
                        done: false,
                    });
                }
                // An id collision: never overwrite, take another id.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_error(&path)(e)),
            }
        }
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
        let path = writer.path.clone();
        let file = &mut writer.file;
        file.write_all(&trailer(meta))
            .and_then(|_| file.flush())
            .and_then(|_| file.get_ref().sync_data())
            .map_err(io_error(&path))?;
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
        self.commit_message(writer, &mut meta)?;
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
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_error(&tmp))?;
        self.adopt(&file, &tmp)?;
        file.write_all(&meta.to_json())
            .and_then(|_| file.sync_data())
            .map_err(io_error(&tmp))?;
        let dst = self.meta_path(&meta.id);
        fs::rename(&tmp, &dst).map_err(io_error(&dst))
    }

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
                return MessageMeta::from_json(&bytes)
                    .map_err(|reason| QueueError::Corrupt { path, reason })
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
        let meta = MessageMeta::from_json(&json).map_err(corrupt)?;
        if meta.size != body_len {
            return Err(corrupt(format!(
                "the message is {body_len} bytes, its metadata says {}",
                meta.size
            )));
        }
        Ok(meta)
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
        if file.metadata().map_err(io_error(&path))?.nlink() == 0 {
            return Ok(None);
        }
        Ok(Some(MessageLock {
            file: Arc::new(file),
        }))
    }

    /// Removes a finished message, durably: when this returns, a power
    /// loss cannot bring the message back to be sent again. The message
    /// file goes first: a crash in between leaves a lone `.meta`, which
    /// start-up removes, where the other order would leave a message file
    /// whose trailer still lists every recipient as pending. The directory
    /// fsync is shared with concurrent creations and removals.
    pub fn remove(&self, id: &MessageId) -> Result<(), QueueError> {
        self.unlink(id)?;
        self.queue_sync.sync(&self.queue)
    }

    /// Unlinks a message's files without making that durable.
    fn unlink(&self, id: &MessageId) -> Result<(), QueueError> {
        for path in [self.message_path(id), self.meta_path(id)] {
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
        self.move_to_corrupt(id, reason);
        self.sync_quarantine();
    }

    fn move_to_corrupt(&self, id: &str, reason: &str) {
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
    }

    /// Makes renames into `corrupt/` durable: the new entries first, so a
    /// power loss never leaves a quarantined file in neither directory.
    fn sync_quarantine(&self) {
        for dir in [&self.corrupt, &self.queue] {
            if let Err(e) = sync_dir(dir) {
                log::error!("{e}");
            }
        }
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
        // Every removal and quarantine below is made durable by one
        // directory fsync at the end, before any message is scheduled.
        let mut changed = false;
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
                    changed = true;
                }
            }
        }

        let mut candidates = Vec::new();
        for (stem, f) in found {
            let Ok(id) = stem.parse::<MessageId>() else {
                self.move_to_corrupt(&stem, "file name is not a queue id");
                report.quarantined += 1;
                changed = true;
                continue;
            };
            match (f.msg, f.meta) {
                (true, has_meta) => candidates.push((id, has_meta)),
                (false, true) => {
                    log::info!("{id}: removing the metadata of a removal interrupted by a crash");
                    let path = self.meta_path(&id);
                    fs::remove_file(&path).map_err(io_error(&path))?;
                    report.removed += 1;
                    changed = true;
                }
                (false, false) => {}
            }
        }

        let checked: Vec<(MessageId, Loaded)> = candidates
            .into_par_iter()
            .map(|(id, has_meta)| (id, self.load_one(&id, has_meta)))
            .collect();
        let mut parsed = Vec::with_capacity(checked.len());
        for (id, loaded) in checked {
            match loaded {
                Loaded::Unfinished => {
                    log::info!("{id}: removing unfinished write (message without metadata)");
                    let path = self.message_path(&id);
                    fs::remove_file(&path).map_err(io_error(&path))?;
                    report.removed += 1;
                    changed = true;
                }
                Loaded::Meta(m) => parsed.push((id, Ok(m))),
                Loaded::Corrupt(reason) => parsed.push((id, Err(reason))),
            }
        }
        for (id, result) in parsed {
            match result {
                Ok(meta) if !meta.pending => {
                    // Finished, but the crash came before the files were removed.
                    self.unlink(&id)?;
                    report.removed += 1;
                    changed = true;
                }
                Ok(meta) => report.messages.push(meta),
                Err(reason) => {
                    self.move_to_corrupt(id.as_str(), &reason);
                    report.quarantined += 1;
                    changed = true;
                }
            }
        }
        if changed {
            sync_dir(&self.corrupt)?;
            sync_dir(&self.queue)?;
        }
        report.messages.sort_by_key(|m| m.id);
        Ok(report)
    }
}

/// What start-up makes of one message file.
enum Loaded {
    Meta(Queued),
    Unfinished,
    Corrupt(String),
}

impl Spool {
    fn load_one(&self, id: &MessageId, has_meta: bool) -> Loaded {
        let path = self.message_path(id);
        let (queued, body_len) = if has_meta {
            // The `.meta` supersedes the trailer, which is not read: the
            // message file must only hold at least the message and a
            // footer.
            let path = self.meta_path(id);
            let queued = match fs::read(&path) {
                Ok(bytes) => Queued::from_json(&bytes),
                Err(e) => Err(format!("{}: {e}", path.display())),
            };
            let msg = self.message_path(id);
            let len = match fs::metadata(&msg) {
                Ok(m) => m.len(),
                Err(e) => return Loaded::Corrupt(format!("{}: {e}", msg.display())),
            };
            match queued {
                // Exactly the message: a file written before messages
                // carried a trailer, still good with its `.meta`.
                Ok(q) if len == q.size => (q, q.size),
                Ok(q) if len < q.size + FOOTER_LEN => {
                    return Loaded::Corrupt(format!(
                        "the message file is {len} bytes, too short for a message of {}",
                        q.size
                    ))
                }
                Ok(q) => (q, q.size),
                Err(reason) => return Loaded::Corrupt(reason),
            }
        } else {
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) => return Loaded::Corrupt(format!("{}: {e}", path.display())),
            };
            match read_trailer(&file) {
                Ok((body_len, json)) => match Queued::from_json(&json) {
                    Ok(q) => (q, body_len),
                    Err(reason) => return Loaded::Corrupt(reason),
                },
                Err(TrailerError::Missing) => return self.missing_footer(&file),
                Err(TrailerError::Corrupt(reason)) => return Loaded::Corrupt(reason),
                Err(TrailerError::Io(e)) => {
                    return Loaded::Corrupt(format!("{}: {e}", path.display()))
                }
            }
        };
        if queued.id != *id {
            return Loaded::Corrupt(format!("metadata names another id, {}", queued.id));
        }
        // A message of another size than the one acknowledged was
        // damaged after the fact.
        if queued.size != body_len {
            return Loaded::Corrupt(format!(
                "the message is {body_len} bytes, its metadata says {}",
                queued.size
            ));
        }
        Loaded::Meta(queued)
    }
}

impl Spool {
    /// A message file without footer: the write that made it never
    /// finished (it was never acknowledged) if it is newer than the last
    /// start; older, it was complete then and lost its end since.
    fn missing_footer(&self, file: &File) -> Loaded {
        let last_start = *self.last_start.lock().unwrap_or_else(|p| p.into_inner());
        let Some(last_start) = last_start else {
            return Loaded::Unfinished;
        };
        match file.metadata().and_then(|m| m.modified()) {
            Ok(written) if written >= last_start => Loaded::Unfinished,
            Ok(_) => Loaded::Corrupt(
                "no metadata trailer in a file older than the last start: damaged".into(),
            ),
            Err(e) => Loaded::Corrupt(format!("no metadata trailer: {e}")),
        }
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
        io::copy(reader, self).map_err(io_error(&self.path.clone()))
    }
}

impl Write for MessageWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.size += n as u64;
        self.checksum.update(&buf[..n]);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;

    fn meta_for(id: MessageId) -> MessageMeta {
        let env = Envelope::new(
            Some("a@example.org".parse().unwrap()),
            vec!["b@example.net".parse().unwrap()],
        );
        MessageMeta::new(id, &env, 0)
    }

    #[test]
    fn a_built_message_file_loads_and_a_cut_one_is_unfinished() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let (good, cut) = (MessageId::generate(), MessageId::generate());
        let body = b"Subject: x\r\n\r\nbody\r\n";
        let bytes = message_file_bytes(body, &meta_for(good));
        fs::write(spool.message_path(&good), &bytes).unwrap();
        let bytes = message_file_bytes(body, &meta_for(cut));
        fs::write(spool.message_path(&cut), &bytes[..bytes.len() - 1]).unwrap();
        let report = spool.load().unwrap();
        assert_eq!(report.messages.len(), 1);
        let meta = &report.messages[0];
        assert_eq!((meta.id, meta.size), (good, body.len() as u64));
        assert_eq!((report.removed, report.quarantined), (1, 0));
        let meta = spool.read_meta(&good).unwrap();
        assert_eq!(meta.checksum, Some(crc32fast::hash(body)));
        let read = spool.read_message(&meta, 1000).unwrap().unwrap();
        assert_eq!(read, body);
    }

    #[test]
    fn a_message_file_without_trailer_but_with_metadata_still_loads() {
        // The layout before trailers: the message alone, state in `.meta`.
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = MessageId::generate();
        let body = b"Subject: old\r\n\r\nbody\r\n";
        let mut meta = meta_for(id);
        meta.size = body.len() as u64;
        fs::write(spool.message_path(&id), body).unwrap();
        fs::write(spool.meta_path(&id), meta.to_json()).unwrap();
        let report = spool.load().unwrap();
        assert_eq!((report.messages.len(), report.quarantined), (1, 0));
        let meta = spool.read_meta(&id).unwrap();
        assert_eq!(spool.read_message(&meta, 1000).unwrap().unwrap(), body);
        // One byte short of the message is damage.
        fs::write(spool.message_path(&id), &body[1..]).unwrap();
        let report = spool.load().unwrap();
        assert_eq!((report.messages.len(), report.quarantined), (0, 1));
    }

    #[test]
    fn a_footer_naming_more_than_the_file_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = MessageId::generate();
        let mut bytes = b"short".to_vec();
        bytes.extend_from_slice(&footer(999));
        fs::write(spool.message_path(&id), &bytes).unwrap();
        let report = spool.load().unwrap();
        assert_eq!((report.messages.len(), report.quarantined), (0, 1));
    }
}
