//! `mailqueue list --json` on a large queue, as an operator runs it: a
//! spool of N deferred messages (default 10^5), the release daemon started
//! on it, the command's output read through a pipe. Reported, per binary:
//!
//! - time from spawning the command to its first line, and to its end;
//! - the command's peak RSS (its VmHWM, polled every 10 ms until its
//!   output ends; not `ru_maxrss` from `wait4`, which a child spawned
//!   with vfork starts at its parent's peak: this bench's, after filling
//!   the spool);
//! - the daemon's VmRSS before the list (settled after start-up), its
//!   peak during the list (VmHWM, reset through `/proc/PID/clear_refs`
//!   just before, polled every 10 ms; the largest VmRSS polled where that
//!   reset is not allowed), and its VmRSS 1 s and 5 s after;
//! - the same command with the daemon stopped (it reads the spool itself).
//!
//! The targets of the performance issue: at 10^6 messages, daemon and
//! command each under 64 MB, the first line within 100 ms, the daemon's
//! RSS back to where it was.
//!
//! ```sh
//! cargo bench --bench list
//! LIST_MESSAGES=1000000 LIST_BASELINE_BIN=/path/to/old/mailqueue cargo bench --bench list
//! ```
//!
//! Environment: `LIST_MESSAGES` (default 10^5; 500 under `cargo test
//! --benches`), `LIST_BASELINE_BIN` (another `mailqueue` binary measured
//! the same way on the same spool, for ratios: a build from before the
//! list was streamed), `MAILQUEUE_BIN` (the binary measured; default this
//! build's), `BENCH_TMPDIR` (as in the other benches). The spool is
//! filled in parallel without fsync, then `sync -f`: its files are in the
//! page cache, as on a queue in use.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, sleep};
use std::time::{Duration, Instant};

use common::{proc_mem_cpu, Children};
use mailqueue::queue::meta::Timestamp;
use mailqueue::queue::spool::Spool;

const BODY: &[u8] = b"From: app@example.org\r\nSubject: report\r\n\r\nHello.\r\n";
const TARGET_MB: f64 = 64.0;
const TARGET_FIRST: Duration = Duration::from_millis(100);

fn main() {
    if let Err(e) = run() {
        eprintln!("list: {e}");
        std::process::exit(1);
    }
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn run() -> Result<(), String> {
    let bench = common::bench_mode();
    let n = common::env_num("LIST_MESSAGES", if bench { 100_000 } else { 500 })? as usize;
    let binary = std::env::var_os("MAILQUEUE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_mailqueue")));
    let baseline = std::env::var_os("LIST_BASELINE_BIN").map(PathBuf::from);
    let dir = tempfile::tempdir_in(common::tmp_root()).map_err(|e| e.to_string())?;
    let root = dir.path().join("spool");
    let config = dir.path().join("mailqueue.toml");
    let (port, sink) = (common::free_port()?, common::free_port()?);
    // Nothing listens at the target; the messages are not due anyway.
    fs::write(&config, common::daemon_toml(&root, 16, port, sink, "", ""))
        .map_err(|e| e.to_string())?;
    fill(&root, n)?;
    let t = Instant::now();
    let names = fs::read_dir(root.join("queue"))
        .map_err(|e| e.to_string())?
        .count();
    println!(
        "list: reading the queue directory's {names} names alone (what a list in id order waits for before its first line): {}",
        ms(t.elapsed())
    );
    println!(
        "\n| binary | daemon | messages | first line | total | command peak RSS | daemon RSS before | daemon peak during | daemon RSS 1 s after | 5 s after |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let new = measure("this build", &binary, dir.path(), &config, n)?;
    let old = match &baseline {
        Some(b) => Some(measure("baseline", b, dir.path(), &config, n)?),
        None => None,
    };
    println!();
    verdict(&new, n);
    if let Some(old) = old {
        ratios(&new, &old);
    }
    Ok(())
}

/// Fills the spool with `n` messages deferred 1 h; prints the time.
fn fill(root: &Path, n: usize) -> Result<(), String> {
    let spool = Spool::open(root).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let later = Timestamp::now().plus(Duration::from_secs(3600));
    common::fill_spool(&spool, n, BODY, later);
    let filled = t.elapsed();
    let synced = Command::new("sync")
        .arg("-f")
        .arg(root)
        .status()
        .map_err(|e| format!("cannot run sync: {e}"))?;
    if !synced.success() {
        return Err(format!("sync -f failed: {synced}"));
    }
    println!(
        "list: N={n} deferred messages, filled in {:.1} s ({} threads, no fsync), synced in {:.1} s; load average {}",
        filled.as_secs_f64(),
        rayon::current_num_threads(),
        (t.elapsed() - filled).as_secs_f64(),
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}

/// One binary's figures: through its daemon, then with none running.
struct Figures {
    daemon: Listing,
    direct: Listing,
    before_kb: u64,
    peak_kb: u64,
    after_kb: [u64; 2],
}

/// What one `list --json` took.
struct Listing {
    first: Duration,
    total: Duration,
    peak_kb: u64,
}

fn measure(
    label: &str,
    binary: &Path,
    dir: &Path,
    config: &Path,
    n: usize,
) -> Result<Figures, String> {
    let mut children = Children(Vec::new());
    let log = fs::File::create(dir.join(format!("{}.log", label.replace(' ', "-"))))
        .map_err(|e| e.to_string())?;
    let daemon = Command::new(binary)
        .arg("--config")
        .arg(config)
        .arg("serve")
        .env_remove("MAILQUEUE_CONFIG")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let pid = daemon.id();
    children.push(daemon);
    let socket = dir.join("spool").join("control.sock");
    let started = Instant::now();
    while !socket.exists() {
        if started.elapsed() > Duration::from_secs(300) {
            return Err(format!("{label}: no control socket after 300 s"));
        }
        sleep(Duration::from_millis(20));
    }
    let before_kb = settled_rss(pid)?;
    let peak = Peak::daemon(pid);
    let listed = list(binary, config, n)?;
    let peak_kb = peak.stop();
    sleep(Duration::from_secs(1));
    let after_1 = proc_mem_cpu(pid)?.rss_kb;
    sleep(Duration::from_secs(4));
    let after_5 = proc_mem_cpu(pid)?.rss_kb;
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let stopped = Instant::now();
    while socket.exists() && stopped.elapsed() < Duration::from_secs(60) {
        sleep(Duration::from_millis(20));
    }
    drop(children);
    let _ = fs::remove_file(&socket);
    let direct = list(binary, config, n)?;
    let f = Figures {
        daemon: listed,
        direct,
        before_kb,
        peak_kb,
        after_kb: [after_1, after_5],
    };
    row(label, "running", &f.daemon, n, Some(&f));
    row(label, "none", &f.direct, n, None);
    Ok(f)
}

fn row(label: &str, daemon: &str, l: &Listing, n: usize, f: Option<&Figures>) {
    let d = |kb: Option<u64>| kb.map(mb).unwrap_or_else(|| "-".into());
    println!(
        "| {label} | {daemon} | {n} | {} | {:.2} s | {} | {} | {} | {} | {} |",
        ms(l.first),
        l.total.as_secs_f64(),
        mb(l.peak_kb),
        d(f.map(|f| f.before_kb)),
        d(f.map(|f| f.peak_kb)),
        d(f.map(|f| f.after_kb[0])),
        d(f.map(|f| f.after_kb[1])),
    );
}

/// The daemon's VmRSS once it has not grown for 1 s.
fn settled_rss(pid: u32) -> Result<u64, String> {
    let mut last = proc_mem_cpu(pid)?.rss_kb;
    let mut stable = Instant::now();
    let end = Instant::now() + Duration::from_secs(120);
    while stable.elapsed() < Duration::from_secs(1) && Instant::now() < end {
        sleep(Duration::from_millis(50));
        let now = proc_mem_cpu(pid)?.rss_kb;
        if now > last {
            stable = Instant::now();
        }
        last = now;
    }
    Ok(last)
}

/// A process's peak RSS over a span, polled every 10 ms from
/// `/proc/PID/status`: VmHWM when it counts from the span's start (a
/// command just started; a daemon whose peak `clear_refs` reset), else
/// the largest VmRSS seen.
struct Peak {
    stop: Arc<AtomicBool>,
    max_kb: Arc<AtomicU64>,
    thread: thread::JoinHandle<()>,
}

impl Peak {
    /// Watches a command from its start.
    fn command(pid: u32) -> Peak {
        Peak::watch(pid, true)
    }

    /// Watches a daemon from now on.
    fn daemon(pid: u32) -> Peak {
        // "5" resets the peak RSS to the current RSS (Linux 4.0).
        let reset = fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
        Peak::watch(pid, reset)
    }

    fn watch(pid: u32, hwm: bool) -> Peak {
        let stop = Arc::new(AtomicBool::new(false));
        let max_kb = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, max_kb) = (Arc::clone(&stop), Arc::clone(&max_kb));
            thread::spawn(move || loop {
                // Once more after the stop: the last figure counts.
                let last = stop.load(Ordering::SeqCst);
                if let Ok(p) = proc_mem_cpu(pid) {
                    max_kb.fetch_max(if hwm { p.hwm_kb } else { p.rss_kb }, Ordering::SeqCst);
                }
                if last {
                    return;
                }
                sleep(Duration::from_millis(10));
            })
        };
        Peak {
            stop,
            max_kb,
            thread,
        }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
        self.max_kb.load(Ordering::SeqCst)
    }
}

/// Runs `list --json`, reading its output as it comes; checks it listed
/// `n` messages.
fn list(binary: &Path, config: &Path, n: usize) -> Result<Listing, String> {
    let t0 = Instant::now();
    let mut child = Command::new(binary)
        .arg("--config")
        .arg(config)
        .args(["list", "--json"])
        .env_remove("MAILQUEUE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let peak = Peak::command(child.id());
    let mut out = BufReader::with_capacity(1 << 16, child.stdout.take().unwrap());
    let mut line = Vec::new();
    let mut first = None;
    let mut lines = 0;
    loop {
        line.clear();
        match out.read_until(b'\n', &mut line) {
            // Its end: the command is about to exit, its peak is in.
            Ok(0) => break,
            Ok(_) => {
                first.get_or_insert_with(|| t0.elapsed());
                lines += 1;
            }
            Err(e) => return Err(format!("reading the list: {e}")),
        }
    }
    let peak_kb = peak.stop();
    let status = child.wait().map_err(|e| e.to_string())?;
    let total = t0.elapsed();
    if !status.success() || lines != n {
        return Err(format!(
            "{} list --json: {status}, {lines} lines for {n} messages",
            binary.display()
        ));
    }
    Ok(Listing {
        first: first.unwrap_or(total),
        total,
        peak_kb,
    })
}

/// Whether the issue's targets hold for this build.
fn verdict(f: &Figures, n: usize) {
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    let daemon_mb = f.peak_kb.saturating_sub(f.before_kb) as f64 / 1024.0;
    println!(
        "list: N={n}: first line through the daemon {} (target {TARGET_FIRST:?}: {}); command peak {} and daemon growth during the list {daemon_mb:.1} MB (target under {TARGET_MB} MB each: {}); daemon RSS 5 s after {} of {} before",
        ms(f.daemon.first),
        met(f.daemon.first <= TARGET_FIRST),
        mb(f.daemon.peak_kb),
        met((f.daemon.peak_kb as f64 / 1024.0) < TARGET_MB && daemon_mb < TARGET_MB),
        mb(f.after_kb[1]),
        mb(f.before_kb),
    );
}

/// This build against the baseline, measured in the same run.
fn ratios(new: &Figures, old: &Figures) {
    let r = |a: f64, b: f64| format!("{:.3}", a / b.max(f64::MIN_POSITIVE));
    let secs = |d: Duration| d.as_secs_f64();
    println!(
        "list: this build / baseline, through the daemon: first line {}, total {}, command peak RSS {}, daemon growth during the list {}, daemon RSS 5 s after {}",
        r(secs(new.daemon.first), secs(old.daemon.first)),
        r(secs(new.daemon.total), secs(old.daemon.total)),
        r(new.daemon.peak_kb as f64, old.daemon.peak_kb as f64),
        r(
            new.peak_kb.saturating_sub(new.before_kb) as f64,
            old.peak_kb.saturating_sub(old.before_kb) as f64
        ),
        r(new.after_kb[1] as f64, old.after_kb[1] as f64),
    );
    println!(
        "list: this build / baseline, no daemon: first line {}, total {}, command peak RSS {}",
        r(secs(new.direct.first), secs(old.direct.first)),
        r(secs(new.direct.total), secs(old.direct.total)),
        r(new.direct.peak_kb as f64, old.direct.peak_kb as f64),
    );
}
