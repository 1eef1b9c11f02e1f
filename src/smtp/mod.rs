//! The SMTP protocol pieces: replies, command parsing, xtext, the byte
//! stream both directions talk over (`transport`), and the ingest
//! listener with its session threads.

pub mod command;
pub mod deadline;
pub mod params;
pub mod reply;
pub mod server;
pub mod threads;
pub mod transport;
pub mod xtext;
