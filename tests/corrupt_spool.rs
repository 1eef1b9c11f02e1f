//! A damaged spool: truncated and garbled metadata and message files are
//! quarantined (at start, or, for a message file cut short under its
//! `.meta`, by the first attempt or command that opens it), never
//! delivered half or bounced, and never stop the queue; the healthy rest
//! is delivered.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

use common::scripted::{addr, sender, temp, Plan, Scripted};
use common::{files_in, test_config, wait_for};
use mailqueue::queue::admin::Admin;
use mailqueue::queue::meta::MessageMeta;
use mailqueue::queue::spool::Spool;
use mailqueue::{Envelope, MessageId, Queue, QueueError};

/// The ways a file is damaged, each one detectable at start.
#[derive(Debug, Clone, Copy)]
enum Damage {
    TruncateMeta,
    GarbageMeta,
    EmptyMeta,
    TruncateMessage,
    AppendToMessage,
    EmptyMessage,
}

impl Damage {
    /// Junk after the message file's footer leaves the message whole, and
    /// its `.meta` holds the state: such a message is delivered.
    fn harmless(self) -> bool {
        matches!(self, Damage::AppendToMessage)
    }
}

const DAMAGES: [Damage; 6] = [
    Damage::TruncateMeta,
    Damage::GarbageMeta,
    Damage::EmptyMeta,
    Damage::TruncateMessage,
    Damage::AppendToMessage,
    Damage::EmptyMessage,
];

#[test]
fn damaged_files_are_quarantined_and_the_rest_is_delivered() {
    let mut rng = fastrand::Rng::with_seed(7);
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.queue.initial_retry = Duration::from_secs(3600);
    config.queue.max_retry_interval = Duration::from_secs(3600);
    let down = Scripted::new(vec![]).with_fallback(Plan::start(temp("down")));
    let queue = Queue::open(config.queue_options(), down.arc()).unwrap();
    let ids: Vec<MessageId> = (0..120)
        .map(|i| {
            let env = Envelope::new(sender("s@example.org"), vec![addr(&format!("r{i}@x.org"))]);
            let body = format!(
                "Subject: {i}\r\n\r\n{}\r\n",
                "x".repeat(rng.usize(10..3000))
            );
            queue.enqueue(&env, body.as_bytes()).unwrap()
        })
        .collect();
    assert!(wait_for(Duration::from_secs(20), || down.attempts() == ids.len()));
    queue.close();

    // Damage one message in three, each kind the same number of times.
    let q = config.spool.join("queue");
    let mut damaged = BTreeSet::new();
    let mut garbage_bytes = 0usize;
    for (n, id) in ids.iter().enumerate().filter(|(n, _)| n % 3 == 0) {
        let meta = q.join(format!("{id}.meta"));
        let msg = q.join(format!("{id}.msg"));
        let damage = DAMAGES[(n / 3) % DAMAGES.len()];
        match damage {
            Damage::TruncateMeta => {
                let b = fs::read(&meta).unwrap();
                fs::write(&meta, &b[..rng.usize(1..b.len())]).unwrap();
            }
            Damage::GarbageMeta => {
                let junk: Vec<u8> = (0..rng.usize(1..2000)).map(|_| rng.u8(..)).collect();
                garbage_bytes += junk.len();
                fs::write(&meta, junk).unwrap();
            }
            Damage::EmptyMeta => fs::write(&meta, b"").unwrap(),
            Damage::TruncateMessage => {
                // Into the message itself: what follows it (the trailer)
                // is superseded by the `.meta` of a message tried before.
                let size = MessageMeta::from_json(&fs::read(&meta).unwrap())
                    .unwrap()
                    .size as usize;
                let b = fs::read(&msg).unwrap();
                fs::write(&msg, &b[..rng.usize(0..size)]).unwrap();
            }
            Damage::AppendToMessage => {
                let mut b = fs::read(&msg).unwrap();
                let junk: Vec<u8> = (0..rng.usize(1..500)).map(|_| rng.u8(..)).collect();
                garbage_bytes += junk.len();
                b.extend(junk);
                fs::write(&msg, b).unwrap();
            }
            Damage::EmptyMessage => fs::write(&msg, b"").unwrap(),
        }
        if !damage.harmless() {
            damaged.insert(id.to_string());
        }
    }

    let up = Scripted::new(vec![]);
    let bounces = Scripted::new(vec![]);
    let queue =
        Queue::open_with_bounce_target(config.queue_options(), up.arc(), bounces.arc()).unwrap();
    queue.flush(None);
    assert!(
        wait_for(Duration::from_secs(20), || files_in(&q).is_empty()),
        "the healthy messages were not all delivered"
    );
    queue.close();

    let quarantined: BTreeSet<String> = files_in(&config.spool.join("corrupt"))
        .iter()
        .map(|f| f.split('.').next().unwrap().to_string())
        .collect();
    assert_eq!(
        quarantined, damaged,
        "exactly the damaged messages go to corrupt/"
    );
    for id in &damaged {
        // Both files of a damaged message are kept for the operator.
        assert!(config
            .spool
            .join("corrupt")
            .join(format!("{id}.msg"))
            .exists());
        assert!(config
            .spool
            .join("corrupt")
            .join(format!("{id}.meta"))
            .exists());
    }
    assert_eq!(up.delivered().len(), ids.len() - damaged.len());
    assert_eq!(
        bounces.attempts(),
        0,
        "a damaged message must never be bounced"
    );
    eprintln!(
        "{} messages, {} damaged ({} bytes of garbage), {} quarantined, {} delivered",
        ids.len(),
        damaged.len(),
        garbage_bytes,
        quarantined.len(),
        up.delivered().len()
    );
}

#[test]
fn stray_and_foreign_files_do_not_stop_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let q = config.spool.join("queue");
    fs::create_dir_all(&q).unwrap();
    fs::write(q.join("README"), b"not a spool file").unwrap();
    fs::write(q.join("..meta"), b"{}").unwrap();
    fs::write(q.join("zzzz.meta"), b"{}").unwrap();
    fs::write(q.join("0123456789ABCDEF0123.msg"), b"never acknowledged").unwrap();
    fs::create_dir_all(config.spool.join("tmp")).unwrap();
    fs::write(config.spool.join("tmp").join("half.meta"), b"{\"ver").unwrap();
    let target = Scripted::new(vec![]);
    let queue = Queue::open(config.queue_options(), target.arc()).unwrap();
    queue
        .enqueue(
            &Envelope::new(sender("s@example.org"), vec![addr("r@x.org")]),
            b"x\r\n",
        )
        .unwrap();
    assert!(wait_for(Duration::from_secs(10), || files_in(&q).is_empty()));
    assert_eq!(target.delivered(), vec!["r@x.org"]);
    assert!(files_in(&config.spool.join("tmp")).is_empty());
    queue.close();
}

/// A message file never tried (state only in its trailer) whose footer
/// is damaged is quarantined; only a footerless file written since the
/// last start is an unfinished write, and removed.
#[test]
fn a_damaged_footer_is_quarantined_and_only_an_unfinished_write_removed() {
    use mailqueue::queue::spool::Spool;
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let spool = Spool::open(dir.path()).unwrap();
    let store = |n: usize| {
        let mut w = spool.create_message().unwrap();
        w.copy_from(&mut format!("Subject: {n}\r\n\r\nbody\r\n").as_bytes())
            .unwrap();
        let env = Envelope::new(sender("s@example.org"), vec![addr("r@x.org")]);
        spool.store(w, &env, false).unwrap().id
    };
    let (garbled, cut_old) = (store(1), store(2));
    // A queue ran (and stopped) after they were written.
    drop(spool.lock_exclusive().unwrap());
    std::thread::sleep(Duration::from_millis(50));
    let path = |id: MessageId| dir.path().join("queue").join(format!("{id}.msg"));

    // The footer's digits hit: the file was complete.
    let mut bytes = fs::read(path(garbled)).unwrap();
    let n = bytes.len();
    bytes[n - 5] = b'x';
    fs::write(path(garbled), &bytes).unwrap();
    // The end cut off a file that was there, complete, at the last start.
    let bytes = fs::read(path(cut_old)).unwrap();
    let file = fs::OpenOptions::new()
        .write(true)
        .open(path(cut_old))
        .unwrap();
    file.set_len(bytes.len() as u64 - 30).unwrap();
    file.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    drop(file);
    // Written since the last start and never finished: no footer. Writes
    // happen in `free/` now; a version that wrote in `queue/` left this.
    let unfinished = MessageId::generate();
    fs::write(path(unfinished), b"Subject: half\r\n\r\nbo").unwrap();

    let target = Scripted::new(vec![]);
    let queue = Queue::open(config.queue_options(), target.arc()).unwrap();
    let corrupt: BTreeSet<String> = files_in(&dir.path().join("corrupt")).into_iter().collect();
    let want: BTreeSet<String> = [garbled, cut_old]
        .iter()
        .map(|id| format!("{id}.msg"))
        .collect();
    assert_eq!(corrupt, want, "damage must be quarantined, not removed");
    assert!(!path(unfinished).exists(), "the unfinished write stayed");
    assert!(!dir
        .path()
        .join("corrupt")
        .join(format!("{unfinished}.msg"))
        .exists());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(target.attempts(), 0);
    queue.close();
}

#[test]
fn a_held_message_cut_short_is_quarantined_by_the_command_that_opens_it() {
    // The start-up load reads a deferred message's `.meta` alone; a held
    // message is never attempted, so the operator's command is what
    // finds the damage, and must not leave the message stuck.
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.queue.initial_retry = Duration::from_secs(3600);
    let down = Scripted::new(vec![]).with_fallback(Plan::start(temp("down")));
    let queue = Queue::open(config.queue_options(), down.arc()).unwrap();
    let body = format!("Subject: cut\r\n\r\n{}\r\n", "x".repeat(2000));
    let ids: Vec<MessageId> = (0..2)
        .map(|i| {
            let env = Envelope::new(sender("s@example.org"), vec![addr(&format!("r{i}@x.org"))]);
            queue.enqueue(&env, body.as_bytes()).unwrap()
        })
        .collect();
    assert!(wait_for(Duration::from_secs(20), || down.attempts() == 2));
    queue.close();

    let spool = Spool::open(&config.spool).unwrap();
    let options = config.queue_options();
    let admin = Admin::direct(&spool, &options);
    admin.hold(ids[0]).unwrap();
    let q = config.spool.join("queue");
    for id in &ids {
        let msg = q.join(format!("{id}.msg"));
        let bytes = fs::read(&msg).unwrap();
        fs::write(&msg, &bytes[..bytes.len() / 3]).unwrap();
    }

    match admin.release(ids[0]) {
        Err(QueueError::Corrupt { reason, .. }) => {
            assert!(reason.contains("too short"), "{reason}")
        }
        other => panic!("release of a damaged message: {other:?}"),
    }
    let corrupt = files_in(&config.spool.join("corrupt"));
    for ext in ["msg", "meta"] {
        let name = format!("{}.{ext}", ids[0]);
        assert!(
            corrupt.contains(&name),
            "{name} not in corrupt/: {corrupt:?}"
        );
        assert!(!q.join(&name).exists(), "{name} still queued");
    }
    // Reading a damaged message says so rather than showing part of it.
    assert!(
        matches!(admin.message(ids[1]), Err(QueueError::Corrupt { .. })),
        "a message cut short read as whole"
    );
}
