//! The sendmail-compatible command: reads a message on standard input and
//! drops it, complete and fsynced, into `<spool>/incoming/`, where the
//! daemon picks it up (at once when told over the control socket, at
//! start, and every few seconds). With no daemon running the message waits
//! there safely.
//!
//! An incoming file is one line of JSON (the envelope) and then the
//! message exactly as it will be queued.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::address::Address;
use crate::config::Config;
use crate::control::{self, ControlError, Request};
use crate::date::rfc5322;
use crate::envelope::Envelope;
use crate::queue::spool::sync_dir;
use crate::queue::{MessageId, Queue};

/// sysexits(3) codes.
pub mod exit {
    pub const OK: u8 = 0;
    pub const USAGE: u8 = 64;
    pub const DATAERR: u8 = 65;
    pub const SOFTWARE: u8 = 70;
    pub const CANTCREAT: u8 = 73;
    pub const IOERR: u8 = 74;
    pub const TEMPFAIL: u8 = 75;
}

/// Largest message taken on standard input when no config says otherwise.
const DEFAULT_MAX_SIZE: u64 = 32 * 1024 * 1024;

/// What the command line asked for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `-t`: recipients from To, Cc and Bcc (Bcc is then removed).
    pub extract: bool,
    /// `-i`/`-oi`: a line with a lone dot does not end the message.
    pub ignore_dots: bool,
    pub sender: Option<String>,
    pub full_name: Option<String>,
    pub recipients: Vec<String>,
    pub mode: Mode,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Send,
    /// `-bp`: list the queue.
    List,
    /// `-q`: flush the queue.
    Flush,
}

/// Parses sendmail's command line (without the program name).
///
/// ```
/// use mailqueue::sendmail::{parse_args, Mode};
/// let o = parse_args(&["-t", "-oi", "-fme@example.org", "-F", "Me", "a@example.org"]).unwrap();
/// assert!(o.extract && o.ignore_dots);
/// assert_eq!(o.sender.as_deref(), Some("me@example.org"));
/// assert_eq!(o.full_name.as_deref(), Some("Me"));
/// assert_eq!(o.recipients, vec!["a@example.org"]);
/// assert_eq!(parse_args(&["-bp"]).unwrap().mode, Mode::List);
/// ```
pub fn parse_args<S: AsRef<str>>(args: &[S]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut i = 0;
    let value = |i: &mut usize, inline: &str, flag: &str| -> Result<String, String> {
        if !inline.is_empty() {
            return Ok(inline.to_string());
        }
        *i += 1;
        args.get(*i)
            .map(|a| a.as_ref().to_string())
            .ok_or_else(|| format!("option {flag} needs a value"))
    };
    while i < args.len() {
        let a = args[i].as_ref();
        if a == "--" {
            o.recipients
                .extend(args[i + 1..].iter().map(|a| a.as_ref().to_string()));
            break;
        }
        if !a.starts_with('-') || a == "-" {
            o.recipients.push(a.to_string());
            i += 1;
            continue;
        }
        match a {
            "-t" => o.extract = true,
            "-i" | "-oi" => o.ignore_dots = true,
            "-bp" => o.mode = Mode::List,
            "-bm" => o.mode = Mode::Send,
            "-v" | "-n" | "-U" | "-m" | "-om" | "-oem" | "-oee" | "-oep" | "-oeq" | "-oew" => {}
            _ if a.starts_with("-q") => o.mode = Mode::Flush,
            _ if a.starts_with("-f") || a.starts_with("-r") => {
                o.sender = Some(value(&mut i, &a[2..], "-f")?)
            }
            _ if a.starts_with("-F") => o.full_name = Some(value(&mut i, &a[2..], "-F")?),
            // Options with a value that sendmail accepts and we ignore.
            _ if a.starts_with("-N")
                || a.starts_with("-R")
                || a.starts_with("-V")
                || a.starts_with("-B")
                || a.starts_with("-X") =>
            {
                if a.len() == 2 {
                    value(&mut i, "", a)?;
                }
            }
            // Other -o options (-oX value, -oXvalue) are ignored, as sendmail does.
            _ if a.starts_with("-o") => {}
            _ if a.starts_with("-b") => return Err(format!("mode {a} is not supported")),
            _ => return Err(format!("unknown option {a}")),
        }
        i += 1;
    }
    Ok(o)
}

/// The envelope line of an incoming file.
#[derive(Debug, Serialize, Deserialize)]
struct IncomingEnvelope {
    sender: Option<Address>,
    recipients: Vec<Address>,
}

/// A sendmail failure with its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

/// Reads the message from `input` and queues it; returns the file name
/// in `incoming/` it was written to.
pub fn submit(
    config: &Config,
    opts: &Options,
    input: &mut dyn BufRead,
) -> Result<PathBuf, Failure> {
    let limit = config
        .listen
        .max_message_size
        .max(1)
        .min(DEFAULT_MAX_SIZE.max(config.listen.max_message_size));
    let raw = read_message(input, opts.ignore_dots, limit)?;
    let (header, body) = split_header(&raw);

    let sender = match &opts.sender {
        Some(s) if s.is_empty() || s == "<>" => None,
        Some(s) => Some(
            Address::parse(s.trim_matches(['<', '>']))
                .map_err(|e| fail(exit::DATAERR, format!("sender: {e}")))?,
        ),
        None => Some(default_sender(config)?),
    };
    let mut recipients = Vec::new();
    for r in &opts.recipients {
        for part in r.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let a = Address::parse(part.trim_matches(['<', '>']))
                .or_else(|_| Address::parse(&format!("{part}@{}", config.hostname)))
                .map_err(|e| fail(exit::DATAERR, format!("recipient: {e}")))?;
            recipients.push(a);
        }
    }
    if opts.extract {
        recipients.extend(header_recipients(&header)?);
    }
    recipients.sort();
    recipients.dedup();
    if recipients.is_empty() {
        return Err(fail(
            exit::USAGE,
            "no recipients given (name them, or use -t)",
        ));
    }

    let message = complete_message(config, opts, sender.as_ref(), &header, &body);
    check_quota(config, message.len() as u64)?;
    let envelope = IncomingEnvelope { sender, recipients };
    let path = write_incoming(&config.spool, &envelope, &message)?;
    match control::request(&config.spool, &Request::Pickup) {
        Ok(_) | Err(ControlError::NoDaemon) => {}
        Err(e) => log::warn!("message queued but the daemon was not told: {e}"),
    }
    Ok(path)
}

/// Reads standard input: to EOF, or with `ignore_dots` false also up to a
/// line holding a lone dot. Line ends become CRLF.
fn read_message(
    input: &mut dyn BufRead,
    ignore_dots: bool,
    limit: u64,
) -> Result<Vec<u8>, Failure> {
    let mut out = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .map_err(|e| fail(exit::IOERR, format!("reading the message: {e}")))?;
        if n == 0 {
            break;
        }
        let content = line.strip_suffix(b"\n").unwrap_or(&line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if !ignore_dots && content == b"." {
            break;
        }
        out.extend_from_slice(content);
        out.extend_from_slice(b"\r\n");
        if out.len() as u64 > limit {
            return Err(fail(
                exit::DATAERR,
                format!("message larger than {limit} bytes"),
            ));
        }
    }
    Ok(out)
}

/// Splits the header block off; a message that starts with a body line
/// has an empty header.
fn split_header(raw: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut pos = 0;
    for line in raw.split_inclusive(|b| *b == b'\n') {
        let is_blank = line == b"\r\n";
        let is_cont = line.first().is_some_and(|b| *b == b' ' || *b == b'\t') && pos > 0;
        let is_field = line
            .iter()
            .position(|b| *b == b':')
            .is_some_and(|c| c > 0 && line[..c].iter().all(|b| b.is_ascii_graphic()));
        if is_blank {
            return (raw[..pos].to_vec(), raw[pos + line.len()..].to_vec());
        }
        if !(is_cont || is_field) {
            return (raw[..pos].to_vec(), raw[pos..].to_vec());
        }
        pos += line.len();
    }
    (raw.to_vec(), Vec::new())
}

/// Recipients from To, Cc and Bcc.
fn header_recipients(header: &[u8]) -> Result<Vec<Address>, Failure> {
    let (fields, _) = mailparse::parse_headers(header)
        .map_err(|e| fail(exit::DATAERR, format!("header: {e}")))?;
    let mut out = Vec::new();
    for f in fields.iter() {
        let key = f.get_key_ref();
        if !["to", "cc", "bcc"]
            .iter()
            .any(|k| key.eq_ignore_ascii_case(k))
        {
            continue;
        }
        let list = mailparse::addrparse_header(f)
            .map_err(|e| fail(exit::DATAERR, format!("{key}: {e}")))?;
        for a in list.iter() {
            let singles: Vec<&mailparse::SingleInfo> = match a {
                mailparse::MailAddr::Single(s) => vec![s],
                mailparse::MailAddr::Group(g) => g.addrs.iter().collect(),
            };
            for s in singles {
                out.push(
                    Address::parse(&s.addr)
                        .map_err(|e| fail(exit::DATAERR, format!("{key}: {e}")))?,
                );
            }
        }
    }
    Ok(out)
}

fn has_field(header: &[u8], name: &str) -> bool {
    header.split(|b| *b == b'\n').any(|line| {
        line.len() > name.len()
            && line[name.len()] == b':'
            && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
    })
}

/// The header without Bcc fields (and their continuation lines).
fn without_bcc(header: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len());
    let mut skipping = false;
    for line in header.split_inclusive(|b| *b == b'\n') {
        let cont = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !cont {
            skipping = line.len() > 4 && line[..4].eq_ignore_ascii_case(b"bcc:");
        }
        if !skipping {
            out.extend_from_slice(line);
        }
    }
    out
}

/// Adds Received, and From, Date and Message-ID when missing.
fn complete_message(
    config: &Config,
    opts: &Options,
    sender: Option<&Address>,
    header: &[u8],
    body: &[u8],
) -> Vec<u8> {
    let now = std::time::SystemTime::now();
    let uid = fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(0);
    let mut m = format!(
        "Received: by {} (mailqueue, from userid {uid});\r\n\t{}\r\n",
        config.hostname,
        rfc5322(now)
    )
    .into_bytes();
    if !has_field(header, "From") {
        let addr = sender
            .map(|a| a.to_string())
            .unwrap_or_else(|| format!("MAILER-DAEMON@{}", config.hostname));
        let line = match &opts.full_name {
            Some(name) => format!(
                "From: \"{}\" <{addr}>\r\n",
                name.replace(['"', '\\', '\r', '\n'], "")
            ),
            None => format!("From: {addr}\r\n"),
        };
        m.extend_from_slice(line.as_bytes());
    }
    if !has_field(header, "Date") {
        m.extend_from_slice(format!("Date: {}\r\n", rfc5322(now)).as_bytes());
    }
    if !has_field(header, "Message-ID") {
        m.extend_from_slice(
            format!(
                "Message-ID: <{}@{}>\r\n",
                MessageId::generate(),
                config.hostname
            )
            .as_bytes(),
        );
    }
    if opts.extract {
        m.extend_from_slice(&without_bcc(header));
    } else {
        m.extend_from_slice(header);
    }
    m.extend_from_slice(b"\r\n");
    m.extend_from_slice(body);
    m
}

fn default_sender(config: &Config) -> Result<Address, Failure> {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "root".into());
    Address::parse(&format!("{user}@{}", config.hostname))
        .map_err(|e| fail(exit::DATAERR, format!("sender: {e}")))
}

/// Asks the daemon, or looks at the disk when there is none.
fn check_quota(config: &Config, size: u64) -> Result<(), Failure> {
    match control::request(&config.spool, &Request::Quota { size }) {
        Ok(r) if r.ok => Ok(()),
        Ok(r) => Err(fail(
            exit::TEMPFAIL,
            r.error.unwrap_or_else(|| "queue full".into()),
        )),
        Err(_) => {
            let min = config.queue.min_free_bytes;
            match fs2::available_space(&config.spool) {
                Ok(free) if free < min.saturating_add(size) => Err(fail(
                    exit::TEMPFAIL,
                    format!(
                        "queue full: {free} bytes free on the spool's disk, {min} must stay free"
                    ),
                )),
                _ => Ok(()),
            }
        }
    }
}

/// Writes the incoming file: temporary name, fsync, rename, fsync dir.
fn write_incoming(
    spool: &Path,
    envelope: &IncomingEnvelope,
    message: &[u8],
) -> Result<PathBuf, Failure> {
    let dir = spool.join("incoming");
    let id = MessageId::generate();
    let tmp = dir.join(format!(".{id}.tmp"));
    let dst = dir.join(format!("{id}.mail"));
    let cant = |e: io::Error, p: &Path| {
        let code = match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => exit::CANTCREAT,
            _ if e.raw_os_error() == Some(28) => exit::TEMPFAIL, // ENOSPC: try again later
            _ => exit::IOERR,
        };
        fail(code, format!("{}: {e}", p.display()))
    };
    // Creates the spool with its private modes when it is not there yet.
    crate::queue::spool::Spool::open(spool).map_err(|e| fail(exit::CANTCREAT, e.to_string()))?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| cant(e, &tmp))?;
    let mut line = serde_json::to_vec(envelope).unwrap_or_default();
    line.push(b'\n');
    let written = file
        .write_all(&line)
        .and_then(|_| file.write_all(message))
        .and_then(|_| file.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(cant(e, &tmp));
    }
    fs::rename(&tmp, &dst).map_err(|e| cant(e, &dst))?;
    sync_dir(&dir).map_err(|e| fail(exit::IOERR, e.to_string()))?;
    Ok(dst)
}

/// Daemon side: queues every complete file in `incoming/`. A file is
/// removed only once its message is durable in the queue.
pub fn pickup(queue: &Queue) -> usize {
    let dir = queue.config().spool.join("incoming");
    let Ok(entries) = fs::read_dir(&dir) else {
        return 0;
    };
    let mut names: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "mail"))
        .collect();
    names.sort();
    let mut queued = 0;
    for path in names {
        match pickup_one(queue, &path) {
            Ok(id) => {
                let _ = fs::remove_file(&path);
                log::info!("{id}: picked up {}", path.display());
                queued += 1;
            }
            Err(PickupError::Later(e)) => {
                log::warn!("{}: left for later: {e}", path.display());
                break;
            }
            Err(PickupError::Corrupt(why)) => {
                let to = queue
                    .config()
                    .spool
                    .join("corrupt")
                    .join(path.file_name().unwrap_or_default());
                log::error!("{}: moved to {}: {why}", path.display(), to.display());
                let _ = fs::rename(&path, &to);
            }
        }
    }
    queued
}

enum PickupError {
    Later(String),
    Corrupt(String),
}

fn pickup_one(queue: &Queue, path: &Path) -> Result<MessageId, PickupError> {
    let file = File::open(path).map_err(|e| PickupError::Later(e.to_string()))?;
    let mut reader = io::BufReader::new(file);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| PickupError::Corrupt(e.to_string()))?;
    let env: IncomingEnvelope = serde_json::from_str(&line)
        .map_err(|e| PickupError::Corrupt(format!("bad envelope line: {e}")))?;
    if env.recipients.is_empty() {
        return Err(PickupError::Corrupt("no recipients".into()));
    }
    let envelope = Envelope::new(env.sender, env.recipients);
    let mut rest: Box<dyn Read> = Box::new(reader);
    queue
        .enqueue_from(&envelope, &mut rest)
        .map_err(|e| PickupError::Later(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_with_separate_and_joined_values() {
        let o = parse_args(&[
            "-f",
            "a@b",
            "-F",
            "Full Name",
            "-oi",
            "-odb",
            "-v",
            "--",
            "-x@y",
        ])
        .unwrap();
        assert_eq!(o.sender.as_deref(), Some("a@b"));
        assert_eq!(o.full_name.as_deref(), Some("Full Name"));
        assert!(o.ignore_dots);
        assert_eq!(o.recipients, vec!["-x@y"]);
        assert_eq!(parse_args(&["-q"]).unwrap().mode, Mode::Flush);
        assert_eq!(parse_args(&["-q30m"]).unwrap().mode, Mode::Flush);
        assert!(parse_args(&["-f"]).is_err());
        assert!(parse_args(&["-Z"]).is_err());
        assert!(parse_args(&["-bs"]).is_err());
    }

    #[test]
    fn a_lone_dot_ends_input_unless_i() {
        let input = b"Subject: x\n\nline\n.\nafter\n";
        let m = read_message(&mut &input[..], false, 1000).unwrap();
        assert_eq!(m, b"Subject: x\r\n\r\nline\r\n");
        let m = read_message(&mut &input[..], true, 1000).unwrap();
        assert_eq!(m, b"Subject: x\r\n\r\nline\r\n.\r\nafter\r\n");
        assert_eq!(
            read_message(&mut &input[..], true, 5).unwrap_err().code,
            exit::DATAERR
        );
    }

    #[test]
    fn headers_split_and_bcc_goes() {
        let (h, b) = split_header(b"To: a@b\r\nBcc: c@d,\r\n e@f\r\nSubject: s\r\n\r\nbody\r\n");
        assert_eq!(b, b"body\r\n");
        assert_eq!(without_bcc(&h), b"To: a@b\r\nSubject: s\r\n");
        let mut rcpts: Vec<String> = header_recipients(&h)
            .unwrap()
            .iter()
            .map(|a| a.to_string())
            .collect();
        rcpts.sort();
        assert_eq!(rcpts, vec!["a@b", "c@d", "e@f"]);
        let (h, b) = split_header(b"just a body line\r\n");
        assert!(h.is_empty());
        assert_eq!(b, b"just a body line\r\n");
    }
}
