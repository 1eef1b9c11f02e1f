//! SmtpReply::parse_line and EnhancedCode's FromStr: codes stay in
//! 200..=599, an enhanced code agrees with the reply's class, the text is
//! one clean line, and what is displayed (or stored as JSON) reads back
//! as the same reply.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailqueue::{EnhancedCode, SmtpReply};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(r) = SmtpReply::parse_line(text) {
        assert!((200..=599).contains(&r.code), "{text:?}");
        assert_eq!(r.code.to_string(), text[..3]);
        if let Some(e) = r.enhanced {
            assert_eq!(u16::from(e.class), r.code / 100, "{text:?}");
        }
        assert_eq!(u16::from(r.status().class), r.code / 100);
        assert!(!r.text.chars().any(char::is_control), "{:?}", r.text);
        assert_eq!(r.text.trim(), r.text, "{text:?}");
        assert!(!r.text.contains("  "), "{:?}", r.text);
        let shown = r.to_string();
        assert_eq!(
            SmtpReply::parse_line(&shown).as_ref(),
            Some(&r),
            "{text:?} shown as {shown:?}"
        );
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<SmtpReply>(&json).unwrap(), r);
    }
    if let Ok(e) = text.parse::<EnhancedCode>() {
        assert!(matches!(e.class, 2 | 4 | 5), "{text:?}");
        assert!(e.subject <= 999 && e.detail <= 999, "{text:?}");
        assert_eq!(e.to_string().parse::<EnhancedCode>(), Ok(e));
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<EnhancedCode>(&json).unwrap(), e);
    }
});
