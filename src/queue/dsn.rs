//! Delivery status notifications (RFC 3464, RFC 3461, RFC 6533): the
//! reports sent to a message's sender when recipients fail, are delayed,
//! or were delivered and the sender asked to hear of it.
//!
//! Everything a notice says comes from the message's metadata and files,
//! so a notice made after a restart is the same as one made before.

use std::fmt::Write as _;
use std::time::SystemTime;

use crate::address::Address;
use crate::date::rfc5322;
use crate::envelope::{Envelope, MailParams, Recipient, Ret};
use crate::id::MessageId;
use crate::queue::meta::{MessageMeta, RecipientMeta};
use crate::queue::options::QueueOptions;
use crate::queue::spool::Spool;
use crate::smtp::reply::{EnhancedCode, SmtpReply};

/// Largest original header a notice quotes.
const MAX_QUOTED_HEADER: usize = 64 * 1024;

/// RFC 3464 Action of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
    Delivered,
    Relayed,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
        }
    }
}

/// One recipient to report on.
#[derive(Debug, Clone)]
pub struct Reported<'a> {
    pub rcpt: &'a RecipientMeta,
    pub action: Action,
}

/// What part of the original message goes back to the sender.
#[derive(Debug, Clone)]
pub enum Returned<'a> {
    /// The header only (RET=HDRS, no RET, and every non-failure notice).
    Header(&'a [u8]),
    /// The whole message (RET=FULL, under the size limit).
    Full(&'a [u8]),
    /// RET=FULL asked for the message, but it is over the limit.
    HeaderOnlyTooBig {
        header: &'a [u8],
        size: u64,
        limit: u64,
    },
}

/// What a notice is made from.
#[derive(Debug, Clone)]
pub struct Notice<'a> {
    /// Host name of this queue (Reporting-MTA).
    pub reporting_mta: &'a str,
    /// The From header of the notice.
    pub from: &'a str,
    /// The message being reported on; its sender receives the notice.
    pub original: &'a MessageMeta,
    pub returned: Returned<'a>,
    /// All of one action.
    pub recipients: Vec<Reported<'a>>,
    /// For delay notices: when the queue gives up.
    pub will_retry_until: Option<SystemTime>,
    /// Used for Date and as the id part of Message-ID and the boundary.
    pub now: SystemTime,
    pub unique: &'a str,
}

/// `rfc822; a@b`, or `utf-8; ü@b` for a non-ASCII address (RFC 6533).
fn typed_address(a: &str) -> String {
    if a.is_ascii() {
        format!("rfc822; {a}")
    } else {
        format!("utf-8; {a}")
    }
}

/// Builds the notice; `None` when the original has no sender to tell.
pub fn build(n: &Notice<'_>) -> Option<(Envelope, Vec<u8>)> {
    let to: Address = n.original.sender.clone()?;
    let action = n.recipients.first()?.action;
    let utf8 = n.original.params.smtputf8;
    let boundary = format!("{}/{}", n.unique, n.reporting_mta);

    let mut m = String::with_capacity(4096);
    write_headers(&mut m, n, &to, action, &boundary);
    write_explanation(&mut m, n, action);
    write_status_part(&mut m, n, &boundary, utf8);
    let content = write_returned_part_header(&mut m, &n.returned, &boundary, utf8);
    let mut body = m.into_bytes();
    push_crlf_lines(&mut body, content);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());

    let envelope = Envelope {
        sender: None,
        recipients: vec![Recipient::new(to)],
        params: MailParams {
            smtputf8: utf8,
            body: crate::envelope::BodyType::EightBitMime,
            ..MailParams::default()
        },
    };
    Some((envelope, body))
}

/// The notice's header, the MIME preamble and the start of the
/// human-readable part, up to its greeting.
fn write_headers(m: &mut String, n: &Notice<'_>, to: &Address, action: Action, boundary: &str) {
    let subject = match action {
        Action::Failed => "Undelivered Mail Returned to Sender",
        Action::Delayed => "Delayed Mail (still being retried)",
        Action::Delivered | Action::Relayed => "Successful Mail Delivery Report",
    };
    let _ = write!(
        m,
        "From: Mail Delivery System <{from}>\r\n\
         To: <{to}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{unique}@{host}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Description: Notification\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         This is the mail system at host {host}.\r\n\
         \r\n",
        from = n.from,
        date = rfc5322(n.now),
        unique = n.unique,
        host = n.reporting_mta,
    );
}

/// The body of the human-readable part: what happened, to whom, and
/// what of the message comes back.
fn write_explanation(m: &mut String, n: &Notice<'_>, action: Action) {
    m.push_str(match action {
        Action::Failed => {
            "I'm sorry to have to inform you that your message could not\r\n\
             be delivered to one or more recipients.\r\n"
        }
        Action::Delayed => {
            "Your message could not be delivered yet to one or more\r\n\
             recipients. It will be tried again; you do not need to resend it.\r\n"
        }
        Action::Delivered => "Your message was delivered to the mailboxes listed below.\r\n",
        Action::Relayed => {
            "Your message was handed on to the systems listed below, which\r\n\
             do not report delivery status, so this is the last notice you\r\n\
             will get about these recipients.\r\n"
        }
    });
    if let Some(until) = n.will_retry_until {
        let _ = write!(m, "Delivery will be tried until {}.\r\n", rfc5322(until));
    }
    m.push_str("\r\n");
    for r in &n.recipients {
        write_recipient_text(m, r);
    }
    match &n.returned {
        Returned::Full(_) => m.push_str("\r\nThe message is attached below.\r\n"),
        Returned::Header(_) => m.push_str("\r\nThe message's header is attached below.\r\n"),
        Returned::HeaderOnlyTooBig { size, limit, .. } => {
            let _ = write!(
                m,
                "\r\nThe message ({size} bytes) is larger than {limit} bytes, so only\r\n\
                 its header is attached below.\r\n"
            );
        }
    }
}

/// The delivery-status part: the per-message fields, then each
/// recipient's.
fn write_status_part(m: &mut String, n: &Notice<'_>, boundary: &str, utf8: bool) {
    let status_type = if utf8 {
        "message/global-delivery-status"
    } else {
        "message/delivery-status"
    };
    let _ = write!(
        m,
        "\r\n--{boundary}\r\n\
         Content-Type: {status_type}\r\n\
         Content-Description: Delivery report\r\n\
         \r\n\
         Reporting-MTA: dns; {host}\r\n\
         X-Mailqueue-Queue-ID: {id}\r\n",
        host = n.reporting_mta,
        id = n.original.id,
    );
    if let Some(envid) = &n.original.params.envid {
        let _ = write!(m, "Original-Envelope-Id: {envid}\r\n");
    }
    let _ = write!(
        m,
        "Arrival-Date: {}\r\n",
        rfc5322(n.original.arrival.to_system())
    );
    let last_attempt = n.original.last_attempt.map(|t| t.to_system());
    for r in &n.recipients {
        write_recipient_fields(m, r, last_attempt, n.will_retry_until);
    }
}

/// The header of the part that returns the message (or its header);
/// returns what goes into that part.
fn write_returned_part_header<'a>(
    m: &mut String,
    returned: &Returned<'a>,
    boundary: &str,
    utf8: bool,
) -> &'a [u8] {
    let (part_type, description, content): (&str, &str, &[u8]) = match (returned, utf8) {
        (Returned::Full(msg), false) => ("message/rfc822", "Undelivered Message", msg),
        (Returned::Full(msg), true) => ("message/global", "Undelivered Message", msg),
        (Returned::Header(h) | Returned::HeaderOnlyTooBig { header: h, .. }, false) => {
            ("text/rfc822-headers", "Message Headers", h)
        }
        (Returned::Header(h) | Returned::HeaderOnlyTooBig { header: h, .. }, true) => {
            ("message/global-headers", "Message Headers", h)
        }
    };
    let _ = write!(
        m,
        "\r\n--{boundary}\r\n\
         Content-Type: {part_type}\r\n\
         Content-Description: {description}\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n"
    );
    content
}

fn write_recipient_text(out: &mut String, r: &Reported<'_>) {
    let mut line = String::new();
    let _ = write!(line, "<{}>: ", r.rcpt.reported_address());
    let m = &mut line;
    let reply = r.rcpt.last_error.as_ref();
    match (r.action, reply) {
        (Action::Failed, Some(reply)) if r.rcpt.expired => {
            let _ = write!(
                m,
                "gave up after {} tries, the message expired; last error: {reply}",
                r.rcpt.tries
            );
        }
        (Action::Failed | Action::Delayed, Some(reply)) => {
            let _ = write!(m, "{reply}");
        }
        (action, _) => m.push_str(action.as_str()),
    }
    if let Some(mta) = &r.rcpt.remote_mta {
        let _ = write!(m, " (from {})", mta.trim_start_matches("dns;").trim());
    }
    out.push_str(&folded(&line, "    "));
}

fn write_recipient_fields(
    m: &mut String,
    r: &Reported<'_>,
    last_attempt: Option<SystemTime>,
    until: Option<SystemTime>,
) {
    let reply = r.rcpt.last_error.as_ref();
    let status = match r.action {
        Action::Delivered | Action::Relayed => EnhancedCode::new(2, 0, 0),
        _ => reply
            .map(SmtpReply::status)
            .unwrap_or(EnhancedCode::new(4, 0, 0)),
    };
    let _ = write!(
        m,
        "\r\nFinal-Recipient: {}\r\n",
        typed_address(r.rcpt.reported_address().as_str())
    );
    if let Some(orcpt) = &r.rcpt.orcpt {
        let (kind, addr) = (&orcpt.addr_type, &orcpt.addr);
        let field = format!("Original-Recipient: {}; {}", kind.trim(), addr.trim());
        m.push_str(&folded(&field, " "));
    }
    let _ = write!(m, "Action: {}\r\nStatus: {status}\r\n", r.action.as_str());
    if let Some(mta) = &r.rcpt.remote_mta {
        let _ = write!(
            m,
            "Remote-MTA: dns; {}\r\n",
            mta.trim_start_matches("dns;").trim()
        );
    }
    if let (Some(reply), Action::Failed | Action::Delayed) = (reply, r.action) {
        // A server's reply can be long (up to the 1 KiB the client keeps,
        // more in metadata written before that limit): folded, so that no
        // line passes 998 characters (RFC 5322 §2.1.1).
        m.push_str(&folded(&format!("Diagnostic-Code: smtp; {reply}"), " "));
    }
    if let Some(t) = last_attempt {
        let _ = write!(m, "Last-Attempt-Date: {}\r\n", rfc5322(t));
    }
    if let (Some(t), Action::Delayed) = (until, r.action) {
        let _ = write!(m, "Will-Retry-Until: {}\r\n", rfc5322(t));
    }
}

/// Lines are folded at a space once they pass this (RFC 5322's "SHOULD").
const FOLD_AT: usize = 78;
/// No line may pass this, spaces or not (RFC 5322 §2.1.1's "MUST").
const MAX_LINE: usize = 998;

/// `line` ended by CRLF; when it is longer than [`MAX_LINE`], folded at
/// spaces after [`FOLD_AT`] into lines whose continuations start with
/// `indent` (white space, so a header field unfolds to its value), and a
/// word too long even for a line of its own cut at [`MAX_LINE`]. Lines
/// within the limit stay as they are, as readers and tests know them.
fn folded(line: &str, indent: &str) -> String {
    if line.len() <= MAX_LINE {
        return format!("{line}\r\n");
    }
    let mut out = String::with_capacity(line.len() + line.len() / FOLD_AT * 8);
    let mut current = String::new();
    for word in line
        .split([' ', '\t', '\r', '\n'])
        .filter(|w| !w.is_empty())
    {
        let bare = current.is_empty() || current == indent;
        if !bare && current.len() + 1 + word.len() > FOLD_AT {
            out.push_str(&current);
            out.push_str("\r\n");
            current = indent.to_string();
        }
        if !current.is_empty() && !current.ends_with(' ') {
            current.push(' ');
        }
        let mut word = word;
        while current.len() + word.len() > MAX_LINE {
            let mut cut = MAX_LINE - current.len();
            while !word.is_char_boundary(cut) {
                cut -= 1;
            }
            current.push_str(&word[..cut]);
            out.push_str(&current);
            out.push_str("\r\n");
            current = indent.to_string();
            word = &word[cut..];
        }
        current.push_str(word);
    }
    out.push_str(&current);
    out.push_str("\r\n");
    out
}

/// Appends text with every line ending turned into CRLF.
fn push_crlf_lines(out: &mut Vec<u8>, text: &[u8]) {
    for line in text.split_inclusive(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
}

/// Makes the notice of one kind for the recipients of `meta` at `indexes`,
/// if one is due: never for a null sender or for a notice, never when
/// notices are off, and only for recipients whose NOTIFY asks for it.
pub(crate) fn notice(
    options: &QueueOptions,
    spool: &Spool,
    meta: &MessageMeta,
    reported: &[(usize, Action)],
) -> Option<(Envelope, Vec<u8>)> {
    let action = reported.first()?.1;
    if meta.is_dsn {
        if action == Action::Failed {
            log_undeliverable_notice(meta, reported);
        }
        return None;
    }
    if meta.sender.is_none() || !options.notices.enabled {
        return None;
    }
    let recipients = wanted(meta, reported);
    if recipients.is_empty() {
        return None;
    }
    let header = spool
        .read_header(meta, MAX_QUOTED_HEADER)
        .unwrap_or_else(|e| {
            log::warn!("{}: cannot read the header for the notice: {e}", meta.id);
            Vec::new()
        });
    let limit = options.notices.max_return_size;
    let ret_full = action == Action::Failed && meta.params.ret == Some(Ret::Full);
    let full = if ret_full && meta.size <= limit {
        spool.read_message(meta, limit).ok().flatten()
    } else {
        None
    };
    let returned = match &full {
        Some(bytes) => Returned::Full(bytes),
        None if ret_full => Returned::HeaderOnlyTooBig {
            header: &header,
            size: meta.size,
            limit,
        },
        None => Returned::Header(&header),
    };
    let will_retry_until = (action == Action::Delayed).then(|| give_up_time(options, meta));
    let from = options.notice_from();
    let unique = MessageId::generate().to_string();
    build(&Notice {
        reporting_mta: &options.hostname,
        from: &from,
        original: meta,
        returned,
        recipients,
        will_retry_until,
        now: SystemTime::now(),
        unique: &unique,
    })
}

/// When the queue gives up on `meta`: its lifetime after arrival, plus
/// the time it was held.
fn give_up_time(options: &QueueOptions, meta: &MessageMeta) -> SystemTime {
    meta.arrival
        .plus(options.retry.max_lifetime)
        .plus(std::time::Duration::from_millis(meta.held_ms))
        .to_system()
}

/// A notice about a notice is never sent: the failures are logged.
fn log_undeliverable_notice(meta: &MessageMeta, reported: &[(usize, Action)]) {
    for (i, _) in reported {
        log::warn!(
            "{}: notice to <{}> could not be delivered; dropped",
            meta.id,
            meta.recipients[*i].address
        );
    }
}

/// The recipients at `reported` whose NOTIFY asks for a notice of their
/// action.
fn wanted<'a>(meta: &'a MessageMeta, reported: &[(usize, Action)]) -> Vec<Reported<'a>> {
    reported
        .iter()
        .map(|&(i, action)| Reported {
            rcpt: &meta.recipients[i],
            action,
        })
        .filter(|r| {
            let n = r.rcpt.notify();
            match r.action {
                Action::Failed => n.failure,
                Action::Delayed => n.delay,
                Action::Delivered | Action::Relayed => n.success,
            }
        })
        .collect()
}

/// The failure notice for the recipients at `failed`.
pub(crate) fn failure_notice(
    options: &QueueOptions,
    spool: &Spool,
    meta: &MessageMeta,
    failed: &[usize],
) -> Option<(Envelope, Vec<u8>)> {
    let reported: Vec<(usize, Action)> = failed.iter().map(|&i| (i, Action::Failed)).collect();
    notice(options, spool, meta, &reported)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::meta::{RcptStatus, Timestamp};
    use std::time::{Duration, UNIX_EPOCH};

    /// A message with fixed ids and dates: two recipients, one rewritten
    /// with an ORCPT, both failed after tries at a remote MTA.
    fn fixed_meta(smtputf8: bool) -> MessageMeta {
        let env = Envelope {
            sender: Some("sender@example.org".parse().unwrap()),
            recipients: vec![
                Recipient::new("one@example.net".parse().unwrap()),
                Recipient::new("two@example.com".parse().unwrap()),
            ],
            params: MailParams {
                ret: Some(Ret::Full),
                envid: Some("env-42".into()),
                smtputf8,
                ..MailParams::default()
            },
        };
        let id: MessageId = "0065F1A2B3C4D0ABCDEF".parse().unwrap();
        let mut meta = MessageMeta::new(id, &env, 4321);
        meta.arrival = Timestamp(1_795_873_155_000);
        meta.last_attempt = Some(Timestamp(1_795_876_755_000));
        meta.next_attempt = Timestamp(1_795_880_355_000);
        let long = format!("550 5.1.1 {}", "mailbox unavailable ".repeat(60));
        let [one, two] = &mut meta.recipients[..] else {
            unreachable!()
        };
        one.original = Some("One@Example.NET".parse().unwrap());
        one.orcpt = Some(String::from("rfc822;One@Example.NET").into());
        one.status = RcptStatus::Failed;
        one.tries = 5;
        one.expired = true;
        one.last_error = Some(SmtpReply::with_code(451, (4, 3, 0), "try later"));
        one.remote_mta = Some("dns; mx.example.net".into());
        two.orcpt = Some(String::from("two@example.com").into());
        two.status = RcptStatus::Failed;
        two.tries = 1;
        two.last_error = SmtpReply::parse_line(long.trim_end());
        two.remote_mta = Some("dns;mx.example.com".into());
        meta
    }

    /// The notice for `action`, built at a fixed time with a fixed id.
    fn fixed_notice(action: Action, returned: Returned<'_>, utf8: bool) -> Vec<u8> {
        let meta = fixed_meta(utf8);
        let recipients = meta
            .recipients
            .iter()
            .map(|rcpt| Reported { rcpt, action })
            .collect();
        let now = UNIX_EPOCH + Duration::from_secs(1_795_877_000);
        let (envelope, body) = build(&Notice {
            reporting_mta: "mq.example.org",
            from: "MAILER-DAEMON@mq.example.org",
            original: &meta,
            returned,
            recipients,
            will_retry_until: (action == Action::Delayed)
                .then(|| now + Duration::from_secs(5 * 86_400)),
            now,
            unique: "0065F1A2B3C4D0FEDCBA",
        })
        .unwrap();
        assert_eq!(
            envelope.recipients[0].address.as_str(),
            "sender@example.org"
        );
        assert_eq!(envelope.params.smtputf8, utf8);
        body
    }

    /// Notices are byte for byte what they were: compared with text the
    /// code wrote before `build` was split into its parts. Set
    /// `MAILQUEUE_BLESS=1` to write the files anew after a deliberate
    /// change.
    #[test]
    fn notices_match_the_golden_files() {
        let msg = b"Subject: hello\nFrom: sender@example.org\n\nbody line\r\nlast\n";
        let header = b"Subject: hello\r\nFrom: sender@example.org\r\n";
        let cases: [(&str, Vec<u8>); 4] = [
            (
                "failed-full",
                fixed_notice(Action::Failed, Returned::Full(msg), false),
            ),
            (
                "delayed-too-big-utf8",
                fixed_notice(
                    Action::Delayed,
                    Returned::HeaderOnlyTooBig {
                        header,
                        size: 4321,
                        limit: 1000,
                    },
                    true,
                ),
            ),
            (
                "delivered-header",
                fixed_notice(Action::Delivered, Returned::Header(header), false),
            ),
            (
                "relayed-full-utf8",
                fixed_notice(Action::Relayed, Returned::Full(msg), true),
            ),
        ];
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
        for (name, got) in cases {
            let path = dir.join(format!("dsn-{name}.eml"));
            if std::env::var_os("MAILQUEUE_BLESS").is_some() {
                std::fs::write(&path, &got).unwrap();
            }
            let want = std::fs::read(&path).unwrap();
            assert!(
                got == want,
                "{name}: got\n{}\nwant\n{}",
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want)
            );
        }
    }

    #[test]
    fn short_lines_stay_as_they_are() {
        let line = "Diagnostic-Code: smtp; 550 5.1.1  <b@x.org>: no such user";
        assert_eq!(folded(line, " "), format!("{line}\r\n"));
        let line = "x".repeat(MAX_LINE);
        assert_eq!(folded(&line, " "), format!("{line}\r\n"));
    }

    #[test]
    fn long_lines_are_folded_within_998_and_unfold_to_the_same_text() {
        let words: Vec<String> = (0..400).map(|i| format!("word{i}")).collect();
        let huge_word = "é".repeat(1500);
        for text in [
            words.join(" "),
            format!("550 5.1.1 {huge_word} end"),
            huge_word.clone(),
        ] {
            let line = format!("Diagnostic-Code: smtp; {text}");
            let out = folded(&line, " ");
            assert!(out.ends_with("\r\n"));
            let lines: Vec<&str> = out.trim_end_matches("\r\n").split("\r\n").collect();
            assert!(lines.len() > 1);
            for (i, l) in lines.iter().enumerate() {
                assert!(l.len() <= MAX_LINE, "{}", l.len());
                assert!(!l.contains('\r') && !l.contains('\n'));
                // Continuations start with white space: the field goes on.
                assert_eq!(i > 0, l.starts_with(' '), "{l:?}");
                assert!(!l.trim().is_empty());
            }
            if !text.contains(&huge_word) {
                assert!(lines.iter().all(|l| l.len() <= FOLD_AT), "{out}");
                assert_eq!(out.replace("\r\n", "").trim_end(), line);
            } else {
                // The cuts inside the long word add white space, no more.
                let squeeze = |t: &str| t.split_whitespace().collect::<String>();
                assert_eq!(squeeze(&out), squeeze(&line));
            }
        }
    }
}
