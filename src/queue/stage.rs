//! The last step before a message is made durable, for every way in
//! (SMTP, pickup of local submissions, the library's `enqueue`, the queue
//! as a target, and our own notices): the header checked (a field RFC
//! 5322 allows once, repeated, is refused), `Date:` and `Message-ID:`
//! added when missing, and the DKIM signature put on top. Done once,
//! here, so that every retry sends the same bytes and the checksum the
//! spool records covers them.
//!
//! The message is already on disk when this runs (the listener streams
//! it there); what is added goes at the start of the header and at its
//! end, so a message that gains anything is copied once into a new file
//! behind the new header, and the new file takes the old one's name.

use std::io::{self, Read};
use std::time::SystemTime;

use super::spool::{MessageWriter, Spool};
use super::{QueueError, Shared};
use crate::dkim::DkimSigner;
use crate::header::{self, Header};
use crate::ingest::{cleanup, hygiene};

/// Checks, completes and signs the message `writer` holds. Notices are
/// ours and complete: they are only signed, never refused (a refused
/// notice would be lost).
pub(super) fn stage(
    shared: &Shared,
    writer: &mut MessageWriter,
    notice: bool,
) -> Result<(), QueueError> {
    let signer = shared.policy.options().dkim.clone();
    let hostname = &shared.options.hostname;
    stage_with(&shared.spool, hostname, &signer, writer, notice)
}

/// Signs a notice made outside the workers (an operator's `expire`,
/// with or without a daemon) with `signer`, as [`stage`] signs the
/// workers' notices.
pub(super) fn sign_notice(
    spool: &Spool,
    signer: &DkimSigner,
    writer: &mut MessageWriter,
) -> Result<(), QueueError> {
    stage_with(spool, "", signer, writer, true)
}

/// [`stage`] with its parts named: `hostname` for the Message-ID added.
fn stage_with(
    spool: &Spool,
    hostname: &str,
    signer: &DkimSigner,
    writer: &mut MessageWriter,
    notice: bool,
) -> Result<(), QueueError> {
    let head = read_header(writer)?;
    let parsed = header::parse(&head, true).unwrap_or(Header {
        fields: Vec::new(),
        end: 0,
        body: 0,
    });
    let fields = &head[..parsed.end];
    let mut added = Vec::new();
    if !notice {
        hygiene::check(&head, &parsed)?;
        added = cleanup::missing_date_and_id(fields, hostname, SystemTime::now());
    }
    // The header as it will be: its fields, then those added.
    let mut complete = Vec::with_capacity(fields.len() + added.len() + 2);
    complete.extend_from_slice(fields);
    if !fields.is_empty() && !fields.ends_with(b"\n") && !fields.ends_with(b"\r") {
        // A last field without a line end (a message that is all header).
        complete.extend_from_slice(b"\r\n");
    }
    complete.extend_from_slice(&added);
    let signature = if signer.is_empty() {
        None
    } else {
        let complete_parsed = header::parse(&complete, true).unwrap_or(Header {
            fields: Vec::new(),
            end: complete.len(),
            body: complete.len(),
        });
        let body = writer
            .read_back(parsed.body as u64)
            .map_err(writer.io_error())?;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut body = io::BufReader::with_capacity(64 * 1024, body);
        signer.sign(&complete, &complete_parsed, &mut body as &mut dyn Read, now)?
    };
    if added.is_empty() && signature.is_none() {
        return Ok(());
    }
    let mut start = Vec::with_capacity(complete.len() + 1024);
    if let Some(s) = &signature {
        start.extend_from_slice(s.as_bytes());
    }
    start.extend_from_slice(&complete);
    // The empty line that ends the header: kept, or put where a body line
    // ended the header without one, so that the fields added are not
    // taken as body (and the body the signature hashed is the body).
    start.extend_from_slice(b"\r\n");
    writer.replace_start(spool, parsed.body as u64, &start)
}

/// The message's header (and its separating empty line), from the start
/// kept in memory when the header ends there, else from the file.
fn read_header(writer: &mut MessageWriter) -> Result<Vec<u8>, QueueError> {
    let head = writer.head();
    let whole = writer.size() == head.len() as u64;
    if let Some(h) = header::parse(head, whole) {
        return Ok(head[..h.body].to_vec());
    }
    let head_len = head.len();
    let mut file = io::BufReader::new(writer.read_back(0).map_err(writer.io_error())?);
    let mut bytes = Vec::with_capacity(2 * head_len);
    let mut chunk = vec![0u8; 64 * 1024];
    // Parsed again only each time the bytes read doubled: a header of
    // megabytes costs a few passes, not one per chunk.
    let mut parse_at = 0;
    loop {
        let n = file.read(&mut chunk).map_err(writer.io_error())?;
        bytes.extend_from_slice(&chunk[..n]);
        if n == 0 || bytes.len() >= parse_at {
            if let Some(h) = header::parse(&bytes, n == 0) {
                bytes.truncate(h.body);
                return Ok(bytes);
            }
            parse_at = bytes.len() * 2;
        }
    }
}
