//! The start-up load's listing of `queue/`: which files each message id
//! has, packed in 16 bytes per message and sorted, handed out oldest
//! first a chunk at a time; and the names that are no message's.
//!
//! Packed because the listing lives beside the census and the time wheel
//! while they fill: at 10^6 messages a `HashMap<String, _>` of the names
//! took about 60 MB more than these 16 MB, and hashing its strings was a
//! good part of the scan. Handed out from the end of a vector sorted
//! newest first, so the memory of what was handed out is given back as
//! the load goes.

use std::fs;
use std::path::Path;

use super::io_error;
use crate::queue::{MessageId, QueueError};

/// The entry has a `<id>.msg`.
pub(super) const MSG: u8 = 1;
/// The entry has a `<id>.meta`.
pub(super) const META: u8 = 2;
const KIND_BITS: u32 = 2;

/// Give memory back once this many entries' worth is unused.
const SHRINK_SLACK: usize = 64 * 1024;

/// The files of `queue/`, by message.
#[derive(Debug, Default)]
pub(super) struct Listing {
    /// `id << KIND_BITS | kinds`, newest first.
    entries: Vec<u128>,
    /// Names that are neither `<id>.msg` nor `<id>.meta`.
    pub(super) strays: Vec<String>,
    /// Stems of `.msg` and `.meta` files that are not queue ids.
    pub(super) bad_stems: Vec<String>,
}

impl Listing {
    /// Lists `dir` (the spool's `queue/`).
    pub(super) fn read(dir: &Path) -> Result<Listing, QueueError> {
        let mut listing = Listing::default();
        for entry in fs::read_dir(dir).map_err(io_error(dir))? {
            let name = entry.map_err(io_error(dir))?.file_name();
            listing.add(name.as_encoded_bytes());
        }
        listing.sort();
        Ok(listing)
    }

    fn add(&mut self, name: &[u8]) {
        let (stem, kind) = if let Some(stem) = name.strip_suffix(b".msg") {
            (stem, MSG)
        } else if let Some(stem) = name.strip_suffix(b".meta") {
            (stem, META)
        } else {
            self.strays.push(String::from_utf8_lossy(name).into_owned());
            return;
        };
        match MessageId::from_bytes(stem) {
            Some(id) => self
                .entries
                .push(id.to_bits() << KIND_BITS | u128::from(kind)),
            None => self
                .bad_stems
                .push(String::from_utf8_lossy(stem).into_owned()),
        }
    }

    /// Sorts newest first and merges the two files of one id.
    fn sort(&mut self) {
        self.entries.sort_unstable_by(|a, b| b.cmp(a));
        // `dedup_by` drops `later` when it returns true; `kept` precedes it.
        self.entries.dedup_by(|later, kept| {
            let same = *later >> KIND_BITS == *kept >> KIND_BITS;
            if same {
                *kept |= *later;
            }
            same
        });
        self.entries.shrink_to_fit();
        self.bad_stems.sort_unstable();
        self.bad_stems.dedup();
    }

    /// Message ids still to hand out.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The next (oldest) `n` ids at most, each with its kinds of files.
    pub(super) fn take(&mut self, n: usize) -> Vec<(MessageId, u8)> {
        let at = self.entries.len().saturating_sub(n);
        let chunk = self
            .entries
            .drain(at..)
            .rev()
            .map(|e| {
                let kinds = (e & ((1 << KIND_BITS) - 1)) as u8;
                (MessageId::from_bits(e >> KIND_BITS), kinds)
            })
            .collect();
        if self.entries.capacity() - self.entries.len() >= SHRINK_SLACK {
            self.entries.shrink_to_fit();
        }
        chunk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_pair_up_by_id_and_come_out_oldest_first() {
        let mut ids: Vec<MessageId> = (0..6).map(|_| MessageId::generate()).collect();
        // Two made in one microsecond order by their random part.
        ids.sort();
        let lone = ids.pop().unwrap();
        let mut l = Listing::default();
        // As a directory lists them: any order, a message's two files apart.
        for (i, id) in ids.iter().enumerate().rev() {
            l.add(format!("{id}.msg").as_bytes());
            if i % 2 == 0 {
                l.add(format!("{id}.meta").as_bytes());
            }
        }
        l.add(format!("{}.meta", ids[1]).as_bytes());
        l.add(b"core");
        l.add(b"not-an-id.msg");
        l.add(b"not-an-id.meta");
        l.add(format!("{lone}.meta").as_bytes());
        l.sort();
        assert_eq!(l.len(), 6);
        let first = l.take(2);
        assert_eq!(first, vec![(ids[0], MSG | META), (ids[1], MSG | META)]);
        let rest = l.take(10);
        assert_eq!(
            rest,
            vec![
                (ids[2], MSG | META),
                (ids[3], MSG),
                (ids[4], MSG | META),
                (lone, META)
            ]
        );
        assert_eq!(l.len(), 0);
        assert_eq!(l.strays, vec!["core".to_string()]);
        assert_eq!(l.bad_stems, vec!["not-an-id".to_string()]);
    }
}
