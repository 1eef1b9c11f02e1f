//! The time wheel: the data structure of due times that the timer thread
//! (`timer.rs`) owns. At its heart is a binary heap, kept small by a calendar in front of it: near-term entries
//! wait in a ring of coarse buckets and enter the heap only when their
//! bucket comes up, so a hold operation costs a push onto a short `Vec` and
//! a pop from a heap of one bucket's worth of entries, not `log n` cache
//! misses in a heap of every pending id.

#[cfg(test)]
mod tests;

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::hash::Hash;
use std::mem;
use std::time::{Duration, Instant};

use hashbrown::hash_table::{Entry, HashTable};

use crate::queue::fxhash::hash;

/// A bucket spans 2^32 ns (about 4.3 s): wide enough that retry times
/// spread over an hour fill each with a handful of entries or more, so the
/// ring rarely skips empty buckets, and narrow enough that the heap, which
/// holds one bucket, stays small.
const BUCKET_SHIFT: u32 = 32;
/// 1024 buckets reach about 73 minutes ahead; later entries wait in the far
/// heap. More buckets would scatter pushes over more cache lines.
const RING_BUCKETS: usize = 1024;
/// Below this many stored entries, stale ones are not worth a sweep.
const COMPACT_MIN: usize = 1024;
/// Tick of the wheel's base instant: ticks before it are the past, so a due
/// time may be up to 2^63 ns (292 years) on either side of the base.
const TICK_ZERO: u64 = 1 << 63;

/// Due times of keys, each key at most once.
///
/// Every scheduled key owns a slot; a heap, bucket or far entry names the
/// slot and the sequence number the slot had when the entry was made.
/// Replacing or removing a key only renumbers or frees its slot, so old
/// entries are recognised as stale by one comparison, without hashing, and
/// dropped when they surface; a sweep when stale entries outnumber live ones
/// keeps rescheduling from growing memory. Sequence numbers also break ties
/// between equal due times, first scheduled first; when they run out (after
/// 2^32 adds) the live entries are renumbered in order.
///
/// Due times are stored as nanoseconds from an `Instant` taken by
/// [`TimeWheel::new`], so [`TimeWheel::peek`] gives back exactly the
/// `Instant` passed to [`TimeWheel::add`] for any due time within 292 years
/// of the wheel's creation; ones beyond are clamped to that limit.
///
/// ```
/// use std::time::{Duration, Instant};
/// use mailqueue::queue::wheel::TimeWheel;
/// let now = Instant::now();
/// let mut w = TimeWheel::new();
/// w.add("late", now + Duration::from_secs(60));
/// w.add("early", now);
/// assert_eq!(w.peek(), Some((now, "early")));
/// assert_eq!(w.pop_due(now), Some("early"));
/// assert_eq!(w.pop_due(now), None);
/// ```
#[derive(Debug)]
pub struct TimeWheel<K> {
    base: Instant,
    /// Every entry in a bucket before `next`: the earliest one is on top.
    heap: BinaryHeap<Node>,
    /// Buckets `next .. next + RING_BUCKETS`, bucket `b` at `b % RING_BUCKETS`.
    ring: Box<[Vec<Node>]>,
    /// One bit per non-empty ring bucket, to skip empty ones a word at a time.
    occupied: Box<[u64]>,
    /// Entries in the ring, stale ones included.
    ring_len: usize,
    /// Entries in buckets past the ring's horizon.
    far: BinaryHeap<Node>,
    /// The first bucket whose entries are not in the heap.
    next: u64,
    slots: Vec<Slot<K>>,
    free: Vec<u32>,
    /// Key to slot. Holds only slot numbers; the keys live in the slots.
    index: HashTable<u32>,
    /// The last sequence number handed out.
    seq: u32,
}

/// A scheduled entry: 16 bytes, ordered by due time, then by sequence
/// number (`order` is `seq << 32 | slot`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Node {
    tick: u64,
    order: u64,
}

// `#[inline]` here and on the hasher: callers in other crates (the
// benchmarks) could not inline these non-generic functions otherwise.
impl Node {
    #[inline]
    fn new(tick: u64, seq: u32, slot: u32) -> Node {
        Node {
            tick,
            order: (u64::from(seq) << 32) | u64::from(slot),
        }
    }

    #[inline]
    fn seq(self) -> u32 {
        (self.order >> 32) as u32
    }

    #[inline]
    fn slot(self) -> usize {
        self.order as u32 as usize
    }

    #[inline]
    fn bucket(self) -> u64 {
        self.tick >> BUCKET_SHIFT
    }
}

/// Reversed, because `BinaryHeap` keeps the greatest on top.
impl Ord for Node {
    #[inline]
    fn cmp(&self, other: &Self) -> Ordering {
        (other.tick, other.order).cmp(&(self.tick, self.order))
    }
}

impl PartialOrd for Node {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// `seq` 0 marks a free slot: no entry carries it.
#[derive(Debug, Clone, Copy)]
struct Slot<K> {
    key: K,
    seq: u32,
}

impl<K: Copy + Hash + Eq + Ord> Default for TimeWheel<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Copy + Hash + Eq + Ord> TimeWheel<K> {
    pub fn new() -> Self {
        TimeWheel {
            base: Instant::now(),
            heap: BinaryHeap::new(),
            ring: (0..RING_BUCKETS).map(|_| Vec::new()).collect(),
            occupied: vec![0; RING_BUCKETS.div_ceil(64)].into_boxed_slice(),
            ring_len: 0,
            far: BinaryHeap::new(),
            next: TICK_ZERO >> BUCKET_SHIFT,
            slots: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
            seq: 0,
        }
    }

    /// Schedules `key` at `due`, replacing any earlier schedule of it.
    pub fn add(&mut self, key: K, due: Instant) {
        if self.seq == u32::MAX {
            self.renumber(None);
        }
        self.seq += 1;
        let seq = self.seq;
        let slots = &mut self.slots;
        let found = self.index.entry(
            hash(&key),
            |&s| slots[s as usize].key == key,
            |&s| hash(&slots[s as usize].key),
        );
        let slot = match found {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) => {
                let slot = match self.free.pop() {
                    Some(slot) => slot,
                    None => {
                        let slot = u32::try_from(slots.len()).expect("2^32 keys scheduled");
                        slots.push(Slot { key, seq: 0 });
                        slot
                    }
                };
                e.insert(slot);
                slot
            }
        };
        slots[slot as usize] = Slot { key, seq };
        self.place(Node::new(self.tick(due), seq, slot));
        let stored = self.stored();
        if stored > COMPACT_MIN && stored > 2 * self.len() {
            self.compact();
        }
    }

    /// Unschedules `key`; false if it was not scheduled.
    pub fn remove(&mut self, key: K) -> bool {
        let slots = &self.slots;
        match self
            .index
            .find_entry(hash(&key), |&s| slots[s as usize].key == key)
        {
            Ok(e) => {
                let (slot, _) = e.remove();
                self.release(slot);
                true
            }
            Err(_) => false,
        }
    }

    pub fn contains(&self, key: K) -> bool {
        let slots = &self.slots;
        self.index
            .find(hash(&key), |&s| slots[s as usize].key == key)
            .is_some()
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The earliest due time and its key. The time is the one given to
    /// [`TimeWheel::add`], to the nanosecond (see the type's notes).
    pub fn peek(&mut self) -> Option<(Instant, K)> {
        let node = self.top()?;
        Some((self.instant(node.tick), self.slots[node.slot()].key))
    }

    /// Takes the earliest key if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<K> {
        let node = self.top()?;
        if node.tick > self.tick(now) {
            return None;
        }
        self.heap.pop();
        let key = self.slots[node.slot()].key;
        let slot = node.slot() as u32;
        if let Ok(e) = self.index.find_entry(hash(&key), |&s| s == slot) {
            e.remove();
        }
        self.release(slot);
        Some(key)
    }

    /// Makes every scheduled key due at `now`, keeping their order.
    pub fn make_all_due(&mut self, now: Instant) {
        let now = self.tick(now);
        self.renumber(Some(now));
    }

    fn tick(&self, t: Instant) -> u64 {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        match t.checked_duration_since(self.base) {
            Some(after) => TICK_ZERO.saturating_add(nanos(after)),
            None => TICK_ZERO.saturating_sub(nanos(self.base - t)),
        }
    }

    /// Never panics: an instant at least this far from the base was handed
    /// to `add`, and instants form one contiguous range.
    fn instant(&self, tick: u64) -> Instant {
        if tick >= TICK_ZERO {
            self.base + Duration::from_nanos(tick - TICK_ZERO)
        } else {
            self.base - Duration::from_nanos(TICK_ZERO - tick)
        }
    }

    fn is_live(&self, node: Node) -> bool {
        self.slots[node.slot()].seq == node.seq()
    }

    fn release(&mut self, slot: u32) {
        self.slots[slot as usize].seq = 0;
        self.free.push(slot);
    }

    /// Entries held, stale ones included: what compaction bounds.
    fn stored(&self) -> usize {
        self.heap.len() + self.ring_len + self.far.len()
    }

    fn place(&mut self, node: Node) {
        let bucket = node.bucket();
        if bucket < self.next {
            self.heap.push(node);
        } else if bucket - self.next < RING_BUCKETS as u64 {
            let i = bucket as usize % RING_BUCKETS;
            self.ring[i].push(node);
            self.occupied[i / 64] |= 1 << (i % 64);
            self.ring_len += 1;
        } else {
            self.far.push(node);
        }
    }

    /// The earliest live entry, left on top of the heap.
    fn top(&mut self) -> Option<Node> {
        loop {
            while let Some(&node) = self.heap.peek() {
                if self.is_live(node) {
                    return Some(node);
                }
                self.heap.pop();
            }
            if !self.refill() {
                return None;
            }
        }
    }

    /// Takes the next non-empty bucket into the heap. Only an empty heap
    /// takes one, so that it never holds more than a bucket's worth (plus
    /// due times added behind the ring). False when nothing is scheduled.
    fn refill(&mut self) -> bool {
        loop {
            if self.ring_len == 0 {
                // Rather than step through empty buckets to a far entry
                // (years ahead, maybe), jump the ring to it.
                while let Some(&node) = self.far.peek() {
                    if self.is_live(node) {
                        break;
                    }
                    self.far.pop();
                }
                let Some(&node) = self.far.peek() else {
                    return false;
                };
                self.next = node.bucket();
                self.pull_far();
                continue;
            }
            let start = self.next as usize % RING_BUCKETS;
            let i = self.first_occupied(start);
            self.next += ((i + RING_BUCKETS - start) % RING_BUCKETS) as u64 + 1;
            self.occupied[i / 64] &= !(1 << (i % 64));
            let mut bucket = mem::take(&mut self.ring[i]);
            self.ring_len -= bucket.len();
            let (slots, index) = (&self.slots, &self.index);
            bucket.retain(|node| {
                let slot = &slots[node.slot()];
                if slot.seq != node.seq() {
                    return false;
                }
                // Look the key up now, only to bring its index lines into
                // the cache: lookups made back to back overlap their cache
                // misses, while the pops that need them come one at a time.
                // Measured: a third more hold operations per second at 10^6
                // entries, a tenth more at 10^5.
                let wanted = node.slot() as u32;
                std::hint::black_box(index.find(hash(&slot.key), |&s| s == wanted));
                true
            });
            self.heap = BinaryHeap::from(bucket);
            self.pull_far();
            if !self.heap.is_empty() {
                return true;
            }
        }
    }

    /// The first occupied ring bucket from `start` on, wrapping around;
    /// there must be one.
    fn first_occupied(&self, start: usize) -> usize {
        let words = self.occupied.len();
        let first = self.occupied[start / 64] & (!0 << (start % 64));
        if first != 0 {
            return start / 64 * 64 + first.trailing_zeros() as usize;
        }
        (1..=words)
            .map(|k| (start / 64 + k) % words)
            .find_map(|w| {
                let bits = self.occupied[w];
                (bits != 0).then(|| w * 64 + bits.trailing_zeros() as usize)
            })
            .expect("ring_len counts an entry in an empty ring")
    }

    /// Keeps every entry within the horizon in the ring, so that a bucket
    /// is complete when it comes up.
    fn pull_far(&mut self) {
        let horizon = self.next + RING_BUCKETS as u64;
        while let Some(&node) = self.far.peek() {
            if node.bucket() >= horizon {
                break;
            }
            self.far.pop();
            if self.is_live(node) {
                self.place(node);
            }
        }
    }

    /// Drops every stale entry, so that rescheduling the same keys again
    /// and again cannot grow memory.
    fn compact(&mut self) {
        let slots = &self.slots;
        let live = |node: &Node| slots[node.slot()].seq == node.seq();
        self.heap.retain(live);
        self.far.retain(live);
        self.ring_len = 0;
        for (i, bucket) in self.ring.iter_mut().enumerate() {
            bucket.retain(live);
            self.ring_len += bucket.len();
            if bucket.is_empty() {
                // Also gives back the memory of a bucket that a burst filled.
                *bucket = Vec::new();
                self.occupied[i / 64] &= !(1 << (i % 64));
            }
        }
    }

    /// Gives the live entries sequence numbers from 1 in their order, and
    /// with `due` makes them all due then.
    fn renumber(&mut self, due: Option<u64>) {
        let mut nodes = mem::take(&mut self.heap).into_vec();
        nodes.append(&mut mem::take(&mut self.far).into_vec());
        for bucket in self.ring.iter_mut() {
            nodes.append(bucket);
        }
        self.occupied.fill(0);
        self.ring_len = 0;
        nodes.retain(|node| self.slots[node.slot()].seq == node.seq());
        // Ascending (tick, order): the reverse of the heap's order.
        nodes.sort_unstable_by(|a, b| b.cmp(a));
        for (seq, node) in (1..).zip(nodes.iter_mut()) {
            *node = Node::new(due.unwrap_or(node.tick), seq, node.slot() as u32);
            self.slots[node.slot()].seq = seq;
        }
        self.seq = u32::try_from(nodes.len()).expect("2^32 keys scheduled");
        match due {
            Some(tick) => {
                // All in one bucket, which the heap is then made of.
                self.next = (tick >> BUCKET_SHIFT) + 1;
                self.heap = BinaryHeap::from(nodes);
            }
            None => nodes.into_iter().for_each(|node| self.place(node)),
        }
    }
}
