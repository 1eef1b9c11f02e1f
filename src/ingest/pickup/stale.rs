//! Leftovers in `incoming/`: temporary files of killed submitters and
//! anything else not named `*.mail`.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{shown, STALE_TMP_AGE};

/// Removes a temporary file, or any file not named `*.mail` (a symbolic
/// link is removed, never followed), that has not changed for
/// [`STALE_TMP_AGE`]; true when it did. Directories, FIFOs and the like
/// are left alone (they hold no data).
pub(super) fn remove_if_stale(path: &Path, known: std::time::Duration) -> bool {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return false;
    };
    let kind = meta.file_type();
    if !(kind.is_file() || kind.is_symlink()) {
        return false;
    }
    // Unchanged for the hour by its mtime, or known to this process that
    // long: a time stamp in the future must not keep a file for ever.
    let age = meta
        .modified()
        .ok()
        .and_then(|m| m.elapsed().ok())
        .unwrap_or_default()
        .max(known);
    if age < STALE_TMP_AGE {
        return false;
    }
    match fs::remove_file(path) {
        Ok(()) => {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let what = if name.starts_with('.') && name.ends_with(".tmp") {
                "an unfinished submission"
            } else {
                "not a submission"
            };
            log::info!(
                "{}: removed, {what} of userid {} ({} bytes, unchanged for {}s)",
                shown(path),
                meta.uid(),
                meta.len(),
                age.as_secs()
            );
            true
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => {
            log::warn!("{}: cannot remove a stale temporary file: {e}", shown(path));
            false
        }
    }
}
