//! `list`, the one request whose answer is many lines: one per message,
//! written as the daemon reads each message's metadata, then one per file
//! in `incoming/`, then an end line saying whether all went well. The
//! command handles each line as it arrives. Neither side ever holds more
//! than one message, so a list of a million messages costs either
//! process no more memory than a list of ten.
//!
//! The messages come in the order the queue directory lists them, not
//! sorted: sorting needs every name first, and the time to read a large
//! directory whole would delay the first line.

use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use mailqueue::queue::admin::{Admin, Filter, IncomingFile};
use mailqueue::queue::meta::{MessageMeta, Timestamp};

use super::client::{connect, send};
use super::{ControlError, Request, Response};

/// How long the daemon waits for a client that takes none of the list
/// (a pager left open): the list holds a thread and a directory handle
/// meanwhile, no more.
pub(super) const STALLED_CLIENT: Duration = Duration::from_secs(10 * 60);
/// How long the command waits for the next line. A filter that matches
/// few messages of a large queue read from a cold disk may leave the
/// daemon silent for minutes.
const SILENT_DAEMON: Duration = Duration::from_secs(30 * 60);
/// Buffer on either side of the socket, and for standard output.
const BUFFER: usize = 64 * 1024;
/// The longest a listed line waits in a buffer before it is passed on.
const PASS_ON: Duration = Duration::from_millis(100);

/// One line of the daemon's answer to `list`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListLine {
    Message(MessageMeta),
    Incoming(IncomingFile),
    /// The last line: `ok`, or the error that cut the list short.
    End(Response),
}

/// Where the listed messages go: the command's printer, the daemon's
/// socket, a count.
pub trait ListSink {
    fn message(&mut self, m: MessageMeta) -> io::Result<()>;
    fn incoming(&mut self, f: IncomingFile) -> io::Result<()>;
    /// Nothing more is at hand for now: pass on what is buffered.
    fn idle(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How a list that reached the daemon or the spool ended.
#[derive(Debug)]
pub enum Listed {
    /// Every line was passed on; with an error, why the list stopped
    /// early.
    Done(Option<String>),
    /// The sink refused a line (standard output closed, say): the list
    /// was abandoned there.
    SinkFailed(io::Error),
}

/// When a buffered writer passes its lines on: at the first, so that it
/// shows at once, then at most [`PASS_ON`] after the last time (a filter
/// that matches few messages leaves a buffer part-full for long).
#[derive(Debug, Default)]
pub struct Pacer(Option<Instant>);

impl Pacer {
    /// True when the buffer should be flushed now.
    pub fn due(&mut self) -> bool {
        let now = Instant::now();
        match self.0 {
            Some(last) if now.duration_since(last) < PASS_ON => false,
            _ => {
                self.0 = Some(now);
                true
            }
        }
    }
}

/// Hands `sink` every queued message `filter` matches, one at a time, then
/// for a plain list the files waiting in `incoming/`.
pub fn scan(admin: &Admin<'_>, filter: &Filter, sink: &mut impl ListSink) -> Listed {
    let now = Timestamp::now();
    let messages = match admin.messages() {
        Ok(m) => m,
        Err(e) => return Listed::Done(Some(e.to_string())),
    };
    for meta in messages {
        let meta = match meta {
            Ok(m) => m,
            Err(e) => return Listed::Done(Some(e.to_string())),
        };
        if filter.matches(&meta, now) {
            if let Err(e) = sink.message(meta) {
                return Listed::SinkFailed(e);
            }
        }
    }
    // What waits in incoming/ is not a message yet: a filter cannot say
    // whether it matches, so only a plain list shows it.
    if filter.is_empty() {
        for f in admin.incoming().unwrap_or_default() {
            if let Err(e) = sink.incoming(f) {
                return Listed::SinkFailed(e);
            }
        }
    }
    Listed::Done(None)
}

/// The daemon's side: the list written to the client as it is read.
pub(super) fn serve(stream: &UnixStream, admin: &Admin<'_>, filter: &Filter) {
    let _ = stream.set_write_timeout(Some(STALLED_CLIENT));
    let mut sink = SocketSink {
        out: BufWriter::with_capacity(BUFFER, stream),
        pacer: Pacer::default(),
    };
    let end = match scan(admin, filter, &mut sink) {
        Listed::Done(None) => Response::ok(),
        Listed::Done(Some(e)) => Response::error(e),
        Listed::SinkFailed(e) => {
            log::debug!("control socket: list abandoned: {e}");
            return;
        }
    };
    if let Err(e) = sink
        .line(&ListLine::End(end))
        .and_then(|()| sink.out.flush())
    {
        log::debug!("control socket: list abandoned at its end: {e}");
    }
}

/// Lines to the client: one JSON object each.
struct SocketSink<'a> {
    out: BufWriter<&'a UnixStream>,
    pacer: Pacer,
}

impl SocketSink<'_> {
    fn line(&mut self, line: &ListLine) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, line)?;
        self.out.write_all(b"\n")?;
        if self.pacer.due() {
            self.out.flush()?;
        }
        Ok(())
    }
}

impl ListSink for SocketSink<'_> {
    fn message(&mut self, m: MessageMeta) -> io::Result<()> {
        self.line(&ListLine::Message(m))
    }

    fn incoming(&mut self, f: IncomingFile) -> io::Result<()> {
        self.line(&ListLine::Incoming(f))
    }
}

/// The command's side: asks the daemon of `spool` for the list and hands
/// each line to `sink` as it arrives.
pub fn fetch(
    spool: &Path,
    filter: &Filter,
    sink: &mut impl ListSink,
) -> Result<Listed, ControlError> {
    let (stream, path) = connect(spool)?;
    let io_err = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    let bad = |why: String| ControlError::BadReply {
        path: path.clone(),
        why,
    };
    stream
        .set_read_timeout(Some(SILENT_DAEMON))
        .map_err(io_err)?;
    let request = Request::List {
        filter: filter.clone(),
    };
    send(&stream, &request).map_err(io_err)?;
    let mut input = BufReader::with_capacity(BUFFER, &stream);
    let mut line = String::new();
    loop {
        if input.buffer().is_empty() {
            if let Err(e) = sink.idle() {
                return Ok(Listed::SinkFailed(e));
            }
        }
        line.clear();
        if input.read_line(&mut line).map_err(io_err)? == 0 {
            return Err(bad("the list ended before its end line".into()));
        }
        let passed = match serde_json::from_str::<ListLine>(&line) {
            Ok(ListLine::Message(m)) => sink.message(m),
            Ok(ListLine::Incoming(f)) => sink.incoming(f),
            Ok(ListLine::End(end)) => return Ok(Listed::Done(end.error)),
            // A refusal, or a daemon from before the list was streamed
            // answering in one line.
            Err(_) => {
                let r = serde_json::from_str::<Response>(&line).map_err(|e| bad(e.to_string()))?;
                return Ok(whole(r, sink));
            }
        };
        if let Err(e) = passed {
            return Ok(Listed::SinkFailed(e));
        }
    }
}

/// A whole list in one answer, as daemons before streaming gave it.
fn whole(mut r: Response, sink: &mut impl ListSink) -> Listed {
    let messages = std::mem::take(&mut r.messages);
    let incoming = std::mem::take(&mut r.incoming);
    for m in messages {
        if let Err(e) = sink.message(m) {
            return Listed::SinkFailed(e);
        }
    }
    for f in incoming {
        if let Err(e) = sink.incoming(f) {
            return Listed::SinkFailed(e);
        }
    }
    Listed::Done(r.error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    use mailqueue::{Envelope, MessageId};

    /// What a sink was handed.
    #[derive(Default)]
    struct Seen {
        messages: Vec<MessageId>,
        incoming: Vec<String>,
    }

    impl ListSink for Seen {
        fn message(&mut self, m: MessageMeta) -> io::Result<()> {
            self.messages.push(m.id);
            Ok(())
        }

        fn incoming(&mut self, f: IncomingFile) -> io::Result<()> {
            self.incoming.push(f.name);
            Ok(())
        }
    }

    fn meta() -> MessageMeta {
        let env = Envelope::new(
            Some("a@example.org".parse().unwrap()),
            vec!["b@example.net".parse().unwrap()],
        );
        MessageMeta::new(MessageId::generate(), &env, 10)
    }

    /// A daemon that answers one connection with `lines`, then closes it.
    fn daemon_saying(lines: Vec<String>) -> (tempfile::TempDir, std::thread::JoinHandle<()>) {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(super::super::socket_path(dir.path())).unwrap();
        let thread = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut request = String::new();
            BufReader::new(&stream).read_line(&mut request).unwrap();
            assert!(request.contains("\"cmd\":\"list\""), "{request}");
            for l in lines {
                (&stream).write_all(format!("{l}\n").as_bytes()).unwrap();
            }
        });
        (dir, thread)
    }

    #[test]
    fn lines_are_handed_on_until_the_end_line() {
        let m = meta();
        let f = IncomingFile {
            name: "drop.1".into(),
            size: 3,
            modified: Timestamp(0),
        };
        let lines = [
            ListLine::Message(m.clone()),
            ListLine::Incoming(f),
            ListLine::End(Response::ok()),
        ];
        let lines = lines.iter().map(|l| serde_json::to_string(l).unwrap());
        let (dir, daemon) = daemon_saying(lines.collect());
        let mut seen = Seen::default();
        let listed = fetch(dir.path(), &Filter::default(), &mut seen).unwrap();
        daemon.join().unwrap();
        assert!(matches!(listed, Listed::Done(None)), "{listed:?}");
        assert_eq!(seen.messages, vec![m.id]);
        assert_eq!(seen.incoming, vec!["drop.1".to_string()]);
    }

    #[test]
    fn a_list_without_its_end_line_is_an_error_not_a_short_list() {
        let line = serde_json::to_string(&ListLine::Message(meta())).unwrap();
        let (dir, daemon) = daemon_saying(vec![line]);
        let got = fetch(dir.path(), &Filter::default(), &mut Seen::default());
        daemon.join().unwrap();
        assert!(
            matches!(&got, Err(ControlError::BadReply { why, .. }) if why.contains("end line")),
            "{got:?}"
        );
    }

    #[test]
    fn a_daemon_answering_in_one_line_as_before_streaming_is_understood() {
        let (m1, m2) = (meta(), meta());
        let old = Response {
            messages: vec![m1.clone(), m2.clone()],
            ..Response::ok()
        };
        let (dir, daemon) = daemon_saying(vec![serde_json::to_string(&old).unwrap()]);
        let mut seen = Seen::default();
        let listed = fetch(dir.path(), &Filter::default(), &mut seen).unwrap();
        daemon.join().unwrap();
        assert!(matches!(listed, Listed::Done(None)), "{listed:?}");
        assert_eq!(seen.messages, vec![m1.id, m2.id]);
        // And a refusal is an error, with nothing listed.
        let (dir, daemon) =
            daemon_saying(vec![r#"{"ok":false,"error":"permission denied"}"#.into()]);
        let mut seen = Seen::default();
        let listed = fetch(dir.path(), &Filter::default(), &mut seen).unwrap();
        daemon.join().unwrap();
        assert!(
            matches!(&listed, Listed::Done(Some(e)) if e == "permission denied"),
            "{listed:?}"
        );
        assert!(seen.messages.is_empty());
    }
}
