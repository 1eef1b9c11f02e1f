//! Client-controlled text in log lines: control characters escaped and
//! the length capped, so that what a client sends can neither forge a
//! line nor flood the log.

use std::fmt::Write;

/// Longest client-controlled field in a line (an address, a HELO name,
/// a Message-ID), in characters.
pub(crate) const FIELD: usize = 256;
/// Longest reply text in a line.
pub(crate) const REPLY: usize = 512;

/// `text` with control characters (C0, DEL, C1, and the line and
/// paragraph separators) and backslashes escaped as `\xNN`/`\u{N}`, cut
/// after `max` characters (marked by `...`).
pub(crate) fn clean(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max + 8));
    for (n, c) in text.chars().enumerate() {
        if n == max {
            out.push_str("...");
            break;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// The value of the first `Message-ID:` field of a message's header
/// (unfolded, trimmed), cleaned for a log line; `None` when `head` (the
/// start of the message) has none before its first empty line.
pub(crate) fn message_id(head: &[u8]) -> Option<String> {
    let mut lines = head.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return None;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if !line[..colon]
            .trim_ascii_end()
            .eq_ignore_ascii_case(b"message-id")
        {
            continue;
        }
        let mut value = line[colon + 1..].to_vec();
        while let Some(next) = lines.peek() {
            if !next.starts_with(b" ") && !next.starts_with(b"\t") {
                break;
            }
            let next = lines.next().unwrap_or_default();
            value.extend_from_slice(next.strip_suffix(b"\r").unwrap_or(next));
        }
        let value = String::from_utf8_lossy(&value);
        let value = value.trim();
        return (!value.is_empty()).then(|| clean(value, FIELD));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_text_is_capped() {
        assert_eq!(
            clean("a\r\nb\u{1b}[31m\\", 100),
            "a\\x0d\\x0ab\\x1b[31m\\\\"
        );
        assert_eq!(clean("x\u{85}y\u{2028}", 100), "x\\u{85}y\\u{2028}");
        assert_eq!(clean("héllo", 3), "hél...");
        assert_eq!(clean("abc", 3), "abc");
    }

    #[test]
    fn message_id_is_read_from_the_header_only() {
        let m = b"Received: x\r\nMessage-Id:\r\n  <a@b>\r\nSubject: s\r\n\r\nMessage-ID: <c@d>\r\n";
        assert_eq!(message_id(m).as_deref(), Some("<a@b>"));
        assert_eq!(message_id(b"Subject: s\r\n\r\nMessage-ID: <c@d>\r\n"), None);
        assert_eq!(
            message_id(b"message-id: <e@f>\n\n").as_deref(),
            Some("<e@f>")
        );
        assert_eq!(
            message_id(b"Message-ID: <x\x1b@y>\r\n\r\n").as_deref(),
            Some("<x\\x1b@y>")
        );
        assert_eq!(message_id(b"Message-ID:  \r\n\r\n"), None);
    }
}
