//! The SMTP protocol pieces: replies, command parsing, xtext, and the
//! ingest listener.

pub mod command;
pub mod reply;
pub mod server;
pub mod xtext;
