//! Refusals in the log, in Postfix's shape: `NOQUEUE: reject: RCPT from
//! [ip]: <reply>; from=<...> to=<...> proto=ESMTP helo=<...>`, with what
//! the client wrote escaped and capped, and a bounded number per session.

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
