//! Fixtures shared by the benches.
#![allow(dead_code)] // each bench uses part of it

mod peers;
#[allow(unused_imports)] // each bench uses part of it
pub use peers::*;

use std::collections::HashSet;
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command};

use mailqueue::queue::meta::{MessageMeta, Timestamp};
use mailqueue::queue::spool::{message_file_bytes, Spool};
use mailqueue::{Envelope, MessageId, SmtpReply};
use rayon::prelude::*;

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

// ---------------------------------------------------------------------------
// Spool fixtures. The on-disk format is written here and nowhere else in
// the benches: when it changes, change `put_message`.

/// Writes one message into `spool` the way the queue leaves it
/// (`queue/<id>.msg` holding `body` and `meta` as its trailer, and, for a
/// message tried before, `queue/<id>.meta` holding `meta`), without fsync:
/// fixtures, not durability. The message file is
/// created with `create_new`, so an id collision panics instead of
/// silently overwriting. Panics when `meta.size` is not `body.len()`:
/// start-up would quarantine such a message.
pub fn put_message(spool: &Spool, meta: &MessageMeta, body: &[u8]) {
    assert_eq!(
        meta.size,
        body.len() as u64,
        "{}: metadata size differs from the body's length",
        meta.id
    );
    let msg = spool.message_path(&meta.id);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&msg)
        .unwrap_or_else(|e| panic!("{}: {e}", msg.display()));
    file.write_all(&message_file_bytes(body, meta))
        .unwrap_or_else(|e| panic!("{}: {e}", msg.display()));
    // A message that has been tried has its state in a `.meta` file, as
    // the queue leaves it.
    if meta.last_attempt.is_some() {
        let mut meta = meta.clone();
        meta.checksum = Some(crc32fast::hash(body));
        let path = spool.meta_path(&meta.id);
        std::fs::write(&path, meta.to_json()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// The daemon's configuration for a benchmark: listening on 127.0.0.1:`port`,
/// relaying to a sink on 127.0.0.1:`sink_port` in clear text; `listen` and
/// `delivery` are extra lines for those sections. No quota on messages:
/// benches fill spools past the default 10^5 and still send mail.
pub fn daemon_toml(
    spool: &std::path::Path,
    workers: u64,
    port: u16,
    sink_port: u16,
    listen: &str,
    delivery: &str,
) -> String {
    format!(
        "hostname = \"mq.bench.example\"\n\
         spool = \"{spool}\"\n\
         [queue]\n\
         workers = {workers}\n\
         max_messages = 100000000\n\
         [listen]\n\
         smtp = [\"127.0.0.1:{port}\"]\n\
         {listen}\
         [delivery]\n\
         target = \"smtp://127.0.0.1:{sink_port}\"\n\
         tls = \"none\"\n\
         {delivery}",
        spool = spool.display(),
    )
}

/// `n` distinct fresh queue ids, in creation order.
pub fn unique_ids(n: usize) -> Vec<MessageId> {
    let mut seen = HashSet::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    while ids.len() < n {
        let id = MessageId::generate();
        if seen.insert(id) {
            ids.push(id);
        }
    }
    ids
}

/// Fills `spool` with `n` messages of one recipient each, all holding
/// `body`, deferred once (see [`deferred_meta`]) and due at
/// `next_attempt`. Files are written on rayon's global pool. Returns the
/// ids.
pub fn fill_spool(spool: &Spool, n: usize, body: &[u8], next_attempt: Timestamp) -> Vec<MessageId> {
    let ids = unique_ids(n);
    ids.par_iter().for_each(|&id| {
        let mut meta = deferred_meta(id, 1);
        meta.size = body.len() as u64;
        meta.next_attempt = next_attempt;
        put_message(spool, &meta, body);
    });
    ids
}

// ---------------------------------------------------------------------------
// Processes: for benches that run the daemon.

/// Kills whatever is left of the processes it holds when dropped, so a
/// failing or panicking bench leaves nothing running.
pub struct Children(pub Vec<Child>);

impl Children {
    /// Keeps `child`; returns its index in `self.0`.
    pub fn push(&mut self, child: Child) -> usize {
        self.0.push(child);
        self.0.len() - 1
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// A loopback port free at the time of asking.
pub fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

/// A number from the environment, or `default` when unset.
pub fn env_num(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

/// Clock ticks per second, the unit of CPU times in `/proc/<pid>/stat`.
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// What `/proc/<pid>` tells about a process's CPU and memory.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcMemCpu {
    /// utime + stime of all threads, in clock ticks.
    pub cpu_ticks: u64,
    /// VmRSS in kB.
    pub rss_kb: u64,
    /// VmHWM (peak RSS) in kB.
    pub hwm_kb: u64,
    pub threads: u64,
}

pub fn proc_mem_cpu(pid: u32) -> Result<ProcMemCpu, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    // Fields after the command name, which ends with the last ')': state is
    // field 3, utime 14, stime 15.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or("bad /proc/PID/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let num = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let mut stats = ProcMemCpu {
        cpu_ticks: num(14) + num(15),
        ..ProcMemCpu::default()
    };
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value: u64 = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        match key {
            "VmRSS" => stats.rss_kb = value,
            "VmHWM" => stats.hwm_kb = value,
            "Threads" => stats.threads = value,
            _ => {}
        }
    }
    Ok(stats)
}
