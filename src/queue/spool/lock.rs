//! Locks: the spool lock a running queue holds exclusively (and commands
//! working on the spool directly hold shared), and one lock per message.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;

use super::{io_error, Spool};
use crate::queue::{MessageId, QueueError};

/// How long a starting queue waits for commands that work on the spool
/// directly to finish.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Holds the exclusive lock on a spool for as long as it lives.
#[derive(Debug)]
pub struct SpoolLock {
    _file: File,
}

/// Holds a message's lock: no worker, management command or other process
/// touches the message while it lives.
#[derive(Debug)]
pub struct MessageLock {
    pub(super) file: Arc<File>,
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

impl Spool {
    fn open_lock_file(&self) -> Result<(File, PathBuf), QueueError> {
        let path = self.lock_path();
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
        // The files in `free/` are written over by the lock's holder
        // only: a command on the spool could otherwise take one the
        // queue is writing.
        self.pool.adopt_existing();
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
        // Removed between open and lock: the lock is on a file that is
        // gone, or recycled for another message.
        if !super::pool::still_named(&file, &path).map_err(io_error(&path))? {
            return Ok(None);
        }
        Ok(Some(MessageLock {
            file: Arc::new(file),
        }))
    }

    /// Locks a message again through the file an earlier lock opened (an
    /// attempt, once its delivery is over): no second open. `None` when
    /// the message is gone.
    pub(crate) fn relock_message(
        &self,
        id: &MessageId,
        file: Arc<File>,
    ) -> Result<Option<MessageLock>, QueueError> {
        let path = self.message_path(id);
        fs2::FileExt::lock_exclusive(&*file).map_err(io_error(&path))?;
        // Unlocked again on the way out if the message is gone.
        let lock = MessageLock { file };
        if !super::pool::still_named(&lock.file, &path).map_err(io_error(&path))? {
            return Ok(None);
        }
        Ok(Some(lock))
    }
}
