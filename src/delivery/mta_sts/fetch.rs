//! Fetching a policy: one HTTPS GET of
//! `https://mta-sts.<domain>/.well-known/mta-sts.txt` (RFC 8461 §3.3).
//!
//! A small client of its own rather than a general HTTP crate: the policy
//! host is looked up through the same resolver as the MX hosts (the
//! configured `dns_servers`), the connection comes from the same source
//! address, and the TLS check is the one `tls = "verify"` makes (system
//! roots plus `ca_file`). What the RFC asks is narrow and all enforced
//! here: a verified certificate for the policy host, status 200 only (no
//! redirects followed), `text/plain`, and limits on size and time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::delivery::dns::Resolver;
use crate::delivery::outbound::Outbound;
use crate::smtp::transport::Watchdog;

/// Largest policy taken, in bytes (RFC 8461 §3.3 lets senders stop at
/// 64 KiB; real policies are a few hundred bytes).
pub const MAX_POLICY_SIZE: usize = 64 * 1024;
/// Largest HTTP header block read before the body.
const MAX_HEADER_SIZE: usize = 16 * 1024;
/// Most bytes read off the connection in all: the body, its header and
/// the framing of a chunked body.
const MAX_RESPONSE_SIZE: usize = 4 * MAX_POLICY_SIZE;
/// Longest a whole fetch may take, connection to last byte: a policy host
/// that trickles its answer holds a delivery worker no longer.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Most addresses of the policy host tried.
const MAX_ADDRESSES: usize = 3;

/// Why no policy text could be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The policy host has no address, or its lookup failed.
    #[error("{0}")]
    Dns(String),
    /// No connection could be made.
    #[error("{0}")]
    Connect(String),
    /// The TLS handshake failed: an untrusted or wrong certificate too.
    #[error("TLS with {host}: {why}")]
    Tls {
        /// The policy host.
        host: String,
        /// What the TLS library said.
        why: String,
    },
    /// Reading or writing failed, or the time limit passed.
    #[error("HTTPS exchange with {host}: {why}")]
    Io {
        /// The policy host.
        host: String,
        /// What went wrong.
        why: String,
    },
    /// A status other than 200 (a redirect is one: it is not followed).
    #[error("HTTP status {0} (only 200 gives a policy; redirects are not followed)")]
    Status(u16),
    /// The body is not `text/plain`.
    #[error("content type {0:?} is not text/plain")]
    ContentType(String),
    /// The body is larger than [`MAX_POLICY_SIZE`].
    #[error("policy larger than {} bytes", MAX_POLICY_SIZE)]
    TooLarge,
    /// The reply is not HTTP as expected.
    #[error("malformed HTTP reply: {0}")]
    Malformed(String),
}

/// Fetches policies over HTTPS.
pub(crate) struct Fetcher {
    pub(crate) resolver: Arc<Resolver>,
    /// Verifies the chain (system roots plus `ca_file`) and the name.
    pub(crate) tls: Arc<openssl::ssl::SslConnector>,
    /// 443, but for tests.
    pub(crate) port: u16,
    pub(crate) outbound: Outbound,
    pub(crate) connect_timeout: Duration,
}

impl Fetcher {
    /// The policy text of `domain` (an A-label domain).
    pub(crate) fn fetch(&self, domain: &str) -> Result<String, FetchError> {
        let host = format!("mta-sts.{domain}");
        let tcp = self.connect(&host)?;
        let io = |e: std::io::Error| FetchError::Io {
            host: host.clone(),
            why: e.to_string(),
        };
        // The whole exchange within the limit, whatever each read does.
        let _deadline = Watchdog::arm(&tcp, FETCH_TIMEOUT);
        tcp.set_read_timeout(Some(FETCH_TIMEOUT)).map_err(io)?;
        tcp.set_write_timeout(Some(FETCH_TIMEOUT)).map_err(io)?;
        let mut tls = self.tls.connect(&host, tcp).map_err(|e| FetchError::Tls {
            host: host.clone(),
            why: e.to_string(),
        })?;
        let request = format!(
            "GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: {host}\r\n\
             User-Agent: mailqueue\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
        );
        tls.write_all(request.as_bytes()).map_err(io)?;
        tls.flush().map_err(io)?;
        let raw = read_response(&mut tls).map_err(io)?;
        let _ = tls.shutdown();
        body_of(&raw?)
    }

    /// A connection to the first address of `host` that answers.
    fn connect(&self, host: &str) -> Result<TcpStream, FetchError> {
        let ips = self
            .resolver
            .addresses(host, self.outbound.families())
            .map_err(|e| FetchError::Dns(e.to_string()))?;
        if ips.is_empty() {
            return Err(FetchError::Dns(format!("{host} has no address")));
        }
        let mut last = String::new();
        for ip in ips.into_iter().take(MAX_ADDRESSES) {
            let addr = SocketAddr::new(ip, self.port);
            let name = format!("{host}[{ip}]:{}", self.port);
            match self.outbound.connect(addr, self.connect_timeout, &name) {
                Ok(s) => return Ok(s),
                Err(e) => last = e.reply().text.clone(),
            }
        }
        Err(FetchError::Connect(last))
    }
}

/// Reads the response until the server closes, or until its
/// `Content-Length` is in; `Err(TooLarge)` past the limit.
fn read_response(r: &mut impl Read) -> std::io::Result<Result<Vec<u8>, FetchError>> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(Ok(raw)),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // Many servers end TLS without close_notify once done (an
            // error to OpenSSL): a whole header read, what came is judged
            // on its own, its Content-Length checked.
            Err(e) if header_end(&raw).is_some() && !timed_out(&e) => return Ok(Ok(raw)),
            Err(e) => return Err(e),
        };
        raw.extend_from_slice(&buf[..n]);
        if raw.len() > MAX_RESPONSE_SIZE {
            return Ok(Err(FetchError::TooLarge));
        }
        if complete_by_length(&raw) {
            return Ok(Ok(raw));
        }
    }
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// The header block's end: the offset of the body.
fn header_end(raw: &[u8]) -> Option<usize> {
    raw.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// True when the header is in, gives a Content-Length (no chunking), and
/// that much body has arrived.
fn complete_by_length(raw: &[u8]) -> bool {
    let Some(end) = header_end(raw) else {
        return false;
    };
    let Ok(head) = std::str::from_utf8(&raw[..end]) else {
        return false;
    };
    let headers = parse_headers(head);
    if header(&headers, "transfer-encoding").is_some() {
        return false;
    }
    header(&headers, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|len| raw.len() - end >= len)
}

/// The header lines after the status line, as (lower-case name, value).
fn parse_headers(head: &str) -> Vec<(String, String)> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The policy text of a whole response, after the checks of RFC 8461
/// §3.3: status 200, `text/plain`, the size limit.
pub(crate) fn body_of(raw: &[u8]) -> Result<String, FetchError> {
    let end = header_end(raw).ok_or_else(|| {
        if raw.len() > MAX_HEADER_SIZE {
            FetchError::Malformed("header too long".into())
        } else {
            FetchError::Malformed("the reply ends within its header".into())
        }
    })?;
    if end > MAX_HEADER_SIZE {
        return Err(FetchError::Malformed("header too long".into()));
    }
    let head = std::str::from_utf8(&raw[..end])
        .map_err(|_| FetchError::Malformed("header is not text".into()))?;
    let status_line = head.split("\r\n").next().unwrap_or("");
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .filter(|_| status_line.as_bytes().get(8) == Some(&b' '))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| FetchError::Malformed(format!("status line {status_line:?}")))?;
    if status != 200 {
        return Err(FetchError::Status(status));
    }
    let headers = parse_headers(head);
    let media = header(&headers, "content-type").unwrap_or("");
    let media_type = media.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("text/plain") {
        return Err(FetchError::ContentType(media.to_string()));
    }
    let rest = &raw[end..];
    let body = match header(&headers, "transfer-encoding") {
        Some(te) if te.eq_ignore_ascii_case("chunked") => dechunk(rest)?,
        Some(te) => return Err(FetchError::Malformed(format!("transfer encoding {te:?}"))),
        None => match header(&headers, "content-length") {
            Some(len) => {
                let len: usize = len
                    .parse()
                    .map_err(|_| FetchError::Malformed(format!("content length {len:?}")))?;
                if len > MAX_POLICY_SIZE {
                    return Err(FetchError::TooLarge);
                }
                rest.get(..len)
                    .ok_or_else(|| {
                        FetchError::Malformed(format!(
                            "{} bytes of the {len} announced",
                            rest.len()
                        ))
                    })?
                    .to_vec()
            }
            None => rest.to_vec(),
        },
    };
    if body.len() > MAX_POLICY_SIZE {
        return Err(FetchError::TooLarge);
    }
    String::from_utf8(body).map_err(|_| FetchError::Malformed("the policy is not UTF-8".into()))
}

/// Joins the chunks of a chunked body (RFC 9112 §7.1); chunk extensions
/// and trailers are ignored.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, FetchError> {
    let bad = |why: &str| FetchError::Malformed(format!("chunked body: {why}"));
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("no chunk size line"))?;
        let line = std::str::from_utf8(&rest[..line_end]).map_err(|_| bad("size not text"))?;
        let hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(hex, 16).map_err(|_| bad("bad chunk size"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if body.len() + size > MAX_POLICY_SIZE {
            return Err(FetchError::TooLarge);
        }
        let chunk = rest.get(..size).ok_or_else(|| bad("cut short"))?;
        body.extend_from_slice(chunk);
        rest = rest
            .get(size..)
            .and_then(|r| r.strip_prefix(b"\r\n"))
            .ok_or_else(|| bad("no CRLF after a chunk"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(head: &str, body: &str) -> Vec<u8> {
        format!("{head}\r\n\r\n{body}").into_bytes()
    }

    #[test]
    fn a_plain_200_gives_its_body() {
        let r = reply(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 5",
            "hello",
        );
        assert!(complete_by_length(&r));
        assert_eq!(body_of(&r).unwrap(), "hello");
        // Without a length: up to the close.
        let r = reply(
            "HTTP/1.0 200 OK\r\ncontent-type: TEXT/PLAIN",
            "up to the end",
        );
        assert!(!complete_by_length(&r));
        assert_eq!(body_of(&r).unwrap(), "up to the end");
    }

    #[test]
    fn a_chunked_body_is_joined() {
        let r = reply(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked",
            "4\r\nvers\r\n3;ext=1\r\nion\r\n0\r\n\r\n",
        );
        assert_eq!(body_of(&r).unwrap(), "version");
    }

    #[test]
    fn what_is_not_a_policy_is_refused() {
        let r = reply("HTTP/1.1 301 Moved\r\nLocation: https://elsewhere/", "");
        assert_eq!(body_of(&r), Err(FetchError::Status(301)));
        let r = reply("HTTP/1.1 404 Not Found\r\nContent-Type: text/plain", "");
        assert_eq!(body_of(&r), Err(FetchError::Status(404)));
        let r = reply("HTTP/1.1 200 OK\r\nContent-Type: text/html", "<html>");
        assert_eq!(
            body_of(&r),
            Err(FetchError::ContentType("text/html".into()))
        );
        let r = reply("HTTP/1.1 200 OK", "no type");
        assert!(matches!(body_of(&r), Err(FetchError::ContentType(_))));
        let big = "x".repeat(MAX_POLICY_SIZE + 1);
        let r = reply("HTTP/1.1 200 OK\r\nContent-Type: text/plain", &big);
        assert_eq!(body_of(&r), Err(FetchError::TooLarge));
        let r = reply(
            &format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}",
                big.len()
            ),
            &big,
        );
        assert_eq!(body_of(&r), Err(FetchError::TooLarge));
        let r = reply(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10",
            "short",
        );
        assert!(matches!(body_of(&r), Err(FetchError::Malformed(_))));
        assert!(matches!(
            body_of(b"SMTP 220 hello\r\n\r\n"),
            Err(FetchError::Malformed(_))
        ));
    }

    #[test]
    fn reading_stops_at_the_size_limit() {
        let mut endless = std::io::repeat(b'x');
        assert_eq!(
            read_response(&mut endless).unwrap(),
            Err(FetchError::TooLarge)
        );
    }
}
