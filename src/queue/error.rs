//! What can go wrong with the queue itself, and whether it may pass.

use std::io;
use std::path::PathBuf;

use crate::id::MessageId;

/// A queue operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// Reading or writing a spool file failed (a full disk among others).
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// Another queue holds the spool.
    #[error("spool {spool} is in use by another mailqueue process (pid {holder})")]
    Locked {
        /// The spool directory.
        spool: PathBuf,
        /// The pid the lock file names.
        holder: String,
    },
    /// A metadata file cannot be read back (it is quarantined).
    #[error("{path}: corrupt metadata: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An envelope without recipients.
    #[error("a message needs at least one recipient")]
    NoRecipients,
    /// An operator command named a message not queued.
    #[error("no message {0} in the queue")]
    UnknownId(MessageId),
    /// The queue is shutting down and takes no new mail.
    #[error("the queue is closing")]
    Closed,
    /// The queue is over one of its limits ([`crate::QueueLimits`]).
    #[error("queue full: {0}")]
    Quota(String),
    /// The message is refused for what it holds (a header field
    /// repeated): sending it again unchanged fails again.
    #[error("message refused: {0}")]
    BadMessage(#[from] crate::ingest::hygiene::BadMessage),
    /// The message could not be signed (reading it back, or OpenSSL).
    #[error("DKIM: {0}")]
    Signing(#[from] crate::dkim::SignError),
}

impl QueueError {
    /// True when the disk (or the spool owner's disk quota) is full.
    pub fn is_no_space(&self) -> bool {
        matches!(self, QueueError::Io { source, .. } if is_no_space(source))
    }

    /// True when the failure may go away by itself (a full disk, a lock).
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            QueueError::Io { .. }
                | QueueError::Locked { .. }
                | QueueError::Closed
                | QueueError::Signing(_)
        )
    }
}

/// The disk, or the user's disk quota, is full, for now (ENOSPC, EDQUOT).
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}
