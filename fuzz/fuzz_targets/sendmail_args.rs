//! sendmail::parse_args, with NUL-separated arguments: never panics,
//! every recipient and the sender are arguments (or their tails) as
//! given.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The parser lives in the binary's tree and depends on std alone.
#[path = "../../src/cli/sendmail/args.rs"]
#[allow(dead_code)]
mod args;
use args::parse_args;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let args: Vec<&str> = text.split('\0').collect();
    let Ok(o) = parse_args(&args) else {
        return;
    };
    assert!(o.recipients.len() <= args.len());
    for r in &o.recipients {
        assert!(args.contains(&r.as_str()), "{r:?} not among {args:?}");
    }
    if let Some(s) = &o.sender {
        assert!(
            args.iter().any(|a| a == s || a.ends_with(s.as_str())),
            "{s:?} not among {args:?}"
        );
    }
});
