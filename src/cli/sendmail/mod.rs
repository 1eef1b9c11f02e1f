//! The sendmail-compatible command: reads a message on standard input and
//! drops it, complete and fsynced, into `<spool>/incoming/`, where the
//! daemon picks it up (at once when told over the control socket, at
//! start, and every few seconds). With no daemon running the message waits
//! there safely.
//!
//! An incoming file is one line of JSON (the envelope) and then the
//! message as it will be queued, less the `Received:` line the daemon
//! adds at pickup from what the kernel says of the file (its owner), not
//! from anything the submitter wrote.
//!
//! Any local user may submit: as the spool's owner, root, a member of the
//! spool's group, or through a binary installed set-group-id to that
//! group. Nothing in `incoming/` is trusted: pickup takes only regular
//! files of bounded size and quarantines the rest.

use std::io::BufRead;
use std::path::PathBuf;

use mailqueue::config::Config;
use mailqueue::ingest::incoming::{self, valid_envid, IncomingEnvelope, IncomingLimits, MAX_ENVID};
use mailqueue::ingest::{cleanup, hygiene};
use mailqueue::{Address, Notify, Ret};

use super::control::{self, ControlError, Request};
use super::exit;

mod args;
mod message;
mod smtp;
mod write;

pub use args::{parse_args, Mode, Options, USAGE};
use message::{complete_message, header_recipients, read_message, split_header};
pub use smtp::smtp_session;
use write::{check_quota, write_incoming};

/// Largest message taken on standard input when no config says otherwise.
const DEFAULT_MAX_SIZE: u64 = 32 * 1024 * 1024;

/// The domain of local names (`[local] domain`, else the hostname).
fn local_domain(config: &Config) -> &str {
    config.local.domain_or(&config.hostname)
}

/// The bounds pickup will hold a submission to.
pub fn limits(config: &Config) -> IncomingLimits {
    IncomingLimits {
        max_recipients: config.listen.max_recipients,
        max_message_size: config.listen.max_message_size,
    }
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
    let raw = read_message(input, opts.ignore_dots, input_limit(config))?;
    let (header, body) = split_header(&raw);
    let envelope = envelope(config, opts, &header)?;
    queue_message(config, opts, &envelope, &header, &body)
}

/// The largest message read on standard input.
fn input_limit(config: &Config) -> u64 {
    config
        .listen
        .max_message_size
        .max(1)
        .min(DEFAULT_MAX_SIZE.max(config.listen.max_message_size))
}

/// Completes the message, checks it against what pickup takes and the
/// queue's room, and drops it into `incoming/`; returns the file's name.
fn queue_message(
    config: &Config,
    opts: &Options,
    envelope: &IncomingEnvelope,
    header: &[u8],
    body: &[u8],
) -> Result<PathBuf, Failure> {
    // Refused here as the queue would refuse it at pickup, while the
    // caller can still hear of it.
    hygiene::check_header(header).map_err(|e| fail(exit::DATAERR, e.to_string()))?;
    let message = complete_message(config, opts, envelope.sender.as_ref(), header, body);
    within_limits(config, envelope, &message)?;
    check_quota(config, message.len() as u64)?;
    let (path, told) = write_incoming(&config.spool, envelope, &message)?;
    if !told {
        match control::request(&config.spool, &Request::Pickup) {
            Ok(_) | Err(ControlError::NoDaemon) => {}
            Err(e) => log::warn!("message queued but the daemon was not told: {e}"),
        }
    }
    Ok(path)
}

/// The sender (`-f`, else the caller) and the recipients (the arguments,
/// and with `-t` the header's), each once.
fn envelope(config: &Config, opts: &Options, header: &[u8]) -> Result<IncomingEnvelope, Failure> {
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
                .or_else(|_| Address::parse(&format!("{part}@{}", local_domain(config))))
                .map_err(|e| fail(exit::DATAERR, format!("recipient: {e}")))?;
            recipients.push(a);
        }
    }
    if opts.extract {
        recipients.extend(header_recipients(header)?);
    }
    let recipients = recipients
        .into_iter()
        .map(|a| config.local.rewrite(a, &config.hostname))
        .collect();
    let recipients = cleanup::unique_recipients(recipients);
    if recipients.is_empty() {
        return Err(fail(
            exit::USAGE,
            "no recipients given (name them, or use -t)",
        ));
    }
    new_envelope(opts, sender, recipients)
}

/// An envelope with sendmail's `-N`, `-R` and `-V`, checked.
fn new_envelope(
    opts: &Options,
    sender: Option<Address>,
    recipients: Vec<Address>,
) -> Result<IncomingEnvelope, Failure> {
    let notify = match &opts.notify {
        Some(n) => Some(
            n.parse::<Notify>()
                .map_err(|e| fail(exit::USAGE, format!("-N {n}: {e}")))?,
        ),
        None => None,
    };
    let ret = match opts.ret.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => None,
        Some("full") => Some(Ret::Full),
        Some("hdrs") => Some(Ret::Hdrs),
        Some(other) => return Err(fail(exit::USAGE, format!("-R {other}: full or hdrs"))),
    };
    if let Some(envid) = opts.envid.as_deref().filter(|e| !valid_envid(e)) {
        return Err(fail(
            exit::USAGE,
            format!("-V {envid}: printable ASCII, at most {MAX_ENVID} characters"),
        ));
    }
    Ok(IncomingEnvelope {
        sender,
        recipients,
        notify,
        ret,
        envid: opts.envid.clone(),
    })
}

/// What pickup would refuse (quarantine) must not be reported as queued:
/// say so now, while the caller can still act on it.
fn within_limits(
    config: &Config,
    envelope: &IncomingEnvelope,
    message: &[u8],
) -> Result<(), Failure> {
    let limits = limits(config);
    let max = limits.max_recipients;
    if envelope.recipients.len() > max {
        return Err(fail(
            exit::DATAERR,
            format!(
                "{} recipients, more than [listen] max_recipients ({max})",
                envelope.recipients.len()
            ),
        ));
    }
    let max = limits.max_message();
    if message.len() as u64 > max {
        return Err(fail(
            exit::DATAERR,
            format!(
                "the message with the header fields added is {} bytes, more than {max} \
                 (max_message_size and {} bytes of added header; a long -F?)",
                message.len(),
                incoming::ADDED_HEADERS
            ),
        ));
    }
    let line = envelope.to_line().len() as u64;
    if line > limits.max_envelope_line() {
        return Err(fail(
            exit::DATAERR,
            format!(
                "the envelope is {line} bytes, more than {} (fewer or shorter recipients)",
                limits.max_envelope_line()
            ),
        ));
    }
    Ok(())
}

/// The caller's login name at our host name. The name comes from the
/// password database for the real uid: `$USER` and `$LOGNAME` are the
/// caller's to set, and would let anyone send as anyone.
fn default_sender(config: &Config) -> Result<Address, Failure> {
    let uid = mailqueue::sys::real_uid();
    let user = match mailqueue::sys::user_name(uid) {
        Ok(Some(name)) => name,
        Ok(None) => {
            return Err(fail(
                exit::NOUSER,
                format!("user id {uid} has no login name; give the sender with -f"),
            ))
        }
        Err(e) => {
            return Err(fail(
                exit::TEMPFAIL,
                format!("cannot look up the login name of user id {uid}: {e}"),
            ))
        }
    };
    Address::parse(&format!("{user}@{}", local_domain(config)))
        .map_err(|e| fail(exit::DATAERR, format!("sender: {e}")))
}

#[cfg(test)]
mod tests {
    use super::message::*;
    use super::write::*;
    use super::*;
    use std::io;
    use std::path::Path;

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
        assert!(parse_args(&["-bd"]).is_err());
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
    fn exit_0_only_when_the_rename_is_durable() {
        let dir = Path::new("/spool/incoming");
        let unsynced = || Err(io::Error::other("fsync failed"));
        let kind = |k: io::ErrorKind| move || Err(io::Error::from(k));
        // Durable: whatever taking back would do, it is not tried.
        assert!(settle(Ok(()), || panic!("taken back"), dir).is_ok());
        // Not durable, taken back: not queued.
        let f = settle(unsynced(), || Ok(()), dir).unwrap_err();
        assert_eq!(f.code, exit::IOERR);
        assert!(f.message.contains("not queued"), "{}", f.message);
        // Gone: the daemon has it, durably.
        assert!(settle(unsynced(), kind(io::ErrorKind::NotFound), dir).is_ok());
        // Still there and maybe not durable: never exit 0, and say that
        // it may be delivered all the same.
        for k in [
            io::ErrorKind::PermissionDenied,
            io::ErrorKind::Other,
            io::ErrorKind::ReadOnlyFilesystem,
        ] {
            let f = settle(unsynced(), kind(k), dir).unwrap_err();
            assert_ne!(f.code, exit::OK);
            assert!(
                f.message.contains("may still be delivered"),
                "{}",
                f.message
            );
            assert!(!f.message.contains("not queued"), "{}", f.message);
        }
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
