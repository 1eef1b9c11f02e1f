//! The operator's commands (`list`, `show`, `flush`, `hold`, `release`,
//! `delete`, `expire`): through the daemon's control socket when a daemon
//! runs, directly on the spool under the same locks when none does; and
//! `stats`, whose live counters only a running daemon has (without one it
//! reads the queue's size and oldest age from the spool).

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

use mailqueue::config::Config;
use mailqueue::queue::admin::{Admin, Filter, IncomingFile};
use mailqueue::queue::meta::{MessageMeta, Timestamp};
use mailqueue::queue::recent_lag::LagWindow;
use mailqueue::queue::spool::{layout, Spool};
use mailqueue::queue::stats::StatsSnapshot;
use mailqueue::queue::QueueError;
use mailqueue::MessageId;

use super::control::list::{self, ListSink, Listed};
use super::control::{self, ControlError, Request, Response};
use super::listing::{show_text, ListPrinter};
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
    if let Request::List { filter } = &request {
        return list(config, filter, format);
    }
    let response = match control::request(&config.spool, &request) {
        Ok(r) => r,
        // The live counters are the daemon's; the spool tells the rest.
        Err(ControlError::NoDaemon) if request == Request::Stats => {
            return spool_stats(config, format);
        }
        Err(ControlError::NoDaemon) => {
            let access = match request {
                Request::Expire(_) => Access::Expire,
                _ => Access::Write,
            };
            let ask = |_: &mut ()| control::request(&config.spool, &request);
            match direct(config, &mut (), access, ask, |admin, _| {
                control::apply(admin, &request)
            }) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("mailqueue: {e}");
                    return UNAVAILABLE;
                }
            }
        }
        Err(e) => {
            eprintln!("mailqueue: {e}");
            return UNAVAILABLE;
        }
    };
    report(config, &request, format, &response)
}

/// `list`: printed as the daemon (or the spool) gives each message.
fn list(config: &Config, filter: &Filter, format: Format) -> u8 {
    let stdout = std::io::stdout();
    let out = BufWriter::with_capacity(64 * 1024, stdout.lock());
    let mut printer = ListPrinter::new(out, format == Format::Json);
    let listed = match stream_list(config, filter, &mut printer) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let error = match listed {
        Listed::Done(error) => error,
        Listed::SinkFailed(e) => return output_failed(&e),
    };
    if let Some(e) = error {
        let _ = printer.idle();
        eprintln!("mailqueue: {e}");
        return FAILED;
    }
    match printer.finish() {
        Ok(()) => OK,
        Err(e) => output_failed(&e),
    }
}

/// The list from the daemon, or from the spool when none runs, into
/// `sink`; an exit code when neither could give it.
fn stream_list(config: &Config, filter: &Filter, sink: &mut impl ListSink) -> Result<Listed, u8> {
    let fetch = |sink: &mut _| list::fetch(&config.spool, filter, sink);
    let got = match list::fetch(&config.spool, filter, sink) {
        Err(ControlError::NoDaemon) => direct(config, sink, Access::Read, fetch, |admin, sink| {
            list::scan(admin, filter, sink)
        }),
        other => other.map_err(DirectError::from),
    };
    got.map_err(|e| {
        eprintln!("mailqueue: {e}");
        UNAVAILABLE
    })
}

/// Standard output refused a line: said, unless the reader just went
/// away (`mailqueue list | head`).
fn output_failed(e: &std::io::Error) -> u8 {
    if e.kind() != std::io::ErrorKind::BrokenPipe {
        eprintln!("mailqueue: standard output: {e}");
    }
    FAILED
}

/// Carries out a command on the spool itself (no daemon running): `local`
/// under the spool's shared lock when it changes the spool (see
/// [`Access`]). A queue holding the spool lock may be starting (reading
/// the spool back) with its control socket not up yet: writing to the
/// spool then would race it, so this waits for the socket (and then
/// `ask`s the daemon) or for the lock to be free.
fn direct<C, T>(
    config: &Config,
    ctx: &mut C,
    access: Access,
    mut ask: impl FnMut(&mut C) -> Result<T, ControlError>,
    local: impl FnOnce(&Admin<'_>, &mut C) -> T,
) -> Result<T, DirectError> {
    if !layout::queue(&config.spool).exists() {
        // Not an empty queue: a wrong --spool or configuration, or a
        // daemon never started. Creating the spool here would hide that.
        return Err(DirectError::NoSpool(config.spool.clone()));
    }
    let spool = Spool::open(&config.spool)?;
    let deadline = Instant::now() + DAEMON_START_WAIT;
    loop {
        if let Some(lock) = spool.lock_shared()? {
            if access == Access::Read {
                // No daemon runs. A list printed into a pager may take
                // minutes: holding the lock that long would keep a daemon
                // from starting, and a read needs no lock (a metadata
                // file is replaced whole by a rename; one that goes away
                // is skipped).
                drop(lock);
            }
            let mut options = config.queue_options();
            if access == Access::Expire {
                // Its notices are signed as the daemon would sign them.
                options.dkim = config.dkim_signer().unwrap_or_else(|e| {
                    eprintln!("mailqueue: warning: {e}; the notices are not signed");
                    Default::default()
                });
            }
            return Ok(local(&Admin::direct(&spool, &options), ctx));
        }
        match ask(ctx) {
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

/// What a command does to the spool when it works on it directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Reads it (`list`): the spool lock only shows that no daemon runs.
    Read,
    /// Changes it, under the spool lock shared with other commands.
    Write,
    /// Changes it and sends notices, signed as the daemon would.
    Expire,
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
    let mut counted = Counted {
        shape: Shape::default(),
        now: Timestamp::now(),
    };
    match stream_list(config, &Filter::default(), &mut counted) {
        Ok(Listed::Done(None)) => {}
        Ok(Listed::Done(Some(e))) => {
            eprintln!("mailqueue: {e}");
            return FAILED;
        }
        // Counting refuses nothing.
        Ok(Listed::SinkFailed(e)) => {
            eprintln!("mailqueue: {e}");
            return FAILED;
        }
        Err(code) => return code,
    }
    let shape = counted.shape;
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

/// `stats` without a daemon: the queue counted as it is listed.
struct Counted {
    shape: Shape,
    now: Timestamp,
}

impl ListSink for Counted {
    fn message(&mut self, m: MessageMeta) -> std::io::Result<()> {
        self.shape.add(&m, self.now);
        Ok(())
    }

    fn incoming(&mut self, _: IncomingFile) -> std::io::Result<()> {
        Ok(())
    }
}
