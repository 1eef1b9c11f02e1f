//! The exit codes of every command, in one place: sysexits(3), which
//! sendmail's callers and monitoring scripts read, and 1 for an operator
//! command that ran but failed.

/// Done.
pub const OK: u8 = 0;
/// An operator command ran and failed (an unknown id, say).
pub const FAILED: u8 = 1;
/// Bad command line.
pub const USAGE: u8 = 64;
/// Bad input data (a malformed address or header).
pub const DATAERR: u8 = 65;
/// The sending user is unknown.
pub const NOUSER: u8 = 67;
/// The spool or the daemon cannot be reached.
pub const UNAVAILABLE: u8 = 69;
/// An internal error.
pub const SOFTWARE: u8 = 70;
/// An output file (the incoming file) cannot be created.
pub const CANTCREAT: u8 = 73;
/// An I/O error.
pub const IOERR: u8 = 74;
/// Try again later (queue full, disk full).
pub const TEMPFAIL: u8 = 75;
/// The configuration is unusable.
pub const CONFIG: u8 = 78;
