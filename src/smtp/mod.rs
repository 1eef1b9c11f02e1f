//! The SMTP protocol pieces: replies, command parsing, xtext, and the
//! ingest listener with its session threads.

pub mod command;
pub mod reply;
pub mod server;
pub mod threads;
pub mod xtext;
