//! How queued messages are shown: `list` (table and `postqueue -j`
//! JSON Lines, with what waits in `incoming/`), printed as the messages
//! arrive, and `show`.

use std::io::{self, Write};

use serde_json::json;

use mailqueue::config::Config;
use mailqueue::date::rfc5322;
use mailqueue::queue::admin::IncomingFile;
use mailqueue::queue::meta::{MessageMeta, RcptStatus, RecipientMeta, Throttle, Timestamp};

use super::control::list::{ListSink, Pacer};

/// The files in `incoming/` after `list`'s table: not queued yet, so
/// without id or envelope; their name, size and age.
fn incoming_table(files: &[IncomingFile], now: Timestamp) -> String {
    let mut s = String::new();
    if files.is_empty() {
        return s;
    }
    s.push_str(&format!(
        "\n-- {} file{} in incoming/, waiting for pickup:\n",
        files.len(),
        if files.len() == 1 { "" } else { "s" }
    ));
    for f in files {
        s.push_str(&format!(
            "{:<40} {:>8} (incoming) {}s old\n",
            f.name,
            f.size,
            now.since(f.modified).as_secs()
        ));
    }
    s
}

/// A file in `incoming/` in `list --json`: `queue_name` is `incoming`.
fn incoming_json(f: &IncomingFile) -> String {
    json!({
        "queue_name": "incoming",
        "file": f.name,
        "message_size": f.size,
        "arrival_time": f.modified.unix_seconds(),
    })
    .to_string()
}

/// `active`, `deferred` or `hold`, as Postfix names its queues.
fn queue_name(m: &MessageMeta) -> &'static str {
    match mailqueue::queue::spool::State::of(m) {
        mailqueue::queue::spool::State::Held => "hold",
        mailqueue::queue::spool::State::Deferred => "deferred",
        mailqueue::queue::spool::State::Active => "active",
    }
}

fn status_word(s: RcptStatus) -> &'static str {
    match s {
        RcptStatus::Pending => "pending",
        RcptStatus::Delivered => "delivered",
        RcptStatus::Failed => "failed",
    }
}

/// The wait of a pending recipient its destination's limits hold back.
fn throttle(r: &RecipientMeta) -> Option<&Throttle> {
    r.throttled
        .as_ref()
        .filter(|_| r.status == RcptStatus::Pending)
}

/// A recipient's state as `list` and `show` print it: its status, or
/// `throttled` while it waits for its destination's limits.
fn state_word(r: &RecipientMeta) -> &'static str {
    match throttle(r) {
        Some(_) => "throttled",
        None => status_word(r.status),
    }
}

/// One line of `list --json`, with `postqueue -j` field names.
fn list_json(m: &MessageMeta) -> String {
    let recipients: Vec<serde_json::Value> = m
        .recipients
        .iter()
        .map(|r| {
            json!({
                "address": r.address.as_str(),
                "delay_reason": r.last_error.as_ref().map(|e| e.to_string()).unwrap_or_default(),
                "status": status_word(r.status),
                "tries": r.tries,
                "throttled": throttle(r).map(|t| json!({
                    "until": t.until.unix_seconds(),
                    "reason": t.reason,
                })),
            })
        })
        .collect();
    json!({
        "queue_id": m.id.as_str(),
        "queue_name": queue_name(m),
        "arrival_time": m.arrival.unix_seconds(),
        "message_size": m.size,
        "sender": m.sender.as_ref().map(|a| a.as_str()).unwrap_or(""),
        "recipients": recipients,
        "next_attempt": m.next_attempt.unix_seconds(),
    })
    .to_string()
}

/// The heading of the `mailq`-like table.
const TABLE_HEADING: &str =
    "-Queue ID-            --Size-- ----Arrival Time---------------- -Sender/Recipient-------\n";

/// One message's lines in the `mailq`-like table.
fn table_entry(m: &MessageMeta) -> String {
    let mark = if m.hold { "!" } else { " " };
    let mut s = format!(
        "{}{mark} {:>8} {:<32} {}\n",
        m.id,
        m.size,
        rfc5322(m.arrival.to_system()),
        m.sender
            .as_ref()
            .map(|a| a.as_str())
            .unwrap_or("MAILER-DAEMON")
    );
    for r in &m.recipients {
        s.push_str(&format!(
            "{:>44} {:<9} tries={:<3} {}\n",
            "",
            state_word(r),
            r.tries,
            r.address
        ));
        if let Some(e) = &r.last_error {
            s.push_str(&format!("{:>44} ({e})\n", ""));
        }
        if let Some(t) = throttle(r) {
            s.push_str(&format!(
                "{:>44} ({}, until {})\n",
                "",
                t.reason,
                rfc5322(t.until.to_system())
            ));
        }
    }
    s.push('\n');
    s
}

/// The table's last line: `n` messages of `bytes` in all.
fn table_totals(n: u64, bytes: u64) -> String {
    if n == 0 {
        return "Mail queue is empty\n".into();
    }
    format!(
        "-- {} Kbytes in {n} Request{}.\n",
        bytes.div_ceil(1024),
        if n == 1 { "" } else { "s" }
    )
}

/// `list`'s output, written as the messages arrive: the `mailq`-like
/// table, or one JSON object per line (`postqueue -j`); then the files
/// waiting in `incoming/`. Holds no message after printing it.
pub(super) struct ListPrinter<W: Write> {
    out: W,
    json: bool,
    messages: u64,
    bytes: u64,
    /// For the table, whose part on `incoming/` starts with their count.
    /// (Few: files sendmail left while no daemon ran.)
    incoming: Vec<IncomingFile>,
    pacer: Pacer,
}

impl<W: Write> ListPrinter<W> {
    pub(super) fn new(out: W, json: bool) -> ListPrinter<W> {
        ListPrinter {
            out,
            json,
            messages: 0,
            bytes: 0,
            incoming: Vec::new(),
            pacer: Pacer::default(),
        }
    }

    /// The table's totals and its part on `incoming/`, once every line
    /// has come; everything passed on.
    pub(super) fn finish(&mut self) -> io::Result<()> {
        if !self.json {
            let totals = table_totals(self.messages, self.bytes);
            self.out.write_all(totals.as_bytes())?;
            let files = incoming_table(&self.incoming, Timestamp::now());
            self.out.write_all(files.as_bytes())?;
        }
        self.out.flush()
    }

    /// Passes the output on when it is due (see [`Pacer`]).
    fn paced(&mut self) -> io::Result<()> {
        if self.pacer.due() {
            self.out.flush()?;
        }
        Ok(())
    }
}

impl<W: Write> ListSink for ListPrinter<W> {
    fn message(&mut self, m: MessageMeta) -> io::Result<()> {
        if self.json {
            writeln!(self.out, "{}", list_json(&m))?;
        } else {
            if self.messages == 0 {
                self.out.write_all(TABLE_HEADING.as_bytes())?;
            }
            self.out.write_all(table_entry(&m).as_bytes())?;
        }
        self.messages += 1;
        self.bytes += m.size;
        self.paced()
    }

    fn incoming(&mut self, f: IncomingFile) -> io::Result<()> {
        if self.json {
            writeln!(self.out, "{}", incoming_json(&f))?;
            return self.paced();
        }
        self.incoming.push(f);
        Ok(())
    }

    fn idle(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

pub(super) fn show_text(config: &Config, m: &MessageMeta, header: &str) -> String {
    let when = |t: Timestamp| format!("{} ({})", rfc5322(t.to_system()), t.unix_seconds());
    let expires = m
        .arrival
        .plus(config.queue.max_lifetime)
        .plus(std::time::Duration::from_millis(m.held_ms));
    let mut s = format!(
        "id: {}\nqueue: {}\nsender: <{}>\nsize: {}\narrival: {}\n",
        m.id,
        queue_name(m),
        m.sender.as_ref().map(|a| a.as_str()).unwrap_or(""),
        m.size,
        when(m.arrival)
    );
    if let Some(t) = m.last_attempt {
        s.push_str(&format!("last attempt: {}\n", when(t)));
    }
    if m.hold {
        s.push_str("next attempt: none (held)\n");
    } else {
        s.push_str(&format!("next attempt: {}\n", when(m.next_attempt)));
    }
    s.push_str(&format!("expires: {}\n", when(expires)));
    let p = &m.params;
    if p.ret.is_some() || p.envid.is_some() || p.smtputf8 {
        s.push_str(&format!(
            "parameters: RET={:?} ENVID={} SMTPUTF8={}\n",
            p.ret,
            p.envid.as_deref().unwrap_or("-"),
            p.smtputf8
        ));
    }
    if m.is_dsn {
        s.push_str("notice: yes (delivery status notification)\n");
    }
    if let Some(t) = &m.target {
        s.push_str(&format!(
            "target: {t} (pinned by requeue; `mailqueue requeue {}` undoes it)\n",
            m.id
        ));
    }
    s.push_str("recipients:\n");
    for r in &m.recipients {
        s.push_str(&recipient_text(r));
    }
    s.push_str("header:\n");
    s.push_str(header);
    s
}

/// One recipient's lines in `show`.
fn recipient_text(r: &RecipientMeta) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "  <{}> {} tries={}",
        r.address,
        state_word(r),
        r.tries
    ));
    if let Some(o) = &r.original {
        s.push_str(&format!(" original=<{o}>"));
    }
    if let Some(o) = &r.orcpt {
        s.push_str(&format!(" orcpt={o}"));
    }
    if let Some(n) = r.notify {
        s.push_str(&format!(" notify={n}"));
    }
    s.push('\n');
    if let Some(e) = &r.last_error {
        s.push_str(&format!("    last error: {e}\n"));
    }
    if let Some(t) = throttle(r) {
        s.push_str(&format!(
            "    throttled: {}, until {} ({})\n",
            t.reason,
            rfc5322(t.until.to_system()),
            t.until.unix_seconds()
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    use mailqueue::{Envelope, MessageId};

    fn meta(size: u64) -> MessageMeta {
        let env = Envelope::new(
            Some("a@example.org".parse().unwrap()),
            vec!["b@example.net".parse().unwrap()],
        );
        MessageMeta::new(MessageId::generate(), &env, size)
    }

    fn file() -> IncomingFile {
        IncomingFile {
            name: "drop.1".into(),
            size: 3,
            modified: Timestamp::now(),
        }
    }

    fn printed(json: bool, messages: Vec<MessageMeta>, files: Vec<IncomingFile>) -> String {
        let mut p = ListPrinter::new(Vec::new(), json);
        for m in messages {
            p.message(m).unwrap();
        }
        for f in files {
            p.incoming(f).unwrap();
        }
        p.finish().unwrap();
        String::from_utf8(p.out).unwrap()
    }

    #[test]
    fn the_table_has_its_heading_each_message_and_the_totals() {
        let (m1, m2) = (meta(1000), meta(1000));
        let out = printed(false, vec![m1.clone(), m2.clone()], vec![file()]);
        assert!(out.starts_with("-Queue ID-"), "{out}");
        assert_eq!(out.matches("-Queue ID-").count(), 1, "{out}");
        assert!(out.contains(&m1.id.to_string()) && out.contains(&m2.id.to_string()));
        assert!(out.contains("-- 2 Kbytes in 2 Requests.\n"), "{out}");
        assert!(out.ends_with("(incoming) 0s old\n"), "{out}");
        assert!(out.contains("-- 1 file in incoming/"), "{out}");
    }

    #[test]
    fn an_empty_queue_says_so_and_still_shows_incoming() {
        let out = printed(false, vec![], vec![file()]);
        assert!(out.starts_with("Mail queue is empty\n"), "{out}");
        assert!(out.contains("drop.1"), "{out}");
        assert!(!out.contains("-Queue ID-"), "{out}");
    }

    #[test]
    fn json_is_one_object_per_line_messages_then_incoming() {
        let m = meta(10);
        let out = printed(true, vec![m.clone()], vec![file()]);
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert_eq!(lines[0]["queue_id"], m.id.to_string());
        assert_eq!(lines[1]["queue_name"], "incoming");
        // The keys in order, arrival first: `sort` puts lines oldest first.
        assert!(out.starts_with("{\"arrival_time\":"), "{out}");
    }
}
