//! FxHash, the hash of the maps keyed by queue id: the time wheel's key
//! index and the spool's census.

use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};

/// FxHash, as rustc uses it: a multiply per word. The keys are queue ids
/// this process made, not chosen by an attacker, so SipHash's resistance to
/// hash flooding would buy nothing for its cost.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = self
            .hash
            .wrapping_add(word)
            .wrapping_mul(0xf135_7aea_2e62_a9c5);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut word = [0u8; 8];
            word.copy_from_slice(w);
            self.add(u64::from_le_bytes(word));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(n.into());
    }

    #[inline]
    fn write_u16(&mut self, n: u16) {
        self.add(n.into());
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.add(n.into());
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    /// The product's high bits are its best mixed; the table takes its
    /// bucket from the low bits, so rotate them down.
    #[inline]
    fn finish(&self) -> u64 {
        self.hash.rotate_left(26)
    }
}

/// Builds [`FxHasher`]s, for `HashMap`s and `HashSet`s.
pub(crate) type FxBuild = BuildHasherDefault<FxHasher>;

/// A key's FxHash.
pub(crate) fn hash<K: Hash>(key: &K) -> u64 {
    BuildHasherDefault::<FxHasher>::default().hash_one(key)
}
