//! RFC 3461 xtext, the encoding of ENVID and ORCPT values in SMTP commands.

/// Encodes text as xtext: `+`, `=`, controls, space and non-ASCII bytes
/// become `+HH`.
///
/// ```
/// use mailqueue::smtp::xtext;
/// assert_eq!(xtext::encode("rfc822;a+b=c@d"), "rfc822;a+2Bb+3Dc@d");
/// assert_eq!(xtext::decode("rfc822;a+2Bb@d").unwrap(), "rfc822;a+b@d");
/// assert!(xtext::decode("a+2").is_none());
/// ```
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// Decodes xtext; `None` when it is malformed (a bad `+HH`, a byte outside
/// `!`..`~`, or a result that is not UTF-8) or decodes to a control
/// character.
///
/// ENVID and ORCPT, the values sent as xtext, are printable text (RFC 3461
/// §4.2, §4.4), and notices copy them into header fields: a `+0D+0A`
/// would otherwise start a new field there.
pub fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'+' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex
                .iter()
                .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c))
            {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else if (b'!'..=b'~').contains(&b) && b != b'=' {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out)
        .ok()
        .filter(|t| !t.chars().any(char::is_control))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_awkward_text() {
        for t in ["", "plain", "a b", "+=+", "ü@ß", "rfc822;x+tag@example.org"] {
            assert_eq!(decode(&encode(t)).as_deref(), Some(t));
        }
        for bad in ["+", "+4", "+zz", "+2b", "a b", "a=b", "\u{7f}"] {
            assert!(decode(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn controls_are_refused() {
        // An ENVID of `x+0D+0AX-Injected:+20yes` used to put a field of
        // the client's into the delivery report of a notice.
        for bad in ["x+0D+0AX-Injected:+20yes", "+00", "a+09b", "+7F", "+C2+85"] {
            assert!(decode(bad).is_none(), "{bad:?}");
        }
        assert_eq!(decode("a+20b").as_deref(), Some("a b"));
    }
}
