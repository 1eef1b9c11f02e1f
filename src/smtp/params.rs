//! The ESMTP parameters of MAIL and RCPT, encoded for the commands the
//! client sends and decoded from those the listener reads, in one place:
//! RFC 1870 SIZE, RFC 1652 BODY, RFC 6531 SMTPUTF8, RFC 3461 RET, ENVID,
//! NOTIFY and ORCPT, RFC 4954 AUTH. A new parameter is a variant here,
//! with its encoding ([`fmt::Display`]), its decoding and what it sets.
//!
//! ```
//! use mailqueue::smtp::params::{MailFrom, MailParam, OrigRecipient, RcptParam, RcptTo};
//! let mail = MailFrom {
//!     sender: Some("a@example.org".parse().unwrap()),
//!     params: vec![MailParam::Size(100), MailParam::EnvId("q+1".into())],
//! };
//! assert_eq!(mail.to_string(), "MAIL FROM:<a@example.org> SIZE=100 ENVID=q+2B1");
//! let rcpt = RcptTo {
//!     address: "b@example.net".parse().unwrap(),
//!     params: vec![RcptParam::Orcpt(OrigRecipient::new("rfc822", "b+x@example.net"))],
//! };
//! assert_eq!(rcpt.to_string(), "RCPT TO:<b@example.net> ORCPT=rfc822;b+2Bx@example.net");
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::address::{Address, ReversePath};
use crate::envelope::{BodyType, MailParams, Notify, Recipient, Ret};
use crate::smtp::reply::SmtpReply;
use crate::smtp::xtext;

/// Longest ENVID taken, decoded (RFC 3461 §4.4 allows 100 characters).
const MAX_ENVID: usize = 100;
/// Longest ORCPT taken, `addr-type;address` decoded (RFC 3461 §4.2).
const MAX_ORCPT: usize = 500;

/// RFC 3461 ORCPT: the recipient as the sender first gave it, with the
/// type of its address (`rfc822`, `utf-8`, ...). Decoded from xtext.
///
/// Stored (in the spool's metadata) and displayed as `addr-type;address`;
/// a stored value without a `;` reads as an `rfc822` address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub struct OrigRecipient {
    pub addr_type: String,
    pub addr: String,
}

impl OrigRecipient {
    pub fn new(addr_type: impl Into<String>, addr: impl Into<String>) -> Self {
        OrigRecipient {
            addr_type: addr_type.into(),
            addr: addr.into(),
        }
    }

    /// Decodes the value of an `ORCPT=` parameter, `addr-type;xtext`;
    /// `None` when it is malformed or too long.
    pub fn decode(value: &str) -> Option<Self> {
        let (kind, addr) = value.split_once(';')?;
        if kind.is_empty() || !kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return None;
        }
        let addr = xtext::decode(addr)?;
        (kind.len() + 1 + addr.len() <= MAX_ORCPT).then(|| OrigRecipient::new(kind, addr))
    }

    /// The value of an `ORCPT=` parameter: the address as xtext.
    pub fn encode(&self) -> String {
        format!("{};{}", self.addr_type, xtext::encode(&self.addr))
    }
}

impl fmt::Display for OrigRecipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{};{}", self.addr_type, self.addr)
    }
}

impl From<String> for OrigRecipient {
    fn from(s: String) -> Self {
        match s.split_once(';') {
            Some((kind, addr)) => OrigRecipient::new(kind, addr),
            None => OrigRecipient::new("rfc822", s),
        }
    }
}

impl From<OrigRecipient> for String {
    fn from(o: OrigRecipient) -> String {
        o.to_string()
    }
}

/// A parameter of MAIL FROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailParam {
    /// The size the client announces.
    Size(u64),
    Body(BodyType),
    SmtpUtf8,
    Ret(Ret),
    /// Decoded from xtext.
    EnvId(String),
    /// RFC 4954 AUTH, kept as sent (xtext) and otherwise ignored.
    Auth(String),
}

/// A parameter of RCPT TO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptParam {
    Notify(Notify),
    Orcpt(OrigRecipient),
}

fn bad(key: &str) -> SmtpReply {
    SmtpReply::with_code(501, (5, 5, 4), &format!("Bad {key} parameter"))
}

fn unsupported(key: &str) -> SmtpReply {
    SmtpReply::with_code(555, (5, 5, 4), &format!("Unsupported parameter {key}"))
}

impl MailParam {
    /// Decodes one `KEY[=VALUE]` of MAIL (the key upper-cased); the error
    /// is the reply to send.
    pub fn decode(key: &str, value: Option<&str>) -> Result<MailParam, SmtpReply> {
        let is = |v: &str, word: &str| v.eq_ignore_ascii_case(word);
        Ok(match (key, value) {
            ("SIZE", Some(v)) => MailParam::Size(v.parse().map_err(|_| bad(key))?),
            ("BODY", Some(v)) if is(v, "7BIT") => MailParam::Body(BodyType::SevenBit),
            ("BODY", Some(v)) if is(v, "8BITMIME") => MailParam::Body(BodyType::EightBitMime),
            ("SMTPUTF8", None) => MailParam::SmtpUtf8,
            ("RET", Some(v)) if is(v, "FULL") => MailParam::Ret(Ret::Full),
            ("RET", Some(v)) if is(v, "HDRS") => MailParam::Ret(Ret::Hdrs),
            ("ENVID", Some(v)) => MailParam::EnvId(
                xtext::decode(v)
                    .filter(|d| d.len() <= MAX_ENVID)
                    .ok_or_else(|| bad(key))?,
            ),
            ("AUTH", Some(v)) => MailParam::Auth(v.to_string()),
            ("SIZE" | "BODY" | "SMTPUTF8" | "RET" | "ENVID" | "AUTH", _) => return Err(bad(key)),
            _ => return Err(unsupported(key)),
        })
    }

    /// Records what the parameter says about the message in `p`. SIZE is
    /// only an announcement, and AUTH is not kept.
    pub fn apply(self, p: &mut MailParams) {
        match self {
            MailParam::Body(b) => p.body = b,
            MailParam::SmtpUtf8 => p.smtputf8 = true,
            MailParam::Ret(r) => p.ret = Some(r),
            MailParam::EnvId(e) => p.envid = Some(e),
            MailParam::Size(_) | MailParam::Auth(_) => {}
        }
    }
}

impl fmt::Display for MailParam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MailParam::Size(n) => write!(f, "SIZE={n}"),
            MailParam::Body(BodyType::SevenBit) => f.write_str("BODY=7BIT"),
            MailParam::Body(BodyType::EightBitMime) => f.write_str("BODY=8BITMIME"),
            MailParam::SmtpUtf8 => f.write_str("SMTPUTF8"),
            MailParam::Ret(Ret::Full) => f.write_str("RET=FULL"),
            MailParam::Ret(Ret::Hdrs) => f.write_str("RET=HDRS"),
            MailParam::EnvId(e) => write!(f, "ENVID={}", xtext::encode(e)),
            MailParam::Auth(a) => write!(f, "AUTH={a}"),
        }
    }
}

impl RcptParam {
    /// Decodes one `KEY[=VALUE]` of RCPT (the key upper-cased); the error
    /// is the reply to send.
    pub fn decode(key: &str, value: Option<&str>) -> Result<RcptParam, SmtpReply> {
        match (key, value) {
            ("NOTIFY", Some(v)) => v.parse().map(RcptParam::Notify).map_err(|_| bad(key)),
            ("ORCPT", Some(v)) => OrigRecipient::decode(v)
                .map(RcptParam::Orcpt)
                .ok_or_else(|| bad(key)),
            ("NOTIFY" | "ORCPT", None) => Err(bad(key)),
            _ => Err(unsupported(key)),
        }
    }

    /// Records the parameter in the recipient.
    pub fn apply(self, r: &mut Recipient) {
        match self {
            RcptParam::Notify(n) => r.notify = Some(n),
            RcptParam::Orcpt(o) => r.orcpt = Some(o),
        }
    }
}

impl fmt::Display for RcptParam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RcptParam::Notify(n) => write!(f, "NOTIFY={n}"),
            RcptParam::Orcpt(o) => write!(f, "ORCPT={}", o.encode()),
        }
    }
}

/// A MAIL FROM command line (without CRLF), as [`fmt::Display`] writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailFrom {
    pub sender: ReversePath,
    pub params: Vec<MailParam>,
}

impl fmt::Display for MailFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sender = self.sender.as_ref().map(|a| a.as_str()).unwrap_or("");
        write!(f, "MAIL FROM:<{sender}>")?;
        self.params.iter().try_for_each(|p| write!(f, " {p}"))
    }
}

/// A RCPT TO command line (without CRLF), as [`fmt::Display`] writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptTo {
    pub address: Address,
    pub params: Vec<RcptParam>,
}

impl fmt::Display for RcptTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RCPT TO:<{}>", self.address)?;
        self.params.iter().try_for_each(|p| write!(f, " {p}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::command::{parse, Command};

    /// Writes a MAIL line with `p`, parses it as the listener does, and
    /// decodes the parameter back.
    fn mail_round_trip(p: MailParam) -> MailParam {
        let line = MailFrom {
            sender: Some("a@example.org".parse().unwrap()),
            params: vec![p],
        }
        .to_string();
        let Ok(Command::Mail(_, params)) = parse(&line) else {
            panic!("{line:?}");
        };
        let [(k, v)] = params.as_slice() else {
            panic!("{line:?}: {params:?}");
        };
        MailParam::decode(k, v.as_deref()).unwrap()
    }

    fn rcpt_round_trip(p: RcptParam) -> RcptParam {
        let line = RcptTo {
            address: "b@example.net".parse().unwrap(),
            params: vec![p],
        }
        .to_string();
        let Ok(Command::Rcpt(_, params)) = parse(&line) else {
            panic!("{line:?}");
        };
        let [(k, v)] = params.as_slice() else {
            panic!("{line:?}: {params:?}");
        };
        RcptParam::decode(k, v.as_deref()).unwrap()
    }

    #[test]
    fn every_mail_parameter_reads_back_as_written() {
        for p in [
            MailParam::Size(0),
            MailParam::Size(u64::MAX),
            MailParam::Body(BodyType::SevenBit),
            MailParam::Body(BodyType::EightBitMime),
            MailParam::SmtpUtf8,
            MailParam::Ret(Ret::Full),
            MailParam::Ret(Ret::Hdrs),
            MailParam::EnvId("QQ314159".into()),
            MailParam::EnvId("a b+c=d;é".into()),
            MailParam::Auth("<>".into()),
            MailParam::Auth("e+2Bf@example.org".into()),
        ] {
            assert_eq!(mail_round_trip(p.clone()), p);
        }
    }

    #[test]
    fn every_rcpt_parameter_reads_back_as_written() {
        for p in [
            RcptParam::Notify(Notify::NEVER),
            RcptParam::Notify(Notify::default()),
            RcptParam::Notify("SUCCESS,FAILURE,DELAY".parse().unwrap()),
            RcptParam::Orcpt(OrigRecipient::new("rfc822", "b@example.net")),
            // Characters xtext must encode: +, =, space, non-ASCII, ; in
            // the address (the first ; ends the type).
            RcptParam::Orcpt(OrigRecipient::new("rfc822", "a+tag=x y;z@example.net")),
            RcptParam::Orcpt(OrigRecipient::new("utf-8", "andré@exämple.org")),
        ] {
            assert_eq!(rcpt_round_trip(p.clone()), p);
        }
    }

    #[test]
    fn the_wire_form_is_what_it_was() {
        let mail = MailFrom {
            sender: None,
            params: vec![
                MailParam::Size(10),
                MailParam::Body(BodyType::EightBitMime),
                MailParam::SmtpUtf8,
                MailParam::Ret(Ret::Hdrs),
                MailParam::EnvId("env+id".into()),
            ],
        };
        assert_eq!(
            mail.to_string(),
            "MAIL FROM:<> SIZE=10 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=env+2Bid"
        );
        let rcpt = RcptTo {
            address: "r@example.org".parse().unwrap(),
            params: vec![
                RcptParam::Notify("SUCCESS,FAILURE".parse().unwrap()),
                RcptParam::Orcpt(OrigRecipient::new("rfc822", "orig+tag@example.org")),
            ],
        };
        assert_eq!(
            rcpt.to_string(),
            "RCPT TO:<r@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;orig+2Btag@example.org"
        );
    }

    #[test]
    fn bad_values_get_the_listeners_replies() {
        let code = |r: Result<MailParam, SmtpReply>| r.unwrap_err().to_string();
        assert_eq!(
            code(MailParam::decode("SIZE", Some("x"))),
            "501 5.5.4 Bad SIZE parameter"
        );
        assert_eq!(
            code(MailParam::decode("SMTPUTF8", Some("x"))),
            "501 5.5.4 Bad SMTPUTF8 parameter"
        );
        assert_eq!(
            code(MailParam::decode("BODY", Some("BINARYMIME"))),
            "501 5.5.4 Bad BODY parameter"
        );
        assert_eq!(
            code(MailParam::decode("ENVID", Some(&"x".repeat(101)))),
            "501 5.5.4 Bad ENVID parameter"
        );
        assert_eq!(
            code(MailParam::decode("NOTIFY", Some("NEVER"))),
            "555 5.5.4 Unsupported parameter NOTIFY"
        );
        let rcpt = |k, v| RcptParam::decode(k, v).unwrap_err().to_string();
        assert_eq!(
            rcpt("NOTIFY", Some("BOGUS")),
            "501 5.5.4 Bad NOTIFY parameter"
        );
        assert_eq!(rcpt("ORCPT", None), "501 5.5.4 Bad ORCPT parameter");
        assert_eq!(
            rcpt("SIZE", Some("1")),
            "555 5.5.4 Unsupported parameter SIZE"
        );
        for bad in ["x", ";a@b", "r fc;a@b", "rfc822;a=b", "rfc822;+0D+0A"] {
            assert_eq!(OrigRecipient::decode(bad), None, "{bad:?}");
        }
        let long = format!("rfc822;{}", "x".repeat(494));
        assert_eq!(rcpt("ORCPT", Some(&long)), "501 5.5.4 Bad ORCPT parameter");
        assert!(OrigRecipient::decode(&long[..long.len() - 1]).is_some());
    }

    #[test]
    fn the_stored_form_of_orcpt_is_kind_semicolon_address() {
        let o = OrigRecipient::new("rfc822", "a+b@example.org");
        let json = serde_json::to_string(&o).unwrap();
        assert_eq!(json, "\"rfc822;a+b@example.org\"");
        assert_eq!(serde_json::from_str::<OrigRecipient>(&json).unwrap(), o);
        // Older or hand-made values without a type read as rfc822.
        let o: OrigRecipient = serde_json::from_str("\"a@example.org\"").unwrap();
        assert_eq!(o, OrigRecipient::new("rfc822", "a@example.org"));
        let o: OrigRecipient = serde_json::from_str("\"utf-8;x;y\"").unwrap();
        assert_eq!(o, OrigRecipient::new("utf-8", "x;y"));
    }
}
