//! Queue ids: unique without coordination, ordered by creation time, and
//! safe to use as file names.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

const TIME_DIGITS: usize = 13;
const RANDOM_DIGITS: usize = 7;
/// Length of every id in characters.
pub(crate) const ID_LEN: usize = TIME_DIGITS + RANDOM_DIGITS;

/// A message's queue id: 13 hex digits of microseconds since the Unix epoch
/// and 7 random hex digits, e.g. `19AC8F3E2B1C40A3F9D12`. Only `0-9A-F`, so
/// an id can never name a path outside the spool.
///
/// ```
/// use mailqueue::MessageId;
/// let a = MessageId::generate();
/// let b: MessageId = a.as_str().parse().unwrap();
/// assert_eq!(a, b);
/// assert!("../etc/passwd".parse::<MessageId>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MessageId([u8; ID_LEN]);

impl MessageId {
    /// A new id for a message arriving now.
    pub fn generate() -> MessageId {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0) as u64;
        let random = fastrand::u32(..) & 0x0FFF_FFFF;
        let text = format!("{:013X}{:07X}", micros & 0x000F_FFFF_FFFF_FFFF, random);
        let mut bytes = [0u8; ID_LEN];
        bytes.copy_from_slice(text.as_bytes());
        MessageId(bytes)
    }

    /// The id as an 80-bit number (its 20 hex digits), ordered as the
    /// ids are: a compact key for the start-up scan's listing.
    pub(crate) fn to_bits(self) -> u128 {
        self.0.iter().fold(0u128, |n, &c| {
            let digit = if c.is_ascii_digit() {
                c - b'0'
            } else {
                c - b'A' + 10
            };
            n << 4 | u128::from(digit)
        })
    }

    /// The id whose [`MessageId::to_bits`] is `bits` (its low 80 bits).
    pub(crate) fn from_bits(bits: u128) -> MessageId {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let mut bytes = [0u8; ID_LEN];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = HEX[(bits >> (4 * (ID_LEN - 1 - i)) & 0xF) as usize];
        }
        MessageId(bytes)
    }

    /// Parses an id from bytes, as [`FromStr`] does, without a `str`.
    pub(crate) fn from_bytes(b: &[u8]) -> Option<MessageId> {
        if b.len() != ID_LEN
            || !b
                .iter()
                .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c))
        {
            return None;
        }
        let mut bytes = [0u8; ID_LEN];
        bytes.copy_from_slice(b);
        Some(MessageId(bytes))
    }

    /// The id as text: 20 characters, time-sortable.
    pub fn as_str(&self) -> &str {
        // Only ever built from ASCII hex digits.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

/// Text that is not a queue id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid queue id {0:?}")]
pub struct BadMessageId(pub String);

impl FromStr for MessageId {
    type Err = BadMessageId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MessageId::from_bytes(s.as_bytes()).ok_or_else(|| BadMessageId(s.to_string()))
    }
}

impl TryFrom<String> for MessageId {
    type Error = BadMessageId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MessageId> for String {
    fn from(id: MessageId) -> String {
        id.as_str().to_string()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_time_ordered() {
        let mut ids: Vec<MessageId> = (0..10_000).map(|_| MessageId::generate()).collect();
        let times: Vec<&str> = ids.iter().map(|i| &i.as_str()[..TIME_DIGITS]).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 10_000);
    }

    #[test]
    fn bits_round_trip_and_keep_the_order() {
        let mut ids: Vec<MessageId> = (0..1000).map(|_| MessageId::generate()).collect();
        ids.push("0123456789ABCDEF0123".parse().unwrap());
        ids.push("FFFFFFFFFFFFFFFFFFFF".parse().unwrap());
        ids.push("00000000000000000000".parse().unwrap());
        for id in &ids {
            assert_eq!(MessageId::from_bits(id.to_bits()), *id);
        }
        let mut by_text = ids.clone();
        by_text.sort();
        let mut by_bits = ids.clone();
        by_bits.sort_by_key(|i| i.to_bits());
        assert_eq!(by_text, by_bits);
    }

    #[test]
    fn only_hex_ids_parse() {
        assert!("0123456789ABCDEF0123".parse::<MessageId>().is_ok());
        for bad in [
            "",
            "0123456789abcdef0123",
            "0123456789ABCDEF012",
            "0123456789ABCDEF01234",
            "0123456789ABCDEF/123",
        ] {
            assert!(bad.parse::<MessageId>().is_err(), "{bad}");
        }
    }
}
