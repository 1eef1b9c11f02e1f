//! `sendmail -bs`: an SMTP session on standard input and output, the way
//! PHP mailers (Symfony Mailer, Laravel) talk to a local sendmail by
//! default. Each message taken becomes an incoming file, written exactly
//! as a plain `sendmail` run would write it (same headers added, same
//! limits, same durability), and the reply after DATA says whether it is
//! queued.

use std::io::{self, BufRead, Read, Write};

use mailqueue::config::Config;
use mailqueue::smtp::command::{parse, Command};
use mailqueue::{Address, ReversePath, SmtpReply};

use super::message::split_header;
use super::{exit, input_limit, new_envelope, queue_message, Failure, Options};

/// Longest command line taken (RFC 5321 §4.5.3.1.4 allows 512 octets;
/// ESMTP parameters make lines longer).
const MAX_LINE: u64 = 4096;

/// What the session has gathered for the message in progress.
struct Session<'a> {
    config: &'a Config,
    opts: &'a Options,
    out: &'a mut dyn Write,
    /// `None` before MAIL; `Some(None)` for the null sender.
    sender: Option<ReversePath>,
    recipients: Vec<Address>,
}

/// Runs the session until QUIT or the end of input; returns the exit
/// code: 0 unless standard input or output failed.
pub fn smtp_session(
    config: &Config,
    opts: &Options,
    input: &mut dyn BufRead,
    output: &mut dyn Write,
) -> u8 {
    let mut s = Session {
        config,
        opts,
        out: output,
        sender: None,
        recipients: Vec::new(),
    };
    let greeting = format!("{} ESMTP mailqueue (sendmail -bs)", config.hostname);
    match s.run(input, &greeting) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("sendmail: {e}");
            exit::IOERR
        }
    }
}

impl Session<'_> {
    fn run(&mut self, input: &mut dyn BufRead, greeting: &str) -> io::Result<()> {
        self.send(&SmtpReply::new(220, None, greeting))?;
        while let Some(line) = read_line(input)? {
            let Some(line) = line else {
                self.reply(500, (5, 5, 6), "Error: line too long")?;
                continue;
            };
            let command = match parse(&line) {
                Ok(c) => c,
                Err(reply) => {
                    self.send(&reply)?;
                    continue;
                }
            };
            if !self.command(command, input)? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Answers one command; false once the session is over.
    fn command(&mut self, command: Command, input: &mut dyn BufRead) -> io::Result<bool> {
        match command {
            Command::Helo(_) => self.reply(250, (2, 0, 0), &self.config.hostname.clone())?,
            Command::Ehlo(_) => {
                let host = &self.config.hostname;
                let text = format!("250-{host}\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 HELP\r\n");
                self.out.write_all(text.as_bytes())?;
                self.out.flush()?;
            }
            Command::Mail(sender, _) => {
                if self.sender.is_some() {
                    self.reply(503, (5, 5, 1), "Error: nested MAIL command")?;
                } else {
                    self.sender = Some(sender);
                    self.reply(250, (2, 1, 0), "Ok")?;
                }
            }
            Command::Rcpt(address, _) => {
                if self.sender.is_none() {
                    self.reply(503, (5, 5, 1), "Error: need MAIL command")?;
                } else if self.recipients.len() >= self.config.listen.max_recipients {
                    self.reply(452, (4, 5, 3), "Error: too many recipients")?;
                } else {
                    self.recipients.push(address);
                    self.reply(250, (2, 1, 5), "Ok")?;
                }
            }
            Command::Data => self.data(input)?,
            Command::Rset => {
                self.reset();
                self.reply(250, (2, 0, 0), "Ok")?;
            }
            Command::Noop => self.reply(250, (2, 0, 0), "Ok")?,
            Command::Quit => {
                self.reply(221, (2, 0, 0), "Bye")?;
                return Ok(false);
            }
            Command::Vrfy => self.reply(252, (2, 0, 0), "Send some mail, I'll try my best")?,
            Command::Help => self.reply(214, (2, 0, 0), "See RFC 5321")?,
            Command::StartTls => self.reply(502, (5, 5, 1), "Error: not over a pipe")?,
        }
        Ok(true)
    }

    /// DATA: reads the message to the lone dot and queues it.
    fn data(&mut self, input: &mut dyn BufRead) -> io::Result<()> {
        let Some(sender) = self.sender.clone() else {
            return self.reply(503, (5, 5, 1), "Error: need RCPT command");
        };
        if self.recipients.is_empty() {
            return self.reply(554, (5, 5, 1), "Error: no valid recipients");
        }
        self.reply(354, (2, 0, 0), "End data with <CR><LF>.<CR><LF>")?;
        let limit = input_limit(self.config);
        let text = read_data(input, limit)?;
        let recipients = std::mem::take(&mut self.recipients);
        self.reset();
        let Some(text) = text else {
            let why = format!("Error: message exceeds fixed maximum message size ({limit})");
            return self.reply(552, (5, 3, 4), &why);
        };
        let reply = match self.queue(sender, recipients, &text) {
            Ok(id) => SmtpReply::with_code(250, (2, 0, 0), &format!("Ok: queued as {id}")),
            Err(f) => failure_reply(&f),
        };
        self.send(&reply)
    }

    /// Drops the message into `incoming/`, as a plain sendmail run does.
    fn queue(
        &self,
        sender: ReversePath,
        recipients: Vec<Address>,
        text: &[u8],
    ) -> Result<String, Failure> {
        let hostname = &self.config.hostname;
        let recipients = recipients
            .into_iter()
            .map(|a| self.config.local.rewrite(a, hostname))
            .collect();
        let envelope = new_envelope(self.opts, sender, recipients)?;
        let (header, body) = split_header(text);
        let path = queue_message(self.config, self.opts, &envelope, &header, &body)?;
        Ok(path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default())
    }

    fn reset(&mut self) {
        self.sender = None;
        self.recipients.clear();
    }

    fn reply(&mut self, code: u16, enhanced: (u8, u16, u16), text: &str) -> io::Result<()> {
        self.send(&SmtpReply::with_code(code, enhanced, text))
    }

    fn send(&mut self, reply: &SmtpReply) -> io::Result<()> {
        write!(self.out, "{reply}\r\n")?;
        self.out.flush()
    }
}

/// The SMTP reply for a failed submission: temporary for what may pass
/// (a full queue or disk, an I/O error), permanent for the message's own
/// faults.
fn failure_reply(f: &Failure) -> SmtpReply {
    let text = format!("Error: {}", f.message);
    match f.code {
        exit::TEMPFAIL | exit::IOERR | exit::CANTCREAT | exit::SOFTWARE => {
            SmtpReply::with_code(451, (4, 3, 0), &text)
        }
        _ => SmtpReply::with_code(554, (5, 6, 0), &text),
    }
}

/// One command line without its line end: `None` at the end of input,
/// `Some(None)` for a line over [`MAX_LINE`] (read to its end and dropped).
fn read_line(input: &mut dyn BufRead) -> io::Result<Option<Option<String>>> {
    let mut line = Vec::new();
    let n = input.take(MAX_LINE).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') && n as u64 == MAX_LINE {
        let mut rest = Vec::new();
        input.read_until(b'\n', &mut rest)?;
        return Ok(Some(None));
    }
    let text = String::from_utf8_lossy(&line);
    Ok(Some(Some(text.trim_end_matches(['\r', '\n']).to_string())))
}

/// The message after DATA, to the lone dot: dots unstuffed, lines ended
/// with CRLF. `None` when it is over `limit` bytes (read to its end all
/// the same, so the session can go on); an error at the end of input.
fn read_data(input: &mut dyn BufRead, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let mut text = Vec::new();
    let mut too_big = false;
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "standard input ended in DATA",
            ));
        }
        let content = line
            .strip_suffix(b"\n")
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .unwrap_or(&line);
        if content == b"." {
            return Ok((!too_big).then_some(text));
        }
        let content = content.strip_prefix(b".").unwrap_or(content);
        if text.len() as u64 + content.len() as u64 + 2 > limit {
            too_big = true;
            text.clear();
        }
        if !too_big {
            text.extend_from_slice(content);
            text.extend_from_slice(b"\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::read_data;

    #[test]
    fn data_is_unstuffed_and_ends_at_the_lone_dot() {
        let mut input = &b"Subject: x\n\n..dot\r\nline\n.\nQUIT\n"[..];
        let text = read_data(&mut input, 1000).unwrap().unwrap();
        assert_eq!(text, b"Subject: x\r\n\r\n.dot\r\nline\r\n");
        assert_eq!(input, b"QUIT\n");
    }

    #[test]
    fn too_big_data_is_read_to_its_end_and_refused() {
        let mut input = &b"aaaaaaaaaa\nbbbbbbbbbb\n.\nQUIT\n"[..];
        assert!(read_data(&mut input, 15).unwrap().is_none());
        assert_eq!(input, b"QUIT\n");
        let mut cut = &b"abc\n"[..];
        assert!(read_data(&mut cut, 100).is_err());
    }
}
