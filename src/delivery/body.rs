//! The message text a target sends: read from the spool file (or
//! memory) as often as needed, with its checksum checked at the end.

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

/// The message content, which can be read as many times as needed
/// (one read per transaction, e.g. one per destination domain).
#[derive(Debug, Clone)]
pub struct Body {
    source: BodySource,
    len: u64,
    checksum: Option<u32>,
}

#[derive(Debug, Clone)]
enum BodySource {
    File(PathBuf),
    Open(Arc<File>),
    Memory(Arc<[u8]>),
}

impl Body {
    /// A body read from the first `len` bytes of a spool file. With a
    /// checksum, a reader that reaches the end of a body whose CRC-32
    /// differs fails with a [`DamagedBody`] error instead of ending.
    pub fn from_file(path: PathBuf, len: u64, checksum: Option<u32>) -> Self {
        Body {
            source: BodySource::File(path),
            len,
            checksum,
        }
    }

    /// A body read from the first `len` bytes of an open spool file, with
    /// positional reads: readers share the file but not a position.
    pub fn from_open_file(file: Arc<File>, len: u64, checksum: Option<u32>) -> Self {
        Body {
            source: BodySource::Open(file),
            len,
            checksum,
        }
    }

    /// A body held in memory.
    pub fn from_bytes(bytes: impl Into<Arc<[u8]>>) -> Self {
        let bytes = bytes.into();
        Body {
            len: bytes.len() as u64,
            source: BodySource::Memory(bytes),
            checksum: None,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A fresh reader positioned at the start.
    pub fn open(&self) -> io::Result<Box<dyn Read + Send + '_>> {
        Ok(match &self.source {
            BodySource::File(p) => {
                let file = io::BufReader::with_capacity(64 * 1024, File::open(p)?.take(self.len));
                self.checked(file)
            }
            // Its readers ask for 64 KiB at a time: no buffer needed.
            BodySource::Open(f) => self.checked(Positional {
                file: f,
                at: 0,
                end: self.len,
            }),
            BodySource::Memory(b) => Box::new(&b[..]),
        })
    }

    fn checked<'a>(&self, reader: impl Read + Send + 'a) -> Box<dyn Read + Send + 'a> {
        match self.checksum {
            Some(expected) => Box::new(Checked {
                inner: reader,
                hasher: crc32fast::Hasher::new(),
                expected,
            }),
            None => Box::new(reader),
        }
    }

    /// Reads the whole body into memory.
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        let mut v = Vec::with_capacity(self.len as usize);
        self.open()?.read_to_end(&mut v)?;
        Ok(v)
    }
}

/// The error a body reader fails with when the message on disk is not the
/// one acknowledged (its checksum differs): the sender must learn that it
/// was not delivered, and the recipient must not get the damaged text.
#[derive(Debug, thiserror::Error)]
#[error("the queued message is damaged: its checksum is {found:08x}, {expected:08x} was recorded")]
pub struct DamagedBody {
    pub expected: u32,
    pub found: u32,
}

impl DamagedBody {
    /// The damage behind an I/O error, if that is what it is.
    pub fn from_io(e: &io::Error) -> Option<&DamagedBody> {
        e.get_ref().and_then(|inner| inner.downcast_ref())
    }
}

/// Reads `at..end` of a shared file.
struct Positional<'a> {
    file: &'a File,
    at: u64,
    end: u64,
}

impl Read for Positional<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let want = buf
            .len()
            .min((self.end - self.at).min(usize::MAX as u64) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.at)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the message file is shorter than the message",
            ));
        }
        self.at += n as u64;
        Ok(n)
    }
}

/// Checks the CRC-32 of what passes through when the end is reached.
struct Checked<R> {
    inner: R,
    hasher: crc32fast::Hasher,
    expected: u32,
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let found = self.hasher.clone().finalize();
            if found != self.expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    DamagedBody {
                        expected: self.expected,
                        found,
                    },
                ));
            }
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
