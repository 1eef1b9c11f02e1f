//! The spool's shape kept in memory: messages and bytes by state (active,
//! deferred, held) and the oldest message's age, so the metrics endpoint
//! reads them in constant time instead of every metadata file.
//!
//! The spool keeps it because every change of a message goes through the
//! spool (a store, a metadata write, a removal, a quarantine): counting
//! there, rather than at each caller (the workers, each admin command and
//! its bulk form), leaves no way to change a message without counting it.
//!
//! The oldest age is exact and cheap: the messages' lifetime starts (the
//! arrival plus the time spent held, as [`MessageMeta::age`] counts) are
//! counted in a `BTreeMap`, whose first key is the oldest; a change costs
//! O(log n), a read O(1)-ish, and nothing goes stale as a recomputation
//! every N seconds would.
//!
//! While the start-up load runs in the background, the census is also
//! where the loader and everyone else meet: a message the census counts
//! already, or one anybody else counted, changed, removed or began to
//! write since the load began, is *claimed*, and the loader leaves it
//! alone (see [`Census::adopt`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use crate::queue::fxhash::FxBuild;
use crate::queue::meta::{MessageMeta, Queued, Timestamp};
use crate::queue::MessageId;

/// A message's state, as `list --json` and the metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not tried yet (or every pending recipient untried).
    Active = 0,
    /// Some pending recipient was tried and failed temporarily.
    Deferred = 1,
    /// Held by the operator.
    Held = 2,
}

impl State {
    /// The state of a message with this metadata.
    pub fn of(meta: &MessageMeta) -> State {
        Self::from_flags(meta.hold, meta.pending().any(|r| r.tries > 0))
    }

    fn from_flags(hold: bool, deferred: bool) -> State {
        match (hold, deferred) {
            (true, _) => State::Held,
            (false, true) => State::Deferred,
            (false, false) => State::Active,
        }
    }
}

/// The names of the states, in the order of [`CensusCounts::by_state`].
pub const STATES: [&str; 3] = ["active", "deferred", "held"];

/// The shape of the queue at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CensusCounts {
    /// `(messages, bytes)` in the order of [`STATES`].
    pub by_state: [(u64, u64); 3],
    /// When the lifetime of the oldest message started (its arrival plus
    /// the time it spent held); `None` when the queue is empty.
    pub oldest_start: Option<Timestamp>,
}

impl CensusCounts {
    /// The oldest message's age at `now`; zero when the queue is empty.
    pub fn oldest_age(&self, now: Timestamp) -> Duration {
        self.oldest_start.map(|t| now.since(t)).unwrap_or_default()
    }
}

/// What the census remembers of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    state: State,
    size: u64,
    start: Timestamp,
}

impl Entry {
    fn of(meta: &MessageMeta) -> Entry {
        Entry {
            state: State::of(meta),
            size: meta.size,
            start: meta.arrival.plus(Duration::from_millis(meta.held_ms)),
        }
    }

    fn of_queued(q: &Queued) -> Entry {
        Entry {
            state: State::from_flags(q.hold, q.deferred),
            size: q.size,
            start: q.arrival.plus(Duration::from_millis(q.held_ms)),
        }
    }
}

#[derive(Debug, Default)]
struct Tally {
    /// Each message's entry, so a change replaces what it counted before
    /// (a state counted twice, or a removal never counted, cannot happen).
    entries: HashMap<MessageId, Entry, FxBuild>,
    counts: CensusCounts,
    /// Messages by lifetime start.
    starts: BTreeMap<Timestamp, u32>,
    /// While a start-up load runs: the ids it must not touch, because
    /// something else set, removed or created them since it began and
    /// the census did not count them then. Only those: an id it counts
    /// is never adopted anyway, so the set stays small.
    claimed: Option<HashSet<MessageId, FxBuild>>,
}

impl Tally {
    fn add(&mut self, e: Entry) {
        let s = &mut self.counts.by_state[e.state as usize];
        s.0 += 1;
        s.1 += e.size;
        *self.starts.entry(e.start).or_insert(0) += 1;
    }

    fn subtract(&mut self, e: Entry) {
        let s = &mut self.counts.by_state[e.state as usize];
        s.0 = s.0.saturating_sub(1);
        s.1 = s.1.saturating_sub(e.size);
        if let Some(n) = self.starts.get_mut(&e.start) {
            *n -= 1;
            if *n == 0 {
                self.starts.remove(&e.start);
            }
        }
    }

    /// Keeps a running load off `id`, unless it is counted already.
    fn claim(&mut self, id: MessageId) {
        if let Some(claimed) = &mut self.claimed {
            if !self.entries.contains_key(&id) {
                claimed.insert(id);
            }
        }
    }

    fn known(&self, id: &MessageId) -> bool {
        self.entries.contains_key(id) || self.claimed.as_ref().is_some_and(|c| c.contains(id))
    }

    fn set(&mut self, id: MessageId, e: Entry) {
        self.claim(id);
        match self.entries.insert(id, e) {
            Some(old) if old == e => return,
            Some(old) => self.subtract(old),
            None => {}
        }
        self.add(e);
    }

    fn remove(&mut self, id: &MessageId) {
        self.claim(*id);
        if let Some(old) = self.entries.remove(id) {
            self.subtract(old);
        }
    }
}

/// The spool's shape, updated as messages change; see the module doc.
#[derive(Debug, Default)]
pub(super) struct Census(Mutex<Tally>);

impl Census {
    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a message as its metadata now says (new or changed).
    pub(super) fn set(&self, meta: &MessageMeta) {
        self.tally().set(meta.id, Entry::of(meta));
    }

    /// Stops counting a message that left the queue.
    pub(super) fn remove(&self, id: &MessageId) {
        self.tally().remove(id);
    }

    /// Starts over, empty, for a start-up load: from now until
    /// [`Census::end_load`], every id set, removed or claimed is left to
    /// whoever did it.
    pub(super) fn begin_load(&self) {
        *self.tally() = Tally {
            claimed: Some(HashSet::default()),
            ..Tally::default()
        };
    }

    /// The start-up load is over: nothing is claimed any more.
    pub(super) fn end_load(&self) {
        self.tally().claimed = None;
    }

    /// True between [`Census::begin_load`] and [`Census::end_load`].
    pub(super) fn loading(&self) -> bool {
        self.tally().claimed.is_some()
    }

    /// Keeps the running load off a message about to be created.
    pub(super) fn claim(&self, id: MessageId) {
        self.tally().claim(id);
    }

    /// True when the load must leave `id` alone: counted already, or
    /// claimed by someone else since the load began.
    pub(super) fn known(&self, id: &MessageId) -> bool {
        self.tally().known(id)
    }

    /// Makes room for `n` more messages at once: growing step by step,
    /// the table would hold its old and its new buckets together at each
    /// step, a peak half as large again as the table itself.
    pub(super) fn reserve(&self, n: usize) {
        self.tally().entries.reserve(n);
    }

    /// Keeps the items whose id nobody else has claimed, before the load
    /// reads them. Claims only: a message the census counts and nobody
    /// claimed is one a failed pass of the load counted already, which
    /// [`Census::adopt`] skips (a table lookup per message saved).
    pub(super) fn retain_unclaimed<T>(&self, items: &mut Vec<T>, id: impl Fn(&T) -> MessageId) {
        let t = self.tally();
        if let Some(claimed) = t.claimed.as_ref().filter(|c| !c.is_empty()) {
            items.retain(|item| !claimed.contains(&id(item)));
        }
    }

    /// Counts the messages the load read, except those [`Census::known`]
    /// (their state on disk may be newer than what the load read, and
    /// whoever changed them scheduled them); returns the ones counted,
    /// which the load alone schedules.
    pub(super) fn adopt(&self, mut batch: Vec<Queued>) -> Vec<Queued> {
        let mut t = self.tally();
        let t = &mut *t;
        batch.retain(|q| {
            if t.claimed.as_ref().is_some_and(|c| c.contains(&q.id)) {
                return false;
            }
            let std::collections::hash_map::Entry::Vacant(slot) = t.entries.entry(q.id) else {
                return false;
            };
            let e = Entry::of_queued(q);
            slot.insert(e);
            t.add(e);
            true
        });
        batch
    }

    /// Messages and bytes counted now, in every state.
    pub(super) fn totals(&self) -> (u64, u64) {
        let t = self.tally();
        t.counts
            .by_state
            .iter()
            .fold((0, 0), |(n, b), s| (n + s.0, b + s.1))
    }

    /// The counts now.
    pub(super) fn counts(&self) -> CensusCounts {
        let t = self.tally();
        CensusCounts {
            oldest_start: t.starts.keys().next().copied(),
            ..t.counts
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;

    fn meta(arrival: u64, size: u64) -> MessageMeta {
        let env = Envelope::new(None, vec!["a@example.net".parse().unwrap()]);
        let mut m = MessageMeta::new(MessageId::generate(), &env, size);
        m.arrival = Timestamp(arrival);
        m
    }

    #[test]
    fn states_and_the_oldest_follow_each_change() {
        let c = Census::default();
        assert_eq!(c.counts(), CensusCounts::default());
        let mut a = meta(1_000, 10);
        let b = meta(2_000, 20);
        c.set(&a);
        c.set(&b);
        c.set(&b); // written again unchanged: counted once
        assert_eq!(c.counts().by_state, [(2, 30), (0, 0), (0, 0)]);
        assert_eq!(c.counts().oldest_age(Timestamp(5_000)).as_millis(), 4_000);

        a.recipients[0].tries = 1;
        c.set(&a);
        assert_eq!(c.counts().by_state, [(1, 20), (1, 10), (0, 0)]);
        a.hold = true;
        c.set(&a);
        assert_eq!(c.counts().by_state, [(1, 20), (0, 0), (1, 10)]);
        // Released after 1.5 s held: its lifetime starts 1.5 s later.
        a.hold = false;
        a.held_ms = 1_500;
        c.set(&a);
        assert_eq!(c.counts().by_state, [(1, 20), (1, 10), (0, 0)]);
        assert_eq!(c.counts().oldest_start, Some(Timestamp(2_000)));

        c.remove(&b.id);
        c.remove(&b.id); // removed twice: counted once
        assert_eq!(c.counts().oldest_start, Some(Timestamp(2_500)));
        c.remove(&a.id);
        assert_eq!(c.counts(), CensusCounts::default());
    }

    fn queued(m: &MessageMeta) -> Queued {
        Queued::from_json(&m.to_json()).unwrap()
    }

    #[test]
    fn during_a_load_what_anyone_else_touches_is_theirs() {
        let c = Census::default();
        let (changed, deleted, written, untouched) = (
            meta(1_000, 1),
            meta(2_000, 2),
            meta(3_000, 4),
            meta(4_000, 8),
        );
        c.begin_load();
        // Before the load reads them: the operator holds one message and
        // deletes another, a new message is being written.
        let mut held = changed.clone();
        held.hold = true;
        c.set(&held);
        c.remove(&deleted.id);
        c.claim(written.id);
        let all = [&changed, &deleted, &written, &untouched]
            .map(queued)
            .to_vec();
        let adopted = c.adopt(all.clone());
        assert_eq!(
            adopted.iter().map(|q| q.id).collect::<Vec<_>>(),
            [untouched.id]
        );
        // Counted once each, as their owners left them.
        assert_eq!(c.counts().by_state, [(1, 8), (0, 0), (1, 1)]);
        // A second pass (after a failed one) adopts nothing twice.
        assert!(c.adopt(all).is_empty());
        c.set(&written);
        assert_eq!(c.totals(), (3, 13));
        c.end_load();
        assert!(!c.loading());
        c.remove(&untouched.id);
        assert!(!c.known(&untouched.id), "claims end with the load");
    }
}
