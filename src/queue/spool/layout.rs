//! The spool's layout: the names of what a spool directory holds. For
//! code that has a spool's root but no open [`Spool`](super::Spool) (the
//! sendmail command, the control client); an open spool answers the same
//! through its methods.

use std::path::{Path, PathBuf};

/// Messages waiting: `<id>.msg`, and `<id>.meta` once the state changed.
pub const QUEUE: &str = "queue";
/// Metadata being written, before its rename into `queue/`.
pub const TMP: &str = "tmp";
/// Message files of finished messages, kept to be written over by new
/// ones (no file created or freed per message): never read as messages.
pub const FREE: &str = "free";
/// Files quarantined as damaged.
pub const CORRUPT: &str = "corrupt";
/// Mail dropped by local users (sendmail), waiting for pickup.
pub const INCOMING: &str = "incoming";
/// The daemon's control socket.
pub const CONTROL_SOCKET: &str = "control.sock";
/// The spool lock, holding the running queue's pid.
pub const LOCK: &str = "lock";

/// MTA-STS policies of recipient domains, one file per domain.
pub const MTA_STS: &str = "mta-sts";

/// `<root>/mta-sts`.
pub fn mta_sts(root: &Path) -> PathBuf {
    root.join(MTA_STS)
}

/// `<root>/queue`.
pub fn queue(root: &Path) -> PathBuf {
    root.join(QUEUE)
}

/// `<root>/tmp`.
pub fn tmp(root: &Path) -> PathBuf {
    root.join(TMP)
}

/// `<root>/free`.
pub fn free(root: &Path) -> PathBuf {
    root.join(FREE)
}

/// `<root>/corrupt`.
pub fn corrupt(root: &Path) -> PathBuf {
    root.join(CORRUPT)
}

/// `<root>/incoming`.
pub fn incoming(root: &Path) -> PathBuf {
    root.join(INCOMING)
}

/// `<root>/control.sock`.
pub fn control_socket(root: &Path) -> PathBuf {
    root.join(CONTROL_SOCKET)
}

/// `<root>/lock`.
pub fn lock(root: &Path) -> PathBuf {
    root.join(LOCK)
}
