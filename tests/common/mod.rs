//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod daemon;
pub mod dns;
pub mod dsn;
pub mod faulty;
pub mod peers;
pub mod scripted;
pub mod tls;

use std::path::Path;
use std::time::{Duration, Instant};

use mailqueue::Config;

/// A configuration for tests: spool in `dir`, quick retries, no listener.
pub fn test_config(dir: &Path) -> Config {
    let mut c = Config::from_toml(
        r#"
hostname = "mq.test"
[queue]
workers = 2
initial_retry = "50ms"
retry_scale = 1.0
max_retry_interval = "1s"
[listen]
smtp = []
"#,
    )
    .unwrap();
    c.spool = dir.to_path_buf();
    c
}

/// Polls `cond` until it holds or `limit` passes.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Names of the files in a spool subdirectory.
/// A queued message as received, read through the library (the message
/// file also holds the metadata trailer).
pub fn stored_message(spool: &Path, id: &str) -> Vec<u8> {
    let spool = mailqueue::queue::spool::Spool::open(spool).unwrap();
    let meta = stored_meta(&spool, id);
    spool
        .read_message(&meta, u64::MAX)
        .unwrap_or_else(|e| panic!("{id}: {e}"))
        .unwrap()
}

/// A queued message's current metadata as JSON text.
pub fn stored_metadata(spool: &Path, id: &str) -> String {
    let spool = mailqueue::queue::spool::Spool::open(spool).unwrap();
    String::from_utf8(stored_meta(&spool, id).to_json()).unwrap()
}

fn stored_meta(
    spool: &mailqueue::queue::spool::Spool,
    id: &str,
) -> mailqueue::queue::meta::MessageMeta {
    let id: mailqueue::MessageId = id.parse().unwrap_or_else(|_| panic!("{id}: not an id"));
    spool.read_meta(&id).unwrap_or_else(|e| panic!("{id}: {e}"))
}

pub fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
