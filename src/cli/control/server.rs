//! The daemon's side of the control socket: who may ask what, within
//! which limits, and the answers.

use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use mailqueue::queue::{Queue, QueueError};

use super::{apply, socket_path, Request, Response};

/// How long a client has to send its whole request, and to take the reply.
const REQUEST_TIME: Duration = Duration::from_secs(10);
/// Longest request from root or the daemon's user: room for the ids of a
/// bulk command on a large queue.
const MAX_OWNER_REQUEST: usize = 64 << 20;
/// Longest request from anyone else the socket's mode lets in (a pickup
/// wake-up or a quota check is a few dozen bytes).
const MAX_OTHER_REQUEST: usize = 4096;
/// Requests served at once; more wait in the listen backlog, so a group
/// member opening connections cannot make the daemon start threads
/// without end.
const MAX_CONNECTIONS: usize = 16;

/// The daemon's side of the socket.
pub struct ControlServer {
    path: PathBuf,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Listens on `<spool>/control.sock`. Call only while holding the
    /// spool lock: a socket file left by a dead daemon is replaced.
    pub fn start(queue: Arc<Queue>, pickup: Sender<()>) -> io::Result<ControlServer> {
        let path = socket_path(&queue.options().spool);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))?;
        let stopping = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stopping);
        let thread = thread::Builder::new()
            .name("mailqueue-control".into())
            .spawn(move || {
                let busy = Arc::new(AtomicUsize::new(0));
                for stream in listener.incoming() {
                    if flag.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    // Root and the daemon's user are always served; others
                    // share a few slots and are turned away past them (the
                    // accept loop never waits, so the owner is never held up).
                    let slot = if is_owner(&stream) {
                        None
                    } else if busy.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                        busy.fetch_sub(1, Ordering::SeqCst);
                        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                        reply(&stream, &Response::error("busy, try again later"));
                        continue;
                    } else {
                        Some(Slot(Arc::clone(&busy)))
                    };
                    let (queue, pickup) = (Arc::clone(&queue), pickup.clone());
                    let _ = thread::Builder::new()
                        .name("mailqueue-control-conn".into())
                        .spawn(move || {
                            let _slot = slot;
                            serve_one(stream, &queue, &pickup)
                        });
                }
            })?;
        Ok(ControlServer {
            path,
            stopping,
            thread: Some(thread),
        })
    }

    pub fn stop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // The accept loop wakes at the next connection. If the socket file
        // is gone (the spool removed under the daemon), nothing can wake
        // it: leave the thread to end with the process rather than hang.
        let woke = UnixStream::connect(&self.path).is_ok();
        if let Some(t) = self.thread.take() {
            if woke {
                let _ = t.join();
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Logs a refusal, at most one line a second: a group member looping on
/// the socket must not flood the log. Lines held back are counted in the
/// next one.
fn warn_limited(line: &str) {
    static LAST: std::sync::Mutex<Option<(Instant, u64)>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    match *last {
        Some((at, held)) if now.duration_since(at) < Duration::from_secs(1) => {
            *last = Some((at, held + 1));
        }
        Some((_, held)) if held > 0 => {
            log::warn!("{line} (and {held} more refusals in the second before)");
            *last = Some((now, 0));
        }
        _ => {
            log::warn!("{line}");
            *last = Some((now, 0));
        }
    }
}

/// True when the peer is root or the daemon's own user.
fn is_owner(stream: &UnixStream) -> bool {
    mailqueue::sys::peer_uid(stream)
        .is_ok_and(|uid| uid == 0 || uid == mailqueue::sys::effective_uid())
}

fn reply(stream: &UnixStream, response: &Response) {
    let mut out = serde_json::to_vec(response).unwrap_or_default();
    out.push(b'\n');
    let _ = (&*stream).write_all(&out);
}

/// One connection's place among the [`MAX_CONNECTIONS`].
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Reads the request line: the whole of it within [`REQUEST_TIME`] and
/// `limit` bytes, so that a client trickling bytes, or sending without
/// end, holds neither a thread nor memory for long.
fn read_request(stream: &UnixStream, limit: usize) -> io::Result<Vec<u8>> {
    let deadline = Instant::now() + REQUEST_TIME;
    let mut line = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request not complete in time",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        let n = match (&*stream).read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let end = buf[..n].iter().position(|&b| b == b'\n');
        line.extend_from_slice(&buf[..end.unwrap_or(n)]);
        if line.len() > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("request longer than {limit} bytes"),
            ));
        }
        if n == 0 || end.is_some() {
            return Ok(line);
        }
    }
}

fn serve_one(stream: UnixStream, queue: &Queue, pickup: &Sender<()>) {
    let _ = stream.set_write_timeout(Some(REQUEST_TIME));
    // Who asks, read once: it sets the request size, what may be asked,
    // and what the answers and log lines show.
    let peer = mailqueue::sys::peer_uid(&stream);
    let owner = peer
        .as_ref()
        .is_ok_and(|&uid| uid == 0 || uid == mailqueue::sys::effective_uid());
    let who = match &peer {
        Ok(uid) => format!("userid {uid}"),
        Err(e) => format!("an unknown user ({e})"),
    };
    let limit = if owner {
        MAX_OWNER_REQUEST
    } else {
        MAX_OTHER_REQUEST
    };
    let line = match read_request(&stream, limit) {
        Ok(l) => String::from_utf8_lossy(&l).into_owned(),
        Err(e) => {
            warn_limited(&format!("control socket: request from {who} dropped: {e}"));
            reply(&stream, &Response::error(e));
            return;
        }
    };
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(req) if !(owner || allowed_to_others(&req)) => {
            warn_limited(&format!(
                "control socket: refused {} from {who}",
                req.name()
            ));
            Response::error(format!(
                "permission denied: only root and the spool's owner may {}",
                req.name()
            ))
        }
        Ok(Request::List { filter }) => {
            // Line by line, as the spool is read: never the whole queue
            // in one answer.
            super::list::serve(&stream, &queue.admin(), &filter);
            return;
        }
        Ok(req) => handle(req, queue, pickup, owner),
        Err(e) => Response::error(format!("bad request: {e}")),
    };
    reply(&stream, &response);
}

/// What others than root and the daemon's own user (the spool's group,
/// whom the socket's mode lets in) may ask: only what sendmail needs,
/// which neither shows nor changes queued mail.
fn allowed_to_others(req: &Request) -> bool {
    matches!(req, Request::Pickup | Request::Quota { .. })
}

fn handle(req: Request, queue: &Queue, pickup: &Sender<()>, owner: bool) -> Response {
    match req {
        Request::Pickup => {
            let incoming_synced = match mailqueue::ingest::pickup::sync_incoming(queue) {
                Ok(()) => true,
                Err(e) => {
                    log::warn!("pickup: {e}");
                    false
                }
            };
            log::debug!("control socket: pickup asked for (incoming/ synced: {incoming_synced})");
            let _ = pickup.try_send(());
            Response {
                incoming_synced,
                ..Response::ok()
            }
        }
        Request::Quota { size } => match queue.check_quota(size) {
            Ok(()) => Response::ok(),
            // The figures (bytes queued, space free) are the owner's to
            // see, as with `stats`; the group learns only that it is full.
            Err(e @ QueueError::Quota(_)) => Response {
                quota_full: true,
                ..Response::error(if owner {
                    e.to_string()
                } else {
                    "queue full".into()
                })
            },
            Err(e) => Response::error(e),
        },
        Request::Stats => Response {
            stats: Some(queue.stats()),
            ..Response::ok()
        },
        req => apply(&queue.admin(), &req),
    }
}
