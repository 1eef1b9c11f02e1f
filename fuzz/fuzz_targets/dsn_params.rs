//! The RFC 3461 parameters: xtext (ENVID, ORCPT) and NOTIFY. xtext
//! decodes what it encodes, encodes only to bytes a command line can
//! carry, accepts only such bytes, and never decodes to a control (the
//! values go into header fields of notices); a NOTIFY value that parses is
//! displayed in a form that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailqueue::smtp::command::{self, Command};
use mailqueue::smtp::params::{OrigRecipient, RcptParam, RcptTo};
use mailqueue::smtp::xtext;
use mailqueue::Notify;

fn xchar(b: u8) -> bool {
    (b'!'..=b'~').contains(&b) && b != b'='
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    let encoded = xtext::encode(text);
    assert!(encoded.bytes().all(xchar), "{encoded:?}");
    // Decoded values go into header fields of notices: no controls.
    let printable = !text.chars().any(char::is_control);
    assert_eq!(
        xtext::decode(&encoded).as_deref(),
        printable.then_some(text),
        "{text:?}"
    );
    // What the client sends as ORCPT the listener reads back unchanged.
    let orcpt = OrigRecipient::new("rfc822", text);
    let line = RcptTo {
        address: "a@example.org".parse().unwrap(),
        params: vec![RcptParam::Orcpt(orcpt.clone())],
    }
    .to_string();
    match command::parse(&line) {
        Ok(Command::Rcpt(_, params)) => {
            assert_eq!(
                params,
                vec![("ORCPT".into(), Some(format!("rfc822;{encoded}")))]
            )
        }
        other => panic!("{line:?}: {other:?}"),
    }
    let decoded = RcptParam::decode("ORCPT", Some(&format!("rfc822;{encoded}"))).ok();
    let fits = text.len() + 7 <= 500;
    assert_eq!(decoded, (printable && fits).then_some(RcptParam::Orcpt(orcpt)));

    if let Some(decoded) = xtext::decode(text) {
        assert!(text.bytes().all(xchar), "{text:?}");
        assert!(!decoded.chars().any(char::is_control), "{text:?}");
        assert!(decoded.len() <= text.len());
        assert_eq!(xtext::decode(&xtext::encode(&decoded)), Some(decoded));
    }

    if let Ok(n) = text.parse::<Notify>() {
        let shown = n.to_string();
        assert_eq!(shown.parse::<Notify>(), Ok(n), "{text:?}");
        if n.is_never() {
            assert!(text.eq_ignore_ascii_case("NEVER"), "{text:?}");
        } else {
            let words = text.split(',').count();
            assert_eq!(
                words,
                usize::from(n.success) + usize::from(n.failure) + usize::from(n.delay),
                "{text:?}"
            );
        }
        let json = serde_json::to_string(&n).unwrap();
        assert_eq!(serde_json::from_str::<Notify>(&json).unwrap(), n);
    }
});
