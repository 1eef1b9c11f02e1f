//! Crash loop: SMTP load into the real daemon, which delivers to a slow
//! sink that records every message; the daemon is killed with SIGKILL at
//! chosen and random moments (while it takes in mail, while attempts are
//! in flight, right after a delivery or a deferral while it rewrites the
//! metadata, while it makes a failure notice) and started again on the
//! same spool,
//! cycle after cycle. At the end every acknowledged message was delivered
//! at least once, every permanent failure was reported, the spool is
//! empty and nothing was quarantined; duplicates are counted, and each
//! one must have a kill between its two deliveries.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::daemon::{Daemon, Setup};
use common::faulty::{restart, unix_now, FaultySink, Load, LogTail};
use common::{files_in, wait_for};
use serde_json::Value;

const CYCLES: usize = 28;
/// Delivery attempts run at once: the most that one kill can cut short.
const WORKERS: usize = 8;
/// The whole test, a hard limit (it takes about 40 s on 2 cores).
const TIME_LIMIT: Duration = Duration::from_secs(120);
/// Longest a cycle waits for its kill moment.
const CYCLE_LIMIT: Duration = Duration::from_millis(2500);
/// Each client's pause between messages: the load stays below what
/// the daemon delivers, so the queue does not grow without end.
const PACE: Duration = Duration::from_millis(15);

/// Where in the daemon's work a kill is aimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Moment {
    /// At a random time.
    Random,
    /// Just after a message was committed by the listener: its 250 is
    /// on its way, the worker is about to pick it up.
    Ingest,
    /// Just after the sink accepted a message: the daemon has not read
    /// the reply yet, or is recording it.
    Delivered,
    /// Just after a status=sent line: the metadata is being rewritten
    /// or the files removed.
    Recording,
    /// Just after a status=deferred line: the metadata is being
    /// rewritten with the new try count and next attempt.
    Deferring,
    /// Just after a status=bounced line: the failure notice is being
    /// made and stored.
    Bouncing,
    /// Just after a notice was stored: the original's metadata is being
    /// rewritten.
    NoticeStored,
}

const MOMENTS: [Moment; 7] = [
    Moment::Random,
    Moment::Ingest,
    Moment::Delivered,
    Moment::Recording,
    Moment::Deferring,
    Moment::Bouncing,
    Moment::NoticeStored,
];

fn rcpts(seq: u64) -> Vec<String> {
    let mut v = vec![format!("ok-{seq}@example.net")];
    if seq % 3 == 0 {
        v.push(format!("permfail-{seq}@example.net"));
    }
    if seq % 5 == 0 {
        v.push(format!("ok2-{seq}@example.org"));
    }
    if seq % 4 == 1 {
        // Refused with 450 half the time: deferred, retried, delivered.
        v.push(format!("flaky-{seq}@example.net"));
    }
    v
}

/// Waits for the moment to kill; returns true when it came (false: the
/// cycle's time ran out and the kill is at a random time after all).
fn wait_for_moment(
    moment: Moment,
    tail: &mut LogTail,
    sink: &FaultySink,
    rng: &mut fastrand::Rng,
) -> bool {
    // Let some load build up first.
    std::thread::sleep(Duration::from_millis(rng.u64(100..700)));
    if moment == Moment::Random {
        return true;
    }
    let end = Instant::now() + CYCLE_LIMIT;
    let delivered = sink.count();
    tail.lines();
    while Instant::now() < end {
        let hit = match moment {
            Moment::Delivered => sink.count() > delivered,
            _ => tail.lines().iter().any(|l| match moment {
                Moment::Ingest => l.contains(": from=<sender@example.org>"),
                Moment::Recording => l.contains("status=sent"),
                Moment::Deferring => l.contains("status=deferred"),
                Moment::Bouncing => l.contains("status=bounced"),
                Moment::NoticeStored => l.contains("sender non-delivery notification"),
                _ => false,
            }),
        };
        if hit {
            return true;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    false
}

#[test]
fn acknowledged_mail_survives_a_sigkill_loop() {
    let started = Instant::now();
    let seed: u64 = std::env::var("CRASH_LOOP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..1 << 32));
    eprintln!("crash loop seed {seed} (set CRASH_LOOP_SEED to repeat)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let sink = FaultySink::start(&[
        "--seed",
        &seed.to_string(),
        "--reject-prefix",
        "permfail",
        "--flaky-prefix",
        "flaky",
        "--reply-delay",
        "0.005:0.08",
        "--pipelining",
    ]);
    let setup = Setup::to(&sink.url()).queue(&format!("workers = {WORKERS}"));
    // A first start creates the spool and config; the loop restarts it.
    let mut first = Daemon::start(&setup);
    first.terminate();
    assert!(first.wait_exit(Duration::from_secs(20)).is_some());
    let (config, dir, port, addr) = (
        first.config_path(),
        first.dir.path().to_path_buf(),
        first.port,
        first.addr(),
    );
    let spool = first.spool();
    let log_path = dir.join("stderr.log");

    let load = Load::start(addr, 3, u64::MAX, 4, PACE, Arc::new(rcpts));
    // Unix times of the kills, and what they aimed at.
    let mut kills: Vec<(f64, Moment, bool)> = Vec::new();
    for cycle in 0..CYCLES {
        assert!(
            started.elapsed() < TIME_LIMIT,
            "out of time after {cycle} cycles"
        );
        let mut daemon = restart(&config, &dir, port);
        let mut tail = LogTail::at_end(&log_path);
        let moment = MOMENTS[cycle % MOMENTS.len()];
        let hit = wait_for_moment(moment, &mut tail, &sink, &mut rng);
        // SIGKILL: no handler runs, no write is finished.
        daemon.0.kill().unwrap();
        daemon.0.wait().unwrap();
        kills.push((unix_now(), moment, hit));
    }
    let sent_during_kills = load.tried();
    let acked = load.stop();
    let cycles_time = started.elapsed();

    // A last start, left alone until the queue is empty.
    let mut daemon = restart(&config, &dir, port);
    let queue_dir = spool.join("queue");
    let drained = wait_for(Duration::from_secs(60), || files_in(&queue_dir).is_empty());
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    if !drained {
        let left = files_in(&queue_dir);
        panic!(
            "the queue did not drain: {} files left, e.g. {:?}\n{}",
            left.len(),
            &left[..left.len().min(10)],
            tail_of(&log, 60)
        );
    }
    common::daemon::signal(daemon.0.id(), "TERM");
    let status = common::daemon::wait_child(&mut daemon.0, Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "no clean stop: {status:?}"
    );

    // Nothing quarantined, nothing left anywhere in the spool.
    for sub in ["queue", "corrupt", "tmp", "incoming"] {
        let left = files_in(&spool.join(sub));
        assert!(
            left.is_empty(),
            "{sub}/ is not empty: {} files, e.g. {:?}",
            left.len(),
            &left[..left.len().min(10)]
        );
    }
    assert!(!log.contains("panicked"), "a thread panicked:\n{log}");

    let deliveries = sink.deliveries();
    // Non-notice deliveries by message number, with their times.
    let mut by_seq: HashMap<u64, Vec<(f64, &Value)>> = HashMap::new();
    // Notices by (reported queue id, recipient): the times each distinct
    // notice was made (from its Message-ID, which starts with a queue id:
    // microseconds since the epoch in hex).
    let mut notices: HashMap<(String, String), Vec<f64>> = HashMap::new();
    // Arrival times of each notice, by its Message-ID.
    let mut notice_arrivals: HashMap<String, Vec<f64>> = HashMap::new();
    let mut notice_count = 0;
    for d in &deliveries {
        let t = d["t"].as_f64().unwrap();
        if d["sender"] == "" {
            notice_count += 1;
            let msgid = d["msgid"].as_str().unwrap().to_string();
            let arrivals = notice_arrivals.entry(msgid.clone()).or_default();
            arrivals.push(t);
            if arrivals.len() > 1 {
                continue;
            }
            let made = made_at(&msgid);
            let of = d["notice"]["of"].as_str().unwrap_or("").to_string();
            for r in d["notice"]["recipients"].as_array().unwrap() {
                assert_eq!(r["action"], "failed", "{d}");
                let rcpt = r["rcpt"].as_str().unwrap().to_string();
                notices.entry((of.clone(), rcpt)).or_default().push(made);
            }
        } else {
            let seq: u64 = d["seq"].as_str().and_then(|s| s.parse().ok()).unwrap();
            by_seq.entry(seq).or_default().push((t, d));
        }
    }

    // Every acknowledged message arrived, to each good recipient, and
    // each permanent failure was reported to the sender.
    let mut missing = Vec::new();
    let mut unreported = Vec::new();
    for a in &acked {
        let got = by_seq.get(&a.seq);
        for r in a.rcpts.iter().filter(|r| !r.starts_with("permfail")) {
            let arrived = got.is_some_and(|v| {
                v.iter()
                    .any(|(_, d)| d["rcpts"].as_array().unwrap().iter().any(|x| x == r))
            });
            if !arrived {
                missing.push(format!("{} ({}) to {r}", a.seq, a.id));
            }
        }
        for r in a.rcpts.iter().filter(|r| r.starts_with("permfail")) {
            if !notices.contains_key(&(a.id.clone(), r.clone())) {
                unreported.push(format!("{} ({}) to {r}", a.seq, a.id));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} acknowledged messages lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    assert!(
        unreported.is_empty(),
        "{} permanent failures without a notice: {:?}",
        unreported.len(),
        &unreported[..unreported.len().min(20)]
    );

    // Duplicates: a message (or notice) may arrive again only when a kill
    // came between the two arrivals, soon after the first: the daemon
    // died before it could record the delivery.
    let kill_times: Vec<f64> = kills.iter().map(|k| k.0).collect();
    // Returns the kills that explain the repeats.
    let explained = |times: &[f64]| -> Result<Vec<usize>, String> {
        let mut times = times.to_vec();
        times.sort_by(f64::total_cmp);
        let mut by = Vec::new();
        for w in times.windows(2) {
            // The sink stamps an arrival when it reads the final dot. A
            // daemon killed just after writing the dot, while the bytes
            // were still in the socket, never reads the 250 and rightly
            // sends the message again: such a kill comes a moment before
            // the first stamp. A kill between the two arrivals is the
            // usual explanation; failing that, the last kill in the moment
            // before the first.
            const IN_FLIGHT: f64 = 1.0;
            let between = kill_times.iter().position(|&k| k > w[0] && k < w[1]);
            let just_before = || {
                kill_times
                    .iter()
                    .rposition(|&k| k > w[0] - IN_FLIGHT && k <= w[0])
            };
            match between.or_else(just_before) {
                Some(i) if kill_times[i] - w[0] < 5.0 => by.push(i),
                Some(i) => {
                    let k = kill_times[i];
                    return Err(format!(
                        "delivered at {:.3}, killed only {:.3}s later, again at {:.3}",
                        w[0],
                        k - w[0],
                        w[1]
                    ));
                }
                None => {
                    return Err(format!(
                        "delivered at {:.3} and again at {:.3}, no kill between",
                        w[0], w[1]
                    ))
                }
            }
        }
        Ok(by)
    };
    // Messages delivered again after each kill: at most one attempt per
    // worker can have been in flight.
    let mut repeated_after: HashMap<usize, std::collections::HashSet<u64>> = HashMap::new();
    // Arrival times per (message, recipient): a recipient deferred in one
    // attempt arrives in a later transaction of the same message.
    let mut per_rcpt: HashMap<(u64, String), Vec<f64>> = HashMap::new();
    for (seq, v) in &by_seq {
        for (t, d) in v {
            for r in d["rcpts"].as_array().unwrap() {
                let r = r.as_str().unwrap().to_string();
                per_rcpt.entry((*seq, r)).or_default().push(*t);
            }
        }
    }
    let mut duplicates = 0;
    for ((seq, rcpt), times) in &per_rcpt {
        duplicates += times.len() - 1;
        let explanation = explained(times);
        for k in explanation.iter().flatten() {
            repeated_after.entry(*k).or_default().insert(*seq);
        }
        if let Err(e) = explanation {
            let v = &by_seq[seq];
            let id = acked.iter().find(|a| a.seq == *seq).map(|a| a.id.clone());
            let about: Vec<&str> = log
                .lines()
                .filter(|l| {
                    id.as_deref().is_some_and(|id| l.contains(id))
                        || l.contains(&format!("-{seq}@"))
                })
                .collect();
            panic!(
                "message {seq} ({id:?}) to {rcpt}: {e}\nkills: {kill_times:?}\ndeliveries: {v:?}\nlog:\n{}",
                about.join("\n")
            );
        }
    }
    // A notice made again (the daemon died before it recorded that it
    // had made one), or the same notice delivered again.
    let mut notices_remade = 0;
    for (key, times) in &notices {
        notices_remade += times.len() - 1;
        if let Err(e) = explained(times) {
            panic!("notice for {key:?} made twice: {e}");
        }
    }
    let mut notice_duplicates = 0;
    for (msgid, times) in &notice_arrivals {
        notice_duplicates += times.len() - 1;
        if let Err(e) = explained(times) {
            panic!("notice {msgid}: {e}");
        }
    }
    let most_in_flight = repeated_after.values().map(|s| s.len()).max().unwrap_or(0);
    assert!(
        most_in_flight <= WORKERS,
        "{most_in_flight} messages delivered again after one kill, with {WORKERS} workers: \
         more than the attempts that can have been in flight"
    );
    let acked_seqs: std::collections::HashSet<u64> = acked.iter().map(|a| a.seq).collect();
    let unacked_delivered = by_seq.keys().filter(|s| !acked_seqs.contains(s)).count();

    // What each start found: messages queued, unfinished writes removed.
    let (mut requeued, mut unfinished) = (0, 0);
    for l in log
        .lines()
        .filter(|l| l.contains(" unfinished writes removed"))
    {
        let number_before = |what: &str| -> usize {
            l.split(what)
                .next()
                .and_then(|head| head.rsplit(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        requeued += number_before(" messages queued");
        unfinished += number_before(" unfinished writes removed");
    }
    let mut aimed: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (_, m, hit) in &kills {
        let e = aimed.entry(format!("{m:?}")).or_default();
        e.0 += 1;
        e.1 += usize::from(*hit);
    }
    let aimed: Vec<String> = aimed
        .iter()
        .map(|(m, (n, hit))| format!("{m} {hit}/{n}"))
        .collect();
    eprintln!(
        "crash loop: {CYCLES} SIGKILL cycles survived in {:.1}s (+{:.1}s to drain); \
         {} messages acknowledged of {sent_during_kills} sent, {} delivered \
         ({unacked_delivered} of them never acknowledged: cut off by a kill after the commit), \
         {duplicates} duplicate deliveries to a recipient \
         (at most {most_in_flight} messages repeated after one kill), {notice_count} notices ({notices_remade} made again, \
         {notice_duplicates} delivered again); \
         restarts found {requeued} queued messages and removed {unfinished} unfinished writes; \
         kills aimed (hit/tried): {}",
        cycles_time.as_secs_f64(),
        (started.elapsed() - cycles_time).as_secs_f64(),
        acked.len(),
        by_seq.len(),
        aimed.join(", ")
    );
    assert!(acked.len() >= 200, "too little load: {}", acked.len());
    assert!(
        started.elapsed() < TIME_LIMIT,
        "took {:?}",
        started.elapsed()
    );
}

/// When a notice was made: its Message-ID is `<queue id@host>`, and a
/// queue id starts with 13 hex digits of microseconds since the epoch.
fn made_at(msgid: &str) -> f64 {
    let hex = msgid.trim_start_matches('<').get(..13).unwrap_or("");
    let micros =
        u64::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("notice Message-ID {msgid}"));
    micros as f64 / 1e6
}

fn tail_of(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
