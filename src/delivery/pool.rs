//! Idle SMTP/LMTP sessions kept a few seconds for the next message to the
//! same destination, as Postfix's connection cache does: a new message
//! then skips the TCP, TLS and EHLO round trips.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use crate::delivery::smtp_client::Session;

/// Most idle sessions kept per destination: enough for every worker
/// relaying through one smarthost, so none reconnects while others idle.
const MAX_IDLE_PER_DESTINATION: usize = 64;

/// A session taken out of the pool, or new.
pub struct Pooled {
    pub session: Session,
    reused: bool,
}

impl Pooled {
    /// A session just opened.
    pub fn fresh(session: Session) -> Pooled {
        Pooled {
            session,
            reused: false,
        }
    }

    /// True when the session was idle in the pool before: the server may
    /// have closed it since without our knowing.
    pub fn reused(&self) -> bool {
        self.reused
    }
}

struct Idle {
    session: Session,
    since: Instant,
}

/// Idle sessions by destination.
pub struct SessionPool {
    idle: Mutex<HashMap<String, Vec<Idle>>>,
    max_idle: Duration,
}

impl SessionPool {
    /// A pool keeping sessions up to `max_idle`; zero keeps none. Idle
    /// sessions are closed in the background once too old.
    pub fn new(max_idle: Duration) -> Arc<SessionPool> {
        let pool = Arc::new(SessionPool {
            idle: Mutex::new(HashMap::new()),
            max_idle,
        });
        if !max_idle.is_zero() {
            start_reaper(Arc::downgrade(&pool), max_idle);
        }
        pool
    }

    /// An idle session to `key`, if one is fresh enough.
    pub fn take(&self, key: &str) -> Option<Pooled> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(key)?;
        // Newest first: the most likely to be still open. A session the
        // server closed while idle would fail the next message with a
        // network error and make it wait a whole retry interval.
        let mut dead = Vec::new();
        let mut found = None;
        while let Some(mut s) = list.pop() {
            if s.since.elapsed() < self.max_idle && s.session.still_open() {
                found = Some(Pooled {
                    session: s.session,
                    reused: true,
                });
                break;
            }
            dead.push(s.session);
        }
        drop(idle);
        // Outside the lock: a QUIT waits for its reply.
        for s in dead {
            s.quit();
        }
        found
    }

    /// Gives a session back after a transaction. It is kept only when it
    /// is in step (its transaction complete, or a clean RSET) and has not
    /// carried its `messages_per_connection`: then it is closed with QUIT
    /// and the next message opens a new connection.
    pub fn put(&self, key: &str, pooled: Pooled) {
        let Pooled { mut session, .. } = pooled;
        // A session whose last transaction ended with its final reply is
        // in step already; only an abandoned one needs the RSET round trip.
        if self.max_idle.is_zero()
            || session.worn_out()
            || (!session.is_idle() && session.reset().is_err())
        {
            session.quit();
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(key.to_string()).or_default();
        if list.len() >= MAX_IDLE_PER_DESTINATION {
            drop(idle);
            session.quit();
            return;
        }
        list.push(Idle {
            session,
            since: Instant::now(),
        });
    }

    /// Closes sessions idle for longer than the limit.
    fn reap(&self) {
        let stale: Vec<Idle> = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let mut stale = Vec::new();
            for list in idle.values_mut() {
                let (old, fresh): (Vec<_>, Vec<_>) = list
                    .drain(..)
                    .partition(|s| s.since.elapsed() >= self.max_idle);
                *list = fresh;
                stale.extend(old);
            }
            idle.retain(|_, l| !l.is_empty());
            stale
        };
        for s in stale {
            s.session.quit();
        }
    }
}

/// Closes idle connections in the background until the pool is gone.
fn start_reaper(pool: Weak<SessionPool>, max_idle: Duration) {
    let tick = (max_idle / 2).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let _ = thread::Builder::new()
        .name("mailqueue-conn-reaper".into())
        .spawn(move || loop {
            thread::sleep(tick);
            match pool.upgrade() {
                Some(p) => p.reap(),
                None => return,
            }
        });
}
