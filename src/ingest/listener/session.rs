//! The dialogue with one client: greeting, commands and their replies
//! (pipelined ones answered together), STARTTLS, MAIL and RCPT with
//! their parameters; DATA is in `data`.

use super::refusal::{raw_path, Stage};
use std::io::{self, BufReader, Write};
use std::net::{IpAddr, SocketAddr};

use super::ServerSettings;
use crate::address::ReversePath;
use crate::envelope::{MailParams, Recipient};
use crate::queue::{Queue, QueueError};
use crate::smtp::bare_newline::BareNewline;
use crate::smtp::command::{self, Command};
use crate::smtp::deadline::{self, is_timeout, Deadline, DeadlineReader, LineEnd, Overlong};
use crate::smtp::params::{MailParam, RcptParam};
use crate::smtp::reply::SmtpReply;
use crate::smtp::transport::{Stream, Transport, Watchdog};

/// Longest command line accepted; RFC 5321 asks for at least 512.
const MAX_COMMAND_LINE: usize = 4096;
/// Bad commands tolerated before the connection is dropped.
const MAX_ERRORS: usize = 20;
/// What a read past its deadline says (never shown: a timeout is a 421).
pub(super) const EXPIRED: &str = "deadline passed";

/// The queue is over `max_messages`, `max_bytes` or `min_free_bytes`.
pub(super) fn quota_reply() -> SmtpReply {
    reply(452, (4, 3, 1), "Error: insufficient system storage")
}

/// The message could not be written: a full disk is the same to the
/// client as a full queue (try again later); anything else is a local error.
pub(super) fn write_error_reply(disk_full: bool) -> SmtpReply {
    if disk_full {
        quota_reply()
    } else {
        reply(451, (4, 3, 0), "Error: queue file write error")
    }
}

/// `bare_newline = "reject"` and a line ended by LF alone.
pub(super) fn bare_newline_reply() -> SmtpReply {
    reply(
        550,
        (5, 5, 2),
        "Error: bare <LF> received; lines must end in <CR><LF>",
    )
}

/// A transaction being built.
pub(super) struct Transaction {
    pub(super) sender: ReversePath,
    pub(super) params: MailParams,
    pub(super) rcpts: Vec<Recipient>,
}

/// What reading a command line gave.
enum Line {
    Text(String),
    TooLong,
    /// Ended by a bare LF, with `bare_newline = "reject"`.
    BareNewline,
    Eof,
}

pub(super) struct Session<'a> {
    pub(super) io: BufReader<Transport>,
    pub(super) out: Vec<u8>,
    pub(super) peer: SocketAddr,
    pub(super) queue: &'a Queue,
    pub(super) s: &'a ServerSettings,
    pub(super) helo: Option<String>,
    pub(super) esmtp: bool,
    pub(super) txn: Option<Transaction>,
    pub(super) errors: usize,
    pub(super) relay_allowed: bool,
    /// Refusals logged so far in this session.
    pub(super) refusals: usize,
}

pub(super) fn reply(code: u16, enhanced: (u8, u16, u16), text: &str) -> SmtpReply {
    SmtpReply::with_code(code, enhanced, text)
}

impl<'a> Session<'a> {
    pub(super) fn new(
        transport: Transport,
        peer: SocketAddr,
        queue: &'a Queue,
        s: &'a ServerSettings,
    ) -> Self {
        let ip = match peer.ip() {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        Session {
            io: BufReader::with_capacity(64 * 1024, transport),
            out: Vec::with_capacity(1024),
            peer,
            queue,
            s,
            helo: None,
            esmtp: false,
            txn: None,
            errors: 0,
            relay_allowed: s.relay_networks.iter().any(|n| n.contains(&ip)),
            refusals: 0,
        }
    }

    /// The client's address as logs show it, an IPv4-mapped one as IPv4.
    pub(super) fn client_ip(&self) -> IpAddr {
        match self.peer.ip() {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        }
    }

    pub(super) fn send(&mut self, r: &SmtpReply) {
        self.queue.counters().reply_sent(r);
        self.out.extend_from_slice(format!("{r}\r\n").as_bytes());
    }

    /// Writes queued replies. While pipelined commands are still
    /// buffered, replies wait so they go out in one packet (RFC 2920).
    pub(super) fn flush(&mut self, force: bool) -> io::Result<()> {
        if self.out.is_empty() || (!force && !self.io.buffer().is_empty()) {
            return Ok(());
        }
        let t = self.io.get_mut();
        t.write_all(&self.out)?;
        t.flush()?;
        self.out.clear();
        Ok(())
    }

    pub(super) fn run(mut self) {
        self.queue.counters().connection();
        let _ = self.io.get_ref().set_timeout(self.s.command_timeout);
        // No enhanced code in the greeting (RFC 2034 section 3): clients
        // read the host name as its first word.
        let greeting = SmtpReply::new(220, None, &format!("{} ESMTP mailqueue", self.s.hostname));
        self.send(&greeting);
        loop {
            if self.flush(false).is_err() {
                return;
            }
            let Some(line) = self.read_command_line() else {
                return;
            };
            let line = match line {
                Line::Eof => return,
                Line::TooLong => {
                    self.send(&reply(500, (5, 5, 6), "Error: line too long"));
                    if self.count_error() {
                        return;
                    }
                    continue;
                }
                Line::BareNewline => {
                    log::info!("{}: bare <LF> in a command: session ended", self.peer);
                    self.send(&bare_newline_reply());
                    let _ = self.flush(true);
                    return;
                }
                Line::Text(t) => t,
            };
            match command::parse(&line) {
                Err(r) => {
                    if !self.refuse_unparsed(&line, &r) {
                        return;
                    }
                }
                Ok(Command::StartTls) => match self.starttls() {
                    Some(next) => self = next,
                    None => return,
                },
                Ok(c) => {
                    if !self.handle(c) {
                        let _ = self.flush(true);
                        return;
                    }
                }
            }
        }
    }

    /// The next line from the client; `None` when the connection is gone
    /// or silent too long (the client is told so).
    fn read_command_line(&mut self) -> Option<Line> {
        match self.read_line() {
            Ok(l) => Some(l),
            Err(e) => {
                if is_timeout(&e) {
                    self.send(&self.timeout_reply());
                    let _ = self.flush(true);
                }
                None
            }
        }
    }

    /// Answers and logs a line that is no valid command; false when the
    /// client has made too many errors to go on.
    fn refuse_unparsed(&mut self, line: &str, r: &SmtpReply) -> bool {
        if let Some(stage) = Stage::of_line(line) {
            let path = raw_path(line);
            match stage {
                Stage::Mail => self.log_refusal(stage, r, path, None),
                _ => self.log_refusal(stage, r, None, path),
            }
        }
        self.send(r);
        !self.count_error()
    }

    pub(super) fn timeout_reply(&self) -> SmtpReply {
        reply(
            421,
            (4, 4, 2),
            &format!("{} Error: timeout exceeded", self.s.hostname),
        )
    }

    /// Counts a bad command; true when the client has had too many.
    pub(super) fn count_error(&mut self) -> bool {
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            self.send(&reply(421, (4, 7, 0), "Error: too many errors"));
            let _ = self.flush(true);
            return true;
        }
        false
    }

    fn read_line(&mut self) -> io::Result<Line> {
        let mut line = Vec::new();
        // The whole line must come within the command timeout: a client
        // trickling a byte now and then cannot hold its slot for ever.
        let deadline = Deadline::after(self.s.command_timeout);
        let mut reader = DeadlineReader::new(&mut self.io, deadline).expired(EXPIRED);
        let end = deadline::read_line(&mut reader, &mut line, MAX_COMMAND_LINE, Overlong::Skip)?;
        if reader.armed {
            // The replies that follow get the full timeout to go out.
            self.io.get_ref().set_timeout(self.s.command_timeout)?;
        }
        match end {
            LineEnd::Eof => return Ok(Line::Eof),
            LineEnd::TooLong => return Ok(Line::TooLong),
            LineEnd::Lf => {}
        }
        // A line ends at LF; "reject" wants the CR before it too.
        line.pop();
        if line.last() != Some(&b'\r') && self.s.bare_newline == BareNewline::Reject {
            return Ok(Line::BareNewline);
        }
        while line.last() == Some(&b'\r') {
            line.pop();
        }
        // Commands are ASCII; anything else cannot be one, but may be a
        // UTF-8 address under SMTPUTF8.
        Ok(Line::Text(
            String::from_utf8(line).unwrap_or_else(|_| "\u{FFFD}".into()),
        ))
    }

    /// Handles one command; false ends the session.
    fn handle(&mut self, c: Command) -> bool {
        match c {
            Command::Ehlo(name) => self.ehlo(name),
            Command::Helo(name) => {
                self.helo = Some(name);
                self.esmtp = false;
                self.txn = None;
                let r = SmtpReply::new(250, None, &self.s.hostname);
                self.send(&r);
            }
            Command::Mail(sender, params) => {
                let shown = sender.as_ref().map(|a| a.to_string()).unwrap_or_default();
                let r = self.mail(sender, params);
                self.log_refusal(Stage::Mail, &r, Some(&shown), None);
                self.send(&r);
            }
            Command::Rcpt(rcpt, params) => {
                let shown = rcpt.to_string();
                let r = self.rcpt(rcpt, params);
                self.log_refusal(Stage::Rcpt, &r, None, Some(&shown));
                self.send(&r);
            }
            Command::Data => return self.data(),
            Command::Rset => {
                self.txn = None;
                self.send(&reply(250, (2, 0, 0), "Ok"));
            }
            Command::Noop => self.send(&reply(250, (2, 0, 0), "Ok")),
            Command::Quit => {
                self.send(&reply(221, (2, 0, 0), "Bye"));
                return false;
            }
            Command::Vrfy => self.send(&reply(
                252,
                (2, 5, 0),
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Help => self.send(&reply(214, (2, 0, 0), "See RFC 5321")),
            Command::StartTls => unreachable!("handled in run"),
        }
        true
    }

    /// EHLO: the extensions offered.
    fn ehlo(&mut self, name: String) {
        self.helo = Some(name);
        self.esmtp = true;
        self.txn = None;
        let mut lines = vec![
            self.s.hostname.clone(),
            "PIPELINING".into(),
            format!("SIZE {}", self.s.max_message_size),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
            "DSN".into(),
            "SMTPUTF8".into(),
        ];
        if self.s.tls.is_some() && !self.io.get_ref().is_tls() {
            lines.push("STARTTLS".into());
        }
        let last = lines.len() - 1;
        for (i, l) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            self.out
                .extend_from_slice(format!("250{sep}{l}\r\n").as_bytes());
        }
    }

    /// Upgrades the connection; `None` when the session is over.
    fn starttls(mut self) -> Option<Self> {
        let Some(acceptor) = self.s.tls.clone().filter(|_| !self.io.get_ref().is_tls()) else {
            self.send(&reply(502, (5, 5, 1), "Error: command not implemented"));
            return Some(self);
        };
        self.send(&reply(220, (2, 0, 0), "Ready to start TLS"));
        self.flush(true).ok()?;
        // Anything pipelined after STARTTLS came in clear: drop it.
        let Session {
            io,
            out,
            peer,
            queue,
            s,
            errors,
            relay_allowed,
            refusals,
            ..
        } = self;
        let Stream::Tcp(tcp) = io.into_inner().into_stream() else {
            return None;
        };
        // The whole handshake within the command timeout: a client
        // trickling its hello a byte at a time must not hold the thread.
        let deadline = Watchdog::arm(&tcp, s.command_timeout);
        let accepted = acceptor.accept(tcp);
        drop(deadline);
        match accepted {
            Ok(tls) => {
                let transport = Transport::from(Stream::Tls(Box::new(tls)));
                let _ = transport.set_timeout(s.command_timeout);
                Some(Session {
                    io: BufReader::with_capacity(64 * 1024, transport),
                    out,
                    peer,
                    queue,
                    s,
                    helo: None,
                    esmtp: false,
                    txn: None,
                    errors,
                    relay_allowed,
                    refusals,
                })
            }
            Err(e) => {
                log::info!("{peer}: TLS handshake failed: {e}");
                None
            }
        }
    }

    fn mail(&mut self, sender: ReversePath, params: Vec<(String, Option<String>)>) -> SmtpReply {
        if self.helo.is_none() {
            return reply(503, (5, 5, 1), "Error: send HELO/EHLO first");
        }
        if self.txn.is_some() {
            return reply(503, (5, 5, 1), "Error: nested MAIL command");
        }
        let mut p = MailParams::default();
        let mut announced: u64 = 0;
        for (key, value) in params {
            match MailParam::decode(&key, value.as_deref()) {
                Err(r) => return r,
                Ok(MailParam::Size(n)) if n > self.s.max_message_size => {
                    return reply(552, (5, 3, 4), "Message size exceeds fixed limit")
                }
                Ok(MailParam::Size(n)) => announced = n,
                Ok(other) => other.apply(&mut p),
            }
        }
        if sender.as_ref().is_some_and(|s| s.needs_smtputf8()) && !p.smtputf8 {
            return reply(553, (5, 6, 7), "Non-ASCII sender address needs SMTPUTF8");
        }
        // Refuse early, before the client sends a body we could not keep.
        if let Err(QueueError::Quota(why)) = self.queue.check_quota(announced) {
            log::warn!("{}: refusing mail: {why}", self.peer);
            return quota_reply();
        }
        self.txn = Some(Transaction {
            sender,
            params: p,
            rcpts: Vec::new(),
        });
        reply(250, (2, 1, 0), "Ok")
    }

    fn rcpt(
        &mut self,
        address: crate::address::Address,
        params: Vec<(String, Option<String>)>,
    ) -> SmtpReply {
        let Some(txn) = self.txn.as_mut() else {
            return reply(503, (5, 5, 1), "Error: need MAIL command");
        };
        if !self.relay_allowed {
            return reply(554, (5, 7, 1), &format!("<{address}>: Relay access denied"));
        }
        if txn.rcpts.len() >= self.s.max_recipients {
            return reply(452, (4, 5, 3), "Error: too many recipients");
        }
        if address.needs_smtputf8() && !txn.params.smtputf8 {
            return reply(553, (5, 6, 7), "Non-ASCII recipient address needs SMTPUTF8");
        }
        let mut rcpt = Recipient::new(address);
        for (key, value) in params {
            match RcptParam::decode(&key, value.as_deref()) {
                Ok(p) => p.apply(&mut rcpt),
                Err(r) => return r,
            }
        }
        txn.rcpts.push(rcpt);
        reply(250, (2, 1, 5), "Ok")
    }
}
