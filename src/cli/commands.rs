//! The operator's commands (`list`, `show`, `flush`, `hold`, `release`,
//! `delete`, `expire`): through the daemon's control socket when a daemon
//! runs, directly on the spool under the same locks when none does; and
//! `stats`, whose live counters only a running daemon has (without one it
//! reads the queue's size and oldest age from the spool).

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

use mailqueue::config::Config;
use mailqueue::queue::admin::Admin;
use mailqueue::queue::meta::Timestamp;
use mailqueue::queue::recent_lag::LagWindow;
use mailqueue::queue::spool::{layout, Spool};
use mailqueue::queue::stats::StatsSnapshot;
use mailqueue::queue::QueueError;
use mailqueue::MessageId;

use super::control::{self, ControlError, Request, Response};
use super::listing::{incoming_json, incoming_table, list_json, list_table, show_text};
use super::metrics::{Shape, STATES};

use super::exit::{FAILED, OK, UNAVAILABLE};

/// How a command's answer is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// For people: a table, `name: value` lines.
    Text,
    /// For scripts: one JSON object per line.
    Json,
}

/// Parses message ids given on the command line.
pub fn parse_ids(ids: &[String]) -> Result<Vec<MessageId>, String> {
    ids.iter()
        .map(|i| i.parse::<MessageId>().map_err(|e| e.to_string()))
        .collect()
}

/// Runs a command through the daemon, or on the spool when none runs;
/// returns the process exit code.
pub fn run(config: &Config, request: Request, format: Format) -> u8 {
    let response = match control::request(&config.spool, &request) {
        Ok(r) => r,
        // The live counters are the daemon's; the spool tells the rest.
        Err(ControlError::NoDaemon) if request == Request::Stats => {
            return spool_stats(config, format);
        }
        Err(ControlError::NoDaemon) => match direct(config, &request) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("mailqueue: {e}");
                return UNAVAILABLE;
            }
        },
        Err(e) => {
            eprintln!("mailqueue: {e}");
            return UNAVAILABLE;
        }
    };
    report(config, &request, format, &response)
}

/// Carries out a request on the spool itself (no daemon running).
fn direct(config: &Config, request: &Request) -> Result<Response, DirectError> {
    if !layout::queue(&config.spool).exists() {
        // Not an empty queue: a wrong --spool or configuration, or a
        // daemon never started. Creating the spool here would hide that.
        return Err(DirectError::NoSpool(config.spool.clone()));
    }
    let spool = Spool::open(&config.spool)?;
    // A queue holding the spool lock may be starting (reading the spool
    // back) with its control socket not up yet: writing to the spool now
    // would race it, so wait for the socket, or for the lock to be free.
    let deadline = Instant::now() + DAEMON_START_WAIT;
    loop {
        if let Some(_lock) = spool.lock_shared()? {
            let mut options = config.queue_options();
            if matches!(request, Request::Expire(_)) {
                // Its notices are signed as the daemon would sign them.
                options.dkim = config.dkim_signer().unwrap_or_else(|e| {
                    eprintln!("mailqueue: warning: {e}; the notices are not signed");
                    Default::default()
                });
            }
            return Ok(control::apply(&Admin::direct(&spool, &options), request));
        }
        match control::request(&config.spool, request) {
            Ok(r) => return Ok(r),
            Err(ControlError::NoDaemon) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(ControlError::NoDaemon) => {
                return Err(DirectError::DaemonNotAnswering {
                    spool: config.spool.clone(),
                    waited: DAEMON_START_WAIT,
                })
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// How long a command waits for a starting daemon's control socket.
const DAEMON_START_WAIT: Duration = Duration::from_secs(10);

/// Why a command could not be carried out without the daemon.
#[derive(Debug, thiserror::Error)]
enum DirectError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("spool {}: no such spool (no queue/ in it): check --spool or the configuration's spool", .0.display())]
    NoSpool(PathBuf),
    #[error("spool {}: a daemon holds it but its control socket did not answer within {}s", spool.display(), waited.as_secs())]
    DaemonNotAnswering { spool: PathBuf, waited: Duration },
}

fn report(config: &Config, request: &Request, format: Format, r: &Response) -> u8 {
    if let Some(e) = &r.error {
        eprintln!("mailqueue: {e}");
        return FAILED;
    }
    for (id, why) in &r.failures {
        eprintln!("mailqueue: {id}: {why}");
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match (request, format) {
        (Request::List { .. }, _) => print_list(&mut out, r, format),
        (Request::Show { body: true, .. }, _) => {
            if let Err(e) = print_body(&mut out, r) {
                eprintln!("mailqueue: bad reply: {e}");
                return FAILED;
            }
        }
        (Request::Show { .. }, _) => {
            if let Some(m) = r.messages.first() {
                let _ = out
                    .write_all(show_text(config, m, r.header.as_deref().unwrap_or("")).as_bytes());
            }
        }
        (Request::Shape { .. }, _) => {
            if let Some(shape) = &r.shape {
                let text = if format == Format::Json {
                    format!("{}\n", serde_json::to_string(shape).unwrap_or_default())
                } else {
                    shape.text()
                };
                let _ = out.write_all(text.as_bytes());
            }
        }
        (Request::Stats, _) => {
            if let Some(s) = &r.stats {
                let _ = out.write_all(stats_text(s, format == Format::Json).as_bytes());
            }
        }
        (
            Request::Flush(_)
            | Request::Hold(_)
            | Request::Release(_)
            | Request::Delete(_)
            | Request::Expire(_)
            | Request::Requeue { .. },
            _,
        ) => {
            if let Some(n) = r.done {
                let _ = writeln!(out, "{}", bulk_line(request, n));
            }
        }
        _ => {}
    }
    if r.ok {
        OK
    } else {
        FAILED
    }
}

/// `list`: the queue, then what is still waiting in `incoming/`.
fn print_list(out: &mut impl Write, r: &Response, format: Format) {
    if format == Format::Json {
        for m in &r.messages {
            let _ = writeln!(out, "{}", list_json(m));
        }
        for f in &r.incoming {
            let _ = writeln!(out, "{}", incoming_json(f));
        }
    } else {
        let _ = out.write_all(list_table(&r.messages).as_bytes());
        let _ = out.write_all(incoming_table(&r.incoming, Timestamp::now()).as_bytes());
    }
}

/// `show --body`: the message as it is queued, byte for byte.
fn print_body(out: &mut impl Write, r: &Response) -> Result<(), base64::DecodeError> {
    if let Some(b) = &r.message_base64 {
        let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b)?;
        let _ = out.write_all(&bytes);
    }
    Ok(())
}

/// What a bulk command did: `Deleted: 31 messages`.
fn bulk_line(request: &Request, n: usize) -> String {
    let verb = match request {
        Request::Flush(_) => "Flushed",
        Request::Hold(_) => "Held",
        Request::Release(_) => "Released",
        Request::Delete(_) => "Deleted",
        Request::Expire(_) => "Expired",
        Request::Requeue { .. } => "Requeued",
        _ => "Done",
    };
    format!("{verb}: {n} message{}", if n == 1 { "" } else { "s" })
}

/// `stats`: one `name: value` line per counter, or one JSON object.
fn stats_text(s: &StatsSnapshot, json: bool) -> String {
    if json {
        return format!("{}\n", serde_json::to_string(s).unwrap_or_default());
    }
    let ms = |us: u64| format!("{:.3} ms", us as f64 / 1000.0);
    let window = |w: &LagWindow| {
        format!(
            "p50 {}, p99 {}, max {} ({} attempts)",
            ms(w.p50_us),
            ms(w.p99_us),
            ms(w.max_us),
            w.attempts
        )
    };
    // Counts of a daemon still reading its spool cover part of it only.
    let loading = if s.loading {
        format!(
            "loading: {} messages loaded, {} to read\n",
            s.loaded, s.to_load
        )
    } else {
        String::new()
    };
    format!(
        "{loading}messages: {}\nbytes: {}\nattempts: {}\nlag p50: {}\nlag p99: {}\nlag max: {}\n\
         lag last 1m: {}\nlag last 15m: {}\n",
        s.messages,
        s.bytes,
        s.attempts,
        ms(s.lag_p50_us),
        ms(s.lag_p99_us),
        ms(s.lag_max_us),
        window(&s.lag_1m),
        window(&s.lag_15m)
    )
}

/// `stats` with no daemon running: the queue's shape read from the spool
/// (under the shared lock, as the other commands without a daemon); the
/// live counters are reported as missing.
fn spool_stats(config: &Config, format: Format) -> u8 {
    let messages = match direct(config, &Request::list_all()) {
        Ok(r) if r.error.is_none() => r.messages,
        Ok(r) => {
            eprintln!("mailqueue: {}", r.error.unwrap_or_default());
            return FAILED;
        }
        Err(e) => {
            eprintln!("mailqueue: {e}");
            return UNAVAILABLE;
        }
    };
    let shape = Shape::of(&messages, Timestamp::now());
    let count: u64 = shape.by_state.iter().map(|s| s.0).sum();
    let bytes: u64 = shape.by_state.iter().map(|s| s.1).sum();
    let text = if format == Format::Json {
        let mut o = json!({
            "daemon": "not running",
            "messages": count,
            "bytes": bytes,
            "oldest_age_s": shape.oldest_age_secs,
        });
        for (state, (n, b)) in STATES.iter().zip(shape.by_state) {
            o[*state] = json!({ "messages": n, "bytes": b });
        }
        format!("{o}\n")
    } else {
        let mut s = format!(
            "daemon: not running (live counters need it; queue read from the spool)\nmessages: {count}\nbytes: {bytes}\n"
        );
        for (state, (n, b)) in STATES.iter().zip(shape.by_state) {
            s.push_str(&format!("{state}: {n} messages, {b} bytes\n"));
        }
        s.push_str(&format!("oldest: {}s\n", shape.oldest_age_secs));
        s
    };
    let _ = std::io::stdout().write_all(text.as_bytes());
    OK
}
