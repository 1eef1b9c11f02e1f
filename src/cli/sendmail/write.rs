//! The incoming file: written under a temporary name, fsynced, renamed,
//! and the rename made durable, with the exit code that says truthfully
//! whether the message is queued.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mailqueue::config::Config;
use mailqueue::ingest::incoming::{self, IncomingEnvelope};
use mailqueue::MessageId;

use super::{exit, fail, Failure};
use crate::cli::control::{self, Request};

/// Asks the daemon, or looks at the disk when there is none.
pub(super) fn check_quota(config: &Config, size: u64) -> Result<(), Failure> {
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
pub(super) fn write_incoming(
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
pub(super) fn settle(
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
pub(super) fn spool_owner(spool: &Path) -> Result<(u32, u32), Failure> {
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
pub(super) fn give_to_daemon(file: &File, (spool_uid, spool_gid): (u32, u32)) -> io::Result<()> {
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
pub(super) enum Durable {
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
pub(super) fn make_rename_durable(spool: &Path, dir: &Path, file: &File) -> io::Result<Durable> {
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
