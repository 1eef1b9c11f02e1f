//! The SMTP protocol pieces: replies, command parsing, xtext, the byte
//! stream both directions talk over (`transport`), the ingest listener
//! with its session threads, and the protocol choices the configuration
//! names (`tls_policy` for the client, `bare_newline` for the listener).

pub mod bare_newline;
pub mod command;
pub mod deadline;
pub mod params;
pub mod reply;
pub mod server;
pub mod threads;
pub mod tls_policy;
pub mod transport;
pub mod xtext;
