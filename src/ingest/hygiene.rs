//! What a message must be to be queued, beyond its envelope: at most one
//! of each header field RFC 5322 §3.6 allows once. Gmail refuses such
//! mail anyway, and a signer cannot say which of two `From:` fields it
//! vouched for; so it is refused here, while the sender still hears of
//! it, not by the next hop after it was queued.

use crate::header::{self, Header};

/// The fields RFC 5322 §3.6 allows at most once (`Bcc:` too, but senders
/// remove it or it is removed before sending, so it is let through).
pub const SINGLE_INSTANCE: [&str; 10] = [
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Subject",
];

/// Why a message is refused for what it holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BadMessage {
    /// A field allowed once appears more often.
    #[error("header field {name} appears {count} times; RFC 5322 section 3.6 allows it once")]
    Repeated {
        /// The field, as RFC 5322 spells it.
        name: &'static str,
        /// How often it appears.
        count: usize,
    },
}

/// Refuses a header with a single-instance field repeated; `bytes` is the
/// message (or its header) the parsed `header` describes.
pub(crate) fn check(bytes: &[u8], header: &Header) -> Result<(), BadMessage> {
    for name in SINGLE_INSTANCE {
        let count = header.named(bytes, name).count();
        if count > 1 {
            return Err(BadMessage::Repeated { name, count });
        }
    }
    Ok(())
}

/// The repeated-field check for a header block held alone (sendmail's, before it writes
/// the message).
pub fn check_header(header: &[u8]) -> Result<(), BadMessage> {
    match header::parse(header, true) {
        Some(h) => check(header, &h),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_single_field_is_named_in_any_case() {
        let e = check_header(b"Subject: a\r\nTo: b@c\r\nsubject: again\r\n").unwrap_err();
        assert_eq!(
            e,
            BadMessage::Repeated {
                name: "Subject",
                count: 2
            }
        );
        assert!(e.to_string().contains("Subject appears 2 times"));
    }

    #[test]
    fn repeated_trace_and_other_fields_pass() {
        let h = b"Received: a\r\nReceived: b\r\nX-A: 1\r\nX-A: 2\r\nBcc: x@y\r\nBcc: z@y\r\n";
        assert_eq!(check_header(h), Ok(()));
    }

    #[test]
    fn a_field_name_in_the_body_is_not_counted() {
        let m = b"From: a@b\r\n\r\nFrom: c@d\r\n";
        assert_eq!(check(m, &header::parse(m, true).unwrap()), Ok(()));
    }
}
