//! Recycled message files: a finished message's file is renamed into
//! `free/` instead of unlinked, and a new message is written over one of
//! them instead of into a new file.
//!
//! Creating a file and freeing one are what a relayed message costs most
//! on the file systems we measured (inode allocation scans recently freed
//! inodes; an unlink on a `discard` mount waits for the discard). A file
//! written over keeps its inode and, when the new message is no larger,
//! its blocks.
//!
//! What is in `free/` is never a message: a new message is written and
//! fdatasynced there, and only then renamed into `queue/` (never over an
//! existing name), so a crash mid-write leaves garbage in `free/`, not a
//! message made of a new start and an old end.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// At most this many files wait in `free/`: enough for every message in
/// flight between a listener and a worker at full rate, few enough that
/// the pool is a small part of the disk.
const POOL_FILES: usize = 256;

/// Larger files are freed rather than kept: a pool of them would hold
/// disk space a busy spool may need (at most 256 × 256 KiB = 64 MiB).
const POOL_FILE_MAX: u64 = 256 * 1024;

/// The files in `free/` this process may write over.
#[derive(Debug)]
pub(super) struct FilePool {
    dir: PathBuf,
    files: Mutex<Vec<PathBuf>>,
    /// Names new entries of this process: `<pid>-<n>`.
    next: AtomicU64,
    /// This process's id, asked once (each ask is a system call).
    pid: u32,
}

/// A file to write a new message into.
pub(super) struct Blank {
    pub(super) file: File,
    pub(super) path: PathBuf,
    /// A recycled file, which may be longer than what is written into it.
    pub(super) recycled: bool,
}

impl FilePool {
    pub(super) fn new(dir: PathBuf) -> FilePool {
        FilePool {
            dir,
            files: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
            pid: std::process::id(),
        }
    }

    fn name(&self) -> PathBuf {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{}-{n}", self.pid))
    }

    fn files(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A pooled file opened for writing, or a new file in `free/`.
    /// `created` is told of each new file (to give it to the spool's
    /// owner).
    pub(super) fn take(
        &self,
        created: impl Fn(&File, &Path) -> io::Result<()>,
    ) -> io::Result<Blank> {
        loop {
            let Some(path) = self.files().pop() else {
                break;
            };
            match OpenOptions::new().write(true).open(&path) {
                Ok(file) => {
                    return Ok(Blank {
                        file,
                        path,
                        recycled: true,
                    })
                }
                // Removed by hand, say: try the next one.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        loop {
            let path = self.name();
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(file) => {
                    if let Err(e) = created(&file, &path) {
                        let _ = fs::remove_file(&path);
                        return Err(e);
                    }
                    return Ok(Blank {
                        file,
                        path,
                        recycled: false,
                    });
                }
                // A name a process with the same pid left behind.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes back the file of a message that was never committed; it is
    /// still in `free/`.
    pub(super) fn give_back(&self, path: PathBuf) {
        let mut files = self.files();
        if files.len() < POOL_FILES {
            files.push(path);
        } else {
            drop(files);
            let _ = fs::remove_file(&path);
        }
    }

    /// Moves a finished message's file from `queue/` into the pool, or
    /// unlinks it when the pool is full or the file large. `NotFound`
    /// when there is no such file.
    pub(super) fn recycle(&self, path: &Path) -> io::Result<()> {
        let len = fs::symlink_metadata(path)?.len();
        if len > POOL_FILE_MAX || self.files().len() >= POOL_FILES {
            return fs::remove_file(path);
        }
        loop {
            let to = self.name();
            match crate::sys::rename_noreplace(path, &to) {
                Ok(()) => {
                    self.files().push(to);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes into the pool what `free/` holds, once this process owns the
    /// spool. A file with more than one name (a rename a crash left half
    /// done, the link count then repaired) also names a message: it is
    /// unlinked here, never written over.
    pub(super) fn adopt_existing(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut files = self.files();
        for entry in entries.flatten() {
            let path = entry.path();
            let keep = match fs::symlink_metadata(&path) {
                Ok(m) => {
                    m.is_file()
                        && m.nlink() == 1
                        && m.len() <= POOL_FILE_MAX
                        && files.len() < POOL_FILES
                }
                Err(_) => continue,
            };
            if keep {
                files.push(path);
            } else {
                let _ = fs::remove_file(&path);
            }
        }
    }

    /// Files waiting to be written over.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.files().len()
    }
}

/// Whether `path` still names the file `file` has open: a message file
/// read or locked through an old open may have been recycled since (it
/// never comes back under its old name).
pub(super) fn still_named(file: &File, path: &Path) -> io::Result<bool> {
    let open = file.metadata()?;
    match fs::symlink_metadata(path) {
        Ok(named) => Ok(named.ino() == open.ino() && named.dev() == open.dev()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::envelope::Envelope;
    use crate::queue::spool::Spool;
    use crate::queue::MessageId;

    fn envelope() -> Envelope {
        Envelope::new(
            Some("a@example.org".parse().unwrap()),
            vec!["b@example.net".parse().unwrap()],
        )
    }

    fn enqueue(spool: &Spool, body: &[u8]) -> MessageId {
        let mut w = spool.create_message().unwrap();
        w.write_all(body).unwrap();
        spool.store(w, &envelope(), false).unwrap().id
    }

    fn ino(path: &Path) -> u64 {
        fs::metadata(path).unwrap().ino()
    }

    fn free_files(spool: &Spool) -> usize {
        fs::read_dir(crate::queue::spool::layout::free(spool.root()))
            .unwrap()
            .count()
    }

    #[test]
    fn a_finished_message_s_file_is_written_over_by_the_next_and_cut_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let long = vec![b'x'; 20_000];
        let a = enqueue(&spool, &long);
        let a_ino = ino(&spool.message_path(&a));
        spool.finish(&a).unwrap();
        assert!(!spool.message_path(&a).exists());
        assert_eq!((spool.pool.len(), free_files(&spool)), (1, 1));

        let body = b"Subject: short\r\n\r\nhi\r\n";
        let b = enqueue(&spool, body);
        assert_eq!(ino(&spool.message_path(&b)), a_ino, "the same inode");
        assert_eq!((spool.pool.len(), free_files(&spool)), (0, 0));
        let meta = spool.read_meta(&b).unwrap();
        assert_eq!((meta.id, meta.size), (b, body.len() as u64));
        assert_eq!(spool.read_message(&meta, 1 << 20).unwrap().unwrap(), body);
        let report = spool.load().unwrap();
        assert_eq!(report.messages.len(), 1);
        assert_eq!((report.removed, report.quarantined), (0, 0));
    }

    #[test]
    fn a_message_never_committed_leaves_nothing_in_the_queue_and_its_file_in_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut w = spool.create_message().unwrap();
        w.write_all(b"Subject: cut short\r\n").unwrap();
        drop(w);
        assert_eq!(fs::read_dir(spool.queue_dir()).unwrap().count(), 0);
        assert_eq!(spool.pool.len(), 1);
        let report = spool.load().unwrap();
        assert_eq!((report.messages.len(), report.removed), (0, 0));
    }

    #[test]
    fn a_complete_file_left_in_free_by_a_crash_is_never_a_message() {
        // A crash after the fdatasync, before the rename into `queue/`:
        // the file is whole, trailer and all, and still not acknowledged.
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let a = enqueue(&spool, b"Subject: a\r\n\r\nold\r\n");
        let free = crate::queue::spool::layout::free(spool.root()).join("1-0");
        fs::rename(spool.message_path(&a), &free).unwrap();
        let restarted = Spool::open(dir.path()).unwrap();
        let _lock = restarted.lock_exclusive().unwrap();
        assert_eq!(restarted.load().unwrap().messages.len(), 0);
        assert_eq!(restarted.pool.len(), 1);
        // Written over: what it held is gone.
        let b = enqueue(&restarted, b"Subject: b\r\n\r\nnew\r\n");
        let meta = restarted.read_meta(&b).unwrap();
        let bytes = restarted.read_message(&meta, 1000).unwrap().unwrap();
        assert_eq!(bytes, b"Subject: b\r\n\r\nnew\r\n");
        assert_eq!(restarted.load().unwrap().messages.len(), 1);
    }

    #[test]
    fn a_file_in_free_that_also_names_a_message_is_unlinked_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let body = b"Subject: keep\r\n\r\nme\r\n";
        let a = enqueue(&spool, body);
        let free = crate::queue::spool::layout::free(spool.root()).join("1-0");
        fs::hard_link(spool.message_path(&a), &free).unwrap();
        let restarted = Spool::open(dir.path()).unwrap();
        let _lock = restarted.lock_exclusive().unwrap();
        assert_eq!(restarted.pool.len(), 0);
        assert!(!free.exists());
        let _b = enqueue(&restarted, b"Subject: other\r\n\r\nmessage\r\n");
        let meta = restarted.read_meta(&a).unwrap();
        assert_eq!(restarted.read_message(&meta, 1000).unwrap().unwrap(), body);
    }

    #[test]
    fn an_open_message_file_recycled_is_no_longer_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let a = enqueue(&spool, b"Subject: a\r\n\r\na\r\n");
        let path = spool.message_path(&a);
        let opened = File::open(&path).unwrap();
        assert!(still_named(&opened, &path).unwrap());
        spool.finish(&a).unwrap();
        let _b = enqueue(&spool, b"Subject: b\r\n\r\nb\r\n");
        assert!(!still_named(&opened, &path).unwrap());
        assert!(spool.lock_message(&a).unwrap().is_none());
        assert!(spool.read_meta(&a).is_err());
    }

    #[test]
    fn an_operator_s_removal_frees_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let a = enqueue(&spool, b"Subject: a\r\n\r\na\r\n");
        spool.remove(&a).unwrap();
        assert_eq!((spool.pool.len(), free_files(&spool)), (0, 0));
    }

    #[test]
    fn large_files_are_freed_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let a = enqueue(&spool, &vec![b'x'; POOL_FILE_MAX as usize + 1]);
        spool.finish(&a).unwrap();
        assert_eq!((spool.pool.len(), free_files(&spool)), (0, 0));
    }
}
