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

/// An operation on the wheel, with due times in units `T` that the test
/// maps to instants.
#[derive(Debug, Clone)]
enum Op<T> {
    Add(u8, T),
    Remove(u8),
    Pop(T),
    Peek,
    FlushAll(T),
}

fn op() -> impl Strategy<Value = Op<u16>> {
    prop_oneof![
        4 => (any::<u8>(), any::<u16>()).prop_map(|(k, t)| Op::Add(k % 32, t % 1000)),
        1 => any::<u8>().prop_map(|k| Op::Remove(k % 32)),
        3 => any::<u16>().prop_map(|t| Op::Pop(t % 1000)),
        1 => any::<u16>().prop_map(|t| Op::FlushAll(t % 1000)),
    ]
}

/// Due times cluster near the start, with a tail of days and weeks.
fn op_across_days() -> impl Strategy<Value = Op<u32>> {
    let time = prop_oneof![
        3 => 0..30_000u32,
        2 => 0..1_000_000u32,
        1 => 0..10_000_000u32,
    ];
    prop_oneof![
        4 => (0..32u8, time.clone()).prop_map(|(k, t)| Op::Add(k, t)),
        1 => (0..32u8).prop_map(Op::Remove),
        3 => time.clone().prop_map(Op::Pop),
        1 => Just(Op::Peek),
        1 => time.prop_map(Op::FlushAll),
    ]
}

/// Runs `ops` on `wheel` and on a model, a list sorted by due time and
/// insertion order, and checks that they agree at every step.
fn behaves_like_the_model<T: Copy + Ord + std::fmt::Debug>(
    mut wheel: TimeWheel<u8>,
    ops: Vec<Op<T>>,
    at: impl Fn(T) -> Instant,
) -> Result<(), TestCaseError> {
    // The model: (due, insertion number, key), at most one per key.
    let mut model: Vec<(T, u64, u8)> = Vec::new();
    let mut n = 0u64;
    for op in ops {
        match op {
            Op::Add(k, t) => {
                wheel.add(k, at(t));
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
                prop_assert_eq!(wheel.pop_due(at(t)), want);
            }
            Op::Peek => {
                model.sort();
                let want = model.first().map(|e| (at(e.0), e.2));
                prop_assert_eq!(wheel.peek(), want);
            }
            Op::FlushAll(t) => {
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
    Ok(())
}

proptest! {
    #[test]
    fn behaves_like_a_sorted_list(ops in proptest::collection::vec(op(), 1..300)) {
        let t0 = Instant::now();
        behaves_like_the_model(TimeWheel::new(), ops, |t| t0 + Duration::from_millis(u64::from(t)))?;
    }

    /// As above, with due times from an hour before the wheel's base to
    /// days after it, so that entries cross buckets, the ring's horizon
    /// and the far heap.
    #[test]
    fn behaves_like_a_sorted_list_across_days(
        ops in proptest::collection::vec(op_across_days(), 1..400)
    ) {
        let wheel = TimeWheel::new();
        let t0 = wheel.base.checked_sub(Duration::from_secs(3600)).unwrap_or(wheel.base);
        // Units of 0.3 s: spread, yet with ties and shared buckets.
        let at = move |t: u32| t0 + Duration::from_millis(300 * u64::from(t));
        behaves_like_the_model(wheel, ops, at)?;
    }
}
