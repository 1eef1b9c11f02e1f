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
}
