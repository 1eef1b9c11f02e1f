//! The SMTP protocol pieces both directions share: replies, command
//! parsing and ESMTP parameters, xtext, deadlines, the byte stream they
//! talk over (`transport`), and the protocol choices the configuration
//! names (`tls_policy` for the client, `bare_newline` for the listener).
//! The listener is in [`crate::ingest::listener`], the client in
//! [`crate::delivery::smtp_client`].

pub mod bare_newline;
pub mod command;
pub mod deadline;
pub mod params;
pub mod reply;
pub mod tls_policy;
pub mod transport;
pub mod xtext;
