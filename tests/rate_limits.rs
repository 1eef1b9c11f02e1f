//! Rate and concurrency limits per destination, measured at a real peer
//! on loopback (tests/peers/faulty_sink.py, without faults): what arrives,
//! when, over how many connections at once; and what `list` and `show`
//! say about a message that waits for its destination's rate.

mod common;

use std::path::Path;
use std::time::Duration;

use common::daemon::{queued_id, run_mailqueue, Client, Daemon, Setup};
use common::faulty::{read_jsonl, unix_now, FaultySink};
use common::wait_for;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(30);
const MSG: &[u8] = b"Subject: rate\r\n\r\nbody\r\n";

/// Queues `n` messages over one SMTP session; returns their ids.
fn submit(d: &Daemon, n: usize) -> Vec<String> {
    let mut c = Client::connect(d.addr()).unwrap();
    let ids = (0..n)
        .map(|i| queued_id(&c.mail("sender@example.org", &[&format!("r{i}@example.net")], MSG)))
        .collect();
    c.quit();
    ids
}

fn mq(config: &Path, args: &[&str]) -> String {
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    let (status, out, err) = run_mailqueue(&all);
    assert!(status.success(), "mailqueue {args:?}: {err}");
    out
}

fn list_json(config: &Path) -> Vec<Value> {
    mq(config, &["list", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The daemon's `status=sent` log lines.
fn sent_lines(d: &Daemon) -> Vec<String> {
    d.log()
        .lines()
        .filter(|l| l.contains("status=sent"))
        .map(String::from)
        .collect()
}

/// Waits for `n` messages at the sink and as many `sent` lines; checks
/// that each recipient took exactly one try, however long it waited.
#[track_caller]
fn wait_all_sent_at_first_try(d: &Daemon, sink: &FaultySink, n: usize) {
    assert!(
        wait_for(LONG, || sink.count() >= n && sent_lines(d).len() >= n),
        "{} of {n} at the sink; log:\n{}",
        sink.count(),
        d.log()
    );
    assert_eq!(sink.count(), n, "each message once");
    for line in sent_lines(d) {
        assert!(line.contains("tries=1,"), "{line}");
    }
    assert!(!d.log().contains("status=deferred"), "{}", d.log());
}

#[test]
fn a_rate_limit_holds_at_the_sink_and_waiting_costs_no_try() {
    const N: usize = 15;
    let sink = FaultySink::start(&[]);
    let d = Daemon::start(
        &Setup::to(&sink.url())
            .queue("workers = 4")
            .delivery("rate = \"5/1s\""),
    );
    submit(&d, N);
    wait_all_sent_at_first_try(&d, &sink, N);

    let mut arrivals: Vec<f64> = sink
        .deliveries()
        .iter()
        .map(|v| v["t"].as_f64().unwrap())
        .collect();
    arrivals.sort_by(f64::total_cmp);
    // 5/1s: a burst of 5, then one each 200 ms. Within any second no more
    // than the burst and a second's refill (5 + 5), with slack for the
    // time between a token and its message's final dot, which varies on
    // a busy machine. Without the limit all 15 come within well under a
    // second.
    for (i, &start) in arrivals.iter().enumerate() {
        let within = arrivals[i..]
            .iter()
            .take_while(|&&t| t < start + 1.0)
            .count();
        assert!(
            within <= 12,
            "{within} messages within 1 s from {start}: {arrivals:?}"
        );
    }
    // The 10 past the burst take 2 s at least; allow a fifth off.
    let span = arrivals[N - 1] - arrivals[0];
    assert!(span >= 1.6, "{N} messages in {span:.2} s: {arrivals:?}");
}

#[test]
fn a_message_waiting_for_a_long_interval_shows_as_throttled_with_no_try() {
    let sink = FaultySink::start(&[]);
    let d = Daemon::start(&Setup::to(&sink.url()).delivery("rate = \"1/1h\""));
    let config = d.config_path();
    let first = submit(&d, 1).remove(0);
    assert!(wait_for(LONG, || sink.count() == 1), "{}", d.log());
    let second = submit(&d, 1).remove(0);

    // The second waits for the token the first used, an hour away.
    let throttled = |m: &Value| !m["recipients"][0]["throttled"].is_null();
    let mut listed = Vec::new();
    assert!(
        wait_for(LONG, || {
            listed = list_json(&config);
            listed
                .iter()
                .any(|m| m["queue_id"] == second && throttled(m))
        }),
        "{listed:?}\n{}",
        d.log()
    );
    let now = unix_now() as u64;
    assert!(listed.iter().all(|m| m["queue_id"] != first), "{listed:?}");
    let m = listed.iter().find(|m| m["queue_id"] == second).unwrap();
    let r = &m["recipients"][0];
    assert_eq!(r["tries"], 0, "{m}");
    assert_eq!(r["status"], "pending", "{m}");
    assert_eq!(r["delay_reason"], "", "waiting is not an error: {m}");
    let reason = format!("rate 1/1h to 127.0.0.1:{}", sink.port);
    assert_eq!(r["throttled"]["reason"], reason.as_str(), "{m}");
    let until = r["throttled"]["until"].as_u64().unwrap();
    // An hour after the first message's token, spread by at most a minute.
    assert!(
        (now + 3500..=now + 3600 + 61).contains(&until),
        "until {until}, now {now}: {m}"
    );
    // Not back every second: the next attempt is when the token is.
    let next = m["next_attempt"].as_u64().unwrap();
    assert!(next >= now + 3500, "next attempt {next}, now {now}: {m}");

    let table = mq(&config, &["list"]);
    let line = table
        .lines()
        .find(|l| l.contains("r0@example.net"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        line.contains("throttled") && line.contains("tries=0"),
        "{table}"
    );
    assert!(table.contains(&reason), "{table}");

    let shown = mq(&config, &["show", &second]);
    assert!(
        shown.contains("<r0@example.net> throttled tries=0"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("throttled: {reason}, until ")),
        "{shown}"
    );
    assert!(shown.contains(&format!("({until})")), "{shown}");
    assert!(!shown.contains("last error"), "{shown}");
    assert_eq!(sink.count(), 1);
}

#[test]
fn destination_concurrency_limits_the_connections_to_a_relay_target() {
    const N: usize = 6;
    // A slow final-dot reply keeps each transaction open a while.
    let sink = FaultySink::start(&["--reply-delay", "0.3:0.3"]);
    let d = Daemon::start(
        &Setup::to(&sink.url())
            .queue("workers = 4")
            // A connection per message, so sessions at the sink are
            // connections.
            .delivery("destination_concurrency = 1\nconnection_cache_time = \"0s\""),
    );
    submit(&d, N);
    wait_all_sent_at_first_try(&d, &sink, N);

    let changes = read_jsonl(&sink.dir.path().join("connections.jsonl"));
    let opened = changes.iter().filter(|c| c["event"] == "open").count();
    assert!(opened >= N, "{changes:?}");
    let most = changes
        .iter()
        .filter_map(|c| c["open"].as_u64())
        .max()
        .unwrap();
    assert_eq!(most, 1, "sessions open at once at the sink: {changes:?}");
}
