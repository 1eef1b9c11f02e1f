//! The timer thread: it owns the time wheel, takes commands (add, flush,
//! remove, stop) from the queue and the workers, and hands ids whose time
//! has come to the workers over a bounded channel, holding back while the
//! channel is full rather than blocking its commands or dropping an id.

use std::thread::{self, JoinHandle};
use std::time::Instant;

use crossbeam_channel::{select, Receiver, RecvTimeoutError, Sender};

use crate::queue::wheel::TimeWheel;
use crate::queue::{Job, MessageId};

/// What the timer thread can be told.
#[derive(Debug)]
pub enum Command {
    /// Schedule (or reschedule) a message.
    Add(MessageId, Instant),
    /// Make one scheduled message, or all of them, due now.
    Flush(Option<MessageId>),
    /// Forget a message.
    Remove(MessageId),
    /// End the thread.
    Stop,
}

/// Handle of the timer thread.
#[derive(Debug)]
pub struct Timer {
    commands: Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl Timer {
    /// Starts the timer thread; due ids go to `jobs`.
    pub fn start(jobs: Sender<Job>) -> Timer {
        let (commands, rx) = crossbeam_channel::unbounded();
        let thread = thread::Builder::new()
            .name("mailqueue-timer".into())
            .spawn(move || run(rx, jobs))
            .expect("cannot start the timer thread");
        Timer {
            commands,
            thread: Some(thread),
        }
    }

    pub fn send(&self, command: Command) {
        // Fails only after stop, when nothing is scheduled any more anyway.
        let _ = self.commands.send(command);
    }

    /// A cloneable sender for the workers.
    pub fn sender(&self) -> Sender<Command> {
        self.commands.clone()
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(commands: Receiver<Command>, jobs: Sender<Job>) {
    let mut wheel: TimeWheel<MessageId> = TimeWheel::new();
    loop {
        let now = Instant::now();
        let command = match wheel.peek() {
            None => match commands.recv() {
                Ok(c) => c,
                Err(_) => return,
            },
            Some((due, _)) if due > now => match commands.recv_timeout(due - now) {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            },
            // Due: wait for room in the job channel or a command, whichever
            // comes first, so a burst never blocks commands nor loses an id.
            Some((due, id)) => select! {
                recv(commands) -> c => match c {
                    Ok(c) => c,
                    Err(_) => return,
                },
                send(jobs, Job { id, due }) -> sent => {
                    if sent.is_err() {
                        return;
                    }
                    wheel.pop_due(Instant::now().max(now));
                    continue;
                }
            },
        };
        match command {
            Command::Add(id, due) => wheel.add(id, due),
            Command::Flush(Some(id)) => {
                if wheel.contains(id) {
                    wheel.add(id, Instant::now());
                }
            }
            Command::Flush(None) => wheel.make_all_due(Instant::now()),
            Command::Remove(id) => {
                wheel.remove(id);
            }
            Command::Stop => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_timer_thread_dispatches_to_an_empty_wheel_and_in_order() {
        let (jobs_tx, jobs_rx) = crossbeam_channel::bounded(1);
        let mut timer = Timer::start(jobs_tx);
        let (a, b) = (MessageId::generate(), MessageId::generate());
        let now = Instant::now();
        timer.send(Command::Add(b, now + Duration::from_millis(150)));
        timer.send(Command::Add(a, now + Duration::from_millis(50)));
        assert_eq!(
            jobs_rx.recv_timeout(Duration::from_secs(5)).map(|j| j.id),
            Ok(a)
        );
        assert_eq!(
            jobs_rx.recv_timeout(Duration::from_secs(5)).map(|j| j.id),
            Ok(b)
        );
        // Far in the future: flushed explicitly.
        let c = MessageId::generate();
        timer.send(Command::Add(c, now + Duration::from_secs(3600)));
        assert!(jobs_rx.recv_timeout(Duration::from_millis(100)).is_err());
        timer.send(Command::Flush(Some(c)));
        assert_eq!(
            jobs_rx.recv_timeout(Duration::from_secs(5)).map(|j| j.id),
            Ok(c)
        );
        timer.stop();
    }

    #[test]
    fn a_burst_of_100k_due_ids_is_neither_lost_nor_blocking() {
        let (jobs_tx, jobs_rx) = crossbeam_channel::bounded(16);
        let mut timer = Timer::start(jobs_tx);
        let now = Instant::now();
        let ids: Vec<MessageId> = (0..100_000).map(|_| MessageId::generate()).collect();
        for id in &ids {
            timer.send(Command::Add(*id, now));
        }
        // The job channel is full and nobody reads: commands still work.
        let removed = ids[99_999];
        timer.send(Command::Remove(removed));
        let mut got = std::collections::HashSet::new();
        while got.len() < 99_999 {
            let id = jobs_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("timer stalled")
                .id;
            assert!(got.insert(id), "{id} dispatched twice");
        }
        assert!(!got.contains(&removed));
        assert!(jobs_rx.recv_timeout(Duration::from_millis(200)).is_err());
        timer.stop();
    }
}
