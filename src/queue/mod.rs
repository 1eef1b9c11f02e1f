//! The queue engine: spool, time wheel, worker pool and the rules that
//! decide what happens to each recipient after an attempt.
//!
//! ```no_run
//! use std::sync::{Arc, Mutex};
//! use mailqueue::{DeliveryTarget, Envelope, Queue, QueueOptions};
//!
//! fn run(target: Arc<dyn DeliveryTarget>) -> Result<(), mailqueue::QueueError> {
//!     let queue = Queue::open(QueueOptions::new("/tmp/mailqueue-example"), target)?;
//!     let envelope = Envelope::new(Some("me@example.org".parse().unwrap()),
//!                                  vec!["you@example.net".parse().unwrap()]);
//!     // Returns once the message is on disk, fsynced.
//!     let id = queue.enqueue(&envelope, b"Subject: hi\r\n\r\nHello.\r\n")?;
//!     println!("queued as {id}");
//!     queue.close();
//!     Ok(())
//! }
//! ```

pub mod admin;
pub mod clock;
pub mod dsn;
mod fxhash;
mod loader;
pub mod meta;
pub mod options;
pub mod recent_lag;
pub mod retry;
pub mod spool;
pub mod stats;
pub mod timer;
pub mod wheel;
mod worker;

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use crossbeam_channel::Sender;

use crate::delivery::DeliveryTarget;
use crate::envelope::Envelope;

pub use crate::id::{BadMessageId, MessageId};
use meta::{MessageMeta, Timestamp};
use options::LivePolicy;
pub use options::{NoticeOptions, QueueLimits, QueueOptions};
use retry::RetryPolicy;
use spool::{MessageWriter, Spool, SpoolLock};
use timer::{Command, Timer};

mod current_target;
mod error;
mod incoming;
mod pinned;
mod quota;
mod stage;
use current_target::CurrentTarget;
pub use error::{is_no_space, QueueError};
pub use incoming::IncomingMessage;
pub use pinned::BuildTarget;

/// State shared by the queue handle and its worker threads.
pub(crate) struct Shared {
    /// The options as the queue was opened; the retry policy and the
    /// notice settings in force are `policy`'s.
    pub options: QueueOptions,
    pub spool: Spool,
    /// The retry policy and the notice settings now: `options`' at first,
    /// then as [`Queue::set_retry`] and [`Queue::set_notices`] set them.
    pub policy: LivePolicy,
    /// The targets, replaceable while the queue runs (see
    /// [`Queue::set_targets`]); each is itself a target, so a worker
    /// delivers through `&*shared.target`.
    pub target: Arc<CurrentTarget>,
    pub bounce_target: Arc<CurrentTarget>,
    /// Targets messages are pinned to by `requeue --target`.
    pub pinned: pinned::PinnedTargets,
    /// The quotas now: `options.limits` at first, then as
    /// [`Queue::set_limits`] sets them.
    pub limits: RwLock<QueueLimits>,
    pub timer: Sender<Command>,
    pub stopping: AtomicBool,
    /// How far the start-up load has come.
    pub load: loader::LoadState,
    /// Messages with an attempt running; a second attempt of the same
    /// message never starts (a release or flush during an attempt could
    /// otherwise hand it to a second worker).
    pub inflight: Mutex<HashSet<MessageId>>,
    /// A sender of the job channel for messages due at once; taken away
    /// at shutdown.
    pub direct_jobs: Mutex<Option<Sender<Job>>>,
    /// Panicked attempts by message, in this process; see `worker::MAX_PANICS`.
    pub panics: Mutex<HashMap<MessageId, u32>>,
    pub stats: stats::Stats,
}

/// A message handed to a worker, and when it was due: the worker counts
/// how late it starts.
#[derive(Debug, Clone, Copy)]
pub struct Job {
    pub id: MessageId,
    pub due: Instant,
}

impl Shared {
    /// Hands a message to the time wheel for `when` (wall-clock).
    pub(crate) fn schedule(&self, id: MessageId, when: Timestamp) {
        let wait = clock::wait_until(when, Timestamp::now(), self.policy.retry().max_interval);
        if wait.is_zero() {
            // Due now and a worker free: skip the timer thread's wake-up.
            let direct = self.direct_jobs.lock().unwrap_or_else(|p| p.into_inner());
            if direct.as_ref().is_some_and(|jobs| {
                jobs.try_send(Job {
                    id,
                    due: Instant::now(),
                })
                .is_ok()
            }) {
                return;
            }
        }
        let _ = self.timer.send(Command::Add(id, Instant::now() + wait));
    }

    /// Stores a message durably and schedules it at once. Notices are
    /// never refused for quota: refusing one would lose the bounce.
    pub(crate) fn store(
        &self,
        mut writer: MessageWriter,
        envelope: &Envelope,
        is_dsn: bool,
    ) -> Result<MessageId, QueueError> {
        if !is_dsn {
            self.check_quota(0)?;
        }
        stage::stage(self, &mut writer, is_dsn)?;
        let meta = self.spool.store(writer, envelope, is_dsn)?;
        self.stored(&meta);
        Ok(meta.id)
    }

    /// Schedules a message made durable (the spool counted it).
    pub(crate) fn stored(&self, meta: &MessageMeta) {
        self.schedule(meta.id, meta.next_attempt);
    }

    /// Stores a notice made in memory.
    pub(crate) fn store_notice(
        &self,
        envelope: &Envelope,
        bytes: &[u8],
    ) -> Result<MessageId, QueueError> {
        let mut w = self.spool.create_message()?;
        w.copy_from(&mut &bytes[..])?;
        let id = self.store(w, envelope, true)?;
        self.stats.notice();
        Ok(id)
    }

    /// Makes every scheduled message due now, and, during the start-up
    /// load, those it schedules from now on.
    pub(crate) fn flush_all(&self) {
        self.load.flush_all();
        let _ = self.timer.send(Command::Flush(None));
    }
}

/// A durable mail queue with its own worker threads.
pub struct Queue {
    shared: Arc<Shared>,
    timer: Mutex<Timer>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    loader: Mutex<Option<JoinHandle<()>>>,
    _lock: SpoolLock,
}

impl Queue {
    /// Opens the spool named in `options`, takes its lock, reads back every
    /// queued message and starts delivering to `target`. Notices go to
    /// `target` too.
    ///
    /// Returns once every queued message is scheduled, or, with
    /// [`QueueOptions::background_load`], at once, the spool being read
    /// by a thread of the queue's meanwhile (see [`Queue::wait_loaded`]).
    pub fn open(
        options: QueueOptions,
        target: Arc<dyn DeliveryTarget>,
    ) -> Result<Queue, QueueError> {
        let bounce = Arc::clone(&target);
        Self::open_with_bounce_target(options, target, bounce)
    }

    /// Like [`Queue::open`], with a separate target for notices.
    pub fn open_with_bounce_target(
        options: QueueOptions,
        target: Arc<dyn DeliveryTarget>,
        bounce_target: Arc<dyn DeliveryTarget>,
    ) -> Result<Queue, QueueError> {
        let spool = Spool::open(&options.spool)?;
        let lock = spool.lock_exclusive()?;
        // Before anything writes there; the rest of the load may run on.
        let cleared = spool.clear_tmp()?;
        spool.begin_load();
        let (workers, background) = (options.workers, options.background_load);
        let (jobs_tx, jobs_rx) = crossbeam_channel::bounded(workers);
        let direct_jobs = Mutex::new(Some(jobs_tx.clone()));
        let timer = Timer::start(jobs_tx);
        let shared = Arc::new(Shared {
            policy: LivePolicy::new(&options),
            limits: RwLock::new(options.limits),
            options,
            spool,
            target: CurrentTarget::new(target),
            bounce_target: CurrentTarget::new(bounce_target),
            pinned: Default::default(),
            timer: timer.sender(),
            stopping: AtomicBool::new(false),
            load: Default::default(),
            inflight: Mutex::new(HashSet::new()),
            direct_jobs,
            panics: Mutex::new(HashMap::new()),
            stats: stats::Stats::default(),
        });
        let queue = Queue {
            workers: Mutex::new(start_workers(&shared, &jobs_rx, workers)?),
            loader: Mutex::new(Some(loader::start(&shared, background, cleared)?)),
            shared,
            timer: Mutex::new(timer),
            _lock: lock,
        };
        if !background {
            // Dropped on failure: the queue stops and lets go of the spool.
            queue.shared.load.wait()?;
        }
        Ok(queue)
    }

    /// Blocks until the start-up load is over: every message that was
    /// queued when the queue opened is scheduled (or was found damaged
    /// and quarantined). Returns at once without
    /// [`QueueOptions::background_load`], and after [`Queue::shutdown`].
    pub fn wait_loaded(&self) {
        let _ = self.shared.load.wait();
    }

    /// True while the start-up load is still reading the spool.
    pub fn loading(&self) -> bool {
        self.shared.spool.loading()
    }

    /// The options the queue was opened with; the quotas now are
    /// [`Queue::limits`], the retry policy and notice settings now
    /// [`Queue::settings`].
    pub fn options(&self) -> &QueueOptions {
        &self.shared.options
    }

    /// The options in force now: those the queue was opened with, with
    /// the retry policy and the notice settings set since.
    pub fn settings(&self) -> QueueOptions {
        QueueOptions::clone(&self.shared.policy.options())
    }

    /// Replaces the retry policy (`max_tries`, the retry curve,
    /// `max_lifetime`). It applies from each message's next attempt:
    /// nothing is rescheduled now, a message keeps the time its last
    /// attempt chose, and is then judged and rescheduled under the new
    /// policy. A lower `max_tries` or `max_lifetime` thus gives up queued
    /// mail at its next try, not at once.
    pub fn set_retry(&self, retry: RetryPolicy) {
        self.shared.policy.change(|o| o.retry = retry);
    }

    /// Replaces the notice settings and the wait before a delay warning,
    /// for the notices made from now on (at each message's next attempt,
    /// or by the operator's `expire`).
    pub fn set_notices(&self, notices: NoticeOptions, delay_warning: std::time::Duration) {
        self.shared.policy.change(|o| {
            o.notices = notices;
            o.delay_warning = delay_warning;
        });
    }

    /// Sets how a target named by URL is built, for messages the operator
    /// pins to one (`requeue --target`); without it such messages are
    /// deferred with the reason.
    #[doc(hidden)]
    pub fn set_target_builder(&self, build: Arc<BuildTarget>) {
        self.shared.pinned.set_builder(build);
    }

    /// Replaces the delivery target and the target for notices. Attempts
    /// running now finish with the old ones; every attempt that starts
    /// after this (queued recipients at their next try too) uses the new.
    pub fn set_targets(&self, target: Arc<dyn DeliveryTarget>, bounce: Arc<dyn DeliveryTarget>) {
        self.shared.target.set(target);
        self.shared.bounce_target.set(bounce);
    }

    /// The quotas new mail is checked against now.
    pub fn limits(&self) -> QueueLimits {
        *self.shared.limits.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the DKIM keys, for the messages queued from now on
    /// (those queued already keep the signature they have).
    pub fn set_dkim(&self, signer: crate::dkim::DkimSigner) {
        self.shared.policy.change(|o| o.dkim = signer);
    }

    /// Replaces the quotas, from the next check on.
    pub fn set_limits(&self, limits: QueueLimits) {
        *self
            .shared
            .limits
            .write()
            .unwrap_or_else(|p| p.into_inner()) = limits;
    }

    /// Queues a message held in memory. Returns its id once the message
    /// and its metadata are durable on disk.
    ///
    /// As every message queued, whichever way it comes in: `Date:` and
    /// `Message-ID:` are added when missing, a header field RFC 5322
    /// allows once but given twice is refused ([`QueueError::BadMessage`]),
    /// and the message is signed with the key of [`QueueOptions::dkim`]
    /// for its `From:` domain, if there is one.
    pub fn enqueue(&self, envelope: &Envelope, message: &[u8]) -> Result<MessageId, QueueError> {
        let mut reader = message;
        self.enqueue_from(envelope, &mut reader)
    }

    /// Queues a message read from `message` to its end.
    pub fn enqueue_from(
        &self,
        envelope: &Envelope,
        message: &mut dyn Read,
    ) -> Result<MessageId, QueueError> {
        let mut incoming = self.begin()?;
        incoming.writer.copy_from(message)?;
        incoming.commit_as(envelope, stats::Way::Local)
    }

    /// Starts writing a message to the spool, for callers that produce it
    /// piece by piece (the SMTP listener writes DATA into it). Dropping the
    /// result without [`IncomingMessage::commit`] leaves nothing behind.
    #[doc(hidden)]
    pub fn begin(&self) -> Result<IncomingMessage<'_>, QueueError> {
        if self.shared.stopping.load(Ordering::SeqCst) {
            return Err(QueueError::Closed);
        }
        Ok(IncomingMessage {
            shared: &self.shared,
            writer: self.shared.spool.create_message()?,
        })
    }

    /// Refuses new mail when the queue is over one of its quotas; `size`
    /// is the size announced for the coming message (0 if unknown).
    pub fn check_quota(&self, size: u64) -> Result<(), QueueError> {
        self.shared.check_quota(size)
    }

    /// The queue's counters now (for the daemon's `stats`).
    #[doc(hidden)]
    pub fn stats(&self) -> stats::StatsSnapshot {
        let (messages, bytes) = self.usage();
        let mut s = self.shared.stats.snapshot(messages, bytes);
        s.loading = self.loading();
        (s.loaded, s.to_load) = self.shared.load.progress();
        s
    }

    /// The live event counters (the listener counts into them).
    #[doc(hidden)]
    pub fn counters(&self) -> &stats::Stats {
        &self.shared.stats
    }

    /// Messages and bytes queued now by state, and the oldest message's
    /// start, kept up to date as messages change (nothing is read from
    /// disk): what the metrics endpoint reports.
    pub fn census(&self) -> spool::CensusCounts {
        self.shared.spool.census()
    }

    /// Messages and bytes queued now (during a background load: those
    /// loaded so far and the new ones).
    pub fn usage(&self) -> (u64, u64) {
        self.shared.spool.usage()
    }

    /// Makes one message (or every message) due now. Held messages stay
    /// held. During a background load, a message not loaded yet is
    /// flushed only by the flush of every message.
    pub fn flush(&self, id: Option<MessageId>) {
        match id {
            Some(id) => {
                let _ = self.shared.timer.send(Command::Flush(Some(id)));
            }
            None => self.shared.flush_all(),
        }
    }

    /// Every queued message, read from the spool.
    #[doc(hidden)]
    pub fn list(&self) -> Result<Vec<MessageMeta>, QueueError> {
        self.admin().list()
    }

    /// The operator's commands, applied through the running queue.
    #[doc(hidden)]
    pub fn admin(&self) -> admin::Admin<'_> {
        admin::Admin::daemon(&self.shared)
    }

    /// Stops the queue: no new attempts start, running attempts finish and
    /// write their results, and the spool lock is released.
    pub fn close(self) {
        self.shutdown();
    }

    /// [`Queue::close`] for a queue shared between threads: after it,
    /// enqueueing fails with [`QueueError::Closed`].
    pub fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // The load stops after the chunk it reads: nothing of it may run
        // once the spool lock is let go.
        let loader = self.loader.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(loader) = loader {
            let _ = loader.join();
        }
        // The workers end when every sender of the job channel is gone.
        self.shared
            .direct_jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.timer.lock().unwrap_or_else(|p| p.into_inner()).stop();
        let workers: Vec<_> = self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for w in workers {
            let _ = w.join();
        }
    }
}

/// Starts `n` worker threads taking jobs from `jobs`.
fn start_workers(
    shared: &Arc<Shared>,
    jobs: &crossbeam_channel::Receiver<Job>,
    n: usize,
) -> Result<Vec<JoinHandle<()>>, QueueError> {
    (0..n)
        .map(|i| {
            let shared = Arc::clone(shared);
            let jobs = jobs.clone();
            thread::Builder::new()
                .name(format!("mailqueue-worker-{i}"))
                .spawn(move || worker::run(&shared, &jobs))
                .map_err(|source| QueueError::Io {
                    path: PathBuf::from("<thread>"),
                    source,
                })
        })
        .collect()
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.shutdown();
    }
}
