//! The time wheel: a binary heap of due times owned by one thread, which
//! hands ids whose time has come to the workers over a bounded channel.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;
use std::thread::{self, JoinHandle};
use std::time::Instant;

use crossbeam_channel::{select, Receiver, RecvTimeoutError, Sender};

use crate::queue::{Job, MessageId};

/// Due times of keys, each key at most once.
///
/// Replacing or removing a key leaves its old heap entry behind; entries
/// whose sequence number no longer matches the key's are skipped when they
/// reach the top, so every operation stays O(log n).
///
/// ```
/// use std::time::{Duration, Instant};
/// use mailqueue::queue::timer::TimeWheel;
/// let now = Instant::now();
/// let mut w = TimeWheel::new();
/// w.add("late", now + Duration::from_secs(60));
/// w.add("early", now);
/// assert_eq!(w.pop_due(now), Some("early"));
/// assert_eq!(w.pop_due(now), None);
/// ```
#[derive(Debug)]
pub struct TimeWheel<K> {
    heap: BinaryHeap<Reverse<(Instant, u64, K)>>,
    live: HashMap<K, u64>,
    seq: u64,
}

impl<K: Copy + Hash + Eq + Ord> Default for TimeWheel<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Copy + Hash + Eq + Ord> TimeWheel<K> {
    pub fn new() -> Self {
        TimeWheel {
            heap: BinaryHeap::new(),
            live: HashMap::new(),
            seq: 0,
        }
    }

    /// Schedules `key` at `due`, replacing any earlier schedule of it.
    pub fn add(&mut self, key: K, due: Instant) {
        self.seq += 1;
        self.live.insert(key, self.seq);
        self.heap.push(Reverse((due, self.seq, key)));
        self.compact_if_stale();
    }

    /// Unschedules `key`; false if it was not scheduled.
    pub fn remove(&mut self, key: K) -> bool {
        self.live.remove(&key).is_some()
    }

    pub fn contains(&self, key: K) -> bool {
        self.live.contains_key(&key)
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The earliest due time and its key.
    pub fn peek(&mut self) -> Option<(Instant, K)> {
        while let Some(Reverse((due, seq, key))) = self.heap.peek() {
            if self.live.get(key) == Some(seq) {
                return Some((*due, *key));
            }
            self.heap.pop();
        }
        None
    }

    /// Takes the earliest key if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<K> {
        let (due, key) = self.peek()?;
        if due > now {
            return None;
        }
        self.heap.pop();
        self.live.remove(&key);
        Some(key)
    }

    /// Makes every scheduled key due at `now`, keeping their order.
    pub fn make_all_due(&mut self, now: Instant) {
        let mut entries: Vec<(Instant, u64, K)> = self
            .heap
            .drain()
            .map(|Reverse(e)| e)
            .filter(|(_, seq, key)| self.live.get(key) == Some(seq))
            .collect();
        entries.sort_unstable();
        for (_, seq, key) in &mut entries {
            self.seq += 1;
            *seq = self.seq;
            self.live.insert(*key, self.seq);
        }
        self.heap = entries
            .into_iter()
            .map(|(_, seq, key)| Reverse((now, seq, key)))
            .collect();
    }

    /// Rebuilds the heap when dead entries outnumber live ones, so that
    /// rescheduling the same keys again and again cannot grow it forever.
    fn compact_if_stale(&mut self) {
        if self.heap.len() > 1024 && self.heap.len() > 2 * self.live.len() {
            let live = &self.live;
            let entries: Vec<_> = self
                .heap
                .drain()
                .filter(|Reverse((_, seq, key))| live.get(key) == Some(seq))
                .collect();
            self.heap = entries.into();
        }
    }
}

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
    use proptest::prelude::*;
    use std::time::Duration;

    fn at(base: Instant, secs: u64) -> Instant {
        base + Duration::from_secs(secs)
    }

    #[test]
    fn pops_in_due_order() {
        let t0 = Instant::now();
        let mut w = TimeWheel::new();
        for (k, s) in [(1, 30), (2, 10), (3, 20), (4, 10)] {
            w.add(k, at(t0, s));
        }
        let end = at(t0, 100);
        let order: Vec<i32> = std::iter::from_fn(|| w.pop_due(end)).collect();
        // Equal due times keep insertion order.
        assert_eq!(order, vec![2, 4, 3, 1]);
        assert!(w.is_empty());
    }

    #[test]
    fn an_earlier_item_becomes_the_next_due() {
        let t0 = Instant::now();
        let mut w = TimeWheel::new();
        w.add(1, at(t0, 60));
        assert_eq!(w.peek(), Some((at(t0, 60), 1)));
        w.add(2, at(t0, 5));
        assert_eq!(w.peek(), Some((at(t0, 5), 2)));
        // Rescheduling a key replaces its old time.
        w.add(1, at(t0, 1));
        assert_eq!(w.peek(), Some((at(t0, 1), 1)));
        assert_eq!(w.len(), 2);
        assert!(w.remove(1));
        assert_eq!(w.peek(), Some((at(t0, 5), 2)));
    }

    #[test]
    fn a_far_item_does_not_block_a_near_one() {
        let t0 = Instant::now();
        let mut w = TimeWheel::new();
        w.add(1, t0 + Duration::from_secs(10 * 365 * 86400));
        w.add(2, at(t0, 1));
        assert_eq!(w.pop_due(at(t0, 1)), Some(2));
        assert_eq!(w.pop_due(at(t0, 1)), None);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn flush_all_keeps_order_and_makes_everything_due() {
        let t0 = Instant::now();
        let mut w = TimeWheel::new();
        w.add(1, at(t0, 300));
        w.add(2, at(t0, 100));
        w.add(3, at(t0, 200));
        w.remove(3);
        w.make_all_due(t0);
        let order: Vec<i32> = std::iter::from_fn(|| w.pop_due(t0)).collect();
        assert_eq!(order, vec![2, 1]);
    }

    #[test]
    fn rescheduling_forever_does_not_grow_the_heap() {
        let t0 = Instant::now();
        let mut w = TimeWheel::new();
        for i in 0..100_000u64 {
            w.add(i % 10, at(t0, i));
        }
        assert_eq!(w.len(), 10);
        assert!(w.heap.len() <= 2048, "{}", w.heap.len());
    }

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

    #[derive(Debug, Clone)]
    enum Op {
        Add(u8, u16),
        Remove(u8),
        Pop(u16),
        FlushAll(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (any::<u8>(), any::<u16>()).prop_map(|(k, t)| Op::Add(k % 32, t % 1000)),
            1 => any::<u8>().prop_map(|k| Op::Remove(k % 32)),
            3 => any::<u16>().prop_map(|t| Op::Pop(t % 1000)),
            1 => any::<u16>().prop_map(|t| Op::FlushAll(t % 1000)),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_a_sorted_list(ops in proptest::collection::vec(op(), 1..300)) {
            let t0 = Instant::now();
            let ms = |t: u16| t0 + Duration::from_millis(u64::from(t));
            let mut wheel = TimeWheel::new();
            // The model: (due, insertion number, key), at most one per key.
            let mut model: Vec<(u16, u64, u8)> = Vec::new();
            let mut n = 0u64;
            for op in ops {
                match op {
                    Op::Add(k, t) => {
                        wheel.add(k, ms(t));
                        model.retain(|e| e.2 != k);
                        n += 1;
                        model.push((t, n, k));
                    }
                    Op::Remove(k) => {
                        let was = model.iter().any(|e| e.2 == k);
                        model.retain(|e| e.2 != k);
                        prop_assert_eq!(wheel.remove(k), was);
                    }
                    Op::Pop(t) => {
                        model.sort();
                        let want = model.first().filter(|e| e.0 <= t).map(|e| e.2);
                        if want.is_some() {
                            model.remove(0);
                        }
                        prop_assert_eq!(wheel.pop_due(ms(t)), want);
                    }
                    Op::FlushAll(t) => {
                        wheel.make_all_due(ms(t));
                        model.sort();
                        for e in model.iter_mut() {
                            n += 1;
                            e.0 = t;
                            e.1 = n;
                        }
                    }
                }
                prop_assert_eq!(wheel.len(), model.len());
            }
        }
    }
}
