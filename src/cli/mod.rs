//! The binary's side: the command line, the operator's commands, the
//! sendmail command, the control socket and the daemon that wires the
//! library's parts together. None of it is part of the library, so an
//! embedder builds none of it (nor clap, env_logger or signal-hook).

pub mod args;
pub mod check;
pub mod commands;
pub mod control;
pub mod daemon;
pub mod dkim;
pub mod dns_check;
pub mod exit;
pub mod health;
pub mod listing;
pub mod metrics;
pub mod routes;
pub mod sendmail;
pub mod shape;
pub mod sts;
