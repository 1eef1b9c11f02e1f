//! Address::parse: an accepted mailbox is kept exactly as given, splits
//! into local part and domain at its last `@`, re-parses to itself (also
//! through serde), carries no control characters, and can be given in
//! MAIL FROM and RCPT TO.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailqueue::smtp::command::{self, Command};
use mailqueue::Address;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(a) = Address::parse(text) else {
        return;
    };
    assert_eq!(a.as_str(), text);
    assert_eq!(a.to_string(), text);
    assert_eq!(format!("{}@{}", a.local_part(), a.domain()), text);
    assert!(!a.local_part().is_empty() && a.local_part().len() <= 64);
    assert!(!a.domain().is_empty() && a.domain().len() <= 255);
    assert!(!a.domain().contains('@'), "{text:?}");
    assert!(text.len() <= 254);
    // Addresses go into SMTP command lines, headers and log lines.
    assert!(!text.chars().any(char::is_control), "{text:?}");
    assert_eq!(a.needs_smtputf8(), !text.is_ascii());

    assert_eq!(Address::parse(a.as_str()).as_ref(), Ok(&a));
    assert_eq!(text.parse::<Address>().as_ref(), Ok(&a));
    let json = serde_json::to_string(&a).unwrap();
    assert_eq!(serde_json::from_str::<Address>(&json).unwrap(), a);

    // Whatever the queue accepts as a mailbox, its listener accepts in a path.
    assert_eq!(
        command::parse(&format!("RCPT TO:<{text}>")),
        Ok(Command::Rcpt(a.clone(), vec![])),
        "{text:?}"
    );
    assert_eq!(
        command::parse(&format!("MAIL FROM:<{text}> SIZE=1")),
        Ok(Command::Mail(
            Some(a.clone()),
            vec![("SIZE".into(), Some("1".into()))]
        )),
        "{text:?}"
    );
});
