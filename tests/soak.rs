//! Soak: many messages (SOAK_MESSAGES, default 50 000) through the real
//! daemon (the debug build), delivered to a sink with rare random faults
//! of every kind (4xx, 5xx, hang-ups, stalls past the timeouts, malformed
//! replies), some recipients refused for good so notices are made. The
//! daemon's resident memory, open file descriptors and threads are read
//! from /proc at the start, in the middle and at the end: memory must stay
//! flat and nothing may leak. Every acknowledged message must end
//! delivered or reported in a notice, and the queue must drain.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::daemon::{Daemon, Setup};
use common::faulty::{open_fds, rss_kib, threads, FaultySink, Load};
use common::{files_in, wait_for};

/// Hard limit on the whole test.
const TIME_LIMIT: Duration = Duration::from_secs(600);
/// Growth of resident memory allowed from the middle to the end. The
/// queue is empty at the end and was busy in the middle, so a daemon that
/// does not leak ends at about its middle figure (measured: 21.1 MiB in
/// the middle, 21.2 MiB at the end of 50 000 messages); a leak of 340
/// bytes per message or more (a kept buffer, a map entry per message with
/// its strings, a session's buffers) passes 8 MiB over the second 25 000
/// messages. The fd and thread checks catch a leaked connection or
/// thread one by one.
const RSS_GROWTH_KIB: u64 = 8 * 1024;

fn rcpts(seq: u64) -> Vec<String> {
    if seq % 10 == 0 {
        vec![
            format!("a-{seq}@example.net"),
            format!("permfail-{seq}@example.org"),
        ]
    } else {
        vec![format!("a-{seq}@example.net")]
    }
}

struct Figures {
    rss_kib: u64,
    fds: usize,
    threads: usize,
}

fn figures(pid: u32) -> Figures {
    Figures {
        rss_kib: rss_kib(pid),
        fds: open_fds(pid),
        threads: threads(pid),
    }
}

#[test]
fn fifty_thousand_messages_with_faults_and_flat_memory() {
    let started = Instant::now();
    let total: u64 = std::env::var("SOAK_MESSAGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50_000);
    let seed: u64 = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..1 << 32));
    eprintln!("soak: {total} messages, seed {seed} (SOAK_MESSAGES, SOAK_SEED)");
    let sink = FaultySink::start(&[
        "--seed",
        &seed.to_string(),
        "--fault-rate",
        "0.02",
        "--reject-prefix",
        "permfail",
        "--pipelining",
    ]);
    let notices = FaultySink::start(&[]);
    let setup = Setup::to(&sink.url())
        .rust_log("warn")
        .queue(
            "workers = 8\nmax_tries = 3\ninitial_retry = \"200ms\"\n\
             max_retry_interval = \"500ms\"",
        )
        .delivery(
            "connect_timeout = \"1s\"\ncommand_timeout = \"1s\"\ndata_timeout = \"1s\"\n\
             connection_cache_time = \"1s\"",
        )
        .bounce(&format!("target = \"{}\"", notices.url()));
    let d = Daemon::start(&setup);
    let pid = d.pid();
    let start = figures(pid);

    let load = Load::start(d.addr(), 4, total, 100, Duration::ZERO, Arc::new(rcpts));
    let mut middle: Option<Figures> = None;
    let mut last_report = Instant::now();
    while !load.finished() {
        assert!(started.elapsed() < TIME_LIMIT, "out of time while sending");
        let acked = load.acked_count() as u64;
        if middle.is_none() && acked >= total / 2 {
            middle = Some(figures(pid));
        }
        if last_report.elapsed() >= Duration::from_secs(30) {
            last_report = Instant::now();
            eprintln!(
                "soak: {acked} acknowledged, {} delivered, {:.0}s",
                sink.count(),
                started.elapsed().as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let acked = load.stop();
    let sent_time = started.elapsed();
    let middle = middle.unwrap_or_else(|| figures(pid));

    let queue = d.spool().join("queue");
    let limit = TIME_LIMIT.saturating_sub(started.elapsed());
    assert!(
        wait_for(limit, || files_in(&queue).is_empty()),
        "the queue did not drain: {} files left",
        files_in(&queue).len()
    );
    let drained = started.elapsed();
    // Idle sessions to the sinks are closed after connection_cache_time,
    // and idle listener threads end after a few seconds without a
    // connection: wait (bounded) for both to be gone.
    let mut end = figures(pid);
    let settle = std::time::Instant::now();
    while (end.threads > start.threads + 2 || end.fds > start.fds + 2)
        && settle.elapsed() < Duration::from_secs(15)
    {
        std::thread::sleep(Duration::from_millis(200));
        end = figures(pid);
    }

    // Accounting: each recipient delivered once or more, or named in a
    // notice; nothing in corrupt/.
    assert!(files_in(&d.spool().join("corrupt")).is_empty());
    let log = d.log();
    assert!(!log.contains("panicked"), "a thread panicked");
    let mut delivered = std::collections::HashMap::<String, usize>::new();
    let deliveries = sink.deliveries();
    for m in &deliveries {
        for r in m["rcpts"].as_array().unwrap() {
            *delivered
                .entry(r.as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    let mut reported = std::collections::HashSet::new();
    let notice_list = notices.deliveries();
    for n in &notice_list {
        let of = n["notice"]["of"].as_str().unwrap_or("").to_string();
        for r in n["notice"]["recipients"].as_array().unwrap() {
            reported.insert((of.clone(), r["rcpt"].as_str().unwrap().to_string()));
        }
    }
    let mut lost = Vec::new();
    let mut bounced = 0;
    for a in &acked {
        for r in &a.rcpts {
            if reported.contains(&(a.id.clone(), r.clone())) {
                bounced += 1;
            } else if !delivered.contains_key(r) {
                lost.push(format!("{} to {r}", a.id));
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} recipients neither delivered nor reported: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    let duplicates: usize = delivered.values().map(|n| n - 1).sum();
    let events = sink.events();
    let faults = events.iter().filter(|e| e["kind"] != "info").count();
    let stalls = events
        .iter()
        .filter(|e| e["kind"] == "stall" || e["kind"] == "trickle")
        .count();

    let mib = |k: u64| k as f64 / 1024.0;
    eprintln!(
        "soak: {} messages acknowledged of {total}, {} deliveries ({duplicates} duplicates), {bounced} recipients bounced with a notice, \
         {faults} faults injected ({stalls} stalls); sent in {:.0}s, drained at {:.0}s \
         ({:.0} messages/s)\n\
         soak: daemon RSS start {:.1} MiB, middle {:.1} MiB, end {:.1} MiB; \
         fds {} / {} / {}; threads {} / {} / {}",
        acked.len(),
        deliveries.len(),
        sent_time.as_secs_f64(),
        drained.as_secs_f64(),
        acked.len() as f64 / drained.as_secs_f64(),
        mib(start.rss_kib),
        mib(middle.rss_kib),
        mib(end.rss_kib),
        start.fds,
        middle.fds,
        end.fds,
        start.threads,
        middle.threads,
        end.threads,
    );
    assert_eq!(acked.len() as u64, total, "messages refused");
    assert!(
        end.rss_kib <= middle.rss_kib + RSS_GROWTH_KIB,
        "memory grew from {:.1} MiB in the middle to {:.1} MiB at the end",
        mib(middle.rss_kib),
        mib(end.rss_kib)
    );
    // The start has no connection open, the end neither (the idle ones
    // were closed): allow a couple for timing.
    assert!(
        end.fds <= start.fds + 2,
        "file descriptors leak: {} at the start, {} at the end",
        start.fds,
        end.fds
    );
    assert!(
        end.threads <= start.threads + 2,
        "threads leak: {} at the start, {} at the end",
        start.threads,
        end.threads
    );
    assert!(started.elapsed() < TIME_LIMIT);
}
