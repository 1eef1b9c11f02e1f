//! The load and the sink of the daemon benches: Postfix's `smtp-source`
//! and `smtp-sink`, and what is read off them.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Finds one of Postfix's test tools.
pub fn tool(name: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!("{name} not found: install Debian's postfix package (it brings smtp-sink and smtp-source)")
        })
}

pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Waits until a server on `port` greets with 220, while `child` lives.
pub fn wait_for_banner(
    port: u16,
    child: &mut Child,
    what: &str,
    limit: Duration,
) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} exited at start: {status}"));
        }
        if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut line = String::new();
            let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
            if reader.read_line(&mut line).is_ok() && line.starts_with("220") {
                let _ = stream.write_all(b"QUIT\r\n");
                let _ = reader.read_line(&mut line);
                return Ok(());
            }
        }
        sleep(Duration::from_millis(20));
    }
    Err(format!(
        "{what} did not greet on port {port} within {limit:?}"
    ))
}

/// The sink's message counter: the last `mesg=N` its `-c` option printed.
pub fn sink_count(out: &Path) -> u64 {
    let Ok(mut file) = File::open(out) else {
        return 0;
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(128)));
    let mut tail = String::new();
    let _ = file.read_to_string(&mut tail);
    tail.rsplit_once("mesg=")
        .map(|(_, rest)| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|digits| digits.parse().ok())
        .unwrap_or(0)
}

pub fn count_entries(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(usize::MAX)
}

pub fn tail_of(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Context switches of a process's live threads by kind of thread (the
/// thread's name without a trailing `-<n>`; the kernel keeps 15 bytes of
/// it), voluntary (the thread waited: a read, a sync, a lock, a channel)
/// and not (it was preempted), from `/proc/<pid>/task/*`. Threads that
/// have exited are not counted.
pub fn context_switches(pid: u32) -> BTreeMap<String, (u64, u64)> {
    let mut by_kind = BTreeMap::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_kind;
    };
    for task in tasks.flatten() {
        let (Ok(comm), Ok(status)) = (
            fs::read_to_string(task.path().join("comm")),
            fs::read_to_string(task.path().join("status")),
        ) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let comm = comm.trim();
        let kind = match comm.rsplit_once('-') {
            Some((kind, n)) if n.bytes().all(|b| b.is_ascii_digit()) => kind,
            _ => comm,
        };
        let e = by_kind.entry(kind.to_string()).or_insert((0, 0));
        e.0 += field("voluntary_ctxt_switches:");
        e.1 += field("nonvoluntary_ctxt_switches:");
    }
    by_kind
}
