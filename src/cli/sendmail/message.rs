//! The message as sendmail reads it: standard input up to EOF (or a
//! lone dot), its header split off, recipients taken from it for `-t`,
//! Bcc removed and the missing header fields added.

use std::io::BufRead;

use mailqueue::config::Config;
use mailqueue::ingest::cleanup;
use mailqueue::Address;

use super::args::Options;
use super::{exit, fail, Failure};

/// Reads standard input: to EOF, or with `ignore_dots` false also up to a
/// line holding a lone dot. Line ends become CRLF.
pub(super) fn read_message(
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
pub(super) fn split_header(raw: &[u8]) -> (Vec<u8>, Vec<u8>) {
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
pub(super) fn header_recipients(header: &[u8]) -> Result<Vec<Address>, Failure> {
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
pub(super) fn without_bcc(header: &[u8]) -> Vec<u8> {
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
pub(super) fn complete_message(
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
