//! Start-up benchmark: the release daemon (`mailqueue serve`) started on a
//! spool that already holds N messages, as after a restart with a full
//! queue. Two runs, each on its own spool in a temporary directory on the
//! project's disk:
//!
//! 1. **start-up**: N messages already due (next attempt a minute ago).
//!    Reported: time from spawning the daemon until its SMTP port accepts
//!    a TCP connection, until it greets with 220, until one new message
//!    sent right after the greeting is queued (its 250), until the first
//!    message has reached the sink, until the daemon logs that its spool
//!    load is over (and the load's own duration, from that line), its
//!    peak RSS, and (with `STARTUP_DRAIN`, on by default) the drain rate.
//!    Targets: greeting within 1 s at any N; delivering within 2 s at
//!    10^5; the load over within 5 s at 10^6.
//! 2. **memory**: N messages deferred one hour. The daemon is left alone
//!    (only `/proc/<pid>` is read, never the queue listed) until it has
//!    logged the end of its spool load and its VmRSS has not grown for
//!    1 s; reported: VmRSS (settled) and VmHWM (peak), against the same
//!    daemon on an empty spool, and peak / settled. Targets: at most 64 MB
//!    with 10^5 deferred; peak at most 1.3 × settled.
//!
//! The daemon before the background load (`MAILQUEUE_BIN` set to an older
//! build) loads first and greets after; the rows read the same for it.
//!
//! ```sh
//! cargo bench --bench startup               # N=100000
//! N=20000 STARTUP_DRAIN=0 cargo bench --bench startup
//! ```
//!
//! Environment: `N` (messages; 2000 under `cargo test --benches`),
//! `WORKERS` (the daemon's `[queue] workers`, default 16, its built-in
//! default), `STARTUP_DRAIN` (1: wait until all N are delivered; 0: stop
//! after the first), `STARTUP_TIMEOUT` (seconds for each start-up wait,
//! default 120), `STARTUP_DRAIN_TIMEOUT` (seconds, default 600; a drain
//! not finished by then is reported as such, with the rate so far),
//! `MAILQUEUE_BIN`, `BENCH_TMPDIR` (as in `relay.rs`).
//!
//! The sink is a small SMTP server on a thread of this process rather than
//! Postfix's `smtp-sink`: it stamps the end of each DATA with the same
//! clock that timed the spawn (no polling of a counter file), and it needs
//! nothing installed, so `cargo test --benches` runs this bench anywhere.
//!
//! The spool is filled in parallel without fsync and then flushed with
//! `sync -f` before the daemon starts, so the daemon does not compete
//! with the writeback of its own fixture. Its files were just written:
//! the page cache is warm. A start after a reboot reads them cold.
//!
//! Every wait is bounded; the daemon is stopped at the end, also on
//! failure; all traffic is on 127.0.0.1.

mod common;

use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, sleep, JoinHandle};
use std::time::{Duration, Instant};

use common::{proc_mem_cpu, Children, ProcMemCpu};
use mailqueue::queue::meta::Timestamp;
use mailqueue::queue::spool::Spool;

const POLL: Duration = Duration::from_millis(5);
/// The issue's targets.
const TARGET_START: Duration = Duration::from_secs(2);
const TARGET_GREETING: Duration = Duration::from_secs(1);
const TARGET_LOAD_1M: Duration = Duration::from_secs(5);
const TARGET_RSS_MB: f64 = 64.0;
const TARGET_PEAK_RATIO: f64 = 1.3;

/// The subject line of the new message sent after the greeting.
const PROBE_SUBJECT: &str = "Subject: start-up probe\r\n";

/// How the daemon logs the end of its spool load.
const LOAD_LINE: &str = " messages queued, ";

fn main() {
    if let Err(e) = run() {
        eprintln!("startup: {e}");
        std::process::exit(1);
    }
}

/// Prints one result as `name: value unit`.
fn row(name: &str, value: impl std::fmt::Display, unit: &str) {
    if unit.is_empty() {
        println!("startup {name}: {value}");
    } else {
        println!("startup {name}: {value} {unit}");
    }
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

fn mb(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

struct Settings {
    n: usize,
    workers: u64,
    drain: bool,
    limit: Duration,
    drain_limit: Duration,
    binary: PathBuf,
    ticks: f64,
}

fn run() -> Result<(), String> {
    let bench = common::bench_mode();
    let n = common::env_num("N", if bench { 100_000 } else { 2000 })? as usize;
    if n == 0 {
        return Err("N must be at least 1".into());
    }
    let s = Settings {
        n,
        workers: common::env_num("WORKERS", 16)?,
        drain: common::env_num("STARTUP_DRAIN", 1)? != 0,
        limit: Duration::from_secs(common::env_num("STARTUP_TIMEOUT", 120)?),
        drain_limit: Duration::from_secs(common::env_num("STARTUP_DRAIN_TIMEOUT", 600)?),
        binary: std::env::var_os("MAILQUEUE_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_mailqueue"))),
        ticks: common::clock_ticks(),
    };
    if !s.binary.is_file() {
        return Err(format!("{} does not exist", s.binary.display()));
    }
    println!();
    println!(
        "startup: N={n} messages of {} bytes, 1 recipient each; workers={}; {}; load average {}",
        body().len(),
        s.workers,
        s.binary.display(),
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let sink = Sink::start()?;
    let started = startup_run(&s, &sink);
    let memory = started.and_then(|()| memory_run(&s, &sink));
    drop(sink);
    memory
}

/// A plain message of about 1 KiB, as the daemon would have stored it.
fn body() -> Vec<u8> {
    let mut b = b"Received: from client.example.org (client.example.org [192.0.2.7])\r\n\
\tby mq.bench.example with ESMTP id 19AC8F3E2B1C40A3F9D12; Mon, 2 Jun 2025 09:00:00 +0000\r\n\
From: Newsletter <newsletter@lists.example.org>\r\n\
To: subscriber@mail.example.net\r\n\
Subject: Weekly digest\r\n\
Date: Mon, 2 Jun 2025 09:00:00 +0000\r\n\
Message-ID: <digest.20250602@lists.example.org>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        .to_vec();
    while b.len() < 1024 {
        b.extend_from_slice(b"Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n");
    }
    b
}

/// Makes a spool of `n` messages due at `next_attempt`; reports the time.
fn make_spool(
    s: &Settings,
    dir: &Path,
    label: &str,
    next_attempt: Timestamp,
) -> Result<PathBuf, String> {
    let root = dir.join("spool");
    let spool = Spool::open(&root).map_err(|e| e.to_string())?;
    let body = body();
    let t = Instant::now();
    common::fill_spool(&spool, s.n, &body, next_attempt);
    let filled = t.elapsed();
    let t = Instant::now();
    let synced = Command::new("sync")
        .arg("-f")
        .arg(&root)
        .status()
        .map_err(|e| format!("cannot run sync: {e}"))?;
    if !synced.success() {
        return Err(format!("sync -f {} failed: {synced}", root.display()));
    }
    row(
        &format!(
            "{label} fill ({} threads, no fsync)",
            rayon::current_num_threads()
        ),
        secs(filled),
        "s",
    );
    row(&format!("{label} fill sync -f"), secs(t.elapsed()), "s");
    Ok(root)
}

// ---------------------------------------------------------------------------
// Run 1: start-up with N messages due.

fn startup_run(s: &Settings, sink: &Sink) -> Result<(), String> {
    let dir = tempfile::tempdir_in(common::tmp_root()).map_err(|e| e.to_string())?;
    let due = Timestamp(Timestamp::now().0.saturating_sub(60_000));
    let root = make_spool(s, dir.path(), "start-up", due)?;
    let port = common::free_port()?;
    let mut daemon = Daemon::spawn(s, dir.path(), &root, port, sink.port)?;
    let deadline = daemon.t0 + s.limit;

    let (connected, greeted) = daemon.wait_for_greeting(port, deadline)?;
    let at_greeting = proc_mem_cpu(daemon.pid)?;
    let probe = send_probe(port, deadline)
        .map_err(|e| daemon.failure(&format!("the new message was not queued: {e}")))?;
    let queued_new = daemon.t0.elapsed();
    let loading_then = daemon.log.find(LOAD_LINE).is_none();
    let first = loop {
        if let Some(t) = *sink.stats.first.lock().unwrap() {
            break t.saturating_duration_since(daemon.t0);
        }
        daemon.check_alive("waiting for the first delivery")?;
        if Instant::now() > deadline {
            return Err(
                daemon.failure(&format!("no message reached the sink within {:?}", s.limit))
            );
        }
        sleep(POLL);
    };
    let at_first = proc_mem_cpu(daemon.pid)?;
    daemon.wait_for_load(deadline)?;

    row("N due", s.n, "messages");
    row("tcp connect (port bound)", secs(connected), "s");
    row("smtp greeting 220", secs(greeted), "s");
    row(
        "new message queued (250) at",
        format!("{} ({probe})", secs(queued_new)),
        "s",
    );
    row(
        "  ... while the spool load still ran",
        if loading_then { "yes" } else { "no" },
        "",
    );
    row("first queued message at sink", secs(first), "s");
    let loaded = report_log_phases(&daemon.log);
    row(
        "daemon CPU until greeting",
        format!("{:.2}", at_greeting.cpu_ticks as f64 / s.ticks),
        "s",
    );
    row(
        "daemon CPU until first message",
        format!("{:.2}", at_first.cpu_ticks as f64 / s.ticks),
        "s",
    );
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    row(
        &format!("target (greeting within {TARGET_GREETING:?})"),
        met(greeted <= TARGET_GREETING),
        "",
    );
    row(
        &format!("target (greeting and delivering within {TARGET_START:?}, at 10^5)"),
        met(greeted.max(first) <= TARGET_START),
        "",
    );
    if let (Some(load), true) = (loaded, s.n >= 1_000_000) {
        row(
            &format!("target (10^6 loaded within {TARGET_LOAD_1M:?})"),
            met(load <= TARGET_LOAD_1M),
            "",
        );
    }
    // The new message sent after the greeting goes to the sink too.
    let n = s.n as u64 + 1;

    if s.drain {
        let drain_deadline = daemon.t0 + s.drain_limit;
        let queue_dir = root.join("queue");
        let mut done = false;
        while Instant::now() < drain_deadline {
            if sink.stats.messages.load(Ordering::SeqCst) >= n {
                done = true;
                break;
            }
            daemon.check_alive("draining")?;
            sleep(Duration::from_millis(20));
        }
        let got = sink.stats.messages.load(Ordering::SeqCst);
        let last = sink
            .stats
            .last
            .lock()
            .unwrap()
            .map(|t| t.saturating_duration_since(daemon.t0))
            .unwrap_or(first);
        let span = last.saturating_sub(first).max(Duration::from_millis(1));
        let rate = got.saturating_sub(1) as f64 / span.as_secs_f64();
        if done {
            // The last deliveries remove their files just after the sink's reply.
            while fs::read_dir(&queue_dir).map(|d| d.count()).unwrap_or(0) != 0
                && Instant::now() < drain_deadline
            {
                sleep(POLL);
            }
            row("last message at sink", secs(last), "s");
            row(
                "drain rate (first to last message)",
                format!("{rate:.0}"),
                "msg/s",
            );
            row(
                "N / time from spawn to last message",
                format!("{:.0}", s.n as f64 / last.as_secs_f64()),
                "msg/s",
            );
        } else {
            row(
                &format!("drain NOT finished within {:?}; delivered", s.drain_limit),
                got,
                &format!("of {n}"),
            );
            row("drain rate so far", format!("{rate:.0}"), "msg/s");
        }
        let end = proc_mem_cpu(daemon.pid)?;
        let cpu = end.cpu_ticks as f64 / s.ticks;
        row("daemon CPU total", format!("{cpu:.2}"), "s");
        row(
            "daemon CPU per delivered message",
            format!("{:.3}", cpu * 1000.0 / got.max(1) as f64),
            "ms",
        );
        row(
            "daemon peak RSS while draining (VmHWM)",
            mb(end.hwm_kb),
            "MB",
        );
        let left = fs::read_dir(&queue_dir).map(|d| d.count()).unwrap_or(0);
        let clean = daemon.stop();
        let (sent, deferred) = (
            daemon.log.sent.load(Ordering::SeqCst),
            daemon.log.count("status=deferred"),
        );
        row(
            "log: sent / deferred lines",
            format!("{sent} / {deferred}"),
            "",
        );
        if done && (left != 0 || !clean || got != n) {
            return Err(format!(
                "unclean drain: {left} spool files left, clean exit: {clean}, sink got {got} of {n}"
            ));
        }
    } else {
        let end = proc_mem_cpu(daemon.pid)?;
        row("daemon peak RSS (VmHWM)", mb(end.hwm_kb), "MB");
        daemon.stop();
    }
    Ok(())
}

/// The start-up phases the daemon's log shows, stamped when each line
/// reached this process (env_logger's own timestamps are whole seconds).
/// Returns the load's duration, as the daemon logged it.
fn report_log_phases(log: &LogWatch) -> Option<Duration> {
    let mut load = None;
    match log.find(LOAD_LINE) {
        Some((t, line)) => {
            match load_ms(&line) {
                Some(ms) => {
                    row("spool load duration (daemon's log)", ms, "ms");
                    load = Some(Duration::from_millis(ms));
                }
                None => row("spool load line without a duration", line, ""),
            }
            row("spool load over (line logged) at", secs(t), "s");
        }
        None => row("spool load", "no such log line", ""),
    }
    if let Some((t, _)) = log.find("listening for SMTP") {
        row("listener started (log) at", secs(t), "s");
    }
    if let Some((t, _)) = log.find(" running: ") {
        row("running line logged at", secs(t), "s");
    }
    if let Some(t) = *log.first_sent.lock().unwrap() {
        row("first status=sent logged at", secs(t), "s");
    }
    load
}

/// The duration in the daemon's load line: "spool DIR: N messages
/// queued, Q quarantined, R unfinished writes removed (M ms)".
fn load_ms(line: &str) -> Option<u64> {
    line.rsplit_once('(')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Sends one message to the daemon on `port` (to the sink, like the
/// rest) and waits for its 250; returns the queue id the reply names.
fn send_probe(port: u16, deadline: Instant) -> Result<String, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    stream
        .set_read_timeout(Some(wait))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(&stream);
    let mut writer = &stream;
    let mut reply = |expect: &str| -> Result<String, String> {
        let mut line = String::new();
        loop {
            line.clear();
            reader.read_line(&mut line).map_err(|e| e.to_string())?;
            // The last line of a reply has a space after its code.
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                break;
            }
        }
        if line.starts_with(expect) {
            Ok(line.trim_end().to_string())
        } else {
            Err(format!("expected {expect}, got {line:?}"))
        }
    };
    reply("220")?;
    let mut say = |text: &str| writer.write_all(text.as_bytes()).map_err(|e| e.to_string());
    say("EHLO bench.example\r\n")?;
    reply("250")?;
    say("MAIL FROM:<probe@bench.example>\r\n")?;
    reply("250")?;
    say("RCPT TO:<probe@mail.example.net>\r\n")?;
    reply("250")?;
    say("DATA\r\n")?;
    reply("354")?;
    say(&format!(
        "{PROBE_SUBJECT}\r\nsent during the start-up\r\n.\r\n"
    ))?;
    let queued = reply("250")?;
    let _ = say("QUIT\r\n");
    Ok(queued
        .rsplit_once(' ')
        .map(|(_, id)| id.to_string())
        .unwrap_or(queued))
}

// ---------------------------------------------------------------------------
// Run 2: memory with N messages deferred one hour.

fn memory_run(s: &Settings, sink: &Sink) -> Result<(), String> {
    let before = sink.stats.messages.load(Ordering::SeqCst);
    let baseline = {
        let dir = tempfile::tempdir_in(common::tmp_root()).map_err(|e| e.to_string())?;
        let root = dir.path().join("spool");
        settled_memory(s, dir.path(), &root, sink, 0)?
    };
    let dir = tempfile::tempdir_in(common::tmp_root()).map_err(|e| e.to_string())?;
    let later = Timestamp::now().plus(Duration::from_secs(3600));
    let root = make_spool(s, dir.path(), "memory", later)?;
    let full = settled_memory(s, dir.path(), &root, sink, s.n)?;
    row("memory N deferred 1 h", s.n, "messages");
    row("memory empty spool VmRSS", mb(baseline.rss_kb), "MB");
    row("memory empty spool VmHWM", mb(baseline.hwm_kb), "MB");
    row("memory VmRSS (settled)", mb(full.rss_kb), "MB");
    row("memory VmHWM (peak)", mb(full.hwm_kb), "MB");
    let ratio = full.hwm_kb as f64 / full.rss_kb.max(1) as f64;
    row("memory peak / settled", format!("{ratio:.2}"), "");
    row(
        "memory VmRSS above the empty spool per message",
        format!(
            "{:.0}",
            full.rss_kb.saturating_sub(baseline.rss_kb) as f64 * 1024.0 / s.n as f64
        ),
        "B",
    );
    row(
        "memory VmHWM above the empty spool per message",
        format!(
            "{:.0}",
            full.hwm_kb.saturating_sub(baseline.hwm_kb) as f64 * 1024.0 / s.n as f64
        ),
        "B",
    );
    row("memory threads", full.threads, "");
    row(
        &format!("memory target (peak <= {TARGET_PEAK_RATIO} x settled)"),
        if ratio <= TARGET_PEAK_RATIO {
            "met"
        } else {
            "NOT met"
        },
        "",
    );
    if s.n >= 100_000 && s.n < 1_000_000 {
        row(
            &format!("memory target (VmHWM <= {TARGET_RSS_MB} MB)"),
            if full.hwm_kb as f64 / 1024.0 <= TARGET_RSS_MB {
                "met"
            } else {
                "NOT met"
            },
            "",
        );
    }
    let after = sink.stats.messages.load(Ordering::SeqCst);
    if after != before {
        return Err(format!(
            "the deferred messages must not be delivered, but the sink got {}",
            after - before
        ));
    }
    Ok(())
}

/// Starts the daemon on `root`, waits until it runs and its RSS has not
/// grown for 1 s, reads its memory, stops it.
fn settled_memory(
    s: &Settings,
    dir: &Path,
    root: &Path,
    sink: &Sink,
    n: usize,
) -> Result<ProcMemCpu, String> {
    let port = common::free_port()?;
    let mut daemon = Daemon::spawn(s, dir, root, port, sink.port)?;
    let deadline = daemon.t0 + s.limit;
    daemon.wait_for_load(deadline)?;
    let loaded = daemon
        .log
        .find(LOAD_LINE)
        .map(|(_, l)| l)
        .unwrap_or_default();
    if !loaded.contains(&format!(": {n} messages queued")) {
        return Err(daemon.failure(&format!(
            "expected {n} messages loaded, the log says {loaded:?}"
        )));
    }
    if let (Some(ms), true) = (load_ms(&loaded), n > 0) {
        row("memory spool load duration (daemon's log)", ms, "ms");
    }
    let mut last = proc_mem_cpu(daemon.pid)?;
    let mut stable_since = Instant::now();
    loop {
        sleep(Duration::from_millis(50));
        daemon.check_alive("settling")?;
        let now = proc_mem_cpu(daemon.pid)?;
        if now.rss_kb > last.rss_kb {
            stable_since = Instant::now();
        }
        last = now;
        if stable_since.elapsed() >= Duration::from_secs(1) {
            break;
        }
        if Instant::now() > deadline {
            return Err(daemon.failure(&format!(
                "VmRSS still growing after {:?} ({} kB)",
                s.limit, now.rss_kb
            )));
        }
    }
    daemon.stop();
    Ok(last)
}

// ---------------------------------------------------------------------------
// The daemon.

struct Daemon {
    children: Children,
    pid: u32,
    t0: Instant,
    log: Arc<LogWatch>,
    log_path: PathBuf,
    reader: Option<JoinHandle<()>>,
}

impl Daemon {
    fn spawn(
        s: &Settings,
        dir: &Path,
        spool: &Path,
        port: u16,
        sink_port: u16,
    ) -> Result<Daemon, String> {
        let config = dir.join("mailqueue.toml");
        fs::write(
            &config,
            common::daemon_toml(spool, s.workers, port, sink_port, "", ""),
        )
        .map_err(|e| format!("{}: {e}", config.display()))?;
        let log_path = dir.join("daemon.log");
        let log_file = File::create(&log_path).map_err(|e| e.to_string())?;
        let mut children = Children(Vec::new());
        let t0 = Instant::now();
        let mut child = Command::new(&s.binary)
            .env("RUST_LOG", "info")
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", s.binary.display()))?;
        let pid = child.id();
        let stderr = child.stderr.take();
        children.push(child);
        let log = Arc::new(LogWatch::default());
        let reader = stderr.map(|stderr| {
            let log = Arc::clone(&log);
            thread::spawn(move || log.read(stderr, t0, log_file))
        });
        Ok(Daemon {
            children,
            pid,
            t0,
            log,
            log_path,
            reader,
        })
    }

    /// Waits until the daemon has logged the end of its spool load.
    fn wait_for_load(&mut self, deadline: Instant) -> Result<(), String> {
        while self.log.find(LOAD_LINE).is_none() {
            self.check_alive("loading the spool")?;
            if Instant::now() > deadline {
                return Err(self.failure("the spool load did not end in time"));
            }
            sleep(POLL);
        }
        Ok(())
    }

    fn check_alive(&mut self, doing: &str) -> Result<(), String> {
        match self.children.0[0].try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                Err(self.failure(&format!("daemon exited while {doing}: {status}")))
            }
            Err(e) => Err(format!("cannot check the daemon: {e}")),
        }
    }

    /// An error message with the end of the daemon's log.
    fn failure(&self, what: &str) -> String {
        let lines = self.log.tail();
        format!(
            "{what}\nlast lines of {}:\n{}",
            self.log_path.display(),
            lines.join("\n")
        )
    }

    /// Times from spawn until a TCP connection to `port` succeeds (the
    /// listener is bound before the spool is loaded, so the kernel accepts
    /// early) and until the daemon greets on it with 220.
    fn wait_for_greeting(
        &mut self,
        port: u16,
        deadline: Instant,
    ) -> Result<(Duration, Duration), String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut connected = None;
        while Instant::now() < deadline {
            self.check_alive("starting")?;
            let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
                sleep(Duration::from_millis(2));
                continue;
            };
            let at = self.t0.elapsed();
            let connected = *connected.get_or_insert(at);
            // Greeted when the accept loop takes the connection; a read
            // that times out (daemon still loading) tries a new one.
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(5))
                .max(Duration::from_millis(10));
            let _ = stream.set_read_timeout(Some(wait));
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            if reader.read_line(&mut line).is_ok() && line.starts_with("220") {
                let greeted = self.t0.elapsed();
                let _ = (&stream).write_all(b"QUIT\r\n");
                let _ = stream.shutdown(Shutdown::Write);
                return Ok((connected, greeted));
            }
        }
        Err(self.failure(&format!("no 220 greeting on port {port} in time")))
    }

    /// SIGTERM, as an operator would; true when it exits 0 in time.
    fn stop(&mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(40);
        let mut clean = false;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.children.0[0].try_wait() {
                clean = status.success();
                break;
            }
            sleep(Duration::from_millis(20));
        }
        // Kills it if it is still there; the log reader then sees EOF.
        self.children.0.drain(..).for_each(|mut c| {
            let _ = c.kill();
            let _ = c.wait();
        });
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        clean
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // `children` kills the daemon when dropped; the reader then ends.
        for mut c in self.children.0.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// The daemon's log, read from its stderr as it is written: every line
/// goes to a file; start-up lines are kept with the time they arrived.
#[derive(Default)]
struct LogWatch {
    /// Lines other than per-recipient delivery lines, with their arrival.
    lines: Mutex<Vec<(Duration, String)>>,
    /// The last lines of any kind, for error messages.
    recent: Mutex<std::collections::VecDeque<String>>,
    sent: AtomicU64,
    first_sent: Mutex<Option<Duration>>,
}

impl LogWatch {
    fn read(&self, stderr: ChildStderr, t0: Instant, file: File) {
        let mut out = BufWriter::new(file);
        let mut reader = BufReader::new(stderr);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let at = t0.elapsed();
            let _ = out.write_all(line.as_bytes());
            let text = line.trim_end().to_string();
            if text.contains("status=sent") {
                if self.sent.fetch_add(1, Ordering::SeqCst) == 0 {
                    *self.first_sent.lock().unwrap() = Some(at);
                }
            } else {
                self.lines.lock().unwrap().push((at, text.clone()));
            }
            let mut recent = self.recent.lock().unwrap();
            if recent.len() >= 20 {
                recent.pop_front();
            }
            recent.push_back(text);
        }
        let _ = out.flush();
    }

    fn find(&self, what: &str) -> Option<(Duration, String)> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .find(|(_, l)| l.contains(what))
            .cloned()
    }

    fn count(&self, what: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| l.contains(what))
            .count()
    }

    fn tail(&self) -> Vec<String> {
        self.recent.lock().unwrap().iter().cloned().collect()
    }
}

// ---------------------------------------------------------------------------
// The sink: accepts every message, keeps none, stamps the end of each DATA.

#[derive(Default)]
struct SinkStats {
    messages: AtomicU64,
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
}

struct Sink {
    port: u16,
    stats: Arc<SinkStats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    fn start() -> Result<Sink, String> {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(|e| format!("sink cannot listen: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let stats = Arc::new(SinkStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stats, stop) = (Arc::clone(&stats), Arc::clone(&stop));
            thread::Builder::new()
                .name("sink".into())
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let Ok(conn) = conn else { continue };
                        let stats = Arc::clone(&stats);
                        let _ =
                            thread::Builder::new()
                                .name("sink-session".into())
                                .spawn(move || {
                                    let _ = session(conn, &stats);
                                });
                    }
                })
                .map_err(|e| e.to_string())?
        };
        Ok(Sink {
            port,
            stats,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(1),
        );
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One SMTP session: replies are written when the client has nothing more
/// in flight (so a pipelining client gets them in one segment).
fn session(conn: TcpStream, stats: &SinkStats) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    // Idle sessions (the daemon's connection cache) end on their own.
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut out = BufWriter::new(conn.try_clone()?);
    let mut input = BufReader::new(conn);
    out.write_all(b"220 sink.bench.example ESMTP\r\n")?;
    out.flush()?;
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let verb = line
            .get(..4)
            .map(|v| v.to_ascii_uppercase())
            .unwrap_or_default();
        match &verb[..] {
            b"EHLO" => out.write_all(
                b"250-sink.bench.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n",
            )?,
            b"HELO" => out.write_all(b"250 sink.bench.example\r\n")?,
            b"MAIL" => out.write_all(b"250 2.1.0 Ok\r\n")?,
            b"RCPT" => out.write_all(b"250 2.1.5 Ok\r\n")?,
            b"DATA" => {
                out.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")?;
                out.flush()?;
                let mut probe = false;
                loop {
                    line.clear();
                    if input.read_until(b'\n', &mut line)? == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" || line == b".\n" {
                        break;
                    }
                    probe |= line == PROBE_SUBJECT.as_bytes();
                }
                let now = Instant::now();
                // The first of the queued messages, not the new one.
                if !probe {
                    stats.first.lock().unwrap().get_or_insert(now);
                }
                *stats.last.lock().unwrap() = Some(now);
                stats.messages.fetch_add(1, Ordering::SeqCst);
                out.write_all(b"250 2.0.0 Ok: queued\r\n")?;
            }
            b"RSET" | b"NOOP" => out.write_all(b"250 2.0.0 Ok\r\n")?,
            b"QUIT" => {
                out.write_all(b"221 2.0.0 Bye\r\n")?;
                return out.flush();
            }
            _ => out.write_all(b"502 5.5.2 Error: command not recognized\r\n")?,
        }
        if input.buffer().is_empty() {
            out.flush()?;
        }
    }
}
