//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod daemon;
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
