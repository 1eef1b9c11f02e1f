//! The control socket `<spool>/control.sock`: line-delimited JSON between
//! the management commands (and `sendmail`) and the running daemon.
//!
//! One request line, one reply line, per connection. The socket is mode
//! 0660 so that `sendmail` run by the spool's group can ask for a quota
//! check and wake up pickup; every other request is taken only from root
//! and the daemon's own user, as the kernel reports the peer (SO_PEERCRED).

mod client;
mod server;

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use mailqueue::queue::admin::Admin;
use mailqueue::queue::meta::MessageMeta;
use mailqueue::queue::stats::StatsSnapshot;
use mailqueue::queue::QueueError;
use mailqueue::MessageId;

pub use client::request;
pub use server::ControlServer;

/// A request to the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    List,
    Show {
        id: MessageId,
    },
    Flush {
        ids: Vec<MessageId>,
    },
    Hold {
        ids: Vec<MessageId>,
    },
    Release {
        ids: Vec<MessageId>,
    },
    Delete {
        ids: Vec<MessageId>,
    },
    Expire {
        ids: Vec<MessageId>,
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
    /// For `list`, and `show` (one message).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<MessageMeta>,
    /// For `show`: the message header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
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
    /// The command's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Request::List => "list",
            Request::Show { .. } => "show",
            Request::Flush { .. } => "flush",
            Request::Hold { .. } => "hold",
            Request::Release { .. } => "release",
            Request::Delete { .. } => "delete",
            Request::Expire { .. } => "expire",
            Request::Pickup => "pickup",
            Request::Quota { .. } => "quota",
            Request::Stats => "stats",
        }
    }
}

/// Carries out a management request, in the daemon or directly on a
/// spool. `Pickup` and `Quota` concern a running daemon only: here they
/// do nothing; `Stats` has nothing to report.
pub fn apply(admin: &Admin<'_>, req: &Request) -> Response {
    let each = |ids: &[MessageId], op: &dyn Fn(MessageId) -> Result<(), QueueError>| {
        let failures: Vec<(MessageId, String)> = ids
            .iter()
            .filter_map(|&id| op(id).err().map(|e| (id, e.to_string())))
            .collect();
        Response {
            ok: failures.is_empty(),
            failures,
            ..Response::default()
        }
    };
    match req {
        Request::List => match admin.list() {
            Ok(messages) => Response {
                messages,
                ..Response::ok()
            },
            Err(e) => Response::error(e),
        },
        Request::Show { id } => match admin.show(*id) {
            Ok((meta, header)) => Response {
                messages: vec![meta],
                header: Some(String::from_utf8_lossy(&header).into_owned()),
                ..Response::ok()
            },
            Err(e) => Response::error(e),
        },
        Request::Flush { ids } if ids.is_empty() => match admin.flush(&[]) {
            Ok(()) => Response::ok(),
            Err(e) => Response::error(e),
        },
        Request::Flush { ids } => each(ids, &|id| admin.flush(&[id])),
        Request::Hold { ids } => each(ids, &|id| admin.hold(id)),
        Request::Release { ids } => each(ids, &|id| admin.release(id)),
        Request::Delete { ids } => each(ids, &|id| admin.delete(id)),
        Request::Expire { ids } => each(ids, &|id| admin.expire(id)),
        Request::Pickup | Request::Quota { .. } => Response::ok(),
        Request::Stats => Response::error(ControlError::NoDaemon),
    }
}
