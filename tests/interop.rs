//! Interop with Postfix's test tools: smtp-source sends 1000 messages
//! through the daemon to smtp-sink, and each arrives exactly once.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{wait_child, Daemon, Setup};
use common::peers::{require_tool, Reaper, SmtpSink};
use common::wait_for;

const MESSAGES: usize = 1000;

#[test]
fn smtp_source_sends_1000_messages_through_the_daemon_to_smtp_sink_exactly_once() {
    let source = require_tool("smtp-source", "Debian package postfix");
    let sink = SmtpSink::start(&[]);
    let d = Daemon::start(
        &Setup::to(&sink.url("smtp"))
            .queue("workers = 8")
            .listen("max_connections = 32"),
    );
    let started = Instant::now();
    // -N numbers the recipients (1b@..., 2b@..., ...), so the sink can
    // tell each message from the others.
    let mut child = Reaper(
        Command::new(source)
            .args(["-m", &MESSAGES.to_string(), "-s", "10", "-N"])
            .args(["-f", "a@example.org", "-t", "b@example.org"])
            .arg(format!("127.0.0.1:{}", d.port))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start smtp-source"),
    );
    let status = wait_child(&mut child.0, Duration::from_secs(300)).expect("smtp-source hung");
    assert!(status.success(), "smtp-source failed: {status:?}");
    let sent = started.elapsed();

    assert!(
        wait_for(Duration::from_secs(300), || sink.count() >= MESSAGES),
        "{} of {MESSAGES} arrived",
        sink.count()
    );
    // Give duplicates, if any, a moment to show up.
    assert!(wait_for(Duration::from_secs(30), || d.queued().is_empty()));
    std::thread::sleep(Duration::from_millis(500));

    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in sink.messages() {
        let rcpt = m
            .lines()
            .find_map(|l| l.strip_prefix("X-Rcpt-Args: "))
            .unwrap_or_else(|| panic!("no recipient in {m}"))
            .to_string();
        *seen.entry(rcpt).or_default() += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "delivered more than once: {dups:?}");
    assert_eq!(seen.len(), MESSAGES);
    for i in 1..=MESSAGES {
        assert!(
            seen.contains_key(&format!("<{i}b@example.org>")),
            "{i} missing"
        );
    }
    eprintln!(
        "{MESSAGES} messages: accepted in {sent:?}, delivered in {:?}",
        started.elapsed()
    );
}
