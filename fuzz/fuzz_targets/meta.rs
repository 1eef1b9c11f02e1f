//! MessageMeta::from_json, the loader of every metadata file: a file it
//! accepts has the known version and recipients, and writes back to JSON
//! that loads as the same metadata, byte for byte stable; and start-up's
//! partial view (Queued) of such a file agrees with it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailqueue::queue::meta::{MessageMeta, Queued, RcptStatus, META_VERSION};

fuzz_target!(|data: &[u8]| {
    let Ok(meta) = MessageMeta::from_json(data) else {
        return;
    };
    assert_eq!(meta.version, META_VERSION);
    assert!(!meta.recipients.is_empty());
    let json = meta.to_json();
    let again = MessageMeta::from_json(&json)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&json)));
    assert_eq!(again, meta, "{}", String::from_utf8_lossy(&json));
    assert_eq!(again.to_json(), json);
    let q = Queued::from_json(data).expect("start-up refuses what an attempt accepts");
    assert_eq!(
        (q.id, q.next_attempt, q.size, q.hold),
        (meta.id, meta.next_attempt, meta.size, meta.hold)
    );
    assert_eq!(
        q.pending,
        meta.recipients.iter().any(|r| r.status == RcptStatus::Pending)
    );
    for r in &meta.recipients {
        if let Some(e) = &r.last_error {
            let text = serde_json::to_string(e).unwrap();
            assert_eq!(
                serde_json::from_str::<mailqueue::SmtpReply>(&text).unwrap(),
                *e
            );
        }
    }
});
