//! The policies in force, kept on disk in `<spool>/mta-sts/` (one JSON
//! file per domain, with the policy as fetched, its id and the time of
//! the fetch), so that a domain's protection survives a restart: an
//! attacker who blocks the policy host after a restart must not get the
//! mail in clear (RFC 8461 §5.1). A copy is kept in memory, so that a
//! delivery reads no file.
//!
//! Files are written as the spool writes metadata: a temporary file,
//! fsynced, renamed over the old one, the directory fsynced.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::policy::Policy;

/// Version of the file format.
const FORMAT: u32 = 1;
/// Most domains kept in memory; past it the memory starts over (the
/// files stay).
const MEMORY_LIMIT: usize = 10_000;

/// A policy with what it was fetched under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedPolicy {
    /// The id of the TXT record the policy was fetched for.
    pub id: String,
    /// When it was fetched, in Unix seconds.
    pub fetched: u64,
    /// The policy.
    pub policy: Policy,
    /// The policy as served, kept so that the file holds what came.
    pub text: String,
}

impl CachedPolicy {
    /// When the policy stops applying, in Unix seconds: the fetch plus
    /// its `max_age`.
    pub fn expires(&self) -> u64 {
        self.fetched.saturating_add(self.policy.max_age.as_secs())
    }

    /// Whether it still applies at `now` (Unix seconds).
    pub fn fresh(&self, now: u64) -> bool {
        now < self.expires()
    }
}

/// As the file holds it.
#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    domain: String,
    id: String,
    fetched: u64,
    policy: String,
}

/// The cache of one spool.
pub(crate) struct PolicyCache {
    dir: PathBuf,
    memory: Mutex<HashMap<String, Arc<CachedPolicy>>>,
}

/// The file name of a domain's policy; `None` for a name that could not
/// be a file name safely (the domains here are A-labels, so only an odd
/// one is left uncached).
fn file_name(domain: &str) -> Option<String> {
    let ok = !domain.is_empty()
        && domain.len() <= 253
        && !domain.starts_with('.')
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    ok.then(|| format!("{domain}.json"))
}

impl PolicyCache {
    /// The cache in `dir` (made when the first policy is stored).
    pub(crate) fn new(dir: PathBuf) -> PolicyCache {
        PolicyCache {
            dir,
            memory: Mutex::new(HashMap::new()),
        }
    }

    /// The policy last stored for `domain`, fresh or not.
    pub(crate) fn get(&self, domain: &str) -> Option<Arc<CachedPolicy>> {
        let mut memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = memory.get(domain) {
            return Some(Arc::clone(c));
        }
        let cached = Arc::new(read(&self.dir, domain)?);
        if memory.len() >= MEMORY_LIMIT {
            memory.clear();
        }
        memory.insert(domain.to_string(), Arc::clone(&cached));
        Some(cached)
    }

    /// Stores a newly fetched policy, in memory and on disk. A failed
    /// write is logged: the policy still applies in this process.
    pub(crate) fn put(&self, domain: &str, cached: CachedPolicy) -> Arc<CachedPolicy> {
        if let Err(e) = write(&self.dir, domain, &cached) {
            log::warn!(
                "MTA-STS: cannot store the policy of {domain} in {}: {e}",
                self.dir.display()
            );
        }
        let cached = Arc::new(cached);
        let mut memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        if memory.len() >= MEMORY_LIMIT {
            memory.clear();
        }
        memory.insert(domain.to_string(), Arc::clone(&cached));
        cached
    }
}

/// Reads a domain's file; a damaged one is logged and left out (the next
/// fetch replaces it).
pub(crate) fn read(dir: &Path, domain: &str) -> Option<CachedPolicy> {
    let path = dir.join(file_name(domain)?);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            log::warn!("MTA-STS: cannot read {}: {e}", path.display());
            return None;
        }
    };
    let parsed = serde_json::from_slice::<Stored>(&bytes)
        .map_err(|e| e.to_string())
        .and_then(|s| {
            if s.version != FORMAT || s.domain != domain {
                return Err(format!("not a version {FORMAT} file for {domain}"));
            }
            let policy = Policy::parse(&s.policy).map_err(|e| e.to_string())?;
            Ok(CachedPolicy {
                id: s.id,
                fetched: s.fetched,
                policy,
                text: s.policy,
            })
        });
    match parsed {
        Ok(c) => Some(c),
        Err(e) => {
            log::warn!("MTA-STS: ignoring {}: {e}", path.display());
            None
        }
    }
}

/// Writes a domain's file atomically and durably.
fn write(dir: &Path, domain: &str, cached: &CachedPolicy) -> std::io::Result<()> {
    let Some(name) = file_name(domain) else {
        return Ok(());
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let stored = Stored {
        version: FORMAT,
        domain: domain.to_string(),
        id: cached.id.clone(),
        fetched: cached.fetched,
        policy: cached.text.clone(),
    };
    let json = serde_json::to_vec_pretty(&stored).map_err(std::io::Error::other)?;
    // A name of this writer's own: two processes never write one file.
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        fastrand::u64(..)
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        fs::rename(&tmp, dir.join(&name))?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(id: &str, fetched: u64) -> CachedPolicy {
        let text = "version: STSv1\nmode: enforce\nmx: mx.d.test\nmax_age: 100\n";
        CachedPolicy {
            id: id.into(),
            fetched,
            policy: Policy::parse(text).unwrap(),
            text: text.into(),
        }
    }

    #[test]
    fn a_stored_policy_is_read_back_by_another_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("mta-sts");
        let cache = PolicyCache::new(cache_dir.clone());
        assert!(cache.get("d.test").is_none());
        cache.put("d.test", policy("one", 1000));
        cache.put("d.test", policy("two", 2000));
        let again = PolicyCache::new(cache_dir.clone());
        let got = again.get("d.test").unwrap();
        assert_eq!(*got, policy("two", 2000));
        assert_eq!(got.expires(), 2100);
        assert!(got.fresh(2099) && !got.fresh(2100));
        // Only the policy file is left: no temporary files.
        let names: Vec<_> = fs::read_dir(&cache_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["d.test.json"]);
    }

    #[test]
    fn a_damaged_file_counts_as_no_policy() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("d.test.json"), b"{ not json").unwrap();
        assert!(PolicyCache::new(dir.path().into()).get("d.test").is_none());
        assert!(file_name("../x").is_none());
        assert!(file_name("A.test").is_none());
    }
}
