//! Relay benchmark: the release daemon between Postfix's `smtp-source`
//! (the load) and `smtp-sink` (a fast loopback sink), with its spool in a
//! temporary directory on the project's disk and fsync on.
//!
//! ```sh
//! cargo bench --bench relay                  # N=5000 messages, S=4096 bytes, K=20 connections
//! N=20000 S=1024 K=50 cargo bench --bench relay
//! ```
//!
//! Environment: `N`, `S`, `K` (load), `WORKERS` (the daemon's
//! `[queue] workers`, default 20 like Postfix's
//! `default_destination_concurrency_limit`), `CONNECTION_CACHE_TIME`
//! (`[delivery] connection_cache_time`, default "5s"; "0s" turns reuse off), `RELAY_TIMEOUT` (seconds for
//! the whole run, default 300), `MAILQUEUE_BIN` (another binary than the
//! one `cargo bench` builds), `BENCH_TMPDIR` (where the spool goes).
//!
//! It reports the accept rate (N / time until `smtp-source` has finished),
//! the drain time (from the start of `smtp-source` until the sink has
//! received all N; the sink's `-c` counter is polled), messages/s over the
//! drain time, from `/proc/<daemon pid>`: CPU time (utime + stime of
//! all its threads) per message, peak RSS (VmHWM) and bytes written to
//! storage (`write_bytes`) per message, context switches per message by
//! kind of thread (voluntary + preempted), and from `mailqueue stats` the
//! scheduling lag (due time to attempt start: p50, p99, maximum) since
//! the daemon started and over the last minute. Every
//! wait is bounded; the daemon and the sink are stopped at the end, also
//! on failure.

mod common;

use common::{
    clock_ticks, count_entries, env_num, free_port, is_root, sink_count, tail_of, tool,
    wait_for_banner, Children,
};

use std::collections::BTreeMap;
use std::fs::{self, File};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(5);

/// What `/proc` tells about a process: CPU and peak memory (shared with
/// the other benches), and what it wrote to storage.
#[derive(Debug, Clone, Copy, Default)]
struct ProcStats {
    /// utime + stime of all threads, in clock ticks.
    cpu_ticks: u64,
    write_bytes: u64,
    cancelled_write_bytes: u64,
    /// VmHWM in kB.
    peak_rss_kb: u64,
}

fn proc_stats(pid: u32) -> Result<ProcStats, String> {
    let mem_cpu = common::proc_mem_cpu(pid)?;
    let mut stats = ProcStats {
        cpu_ticks: mem_cpu.cpu_ticks,
        peak_rss_kb: mem_cpu.hwm_kb,
        ..ProcStats::default()
    };
    let io = fs::read_to_string(format!("/proc/{pid}/io")).map_err(|e| e.to_string())?;
    for line in io.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value: u64 = value.trim().parse().unwrap_or(0);
        match key {
            "write_bytes" => stats.write_bytes = value,
            "cancelled_write_bytes" => stats.cancelled_write_bytes = value,
            _ => {}
        }
    }
    Ok(stats)
}

fn main() {
    if !common::bench_mode() {
        println!("relay: skipped; run it with `cargo bench --bench relay`");
        return;
    }
    if let Err(e) = run() {
        eprintln!("relay: {e}");
        std::process::exit(1);
    }
}

/// With ROUTE=1, the same sink as a `[[route]]` for every domain, to
/// measure what routing costs (the config's last section is
/// `[delivery]`, so the route follows it).
fn catch_all_route(sink_port: u16) -> String {
    if std::env::var("ROUTE").is_ok_and(|v| v == "1") {
        format!(
            "[[route]]\ndomains = [\"*\"]\ntarget = \"smtp://127.0.0.1:{sink_port}\"\n\
             tls = \"none\"\n"
        )
    } else {
        String::new()
    }
}

/// Context switches per message by kind of thread since the load began
/// (a thread that started after it counts whole; threads that ended are
/// missing), voluntary + preempted, and the total.
fn switch_rows(
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
    nf: f64,
    row: &dyn Fn(&str, String),
) {
    let per_msg = |n: u64| n as f64 / nf;
    let mut total = 0;
    for (kind, &(voluntary, preempted)) in after {
        let (v0, p0) = before.get(kind).copied().unwrap_or_default();
        let (v, p) = (voluntary.saturating_sub(v0), preempted.saturating_sub(p0));
        total += v + p;
        if v + p > 0 {
            row(
                &format!("  switches/msg, {kind}"),
                format!("{:.2} + {:.2}", per_msg(v), per_msg(p)),
            );
        }
    }
    row(
        "daemon context switches per message",
        format!("{:.1}", per_msg(total)),
    );
}

fn run() -> Result<(), String> {
    let n = env_num("N", 5000)?;
    let size = env_num("S", 4096)?;
    let sessions = env_num("K", 20)?;
    let workers = env_num("WORKERS", 20)?;
    let limit = Duration::from_secs(env_num("RELAY_TIMEOUT", 300)?);
    let binary = std::env::var_os("MAILQUEUE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_mailqueue")));
    if !binary.is_file() {
        return Err(format!("{} does not exist", binary.display()));
    }
    let sink_bin = tool("smtp-sink")?;
    let source_bin = tool("smtp-source")?;

    let dir = tempfile::tempdir_in(common::tmp_root()).map_err(|e| e.to_string())?;
    let spool = dir.path().join("spool");
    let sink_out = dir.path().join("sink.out");
    let source_out = dir.path().join("source.out");
    let log = dir.path().join("daemon.log");
    let config = dir.path().join("mailqueue.toml");
    let sink_port = free_port()?;
    let port = free_port()?;
    let create = |p: &Path| File::create(p).map_err(|e| format!("{}: {e}", p.display()));

    let mut children = Children(Vec::new());

    // The sink: counts messages ("-c"), keeps nothing.
    let mut sink = Command::new(&sink_bin);
    sink.arg("-c");
    if is_root() {
        // smtp-sink refuses to keep root privileges.
        sink.args(["-u", "nobody"]);
    }
    let sink = sink
        .arg(format!("127.0.0.1:{sink_port}"))
        .arg("256")
        .stdin(Stdio::null())
        .stdout(create(&sink_out)?)
        .stderr(create(&dir.path().join("sink.err"))?)
        .spawn()
        .map_err(|e| format!("cannot start smtp-sink: {e}"))?;
    let sink = children.push(sink);
    wait_for_banner(
        sink_port,
        &mut children.0[sink],
        "smtp-sink",
        Duration::from_secs(10),
    )?;

    fs::write(
        &config,
        common::daemon_toml(
            &spool,
            workers,
            port,
            sink_port,
            &format!("max_connections = {}\n", (sessions + 16).max(64)),
            &format!(
                "connection_cache_time = \"{}\"\n{}",
                std::env::var("CONNECTION_CACHE_TIME").unwrap_or_else(|_| "5s".into()),
                catch_all_route(sink_port)
            ),
        ),
    )
    .map_err(|e| e.to_string())?;
    let log_file = create(&log)?;
    let daemon = Command::new(&binary)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
        .stderr(log_file)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let pid = daemon.id();
    let daemon = children.push(daemon);
    wait_for_banner(
        port,
        &mut children.0[daemon],
        "mailqueue",
        Duration::from_secs(30),
    )
    .map_err(|e| format!("{e}\n{}", tail_of(&log, 20)))?;

    let before = proc_stats(pid)?;
    let switches_before = common::context_switches(pid);
    let t0 = Instant::now();
    let deadline = t0 + limit;
    let source = Command::new(&source_bin)
        .args(["-m", &n.to_string(), "-s", &sessions.to_string()])
        .args(["-l", &size.to_string()])
        .args(["-f", "from@example.org", "-t", "to@example.org"])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(create(&source_out)?)
        .stderr(create(&dir.path().join("source.err"))?)
        .spawn()
        .map_err(|e| format!("cannot start smtp-source: {e}"))?;
    let source = children.push(source);

    let mut accepted: Option<Duration> = None;
    let mut drained: Option<Duration> = None;
    while accepted.is_none() || drained.is_none() {
        if Instant::now() > deadline {
            return Err(format!(
                "not done after {limit:?}: smtp-source {}, sink has {} of {n}\n{}",
                if accepted.is_some() {
                    "finished"
                } else {
                    "still sending"
                },
                sink_count(&sink_out),
                tail_of(&log, 20)
            ));
        }
        if accepted.is_none() {
            if let Ok(Some(status)) = children.0[source].try_wait() {
                accepted = Some(t0.elapsed());
                if !status.success() {
                    return Err(format!(
                        "smtp-source failed ({status}):\n{}\n{}",
                        tail_of(&dir.path().join("source.err"), 10),
                        tail_of(&log, 20)
                    ));
                }
            }
        }
        if drained.is_none() && sink_count(&sink_out) >= n {
            drained = Some(t0.elapsed());
        }
        sleep(POLL);
    }
    let (accepted, drained) = (accepted.unwrap_or_default(), drained.unwrap_or_default());

    // The last deliveries remove their files just after the sink's reply.
    let queue_dir = spool.join("queue");
    while count_entries(&queue_dir) != 0 && Instant::now() < deadline {
        sleep(POLL);
    }
    let emptied = t0.elapsed();
    let left = count_entries(&queue_dir);
    let after = proc_stats(pid)?;
    let switches = common::context_switches(pid);
    // The daemon's own count of how late attempts started.
    let lag = Command::new(&binary)
        .arg("--config")
        .arg(&config)
        .args(["stats", "--json"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .ok_or("mailqueue stats --json gave no answer")?;
    let lag_ms = |key: &str| {
        key.split('.')
            .try_fold(&lag, |v, k| v.get(k))
            .and_then(|v| v.as_u64())
            .map(|us| format!("{:.2} ms", us as f64 / 1000.0))
            .unwrap_or_else(|| "?".into())
    };

    // Stop the daemon as an operator would, then the sink.
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let stop_deadline = Instant::now() + Duration::from_secs(40);
    let mut clean_exit = false;
    while Instant::now() < stop_deadline {
        if let Ok(Some(status)) = children.0[daemon].try_wait() {
            clean_exit = status.success();
            break;
        }
        sleep(Duration::from_millis(20));
    }
    let received = sink_count(&sink_out);
    drop(children);

    let log_text = fs::read_to_string(&log).unwrap_or_default();
    let count = |what: &str| log_text.lines().filter(|l| l.contains(what)).count();
    let ticks = clock_ticks();
    let cpu = (after.cpu_ticks - before.cpu_ticks) as f64 / ticks;
    let written = after.write_bytes - before.write_bytes;
    let cancelled = after.cancelled_write_bytes - before.cancelled_write_bytes;
    let nf = n as f64;

    println!();
    println!("relay: N={n} messages of S={size} bytes over K={sessions} connections; workers={workers}; fsync on");
    println!(
        "       {} -> 127.0.0.1:{port} -> smtp-sink 127.0.0.1:{sink_port}",
        binary.display()
    );
    println!("  {:<40} {:>14}", "metric", "value");
    let row = |name: &str, value: String| println!("  {name:<40} {value:>14}");
    row(
        "accept time (smtp-source done)",
        format!("{:.2} s", accepted.as_secs_f64()),
    );
    row(
        "accept rate",
        format!("{:.0} msg/s", nf / accepted.as_secs_f64()),
    );
    row(
        "drain time (sink has all N)",
        format!("{:.2} s", drained.as_secs_f64()),
    );
    row(
        "throughput (N / drain time)",
        format!("{:.0} msg/s", nf / drained.as_secs_f64()),
    );
    row(
        "spool empty after",
        format!("{:.2} s", emptied.as_secs_f64()),
    );
    row("daemon CPU (user+system)", format!("{cpu:.2} s"));
    row(
        "daemon CPU per message",
        format!("{:.3} ms", cpu * 1000.0 / nf),
    );
    switch_rows(&switches_before, &switches, nf, &row);
    row(
        "daemon peak RSS (VmHWM)",
        format!("{:.1} MB", after.peak_rss_kb as f64 / 1024.0),
    );
    row(
        "daemon bytes written per message",
        format!("{:.0} B", written as f64 / nf),
    );
    row(
        "  of which cancelled (deleted unwritten)",
        format!("{:.0} B", cancelled as f64 / nf),
    );
    row(
        "scheduling lag p50 / p99 / max",
        format!(
            "{} / {} / {}",
            lag_ms("lag_p50_us"),
            lag_ms("lag_p99_us"),
            lag_ms("lag_max_us")
        ),
    );
    row(
        "  over the last minute",
        format!(
            "{} / {} / {}",
            lag_ms("lag_1m.p50_us"),
            lag_ms("lag_1m.p99_us"),
            lag_ms("lag_1m.max_us")
        ),
    );
    row("sink received", format!("{received}"));
    row(
        "log: sent / deferred / bounced",
        format!(
            "{} / {} / {}",
            count("status=sent"),
            count("status=deferred"),
            count("status=bounced")
        ),
    );
    if left != 0 || !clean_exit || received < n {
        return Err(format!(
            "unclean run: {left} spool files left, daemon exit clean: {clean_exit}, sink received {received} of {n}"
        ));
    }
    Ok(())
}
