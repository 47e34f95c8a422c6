//! Fan-out of the change feed to the WebSocket subscribers of a process. A change wakes
//! every subscriber of its tenant at once; read one by one, a thousand subscribers would
//! read and open the same rows a thousand times and commit a thousand ledger entries
//! apiece. Instead each subscriber hands its read (its cursor and filter) to its tenant's
//! queue here and waits; one blocking task takes everything queued and serves it as one
//! round ([`SyncService::pages`]): the log rows after each distinct cursor, current rows,
//! data keys, care teams and versions are read once, each version is opened once, each
//! subscriber is judged on its own, and the round's `sync` entries go to the ledger in a
//! few large batches, each page answered once its batch has committed. Reads queued while
//! a round runs make the next one.
//!
//! A subscriber still asks for its next page only once it has sent the last, so a slow
//! client only falls behind on its cursor. Versions are kept between rounds in a bounded
//! cache of **sealed** rows ([`SealedCache`]): opened content lives only as long as the
//! round that opened it, with data keys read from the key store for that round.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

use super::{Ask, ChangePage, FeedFilter};
use crate::service::{Caller, ServiceError, Services};

/// Most subscribers served by one round.
const MAX_ROUND_ASKS: usize = 4096;
/// About how many changes one round may deliver in all: with many subscribers in a round
/// each reads fewer log rows, so a round's pages and ledger batch stay bounded.
const ROUND_CHANGES: usize = 20_000;
/// The sealed cache's bounds: versions, and bytes of sealed content.
const CACHE_VERSIONS: usize = 65_536;
const CACHE_BYTES: usize = 32 << 20;

/// The fan-out of one process: a queue per tenant, and the sealed cache.
#[derive(Debug, Default)]
pub struct FeedHub {
    tenants: Mutex<HashMap<String, Arc<Mutex<Queue>>>>,
    pub(super) sealed: SealedCache,
}

/// A tenant's subscribers waiting for the next round, and whether a round task runs.
#[derive(Debug, Default)]
struct Queue {
    waiting: Vec<Waiter>,
    running: bool,
}

#[derive(Debug)]
struct Waiter {
    caller: Caller,
    since: i64,
    limit: i64,
    filter: FeedFilter,
    /// Taken when the round answers.
    reply: Option<oneshot::Sender<Result<ChangePage, ServiceError>>>,
}

impl FeedHub {
    fn queue(&self, tenant: &str) -> Arc<Mutex<Queue>> {
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        tenants.entry(tenant.to_owned()).or_default().clone()
    }
}

impl Services {
    /// The caller's next page of the change feed after `since` (at most `limit` log rows,
    /// fewer when many subscribers read at once), read in a round with every other
    /// subscriber of the tenant waiting at the same time. Same answer as
    /// [`super::SyncService::changes`]: what the caller may read now, ledgered before it
    /// returns.
    pub async fn next_changes(&self, caller: Caller, since: i64, limit: i64, filter: FeedFilter) -> Result<ChangePage, ServiceError> {
        let queue = self.feed.queue(caller.principal.tenant.as_str());
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut q = queue.lock().unwrap_or_else(PoisonError::into_inner);
            q.waiting.push(Waiter { caller, since, limit, filter, reply: Some(reply) });
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            let services = self.clone();
            let span = tracing::info_span!("feed_rounds");
            tokio::task::spawn_blocking(move || span.in_scope(|| services.run_rounds(&queue)));
        }
        // The round task answers every waiter it takes, or drops its reply if it dies.
        answer.await.unwrap_or_else(|_| Err(ServiceError::ledger("feed round ended without an answer")))
    }

    /// Serves rounds until the tenant's queue is empty.
    fn run_rounds(&self, queue: &Arc<Mutex<Queue>>) {
        let mut guard = Running { queue: queue.as_ref(), finished: false };
        loop {
            let taken: Vec<Waiter> = {
                let mut q = queue.lock().unwrap_or_else(PoisonError::into_inner);
                if q.waiting.is_empty() {
                    q.running = false;
                    guard.finished = true;
                    return;
                }
                let n = q.waiting.len().min(MAX_ROUND_ASKS);
                q.waiting.drain(..n).collect()
            };
            self.round(taken);
        }
    }

    fn round(&self, mut taken: Vec<Waiter>) {
        let per_ask = i64::try_from((ROUND_CHANGES / taken.len().max(1)).max(1)).unwrap_or(i64::MAX);
        let mut replies: Vec<Option<oneshot::Sender<Result<ChangePage, ServiceError>>>> =
            taken.iter_mut().map(|w| w.reply.take()).collect();
        let asks: Vec<Ask<'_>> =
            taken.iter().map(|w| Ask { caller: &w.caller, since: w.since, limit: w.limit.min(per_ask), filter: &w.filter }).collect();
        let served = self.sync().pages(&asks, |i, page| {
            // A subscriber that went away meanwhile has nobody to answer.
            if let Some(reply) = replies.get_mut(i).and_then(Option::take) {
                let _ = reply.send(page);
            }
        });
        if let Err(e) = served {
            tracing::error!(error = %e, cause = ?std::error::Error::source(&e).map(ToString::to_string), subscribers = asks.len(), "a feed round failed");
            for reply in replies.into_iter().flatten() {
                let _ = reply.send(Err(copy_of(&e)));
            }
        }
    }
}

/// Marks the tenant's queue idle should the round task end without emptying it (a panic):
/// the waiters it leaves get no answer (their connections close and resume), and the next
/// subscriber starts a new task.
struct Running<'a> {
    queue: &'a Mutex<Queue>,
    finished: bool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            q.running = false;
            q.waiting.clear();
        }
    }
}

/// The error of a round for each of its subscribers: the same status, the cause logged
/// once by the round.
fn copy_of(e: &ServiceError) -> ServiceError {
    match e {
        ServiceError::Erased => ServiceError::Erased,
        ServiceError::Keys { what, .. } => ServiceError::keys(what),
        ServiceError::Ledger { what, .. } => ServiceError::ledger(what),
        ServiceError::Integrity { what, .. } => ServiceError::integrity(what),
        ServiceError::Store(s) if s.is_unavailable() => {
            ServiceError::Store(crate::store::StoreError::Connect("database unavailable for a feed round".into()))
        }
        _ => ServiceError::corrupt("feed round"),
    }
}

/// `(tenant, type, id, version)` of a sealed version.
type CacheKey = (String, String, String, i64);

/// Recent versions as stored — sealed, never opened — shared by every round of the
/// process, so that a round needs to read only the versions it has not seen. Bounded by
/// [`CACHE_VERSIONS`] and [`CACHE_BYTES`]; the oldest entry goes first. A version never
/// changes once written, and nothing here opens without its owner's data key, which every
/// round reads afresh from the key store: a key destroyed (crypto-shredding, by any
/// process) leaves these rows as unreadable as every other copy.
#[derive(Debug, Default)]
pub(super) struct SealedCache {
    inner: Mutex<Sealed>,
}

#[derive(Debug, Default)]
struct Sealed {
    map: HashMap<CacheKey, Arc<str>>,
    order: VecDeque<CacheKey>,
    bytes: usize,
}

impl SealedCache {
    /// The cached versions among `wanted` (each `(type, id, version)`) of `tenant`.
    pub(super) fn get_all(&self, tenant: &str, wanted: &[(String, String, i64)]) -> Vec<((String, String, i64), Arc<str>)> {
        let cache = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.map.is_empty() {
            return Vec::new();
        }
        wanted
            .iter()
            .filter_map(|(t, id, v)| {
                let found = cache.map.get(&(tenant.to_owned(), t.clone(), id.clone(), *v))?;
                Some(((t.clone(), id.clone(), *v), found.clone()))
            })
            .collect()
    }

    /// Keeps `versions` of `tenant`, evicting the oldest beyond the bounds.
    pub(super) fn put_all(&self, tenant: &str, versions: Vec<((String, String, i64), Arc<str>)>) {
        let mut cache = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for ((t, id, v), content) in versions {
            if content.len() > CACHE_BYTES / 64 {
                continue;
            }
            let key = (tenant.to_owned(), t, id, v);
            if cache.map.contains_key(&key) {
                continue;
            }
            cache.bytes += content.len();
            cache.order.push_back(key.clone());
            cache.map.insert(key, content);
            while cache.map.len() > CACHE_VERSIONS || cache.bytes > CACHE_BYTES {
                let Some(oldest) = cache.order.pop_front() else { break };
                if let Some(gone) = cache.map.remove(&oldest) {
                    cache.bytes -= gone.len();
                }
            }
        }
    }

    #[cfg(test)]
    fn len_and_bytes(&self) -> (usize, usize) {
        let cache = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (cache.map.len(), cache.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(i: i64, size: usize) -> ((String, String, i64), Arc<str>) {
        (("Patient".into(), format!("p{i}"), 1), Arc::from("x".repeat(size).as_str()))
    }

    #[test]
    fn the_sealed_cache_keeps_the_newest_versions_within_its_bounds() {
        let cache = SealedCache::default();
        let size = CACHE_BYTES / 1000;
        cache.put_all("t", (0..2000).map(|i| version(i, size)).collect());
        let (n, bytes) = cache.len_and_bytes();
        assert!(bytes <= CACHE_BYTES && n <= 1000, "{n} versions, {bytes} bytes");
        let wanted: Vec<_> = [0, 1999].iter().map(|i| ("Patient".to_owned(), format!("p{i}"), 1)).collect();
        let found: Vec<String> = cache.get_all("t", &wanted).into_iter().map(|(k, _)| k.1).collect();
        assert_eq!(found, ["p1999"], "the oldest went first");
        assert!(cache.get_all("other-tenant", &wanted).is_empty(), "tenants never see each other's rows");
        cache.put_all("t", (0..(CACHE_VERSIONS as i64 + 10)).map(|i| version(i, 1)).collect());
        assert!(cache.len_and_bytes().0 <= CACHE_VERSIONS);
    }
}
