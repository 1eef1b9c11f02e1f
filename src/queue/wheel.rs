//! The time wheel: the data structure of due times that the timer thread
//! (`timer.rs`) owns. At its heart is a binary heap, kept small by a calendar in front of it: near-term entries
//! wait in a ring of coarse buckets and enter the heap only when their
//! bucket comes up, so a hold operation costs a push onto a short `Vec` and
//! a pop from a heap of one bucket's worth of entries, not `log n` cache
//! misses in a heap of every pending id.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::mem;
use std::time::{Duration, Instant};

use hashbrown::hash_table::{Entry, HashTable};

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

/// FxHash, as rustc uses it: a multiply per word. The keys are queue ids
/// this process made, not chosen by an attacker, so SipHash's resistance to
/// hash flooding would buy nothing for its cost.
#[derive(Debug, Default, Clone, Copy)]
struct FxHasher {
    hash: u64,
}

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = self
            .hash
            .wrapping_add(word)
            .wrapping_mul(0xf135_7aea_2e62_a9c5);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut word = [0u8; 8];
            word.copy_from_slice(w);
            self.add(u64::from_le_bytes(word));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(n.into());
    }

    #[inline]
    fn write_u16(&mut self, n: u16) {
        self.add(n.into());
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.add(n.into());
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    /// The product's high bits are its best mixed; the table takes its
    /// bucket from the low bits, so rotate them down.
    #[inline]
    fn finish(&self) -> u64 {
        self.hash.rotate_left(26)
    }
}

fn hash<K: Hash>(key: &K) -> u64 {
    BuildHasherDefault::<FxHasher>::default().hash_one(key)
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
        assert!(w.stored() <= 2048, "{}", w.stored());
    }

    const BUCKET: Duration = Duration::from_nanos(1 << BUCKET_SHIFT);
    const YEAR: Duration = Duration::from_secs(365 * 86400);

    fn drain<K: Copy + Hash + Eq + Ord>(w: &mut TimeWheel<K>, until: Instant) -> Vec<K> {
        std::iter::from_fn(|| w.pop_due(until)).collect()
    }

    #[test]
    fn bucket_boundaries_keep_time_order_and_ties_fifo() {
        let mut w = TimeWheel::new();
        let b = w.base;
        let one = Duration::from_nanos(1);
        let dues = [
            (1, b + 2 * BUCKET),
            (2, b + BUCKET),
            (3, b + 2 * BUCKET - one),
            (4, b + BUCKET - one),
            (5, b + BUCKET),
            (6, b + BUCKET + one),
            (7, b + 2 * BUCKET),
        ];
        for (k, due) in dues {
            w.add(k, due);
        }
        assert_eq!(w.peek(), Some((b + BUCKET - one, 4)));
        assert_eq!(drain(&mut w, b + 3 * BUCKET), vec![4, 2, 5, 6, 3, 1, 7]);
    }

    #[test]
    fn entries_past_the_horizon_come_back_in_order() {
        let mut w = TimeWheel::new();
        let b = w.base;
        let horizon = BUCKET * RING_BUCKETS as u32;
        let one = Duration::from_nanos(1);
        w.add(1, b + 10 * YEAR);
        w.add(2, b + 3 * horizon);
        w.add(3, b + horizon);
        w.add(4, b + horizon - one);
        w.add(5, b + horizon / 2);
        w.add(6, b + horizon + one);
        assert_eq!(w.far.len(), 4);
        assert_eq!(w.ring_len, 2);
        assert_eq!(w.pop_due(b + horizon), Some(5));
        // The ring has moved on: a due time before its start goes to the heap.
        w.add(7, b + BUCKET);
        assert_eq!(w.peek(), Some((b + BUCKET, 7)));
        assert_eq!(drain(&mut w, b + horizon), vec![7, 4, 3]);
        // Due times past the moved horizon still wait in the far heap.
        w.add(8, b + 4 * horizon);
        assert_eq!(drain(&mut w, b + 20 * YEAR), vec![6, 2, 8, 1]);
        assert!(w.is_empty());
        assert_eq!(w.stored(), 0);
    }

    #[test]
    fn a_reused_slot_does_not_revive_its_old_entries() {
        let t0 = Instant::now();
        let mut w = TimeWheel::new();
        w.add(1, at(t0, 10));
        assert!(w.remove(1));
        // Key 2 takes key 1's slot; key 1's entry must not pop as key 2.
        w.add(2, at(t0, 20));
        assert_eq!(w.slots.len(), 1);
        assert_eq!(w.pop_due(at(t0, 15)), None);
        assert_eq!(w.peek(), Some((at(t0, 20), 2)));
        // An earlier reschedule leaves an entry at 20 behind, also dead.
        w.add(2, at(t0, 5));
        assert_eq!(w.pop_due(at(t0, 5)), Some(2));
        w.add(3, at(t0, 30));
        assert_eq!(w.slots.len(), 1);
        assert_eq!(drain(&mut w, at(t0, 100)), vec![3]);
    }

    #[test]
    fn sequence_numbers_running_out_keep_ties_fifo() {
        let t0 = Instant::now();
        let mut w = TimeWheel::new();
        w.add(100, at(t0, 1));
        w.seq = u32::MAX - 2;
        for k in 0..6 {
            w.add(k, at(t0, 5));
        }
        assert!(w.seq < 10, "{}", w.seq);
        w.add(101, at(t0, 3));
        assert_eq!(drain(&mut w, at(t0, 5)), vec![100, 101, 0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn due_times_before_the_base_come_back_exactly() {
        let mut w = TimeWheel::new();
        let b = w.base;
        let one = Duration::from_nanos(1);
        // An hour back may predate the clock's start; a millisecond will do then.
        let long_ago = b
            .checked_sub(Duration::from_secs(3600))
            .unwrap_or_else(|| b - Duration::from_millis(1));
        w.add(1, b + one);
        w.add(2, b);
        w.add(3, b - one);
        w.add(4, long_ago);
        assert_eq!(w.peek(), Some((long_ago, 4)));
        assert_eq!(w.pop_due(long_ago), Some(4));
        assert_eq!(w.peek(), Some((b - one, 3)));
        assert_eq!(w.pop_due(b - one - one), None);
        assert_eq!(drain(&mut w, b), vec![3, 2]);
        assert_eq!(drain(&mut w, b + one), vec![1]);
    }

    #[test]
    fn ten_year_due_times_come_back_exactly() {
        let t0 = Instant::now();
        let later = t0 + 10 * YEAR + Duration::from_nanos(123_456_789);
        let one = Duration::from_nanos(1);
        let mut w = TimeWheel::new();
        w.add(1, later);
        w.add(2, later + one);
        w.add(3, later);
        assert_eq!(w.peek(), Some((later, 1)));
        assert_eq!(w.pop_due(later - one), None);
        assert_eq!(drain(&mut w, later), vec![1, 3]);
        assert_eq!(w.peek(), Some((later + one, 2)));
        // A near item after the ring jumped ten years ahead.
        w.add(4, at(t0, 1));
        assert_eq!(drain(&mut w, later + one), vec![4, 2]);
    }

    #[test]
    fn holding_and_rescheduling_forever_stay_bounded() {
        let t0 = Instant::now();
        let mut w = TimeWheel::new();
        // Rescheduling within the ring's horizon, without pops.
        for i in 0..200_000u64 {
            w.add(i % 10, at(t0, i % 4000));
        }
        assert_eq!(w.len(), 10);
        assert!(w.stored() <= 2048, "{}", w.stored());
        // The hold model: pop the earliest, add it again later.
        let mut rng = fastrand::Rng::with_seed(7);
        for k in 10..1000u64 {
            w.add(k, at(t0, rng.u64(..3600)));
        }
        for _ in 0..200_000 {
            let (due, key) = w.peek().unwrap();
            assert_eq!(w.pop_due(due), Some(key));
            if rng.u8(..4) == 0 {
                w.add(key, due + Duration::from_secs(rng.u64(..3600)));
            }
            w.add(key, due + Duration::from_secs(rng.u64(..3600)));
        }
        assert_eq!(w.len(), 1000);
        assert_eq!(w.slots.len(), 1000);
        assert!(w.stored() <= 2000, "{}", w.stored());
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

        /// As above, with due times from an hour before the wheel's base to
        /// days after it, so that entries cross buckets, the ring's horizon
        /// and the far heap.
        #[test]
        fn behaves_like_a_sorted_list_across_days(
            ops in proptest::collection::vec(op_across_days(), 1..400)
        ) {
            let mut wheel = TimeWheel::new();
            let t0 = wheel.base.checked_sub(Duration::from_secs(3600)).unwrap_or(wheel.base);
            // Units of 0.3 s: spread, yet with ties and shared buckets.
            let at = |t: u32| t0 + Duration::from_millis(300 * u64::from(t));
            let mut model: Vec<(u32, u64, u8)> = Vec::new();
            let mut n = 0u64;
            for op in ops {
                match op {
                    DayOp::Add(k, t) => {
                        wheel.add(k, at(t));
                        model.retain(|e| e.2 != k);
                        n += 1;
                        model.push((t, n, k));
                    }
                    DayOp::Remove(k) => {
                        let was = model.iter().any(|e| e.2 == k);
                        model.retain(|e| e.2 != k);
                        prop_assert_eq!(wheel.remove(k), was);
                    }
                    DayOp::Pop(t) => {
                        model.sort();
                        let want = model.first().filter(|e| e.0 <= t).map(|e| e.2);
                        if want.is_some() {
                            model.remove(0);
                        }
                        prop_assert_eq!(wheel.pop_due(at(t)), want);
                    }
                    DayOp::Peek => {
                        model.sort();
                        let want = model.first().map(|e| (at(e.0), e.2));
                        prop_assert_eq!(wheel.peek(), want);
                    }
                    DayOp::FlushAll(t) => {
                        wheel.make_all_due(at(t));
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

    #[derive(Debug, Clone)]
    enum DayOp {
        Add(u8, u32),
        Remove(u8),
        Pop(u32),
        Peek,
        FlushAll(u32),
    }

    /// Due times cluster near the start, with a tail of days and weeks.
    fn op_across_days() -> impl Strategy<Value = DayOp> {
        let time = prop_oneof![
            3 => 0..30_000u32,
            2 => 0..1_000_000u32,
            1 => 0..10_000_000u32,
        ];
        prop_oneof![
            4 => (0..32u8, time.clone()).prop_map(|(k, t)| DayOp::Add(k, t)),
            1 => (0..32u8).prop_map(DayOp::Remove),
            3 => time.clone().prop_map(DayOp::Pop),
            1 => Just(DayOp::Peek),
            1 => time.prop_map(DayOp::FlushAll),
        ]
    }
}
