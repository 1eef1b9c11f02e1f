//! The start-up load in the background: the queue (and the daemon) take,
//! store and deliver new mail while the spool of the run before is still
//! being read, and every message, old or new, is delivered exactly once.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use common::daemon::{spawn_serve, Client, Setup};
use common::peers::{Reaper, SmtpSink};
use common::scripted::{addr, sender, Plan, Scripted};
use common::{test_config, wait_for};
use mailqueue::queue::meta::MessageMeta;
use mailqueue::queue::spool::{message_file_bytes, Spool};
use mailqueue::{Envelope, MessageId, Queue};

const LONG: Duration = Duration::from_secs(120);

/// Fills `spool` with `n` messages due now, the `i`-th to `old-i@` with
/// the subject `old i`, as a queue leaves them; returns their ids.
fn fill(spool: &Path, n: usize) -> Vec<MessageId> {
    let spool = Spool::open(spool).unwrap();
    (0..n)
        .map(|i| {
            let id = MessageId::generate();
            let env = Envelope::new(
                sender("a@example.org"),
                vec![addr(&format!("old-{i}@example.net"))],
            );
            let body = format!(
                "Subject: old {i}\r\nMessage-ID: <old-{i}@example.org>\r\n\
                 Date: Tue, 1 Dec 2026 12:00:00 +0000\r\n\r\nold {i}\r\n"
            );
            let meta = MessageMeta::new(id, &env, body.len() as u64);
            fs::write(
                spool.message_path(&id),
                message_file_bytes(body.as_bytes(), &meta),
            )
            .unwrap();
            id
        })
        .collect()
}

/// Keeps every thread of rayon's global pool busy until dropped: the
/// load reads its chunks on that pool, so it stays stuck after listing
/// the spool for as long as this lives.
struct RayonGate {
    release: Option<crossbeam_channel::Sender<()>>,
}

impl RayonGate {
    fn close() -> RayonGate {
        let (release, gate) = crossbeam_channel::bounded::<()>(0);
        let (started, running) = crossbeam_channel::unbounded::<()>();
        let threads = rayon::current_num_threads();
        for _ in 0..threads {
            let (gate, started) = (gate.clone(), started.clone());
            rayon::spawn(move || {
                started.send(()).unwrap();
                // Returns when the sender is dropped.
                let _ = gate.recv();
            });
        }
        for _ in 0..threads {
            running.recv_timeout(LONG).expect("rayon's pool never ran");
        }
        RayonGate {
            release: Some(release),
        }
    }
}

impl Drop for RayonGate {
    fn drop(&mut self) {
        self.release.take();
    }
}

/// How many times each recipient was delivered to.
fn tally(delivered: Vec<String>) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for r in delivered {
        *t.entry(r).or_insert(0) += 1;
    }
    t
}

#[test]
fn a_queue_loading_in_the_background_takes_and_delivers_new_mail_and_all_once() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let (old, new) = (3000, 40);
    fill(&spool, old);
    let target = Scripted::new(vec![]).with_fallback(Plan::ok());
    let mut options = test_config(&spool).queue_options();
    options.background_load = true;

    let gate = RayonGate::close();
    let queue = Queue::open(options, target.arc()).unwrap();
    // Dropped before the queue, also on a failed assertion: closing the
    // queue waits for the load.
    let gate = gate;
    assert!(queue.loading());
    let env = |i: usize| {
        Envelope::new(
            sender("a@example.org"),
            vec![addr(&format!("new-{i}@example.net"))],
        )
    };
    for i in 0..new {
        queue
            .enqueue(
                &env(i),
                format!("Subject: new {i}\r\n\r\nnew\r\n").as_bytes(),
            )
            .unwrap();
    }
    // Delivered while the load is still stuck before its first chunk.
    assert!(
        wait_for(LONG, || target.delivered().len() >= new),
        "{} delivered",
        target.delivered().len()
    );
    let stats = queue.stats();
    assert!(stats.loading && queue.loading());
    // Listed: the old messages, and any new one written before the listing.
    assert_eq!(stats.loaded, 0);
    assert!(
        (old..=old + new).contains(&(stats.to_load as usize)),
        "{}",
        stats.to_load
    );
    assert_eq!(target.delivered().len(), new);

    drop(gate);
    queue.wait_loaded();
    assert!(!queue.loading());
    assert!(
        wait_for(LONG, || queue.usage() == (0, 0)),
        "{:?} still queued",
        queue.usage()
    );
    let counts = tally(target.delivered());
    assert_eq!(counts.len(), old + new);
    assert!(
        counts.values().all(|&n| n == 1),
        "delivered twice: {:?}",
        counts.iter().filter(|(_, &n)| n > 1).collect::<Vec<_>>()
    );
    queue.close();
    assert!(common::files_in(&spool.join("queue")).is_empty());
}

/// The `Subject:` of each message smtp-sink dumped, with how many times.
fn subjects(sink: &SmtpSink) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for m in sink.messages() {
        let subject = m
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or("")
            .to_string();
        *t.entry(subject).or_insert(0) += 1;
    }
    t
}

#[test]
fn the_daemon_greets_at_once_and_delivers_old_and_new_mail_exactly_once() {
    let sink = SmtpSink::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let (old, new) = (3000, 60);
    fill(&spool, old);
    let port = common::daemon::free_port();
    let config = dir.path().join("mailqueue.toml");
    let setup = Setup::to(&sink.url("smtp")).queue("workers = 8");
    fs::write(&config, setup.toml(&spool, port)).unwrap();
    let _daemon = Reaper(spawn_serve(&config, dir.path(), "info"));
    let log = || fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        wait_for(LONG, || log().contains("listening for SMTP")),
        "{}",
        log()
    );

    // Sent at once, most likely while the spool is still being read.
    let mut client = Client::connect(addr).unwrap();
    for i in 0..new {
        let message = format!("Subject: new {i}\r\n\r\nnew\r\n");
        client
            .mail(
                "a@example.org",
                &[&format!("new-{i}@example.net")],
                message.as_bytes(),
            )
            .expect(250, "2.0.0");
    }
    client.quit();

    let all = old + new;
    assert!(
        wait_for(LONG, || sink.count() >= all
            && log().contains(" messages queued")),
        "{} of {all} at the sink\n{}",
        sink.count(),
        log()
    );
    // Each removal follows the sink's reply; a second delivery would come
    // just as late. Wait for the spool to empty, then count.
    assert!(
        wait_for(LONG, || common::files_in(&spool.join("queue")).is_empty()),
        "{:?} left",
        common::files_in(&spool.join("queue")).len()
    );
    // Whether the new mail came in during the load (likely, not certain).
    let text = log();
    let (first_new, loaded) = (
        text.find("client=[127.0.0.1]"),
        text.find(" messages queued"),
    );
    eprintln!(
        "new mail queued during the load: {}",
        matches!((first_new, loaded), (Some(a), Some(b)) if a < b)
    );
    let got = subjects(&sink);
    assert_eq!(got.len(), all, "missing subjects");
    let twice: Vec<_> = got.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
    assert!(
        log().contains(&format!("{old} messages queued, 0 quarantined")),
        "{}",
        log()
    );
}
