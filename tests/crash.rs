//! Durability: a process that is killed with SIGKILL while enqueueing loses
//! none of the messages it had been told were queued.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::scripted::{addr, sender, temp, Plan, Scripted};
use common::test_config;
use mailqueue::{Envelope, MessageId, Queue};

const CHILD_ENV: &str = "MAILQUEUE_TEST_CRASH_CHILD";

/// Complete (Date and Message-ID given), so the queue stores it as it is.
fn body(n: u64) -> Vec<u8> {
    format!(
        "Subject: crash {n}\r\nDate: Tue, 1 Dec 2026 12:00:00 +0000\r\n\
         Message-ID: <crash-{n}@example.org>\r\n\r\n{}\r\n",
        "x".repeat((n % 7000) as usize)
    )
    .into_bytes()
}

/// The child: enqueue forever, reporting each id once `enqueue` returned.
fn child(spool: &str) -> ! {
    let mut config = test_config(std::path::Path::new(spool));
    config.queue.initial_retry = Duration::from_secs(3600);
    config.queue.max_retry_interval = Duration::from_secs(3600);
    let target = Scripted::new(vec![]).with_fallback(Plan::start(temp("not now")));
    let queue = Queue::open(config.queue_options(), target.arc()).unwrap();
    let env = Envelope::new(sender("a@example.org"), vec![addr("b@example.org")]);
    for n in 0u64.. {
        let id = queue.enqueue(&env, &body(n)).unwrap();
        println!("queued {id} {n}");
    }
    unreachable!()
}

#[test]
fn every_acknowledged_message_survives_sigkill() {
    if let Ok(spool) = std::env::var(CHILD_ENV) {
        child(&spool);
    }
    let exe = std::env::current_exe().unwrap();
    let mut total = 0;
    for round in 0..4u64 {
        let dir = tempfile::tempdir().unwrap();
        let mut proc = Command::new(&exe)
            .args([
                "--exact",
                "every_acknowledged_message_survives_sigkill",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = BufReader::new(proc.stdout.take().unwrap());
        let kill_after = Duration::from_millis(100 + fastrand::u64(0..400) + round * 100);
        let started = Instant::now();
        let mut acked: Vec<(MessageId, u64)> = Vec::new();
        let mut killed = false;
        for line in lines.lines() {
            let Ok(line) = line else { break };
            // The test harness's own "test ... " may precede the first
            // line without a newline of its own.
            if let Some(rest) = line.split_once("queued ").map(|(_, rest)| rest) {
                let (id, n) = rest.split_once(' ').unwrap();
                acked.push((id.parse().unwrap(), n.parse().unwrap()));
            }
            if started.elapsed() >= kill_after && !acked.is_empty() && !killed {
                // SIGKILL: no destructor, no flush, no chance to finish a
                // write. Lines already in the pipe were printed before the
                // kill: keep reading them, they count as acknowledged.
                proc.kill().unwrap();
                killed = true;
            }
        }
        proc.wait().unwrap();
        assert!(!acked.is_empty(), "the child queued nothing");

        let q = dir.path().join("queue");
        for (id, n) in &acked {
            assert!(
                q.join(format!("{id}.msg")).exists(),
                "{id}: message file lost"
            );
            let msg = common::stored_message(dir.path(), id.as_str());
            assert_eq!(msg, body(*n), "{id}: message content damaged");
            let meta = common::stored_metadata(dir.path(), id.as_str());
            let meta = mailqueue::queue::meta::MessageMeta::from_json(meta.as_bytes()).unwrap();
            assert_eq!(meta.id, *id);
            assert_eq!(meta.size, msg.len() as u64);
            assert!(meta.checksum.is_some(), "{id}: no checksum");
        }

        // And the queue opens on what is left and delivers all of it.
        let config = test_config(dir.path());
        let target = Scripted::new(vec![]);
        let queue = Queue::open(config.queue_options(), target.arc()).unwrap();
        queue.flush(None);
        assert!(common::wait_for(Duration::from_secs(30), || {
            common::files_in(&q).is_empty()
        }));
        // At most one more than acknowledged: one may have been committed
        // just before the kill, without its id being printed.
        let delivered = target.delivered().len();
        assert!(
            delivered >= acked.len() && delivered <= acked.len() + 1,
            "{delivered} vs {}",
            acked.len()
        );
        assert!(common::files_in(&dir.path().join("corrupt")).is_empty());
        queue.close();
        total += acked.len();
    }
    eprintln!("{total} acknowledged messages survived 4 kills");
}
