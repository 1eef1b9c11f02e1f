//! The clean-up step every message passes on its way into the queue, as
//! in Postfix's cleanup(8): one place that decides what we add to a
//! message (the `Received:` line; for local submissions the `From:`
//! it lacks; for every message the `Date:` and `Message-ID:` it lacks,
//! added by the queue's staging step) and that each recipient is queued
//! once, whichever way the message came in.

use std::net::IpAddr;
use std::time::SystemTime;

use crate::address::Address;
use crate::date::rfc5322;
use crate::envelope::Recipient;
use crate::id::MessageId;

/// Where a message came from, as its `Received:` line tells it.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    /// An SMTP client.
    Smtp {
        /// What it said in HELO/EHLO (`None`: it said nothing).
        helo: Option<&'a str>,
        /// Its address, as the socket reports it.
        ip: IpAddr,
        /// `ESMTPS`, `UTF8SMTP`...: RFC 3848's `with` keyword.
        protocol: &'static str,
        /// The queue id the message is stored under.
        id: &'a str,
        /// The recipient, when there is only one (RFC 5321 §4.4 `for`).
        only_recipient: Option<&'a Address>,
    },
    /// A local user, by the uid the kernel reports owning the file that
    /// sendmail wrote: never a name the submitter chose.
    Local {
        /// The submitter's uid.
        uid: u32,
    },
}

/// The `Received:` line (with its CRLF) that `hostname` adds at `now`.
pub fn received(hostname: &str, origin: &Origin<'_>, now: SystemTime) -> String {
    match origin {
        Origin::Smtp {
            helo,
            ip,
            protocol,
            id,
            only_recipient,
        } => {
            // The client chose its HELO name: no control characters (it
            // could fold or end the header), and a bounded length.
            let helo: String = helo
                .unwrap_or("unknown")
                .chars()
                .filter(|c| !c.is_control())
                .take(255)
                .collect();
            let mut h = format!(
                "Received: from {helo} ([{ip}])\r\n\tby {hostname} (mailqueue) with {protocol} id {id}"
            );
            if let Some(only) = only_recipient {
                h.push_str(&format!("\r\n\tfor <{only}>"));
            }
            h.push_str(&format!("; {}\r\n", rfc5322(now)));
            h
        }
        Origin::Local { uid } => format!(
            "Received: by {hostname} (mailqueue, from userid {uid});\r\n\t{}\r\n",
            rfc5322(now)
        ),
    }
}

/// What a local submission lacks of `From:`, `Date:` and `Message-ID:`,
/// as header lines to put before its own. `full_name` is sendmail's
/// `-F`. SMTP clients get no `From:` added (as with Postfix for clients
/// other than local ones); the queue adds `Date:` and `Message-ID:` to
/// every message ([`missing_date_and_id`]).
pub fn missing_headers(
    header: &[u8],
    hostname: &str,
    sender: Option<&Address>,
    full_name: Option<&str>,
    now: SystemTime,
) -> Vec<u8> {
    let mut m = Vec::new();
    if !has_field(header, "From") {
        let addr = sender
            .map(|a| a.to_string())
            .unwrap_or_else(|| format!("MAILER-DAEMON@{hostname}"));
        let line = match full_name {
            Some(name) => format!(
                "From: \"{}\" <{addr}>\r\n",
                name.replace(['"', '\\', '\r', '\n'], "")
            ),
            None => format!("From: {addr}\r\n"),
        };
        m.extend_from_slice(line.as_bytes());
    }
    m.extend_from_slice(&missing_date_and_id(header, hostname, now));
    m
}

/// What any message lacks of `Date:` and `Message-ID:` (the unique id
/// at `hostname`), as header lines: added to every message at queueing,
/// whichever way it came in, as big providers refuse mail without them.
pub fn missing_date_and_id(header: &[u8], hostname: &str, now: SystemTime) -> Vec<u8> {
    let mut m = Vec::new();
    if !has_field(header, "Date") {
        m.extend_from_slice(format!("Date: {}\r\n", rfc5322(now)).as_bytes());
    }
    if !has_field(header, "Message-ID") {
        let id = MessageId::generate();
        m.extend_from_slice(format!("Message-ID: <{id}@{hostname}>\r\n").as_bytes());
    }
    m
}

/// Whether the header has a field of this name (any case).
pub fn has_field(header: &[u8], name: &str) -> bool {
    // Any line end the wire makes one: CR LF, a bare LF, a bare CR.
    // Blanks before the colon are the obsolete syntax (RFC 5322 §4.5),
    // still a field of that name: the hygiene check counts it, and a
    // second one must not be added.
    header.split(|b| *b == b'\n' || *b == b'\r').any(|line| {
        line.iter().position(|&b| b == b':').is_some_and(|colon| {
            line[..colon]
                .trim_ascii_end()
                .eq_ignore_ascii_case(name.as_bytes())
        })
    })
}

/// Each recipient once, in a stable order: a list that names one address
/// twice must not get it the message twice (nor past a recipient limit).
pub fn unique_recipients(mut recipients: Vec<Address>) -> Vec<Address> {
    recipients.sort();
    recipients.dedup();
    recipients
}

/// Each recipient once, the first of each address with its parameters,
/// in the order given: a client that names one address twice (in two
/// RCPT commands) gets it one copy, as with Postfix's cleanup.
pub fn unique_by_address(recipients: Vec<Recipient>) -> Vec<Recipient> {
    let mut seen = std::collections::HashSet::with_capacity(recipients.len());
    recipients
        .into_iter()
        .filter(|r| seen.insert(r.address.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Address {
        s.parse().unwrap()
    }

    #[test]
    fn a_local_received_line_names_the_uid_and_nothing_the_submitter_wrote() {
        let h = received(
            "mx.example",
            &Origin::Local { uid: 1001 },
            SystemTime::UNIX_EPOCH,
        );
        assert!(h.starts_with("Received: by mx.example (mailqueue, from userid 1001);\r\n\t"));
        assert!(h.ends_with("\r\n"));
    }

    #[test]
    fn an_smtp_received_line_strips_control_characters_from_helo() {
        let only = addr("a@example.net");
        let origin = Origin::Smtp {
            helo: Some("evil\r\nX-Forged: 1"),
            ip: "127.0.0.1".parse().unwrap(),
            protocol: "ESMTP",
            id: "ID1",
            only_recipient: Some(&only),
        };
        let h = received("mx.example", &origin, SystemTime::UNIX_EPOCH);
        assert!(h.starts_with(
            "Received: from evilX-Forged: 1 ([127.0.0.1])\r\n\tby mx.example (mailqueue) with ESMTP id ID1\r\n\tfor <a@example.net>; "
        ));
        assert_eq!(h.matches("\r\n").count(), 3);
    }

    #[test]
    fn only_missing_fields_are_added() {
        let header = b"from: a@example.org\r\nMessage-Id: <x@y>\r\n";
        let added = missing_headers(header, "h.example", None, None, SystemTime::UNIX_EPOCH);
        let added = String::from_utf8(added).unwrap();
        assert!(added.starts_with("Date: "), "{added}");
        assert_eq!(added.lines().count(), 1);
        let all = missing_headers(
            b"",
            "h.example",
            None,
            Some("A \"B\""),
            SystemTime::UNIX_EPOCH,
        );
        let all = String::from_utf8(all).unwrap();
        assert!(
            all.starts_with("From: \"A B\" <MAILER-DAEMON@h.example>\r\nDate: "),
            "{all}"
        );
        assert!(all.contains("Message-ID: <") && all.ends_with("@h.example>\r\n"));
    }

    #[test]
    fn a_field_with_blanks_before_its_colon_is_there() {
        let header = b"Date : Tue, 1 Dec 2026 12:00:00 +0000\r\nMessage-ID\t: <a@b>\r\n";
        assert!(missing_date_and_id(header, "h.example", SystemTime::UNIX_EPOCH).is_empty());
        assert!(!has_field(b"X-Date: x\r\n Date: folded\r\n", "Date"));
    }

    #[test]
    fn smtp_recipients_are_queued_once_in_order_with_the_first_parameters() {
        let mut first = Recipient::new(addr("b@x.org"));
        first.notify = Some("SUCCESS".parse().unwrap());
        let rcpts = vec![
            first.clone(),
            Recipient::new(addr("a@x.org")),
            Recipient::new(addr("b@x.org")),
        ];
        let unique = unique_by_address(rcpts);
        assert_eq!(unique.len(), 2);
        assert_eq!(unique[0], first);
        assert_eq!(unique[1].address, addr("a@x.org"));
    }

    #[test]
    fn recipients_are_queued_once() {
        let r = unique_recipients(vec![addr("b@x.org"), addr("a@x.org"), addr("b@x.org")]);
        assert_eq!(r, vec![addr("a@x.org"), addr("b@x.org")]);
    }
}
