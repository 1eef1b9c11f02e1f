//! What a command selects: the filter, the selection (ids, or all),
//! files still in `incoming/`, and what a bulk command did.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::queue::meta::{MessageMeta, Timestamp};
use crate::queue::{MessageId, QueueError};

/// Which messages a command lists or acts on, besides their ids: every
/// condition given must hold. The default matches every message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// A pending recipient at this domain (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The sender: an address, `@domain` for any sender at a domain, or
    /// `<>` for the null sender (notices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// Arrived at least this many seconds ago.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub older_than_secs: Option<u64>,
    /// Held messages (with `deferred`: held or deferred ones).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
    /// Deferred messages: not held, tried at least once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deferred: bool,
}

impl Filter {
    /// True when the filter matches every message.
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    /// Whether `m` matches, at `now`.
    pub fn matches(&self, m: &MessageMeta, now: Timestamp) -> bool {
        if let Some(domain) = &self.domain {
            let wanted = domain.trim_start_matches('@');
            if !m
                .pending()
                .any(|r| r.address.domain().eq_ignore_ascii_case(wanted))
            {
                return false;
            }
        }
        if let Some(sender) = &self.sender {
            let ok = match (&m.sender, sender.as_str()) {
                (None, "<>" | "" | "MAILER-DAEMON") => true,
                (None, _) => false,
                (Some(a), s) => match s.strip_prefix('@') {
                    Some(domain) => a.domain().eq_ignore_ascii_case(domain),
                    None => a.as_str().eq_ignore_ascii_case(s.trim_matches(['<', '>'])),
                },
            };
            if !ok {
                return false;
            }
        }
        if let Some(secs) = self.older_than_secs {
            if now.since(m.arrival) < Duration::from_secs(secs) {
                return false;
            }
        }
        if self.held || self.deferred {
            let deferred = !m.hold && m.pending().any(|r| r.tries > 0);
            if !((self.held && m.hold) || (self.deferred && deferred)) {
                return false;
            }
        }
        true
    }
}

/// The messages a bulk command acts on: the ids given, or every message
/// (`all`), narrowed by the filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<MessageId>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    #[serde(default, skip_serializing_if = "Filter::is_empty")]
    pub filter: Filter,
}

/// A file in `incoming/`, not picked up yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncomingFile {
    pub name: String,
    pub size: u64,
    /// When it was written.
    pub modified: Timestamp,
}

/// What a bulk command did: how many messages it acted on, and the ones
/// it could not, with why.
#[derive(Debug, Default)]
pub struct BulkOutcome {
    pub done: usize,
    pub failures: Vec<(MessageId, QueueError)>,
}

impl BulkOutcome {
    pub(super) fn fail(&mut self, id: MessageId, e: QueueError) {
        self.failures.push((id, e));
    }
}

/// How many messages a bulk command locks at once: each lock is an open
/// file, and the process shares its limit with connections.
pub(super) fn batch_size() -> usize {
    (crate::sys::open_files_limit() / 4).clamp(64, 4096) as usize
}
