//! Refusals in the log, in Postfix's shape: `NOQUEUE: reject: RCPT from
//! [ip]: <reply>; from=<...> to=<...> proto=ESMTP helo=<...>`, with what
//! the client wrote escaped and capped, and a bounded number per session;
//! connections refused past `max_connections` as `NOQUEUE: reject:
//! CONNECT from [ip]: 421 ...`, at most one line a second.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::session::Session;
use crate::logline;
use crate::smtp::reply::SmtpReply;

/// Refusals logged per session; the rest are counted in one last line,
/// so a client repeating a refused command cannot flood the log.
const MAX_LOGGED_REFUSALS: usize = 20;

/// The SMTP stage a refusal answers, as Postfix names it in its
/// `NOQUEUE: reject:` lines.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum Stage {
    Mail,
    Rcpt,
    Data,
    EndOfMessage,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Mail => "MAIL",
            Stage::Rcpt => "RCPT",
            Stage::Data => "DATA",
            Stage::EndOfMessage => "END-OF-MESSAGE",
        }
    }

    /// The stage of a command line that did not parse, if it is one.
    pub(super) fn of_line(line: &str) -> Option<Stage> {
        let verb = line.get(..4)?;
        [
            ("MAIL", Stage::Mail),
            ("RCPT", Stage::Rcpt),
            ("DATA", Stage::Data),
        ]
        .into_iter()
        .find(|(v, _)| verb.eq_ignore_ascii_case(v))
        .map(|(_, s)| s)
    }
}

/// The path argument of a MAIL or RCPT line that did not parse, as the
/// client wrote it (without its angle brackets), for the log.
pub(super) fn raw_path(line: &str) -> Option<&str> {
    let arg = line.split_once(':')?.1.trim_start();
    let (arg, end) = match arg.strip_prefix('<') {
        Some(inner) => (inner, inner.find('>')),
        None => (arg, arg.find(' ')),
    };
    Some(&arg[..end.unwrap_or(arg.len())])
}

impl Session<'_> {
    /// Logs a refusal in Postfix's shape, at most `MAX_LOGGED_REFUSALS`
    /// per session: `NOQUEUE: reject: RCPT from [ip]: <reply>; from=<...>
    /// to=<...> proto=ESMTP helo=<...>`. A positive reply is no refusal
    /// and is not logged. `from` and `to` default to the transaction's.
    pub(super) fn log_refusal(
        &mut self,
        stage: Stage,
        r: &SmtpReply,
        from: Option<&str>,
        to: Option<&str>,
    ) {
        if r.is_positive() {
            return;
        }
        self.refusals += 1;
        if self.refusals > MAX_LOGGED_REFUSALS {
            if self.refusals == MAX_LOGGED_REFUSALS + 1 {
                log::info!(
                    "NOQUEUE: [{}]: more than {MAX_LOGGED_REFUSALS} refusals in one session; \
                     the next ones are not logged",
                    self.client_ip()
                );
            }
            return;
        }
        let sender = self
            .txn
            .as_ref()
            .map(|t| t.sender.as_ref().map(|a| a.as_str()).unwrap_or(""));
        let mut line = format!(
            "NOQUEUE: reject: {} from [{}]: {}",
            stage.name(),
            self.client_ip(),
            logline::clean(&r.to_string(), logline::REPLY)
        );
        let mut sep = ";";
        for (key, value) in [("from", from.or(sender)), ("to", to)] {
            if let Some(v) = value {
                line.push_str(&format!(
                    "{sep} {key}=<{}>",
                    logline::clean(v, logline::FIELD)
                ));
                sep = "";
            }
        }
        let proto = if self.esmtp { "ESMTP" } else { "SMTP" };
        line.push_str(&format!("{sep} proto={proto}"));
        if let Some(helo) = &self.helo {
            line.push_str(&format!(" helo=<{}>", logline::clean(helo, logline::FIELD)));
        }
        log::info!("{line}");
    }
}

/// The reply to a client past `[listen] max_connections`.
pub(super) fn too_many_connections() -> SmtpReply {
    SmtpReply::with_code(421, (4, 7, 0), "Too many connections, try again later")
}

/// Shortest time between two log lines of connections refused for
/// `max_connections`: a flood of connections must not flood the log.
const CONNECTION_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Logs the connections refused past `max_connections`, in Postfix's
/// shape (`NOQUEUE: reject: CONNECT from [ip]: 421 4.7.0 ...;
/// proto=SMTP`), at most one line per [`CONNECTION_LOG_INTERVAL`]; a line
/// says how many were refused since the one before without a line of
/// their own. Shared by the accept threads.
#[derive(Default)]
pub(super) struct ConnectionRefusals(Mutex<Unlogged>);

#[derive(Default)]
struct Unlogged {
    last_line: Option<Instant>,
    /// Refused since `last_line` without a line of their own.
    count: u64,
}

impl ConnectionRefusals {
    /// Logs (or counts for a later line) a connection from `ip` refused
    /// with `reply`.
    pub(super) fn refused(&self, ip: Option<IpAddr>, reply: &SmtpReply) {
        let now = Instant::now();
        let mut u = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !u.due(now) {
            u.count += 1;
            return;
        }
        let ip = ip
            .map(|a| a.to_string())
            .unwrap_or_else(|| "unknown".into());
        log::info!(
            "NOQUEUE: reject: CONNECT from [{ip}]: {}; proto=SMTP{}",
            logline::clean(&reply.to_string(), logline::REPLY),
            u.take_count()
        );
        u.last_line = Some(now);
    }

    /// Logs the count of refusals not logged yet, once the interval has
    /// passed: called as connections are accepted again, so the end of a
    /// flood is not left uncounted until the next one.
    pub(super) fn flush(&self) {
        let now = Instant::now();
        let mut u = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if u.count == 0 || !u.due(now) {
            return;
        }
        log::info!(
            "NOQUEUE: reject: CONNECT: {} more connections refused (too many connections) \
             since the last line",
            u.count
        );
        u.count = 0;
        u.last_line = Some(now);
    }
}

impl Unlogged {
    fn due(&self, now: Instant) -> bool {
        self.last_line
            .is_none_or(|t| now.duration_since(t) >= CONNECTION_LOG_INTERVAL)
    }

    /// The tail of a line that follows refusals not logged, and resets
    /// their count.
    fn take_count(&mut self) -> String {
        let n = std::mem::take(&mut self.count);
        if n == 0 {
            String::new()
        } else {
            format!(" ({n} more refused since the last line)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_refused_connections_logs_one_line_then_a_count() {
        let r = ConnectionRefusals::default();
        let reply = too_many_connections();
        for _ in 0..100 {
            r.refused(None, &reply);
        }
        let u = r.0.lock().unwrap();
        assert!(u.last_line.is_some());
        assert_eq!(u.count, 99, "the first one is logged, the rest counted");
        drop(u);
        r.0.lock().unwrap().last_line = Some(Instant::now() - CONNECTION_LOG_INTERVAL);
        r.flush();
        assert_eq!(r.0.lock().unwrap().count, 0);
    }
}
