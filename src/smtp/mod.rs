//! The SMTP protocol pieces shared by the listener and the client.

pub mod reply;
