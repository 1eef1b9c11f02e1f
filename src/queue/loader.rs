//! The start-up load as the queue runs it: on a thread of its own, so
//! that the queue takes new mail while it reads the spool (see
//! [`crate::QueueOptions::background_load`]), scheduling each chunk of
//! messages as soon as it is read.
//!
//! What it means for the rest of the queue while it runs:
//! - new mail is stored, acknowledged and scheduled as usual; the spool
//!   keeps the load off it (and off every message the operator or a
//!   worker touches meanwhile), so nothing is scheduled twice and no
//!   write in progress is taken for an unfinished one;
//! - the counts (`stats`, the metrics, the quotas) are those of the
//!   messages loaded so far and the new ones; the quota on messages also
//!   counts the messages listed but not read yet;
//! - the operator's commands read the spool itself: `list` and `show`
//!   see every message, loaded or not, and `hold`, `release`, `flush`,
//!   `delete`, `expire` and `requeue` act on any of them;
//! - `flush` of everything (no id) also makes the messages loaded after
//!   it due at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::meta::{Queued, Timestamp};
use super::spool::{LoadReport, LoadSink};
use super::timer::Command;
use super::{QueueError, Shared};

/// After a failed pass (out of file descriptors, say), the next one.
const RETRY: Duration = Duration::from_secs(10);

/// How far the start-up load has come.
#[derive(Debug, Default)]
pub(crate) struct LoadState {
    /// Messages scheduled by the load.
    loaded: AtomicU64,
    /// Messages listed and not read yet.
    remaining: AtomicU64,
    /// `flush` of everything was asked for during the load.
    flush_all: AtomicBool,
    /// `None` while the load runs; then its error, if it gave up.
    done: Mutex<Option<Result<(), Option<QueueError>>>>,
    finished: Condvar,
}

impl LoadState {
    /// Messages scheduled so far, and messages listed but not read yet.
    pub(crate) fn progress(&self) -> (u64, u64) {
        (
            self.loaded.load(Ordering::Relaxed),
            self.remaining.load(Ordering::Relaxed),
        )
    }

    /// Messages listed but not read yet: counted against `max_messages`.
    pub(crate) fn remaining(&self) -> u64 {
        self.remaining.load(Ordering::Relaxed)
    }

    /// Makes the messages loaded from now on due at once.
    pub(crate) fn flush_all(&self) {
        self.flush_all.store(true, Ordering::SeqCst);
    }

    /// Waits until the load is over; its error, the first time it is
    /// asked for, if it gave up.
    pub(crate) fn wait(&self) -> Result<(), QueueError> {
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match &mut *done {
                None => done = self.finished.wait(done).unwrap_or_else(|p| p.into_inner()),
                Some(Ok(())) => return Ok(()),
                Some(Err(e)) => return e.take().map_or(Ok(()), Err),
            }
        }
    }

    fn finish(&self, result: Result<(), QueueError>) {
        self.remaining.store(0, Ordering::Relaxed);
        *self.done.lock().unwrap_or_else(|p| p.into_inner()) = Some(result.map_err(Some));
        self.finished.notify_all();
    }
}

/// Starts the load on its own thread. `retry`: after a failed pass, try
/// again (the daemon) rather than give up and report it.
/// `cleared`: the files removed from `tmp/` at open, for the log line.
pub(crate) fn start(
    shared: &std::sync::Arc<Shared>,
    retry: bool,
    cleared: usize,
) -> Result<JoinHandle<()>, QueueError> {
    let shared = std::sync::Arc::clone(shared);
    std::thread::Builder::new()
        .name("mailqueue-load".into())
        .spawn(move || {
            let result = run(&shared, retry, cleared);
            shared.spool.end_load();
            shared.load.finish(result);
        })
        .map_err(|source| QueueError::Io {
            path: "<thread>".into(),
            source,
        })
}

fn run(shared: &Shared, retry: bool, cleared: usize) -> Result<(), QueueError> {
    let started = Instant::now();
    let mut total = LoadReport {
        removed: cleared,
        ..LoadReport::default()
    };
    loop {
        match shared.spool.scan(&mut Scheduler { shared }) {
            Ok(report) => {
                add(&mut total, &report);
                break;
            }
            Err(e) if retry && !shared.stopping.load(Ordering::SeqCst) => {
                log::error!(
                    "spool {}: load failed, trying again in {}s: {e}",
                    shared.options.spool.display(),
                    RETRY.as_secs()
                );
                pause(shared, RETRY);
            }
            Err(e) => return Err(e),
        }
    }
    let loaded = shared.load.loaded.load(Ordering::Relaxed);
    if shared.stopping.load(Ordering::SeqCst) && shared.load.remaining() > 0 {
        log::info!(
            "spool {}: load stopped by the shutdown after {loaded} messages",
            shared.options.spool.display()
        );
        return Ok(());
    }
    log::info!(
        "spool {}: {loaded} messages queued, {} quarantined, {} unfinished writes removed ({} ms)",
        shared.options.spool.display(),
        total.quarantined,
        total.removed,
        started.elapsed().as_millis()
    );
    Ok(())
}

fn add(total: &mut LoadReport, pass: &LoadReport) {
    total.quarantined += pass.quarantined;
    total.removed += pass.removed;
}

/// Sleeps for `wait`, or until the queue stops.
fn pause(shared: &Shared, wait: Duration) {
    let end = Instant::now() + wait;
    while Instant::now() < end && !shared.stopping.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Schedules what the load hands over, chunk by chunk.
struct Scheduler<'a> {
    shared: &'a Shared,
}

impl LoadSink for Scheduler<'_> {
    fn listed(&mut self, n: usize) {
        self.shared
            .load
            .remaining
            .store(n as u64, Ordering::Relaxed);
    }

    fn found(&mut self, found: Vec<Queued>, done: usize) -> bool {
        let load = &self.shared.load;
        let flushed = load.flush_all.load(Ordering::SeqCst);
        let now = Timestamp::now();
        for q in found.iter().filter(|q| !q.hold) {
            let when = if flushed { now } else { q.next_attempt };
            self.shared.schedule(q.id, when);
        }
        // A flush of everything that came while these were scheduled may
        // have reached the timer before them.
        if !flushed && load.flush_all.load(Ordering::SeqCst) {
            let _ = self.shared.timer.send(Command::Flush(None));
        }
        load.loaded.fetch_add(found.len() as u64, Ordering::Relaxed);
        let _ = load
            .remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(done as u64))
            });
        !self.shared.stopping.load(Ordering::SeqCst)
    }
}
