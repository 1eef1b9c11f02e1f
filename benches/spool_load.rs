//! Start-up scan of a spool holding 10^5 deferred messages: `Spool::load`
//! as the daemon runs it (metadata parsed on rayon's global pool, one
//! thread per core) against the same scan confined to a one-thread pool.
//!
//! The fixture is written once per run, without fsync, straight in the
//! documented layout (`queue/<id>.msg` + `queue/<id>.meta`, by
//! `common::put_message`). It was just
//! written, so the page cache is warm: this measures the CPU side of the
//! scan (directory listing, reads from cache, JSON parsing), not a cold
//! disk.
//!
//! `cargo bench --bench spool_load`; `SPOOL_LOAD_MESSAGES` changes the count.

mod common;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mailqueue::queue::spool::Spool;

/// A short message body: `load` never reads it, it only has to exist.
const BODY: &[u8] = b"Received: from client.example.org by mq.example.org\r\n\
From: newsletter@lists.example.org\r\nSubject: digest\r\n\r\nHello.\r\n";

fn fill(spool: &Spool, n: usize) {
    // Deferred 15 minutes, like `common::deferred_meta`.
    let next = mailqueue::queue::meta::Timestamp::now().plus(Duration::from_secs(900));
    common::fill_spool(spool, n, BODY, next);
}

fn load(c: &mut Criterion) {
    let n: usize = std::env::var("SPOOL_LOAD_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if common::bench_mode() { 100_000 } else { 1_000 });
    let dir = tempfile::tempdir_in(common::tmp_root()).unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let started = Instant::now();
    fill(&spool, n);
    eprintln!(
        "spool_load: wrote {n} messages in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let timed = |f: &dyn Fn() -> usize| {
        let started = Instant::now();
        assert_eq!(f(), n);
        started.elapsed()
    };
    let serial = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let parallel_once = timed(&|| {
        let report = spool.load().unwrap();
        assert_eq!(report.quarantined + report.removed, 0);
        report.messages.len()
    });
    let serial_once = timed(&|| serial.install(|| spool.load().unwrap().messages.len()));
    // Ten samples of one scan each, with room to spare.
    let budget = |once: Duration| (once * 12).max(Duration::from_secs(3));

    let mut group = c.benchmark_group(format!("spool_load_{n}"));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(n as u64));
    group.measurement_time(budget(parallel_once));
    group.bench_function(
        format!("parallel_{}_threads", rayon::current_num_threads()),
        |b| b.iter_with_large_drop(|| spool.load().unwrap()),
    );
    group.measurement_time(budget(serial_once));
    group.bench_function("serial_1_thread", |b| {
        b.iter_with_large_drop(|| serial.install(|| spool.load().unwrap()))
    });
    group.finish();
}

criterion_group!(benches, load);
criterion_main!(benches);
