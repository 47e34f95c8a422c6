//! The key hierarchy: master key (versioned, held by the [`KeyProvider`]) → per-tenant key
//! (wrapped under a master-key version, cached unwrapped in zeroizing memory for the
//! configured time, or for the life of the process) → per-owner
//! data key (a Patient, shared by its records, or a Practitioner), wrapped under the
//! tenant key. Wrapped tenant and data keys live in the key store, a database apart from
//! the records: a backup of the records alone holds no key, and a key destroyed in the
//! key store is gone from every restore that uses it. Data keys are read from the key
//! store on every use, never cached, so a destroyed key stops working in every process at
//! once. The blind-index key of a tenant is derived from its tenant key.
//!
//! New owners created without an id of their own (a Patient or Practitioner `POST`) take
//! an id from a reserve whose data keys are already durable in the key store, so such a
//! create waits for one commit (the records'), not two. One create in
//! [`RESERVE_BATCH`] refills its tenant's reserve for that type, committing that many
//! keys at once. A reserved key has sealed nothing until its create commits; the keys a
//! stopped process had in reserve stay in the key store, owned by ids no record has
//! (at most [`RESERVE_BATCH`] per tenant and type per process).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;

use crate::crypto::{Aad, BlindIndexKey, Envelope, Key, KeyProvider};
use crate::domain::{Category, ResourceId, ResourceType};
use crate::service::ServiceError;
use crate::store::keys::{self as rows, DataKeyRow, TenantKeyRow};
use crate::store::{DbConnection, PooledConn, Store};

mod new_keys;

/// The envelope key id of a data key wrapped under its tenant key.
const TENANT_KEY_ID: u64 = 0;

/// A tenant's unwrapped keys.
pub struct TenantKeys {
    key: Key,
    pub index: BlindIndexKey,
}

/// An unwrapped data key and the id its ciphertexts carry.
pub struct DataKey {
    pub key_id: u64,
    pub key: Key,
}

/// How many new owners' keys one refill of a tenant's reserve commits.
pub const RESERVE_BATCH: usize = 64;

/// A new owner's id with its data key, already durable in the key store.
pub struct Reserved {
    /// The new record's type (a Patient or a Practitioner) and id.
    pub rtype: ResourceType,
    pub id: ResourceId,
    /// The key's owner: [`crate::service::codec::owner`] of the record.
    pub owner: String,
    pub key: DataKey,
}

/// One tenant's reserve of new owners for one type.
#[derive(Default)]
struct Reserve {
    ready: Vec<Reserved>,
    /// A create is refilling it (others meanwhile create their keys one by one).
    refilling: bool,
}

/// What `carevault keys status` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatus {
    pub development: bool,
    /// Where the master keys live (the provider's own words: a file, a token).
    pub location: String,
    /// `(master key version, tenant keys it wraps)`, oldest first.
    pub versions: Vec<(u32, usize)>,
    /// `(tenant, the master-key version its key is wrapped under)`, by tenant.
    pub tenants: Vec<(String, i64)>,
    pub data_keys_live: i64,
    pub data_keys_destroyed: i64,
}

pub struct KeyRing {
    provider: Arc<dyn KeyProvider>,
    /// The key store's pool.
    store: Store,
    /// Unwrapped tenant keys and when each was unwrapped.
    tenants: RwLock<HashMap<String, (Arc<TenantKeys>, Instant)>>,
    /// Commits new data keys for concurrent writes together.
    new_keys: new_keys::NewKeys,
    /// New owners' ids with durable keys, by tenant and type.
    reserves: Mutex<HashMap<(String, ResourceType), Reserve>>,
    /// How long an unwrapped tenant key may be used before the provider is asked again
    /// (`None`: for the life of the process). With a token that goes away, reads and
    /// writes fail closed once the keys in memory are this old.
    cache_for: Option<Duration>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").field("provider", &self.provider).finish_non_exhaustive()
    }
}

fn crypto_failure(what: &'static str) -> impl Fn(crate::crypto::CryptoError) -> ServiceError {
    move |e| {
        tracing::error!(error = %e, what, "key material failed to open");
        ServiceError::integrity("stored key material")
    }
}

fn provider_failure(e: crate::crypto::ProviderError) -> ServiceError {
    match e {
        // A wrapped tenant key that does not open is an integrity failure, not an outage.
        crate::crypto::ProviderError::Unwrap(_) => {
            tracing::error!(error = %e, "a tenant key failed to open");
            ServiceError::integrity("stored key material")
        }
        e => {
            tracing::error!(error = %e, "key provider failed");
            ServiceError::keys("key material")
        }
    }
}

fn tenant_aad(tenant: &str) -> Aad {
    Aad::new("tenant-key", &[tenant])
}

fn data_key_aad(tenant: &str, owner: &str, key_id: u64) -> Aad {
    Aad::new("data-key", &[tenant, owner, &key_id.to_string()])
}

impl KeyRing {
    /// The key ring over `provider` and the key store `store`, with the thread that
    /// commits new data keys (it ends when the key ring is dropped).
    pub fn new(provider: Arc<dyn KeyProvider>, store: Store) -> Result<Self, ServiceError> {
        let new_keys = new_keys::NewKeys::start(&store)?;
        Ok(Self { provider, store, new_keys, tenants: RwLock::new(HashMap::new()), reserves: Mutex::new(HashMap::new()), cache_for: None })
    }

    fn conn(&self) -> Result<PooledConn, ServiceError> {
        Ok(self.store.conn()?)
    }

    /// Moves the key rows an older release kept in the records database (`records`) into
    /// the key store, then deletes them there. Idempotent: copied rows are skipped, so a
    /// move interrupted between the two steps finishes on the next start. Returns how
    /// many rows were moved.
    pub fn adopt_legacy(&self, records: &mut DbConnection) -> Result<usize, ServiceError> {
        let (tenants, data) = rows::all_rows(records)?;
        if tenants.is_empty() && data.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn()?;
        crate::store::write_transaction(&mut conn, |tx| rows::insert_missing(tx, &tenants, &data))?;
        crate::store::write_transaction(records, rows::take_legacy)?;
        tracing::warn!(tenant_keys = tenants.len(), data_keys = data.len(), "key rows moved from the records database to the key store");
        Ok(tenants.len() + data.len())
    }

    /// Keeps unwrapped tenant keys for at most `cache_for` (`None`: for the life of the
    /// process; zero: never).
    pub fn with_cache_for(mut self, cache_for: Option<Duration>) -> Self {
        self.cache_for = cache_for;
        self
    }

    fn fresh(&self, unwrapped: Instant) -> bool {
        self.cache_for.is_none_or(|ttl| unwrapped.elapsed() < ttl)
    }

    /// A cached tenant key that is still fresh.
    fn cached(&self, tenant: &str) -> Option<Arc<TenantKeys>> {
        let cache = self.tenants.read().ok()?;
        let (keys, unwrapped) = cache.get(tenant)?;
        self.fresh(*unwrapped).then(|| keys.clone())
    }

    /// Keeps `keys` (unless nothing is cached) and drops every expired key, so none
    /// outlives its time by more than the next use of the ring.
    fn remember(&self, tenant: &str, keys: &Arc<TenantKeys>) {
        if self.cache_for.is_some_and(|ttl| ttl.is_zero()) {
            return;
        }
        if let Ok(mut cache) = self.tenants.write() {
            cache.retain(|_, (_, unwrapped)| self.fresh(*unwrapped));
            cache.insert(tenant.to_owned(), (keys.clone(), Instant::now()));
        }
    }

    fn unwrap_tenant(&self, row: &TenantKeyRow) -> Result<Arc<TenantKeys>, ServiceError> {
        let version = u32::try_from(row.kek_version).map_err(ServiceError::integrity_by("stored key material"))?;
        let wrapped = STANDARD.decode(&row.wrapped).map_err(ServiceError::integrity_by("stored key material"))?;
        let key = self.provider.unwrap(version, &tenant_aad(&row.tenant), &wrapped).map_err(provider_failure)?;
        let index = BlindIndexKey::derive(&key, &row.tenant).map_err(|e| {
            tracing::error!(error = %e, "blind-index key derivation failed");
            ServiceError::keys("key material")
        })?;
        Ok(Arc::new(TenantKeys { key, index }))
    }

    /// The tenant's keys, created (wrapped under the current master key) on first use.
    /// A concurrent creator's row wins cleanly.
    pub fn tenant(&self, tenant: &str) -> Result<Arc<TenantKeys>, ServiceError> {
        if let Some(keys) = self.cached(tenant) {
            return Ok(keys);
        }
        let mut conn = self.conn()?;
        let conn = &mut *conn;
        let row = match rows::find_tenant_key(conn, tenant)? {
            Some(row) => row,
            None => {
                let key = Key::generate().map_err(crypto_failure("random"))?;
                let version = self.provider.current_version().map_err(provider_failure)?;
                let wrapped = self.provider.wrap(version, &tenant_aad(tenant), &key).map_err(provider_failure)?;
                let row = TenantKeyRow {
                    tenant: tenant.to_owned(),
                    kek_version: i64::from(version),
                    wrapped: STANDARD.encode(wrapped),
                    created_at: Utc::now().naive_utc(),
                };
                // The loser of a race gets a unique violation and reads the winner's key.
                match rows::insert_tenant_key(conn, &row) {
                    Ok(()) => {}
                    Err(e) if crate::store::is_unique_violation(&e) => {}
                    Err(e) => return Err(e.into()),
                }
                rows::find_tenant_key(conn, tenant)?.ok_or(ServiceError::keys("key material"))?
            }
        };
        let keys = self.unwrap_tenant(&row)?;
        self.remember(tenant, &keys);
        Ok(keys)
    }

    fn unwrap_data_key(&self, tenant_keys: &TenantKeys, row: &DataKeyRow) -> Result<DataKey, ServiceError> {
        let Some(wrapped) = &row.wrapped else { return Err(ServiceError::Erased) };
        let key_id = u64::try_from(row.key_id).map_err(ServiceError::integrity_by("stored key material"))?;
        let wrapped = STANDARD.decode(wrapped).map_err(ServiceError::integrity_by("stored key material"))?;
        let key = Envelope::unwrap_key(&tenant_keys.key, TENANT_KEY_ID, &data_key_aad(&row.tenant, &row.owner, key_id), &wrapped)
            .map_err(crypto_failure("data key"))?;
        Ok(DataKey { key_id, key })
    }

    /// The data keys of `owners`; an owner without a key is absent, a destroyed key is
    /// `Err(Erased)`.
    pub fn data_keys(&self, tenant: &str, owners: &[String]) -> Result<HashMap<String, Result<DataKey, ServiceError>>, ServiceError> {
        let tenant_keys = self.tenant(tenant)?;
        let found = rows::find_data_keys(&mut *self.conn()?, tenant, owners)?;
        Ok(found.into_iter().map(|row| (row.owner.clone(), self.unwrap_data_key(&tenant_keys, &row))).collect())
    }

    /// The owner's data key, created if it has none. A new key commits in the key store
    /// (in a commit shared with other writes' new keys) before the write that asked for it:
    /// a write that then fails leaves an unused key behind, which the owner's next write
    /// takes.
    pub fn data_key_for_write(&self, tenant: &str, owner: &str) -> Result<DataKey, ServiceError> {
        if let Some(existing) = self.data_keys(tenant, &[owner.to_owned()])?.remove(owner) {
            return existing;
        }
        let tenant_keys = self.tenant(tenant)?;
        let (key, row) = self.new_data_key(&tenant_keys, tenant, owner)?;
        match self.new_keys.insert(row)? {
            new_keys::Inserted::Yes => Ok(key),
            // Another writer created the owner's key first: that one is the key.
            new_keys::Inserted::Exists => {
                self.data_keys(tenant, &[owner.to_owned()])?.remove(owner).unwrap_or(Err(ServiceError::keys("key material")))
            }
        }
    }

    /// A fresh data key for `owner`, and its key-store row (wrapped under the tenant key).
    fn new_data_key(&self, tenant_keys: &TenantKeys, tenant: &str, owner: &str) -> Result<(DataKey, DataKeyRow), ServiceError> {
        let key = Key::generate().map_err(crypto_failure("random"))?;
        // Random positive 63-bit ids: unique without a backend-specific sequence.
        let rng = ring::rand::SystemRandom::new();
        let key_id = loop {
            let bytes: [u8; 8] = ring::rand::generate(&rng).map_err(|_| ServiceError::keys("system random source failed"))?.expose();
            let candidate = u64::from_be_bytes(bytes) >> 1;
            if candidate != TENANT_KEY_ID {
                break candidate;
            }
        };
        let wrapped = Envelope::wrap(&tenant_keys.key, TENANT_KEY_ID, &data_key_aad(tenant, owner, key_id), &key)
            .map_err(crypto_failure("data key"))?;
        let row = DataKeyRow {
            key_id: i64::try_from(key_id).map_err(ServiceError::keys_by("key material"))?,
            tenant: tenant.to_owned(),
            owner: owner.to_owned(),
            wrapped: Some(STANDARD.encode(wrapped)),
            created_at: Utc::now().naive_utc(),
            destroyed_at: None,
            destroyed_reason: None,
        };
        Ok((DataKey { key_id, key }, row))
    }

    /// An id for a new `rtype` record that owns its data key (a Patient, a Practitioner),
    /// the key already durable, from the tenant's reserve; the create that finds the
    /// reserve empty refills it (one commit of [`RESERVE_BATCH`] keys) and takes one of
    /// the new keys. `None` for a type whose records do not own a key (clinical records use
    /// their patient's), and while another create refills the reserve: the caller then
    /// gets its owner's key with the write ([`Self::data_key_for_write`]).
    pub fn reserve(&self, tenant: &str, rtype: ResourceType) -> Result<Option<Reserved>, ServiceError> {
        if rtype.category() == Category::Clinical {
            return Ok(None);
        }
        let slot = (tenant.to_owned(), rtype);
        {
            let mut reserves = self.reserves.lock().map_err(|_| ServiceError::keys("key reserve"))?;
            let reserve = reserves.entry(slot.clone()).or_default();
            if let Some(reserved) = reserve.ready.pop() {
                return Ok(Some(reserved));
            }
            if reserve.refilling {
                return Ok(None);
            }
            reserve.refilling = true;
        }
        let refilled = self.refill(tenant, rtype);
        let mut reserves = self.reserves.lock().map_err(|_| ServiceError::keys("key reserve"))?;
        let reserve = reserves.entry(slot).or_default();
        reserve.refilling = false;
        let mut fresh = refilled?;
        let taken = fresh.pop();
        reserve.ready.append(&mut fresh);
        Ok(taken)
    }

    /// Returns an unused reserved owner (its create failed before anything was sealed
    /// under the key), for the next create to take.
    pub fn put_back(&self, tenant: &str, reserved: Reserved) {
        if let Ok(mut reserves) = self.reserves.lock() {
            reserves.entry((tenant.to_owned(), reserved.rtype)).or_default().ready.push(reserved);
        }
    }

    /// [`RESERVE_BATCH`] new owners with their keys, committed in the key store.
    fn refill(&self, tenant: &str, rtype: ResourceType) -> Result<Vec<Reserved>, ServiceError> {
        let tenant_keys = self.tenant(tenant)?;
        let mut made = Vec::with_capacity(RESERVE_BATCH);
        let mut key_rows = Vec::with_capacity(RESERVE_BATCH);
        for _ in 0..RESERVE_BATCH {
            let id = ResourceId::generate();
            let owner = crate::service::codec::owner(rtype, id.as_str(), None).ok_or(ServiceError::corrupt("reserved data key"))?;
            let (key, row) = self.new_data_key(&tenant_keys, tenant, &owner)?;
            made.push(Reserved { rtype, id, owner, key });
            key_rows.push(row);
        }
        let answers = self.new_keys.insert_all(key_rows);
        let mut durable = Vec::with_capacity(made.len());
        for (reserved, answer) in made.into_iter().zip(answers) {
            // `Exists` would mean a random id taken twice: that owner's key is not this one.
            if matches!(answer?, new_keys::Inserted::Yes) {
                durable.push(reserved);
            }
        }
        Ok(durable)
    }

    /// Whether the master-key provider can be used now (readiness). Expired tenant keys
    /// are dropped here too, so an idle server does not keep them.
    pub fn check(&self) -> Result<(), ServiceError> {
        if self.cache_for.is_some()
            && let Ok(mut cache) = self.tenants.write()
        {
            cache.retain(|_, (_, unwrapped)| self.fresh(*unwrapped));
        }
        self.provider.check().map_err(provider_failure)
    }

    /// Crypto-shredding: destroys the owner's data key in the key store, committed at once,
    /// recording `reason`. Every element sealed under it, in every row, version and copy of
    /// the records (backups included), can no longer be opened. Returns whether a live key
    /// was destroyed (false if there was none or it was already destroyed).
    pub fn destroy(&self, tenant: &str, owner: &str, reason: &str) -> Result<bool, ServiceError> {
        Ok(rows::destroy_data_key(&mut *self.conn()?, tenant, owner, Utc::now().naive_utc(), reason)?)
    }

    /// Why the owner's data key was destroyed, if it was and a reason was kept.
    pub fn destroyed_reason(&self, tenant: &str, owner: &str) -> Result<Option<String>, ServiceError> {
        Ok(rows::destroyed_reason(&mut *self.conn()?, tenant, owner)?)
    }

    /// Adds a master-key version and rewraps every tenant key under it. Safe while servers
    /// run: a tenant key is the same key under either wrapping, and each rewrap is a
    /// conditional update of one row. Returns the new version and how many were rewrapped.
    pub fn rotate(&self) -> Result<(u32, usize), ServiceError> {
        let mut conn = self.conn()?;
        let conn = &mut *conn;
        let version = self.provider.rotate().map_err(provider_failure)?;
        let current = self.provider.current_version().map_err(provider_failure)?;
        let mut rewrapped = 0;
        for row in rows::all_tenant_keys(conn)? {
            if row.kek_version == i64::from(current) {
                continue;
            }
            let keys = self.unwrap_tenant(&row)?;
            let wrapped = self.provider.wrap(current, &tenant_aad(&row.tenant), &keys.key).map_err(provider_failure)?;
            if rows::rewrap_tenant_key(conn, &row.tenant, row.kek_version, i64::from(current), &STANDARD.encode(wrapped))? {
                rewrapped += 1;
            }
        }
        Ok((version, rewrapped))
    }

    pub fn status(&self) -> Result<KeyStatus, ServiceError> {
        let mut conn = self.conn()?;
        let conn = &mut *conn;
        let versions = self.provider.versions().map_err(provider_failure)?;
        let tenant_rows = rows::all_tenant_keys(conn)?;
        let (live, destroyed) = rows::data_key_counts(conn)?;
        Ok(KeyStatus {
            development: self.provider.is_development(),
            location: self.provider.location(),
            versions: versions.into_iter().map(|v| (v, tenant_rows.iter().filter(|r| r.kek_version == i64::from(v)).count())).collect(),
            tenants: tenant_rows.iter().map(|r| (r.tenant.clone(), r.kek_version)).collect(),
            data_keys_live: live,
            data_keys_destroyed: destroyed,
        })
    }
}
