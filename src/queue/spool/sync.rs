//! Making directory entries durable: a directory fsync, alone or shared
//! by concurrent callers (group commit).

use std::fs::File;
use std::path::Path;
use std::sync::{Condvar, Mutex};

use super::io_error;
use crate::queue::QueueError;

/// Group commit of a directory's fsync: callers that arrive while one
/// fsync runs share the next one, so N concurrent enqueues cost about two
/// directory fsyncs instead of N. A caller returns only after an fsync
/// that began after its own rename has completed.
#[derive(Debug, Default)]
pub(super) struct GroupSync {
    state: Mutex<SyncState>,
    done_cond: Condvar,
    /// The directory, opened once for all its fsyncs.
    dir: std::sync::OnceLock<File>,
}

#[derive(Debug, Default)]
struct SyncState {
    /// Tickets handed out; a ticket is taken after the caller's rename.
    requested: u64,
    /// Every ticket up to this one is durable.
    done: u64,
    running: bool,
}

impl GroupSync {
    pub(super) fn sync(&self, dir: &Path) -> Result<(), QueueError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.requested += 1;
        let ticket = st.requested;
        loop {
            if st.done >= ticket {
                return Ok(());
            }
            if st.running {
                st = self.done_cond.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.running = true;
            let covers = st.requested;
            drop(st);
            let result = self.sync_now(dir);
            st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.running = false;
            if result.is_ok() {
                st.done = st.done.max(covers);
            }
            self.done_cond.notify_all();
            result?;
        }
    }

    fn sync_now(&self, dir: &Path) -> Result<(), QueueError> {
        let file = match self.dir.get() {
            Some(f) => f,
            None => {
                let f = File::open(dir).map_err(io_error(dir))?;
                self.dir.get_or_init(|| f)
            }
        };
        file.sync_all().map_err(io_error(dir))
    }
}

/// Makes a directory entry change durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), QueueError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}
