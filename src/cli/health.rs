//! `mailqueue health`: a check for monitoring systems. One line per
//! check, and the exit code of a Nagios plugin: 0 OK, 1 WARNING,
//! 2 CRITICAL (the worst check wins).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use mailqueue::config::{format_duration, Config};
use mailqueue::queue::spool::layout;

use super::control::{self, ControlError, Request};

/// A check's verdict, in increasing gravity; its value is the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Fine.
    Ok = 0,
    /// Look at it soon.
    Warning = 1,
    /// Mail is not flowing, or will not for long.
    Critical = 2,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warning => "WARNING",
            Status::Critical => "CRITICAL",
        }
    }
}

/// Runs every check, prints one line per check, returns the exit code.
pub fn run(config: &Config, corrupt_within: Duration) -> u8 {
    let spool = &config.spool;
    let checks = [
        ("daemon", daemon(spool)),
        ("spool", writable(spool)),
        ("free space", free_space(spool, config.queue.min_free_bytes)),
        ("quarantine", quarantine(spool, corrupt_within)),
    ];
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut worst = Status::Ok;
    for (name, (status, text)) in &checks {
        let _ = writeln!(out, "{} {name}: {text}", status.word());
        worst = worst.max(*status);
    }
    worst as u8
}

type Verdict = (Status, String);

/// The daemon is up when its control socket answers.
fn daemon(spool: &Path) -> Verdict {
    match control::request(spool, &Request::Stats) {
        Ok(r) => match r.stats.filter(|s| s.loading) {
            Some(s) => (
                Status::Ok,
                format!(
                    "running (the control socket answers); loading the spool: \
                     {} messages loaded, {} to read",
                    s.loaded, s.to_load
                ),
            ),
            None => (Status::Ok, "running (the control socket answers)".into()),
        },
        Err(ControlError::NoDaemon) => (Status::Critical, "not running".into()),
        Err(e) => (Status::Critical, format!("not answering: {e}")),
    }
}

/// A file can be created, written, synced and removed in `<spool>/tmp/`.
fn writable(spool: &Path) -> Verdict {
    let dir = layout::tmp(spool);
    let path = dir.join(format!(".health-{}", std::process::id()));
    let attempt = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut f| {
            let written = f.write_all(b"health\n").and_then(|()| f.sync_data());
            let removed = std::fs::remove_file(&path);
            written.and(removed)
        });
    match attempt {
        Ok(()) => (Status::Ok, format!("{} is writable", spool.display())),
        Err(e) => (
            Status::Critical,
            format!("cannot write in {}: {e}", dir.display()),
        ),
    }
}

/// Free space against `min_free_bytes`: below it new mail is refused
/// (critical); below twice it, a warning.
fn free_space(spool: &Path, min_free: u64) -> Verdict {
    let free = match fs2::available_space(spool) {
        Ok(f) => f,
        Err(e) => return (Status::Critical, format!("cannot tell: {e}")),
    };
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0));
    let text = format!("{} free, min_free_bytes {}", mib(free), mib(min_free));
    if free < min_free {
        (Status::Critical, format!("{text}: new mail is refused"))
    } else if free < min_free.saturating_mul(2) {
        (Status::Warning, text)
    } else {
        (Status::Ok, text)
    }
}

/// Files quarantined in `<spool>/corrupt/` within `within`, by their
/// change time (a move there sets it; the modification time stays the
/// file's own).
fn quarantine(spool: &Path, within: Duration) -> Verdict {
    use std::os::unix::fs::MetadataExt;
    let dir = layout::corrupt(spool);
    let since = SystemTime::now()
        .checked_sub(within)
        .unwrap_or(SystemTime::UNIX_EPOCH)
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return (Status::Ok, "nothing quarantined".into())
        }
        Err(e) => {
            return (
                Status::Warning,
                format!("cannot read {}: {e}", dir.display()),
            )
        }
    };
    let (mut recent, mut total) = (0, 0);
    for entry in entries.flatten() {
        total += 1;
        if entry.metadata().is_ok_and(|m| m.ctime() >= since) {
            recent += 1;
        }
    }
    let within = format_duration(within);
    if recent > 0 {
        (
            Status::Warning,
            format!(
                "{recent} file(s) quarantined in the last {within} in {} (the log says why)",
                dir.display()
            ),
        )
    } else {
        (
            Status::Ok,
            format!("none in the last {within} ({total} older)"),
        )
    }
}
