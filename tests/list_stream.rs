//! `list` is streamed: each message is printed as it is read, through the
//! daemon's control socket and straight from the spool alike, so neither
//! process ever holds the whole queue.
//!
//! The proof is not a time: the test reads the command's first line, then
//! removes every message from the spool. The pipe, the socket and the
//! buffers between hold a few hundred kilobytes; a list still being read
//! has read only the messages that fit in them, and skips the rest as
//! gone (delivered meanwhile: not an error). A list built whole before it
//! was printed has them all.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::daemon::{binary, wait_child, Daemon, Setup};
use common::scripted::{addr, sender};
use mailqueue::queue::meta::MessageMeta;
use mailqueue::queue::spool::{message_file_bytes, Spool};
use mailqueue::Envelope;

/// Messages in the spool: their lines are ~2 KB, 4 MB in all, ten times
/// what fits in the buffers between the lister and the test.
const N: usize = 2000;
/// Recipients per message, to make the lines long.
const RCPTS: usize = 20;

/// Writes `n` messages straight into the spool at `dir`, as the queue
/// stores them (without fsync: a fixture).
fn fill(dir: &Path, n: usize) {
    let spool = Spool::open(dir).unwrap();
    let body = b"Subject: list\r\n\r\nbody\r\n";
    let mut ids = std::collections::HashSet::new();
    while ids.len() < n {
        let id = mailqueue::MessageId::generate();
        if !ids.insert(id) {
            continue;
        }
        let rcpts = (0..RCPTS)
            .map(|i| addr(&format!("subscriber.{i}@mail.example.net")))
            .collect();
        let env = Envelope::new(sender("newsletter@lists.example.org"), rcpts);
        let meta = MessageMeta::new(id, &env, body.len() as u64);
        std::fs::write(spool.message_path(&id), message_file_bytes(body, &meta)).unwrap();
    }
}

/// Removes every message file (`.msg` and `.meta`) from `<spool>/queue`.
fn empty_queue(spool: &Path) {
    for entry in std::fs::read_dir(spool.join("queue")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "msg" || e == "meta") {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Runs `mailqueue ARGS`; once its first line is in, empties the queue at
/// `spool`. Returns its lines and standard error.
fn list_then_empty(args: &[&str], spool: &Path) -> (Vec<String>, String) {
    let mut child = Command::new(binary())
        .args(args)
        .env_remove("MAILQUEUE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(!first.is_empty(), "no output");
    empty_queue(spool);
    let mut lines = vec![first.trim_end().to_string()];
    lines.extend(out.lines().map(Result::unwrap));
    let status = wait_child(&mut child, std::time::Duration::from_secs(60)).unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{args:?}: {status}: {err}");
    eprintln!(
        "{args:?}: {} lines after removing {N} messages",
        lines.len()
    );
    (lines, err)
}

#[test]
fn list_json_through_the_daemon_is_printed_while_the_daemon_reads_the_spool() {
    let d = Daemon::start(&Setup::default());
    fill(&d.spool(), N);
    let config = d.config_path();
    let (lines, err) = list_then_empty(
        &["--config", config.to_str().unwrap(), "list", "--json"],
        &d.spool(),
    );
    // Every line a whole message; the ones removed meanwhile skipped, no
    // error for them.
    for l in &lines {
        let m: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(m["recipients"].as_array().unwrap().len(), RCPTS, "{l}");
    }
    assert!(err.is_empty(), "{err}");
    assert!(
        lines.len() < N / 2,
        "{} of {N} messages listed after they were removed: the list was built whole",
        lines.len()
    );
}

#[test]
fn list_without_a_daemon_prints_its_table_while_it_reads_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), N);
    let (lines, err) = list_then_empty(
        &["--spool", dir.path().to_str().unwrap(), "list"],
        dir.path(),
    );
    assert!(err.is_empty(), "{err}");
    assert!(lines[0].starts_with("-Queue ID-"), "{}", lines[0]);
    // One line per message, then one per recipient, then a blank line.
    let entries = lines.iter().filter(|l| l.contains("newsletter@")).count();
    assert!(entries > 0);
    assert!(
        entries < N / 2,
        "{entries} of {N} messages listed after they were removed: the list was built whole"
    );
    // The totals count what was listed.
    let last = lines.last().unwrap();
    assert!(
        last.ends_with(&format!(" in {entries} Requests.")),
        "{last}"
    );
}

#[test]
fn a_list_left_unread_in_a_pager_does_not_keep_a_daemon_from_starting() {
    let mut d = Daemon::start(&Setup::default());
    fill(&d.spool(), N);
    d.terminate();
    assert!(d.wait_exit(std::time::Duration::from_secs(15)).is_some());
    // No daemon: the command reads the spool itself, and stops at a full
    // pipe, as under a pager nobody pages.
    let config = d.config_path();
    let mut list = Command::new(binary())
        .args(["--config", config.to_str().unwrap(), "list"])
        .env_remove("MAILQUEUE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(list.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.starts_with("-Queue ID-"), "{first}");
    // A starting daemon waits 10 s for commands holding the spool lock,
    // then gives up: a list must not hold it while its reader dawdles.
    let mut daemon = common::daemon::spawn_serve(&config, d.dir.path(), "info");
    let socket = d.spool().join("control.sock");
    let up = common::wait_for(std::time::Duration::from_secs(30), || {
        socket.exists() || wait_child(&mut daemon, std::time::Duration::ZERO).is_some()
    }) && socket.exists();
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = list.kill();
    let _ = list.wait();
    assert!(
        up,
        "the daemon did not start while a list was open:\n{}",
        d.log()
    );
}
