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

use common::daemon::{binary, free_port, run_mailqueue, Client, Daemon, Setup};
use common::peers::{require_python_module, SmtpSink};
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
    // Nothing listens at the target: the message is deferred.
    let d = Daemon::start(&Setup::default().set("metrics", &format!("listen = {metrics:?}")));
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
    assert!(wait_for(LONG, || {
        value(
            &parse(&scrape(&metrics).2),
            "mailqueue_deliveries_total{outcome=\"expired\"}",
        ) == 1.0
    }));
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
