//! The incoming-file format: what the sendmail command writes into
//! `<spool>/incoming/` and pickup reads back. One line of JSON (the
//! envelope), then the message as it will be queued, less the `Received:`
//! line pickup adds from what the kernel says of the file (its owner).
//!
//! Both sides take their bounds from here, so sendmail never reports as
//! queued a file that pickup would refuse.

use serde::{Deserialize, Serialize};

use crate::address::Address;
use crate::envelope::{Notify, Ret};
use crate::id::MessageId;

/// Room in the envelope line for one recipient: the longest address
/// (64 + 1 + 255 bytes) twice over for JSON escapes, with its quotes.
const ENVELOPE_BYTES_PER_RECIPIENT: u64 = 700;

/// What sendmail may add to a message of `max_message_size` bytes (From,
/// Date, Message-ID), so that a message it accepted is never refused at
/// pickup.
pub const ADDED_HEADERS: u64 = 4096;

/// Mode of an incoming file: the daemon reads it through the spool's
/// group (the file's owner is whoever submitted it); the submitter's
/// umask must not take that away.
pub const FILE_MODE: u32 = 0o640;

/// The bounds of an incoming file, from the listener's limits: a local
/// submission may be as large, and have as many recipients, as one over
/// SMTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncomingLimits {
    /// Most recipients of one message.
    pub max_recipients: usize,
    /// Largest message, as the sender wrote it.
    pub max_message_size: u64,
}

impl IncomingLimits {
    /// Longest envelope line pickup reads: every recipient
    /// `max_recipients` allows at its longest, and the sender; bounded,
    /// so it can be held in memory.
    pub fn max_envelope_line(&self) -> u64 {
        (self.max_recipients as u64)
            .saturating_mul(ENVELOPE_BYTES_PER_RECIPIENT)
            .saturating_add(4096)
    }

    /// Largest message (after the envelope line) pickup takes: what
    /// sendmail may have accepted plus the header fields it adds.
    pub fn max_message(&self) -> u64 {
        self.max_message_size.saturating_add(ADDED_HEADERS)
    }
}

/// The envelope line of an incoming file.
#[derive(Debug, Serialize, Deserialize)]
pub struct IncomingEnvelope {
    /// `None` for the null sender.
    pub sender: Option<Address>,
    /// In the order given, duplicates included (pickup removes them).
    pub recipients: Vec<Address>,
    /// RFC 3461 NOTIFY for every recipient (sendmail's `-N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
    /// RFC 3461 RET (sendmail's `-R`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<Ret>,
    /// RFC 3461 ENVID (sendmail's `-V`), checked with [`valid_envid`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
}

/// Longest ENVID taken (RFC 3461 §4.4: at most 100 characters).
pub const MAX_ENVID: usize = 100;

/// Whether an ENVID may be kept: printable ASCII, at most [`MAX_ENVID`]
/// characters (it goes into notices' header lines).
pub fn valid_envid(envid: &str) -> bool {
    envid.len() <= MAX_ENVID && envid.bytes().all(|b| (0x21..0x7f).contains(&b))
}

impl IncomingEnvelope {
    /// The envelope line, with its newline.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

/// The names of a new incoming file: the one it is written under, which
/// pickup ignores (and removes once stale), and the one it is renamed to.
/// The random tail keeps other submitters, who may write into
/// `incoming/` but not list it, from guessing a name to open or replace.
pub fn file_names(id: MessageId) -> (String, String) {
    let tail = fastrand::u64(..);
    (
        format!(".{id}-{tail:016x}.tmp"),
        format!("{id}-{tail:016x}.mail"),
    )
}

/// Whether pickup takes a file of this name (the others are unfinished
/// writes or strays).
pub fn is_ready(name: &str) -> bool {
    name.ends_with(".mail") && !name.starts_with('.')
}
