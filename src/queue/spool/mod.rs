//! The on-disk spool: one `<id>.msg` file per message, holding the message
//! as received followed by its first metadata (a trailer), and, once an
//! attempt or an operator has changed that state, a `<id>.meta` file that
//! supersedes the trailer and is replaced atomically.
//!
//! One file, not two, because most messages leave at their first attempt:
//! such a message then costs one fdatasync and two renames (besides the
//! grouped directory fsyncs), where a separate metadata file doubled the
//! file-system work. And no file is created or freed per message while
//! `free/` has one to write over (see `pool`): creating and freeing files
//! was most of the cost of relaying a message.
//!
//! Write order, so that a crash at any point leaves either nothing
//! acknowledged or a complete message:
//! 1. a file in `free/` (recycled, or new) is written over with the
//!    message, its metadata as JSON and a footer naming the JSON's length,
//!    cut to that length and fdatasynced;
//! 2. it is renamed to `queue/<id>.msg`, never over an existing file;
//! 3. the `queue/` directory is fsynced. Only then is the message acknowledged.
//!
//! Later states go to `tmp/<id>.meta`, fsynced, renamed to `queue/<id>.meta`,
//! directory fsynced. A `.msg` without footer written since the last start
//! (left by a version that wrote in `queue/`) is an unfinished write and is
//! removed at start; a garbled footer, or a missing one on an older file,
//! is damage and is quarantined. The metadata carries a CRC-32 of the
//! message, checked while it is sent: what a power loss tore in an
//! unacknowledged write, or the disk damaged later, is never passed on.
//! Removal renames the `.msg` into `free/` (or unlinks it) first, so a
//! crash in between leaves a lone `.meta`, removed at start, and fsyncs
//! the directory (grouped like creations) before the removal counts as
//! done: a deleted or finished message does not come back after a power
//! loss. Quarantines fsync `corrupt/`, then `queue/`.

mod at;
mod census;
mod inspect;
pub mod layout;
mod listing;
mod load;
mod lock;
mod meta_write;
mod pool;
mod read;
mod remove;
mod sync;
mod trailer;
mod write;

#[cfg(test)]
mod tests;

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::queue::{MessageId, QueueError};

use census::Census;
pub use census::{CensusCounts, State, STATES};
pub use load::LoadReport;
pub(crate) use load::LoadSink;
pub use lock::{MessageLock, SpoolLock, LOCK_WAIT};
use pool::FilePool;
pub(crate) use sync::sync_dir;
use sync::GroupSync;
pub use trailer::message_file_bytes;
pub use write::MessageWriter;

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
    /// What the spool holds, by state, kept as this process changes it.
    census: Census,
    /// Files of finished messages, to write new ones over.
    pool: Arc<FilePool>,
    root: PathBuf,
    queue: PathBuf,
    tmp: PathBuf,
    corrupt: PathBuf,
    incoming: PathBuf,
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> QueueError + '_ {
    move |source| QueueError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Spool {
    /// Opens (creating if needed) the spool directories.
    pub fn open(root: &Path) -> Result<Spool, QueueError> {
        let mut spool = Spool {
            root: root.to_path_buf(),
            queue: layout::queue(root),
            tmp: layout::tmp(root),
            corrupt: layout::corrupt(root),
            incoming: layout::incoming(root),
            queue_sync: GroupSync::default(),
            owner: None,
            last_start: Mutex::new(None),
            census: Census::default(),
            pool: Arc::new(FilePool::new(layout::free(root))),
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
            (&layout::free(root), 0o700),
            (&spool.incoming, 0o1730),
        ] {
            if !dir.exists() {
                create_dir(dir, mode, root_existed.then_some(root))?;
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

    /// Messages and bytes by state and the oldest message's start, as
    /// this process has seen them since its start-up scan ([`Spool::load`]):
    /// exact in the daemon, which makes every change; empty for a spool
    /// opened without a scan.
    pub fn census(&self) -> CensusCounts {
        self.census.counts()
    }

    /// Messages and bytes the census counts, in every state.
    pub fn usage(&self) -> (u64, u64) {
        self.census.totals()
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

    /// `corrupt/`: files quarantined as damaged.
    pub fn corrupt_dir(&self) -> &Path {
        &self.corrupt
    }

    /// `tmp/`: metadata being written, before its rename into `queue/`.
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// The daemon's control socket.
    pub fn control_socket(&self) -> PathBuf {
        layout::control_socket(&self.root)
    }

    /// The spool lock file.
    pub fn lock_path(&self) -> PathBuf {
        layout::lock(&self.root)
    }

    pub fn message_path(&self, id: &MessageId) -> PathBuf {
        self.queue.join(format!("{id}.msg"))
    }

    pub fn meta_path(&self, id: &MessageId) -> PathBuf {
        self.queue.join(format!("{id}.meta"))
    }
}

/// Creates one spool directory with exactly `mode`; in a spool whose root
/// existed (`owner_of`), gives it to the root's owner.
fn create_dir(dir: &Path, mode: u32, owner_of: Option<&Path>) -> Result<(), QueueError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(io_error(dir))?;
    // The umask would take the group's bits off.
    fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(io_error(dir))?;
    if let Some(root) = owner_of {
        let owner = fs::metadata(root).map_err(io_error(root))?;
        let created = fs::metadata(dir).map_err(io_error(dir))?;
        if created.uid() != owner.uid() {
            std::os::unix::fs::chown(dir, Some(owner.uid()), Some(owner.gid()))
                .map_err(io_error(dir))?;
        }
    }
    Ok(())
}
