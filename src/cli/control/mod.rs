//! The control socket `<spool>/control.sock`: line-delimited JSON between
//! the management commands (and `sendmail`) and the running daemon.
//!
//! One request line, one reply line, per connection; only `list` answers
//! with many lines, one per message (see [`list`]). The socket is mode
//! 0660 so that `sendmail` run by the spool's group can ask for a quota
//! check and wake up pickup; every other request is taken only from root
//! and the daemon's own user, as the kernel reports the peer (SO_PEERCRED).

mod client;
pub mod list;
mod server;

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use mailqueue::queue::admin::{Admin, BulkOutcome, Filter, IncomingFile, Selection};
use mailqueue::queue::meta::{MessageMeta, Timestamp};
use mailqueue::queue::stats::StatsSnapshot;
use mailqueue::queue::QueueError;
use mailqueue::MessageId;

pub use client::request;
pub use server::ControlServer;

/// A request to the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// The messages the filter matches, and the files in `incoming/`:
    /// answered line by line (see [`list`]).
    List {
        #[serde(default, skip_serializing_if = "Filter::is_empty")]
        filter: Filter,
    },
    Show {
        id: MessageId,
        /// The whole message, not only its header.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        body: bool,
    },
    /// Every message when the selection names none.
    Flush(Selection),
    Hold(Selection),
    Release(Selection),
    Delete(Selection),
    Expire(Selection),
    /// Routing again, now: pinned to `target`, or back to the routes.
    Requeue {
        #[serde(flatten)]
        selection: Selection,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
    },
    /// Messages by domain and age (qshape).
    Shape {
        /// By sender domain instead of recipient domain.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        sender: bool,
        #[serde(default, skip_serializing_if = "Filter::is_empty")]
        filter: Filter,
    },
    /// New files wait in `incoming/`. The daemon fsyncs `incoming/`
    /// before it answers (and says so in `incoming_synced`): a submitter
    /// that may not open it relies on that to make its rename durable.
    Pickup,
    /// May a message of `size` bytes be queued now?
    Quota {
        size: u64,
    },
    /// The running queue's counters.
    Stats,
}

/// The daemon's answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For `show`: the message. (Daemons from before `list` was streamed
    /// answered `list` with every message here.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<MessageMeta>,
    /// For `show`: the message header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// For `show --body`: the whole message, base64 (it may be 8-bit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_base64: Option<String>,
    /// Files in `incoming/`, not picked up yet, from daemons that answered
    /// `list` in one line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub incoming: Vec<IncomingFile>,
    /// For the commands on many messages: how many they acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<usize>,
    /// For `shape`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<crate::cli::shape::Shape>,
    /// For commands on several ids: the ones that failed, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<(MessageId, String)>,
    /// For `stats`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<StatsSnapshot>,
    /// For `pickup`: `incoming/` was fsynced before this answer, so every
    /// rename into it made before the request is durable. A daemon that
    /// does not say so (an older one) did not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub incoming_synced: bool,
    /// For `quota`: refused because the queue is full. Any other refusal
    /// (busy, say) says nothing about the quota.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quota_full: bool,
}

impl Response {
    fn ok() -> Response {
        Response {
            ok: true,
            ..Response::default()
        }
    }

    fn error(e: impl ToString) -> Response {
        Response {
            ok: false,
            error: Some(e.to_string()),
            ..Response::default()
        }
    }
}

/// Why a request did not reach a daemon.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no daemon is running on this spool")]
    NoDaemon,
    #[error("control socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("control socket {path}: bad reply: {why}")]
    BadReply { path: PathBuf, why: String },
}

/// Where the daemon of `spool` listens.
pub fn socket_path(spool: &Path) -> PathBuf {
    mailqueue::queue::spool::layout::control_socket(spool)
}

impl Request {
    /// `list` of every message.
    pub fn list_all() -> Request {
        Request::List {
            filter: Filter::default(),
        }
    }

    /// `flush` of every message.
    pub fn flush_all() -> Request {
        Request::Flush(Selection::default())
    }

    /// The command's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Request::List { .. } => "list",
            Request::Shape { .. } => "shape",
            Request::Show { .. } => "show",
            Request::Flush(_) => "flush",
            Request::Hold(_) => "hold",
            Request::Release(_) => "release",
            Request::Delete(_) => "delete",
            Request::Expire(_) => "expire",
            Request::Requeue { .. } => "requeue",
            Request::Pickup => "pickup",
            Request::Quota { .. } => "quota",
            Request::Stats => "stats",
        }
    }
}

/// Carries out a management request, in the daemon or directly on a
/// spool. `Pickup` and `Quota` concern a running daemon only: here they
/// do nothing; `Stats` has nothing to report. `List` is not answered
/// here but line by line, by [`list::scan`].
pub fn apply(admin: &Admin<'_>, req: &Request) -> Response {
    match req {
        Request::List { .. } => Response::error("list is answered line by line"),
        Request::Show { id, body } => show(admin, *id, *body),
        Request::Shape { sender, filter } => shape(admin, *sender, filter),
        Request::Flush(sel) => bulk(admin.flush_selected(sel)),
        Request::Hold(sel) => bulk(admin.hold_selected(sel)),
        Request::Release(sel) => bulk(admin.release_selected(sel)),
        Request::Delete(sel) => bulk(admin.delete_selected(sel)),
        Request::Expire(sel) => bulk(admin.expire_selected(sel)),
        Request::Requeue { selection, target } => {
            bulk(admin.requeue_selected(selection, target.as_deref()))
        }
        Request::Pickup | Request::Quota { .. } => Response::ok(),
        Request::Stats => Response::error(ControlError::NoDaemon),
    }
}

/// What a bulk command did, and which ids failed and why.
fn bulk(outcome: Result<BulkOutcome, QueueError>) -> Response {
    match outcome {
        Ok(o) => Response {
            ok: o.failures.is_empty(),
            done: Some(o.done),
            failures: o
                .failures
                .into_iter()
                .map(|(id, e)| (id, e.to_string()))
                .collect(),
            ..Response::default()
        },
        Err(e) => Response::error(e),
    }
}

/// `shape`: the matching messages counted as they are read, not held.
fn shape(admin: &Admin<'_>, sender: bool, filter: &Filter) -> Response {
    let now = Timestamp::now();
    let messages = match admin.messages() {
        Ok(m) => m,
        Err(e) => return Response::error(e),
    };
    let mut failed = None;
    let matching = messages
        .map_while(|m| m.map_err(|e| failed = Some(e)).ok())
        .filter(|m| filter.matches(m, now));
    let shape = crate::cli::shape::Shape::of(matching, sender, now);
    match failed {
        Some(e) => Response::error(e),
        None => Response {
            shape: Some(shape),
            ..Response::ok()
        },
    }
}

/// `show`: the metadata and the header, or with `body` the whole message.
fn show(admin: &Admin<'_>, id: MessageId, body: bool) -> Response {
    if body {
        return match admin.message(id) {
            Ok((meta, bytes)) => Response {
                messages: vec![meta],
                message_base64: Some(base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    bytes,
                )),
                ..Response::ok()
            },
            Err(e) => Response::error(e),
        };
    }
    match admin.show(id) {
        Ok((meta, header)) => Response {
            messages: vec![meta],
            header: Some(String::from_utf8_lossy(&header).into_owned()),
            ..Response::ok()
        },
        Err(e) => Response::error(e),
    }
}
