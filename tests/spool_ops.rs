//! What the operator's commands do to the spool itself, with no daemon
//! running: removals made durable, and files the daemon can read.

mod common;

use std::path::Path;
use std::process::Command;

use common::daemon::binary;
use common::scripted::{addr, sender};
use mailqueue::queue::spool::Spool;
use mailqueue::Envelope;

/// Queues one message straight into the spool at `dir`; returns its id.
fn queue_one(dir: &Path) -> String {
    let spool = Spool::open(dir).unwrap();
    let mut w = spool.create_message().unwrap();
    w.copy_from(&mut &b"Subject: x\r\n\r\nbody\r\n"[..])
        .unwrap();
    let env = Envelope::new(sender("a@example.org"), vec![addr("b@example.net")]);
    spool.store(w, &env, false).unwrap().id.to_string()
}

/// Runs `mailqueue --spool DIR args` under strace; returns the trace of
/// unlinks and syncs, with file descriptors shown as paths.
fn traced(dir: &Path, args: &[&str]) -> Vec<String> {
    let log = dir.join("strace.log");
    let status = Command::new("strace")
        .args([
            "-f",
            "-y",
            "-qq",
            "-e",
            "trace=fsync,fdatasync,unlink,unlinkat",
            "-o",
        ])
        .arg(&log)
        .arg(binary())
        .arg("--spool")
        .arg(dir)
        .args(args)
        .env_remove("MAILQUEUE_CONFIG")
        .status()
        .expect("strace is needed (apt-get install strace)");
    assert!(status.success(), "mailqueue {args:?} failed");
    std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn delete_and_expire_fsync_the_queue_directory_after_the_unlink() {
    for command in ["delete", "expire"] {
        let dir = tempfile::tempdir().unwrap();
        let id = queue_one(dir.path());
        let trace = traced(dir.path(), &[command, &id]);
        let unlinked = trace
            .iter()
            .position(|l| l.contains("unlink") && l.contains(&format!("{id}.msg")))
            .unwrap_or_else(|| panic!("{command}: no unlink of {id}.msg in {trace:#?}"));
        let queue_dir = format!("{}>", dir.path().join("queue").display());
        assert!(
            trace[unlinked..]
                .iter()
                .any(|l| l.contains("fsync(") && l.contains(&queue_dir)),
            "{command}: the removal is never made durable: {trace:#?}"
        );
        assert!(!dir.path().join("queue").join(format!("{id}.msg")).exists());
    }
}
