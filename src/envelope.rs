//! The envelope of a message: sender, recipients and the ESMTP parameters
//! (RFC 1652 BODY, RFC 6531 SMTPUTF8, RFC 3461 DSN) that travel with it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::address::{Address, ReversePath};
pub use crate::smtp::params::OrigRecipient;

/// RFC 3461 RET: how much of the message a failure notice returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Ret {
    /// The whole message.
    Full,
    /// Its header only.
    Hdrs,
}

/// RFC 1652 BODY parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub enum BodyType {
    /// `7BIT`: plain ASCII text.
    #[default]
    #[serde(rename = "7BIT")]
    SevenBit,
    /// `8BITMIME`: text with 8-bit bytes.
    #[serde(rename = "8BITMIME")]
    EightBitMime,
}

/// RFC 3461 NOTIFY: which events the sender wants to hear about.
///
/// ```
/// use mailqueue::Notify;
/// let n: Notify = "SUCCESS,DELAY".parse().unwrap();
/// assert!(n.success && n.delay && !n.failure);
/// assert!("NEVER".parse::<Notify>().unwrap().is_never());
/// assert!("NEVER,SUCCESS".parse::<Notify>().is_err());
/// // Without NOTIFY, failures and delays are reported.
/// assert!(Notify::default().failure && Notify::default().delay);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Notify {
    /// Tell the sender once the recipient has the message.
    pub success: bool,
    /// Tell the sender when delivery fails.
    pub failure: bool,
    /// Tell the sender when delivery is delayed.
    pub delay: bool,
}

impl Notify {
    /// `NEVER`: no notices at all.
    pub const NEVER: Notify = Notify {
        success: false,
        failure: false,
        delay: false,
    };

    /// Whether no notice at all is wanted.
    pub fn is_never(&self) -> bool {
        *self == Notify::NEVER
    }
}

impl Default for Notify {
    fn default() -> Self {
        Notify {
            success: false,
            failure: true,
            delay: true,
        }
    }
}

/// A NOTIFY value that RFC 3461 does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid NOTIFY value {0:?}")]
pub struct BadNotify(String);

impl FromStr for Notify {
    type Err = BadNotify;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadNotify(s.to_string());
        if s.eq_ignore_ascii_case("NEVER") {
            return Ok(Notify::NEVER);
        }
        let mut n = Notify::NEVER;
        for word in s.split(',') {
            let slot = match word.to_ascii_uppercase().as_str() {
                "SUCCESS" => &mut n.success,
                "FAILURE" => &mut n.failure,
                "DELAY" => &mut n.delay,
                _ => return Err(bad()),
            };
            if *slot {
                return Err(bad());
            }
            *slot = true;
        }
        Ok(n)
    }
}

impl fmt::Display for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_never() {
            return f.write_str("NEVER");
        }
        let words = [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ];
        let list: Vec<&str> = words.iter().filter(|w| w.0).map(|w| w.1).collect();
        f.write_str(&list.join(","))
    }
}

impl TryFrom<String> for Notify {
    type Error = BadNotify;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Notify> for String {
    fn from(n: Notify) -> String {
        n.to_string()
    }
}

/// Parameters given with MAIL FROM that stay with the message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailParams {
    /// RFC 3461 RET: what a failure notice returns of the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<Ret>,
    /// RFC 3461 ENVID, decoded from xtext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
    /// RFC 6531 SMTPUTF8: addresses or header in UTF-8.
    #[serde(default)]
    pub smtputf8: bool,
    /// RFC 6152 BODY.
    #[serde(default)]
    pub body: BodyType,
}

/// One recipient as given to the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// Where the message is delivered.
    pub address: Address,
    /// The address before any internal rewriting (aliases, forwarding).
    /// Notices name this one; `None` means `address` was never rewritten.
    pub original: Option<Address>,
    /// RFC 3461 ORCPT, decoded from xtext.
    pub orcpt: Option<OrigRecipient>,
    /// RFC 3461 NOTIFY; `None` means the default, FAILURE,DELAY.
    pub notify: Option<Notify>,
}

impl Recipient {
    /// A recipient with no DSN parameters and no rewriting.
    pub fn new(address: Address) -> Self {
        Recipient {
            address,
            original: None,
            orcpt: None,
            notify: None,
        }
    }
}

/// Sender, recipients and parameters of one message.
///
/// ```
/// use mailqueue::Envelope;
/// let env = Envelope::new(Some("a@example.org".parse().unwrap()),
///                         vec!["b@example.net".parse().unwrap()]);
/// assert_eq!(env.recipients.len(), 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The reverse-path; `None` is the null sender `<>` of notices.
    pub sender: ReversePath,
    /// Each recipient with its own DSN parameters.
    pub recipients: Vec<Recipient>,
    /// What MAIL FROM carried that stays with the message.
    pub params: MailParams,
}

impl Envelope {
    /// An envelope with default parameters.
    pub fn new(sender: ReversePath, recipients: Vec<Address>) -> Self {
        Envelope {
            sender,
            recipients: recipients.into_iter().map(Recipient::new).collect(),
            params: MailParams::default(),
        }
    }
}
