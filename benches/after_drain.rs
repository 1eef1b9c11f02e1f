//! After-drain benchmark: what new mail costs right after the daemon has
//! delivered a large backlog, against what it costs on a quiet spool.
//! Removing 10^5 files used to make each new file dearer for a while (ext4
//! scans recently freed inodes when it allocates one); recycled message
//! files should make the two costs alike.
//!
//! 1. **steady**: the release daemon on an empty spool relays `N` messages
//!    of `S` bytes from `smtp-source` (`K` connections) to `smtp-sink`;
//!    its CPU time per message.
//! 2. **drain**: the daemon stopped, the spool is filled with `DRAIN`
//!    messages already due; the daemon is started and delivers them all
//!    (the drain rate is reported).
//! 3. **after**: at once, the same `N` relayed again; CPU per message, and
//!    the ratio to the steady figure (target: at most 1.5).
//!
//! ```sh
//! cargo bench --bench after_drain                 # DRAIN=100000, N=5000, S=4096, K=20
//! DRAIN=20000 N=2000 cargo bench --bench after_drain
//! ```
//!
//! `MAILQUEUE_BIN` runs another binary; `BENCH_TMPDIR` moves the spool.
//! Every wait is bounded (`AFTER_DRAIN_TIMEOUT`, seconds per phase,
//! default 600); everything started is stopped at the end, also on failure.

mod common;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{count_entries, env_num, free_port, sink_count, tail_of, tool, Children};
use mailqueue::queue::meta::Timestamp;
use mailqueue::queue::spool::Spool;

const POLL: Duration = Duration::from_millis(10);

struct Settings {
    drain: u64,
    n: u64,
    size: u64,
    sessions: u64,
    limit: Duration,
    binary: PathBuf,
}

/// The spool, the sink and the files of one run.
struct Bench {
    s: Settings,
    dir: tempfile::TempDir,
    sink_port: u16,
    children: Children,
}

fn main() {
    if !common::bench_mode() {
        println!("after_drain: skipped; run it with `cargo bench --bench after_drain`");
        return;
    }
    if let Err(e) = run() {
        eprintln!("after_drain: {e}");
        std::process::exit(1);
    }
}

fn settings() -> Result<Settings, String> {
    let binary = std::env::var_os("MAILQUEUE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_mailqueue")));
    if !binary.is_file() {
        return Err(format!("{} does not exist", binary.display()));
    }
    Ok(Settings {
        drain: env_num("DRAIN", 100_000)?,
        n: env_num("N", 5000)?,
        size: env_num("S", 4096)?,
        sessions: env_num("K", 20)?,
        limit: Duration::from_secs(env_num("AFTER_DRAIN_TIMEOUT", 600)?),
        binary,
    })
}

fn run() -> Result<(), String> {
    let mut b = Bench::new(settings()?)?;
    let steady = b.relay_phase("steady")?;
    let drained = b.drain_phase()?;
    let after = b.relay_phase("after")?;
    let s = &b.s;
    println!();
    println!(
        "after_drain: N={} messages of S={} bytes over K={} connections; backlog DRAIN={}; fsync on",
        s.n, s.size, s.sessions, s.drain
    );
    println!("  {:<44} {:>12}", "metric", "value");
    let row = |name: &str, value: String| println!("  {name:<44} {value:>12}");
    row("steady: CPU per message", format!("{steady:.3} ms"));
    row(
        "backlog drained at",
        format!("{:.0} msg/s", s.drain as f64 / drained.as_secs_f64()),
    );
    row(
        "right after the drain: CPU per message",
        format!("{after:.3} ms"),
    );
    row(
        "after / steady (target <= 1.5)",
        format!("{:.2}", after / steady),
    );
    Ok(())
}

impl Bench {
    fn new(s: Settings) -> Result<Bench, String> {
        let dir = tempfile::tempdir_in(common::tmp_root()).map_err(|e| e.to_string())?;
        let sink_port = free_port()?;
        let mut children = Children(Vec::new());
        let mut sink = Command::new(tool("smtp-sink")?);
        sink.arg("-c");
        if common::is_root() {
            // smtp-sink refuses to keep root privileges.
            sink.args(["-u", "nobody"]);
        }
        let sink = sink
            .arg(format!("127.0.0.1:{sink_port}"))
            .arg("256")
            .stdin(Stdio::null())
            .stdout(create(&dir.path().join("sink.out"))?)
            .stderr(create(&dir.path().join("sink.err"))?)
            .spawn()
            .map_err(|e| format!("cannot start smtp-sink: {e}"))?;
        let at = children.push(sink);
        common::wait_for_banner(
            sink_port,
            &mut children.0[at],
            "smtp-sink",
            Duration::from_secs(10),
        )?;
        Ok(Bench {
            s,
            dir,
            sink_port,
            children,
        })
    }

    fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    fn received(&self) -> u64 {
        sink_count(&self.dir.path().join("sink.out"))
    }

    /// Starts the daemon; returns its pid and config once it greets.
    fn start_daemon(&mut self) -> Result<(u32, PathBuf, u16), String> {
        let port = free_port()?;
        let config = self.dir.path().join("mailqueue.toml");
        let toml = common::daemon_toml(
            &self.spool(),
            20,
            port,
            self.sink_port,
            &format!("max_connections = {}\n", (self.s.sessions + 16).max(64)),
            "",
        );
        fs::write(&config, toml).map_err(|e| e.to_string())?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .map_err(|e| e.to_string())?;
        let daemon = Command::new(&self.s.binary)
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.s.binary.display()))?;
        let pid = daemon.id();
        let at = self.children.push(daemon);
        common::wait_for_banner(
            port,
            &mut self.children.0[at],
            "mailqueue",
            Duration::from_secs(60),
        )
        .map_err(|e| format!("{e}\n{}", tail_of(&self.log(), 20)))?;
        Ok((pid, config, port))
    }

    /// Stops the daemon with SIGTERM and waits for it.
    fn stop_daemon(&mut self, pid: u32) -> Result<(), String> {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let child: &mut Child = self
            .children
            .0
            .iter_mut()
            .find(|c| c.id() == pid)
            .ok_or("no such daemon")?;
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return Ok(());
            }
            sleep(Duration::from_millis(20));
        }
        Err("the daemon did not stop within 40 s".into())
    }

    /// Relays N messages through a daemon started for it; its CPU time
    /// per message in ms.
    fn relay_phase(&mut self, label: &str) -> Result<f64, String> {
        let (pid, _config, port) = self.start_daemon()?;
        let want = self.received() + self.s.n;
        let before = common::proc_mem_cpu(pid)?.cpu_ticks;
        let source = Command::new(tool("smtp-source")?)
            .args([
                "-m",
                &self.s.n.to_string(),
                "-s",
                &self.s.sessions.to_string(),
            ])
            .args(["-l", &self.s.size.to_string()])
            .args(["-f", "from@example.org", "-t", "to@example.org"])
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(create(&self.dir.path().join("source.err"))?)
            .spawn()
            .map_err(|e| format!("cannot start smtp-source: {e}"))?;
        self.children.push(source);
        self.wait_delivered(label, want)?;
        let cpu = common::proc_mem_cpu(pid)?.cpu_ticks - before;
        self.stop_daemon(pid)?;
        Ok(cpu as f64 / common::clock_ticks() * 1000.0 / self.s.n as f64)
    }

    /// Until the sink has `want` messages and the queue is empty.
    fn wait_delivered(&self, label: &str, want: u64) -> Result<(), String> {
        let deadline = Instant::now() + self.s.limit;
        let queue = self.spool().join("queue");
        while self.received() < want || count_entries(&queue) != 0 {
            if Instant::now() > deadline {
                return Err(format!(
                    "{label}: not done after {:?}: the sink has {} of {want}\n{}",
                    self.s.limit,
                    self.received(),
                    tail_of(&self.log(), 20)
                ));
            }
            sleep(POLL);
        }
        Ok(())
    }

    /// Fills the spool with the backlog, starts the daemon and waits until
    /// it has delivered it all; the time that took.
    fn drain_phase(&mut self) -> Result<Duration, String> {
        let spool = Spool::open(&self.spool()).map_err(|e| e.to_string())?;
        let due = Timestamp(Timestamp::now().0.saturating_sub(60_000));
        common::fill_spool(&spool, self.s.drain as usize, &body(), due);
        drop(spool);
        let synced = Command::new("sync").arg("-f").arg(self.spool()).status();
        if !synced.is_ok_and(|s| s.success()) {
            return Err("sync -f of the spool failed".into());
        }
        let want = self.received() + self.s.drain;
        let t = Instant::now();
        let (pid, _, _) = self.start_daemon()?;
        self.wait_delivered("drain", want)?;
        let took = t.elapsed();
        self.stop_daemon(pid)?;
        Ok(took)
    }
}

fn create(p: &Path) -> Result<File, String> {
    File::create(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// A 1 KiB message for the backlog.
fn body() -> Vec<u8> {
    let mut b = b"From: <newsletter@lists.example.org>\r\nTo: <subscriber@example.net>\r\n\
Subject: backlog\r\nDate: Mon, 2 Jun 2025 09:00:00 +0000\r\n\
Message-ID: <backlog@lists.example.org>\r\n\r\n"
        .to_vec();
    while b.len() < 1024 {
        b.extend_from_slice(b"Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n");
    }
    b
}
