//! Delivery status notifications (RFC 3464): the report sent to a
//! message's sender when recipients fail, are delayed or are delivered.

use std::fmt::Write as _;
use std::time::SystemTime;

use crate::address::Address;
use crate::date::rfc5322;
use crate::envelope::{Envelope, Recipient};
use crate::queue::meta::{MessageMeta, RecipientMeta};
use crate::smtp::reply::{EnhancedCode, SmtpReply};

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
    /// The reply that decided the outcome, if any.
    pub reply: Option<&'a SmtpReply>,
    pub last_attempt: Option<SystemTime>,
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
    pub original_header: &'a [u8],
    pub recipients: Vec<Reported<'a>>,
    /// Used for Date and as the id part of Message-ID and the boundary.
    pub now: SystemTime,
    pub unique: &'a str,
}

/// Builds the notice; `None` when the original has no sender to tell.
pub fn build(n: &Notice<'_>) -> Option<(Envelope, Vec<u8>)> {
    let to: Address = n.original.sender.clone()?;
    let action = n.recipients.first()?.action;
    let boundary = format!("{}/{}", n.unique, n.reporting_mta);
    let subject = match action {
        Action::Failed => "Undelivered Mail Returned to Sender",
        Action::Delayed => "Delayed Mail (still being retried)",
        Action::Delivered | Action::Relayed => "Successful Mail Delivery Report",
    };

    let mut m = String::with_capacity(4096 + n.original_header.len());
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
    m.push_str(match action {
        Action::Failed => {
            "I'm sorry to have to inform you that your message could not\r\n\
             be delivered to one or more recipients. It's attached below.\r\n"
        }
        Action::Delayed => {
            "Your message could not be delivered yet to one or more\r\n\
             recipients. It will be retried until it is too old.\r\n"
        }
        Action::Delivered | Action::Relayed => {
            "Your message was successfully delivered to the destinations\r\n\
             listed below.\r\n"
        }
    });
    m.push_str("\r\n");
    for r in &n.recipients {
        let _ = write!(m, "<{}>: ", r.rcpt.reported_address());
        match r.reply {
            Some(reply) => {
                let _ = write!(m, "{reply}");
            }
            None => m.push_str(r.action.as_str()),
        }
        if let Some(mta) = &r.rcpt.remote_mta {
            let _ = write!(m, " (from {})", mta.trim_start_matches("dns;").trim());
        }
        m.push_str("\r\n");
    }

    let _ = write!(
        m,
        "\r\n--{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
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
    for r in &n.recipients {
        write_recipient_fields(&mut m, r);
    }

    let _ = write!(
        m,
        "\r\n--{boundary}\r\n\
         Content-Type: text/rfc822-headers\r\n\
         Content-Description: Undelivered Message Headers\r\n\
         \r\n"
    );
    let mut body = m.into_bytes();
    push_crlf_lines(&mut body, n.original_header);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());

    let envelope = Envelope {
        sender: None,
        recipients: vec![Recipient::new(to)],
        params: Default::default(),
    };
    Some((envelope, body))
}

fn write_recipient_fields(m: &mut String, r: &Reported<'_>) {
    let status = match r.action {
        Action::Delivered | Action::Relayed => EnhancedCode::new(2, 0, 0),
        _ => r
            .reply
            .map(SmtpReply::status)
            .unwrap_or(EnhancedCode::new(4, 0, 0)),
    };
    let _ = write!(
        m,
        "\r\nFinal-Recipient: rfc822; {}\r\n",
        r.rcpt.reported_address()
    );
    if let Some(orcpt) = &r.rcpt.orcpt {
        let (kind, addr) = orcpt.split_once(';').unwrap_or(("rfc822", orcpt));
        let _ = write!(
            m,
            "Original-Recipient: {}; {}\r\n",
            kind.trim(),
            addr.trim()
        );
    }
    let _ = write!(m, "Action: {}\r\nStatus: {status}\r\n", r.action.as_str());
    if let Some(mta) = &r.rcpt.remote_mta {
        let _ = write!(
            m,
            "Remote-MTA: dns; {}\r\n",
            mta.trim_start_matches("dns;").trim()
        );
    }
    if let Some(reply) = r.reply {
        let _ = write!(m, "Diagnostic-Code: smtp; {reply}\r\n");
    }
    if let Some(t) = r.last_attempt {
        let _ = write!(m, "Last-Attempt-Date: {}\r\n", rfc5322(t));
    }
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

/// Largest original header a notice quotes.
const MAX_QUOTED_HEADER: usize = 64 * 1024;

/// The failure notice for the recipients of `meta` at `failed`, if one is
/// due: not for a null sender, not for a notice, not when notices are off,
/// and only for recipients whose NOTIFY asks for failures.
pub(crate) fn failure_notice(
    config: &crate::config::Config,
    spool: &crate::queue::spool::Spool,
    meta: &MessageMeta,
    failed: &[usize],
) -> Option<(Envelope, Vec<u8>)> {
    if meta.is_dsn {
        for &i in failed {
            log::warn!(
                "{}: notice to <{}> could not be delivered; dropped",
                meta.id,
                meta.recipients[i].address
            );
        }
        return None;
    }
    if meta.sender.is_none() || !config.bounce.enabled {
        return None;
    }
    let last_attempt = meta.last_attempt.map(|t| t.to_system());
    let recipients: Vec<Reported<'_>> = failed
        .iter()
        .map(|&i| &meta.recipients[i])
        .filter(|r| r.notify().failure)
        .map(|r| Reported {
            rcpt: r,
            action: Action::Failed,
            reply: r.last_error.as_ref(),
            last_attempt,
        })
        .collect();
    if recipients.is_empty() {
        return None;
    }
    let header = spool
        .read_header(&meta.id, MAX_QUOTED_HEADER)
        .unwrap_or_else(|e| {
            log::warn!("{}: cannot read the header for the notice: {e}", meta.id);
            Vec::new()
        });
    let from = config.bounce_from();
    let unique = crate::queue::MessageId::generate().to_string();
    build(&Notice {
        reporting_mta: &config.hostname,
        from: &from,
        original: meta,
        original_header: &header,
        recipients,
        now: SystemTime::now(),
        unique: &unique,
    })
}
