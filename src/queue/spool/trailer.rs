//! The trailer that ends every message file: the metadata as JSON, then a
//! footer naming the JSON's length. Reading and writing it, no file system
//! state besides the one file.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::queue::meta::MessageMeta;

/// The footer that ends every message file: `\nMQMETA1 `, the length of
/// the metadata JSON before it in ten digits, `\n`.
const FOOTER_MAGIC: &[u8] = b"\nMQMETA1 ";
pub(super) const FOOTER_LEN: u64 = 20;

/// Why a message file of `len` bytes cannot hold a message of `size`
/// bytes superseded by a `.meta` (the trailer after it is not read): it
/// holds exactly the message (written before messages carried a
/// trailer), or at least the message and a footer.
pub(super) fn too_short(len: u64, size: u64) -> Option<String> {
    (len != size && len < size + FOOTER_LEN)
        .then(|| format!("the message file is {len} bytes, too short for a message of {size}"))
}

pub(super) fn footer(json_len: usize) -> Vec<u8> {
    format!("\nMQMETA1 {json_len:010}\n").into_bytes()
}

/// What follows the message in its file: the metadata JSON and the footer.
pub(super) fn trailer(meta: &MessageMeta) -> Vec<u8> {
    let mut out = meta.to_json();
    let footer = footer(out.len());
    out.extend_from_slice(&footer);
    out
}

/// The bytes of a complete message file: `body`, then `meta` (with the
/// body's size and checksum filled in) as the trailer. For tools and
/// benchmarks that build a spool without going through the queue.
pub fn message_file_bytes(body: &[u8], meta: &MessageMeta) -> Vec<u8> {
    let mut meta = meta.clone();
    meta.size = body.len() as u64;
    meta.checksum = Some(crc32fast::hash(body));
    let mut out = body.to_vec();
    out.extend_from_slice(&trailer(&meta));
    out
}

/// Why a message file's trailer cannot be read.
#[derive(Debug)]
pub(super) enum TrailerError {
    /// No footer: the write never finished.
    Missing,
    Corrupt(String),
    Io(io::Error),
}

/// Reads the trailer of a message file: the length of the message before
/// it, and the metadata JSON.
pub(super) fn read_trailer(file: &File) -> Result<(u64, Vec<u8>), TrailerError> {
    let len = file.metadata().map_err(TrailerError::Io)?.len();
    if len < FOOTER_LEN {
        return Err(TrailerError::Missing);
    }
    // One read covers the footer and, nearly always, the JSON.
    let tail_len = len.min(4096);
    let mut tail = vec![0u8; tail_len as usize];
    file.read_exact_at(&mut tail, len - tail_len)
        .map_err(TrailerError::Io)?;
    let foot = &tail[tail.len() - FOOTER_LEN as usize..];
    let digits = &foot[FOOTER_MAGIC.len()..FOOTER_LEN as usize - 1];
    // The footer is written last and whole: a cut one does not begin
    // where a footer begins. Its magic there with the rest garbled is
    // damage to a file that was complete.
    if !foot.starts_with(FOOTER_MAGIC) {
        return Err(TrailerError::Missing);
    }
    let json_len: u64 = std::str::from_utf8(digits)
        .ok()
        .filter(|d| d.bytes().all(|b| b.is_ascii_digit()) && foot[FOOTER_LEN as usize - 1] == b'\n')
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| {
            TrailerError::Corrupt(format!(
                "garbled footer {:?}",
                String::from_utf8_lossy(foot)
            ))
        })?;
    if json_len + FOOTER_LEN > len {
        return Err(TrailerError::Corrupt(format!(
            "the footer names {json_len} bytes of metadata in a file of {len}"
        )));
    }
    let body_len = len - FOOTER_LEN - json_len;
    let json = if json_len + FOOTER_LEN <= tail_len {
        let end = tail.len() - FOOTER_LEN as usize;
        tail[end - json_len as usize..end].to_vec()
    } else {
        let mut json = vec![0u8; json_len as usize];
        file.read_exact_at(&mut json, body_len)
            .map_err(TrailerError::Io)?;
        json
    };
    Ok((body_len, json))
}
