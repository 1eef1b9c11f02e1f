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

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mailqueue::config::Config;
use mailqueue::ingest::cleanup;
use mailqueue::ingest::incoming::{self, IncomingEnvelope, IncomingLimits};
use mailqueue::{Address, MessageId};

use super::control::{self, ControlError, Request};
use super::exit;

mod args;
pub use args::{parse_args, Mode, Options};

/// Largest message taken on standard input when no config says otherwise.
const DEFAULT_MAX_SIZE: u64 = 32 * 1024 * 1024;

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
    let recipients = cleanup::unique_recipients(recipients);
    if recipients.is_empty() {
        return Err(fail(
            exit::USAGE,
            "no recipients given (name them, or use -t)",
        ));
    }
    // Pickup would refuse (quarantine) more: say so now, while the caller
    // can still act on it.
    let max = config.listen.max_recipients;
    if recipients.len() > max {
        return Err(fail(
            exit::DATAERR,
            format!(
                "{} recipients, more than [listen] max_recipients ({max})",
                recipients.len()
            ),
        ));
    }

    let message = complete_message(config, opts, sender.as_ref(), &header, &body);
    // What pickup would refuse must not be reported as queued.
    let max = limits(config).max_message();
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
    check_quota(config, message.len() as u64)?;
    let envelope = IncomingEnvelope { sender, recipients };
    let line = envelope.to_line().len() as u64;
    if line > limits(config).max_envelope_line() {
        return Err(fail(
            exit::DATAERR,
            format!(
                "the envelope is {line} bytes, more than {} (fewer or shorter recipients)",
                limits(config).max_envelope_line()
            ),
        ));
    }
    let (path, told) = write_incoming(&config.spool, &envelope, &message)?;
    if !told {
        match control::request(&config.spool, &Request::Pickup) {
            Ok(_) | Err(ControlError::NoDaemon) => {}
            Err(e) => log::warn!("message queued but the daemon was not told: {e}"),
        }
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

/// Adds From, Date and Message-ID when missing.
fn complete_message(
    config: &Config,
    opts: &Options,
    sender: Option<&Address>,
    header: &[u8],
    body: &[u8],
) -> Vec<u8> {
    // Received is the daemon's to write (at pickup, from the file's owner).
    let mut m = cleanup::missing_headers(
        header,
        &config.hostname,
        sender,
        opts.full_name.as_deref(),
        std::time::SystemTime::now(),
    );
    m.reserve(header.len() + body.len() + 2);
    if opts.extract {
        m.extend_from_slice(&without_bcc(header));
    } else {
        m.extend_from_slice(header);
    }
    m.extend_from_slice(b"\r\n");
    m.extend_from_slice(body);
    m
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
    Address::parse(&format!("{user}@{}", config.hostname))
        .map_err(|e| fail(exit::DATAERR, format!("sender: {e}")))
}

/// Asks the daemon, or looks at the disk when there is none.
fn check_quota(config: &Config, size: u64) -> Result<(), Failure> {
    match control::request(&config.spool, &Request::Quota { size }) {
        Ok(r) if r.ok => Ok(()),
        Ok(r) if r.quota_full => Err(fail(
            exit::TEMPFAIL,
            r.error.unwrap_or_else(|| "queue full".into()),
        )),
        // Any other answer (busy, say: a group member may hold the
        // socket's shared slots) tells nothing of the quota: judge by the
        // disk, as with no daemon, rather than refuse the mail.
        _ => {
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

/// Writes the incoming file: temporary name, fsync, rename, then makes
/// the rename durable. Once the file has its final name the message is
/// queued (a running daemon may already have taken it), so no error is
/// reported after that point unless the file could be taken back (see
/// [`settle`]). Also returns whether the daemon was told (it is when it
/// made the rename durable).
fn write_incoming(
    spool: &Path,
    envelope: &IncomingEnvelope,
    message: &[u8],
) -> Result<(PathBuf, bool), Failure> {
    let dir = mailqueue::queue::spool::layout::incoming(spool);
    let spool_owner = spool_owner(spool)?;
    let (tmp, dst) = incoming::file_names(MessageId::generate());
    let (tmp, dst) = (dir.join(tmp), dir.join(dst));
    let cant = |e: io::Error, p: &Path| {
        let code = match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => exit::CANTCREAT,
            _ if mailqueue::queue::is_no_space(&e) => exit::TEMPFAIL,
            _ => exit::IOERR,
        };
        let hint = if e.kind() == io::ErrorKind::PermissionDenied {
            NOT_ALLOWED_HINT
        } else {
            ""
        };
        fail(code, format!("{}: {e}{hint}", p.display()))
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(incoming::FILE_MODE)
        .open(&tmp)
        .map_err(|e| cant(e, &dir))?;
    let written = give_to_daemon(&file, spool_owner)
        .and_then(|_| file.write_all(&envelope.to_line()))
        .and_then(|_| file.write_all(message))
        .and_then(|_| file.sync_all())
        .map_err(|e| cant(e, &tmp))
        .and_then(|_| fs::rename(&tmp, &dst).map_err(|e| cant(e, &dst)));
    if let Err(f) = written {
        let _ = fs::remove_file(&tmp);
        return Err(f);
    }
    let durable = make_rename_durable(spool, &dir, &file);
    let told = matches!(durable, Ok(Durable::ByTheDaemon));
    settle(durable.map(|_| ()), || fs::remove_file(&dst), &dir)?;
    Ok((dst, told))
}

/// What to report once the file has its final name, from whether the
/// rename is durable and, when it is not, from taking the file back.
///
/// Exit 0 means durable; any other code means not queued, so the caller
/// may retry without sending the message twice. Taking the file back
/// establishes "not queued"; finding it gone establishes that the daemon
/// has it (it removes a file only once the message is durable in its
/// queue). When the removal fails otherwise, neither holds: the file is
/// there, maybe not durable, and the daemon may still take it. Exit 0
/// would then promise what a crash can undo (mail lost without anyone
/// told), a failure risks a duplicate if the caller retries: a duplicate
/// is the lesser harm, so it is a failure (74), whose message says the
/// message may still be delivered.
fn settle(
    durable: io::Result<()>,
    take_back: impl FnOnce() -> io::Result<()>,
    dir: &Path,
) -> Result<(), Failure> {
    let Err(e) = durable else {
        return Ok(());
    };
    match take_back() {
        Ok(()) => Err(fail(
            exit::IOERR,
            format!("{}: not queued: {e}", dir.display()),
        )),
        Err(gone) if gone.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(r) => Err(fail(
            exit::IOERR,
            format!(
                "{}: the message may not survive a crash ({e}) and could not be taken back \
                 ({r}): it may still be delivered",
                dir.display()
            ),
        )),
    }
}

const NOT_ALLOWED_HINT: &str = " (only root, the spool's owner and members of its group may \
     submit, unless the mailqueue binary is installed set-group-id to that group: see the \
     README, \"Feeding it mail\")";

/// The owner and group of the spool; the daemon reads incoming files
/// through the group. A missing spool is created (owned by the caller) only when the caller
/// runs with its own rights: a set-group-id sendmail must not create a
/// spool the daemon could not use.
fn spool_owner(spool: &Path) -> Result<(u32, u32), Failure> {
    match fs::metadata(spool) {
        Ok(m) => Ok((m.uid(), m.gid())),
        Err(e) if e.kind() == io::ErrorKind::NotFound && !mailqueue::sys::is_privileged() => {
            mailqueue::queue::spool::Spool::open(spool)
                .map_err(|e| fail(exit::CANTCREAT, e.to_string()))?;
            fs::metadata(spool)
                .map(|m| (m.uid(), m.gid()))
                .map_err(|e| fail(exit::CANTCREAT, format!("{}: {e}", spool.display())))
        }
        Err(e) => {
            let hint = match e.kind() {
                io::ErrorKind::PermissionDenied => NOT_ALLOWED_HINT,
                io::ErrorKind::NotFound => " (no spool: has the daemon been set up?)",
                _ => "",
            };
            Err(fail(
                exit::CANTCREAT,
                format!("spool {}: {e}{hint}", spool.display()),
            ))
        }
    }
}

/// Lets the daemon read the file whatever the submitter's umask and
/// primary group: mode 0640 and the spool's group. The owner stays the
/// submitter, which is what pickup records in the Received line.
fn give_to_daemon(file: &File, (spool_uid, spool_gid): (u32, u32)) -> io::Result<()> {
    if let Err(e) = std::os::unix::fs::fchown(file, None, Some(spool_gid)) {
        // The spool's owner need not be in its group: the daemon runs as
        // the owner and reads the file as such.
        if mailqueue::sys::effective_uid() != spool_uid {
            return Err(e);
        }
    }
    file.set_permissions(fs::Permissions::from_mode(incoming::FILE_MODE))
}

/// How a rename into `incoming/` was made durable.
#[derive(Debug, PartialEq, Eq)]
enum Durable {
    /// By fsyncing `incoming/` here.
    Here,
    /// By the running daemon, which fsynced `incoming/` before answering
    /// the pickup request (which also woke it up).
    ByTheDaemon,
    /// By syncing the whole file system.
    Syncfs,
}

/// Makes the rename into `dir` durable. Submitters other than the owner
/// may write to incoming/ but not read it, so cannot open it to fsync
/// it: the running daemon, asked to pick up, fsyncs it before it answers.
/// With no daemon to ask (or one that does not say it did), sync the
/// whole file system the file is on instead, which on a busy disk may
/// take seconds.
fn make_rename_durable(spool: &Path, dir: &Path, file: &File) -> io::Result<Durable> {
    match File::open(dir).and_then(|d| d.sync_all()) {
        Ok(()) => Ok(Durable::Here),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            match control::request(spool, &Request::Pickup) {
                Ok(r) if r.ok && r.incoming_synced => {
                    log::debug!("{}: made durable by the daemon", dir.display());
                    return Ok(Durable::ByTheDaemon);
                }
                Ok(r) => log::debug!(
                    "the daemon did not sync {}: {}",
                    dir.display(),
                    r.error.as_deref().unwrap_or("an older daemon")
                ),
                Err(e) => log::debug!("no daemon to sync {}: {e}", dir.display()),
            }
            log::debug!("{}: made durable by syncfs", dir.display());
            mailqueue::sys::syncfs(file).map(|()| Durable::Syncfs)
        }
        Err(e) => Err(e),
    }
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
