//! Bulk operator commands on a large queue, through the CLI binary as an
//! operator runs them: `hold ALL`, `release ALL` and `delete ALL` on a
//! spool of 10^4 deferred messages, with no daemon (the commands work on
//! the spool directly) and with a daemon running (one control request
//! each); and, for comparison, the same on a few hundred messages one
//! command per id, as a script looping over `list` output did before.
//!
//! Every change is durable when a command returns (metadata files
//! synced, then the queue directory), so these are disk-bound figures:
//! see benches/README.md. `cargo bench --bench bulk`; `BULK_MESSAGES`
//! changes the count (default 10^4; 200 under `cargo test --benches`).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mailqueue::queue::meta::Timestamp;
use mailqueue::queue::spool::Spool;

const BODY: &[u8] = b"From: app@example.org\r\nSubject: report\r\n\r\nHello.\r\n";

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_mailqueue")
}

/// Runs `mailqueue --config CONFIG args`; returns its stdout and the time taken.
fn timed(config: &Path, args: &[&str]) -> (String, Duration) {
    let started = Instant::now();
    let out = Command::new(binary())
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("MAILQUEUE_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("cannot run mailqueue");
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "mailqueue {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (String::from_utf8_lossy(&out.stdout).into_owned(), took)
}

fn fill(spool: &Spool, n: usize) -> Vec<String> {
    let later = Timestamp::now().plus(Duration::from_secs(3600));
    common::fill_spool(spool, n, BODY, later)
        .into_iter()
        .map(|id| id.to_string())
        .collect()
}

/// `hold ALL`, `release ALL`, `delete ALL` on `n` messages; prints a row.
fn all_three(label: &str, config: &Path, n: usize) {
    let mut row = format!("| {label} | {n} |");
    for (cmd, verb) in [
        ("hold", "Held"),
        ("release", "Released"),
        ("delete", "Deleted"),
    ] {
        let (out, took) = timed(config, &[cmd, "ALL"]);
        // A release makes them due: a daemon may deliver (here: fail to
        // reach the target and defer) some before the delete.
        if cmd != "delete" {
            assert_eq!(out.trim(), format!("{verb}: {n} messages"));
        }
        row.push_str(&format!(" {:.2} s |", took.as_secs_f64()));
        eprintln!("bulk: {label}: {cmd} ALL on {n}: {took:?} ({})", out.trim());
    }
    println!("{row}");
}

/// One command per id, for `k` ids: what it cost before ALL existed.
fn one_by_one(label: &str, config: &Path, ids: &[String]) {
    let mut row = format!("| {label}, one command per id | {} |", ids.len());
    for cmd in ["hold", "release", "delete"] {
        let started = Instant::now();
        for id in ids {
            timed(config, &[cmd, id]);
        }
        let took = started.elapsed();
        row.push_str(&format!(" {:.2} s |", took.as_secs_f64()));
        eprintln!("bulk: {label}: {} x {cmd} ID: {took:?}", ids.len());
    }
    println!("{row}");
}

fn main() {
    let n: usize = std::env::var("BULK_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if common::bench_mode() { 10_000 } else { 200 });
    let few = if common::bench_mode() { 500 } else { 20 };
    let dir = tempfile::tempdir_in(common::tmp_root()).unwrap();
    let spool_dir = dir.path().join("spool");
    let spool = Spool::open(&spool_dir).unwrap();
    let config = dir.path().join("mailqueue.toml");
    // Nothing listens at the target: what the daemon tries is deferred.
    std::fs::write(
        &config,
        format!(
            "hostname = \"mq.bench.example\"\nspool = \"{}\"\n[listen]\nsmtp = []\n\
             [delivery]\ntarget = \"smtp://127.0.0.1:9\"\ntls = \"none\"\n",
            spool_dir.display()
        ),
    )
    .unwrap();
    if std::env::var_os("BULK_FILL_ONLY").is_some() {
        // A fixture to look at by hand: filled, left in place.
        fill(&spool, n);
        println!("{}", config.display());
        std::mem::forget(dir);
        return;
    }
    println!("| | messages | hold | release | delete |\n|---|---|---|---|---|");

    fill(&spool, n);
    all_three("no daemon, ALL", &config, n);
    let ids = fill(&spool, few);
    one_by_one("no daemon", &config, &ids);

    fill(&spool, n);
    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    let mut daemon = Command::new(binary())
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env_remove("MAILQUEUE_CONFIG")
        .env("RUST_LOG", "warn")
        .stderr(log)
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !spool_dir.join("control.sock").exists() {
        assert!(started.elapsed() < Duration::from_secs(60), "no daemon");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The daemon read the spool back before it opened its socket.
    all_three("daemon, ALL", &config, n);
    let ids = fill(&spool, few);
    // Picked up by a flush: the daemon only reads the spool at start.
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = std::fs::remove_file(spool_dir.join("control.sock"));
    let log = std::fs::File::create(dir.path().join("daemon2.log")).unwrap();
    let mut daemon = Command::new(binary())
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env_remove("MAILQUEUE_CONFIG")
        .env("RUST_LOG", "warn")
        .stderr(log)
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !spool_dir.join("control.sock").exists() {
        assert!(started.elapsed() < Duration::from_secs(60), "no daemon");
        std::thread::sleep(Duration::from_millis(50));
    }
    one_by_one("daemon", &config, &ids);
    let _ = daemon.kill();
    let _ = daemon.wait();
}
