//! Session threads that outlive their connection for a while and take the
//! next one. Starting a thread per connection (mapping its stack and guard
//! page, its signal stack, and unmapping them again at the end) cost more
//! than serving a short SMTP session, so a thread that finishes waits up to
//! `keep` for another connection before it ends.
//!
//! The number of threads never exceeds the most sessions that ran at once:
//! a new thread starts only when no idle one is there to take the work.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

/// Runs jobs on reused threads.
pub(super) struct Reused<J> {
    jobs: Sender<J>,
    waiting: Receiver<J>,
    /// Threads waiting for a job, less the jobs handed to them and not yet
    /// taken: a thread may leave only while this stays at least 0.
    idle: Arc<AtomicUsize>,
    keep: Duration,
    name: String,
    work: Arc<dyn Fn(J) + Send + Sync>,
}

impl<J: Send + 'static> Reused<J> {
    pub(super) fn new(
        name: &str,
        keep: Duration,
        work: impl Fn(J) + Send + Sync + 'static,
    ) -> Self {
        let (jobs, waiting) = crossbeam_channel::unbounded();
        Reused {
            jobs,
            waiting,
            idle: Arc::new(AtomicUsize::new(0)),
            keep,
            name: name.to_string(),
            work: Arc::new(work),
        }
    }

    /// Runs `job` on an idle thread, or on a new one.
    pub(super) fn run(&self, job: J) -> io::Result<()> {
        if claim(&self.idle) {
            // The claimed thread is bound to receive; the channel is
            // unbounded, so this never blocks.
            let _ = self.jobs.send(job);
            return Ok(());
        }
        let (waiting, idle, work, keep) = (
            self.waiting.clone(),
            Arc::clone(&self.idle),
            Arc::clone(&self.work),
            self.keep,
        );
        thread::Builder::new()
            .name(self.name.clone())
            .spawn(move || {
                work(job);
                loop {
                    idle.fetch_add(1, SeqCst);
                    match waiting.recv_timeout(keep) {
                        Ok(job) => work(job),
                        Err(RecvTimeoutError::Timeout) => {
                            if claim(&idle) {
                                return;
                            }
                            // Every idle thread is spoken for, this one
                            // included: a job is on its way.
                            match waiting.recv() {
                                Ok(job) => work(job),
                                Err(_) => return,
                            }
                        }
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })?;
        Ok(())
    }
}

/// Takes one idle thread off the count; false if there is none.
fn claim(idle: &AtomicUsize) -> bool {
    idle.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_job_runs_on_a_thread_of_its_own() {
        let (tx, rx) = std::sync::mpsc::channel();
        let threads = Reused::new("example", Duration::from_secs(1), move |n: u32| {
            tx.send(n * 2).unwrap();
        });
        threads.run(21).unwrap();
        assert_eq!(rx.recv().unwrap(), 42);
    }

    use super::*;
    use std::collections::HashSet;
    use std::sync::Mutex;

    #[test]
    fn threads_are_reused_and_every_job_runs_once() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        let threads = Reused::new("test", Duration::from_secs(5), move |n: usize| {
            s.lock().unwrap().push((n, thread::current().id()));
        });
        for n in 0..200 {
            threads.run(n).unwrap();
            if n % 10 == 0 {
                thread::sleep(Duration::from_millis(2));
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while seen.lock().unwrap().len() < 200 && std::time::Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        let seen = seen.lock().unwrap();
        let jobs: HashSet<usize> = seen.iter().map(|(n, _)| *n).collect();
        assert_eq!((seen.len(), jobs.len()), (200, 200));
        let distinct: HashSet<_> = seen.iter().map(|(_, t)| *t).collect();
        assert!(
            distinct.len() < 100,
            "{} threads for 200 jobs",
            distinct.len()
        );
    }

    #[test]
    fn idle_threads_end_after_keep_and_new_work_still_runs() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let threads = Reused::new("test", Duration::from_millis(20), move |n: u32| {
            tx.send(n).unwrap();
        });
        for round in 0..20 {
            threads.run(round).unwrap();
            assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(round));
            // Around the keep time: the thread may be leaving as work comes.
            thread::sleep(Duration::from_millis(15 + round as u64 % 10));
        }
        thread::sleep(Duration::from_millis(100));
        assert_eq!(threads.idle.load(SeqCst), 0, "idle threads did not end");
    }
}
