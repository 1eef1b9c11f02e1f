//! MTA-STS (RFC 8461) for MX delivery: a domain that publishes a policy
//! says which MX hosts are its own and that they take verified TLS.
//!
//! For each recipient domain the MX client asks [`MtaSts::policy_for`]
//! once; the [`DomainPolicy`] it gets opens the session to each MX host
//! as the policy wants:
//! - `enforce`: only MX hosts the policy names, and only over TLS whose
//!   certificate verifies for the MX host's name; anything else is a
//!   temporary failure ([`ErrorKind::MtaSts`]) naming MTA-STS;
//! - `testing`: delivery as without a policy, with a log line for what
//!   `enforce` would have refused;
//! - `none`, or no policy: delivery as configured.
//!
//! Discovery (§3, §5.1): the `_mta-sts.<domain>` TXT record names the
//! policy's id; a policy cached under the same id, and not expired, is
//! used as it is; otherwise the policy is fetched over HTTPS and stored in
//! the spool. A failed lookup or fetch leaves an unexpired cached policy
//! in force, and without one the domain counts as having none.

pub mod cache;
pub mod fetch;
pub mod policy;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::delivery::dns::{DnsError, Record, RecordType, Resolver};
use crate::delivery::smtp_client::{
    tls_connector, verifying_connector, ClientSettings, Session, TlsConnectorError,
};
use crate::delivery::{DeliveryError, ErrorKind};
use crate::smtp::tls_policy::TlsPolicy;

use cache::{CachedPolicy, PolicyCache};
use fetch::Fetcher;
use policy::{policy_id, Mode, Policy};

/// How long a policy that could not be fetched is not asked for again
/// (for the same TXT id): each try may cost a delivery worker up to the
/// fetch timeout.
const RETRY_FAILED_FETCH: Duration = Duration::from_secs(5 * 60);

static FETCHES_OK: AtomicU64 = AtomicU64::new(0);
static FETCHES_FAILED: AtomicU64 = AtomicU64::new(0);
static REFUSALS: AtomicU64 = AtomicU64::new(0);

/// Policy fetches since the process started: (succeeded, failed).
pub fn fetch_counts() -> (u64, u64) {
    (FETCHES_OK.load(Relaxed), FETCHES_FAILED.load(Relaxed))
}

/// MX hosts refused under an `enforce` policy since the process started:
/// not in the policy, or without verified TLS.
pub fn refusals() -> u64 {
    REFUSALS.load(Relaxed)
}

/// Where policies are kept and fetched from.
#[derive(Debug, Clone)]
pub struct MtaStsSettings {
    /// The on-disk cache: `<spool>/mta-sts`.
    pub cache_dir: PathBuf,
    /// The HTTPS port of policy hosts: 443, another only in tests.
    pub https_port: u16,
    /// Extra trust roots (PEM) for the policy hosts and the MX hosts,
    /// beside the system's: `[delivery] ca_file`.
    pub ca_file: Option<PathBuf>,
}

/// The MTA-STS state of one MX target: the cache and the fetcher.
pub struct MtaSts {
    resolver: Arc<Resolver>,
    fetcher: Fetcher,
    cache: PolicyCache,
    /// The MX client's settings with verified TLS, for MX hosts under a
    /// policy.
    verified: Arc<ClientSettings>,
    /// One fetch per domain at a time: the workers delivering to one
    /// domain wait for the first one's fetch.
    fetching: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Fetches that failed lately, by domain: the TXT id and until when
    /// it is not fetched again.
    failed: Mutex<HashMap<String, (String, Instant)>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Where the policy `mailqueue sts` shows came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The spool's cache.
    Cache,
    /// Fetched now (and not stored: the daemon stores what it uses).
    Fetched,
}

/// The policy in force for a domain, for `mailqueue sts`.
#[derive(Debug, Clone)]
pub struct Found {
    /// The policy, its id and fetch time.
    pub policy: Arc<CachedPolicy>,
    /// Cache or network.
    pub source: Source,
    /// The id the TXT record names now, if it could be read: another id
    /// than the cached policy's means a new policy is fetched at the
    /// next delivery.
    pub published_id: Option<String>,
}

impl MtaSts {
    /// The MTA-STS state of an MX client with settings `client`, sharing
    /// its resolver. Nothing is read or fetched until mail goes out.
    pub fn new(
        resolver: Arc<Resolver>,
        client: &ClientSettings,
        settings: MtaStsSettings,
    ) -> Result<MtaSts, TlsConnectorError> {
        // Always built: the policy is not `none`.
        let ca_file = settings.ca_file.as_deref();
        let verified = Arc::new(ClientSettings {
            tls: TlsPolicy::Verify,
            tls_connector: tls_connector(TlsPolicy::Verify, ca_file)?.map(Arc::new),
            ..client.clone()
        });
        Ok(MtaSts {
            fetcher: Fetcher {
                resolver: Arc::clone(&resolver),
                tls: Arc::new(verifying_connector(ca_file)?),
                port: settings.https_port,
                outbound: client.outbound(),
                connect_timeout: client.connect_timeout,
            },
            resolver,
            cache: PolicyCache::new(settings.cache_dir),
            verified,
            fetching: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
        })
    }

    /// The policy in force for `domain` (an A-label domain), looked up,
    /// fetched and stored as needed. Never fails: without a usable
    /// policy, the domain gets mail as configured.
    pub fn policy_for(&self, domain: &str) -> DomainPolicy {
        let mut found = DomainPolicy {
            domain: domain.to_string(),
            policy: None,
            verified: Arc::clone(&self.verified),
        };
        if domain.starts_with('[') {
            return found;
        }
        let now = unix_now();
        let cached = self.cache.get(domain).filter(|c| c.fresh(now));
        found.policy = match self.published_id(domain) {
            Ok(Some(id)) if cached.as_ref().is_some_and(|c| c.id == id) => cached,
            Ok(Some(id)) => self.refresh(domain, &id, cached),
            // No record, or none to read: an unexpired policy stays in
            // force (RFC 8461 §5.1), so that removing the record (or
            // blocking the lookup) does not turn protection off.
            Ok(None) => cached,
            Err(why) => {
                log::debug!("{domain}: MTA-STS: {why}");
                cached
            }
        };
        found
    }

    /// The id the domain's `_mta-sts` TXT record names; `Ok(None)` when
    /// there is no such record.
    fn published_id(&self, domain: &str) -> Result<Option<String>, String> {
        let name = format!("_mta-sts.{domain}");
        let records = match self.resolver.lookup(&name, RecordType::Txt) {
            Ok(r) => r,
            Err(DnsError::NxDomain(_)) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let texts: Vec<String> = records
            .into_iter()
            .filter_map(|r| match r {
                Record::Txt(t) => Some(t),
                _ => None,
            })
            .collect();
        policy_id(&texts).map_err(|e| format!("{name}: {e}"))
    }

    /// Fetches the policy of id `id`, stores and returns it; on failure
    /// the unexpired `cached` one, if any.
    fn refresh(
        &self,
        domain: &str,
        id: &str,
        cached: Option<Arc<CachedPolicy>>,
    ) -> Option<Arc<CachedPolicy>> {
        let lock = Arc::clone(
            self.fetching
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(domain.to_string())
                .or_default(),
        );
        let result = {
            let _one_at_a_time = lock.lock().unwrap_or_else(|p| p.into_inner());
            self.refresh_alone(domain, id, cached)
        };
        // The lock's entry goes when no other worker waits on it.
        let mut fetching = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
        if Arc::strong_count(&lock) == 2 {
            fetching.remove(domain);
        }
        result
    }

    /// [`refresh`](Self::refresh), with the domain's fetch lock held.
    fn refresh_alone(
        &self,
        domain: &str,
        id: &str,
        cached: Option<Arc<CachedPolicy>>,
    ) -> Option<Arc<CachedPolicy>> {
        // Another worker may have fetched it while this one waited.
        if let Some(c) = self.cache.get(domain) {
            if c.id == id && c.fresh(unix_now()) {
                return Some(c);
            }
        }
        if self.failed_lately(domain, id) {
            return cached;
        }
        match self.fetch(domain, id) {
            Ok(fresh) => {
                FETCHES_OK.fetch_add(1, Relaxed);
                log::info!(
                    "{domain}: MTA-STS policy {id} fetched: mode {}, mx {}, max_age {}",
                    fresh.policy.mode,
                    fresh.policy.mx_list(),
                    fresh.policy.max_age.as_secs()
                );
                Some(self.cache.put(domain, fresh))
            }
            Err(why) => {
                FETCHES_FAILED.fetch_add(1, Relaxed);
                let what_now = match &cached {
                    Some(c) => format!("the cached policy {} stays in force", c.id),
                    None => "delivering as if the domain had no policy".to_string(),
                };
                log::warn!("{domain}: MTA-STS policy {id} not usable: {why}; {what_now}");
                self.failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(
                        domain.to_string(),
                        (id.to_string(), Instant::now() + RETRY_FAILED_FETCH),
                    );
                cached
            }
        }
    }

    /// Whether the policy `id` of `domain` failed to fetch a moment ago.
    fn failed_lately(&self, domain: &str, id: &str) -> bool {
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        match failed.get(domain) {
            Some((failed_id, until)) if failed_id == id && *until > Instant::now() => true,
            Some(_) => {
                failed.remove(domain);
                false
            }
            None => false,
        }
    }

    /// Fetches and parses the policy; the error says which step failed.
    fn fetch(&self, domain: &str, id: &str) -> Result<CachedPolicy, String> {
        let fetched = unix_now();
        let text = self.fetcher.fetch(domain).map_err(|e| {
            format!("fetching https://mta-sts.{domain}/.well-known/mta-sts.txt: {e}")
        })?;
        let policy = Policy::parse(&text).map_err(|e| format!("bad policy: {e}"))?;
        Ok(CachedPolicy {
            id: id.to_string(),
            fetched,
            policy,
            text,
        })
    }

    /// The policy in force for `domain`, for `mailqueue sts`: the cached
    /// one while it has not expired, else fetched now (not stored).
    /// `Err` says why there is none.
    pub fn current(&self, domain: &str) -> Result<Found, String> {
        let domain = crate::delivery::dns::to_ascii(domain).map_err(|e| e.to_string())?;
        let published = self.published_id(&domain);
        if let Some(c) = self.cache.get(&domain).filter(|c| c.fresh(unix_now())) {
            return Ok(Found {
                policy: c,
                source: Source::Cache,
                published_id: published.ok().flatten(),
            });
        }
        let id = match published {
            Ok(Some(id)) => id,
            Ok(None) => return Err(format!("_mta-sts.{domain} has no MTA-STS TXT record")),
            Err(why) => return Err(why),
        };
        let fetched = self.fetch(&domain, &id)?;
        Ok(Found {
            policy: Arc::new(fetched),
            source: Source::Fetched,
            published_id: Some(id),
        })
    }
}

/// The policy of one recipient domain, for its MX hosts.
pub struct DomainPolicy {
    domain: String,
    policy: Option<Arc<CachedPolicy>>,
    verified: Arc<ClientSettings>,
}

impl DomainPolicy {
    /// The policy's mode; `None` when the domain has no policy in force.
    pub fn mode(&self) -> Option<Mode> {
        self.policy.as_ref().map(|p| p.policy.mode)
    }

    /// Opens a session to the MX host `host` as the policy wants, with
    /// `open` (which connects with the settings it is given): under
    /// `enforce` only to a host the policy names and with verified TLS;
    /// under `testing` as `configured`, logging what `enforce` would have
    /// refused; else as `configured`.
    pub fn open(
        &self,
        host: &str,
        configured: &Arc<ClientSettings>,
        open: impl Fn(&Arc<ClientSettings>) -> Result<Session, DeliveryError>,
    ) -> Result<Session, DeliveryError> {
        let Some(cached) = &self.policy else {
            return open(configured);
        };
        let (domain, policy) = (&self.domain, &cached.policy);
        match policy.mode {
            Mode::None => open(configured),
            Mode::Enforce if !policy.allows(host) => {
                REFUSALS.fetch_add(1, Relaxed);
                Err(DeliveryError::new(
                    ErrorKind::MtaSts,
                    &format!(
                        "MTA-STS policy of {domain} (enforce) does not allow MX host {host} \
                         (mx: {})",
                        policy.mx_list()
                    ),
                )
                .at(host))
            }
            Mode::Enforce => open(&self.verified).map_err(|e| {
                if !is_tls_failure(&e) {
                    return e;
                }
                REFUSALS.fetch_add(1, Relaxed);
                DeliveryError::new(
                    ErrorKind::MtaSts,
                    &format!(
                        "MTA-STS policy of {domain} (enforce) requires verified TLS: {}",
                        e.reply().text
                    ),
                )
                .at(host)
            }),
            Mode::Testing if !policy.allows(host) => {
                log::warn!(
                    "{domain}: MTA-STS (testing): enforce would refuse MX host {host} \
                     (mx: {}); delivering anyway",
                    policy.mx_list()
                );
                open(configured)
            }
            Mode::Testing => match open(&self.verified) {
                Err(e) if is_tls_failure(&e) => {
                    log::warn!(
                        "{domain}: MTA-STS (testing): enforce would refuse MX host {host}: {}; \
                         delivering anyway",
                        e.reply().text
                    );
                    open(configured)
                }
                other => other,
            },
        }
    }
}

/// A failure of the TLS the policy requires: no STARTTLS, a failed
/// handshake or certificate check.
fn is_tls_failure(e: &DeliveryError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Tls | ErrorKind::TlsAuthentication | ErrorKind::EncryptionNeeded
    )
}
