//! Mail coming in: the sendmail command's files in `incoming/` (picked
//! up by the daemon) and, for both ways in, the clean-up step that adds
//! what the queue adds to every message. The SMTP listener is in
//! [`crate::smtp::server`].

pub mod cleanup;
pub mod incoming;
pub mod pickup;
