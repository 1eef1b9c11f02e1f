//! What `mailqueue check` tries beyond the configuration itself: that
//! `serve`, run by the same user, could write its spool and listen on its
//! addresses.

use std::io;
use std::path::Path;

use mailqueue::ingest::listener as server;

use super::control::{self, ControlError, Request};

/// Whether this user can write in the spool, or create it when it does
/// not exist yet (as `serve` would, in its parent directory): a file is
/// created there and removed. `Ok` says where it was tried.
pub fn spool(spool: &Path) -> Result<String, String> {
    let uid = mailqueue::sys::effective_uid();
    let (dir, what) = match std::fs::metadata(spool) {
        Ok(m) if m.is_dir() => (spool.to_path_buf(), "spool"),
        Ok(_) => return Err(format!("spool {}: not a directory", spool.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let parent = spool
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !parent.is_dir() {
                return Err(format!(
                    "spool {}: neither it nor its parent directory exists (serve creates only the spool itself)",
                    spool.display()
                ));
            }
            (
                parent.to_path_buf(),
                "parent directory of the spool, where serve would create it,",
            )
        }
        Err(e) => return Err(format!("spool {}: {e}", spool.display())),
    };
    let probe = dir.join(format!(".mailqueue-check.{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(format!(
                "spool {}: writable by user id {uid}",
                spool.display()
            ))
        }
        Err(e) => Err(format!(
            "spool {}: the {what} {} is not writable by user id {uid}: {e}",
            spool.display(),
            dir.display()
        )),
    }
}

/// Whether each listening address can be bound: bound and released at
/// once. An address in use by the daemon already running on this spool
/// is no error. One result per address.
pub fn listen(addrs: &[String], spool: &Path) -> Vec<Result<String, String>> {
    addrs
        .iter()
        .map(|addr| match server::bind(std::slice::from_ref(addr)) {
            Ok(_) => Ok(format!("listen {addr}: can be bound")),
            Err(e) if e.source.kind() == io::ErrorKind::AddrInUse && daemon_running(spool) => {
                Ok(format!("listen {addr}: in use by the running daemon"))
            }
            Err(e) => Err(e.to_string()),
        })
        .collect()
}

/// Whether a daemon answers on the spool's control socket (a quota check
/// asks nothing of it and is allowed to the spool's group too).
fn daemon_running(spool: &Path) -> bool {
    !matches!(
        control::request(spool, &Request::Quota { size: 0 }),
        Err(ControlError::NoDaemon)
    )
}
