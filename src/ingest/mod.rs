//! Mail coming in: over SMTP (the listener) and from local users (the
//! sendmail command's files in `incoming/`, picked up by the daemon);
//! for both ways in, the clean-up step that adds what the queue adds to
//! every message.

pub mod cleanup;
pub mod hygiene;
pub mod incoming;
pub mod listener;
pub mod pickup;
