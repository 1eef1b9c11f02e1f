//! SMTP replies: the three-digit code, the RFC 3463 enhanced status code and
//! the text, as they are stored in metadata, logs and DSNs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An RFC 3463 enhanced status code such as `5.1.1`.
///
/// ```
/// use mailqueue::EnhancedCode;
/// let code: EnhancedCode = "5.1.1".parse().unwrap();
/// assert_eq!(code.to_string(), "5.1.1");
/// assert_eq!(code.class, 5);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EnhancedCode {
    /// 2 (success), 4 (persistent transient) or 5 (permanent).
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl EnhancedCode {
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        EnhancedCode {
            class,
            subject,
            detail,
        }
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// The text was not an enhanced status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid enhanced status code {0:?}")]
pub struct BadEnhancedCode(String);

impl FromStr for EnhancedCode {
    type Err = BadEnhancedCode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadEnhancedCode(s.to_string());
        let mut parts = s.split('.');
        let (Some(c), Some(su), Some(d), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let digits = |p: &str, max: usize| {
            !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit())
        };
        if c.len() != 1 || !matches!(c, "2" | "4" | "5") || !digits(su, 3) || !digits(d, 3) {
            return Err(bad());
        }
        Ok(EnhancedCode {
            class: c.parse().map_err(|_| bad())?,
            subject: su.parse().map_err(|_| bad())?,
            detail: d.parse().map_err(|_| bad())?,
        })
    }
}

impl TryFrom<String> for EnhancedCode {
    type Error = BadEnhancedCode;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<EnhancedCode> for String {
    fn from(c: EnhancedCode) -> String {
        c.to_string()
    }
}

/// One SMTP reply: `550 5.1.1 no such user`.
///
/// The text is kept on one line: CR and LF (and the line breaks of a
/// multi-line reply) are folded to spaces so it can go into a log line or a
/// DSN `Diagnostic-Code` field unchanged.
///
/// ```
/// use mailqueue::SmtpReply;
/// let r = SmtpReply::parse_line("550 5.1.1 no such user").unwrap();
/// assert_eq!(r.code, 550);
/// assert_eq!(r.enhanced.unwrap().to_string(), "5.1.1");
/// assert_eq!(r.text, "no such user");
/// assert!(r.is_permanent());
/// assert_eq!(r.to_string(), "550 5.1.1 no such user");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmtpReply {
    pub code: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enhanced: Option<EnhancedCode>,
    pub text: String,
}

impl SmtpReply {
    /// A reply with the text folded onto one line.
    pub fn new(code: u16, enhanced: Option<EnhancedCode>, text: &str) -> Self {
        SmtpReply {
            code,
            enhanced,
            text: fold_line(text),
        }
    }

    /// Shorthand for a reply with an enhanced code given as `(class, subject, detail)`.
    pub fn with_code(code: u16, enhanced: (u8, u16, u16), text: &str) -> Self {
        Self::new(
            code,
            Some(EnhancedCode::new(enhanced.0, enhanced.1, enhanced.2)),
            text,
        )
    }

    /// Parses one reply line (`250-...` or `250 ...`), taking an enhanced
    /// code from the start of the text when one is there and its class
    /// agrees with the reply code.
    pub fn parse_line(line: &str) -> Option<SmtpReply> {
        let line = line.trim_end_matches(['\r', '\n']);
        let bytes = line.as_bytes();
        if bytes.len() < 3 || !bytes[..3].iter().all(u8::is_ascii_digit) {
            return None;
        }
        if bytes.len() > 3 && bytes[3] != b' ' && bytes[3] != b'-' {
            return None;
        }
        let code: u16 = line[..3].parse().ok()?;
        if !(200..=599).contains(&code) {
            return None;
        }
        // Fold before looking for the enhanced code: a code after a tab or
        // a second space is still the server's code, and a displayed reply
        // (always folded) must read back as the same reply.
        let rest = fold_line(if line.len() > 4 { &line[4..] } else { "" });
        let (enhanced, text) = split_enhanced(code, &rest);
        Some(SmtpReply::new(code, enhanced, text))
    }

    /// The enhanced code, or the generic one for the reply's class
    /// (`2.0.0`, `4.0.0`, `5.0.0`) when the server sent none.
    pub fn status(&self) -> EnhancedCode {
        self.enhanced
            .unwrap_or_else(|| EnhancedCode::new((self.code / 100) as u8, 0, 0))
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
}

/// Splits an enhanced code off the front of a reply's text.
pub(crate) fn split_enhanced(code: u16, text: &str) -> (Option<EnhancedCode>, &str) {
    // Servers sometimes put a tab or a second space before the code.
    let text = text.trim_start_matches([' ', '\t']);
    let (first, rest) = match text.find([' ', '\t']) {
        Some(i) => (&text[..i], &text[i + 1..]),
        None => (text, ""),
    };
    match first.parse::<EnhancedCode>() {
        Ok(e) if u16::from(e.class) == code / 100 => (Some(e), rest),
        _ => (None, text),
    }
}

/// Folds CR, LF and other control characters to single spaces.
pub(crate) fn fold_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last_space = false;
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if c == ' ' && last_space {
            continue;
        }
        last_space = c == ' ';
        out.push(c);
    }
    out.trim().to_string()
}

impl fmt::Display for SmtpReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = self.enhanced {
            write!(f, " {e}")?;
        }
        if !self.text.is_empty() {
            write!(f, " {}", self.text)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_codes_parse_strictly() {
        assert!("5.1.1".parse::<EnhancedCode>().is_ok());
        assert!("4.7.0".parse::<EnhancedCode>().is_ok());
        for bad in [
            "", "5", "5.1", "5.1.1.1", "3.1.1", "5.a.1", "5.1234.1", "55.1.1",
        ] {
            assert!(bad.parse::<EnhancedCode>().is_err(), "{bad}");
        }
    }

    #[test]
    fn reply_lines_parse() {
        let r = SmtpReply::parse_line("451 4.3.0 try\r\n").unwrap();
        assert_eq!((r.code, r.text.as_str()), (451, "try"));
        assert_eq!(r.enhanced, Some(EnhancedCode::new(4, 3, 0)));
        // A class that disagrees with the code is text, not an enhanced code.
        let r = SmtpReply::parse_line("550 4.1.1 odd").unwrap();
        assert_eq!((r.enhanced, r.text.as_str()), (None, "4.1.1 odd"));
        assert_eq!(r.status(), EnhancedCode::new(5, 0, 0));
        assert_eq!(SmtpReply::parse_line("250").unwrap().text, "");
        // Found by fuzzing: white space before the enhanced code hid it,
        // and the reply displayed did not read back as itself.
        for odd in ["220 \t2.0.0\0\0x y", "550  5.1.1 user", "451 \r4.3.0"] {
            let r = SmtpReply::parse_line(odd).unwrap();
            assert!(r.enhanced.is_some(), "{odd:?}");
            assert_eq!(SmtpReply::parse_line(&r.to_string()), Some(r), "{odd:?}");
        }
        for bad in ["", "25", "abc hello", "2500 x", "199 x", "600 x"] {
            assert!(SmtpReply::parse_line(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn text_is_folded_onto_one_line() {
        let r = SmtpReply::new(550, None, "line one\r\nline two\n\tthree");
        assert_eq!(r.text, "line one line two three");
    }
}
