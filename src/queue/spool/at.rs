//! Files of `queue/` opened relative to the open directory,
//! for the start-up load: a name resolves in one step rather than by
//! walking the spool's whole path again for each of a million files
//! (path walks were a tenth of the load's time at 10^6 messages).

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::id::ID_LEN;
use crate::queue::MessageId;

/// `queue/`, open for lookups.
#[derive(Debug)]
pub(super) struct DirAt {
    dir: File,
}

/// `<id>.meta` and a NUL: the longest name looked up.
const NAME_MAX: usize = ID_LEN + 6;

/// A message file's name as a C string, on the stack.
struct Name([u8; NAME_MAX]);

impl Name {
    fn new(id: &MessageId, ext: &str) -> Name {
        let mut b = [0u8; NAME_MAX];
        b[..ID_LEN].copy_from_slice(id.as_str().as_bytes());
        b[ID_LEN] = b'.';
        b[ID_LEN + 1..ID_LEN + 1 + ext.len()].copy_from_slice(ext.as_bytes());
        Name(b)
    }

    fn as_cstr(&self) -> &CStr {
        // The id is hex digits and the extension letters: the first NUL
        // is the one after them.
        CStr::from_bytes_until_nul(&self.0).unwrap_or_default()
    }
}

impl DirAt {
    pub(super) fn open(path: &Path) -> io::Result<DirAt> {
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(path)?;
        Ok(DirAt { dir })
    }

    /// Opens `<id>.<ext>` for reading.
    pub(super) fn open_file(&self, id: &MessageId, ext: &str) -> io::Result<File> {
        let name = Name::new(id, ext);
        // SAFETY: a valid directory descriptor and a NUL-terminated name;
        // the descriptor returned is owned by the `File` alone.
        unsafe {
            let fd = libc::openat(
                self.dir.as_raw_fd(),
                name.as_cstr().as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            );
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(File::from_raw_fd(fd))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn files_open_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let id = MessageId::generate();
        std::fs::write(dir.path().join(format!("{id}.meta")), b"{}").unwrap();
        std::fs::write(dir.path().join(format!("{id}.msg")), b"hello").unwrap();
        let at = DirAt::open(dir.path()).unwrap();
        let mut text = String::new();
        at.open_file(&id, "meta")
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "{}");
        let other = MessageId::generate();
        let e = at.open_file(&other, "msg").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
