//! The client's side of the dialogue at its lowest: a command out, within
//! a deadline, and one reply in, within a deadline, every line of it read
//! by the shared line reader and parsed by [`SmtpReply::parse_line`].

use std::io;
use std::time::Duration;

use super::{protocol_error, Session, State};
use crate::date::format_duration;
use crate::delivery::DeliveryError;
use crate::smtp::deadline::{self, Deadline, DeadlineReader, LineEnd, Overlong};
use crate::smtp::reply::{fold_line, SmtpReply};

/// Longest reply line accepted (RFC 5321 allows 512; servers send more).
const MAX_REPLY_LINE: usize = 4096;
/// Most lines in one multi-line reply: more is not an answer but a stream.
/// With [`MAX_REPLY_LINE`] this bounds what one reply makes us read.
const MAX_REPLY_LINES: usize = 200;
/// Most bytes of a reply's lines kept as lines (EHLO keywords, a few
/// hundred bytes in practice); the rest is read and dropped.
const MAX_KEPT_LINES: usize = 16 * 1024;
/// Most text of one reply kept: it goes into metadata, log lines and
/// notices, and a hostile server can send a megabyte of it.
pub(super) const MAX_REPLY_TEXT: usize = 1024;
/// Ends a reply text cut at [`MAX_REPLY_TEXT`].
pub(super) const CUT_MARK: &str = " [...]";

/// A reply together with all its lines' texts.
pub(super) struct FullReply {
    pub reply: SmtpReply,
    pub lines: Vec<String>,
}

/// The text of a reply as its lines come, kept up to [`MAX_REPLY_TEXT`].
#[derive(Default)]
struct ReplyText {
    text: String,
    /// More came than was kept.
    cut: bool,
}

impl ReplyText {
    fn push(&mut self, line: &str) {
        if self.cut {
            return;
        }
        if !self.text.is_empty() {
            self.text.push(' ');
        }
        self.text.push_str(line);
        if self.text.len() > MAX_REPLY_TEXT {
            self.text = cut_text(&self.text, MAX_REPLY_TEXT).to_string();
            self.cut = true;
        }
    }

    fn finish(mut self) -> String {
        if self.cut {
            self.text.push_str(CUT_MARK);
        }
        self.text
    }
}

/// The start of `text`, at most `max` bytes, cut at a character boundary.
fn cut_text(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The code of a line framed as a reply line (three digits, then the end,
/// a space or a dash) whatever its value.
fn framed_code(line: &str) -> Option<&str> {
    let b = line.as_bytes();
    let framed = b.len() >= 3
        && b[..3].iter().all(u8::is_ascii_digit)
        && (b.len() == 3 || b[3] == b' ' || b[3] == b'-');
    framed.then(|| &line[..3])
}

impl Session {
    pub(super) fn send(&mut self, text: &str) -> Result<(), DeliveryError> {
        self.send_within(text, self.settings.command_timeout)
    }

    /// Writes a command (or a pipelined batch), all of it within `timeout`.
    pub(super) fn send_within(
        &mut self,
        text: &str,
        timeout: Duration,
    ) -> Result<(), DeliveryError> {
        if self.is_broken() {
            return Err(self.out_of_step());
        }
        let result = deadline::write_within(self.io.get_mut(), text.as_bytes(), timeout)
            .map_err(|e| DeliveryError::network(&format!("write to {}", self.relay), &e));
        if result.is_err() {
            self.state = State::Broken;
        }
        result
    }

    /// Sends one command line and reads its reply.
    pub(super) fn command(&mut self, line: &str) -> Result<FullReply, DeliveryError> {
        self.send(&format!("{line}\r\n"))?;
        self.read_reply(self.settings.command_timeout)
    }

    /// Reads one reply, all of it within `timeout`. Any failure leaves the
    /// session out of step.
    pub(super) fn read_reply(&mut self, timeout: Duration) -> Result<FullReply, DeliveryError> {
        if self.is_broken() {
            return Err(self.out_of_step());
        }
        let result = self.read_reply_within(Deadline::after(timeout), timeout);
        if result.is_err() {
            self.state = State::Broken;
        }
        // A 421 is about the channel, not the transaction: the way many
        // servers end an idle connection is a 421 to the next command.
        self.heard |= result.as_ref().is_ok_and(|r| r.reply.code != 421);
        result
    }

    fn read_reply_within(
        &mut self,
        end: Deadline,
        timeout: Duration,
    ) -> Result<FullReply, DeliveryError> {
        let mut lines = Vec::new();
        let mut line = Vec::new();
        // The first line: its code and enhanced code are the reply's.
        let mut first: Option<SmtpReply> = None;
        let mut text = ReplyText::default();
        // Lines read, and bytes of them kept.
        let mut count = 0usize;
        let mut kept = 0usize;
        loop {
            self.read_reply_line(&mut line, end, timeout)?;
            let raw = String::from_utf8_lossy(&line);
            let raw = raw.trim_end_matches(['\r', '\n']);
            let parsed = self.parse_reply_line(raw, first.as_ref())?;
            let line_text = raw.get(4..).unwrap_or("");
            // Every line's text after the first line's enhanced code.
            let first = first.get_or_insert_with(|| parsed.clone());
            if first.enhanced.is_some() {
                text.push(&parsed.text);
            } else {
                text.push(&fold_line(line_text));
            }
            if kept + line_text.len() <= MAX_KEPT_LINES {
                kept += line_text.len();
                lines.push(line_text.to_string());
            }
            if raw.len() == 3 || raw.as_bytes()[3] == b' ' {
                break;
            }
            count += 1;
            if count > MAX_REPLY_LINES {
                return Err(
                    protocol_error(&format!("endless reply from {}", self.relay))
                        .at(self.host.clone()),
                );
            }
        }
        let first = first.expect("a reply has a first line");
        Ok(FullReply {
            reply: SmtpReply::new(first.code, first.enhanced, &text.finish()),
            lines,
        })
    }

    /// Reads one line of a reply into `line`; the connection closing
    /// before it is an error.
    fn read_reply_line(
        &mut self,
        line: &mut Vec<u8>,
        end: Deadline,
        timeout: Duration,
    ) -> Result<(), DeliveryError> {
        let mut reader = DeadlineReader::new(&mut self.io, end);
        let ended = deadline::read_line(&mut reader, line, MAX_REPLY_LINE, Overlong::Fail)
            .map_err(|e| {
                // A socket read timeout reports "Resource temporarily
                // unavailable"; the operator needs to read "timeout".
                let e = if deadline::is_timeout(&e) {
                    let what = format!("no reply within {}", format_duration(timeout));
                    io::Error::new(io::ErrorKind::TimedOut, what)
                } else {
                    e
                };
                self.io_failed("reading reply from", &e)
            })?;
        if ended == LineEnd::Eof && line.is_empty() {
            let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed");
            return Err(self.io_failed("reading reply from", &eof));
        }
        Ok(())
    }

    /// Parses one line of a reply, which must carry the code of the reply's
    /// `first` line.
    fn parse_reply_line(
        &self,
        raw: &str,
        first: Option<&SmtpReply>,
    ) -> Result<SmtpReply, DeliveryError> {
        let code = framed_code(raw);
        let same = |c: &str| first.is_none_or(|f| c == f.code.to_string());
        match (SmtpReply::parse_line(raw), code) {
            (Some(r), Some(c)) if same(c) => Ok(r),
            // Framed as a reply line, but not a reply code.
            (None, Some(c)) if same(c) => Err(protocol_error(&format!(
                "reply code {} from {}",
                c.parse::<u16>().unwrap_or(0),
                self.relay
            ))
            .at(self.host.clone())),
            _ => Err(protocol_error(&format!(
                "malformed reply from {}: {:?}",
                self.relay,
                cut_text(raw, 200)
            ))
            .at(self.host.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::testing::{huge_rcpt_reply, sender, server, settings};
    use super::*;
    use crate::envelope::{MailParams, Recipient};
    use std::io::Write;

    #[test]
    fn a_reply_trickled_byte_by_byte_ends_at_the_timeout() {
        // Each byte comes well within the timeout; the whole reply never
        // does. Only a deadline for the whole reply ends this.
        let endpoint = server(|mut s| {
            for b in b"220 slow greeting ".iter().chain([b'.'; 200].iter()) {
                if s.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let started = Instant::now();
        let e = Session::open(&settings(Duration::from_millis(300)), &endpoint, false)
            .err()
            .expect("a greeting that never ends cannot open a session");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(e.reply().code, 451, "{e}");
    }

    #[test]
    fn a_huge_reply_keeps_its_code_and_only_the_start_of_its_text() {
        let r = Recipient::new("a@example.net".parse().unwrap());
        // 200 lines, 100 KB: read through, kept short.
        let endpoint = huge_rcpt_reply(200);
        let mut session =
            Session::open(&settings(Duration::from_secs(5)), &endpoint, false).unwrap();
        let results = session
            .envelope(&sender(), &MailParams::default(), 10, &[&r])
            .unwrap();
        let e = results[0].clone().expect_err("550 at RCPT");
        assert!(e.is_permanent());
        assert_eq!(e.reply().code, 550);
        assert_eq!(e.reply().status().to_string(), "5.1.1");
        assert!(
            e.reply().text.len() <= MAX_REPLY_TEXT + CUT_MARK.len(),
            "{}",
            e.reply().text.len()
        );
        assert!(e.reply().text.starts_with("0000yyy"), "{}", e.reply().text);
        assert!(e.reply().text.ends_with(CUT_MARK), "{}", e.reply().text);
        // In step: the session goes on.
        assert!(session.reset().is_ok());

        // 3 000 lines: not a reply but a stream; given up on.
        let endpoint = huge_rcpt_reply(3000);
        let mut session =
            Session::open(&settings(Duration::from_secs(5)), &endpoint, false).unwrap();
        let e = session
            .envelope(&sender(), &MailParams::default(), 10, &[&r])
            .expect_err("no end to the reply");
        assert!(!e.is_permanent());
        assert!(e.to_string().contains("endless reply"), "{e}");
        assert!(e.to_string().len() < 200);
        assert!(session.is_broken());
    }

    /// Opens a session with a server whose reply to EHLO is `script`.
    fn open_with_ehlo_reply(script: &'static [u8]) -> Result<(), DeliveryError> {
        let endpoint = server(move |mut s| {
            let _ = s.write_all(b"220 ok\r\n");
            let _ = s.write_all(script);
            std::thread::sleep(Duration::from_millis(500));
        });
        Session::open(&settings(Duration::from_secs(2)), &endpoint, false).map(|_| ())
    }

    #[test]
    fn malformed_and_odd_replies_are_told_apart() {
        let e = open_with_ehlo_reply(b"250-a\r\n251 b\r\n").err().unwrap();
        assert!(e.to_string().contains("malformed reply"), "{e}");
        let e = open_with_ehlo_reply(b"hello\r\n").err().unwrap();
        assert!(e.to_string().contains("malformed reply"), "{e}");
        let e = open_with_ehlo_reply(b"199 odd\r\n").err().unwrap();
        assert!(e.to_string().contains("reply code 199"), "{e}");
        assert!(open_with_ehlo_reply(b"250-a\r\n250 b\r\n").is_ok());
    }

    #[test]
    fn reply_text_is_joined_and_lines_must_be_framed() {
        let mut t = ReplyText::default();
        t.push("a");
        t.push("b");
        assert_eq!(t.finish(), "a b");
        assert_eq!(framed_code("250"), Some("250"));
        assert_eq!(framed_code("250-x"), Some("250"));
        assert_eq!(framed_code("2500"), None);
        assert_eq!(framed_code("25"), None);
    }
}
