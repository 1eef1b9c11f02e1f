//! The queue gauges of a metrics scrape (messages and bytes by state, the
//! oldest message's age) on a spool of 10^4 deferred messages: as the
//! endpoint computed them before, reading every message's metadata
//! (`Queue::list`, then each message's state and age), against the
//! census the spool now keeps in memory (`Queue::census`), both on the
//! same queue; then a whole scrape (`GET /metrics` over loopback) of the
//! release daemon started on the same spool. A scrape before cost the
//! full read plus what the scrape costs now (the HTTP exchange and the
//! encoding, unchanged): the ratio printed is that sum over the scrape
//! now, all measured in one run.
//!
//! `cargo bench --bench scrape`; `SCRAPE_MESSAGES` changes the count
//! (default 10^4; 200 under `cargo test --benches`).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailqueue::queue::meta::Timestamp;
use mailqueue::queue::spool::{CensusCounts, Spool, State};
use mailqueue::{
    Body, DeliveryTarget, MessageInfo, Queue, QueueOptions, Recipient, RecipientOutcome,
};

const BODY: &[u8] = b"From: app@example.org\r\nSubject: report\r\n\r\nHello.\r\n";

/// Never called: every message is due in an hour.
struct Idle;

impl DeliveryTarget for Idle {
    fn deliver(&self, _: &MessageInfo, r: &[Recipient], _: &Body) -> Vec<RecipientOutcome> {
        panic!("{} recipients delivered during the bench", r.len());
    }
}

/// The gauges as `render` computed them before: every metadata file read.
fn by_reading(queue: &Queue) -> CensusCounts {
    let now = Timestamp::now();
    let mut c = CensusCounts::default();
    let mut oldest = Duration::ZERO;
    for m in queue.list().unwrap() {
        let s = &mut c.by_state[State::of(&m) as usize];
        s.0 += 1;
        s.1 += m.size;
        oldest = oldest.max(m.age(now));
    }
    c.oldest_start = (!oldest.is_zero()).then(|| Timestamp(now.0 - oldest.as_millis() as u64));
    c
}

/// The median of `runs` timings of `f`.
fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn main() {
    let n = common::env_num(
        "SCRAPE_MESSAGES",
        if common::bench_mode() { 10_000 } else { 200 },
    )
    .unwrap() as usize;
    let dir = tempfile::tempdir_in(common::tmp_root()).unwrap();
    let later = Timestamp::now().plus(Duration::from_secs(3600));
    common::fill_spool(&Spool::open(dir.path()).unwrap(), n, BODY, later);
    let mut options = QueueOptions::new(dir.path());
    options.workers = 1;
    let queue = Queue::open(options, Arc::new(Idle)).unwrap();

    let read = by_reading(&queue);
    let kept = queue.census();
    assert_eq!(
        read.by_state, kept.by_state,
        "the census differs from the spool"
    );
    assert_eq!(read.by_state[State::Deferred as usize].0, n as u64);

    let before = median(7, || {
        std::hint::black_box(by_reading(&queue));
    });
    let after = median(1001, || {
        std::hint::black_box(queue.census());
    });
    println!(
        "scrape gauges, {n} deferred messages: reading every metadata file {:.2} ms, \
         census {:.2} µs; {:.0}× faster",
        before.as_secs_f64() * 1e3,
        after.as_secs_f64() * 1e6,
        before.as_secs_f64() / after.as_secs_f64()
    );
    queue.close();

    let scrape = daemon_scrape(dir.path(), n);
    println!(
        "whole scrape over HTTP, {n} deferred messages: now {:.2} ms; before \
         (the full read added) {:.2} ms; {:.0}× faster",
        scrape.as_secs_f64() * 1e3,
        (scrape + before).as_secs_f64() * 1e3,
        (scrape + before).as_secs_f64() / scrape.as_secs_f64()
    );
}

/// The median time of a `GET /metrics` to the release daemon running on
/// the spool in `dir`, which holds `n` deferred messages.
fn daemon_scrape(dir: &Path, n: usize) -> Duration {
    let port = common::free_port().unwrap();
    let config = dir.join("scrape.toml");
    std::fs::write(
        &config,
        format!(
            "hostname = \"mq.bench.example\"\nspool = {:?}\n[queue]\nworkers = 1\n\
             [listen]\nsmtp = []\n[delivery]\ntarget = \"smtp://127.0.0.1:9\"\n\
             [metrics]\nlisten = \"127.0.0.1:{port}\"\n",
            dir.display().to_string()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("scrape.log")).unwrap();
    let mut children = common::Children(Vec::new());
    children.push(
        Command::new(env!("CARGO_BIN_EXE_mailqueue"))
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .env_remove("MAILQUEUE_CONFIG")
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start mailqueue serve"),
    );
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(120);
    while TcpStream::connect(&addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "the daemon's metrics never came up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let want = format!("mailqueue_queue_messages{{state=\"deferred\"}} {n}\n");
    let body = get_metrics(&addr);
    assert!(body.contains(&want), "{body}");
    median(21, || {
        std::hint::black_box(get_metrics(&addr));
    })
}

/// One `GET /metrics`; returns the response.
fn get_metrics(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
