//! tests/peers/faulty_sink.py: an SMTP sink with seeded random faults that
//! records every message it accepted, and the daemon-side helpers the
//! reliability tests share (restarting on a spool, reading the log as it
//! grows, process figures from /proc).

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::daemon::{dot_stuff, spawn_serve, wait_child, Client};
use super::peers::{start_python_peer, Reaper};

const START_LIMIT: Duration = Duration::from_secs(15);

/// Panics naming python3 when it cannot run the sink (it needs nothing
/// beyond the standard library).
pub fn require_python3() {
    let ok = Command::new("python3")
        .args(["-c", "import socketserver, json, random"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "missing test peer: python3 (Debian package python3; tests/run.sh installs the peers)"
    );
}

/// A running faulty_sink.py; killed on drop.
pub struct FaultySink {
    _child: Reaper,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl FaultySink {
    /// Starts the sink with command-line options (see the script).
    pub fn start(args: &[&str]) -> FaultySink {
        require_python3();
        let (child, port, dir) = start_python_peer("faulty_sink.py", "the faulty sink", args);
        FaultySink {
            _child: child,
            port,
            dir,
        }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message accepted so far (see the script for the fields).
    pub fn deliveries(&self) -> Vec<Value> {
        read_jsonl(&self.dir.path().join("deliveries.jsonl"))
    }

    /// Every fault injected so far.
    pub fn events(&self) -> Vec<Value> {
        read_jsonl(&self.dir.path().join("events.jsonl"))
    }

    /// Lines in deliveries.jsonl, without parsing them.
    pub fn count(&self) -> usize {
        fs::read(self.dir.path().join("deliveries.jsonl"))
            .map(|b| b.iter().filter(|&&c| c == b'\n').count())
            .unwrap_or(0)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("faulty_sink.py.log")).unwrap_or_default()
    }
}

/// Complete JSON lines of a file being appended to.
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |i| &text[..i]);
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{path:?}: {e}: {l}")))
        .collect()
}

/// Seconds since the epoch, as the sink's time.time() gives them.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Reads a log file from where the last call stopped.
pub struct LogTail {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl LogTail {
    /// Starts at the current end of the file.
    pub fn at_end(path: &Path) -> LogTail {
        let offset = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        LogTail {
            path: path.to_path_buf(),
            offset,
            partial: String::new(),
        }
    }

    /// The complete lines written since the last call.
    pub fn lines(&mut self) -> Vec<String> {
        let Ok(mut f) = fs::File::open(&self.path) else {
            return Vec::new();
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut bytes = Vec::new();
        let _ = f.read_to_end(&mut bytes);
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let Some(end) = self.partial.rfind('\n') else {
            return Vec::new();
        };
        let done: String = self.partial.drain(..=end).collect();
        done.lines().map(String::from).collect()
    }
}

/// Starts `mailqueue serve` again on an existing config and spool (its
/// stderr appended to `<dir>/stderr.log`) and waits until it listens on
/// `port`. Panics with the new log lines when it does not come up.
pub fn restart(config: &Path, dir: &Path, port: u16) -> Reaper {
    let log = dir.join("stderr.log");
    let mut tail = LogTail::at_end(&log);
    let mut child = Reaper(spawn_serve(config, dir, "info"));
    let needle = format!("listening for SMTP on 127.0.0.1:{port}");
    let end = Instant::now() + START_LIMIT;
    let mut seen = Vec::new();
    while Instant::now() < end {
        let lines = tail.lines();
        if lines.iter().any(|l| l.contains(&needle)) {
            return child;
        }
        seen.extend(lines);
        if wait_child(&mut child.0, Duration::ZERO).is_some() {
            seen.extend(tail.lines());
            panic!("mailqueue serve exited at start:\n{}", seen.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!(
        "mailqueue serve not listening after restart:\n{}",
        seen.join("\n")
    );
}

/// Resident memory of a process in KiB (VmRSS in /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("no /proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("no VmRSS line")
}

/// Open file descriptors of a process (entries of /proc/<pid>/fd).
pub fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("cannot read /proc/<pid>/fd")
        .count()
}

/// Threads of a process (entries of /proc/<pid>/task).
pub fn threads(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The daemon's status lines, parsed: `<id>: to=<rcpt>, relay=...,
/// tries=N, delay=..., status=S (reply)`.
#[derive(Debug, Clone)]
pub struct StatusLine {
    pub id: String,
    pub rcpt: String,
    pub tries: u32,
    pub status: String,
    pub reply: String,
}

/// A log field as the daemon wrote it, with its escapes (`\\`, `\xNN`,
/// `\u{N}`) undone: the text the notice carries as it is.
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        let (c, used) = if tail.starts_with('\\') {
            (Some('\\'), 1)
        } else if let Some(hex) = tail.strip_prefix('x').and_then(|t| t.get(..2)) {
            (
                u32::from_str_radix(hex, 16).ok().and_then(char::from_u32),
                3,
            )
        } else if let Some(t) = tail.strip_prefix("u{") {
            let end = t.find('}').unwrap_or(0);
            let c = u32::from_str_radix(&t[..end], 16)
                .ok()
                .and_then(char::from_u32);
            (c, end + 3)
        } else {
            (None, 0)
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &tail[used..];
            }
            None => {
                out.push('\\');
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

impl StatusLine {
    pub fn parse(line: &str) -> Option<StatusLine> {
        let at = line.find(": to=<")?;
        let id = line[..at].rsplit(' ').next()?.to_string();
        let rest = &line[at + ": to=<".len()..];
        let (rcpt, rest) = rest.split_once(">, relay=")?;
        let tries = rest
            .split_once(", tries=")?
            .1
            .split(',')
            .next()?
            .parse()
            .ok()?;
        let status_at = rest.find(", status=")? + ", status=".len();
        let tail = &rest[status_at..];
        let (status, reply) = match tail.split_once(' ') {
            Some((s, r)) => {
                let r = r.trim();
                let inner = r.strip_prefix('(').and_then(|r| r.strip_suffix(')'));
                (s, inner.unwrap_or(r))
            }
            None => (tail.trim(), ""),
        };
        Some(StatusLine {
            id,
            rcpt: rcpt.to_string(),
            tries,
            status: status.to_string(),
            reply: unescape(reply),
        })
    }

    /// The reply code, e.g. 451.
    pub fn code(&self) -> u16 {
        self.reply
            .get(..3)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }
}

/// Kills a child's process with SIGKILL and reaps it.
pub fn kill_now(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A message the daemon acknowledged with `250 ... queued as <id>`.
#[derive(Debug, Clone)]
pub struct Acked {
    pub seq: u64,
    pub id: String,
    pub rcpts: Vec<String>,
}

/// Recipients of message number `seq`.
pub type RcptsOf = Arc<dyn Fn(u64) -> Vec<String> + Send + Sync>;

/// The text of message number `seq`: X-Seq and Message-ID name it;
/// sizes vary from about 300 bytes to 6 KB.
pub fn load_message(seq: u64) -> Vec<u8> {
    let mut m = format!(
        "From: <sender@example.org>\r\nTo: <rcpt@example.net>\r\nSubject: load {seq}\r\n\
         X-Seq: {seq}\r\nMessage-ID: <seq-{seq}@load.test>\r\n\r\n"
    );
    for line in 0..(seq * 7919 % 100) {
        m.push_str(&format!(
            "line {line} of message {seq}: {}\r\n",
            "x".repeat(40)
        ));
    }
    m.push_str(".a line that starts with a dot\r\n");
    m.into_bytes()
}

/// SMTP load: client threads sending numbered messages, several per
/// connection, tolerating a daemon that dies and comes back.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    acked: Arc<Mutex<Vec<Acked>>>,
    next: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
}

impl Load {
    /// Starts `clients` threads sending messages numbered 0 up to
    /// `limit` (exclusive) to `addr`, `per_connection` per session, each
    /// client pausing `pace` after each message.
    pub fn start(
        addr: SocketAddr,
        clients: usize,
        limit: u64,
        per_connection: usize,
        pace: Duration,
        rcpts: RcptsOf,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|_| {
                let (stop, acked, next, refused, rcpts) = (
                    Arc::clone(&stop),
                    Arc::clone(&acked),
                    Arc::clone(&next),
                    Arc::clone(&refused),
                    Arc::clone(&rcpts),
                );
                std::thread::spawn(move || {
                    client_loop(
                        addr,
                        limit,
                        per_connection,
                        pace,
                        &stop,
                        &acked,
                        &next,
                        &refused,
                        &*rcpts,
                    )
                })
            })
            .collect();
        Load {
            stop,
            threads,
            acked,
            next,
            refused,
        }
    }

    /// Messages acknowledged so far.
    pub fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Message numbers handed out so far (sent or tried).
    pub fn tried(&self) -> u64 {
        self.next.load(Ordering::SeqCst)
    }

    /// Transactions answered with something else than 250 (e.g. 4xx
    /// while the daemon stops).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    /// True when every client thread has ended (the limit was reached).
    pub fn finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// Stops the clients (after their current message) and returns what
    /// was acknowledged.
    pub fn stop(mut self) -> Vec<Acked> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            t.join().expect("a load client panicked");
        }
        let mut v = std::mem::take(&mut *self.acked.lock().unwrap());
        v.sort_by_key(|a| a.seq);
        v
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[allow(clippy::too_many_arguments)]
fn client_loop(
    addr: SocketAddr,
    limit: u64,
    per_connection: usize,
    pace: Duration,
    stop: &AtomicBool,
    acked: &Mutex<Vec<Acked>>,
    next: &AtomicU64,
    refused: &AtomicU64,
    rcpts: &(dyn Fn(u64) -> Vec<String> + Send + Sync),
) {
    while !stop.load(Ordering::SeqCst) {
        let Ok(mut c) = Client::connect(addr) else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        if !matches!(cmd(&mut c, "EHLO load.test"), Ok(250)) {
            continue;
        }
        for _ in 0..per_connection {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let seq = next.fetch_add(1, Ordering::SeqCst);
            if seq >= limit {
                stop.store(true, Ordering::SeqCst);
                break;
            }
            let to = rcpts(seq);
            match send_one(&mut c, seq, &to) {
                Ok(Some(id)) => acked.lock().unwrap().push(Acked { seq, id, rcpts: to }),
                Ok(None) => {
                    refused.fetch_add(1, Ordering::SeqCst);
                    let _ = cmd(&mut c, "RSET");
                }
                // The connection broke (the daemon died): a new one.
                Err(_) => break,
            }
            if !pace.is_zero() {
                std::thread::sleep(pace);
            }
        }
        let _ = c.io.get_mut().write_all(b"QUIT\r\n");
    }
}

fn cmd(c: &mut Client, line: &str) -> std::io::Result<u16> {
    c.io.get_mut().write_all(format!("{line}\r\n").as_bytes())?;
    Ok(c.try_reply()?.code)
}

/// One transaction; `Some(id)` when acknowledged, `None` when refused.
fn send_one(c: &mut Client, seq: u64, to: &[String]) -> std::io::Result<Option<String>> {
    if cmd(c, "MAIL FROM:<sender@example.org>")? != 250 {
        return Ok(None);
    }
    let mut any = false;
    for r in to {
        any |= cmd(c, &format!("RCPT TO:<{r}>"))? == 250;
    }
    if !any || cmd(c, "DATA")? != 354 {
        return Ok(None);
    }
    c.io.get_mut().write_all(&dot_stuff(&load_message(seq)))?;
    let r = c.try_reply()?;
    if r.code != 250 {
        return Ok(None);
    }
    Ok(r.lines[0]
        .strip_prefix("2.0.0 Ok: queued as ")
        .map(|id| id.trim().to_string()))
}
