//! Monitoring with the real binary: the Prometheus endpoint scraped over
//! loopback and parsed by a real parser (Python's `prometheus_client`,
//! and `promtool check metrics` when installed), `mailqueue health` and
//! `stats` on a stopped daemon.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::daemon::{binary, free_port, queued_id, run_mailqueue, Client, Daemon, Setup};
use common::peers::{require_python_module, PyServer, SmtpSink};
use common::wait_for;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(15);
const MSG: &[u8] = b"Subject: metrics\r\n\r\nbody\r\n";

fn mq(config: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    let (status, out, err) = run_mailqueue(&all);
    (status.code().unwrap_or(-1), out, err)
}

/// GET /metrics over loopback; returns (status line, content type, body).
fn scrape(addr: &str) -> (String, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.lines().next().unwrap_or("").to_string();
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, ctype, body.to_string())
}

/// Parses the text format with `prometheus_client`'s parser; returns
/// every sample as `name{label="value",...}` (labels sorted) to its value.
fn parse(text: &str) -> HashMap<String, f64> {
    require_python_module("prometheus_client");
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join('%s="%s"' % kv for kv in sorted(s.labels.items()))
        out[s.name + ("{" + labels + "}" if labels else "")] = s.value
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the scrape: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `promtool check metrics` (the Prometheus project's own linter), when
/// installed; the Python parser above runs either way.
fn promtool_check(text: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not installed: only the Python parser checked the scrape");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn value(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {m:#?}"))
}

fn sendmail(config: &Path, to: &str) {
    let mut child = Command::new(binary())
        .args(["--config", config.to_str().unwrap(), "sendmail", "-i", to])
        .env_remove("MAILQUEUE_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(MSG).unwrap();
    assert!(child.wait().unwrap().success(), "sendmail failed");
}

#[test]
fn a_scrape_parses_and_counts_mail_sent_through_the_daemon() {
    require_python_module("prometheus_client");
    let sink = SmtpSink::start(&[]);
    let metrics = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start(
        &Setup::to(&sink.url("smtp")).set("metrics", &format!("listen = {metrics:?}")),
    );

    let (status, ctype, body) = scrape(&metrics);
    assert!(status.contains(" 200"), "{status}");
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    promtool_check(&body);
    let m = parse(&body);
    for state in ["active", "deferred", "held"] {
        assert_eq!(
            value(
                &m,
                &format!("mailqueue_queue_messages{{state=\"{state}\"}}")
            ),
            0.0
        );
        assert_eq!(
            value(&m, &format!("mailqueue_queue_bytes{{state=\"{state}\"}}")),
            0.0
        );
    }
    assert_eq!(value(&m, "mailqueue_queue_oldest_message_age_seconds"), 0.0);
    assert_eq!(value(&m, "mailqueue_received_total{way=\"smtp\"}"), 0.0);

    // Three over SMTP, one refused recipient, one through sendmail.
    for n in 0..3 {
        let mut c = Client::connect(d.addr()).unwrap();
        c.mail(
            "sender@example.org",
            &[&format!("rcpt{n}@example.net")],
            MSG,
        )
        .expect(250, "2.0.0");
        c.quit();
    }
    let mut c = Client::connect(d.addr()).unwrap();
    c.cmd("EHLO client.test").expect(250, "");
    c.cmd("MAIL FROM:<sender@example.org>").expect(250, "");
    let refused = c.cmd("RCPT TO:<not an address>");
    assert!(refused.code >= 500, "{}", refused.text());
    c.quit();
    sendmail(&d.config_path(), "local@example.net");
    assert!(wait_for(LONG, || sink.count() >= 4 && d.queued().is_empty()));

    // A worker counts its outcome just after removing the files: scrape
    // until the counters have caught up.
    let mut m = HashMap::new();
    assert!(wait_for(LONG, || {
        m = parse(&scrape(&metrics).2);
        value(&m, "mailqueue_deliveries_total{outcome=\"sent\"}") >= 4.0
    }));
    assert_eq!(value(&m, "mailqueue_received_total{way=\"smtp\"}"), 3.0);
    assert_eq!(value(&m, "mailqueue_received_total{way=\"local\"}"), 1.0);
    assert_eq!(
        value(&m, "mailqueue_deliveries_total{outcome=\"sent\"}"),
        4.0
    );
    for outcome in ["deferred", "bounced", "expired"] {
        assert_eq!(
            value(
                &m,
                &format!("mailqueue_deliveries_total{{outcome=\"{outcome}\"}}")
            ),
            0.0
        );
    }
    assert_eq!(
        value(&m, "mailqueue_refused_total{reason=\"bad_address\"}"),
        1.0
    );
    assert!(value(&m, "mailqueue_connections_total") >= 4.0);
    assert_eq!(value(&m, "mailqueue_notices_total"), 0.0);
    for state in ["active", "deferred", "held"] {
        assert_eq!(
            value(
                &m,
                &format!("mailqueue_queue_messages{{state=\"{state}\"}}")
            ),
            0.0
        );
    }
    assert_eq!(value(&m, "mailqueue_queue_oldest_message_age_seconds"), 0.0);
    assert!(value(&m, "mailqueue_scheduling_lag_seconds_count") >= 4.0);
    assert_eq!(
        value(&m, "mailqueue_scheduling_lag_seconds_bucket{le=\"+Inf\"}"),
        value(&m, "mailqueue_scheduling_lag_seconds_count")
    );
    assert!(value(&m, "mailqueue_spool_free_bytes") > 0.0);

    // Anything but /metrics is a 404.
    let mut s = TcpStream::connect(&metrics).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(
        raw.starts_with("HTTP/1.0 404") || raw.starts_with("HTTP/1.1 404"),
        "{raw}"
    );
}

#[test]
fn queue_gauges_show_deferred_mail_and_its_age() {
    require_python_module("prometheus_client");
    let metrics = format!("127.0.0.1:{}", free_port());
    // Nothing listens at the target: the message is deferred, and tried
    // every 200 ms: past the default max_tries in 4 s, before the
    // operator's expire on a busy machine.
    let d = Daemon::start(
        &Setup::default()
            .queue("max_tries = 1000")
            .set("metrics", &format!("listen = {metrics:?}")),
    );
    let mut c = Client::connect(d.addr()).unwrap();
    c.mail("sender@example.org", &["rcpt@example.net"], MSG)
        .expect(250, "2.0.0");
    c.quit();
    let mut m = HashMap::new();
    assert!(wait_for(LONG, || {
        m = parse(&scrape(&metrics).2);
        value(&m, "mailqueue_queue_messages{state=\"deferred\"}") == 1.0
    }));
    assert!(value(&m, "mailqueue_queue_bytes{state=\"deferred\"}") > 0.0);
    assert_eq!(value(&m, "mailqueue_queue_messages{state=\"active\"}"), 0.0);
    assert!(value(&m, "mailqueue_deliveries_total{outcome=\"deferred\"}") >= 1.0);
    assert!(wait_for(LONG, || {
        value(
            &parse(&scrape(&metrics).2),
            "mailqueue_queue_oldest_message_age_seconds",
        ) >= 1.0
    }));
    // The operator gives it up: one expired recipient.
    let (code, _, err) = mq(&d.config_path(), &["expire", "ALL"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        wait_for(LONG, || {
            value(
                &parse(&scrape(&metrics).2),
                "mailqueue_deliveries_total{outcome=\"expired\"}",
            ) == 1.0
        }),
        "{}\n{}",
        scrape(&metrics).2,
        d.log()
    );
}

#[test]
fn health_is_ok_critical_without_a_daemon_and_warns_of_a_fresh_quarantine() {
    let mut d = Daemon::start(&Setup::default().queue("min_free_bytes = 1024"));
    let config = d.config_path();
    let (code, out, err) = mq(&config, &["health"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(out.lines().all(|l| l.starts_with("OK ")), "{out}");
    assert!(out.contains("OK daemon: running"), "{out}");

    // A file quarantined now: a warning, unless older than --corrupt-within.
    let corrupt = d.spool().join("corrupt");
    std::fs::create_dir_all(&corrupt).unwrap();
    std::fs::write(corrupt.join("0123.msg"), b"damaged").unwrap();
    let (code, out, _) = mq(&config, &["health"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("WARNING quarantine: 1 file(s)"), "{out}");
    std::thread::sleep(Duration::from_millis(2100));
    let (code, out, _) = mq(&config, &["health", "--corrupt-within", "1s"]);
    assert_eq!(code, 0, "{out}");

    d.terminate();
    assert!(d.wait_exit(LONG).is_some_and(|s| s.success()));
    let (code, out, _) = mq(&config, &["health"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("CRITICAL daemon: not running"), "{out}");
    assert!(out.contains("OK spool:"), "{out}");
}

#[test]
fn stats_without_a_daemon_reads_the_queue_from_the_spool() {
    // Nothing listens at the target: the message stays, deferred.
    let mut d = Daemon::start(&Setup::default());
    let config = d.config_path();
    let mut c = Client::connect(d.addr()).unwrap();
    c.mail("sender@example.org", &["rcpt@example.net"], MSG)
        .expect(250, "2.0.0");
    c.quit();
    assert!(wait_for(LONG, || d.log().contains("status=deferred")));
    d.terminate();
    assert!(d.wait_exit(LONG).is_some_and(|s| s.success()));

    let (code, out, err) = mq(&config, &["stats", "--json"]);
    assert_eq!(code, 0, "{err}");
    let s: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(s["daemon"], "not running", "{s}");
    assert_eq!(s["messages"], 1, "{s}");
    assert_eq!(s["deferred"]["messages"], 1, "{s}");
    assert_eq!(s["active"]["messages"], 0, "{s}");
    assert!(s["oldest_age_s"].as_u64().is_some(), "{s}");
    let (code, out, _) = mq(&config, &["stats"]);
    assert_eq!(code, 0);
    assert!(out.contains("daemon: not running"), "{out}");
    assert!(out.contains("deferred: 1 messages"), "{out}");
}

/// The queue gauges of a scrape: `(messages, bytes)` by state, in the
/// order of `list --json`'s `active`, `deferred`, `hold`.
fn gauges(metrics: &str) -> [(f64, f64); 3] {
    let m = parse(&scrape(metrics).2);
    ["active", "deferred", "held"].map(|state| {
        (
            value(
                &m,
                &format!("mailqueue_queue_messages{{state=\"{state}\"}}"),
            ),
            value(&m, &format!("mailqueue_queue_bytes{{state=\"{state}\"}}")),
        )
    })
}

/// The same counts from a full read of the spool (`list --json`).
fn listed(config: &Path) -> [(f64, f64); 3] {
    let (code, out, err) = mq(config, &["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let mut by_state = [(0.0, 0.0); 3];
    for line in out.lines() {
        let m: Value = serde_json::from_str(line).unwrap();
        let i = match m["queue_name"].as_str().unwrap() {
            "active" => 0,
            "deferred" => 1,
            "hold" => 2,
            other => panic!("queue_name {other}"),
        };
        by_state[i].0 += 1.0;
        by_state[i].1 += m["message_size"].as_f64().unwrap();
    }
    by_state
}

/// Scrapes until the gauges agree with a full read of the spool (a
/// worker may be between two writes); panics naming both otherwise.
fn assert_gauges_match_the_spool(metrics: &str, config: &Path, what: &str) -> [(f64, f64); 3] {
    let mut seen = ([(0.0, 0.0); 3], [(0.0, 0.0); 3]);
    let agreed = wait_for(LONG, || {
        seen = (gauges(metrics), listed(config));
        seen.0 == seen.1
    });
    assert!(agreed, "{what}: scraped {:?}, listed {:?}", seen.0, seen.1);
    seen.0
}

#[test]
fn queue_gauges_follow_deliveries_deferrals_holds_releases_and_deletes() {
    require_python_module("prometheus_client");
    // The peer answers 450 to tempfail-rcpt*: those messages are deferred
    // (retried an hour later); the others are delivered and leave.
    let peer = PyServer::start(&[]);
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut d = Daemon::start(
        &Setup::to(&peer.url("smtp"))
            .queue("initial_retry = \"1h\"\nmax_retry_interval = \"1h\"")
            .set("metrics", &format!("listen = {metrics:?}")),
    );
    let config = d.config_path();
    let mut c = Client::connect(d.addr()).unwrap();
    let mut deferred = Vec::new();
    for n in 0..4 {
        let big = format!("Subject: {n}\r\n\r\n{}\r\n", "x".repeat(100 * n));
        deferred.push(queued_id(&c.mail(
            "sender@example.org",
            &[&format!("tempfail-rcpt{n}@example.net")],
            big.as_bytes(),
        )));
        c.mail("sender@example.org", &[&format!("ok{n}@example.net")], MSG)
            .expect(250, "2.0.0");
    }
    c.quit();
    assert!(wait_for(LONG, || d
        .log()
        .matches("status=deferred")
        .count()
        == 4
        && d.log().matches("status=sent").count() == 4));
    let g = assert_gauges_match_the_spool(&metrics, &config, "after deliveries and deferrals");
    assert_eq!((g[0].0, g[1].0, g[2].0), (0.0, 4.0, 0.0));

    // One by id, then two in bulk.
    assert_eq!(mq(&config, &["hold", &deferred[0]]).0, 0);
    let g = assert_gauges_match_the_spool(&metrics, &config, "after a hold");
    assert_eq!((g[1].0, g[2].0), (3.0, 1.0));
    let (code, _, err) = mq(&config, &["hold", &deferred[1], &deferred[2]]);
    assert_eq!(code, 0, "{err}");
    let g = assert_gauges_match_the_spool(&metrics, &config, "after a bulk hold");
    assert_eq!((g[1].0, g[2].0), (1.0, 3.0));
    assert_eq!(mq(&config, &["release", &deferred[0]]).0, 0);
    assert_gauges_match_the_spool(&metrics, &config, "after a release");
    let (code, _, err) = mq(&config, &["release", "ALL"]);
    assert_eq!(code, 0, "{err}");
    let g = assert_gauges_match_the_spool(&metrics, &config, "after release ALL");
    assert_eq!(g[2].0, 0.0);
    assert_eq!(mq(&config, &["delete", &deferred[3]]).0, 0);
    let g = assert_gauges_match_the_spool(&metrics, &config, "after a delete");
    assert_eq!(g[1].0, 3.0);
    let (code, _, err) = mq(&config, &["hold", "ALL"]);
    assert_eq!(code, 0, "{err}");
    let g = assert_gauges_match_the_spool(&metrics, &config, "after hold ALL");
    assert_eq!(g[2].0, 3.0);

    // The oldest age (time held before a release not counted), against
    // `stats` reading the spool once the daemon has stopped.
    std::thread::sleep(Duration::from_millis(1100));
    let scraped_at = std::time::Instant::now();
    let scraped = value(
        &parse(&scrape(&metrics).2),
        "mailqueue_queue_oldest_message_age_seconds",
    );
    assert!(scraped >= 1.0, "{scraped}");
    d.terminate();
    assert!(d.wait_exit(LONG).is_some_and(|s| s.success()));
    let (code, out, err) = mq(&config, &["stats", "--json"]);
    assert_eq!(code, 0, "{err}");
    let s: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(s["held"]["messages"], 3, "{s}");
    // Whole seconds, read at two moments `between` apart.
    let from_spool = s["oldest_age_s"].as_f64().unwrap();
    let between = scraped_at.elapsed().as_secs_f64();
    assert!(
        from_spool + 1.0 >= scraped && from_spool <= scraped + between + 1.0,
        "scraped {scraped}, spool {from_spool} {between:.1}s later"
    );
}

#[test]
fn connections_past_max_connections_get_421_are_counted_and_logged_once_a_second() {
    require_python_module("prometheus_client");
    let metrics = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start(
        &Setup::default()
            .listen("max_connections = 2")
            .set("metrics", &format!("listen = {metrics:?}")),
    );
    let refused = |m: &HashMap<String, f64>| {
        value(
            m,
            "mailqueue_refused_total{reason=\"too_many_connections\"}",
        )
    };
    assert_eq!(refused(&parse(&scrape(&metrics).2)), 0.0);
    let held: Vec<Client> = (0..2).map(|_| Client::connect(d.addr()).unwrap()).collect();
    let extra = || {
        let mut c = Client::raw(d.addr()).unwrap();
        let r = c.reply();
        assert_eq!(r.code, 421, "{:?}", r.lines);
        assert!(
            r.text().starts_with("4.7.0 Too many connections"),
            "{:?}",
            r.lines
        );
    };
    extra();
    assert!(d.wait_log(
        "NOQUEUE: reject: CONNECT from [127.0.0.1]: 421 4.7.0 Too many connections, \
         try again later; proto=SMTP",
        LONG
    ));
    assert_eq!(refused(&parse(&scrape(&metrics).2)), 1.0);

    // A flood: every one counted, the log kept to a line a second.
    let started = std::time::Instant::now();
    for _ in 0..5 {
        extra();
    }
    let flood = started.elapsed();
    assert_eq!(refused(&parse(&scrape(&metrics).2)), 6.0);
    let lines = d.log().matches("NOQUEUE: reject: CONNECT").count();
    assert!(
        lines <= 1 + flood.as_secs() as usize + 1,
        "{lines} lines for 6 refusals in {flood:?}\n{}",
        d.log()
    );
    // Once connections are taken again, the refusals not logged yet are.
    drop(held);
    std::thread::sleep(Duration::from_millis(1100));
    Client::connect(d.addr()).unwrap().quit();
    if lines == 1 {
        assert!(
            d.wait_log("5 more connections refused (too many connections)", LONG),
            "{}",
            d.log()
        );
    }
}
