//! Metadata: JSON encode and decode, and the atomic durable rewrite a
//! worker does after every attempt (`Spool::write_meta`: write a temporary
//! file, fsync it, rename it over the old one, fsync the directory).
//!
//! `cargo bench --bench meta`

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mailqueue::queue::meta::MessageMeta;
use mailqueue::queue::spool::Spool;
use mailqueue::MessageId;

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("meta");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Elements(1));
    for rcpts in [1, 10] {
        let meta = common::deferred_meta(MessageId::generate(), rcpts);
        let json = meta.to_json();
        group.bench_with_input(BenchmarkId::new("encode", rcpts), &meta, |b, meta| {
            b.iter(|| black_box(meta).to_json())
        });
        group.bench_with_input(BenchmarkId::new("decode", rcpts), &json, |b, json| {
            b.iter(|| MessageMeta::from_json(black_box(json)).unwrap())
        });
    }
    group.finish();
}

fn rewrite(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(common::tmp_root()).unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let mut meta = common::deferred_meta(MessageId::generate(), 1);
    spool.write_meta(&meta).unwrap();

    let mut group = c.benchmark_group("meta");
    // Two fsyncs per rewrite: milliseconds, so fewer samples.
    group.sample_size(20);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Elements(1));
    group.bench_function("rewrite_fsync/1", |b| {
        b.iter(|| {
            meta.recipients[0].tries += 1;
            spool.write_meta(&meta).unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, codec, rewrite);
criterion_main!(benches);
