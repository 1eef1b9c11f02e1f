//! The time wheel under the "hold" model: with n entries pending, one
//! iteration takes the earliest entry and schedules it again a random
//! retry delay later, so the wheel stays at n entries. Each iteration is
//! one add and one pop; criterion's throughput line (elem/s) is therefore
//! add+pop pairs per second.
//!
//! `cargo bench --bench timer`

mod common;

use std::hash::Hash;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mailqueue::queue::wheel::TimeWheel;

const SIZES: [usize; 4] = [1_000, 10_000, 100_000, 1_000_000];
/// Retry delays are spread over an hour (in microseconds).
const SPREAD_MICROS: u64 = 3_600_000_000;

fn hold<K: Copy + Hash + Eq + Ord>(c: &mut Criterion, name: &str, keys: &dyn Fn(usize) -> Vec<K>) {
    let mut group = c.benchmark_group(format!("time_wheel_add_pop/{name}"));
    group.throughput(Throughput::Elements(1));
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    for n in SIZES {
        let mut rng = fastrand::Rng::with_seed(n as u64);
        let base = Instant::now();
        let mut wheel = TimeWheel::new();
        for key in keys(n) {
            wheel.add(key, base + Duration::from_micros(rng.u64(..SPREAD_MICROS)));
        }
        assert_eq!(wheel.len(), n);
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                let (due, key) = wheel.peek().expect("the wheel never empties");
                let popped = wheel.pop_due(due);
                debug_assert!(popped == Some(key));
                wheel.add(key, due + Duration::from_micros(rng.u64(..SPREAD_MICROS)));
            })
        });
        assert_eq!(wheel.len(), n);
    }
    group.finish();
}

fn time_wheel(c: &mut Criterion) {
    // What the daemon runs: 20-byte queue ids.
    hold(c, "message_id", &common::unique_ids);
    // The same with plain integers, to tell the heap from the hashing of ids.
    hold(c, "u64", &|n| (0..n as u64).collect());
}

criterion_group!(benches, time_wheel);
criterion_main!(benches);
