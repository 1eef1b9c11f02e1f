//! The commands' side of the control socket.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{socket_path, ControlError, Request, Response};

/// Sends one request to the daemon of `spool`. (`list`, whose answer is
/// many lines, goes through [`super::list::fetch`].)
pub fn request(spool: &Path, req: &Request) -> Result<Response, ControlError> {
    let (stream, path) = connect(spool)?;
    let io_err = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    // A bulk command on a large queue writes for as long as the disk
    // takes (about a minute for 10^5 messages on a busy disk).
    let wait = match req {
        Request::Flush(_)
        | Request::Hold(_)
        | Request::Release(_)
        | Request::Delete(_)
        | Request::Expire(_)
        | Request::Requeue { .. } => Duration::from_secs(30 * 60),
        _ => Duration::from_secs(120),
    };
    stream.set_read_timeout(Some(wait)).map_err(io_err)?;
    send(&stream, req).map_err(io_err)?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .map_err(io_err)?;
    serde_json::from_str(&reply).map_err(|e| ControlError::BadReply {
        path: path.clone(),
        why: e.to_string(),
    })
}

/// A connection to the daemon of `spool`, and the socket's path.
pub(super) fn connect(spool: &Path) -> Result<(UnixStream, PathBuf), ControlError> {
    let path = socket_path(spool);
    match UnixStream::connect(&path) {
        Ok(s) => Ok((s, path)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            Err(ControlError::NoDaemon)
        }
        Err(e) => Err(ControlError::Io { path, source: e }),
    }
}

/// Writes the request line.
pub(super) fn send(mut stream: &UnixStream, req: &Request) -> io::Result<()> {
    let mut line = serde_json::to_vec(req).unwrap_or_default();
    line.push(b'\n');
    stream.write_all(&line)
}
