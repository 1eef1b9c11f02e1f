//! What a queue needs to know to run: where it keeps mail, how many
//! workers deliver it, how long they retry, what it refuses, and how it
//! tells senders. The daemon builds these from its configuration file
//! ([`crate::Config::queue_options`]); an embedder starts from
//! [`QueueOptions::new`].

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::retry::RetryPolicy;

/// How a [`crate::Queue`] runs.
///
/// ```
/// use std::time::Duration;
/// use mailqueue::QueueOptions;
///
/// let mut options = QueueOptions::new("/var/spool/myapp-mail");
/// options.workers = 4;
/// options.retry.max_lifetime = Duration::from_secs(86400);
/// options.notices.from = "postmaster@example.org".into();
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct QueueOptions {
    /// The spool directory; created if missing. One queue at a time may
    /// hold it.
    pub spool: PathBuf,
    /// This host's name, as notices name it (`Reporting-MTA`) and in the
    /// default notice sender.
    pub hostname: String,
    /// Delivery threads: attempts that run at once.
    pub workers: usize,
    /// When to retry a recipient, and when to give up.
    pub retry: RetryPolicy,
    /// After how long a recipient still waiting gets its sender a delay
    /// notice (once); zero for none.
    pub delay_warning: Duration,
    /// What makes the queue refuse new mail.
    pub limits: QueueLimits,
    /// The notices (RFC 3464) sent to senders.
    pub notices: NoticeOptions,
    /// The DKIM keys messages are signed with when queued; none by
    /// default.
    pub dkim: crate::dkim::DkimSigner,
    /// Off (the default): [`crate::Queue::open`] returns once every
    /// message queued on disk is read back and scheduled, which takes
    /// seconds with 10^6 of them. On: it returns at once, taking and
    /// delivering new mail while a thread reads the spool (the daemon
    /// runs so); [`crate::Queue::wait_loaded`] waits for the end.
    pub background_load: bool,
}

/// Past these, [`crate::Queue::enqueue`] refuses new mail with a
/// temporary error; notices are never refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueLimits {
    /// Messages in the queue.
    pub max_messages: u64,
    /// Bytes of message text in the queue.
    pub max_bytes: u64,
    /// Bytes that must stay free on the spool's file system.
    pub min_free_bytes: u64,
}

/// The notices the queue sends to senders.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NoticeOptions {
    /// Off: failures are logged, senders are not told.
    pub enabled: bool,
    /// The notices' `From:`; empty for `MAILER-DAEMON@` the hostname.
    pub from: String,
    /// Largest message returned whole with a failure notice (RET=FULL);
    /// larger ones get their header returned.
    pub max_return_size: u64,
}

impl QueueOptions {
    /// The built-in defaults (the daemon's configuration file has the
    /// same) for a queue kept in `spool`, on a host named as the kernel
    /// says.
    pub fn new(spool: impl Into<PathBuf>) -> QueueOptions {
        QueueOptions {
            spool: spool.into(),
            hostname: crate::sys::hostname(),
            workers: 16,
            retry: RetryPolicy::default(),
            delay_warning: Duration::from_secs(4 * 3600),
            limits: QueueLimits::default(),
            notices: NoticeOptions::default(),
            dkim: crate::dkim::DkimSigner::default(),
            background_load: false,
        }
    }

    /// The `From:` of notices.
    pub(crate) fn notice_from(&self) -> String {
        if self.notices.from.is_empty() {
            format!("MAILER-DAEMON@{}", self.hostname)
        } else {
            self.notices.from.clone()
        }
    }
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            max_messages: 100_000,
            max_bytes: 10 * 1024 * 1024 * 1024,
            min_free_bytes: 100 * 1024 * 1024,
        }
    }
}

impl Default for NoticeOptions {
    fn default() -> Self {
        NoticeOptions {
            enabled: true,
            from: String::new(),
            max_return_size: 50_000,
        }
    }
}

/// The parts of a running queue's options that may change while it runs:
/// the retry policy, the delay warning and the notice settings. Kept as a
/// whole copy of the options, swapped on a change, so that a notice is
/// made from one consistent set; a reader holds the lock only to copy the
/// policy or clone the `Arc`, so reading it at each use costs next to
/// nothing against an attempt.
pub(crate) struct LivePolicy(RwLock<Arc<QueueOptions>>);

impl LivePolicy {
    pub(crate) fn new(options: &QueueOptions) -> LivePolicy {
        LivePolicy(RwLock::new(Arc::new(options.clone())))
    }

    /// The options in force now.
    pub(crate) fn options(&self) -> Arc<QueueOptions> {
        Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The retry policy in force now.
    pub(crate) fn retry(&self) -> RetryPolicy {
        self.0.read().unwrap_or_else(|p| p.into_inner()).retry
    }

    /// [`RetryPolicy::delay`] of the policy in force now.
    pub(crate) fn delay(&self, tries: u32) -> Duration {
        self.retry().delay(tries)
    }

    /// [`RetryPolicy::gives_up`] of the policy in force now.
    pub(crate) fn gives_up(&self, tries: u32, age: Duration) -> bool {
        self.retry().gives_up(tries, age)
    }

    /// Puts in force a changed copy of the options.
    pub(crate) fn change(&self, change: impl FnOnce(&mut QueueOptions)) {
        let mut current = self.0.write().unwrap_or_else(|p| p.into_inner());
        let mut new = QueueOptions::clone(&current);
        change(&mut new);
        *current = Arc::new(new);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_policy_is_read_at_the_next_use_and_readers_keep_theirs() {
        let live = LivePolicy::new(&QueueOptions::new("/nonexistent"));
        let before = live.options();
        assert!(!live.gives_up(1, Duration::ZERO));
        live.change(|o| {
            o.retry.max_tries = 1;
            o.notices.enabled = false;
        });
        assert!(live.gives_up(1, Duration::ZERO));
        assert!(!live.options().notices.enabled);
        // A notice being made with the old settings finishes with them.
        assert!(before.notices.enabled);
        assert_eq!(before.retry.max_tries, 20);
    }
}
