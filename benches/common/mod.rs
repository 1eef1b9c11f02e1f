//! Fixtures shared by the benches.
#![allow(dead_code)] // each bench uses part of it

use std::path::PathBuf;

use mailqueue::queue::meta::{MessageMeta, Timestamp};
use mailqueue::{Envelope, MessageId, SmtpReply};

/// Where benches put their spools: `$BENCH_TMPDIR`, else cargo's scratch
/// directory under `target/` (on the project's disk, not a tmpfs, so
/// fsync costs what it costs in production).
pub fn tmp_root() -> PathBuf {
    let root = std::env::var_os("BENCH_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&root).expect("cannot create the bench scratch directory");
    root
}

/// True under `cargo bench`; false when the bench binary runs as a test
/// (`cargo test --benches`), where fixtures should stay small.
pub fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// The metadata of a message with `rcpts` recipients that has been tried
/// once and deferred: what a deferred message's file holds.
pub fn deferred_meta(id: MessageId, rcpts: usize) -> MessageMeta {
    let sender = "newsletter-bounces@lists.example.org".parse().unwrap();
    let recipients = (0..rcpts)
        .map(|i| format!("subscriber.{i}@mail.example.net").parse().unwrap())
        .collect();
    let mut envelope = Envelope::new(Some(sender), recipients);
    envelope.params.envid = Some("QQ314159".into());
    let mut meta = MessageMeta::new(id, &envelope, 4096);
    let now = Timestamp::now();
    meta.last_attempt = Some(now);
    meta.next_attempt = now.plus(std::time::Duration::from_secs(900));
    for r in &mut meta.recipients {
        r.tries = 1;
        r.last_error = Some(SmtpReply::with_code(
            451,
            (4, 3, 0),
            "Temporary lookup failure, please try again later",
        ));
        r.remote_mta = Some("dns; mx1.mail.example.net".into());
    }
    meta
}
