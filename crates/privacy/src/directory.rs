//! The directory of participants: the only place a partner's reference is
//! kept, sealed with the participant's data key, with a keyed hash of it
//! for lookups. Everything else names the participant by their opaque id.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::keys::{DataKey, MasterKeys, lookup_hash, lookup_key, open_ref, seal_ref, unwrap, wrap};
use crate::{Error, legacy};

/// How long a found reference stays in memory. An erasure on this server
/// takes effect at once; on another server, within this time (and what that
/// server writes meanwhile names the participant only by their opaque id).
const FOUND_TTL: Duration = Duration::from_secs(30);
/// How long a data key stays in memory for sealing. A note sealed after an
/// erasure on another server is sealed with a key that no longer exists
/// anywhere else, so it is as unreadable as the rest.
const WRITE_KEY_TTL: Duration = Duration::from_secs(60);
const CACHE_MAX: usize = 100_000;
/// Connections for registrations, beside the main pool.
const REGISTRATION_CONNECTIONS: u32 = 8;

type Found = HashMap<(String, [u8; 32]), (Uuid, Instant)>;
type WriteKeys = HashMap<(String, Uuid), (Arc<DataKey>, Instant)>;

/// Whether a participant's data key exists, for reading.
#[derive(Debug)]
pub enum ReadKey {
    /// Nothing was ever sealed for them.
    None,
    Erased,
    Key(DataKey),
}

/// The participants' directory in PostgreSQL, opened with the configured
/// master keys. Cheap to clone.
#[derive(Clone)]
pub struct Directory {
    pool: PgPool,
    /// Connections whose commits do not wait for the disk: registrations
    /// only (see `register`).
    registrations: PgPool,
    master: MasterKeys,
    /// The lookup key derived from each master key, the current one first.
    lookup_keys: Arc<Vec<(String, Zeroizing<[u8; 32]>)>>,
    found: Arc<Mutex<Found>>,
    write_keys: Arc<Mutex<WriteKeys>>,
    /// Erasures made through this directory: what was read before one is
    /// not cached after it.
    erasures: Arc<AtomicU64>,
    /// Whether participants written before opaque ids may still be adopted.
    legacy: Arc<AtomicBool>,
}

impl fmt::Debug for Directory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Directory")
            .field("master", &self.master)
            .finish_non_exhaustive()
    }
}

/// What an erasure is recorded under: the id its request derives, and the
/// time the participant's log says they were erased.
#[derive(Debug, Clone, Copy)]
pub struct Receipt {
    pub erasure_id: Uuid,
    pub erased_at: DateTime<Utc>,
}

/// What `rotate` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rotated {
    /// Data keys re-wrapped with the current master key.
    pub keys: u64,
    /// Lookup hashes recomputed with the current master key's lookup key.
    pub lookups: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps are consistent after any panic: entries are whole.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn bound<K, V>(map: &mut HashMap<K, (V, Instant)>, ttl: Duration) {
    if map.len() >= CACHE_MAX {
        map.retain(|_, (_, at)| at.elapsed() < ttl);
        if map.len() >= CACHE_MAX {
            map.clear();
        }
    }
}

impl Directory {
    /// The directory of a migrated database.
    pub async fn open(pool: PgPool, master: MasterKeys) -> Result<Self, Error> {
        let legacy: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM legacy_participants)")
            .fetch_one(&pool)
            .await?;
        let lookup_keys = master
            .all()
            .map(|m| (m.id.clone(), lookup_key(m)))
            .collect();
        // Opened lazily: a server that registers no one opens none.
        let registrations = PgPoolOptions::new()
            .max_connections(REGISTRATION_CONNECTIONS)
            .min_connections(0)
            .connect_lazy_with(
                (*pool.connect_options())
                    .clone()
                    .options([("synchronous_commit", "off")]),
            );
        Ok(Self {
            pool,
            registrations,
            master,
            lookup_keys: Arc::new(lookup_keys),
            found: Arc::default(),
            write_keys: Arc::default(),
            erasures: Arc::default(),
            legacy: Arc::new(AtomicBool::new(legacy)),
        })
    }

    /// Closes the directory's own connections (the main pool is the
    /// caller's to close).
    pub async fn close(&self) {
        self.registrations.close().await;
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub(crate) fn master(&self) -> &MasterKeys {
        &self.master
    }

    fn current_hash(&self, tenant: &str, reference: &str) -> [u8; 32] {
        lookup_hash(&self.lookup_keys[0].1, tenant, reference)
    }

    /// The participant a reference names, if it names one.
    pub async fn find(&self, tenant: &str, reference: &str) -> Result<Option<Uuid>, Error> {
        let hash = self.current_hash(tenant, reference);
        let slot = (tenant.to_owned(), hash);
        if let Some((id, at)) = lock(&self.found).get(&slot)
            && at.elapsed() < FOUND_TTL
        {
            return Ok(Some(*id));
        }
        let erasures = self.erasures.load(Ordering::SeqCst);
        // One statement over the hash under every configured key: a row
        // being re-hashed by a rotation has exactly one of them at a time.
        let hashes: Vec<Vec<u8>> = self
            .lookup_keys
            .iter()
            .map(|(_, k)| lookup_hash(k, tenant, reference).to_vec())
            .collect();
        let mut found: Option<Uuid> = sqlx::query_scalar(
            "SELECT participant_id FROM participants
             WHERE tenant_id = $1 AND ref_hash = ANY($2) AND wrapped_key IS NOT NULL",
        )
        .bind(tenant)
        .bind(&hashes)
        .fetch_optional(&self.pool)
        .await?;
        if found.is_none() && self.legacy.load(Ordering::Relaxed) {
            found = legacy::adopt_on_lookup(self, tenant, reference).await?;
        }
        if let Some(id) = found
            && self.erasures.load(Ordering::SeqCst) == erasures
        {
            let mut cache = lock(&self.found);
            bound(&mut cache, FOUND_TTL);
            cache.insert(slot, (id, Instant::now()));
        }
        Ok(found)
    }

    /// The participant a reference names, from memory only: `None` when it
    /// is not cached (which says nothing about the database).
    pub fn cached(&self, tenant: &str, reference: &str) -> Option<Uuid> {
        let slot = (tenant.to_owned(), self.current_hash(tenant, reference));
        lock(&self.found)
            .get(&slot)
            .filter(|(_, at)| at.elapsed() < FOUND_TTL)
            .map(|(id, _)| *id)
    }

    /// The participant a reference names, registered with a new opaque id
    /// and data key if it names none yet.
    pub async fn find_or_register(&self, tenant: &str, reference: &str) -> Result<Uuid, Error> {
        if let Some(id) = self.find(tenant, reference).await? {
            return Ok(id);
        }
        Ok(self.register_or_find(tenant, reference).await?.0)
    }

    /// Like `find_or_register`, for a caller that expects someone new: it
    /// tries to register first, and looks the reference up only if it is
    /// taken. One round trip for someone new, two for someone known. Says
    /// whether the participant is new (this call registered them: nothing
    /// of theirs exists yet).
    pub async fn register_or_find(
        &self,
        tenant: &str,
        reference: &str,
    ) -> Result<(Uuid, bool), Error> {
        if self.legacy.load(Ordering::Relaxed) {
            // Someone an earlier release knew must be adopted, not made anew.
            if let Some(id) = self.find(tenant, reference).await? {
                return Ok((id, false));
            }
        }
        for _ in 0..2 {
            if let Some(id) = self.register(tenant, reference).await? {
                return Ok((id, true));
            }
            // Another call registered the reference first.
            if let Some(id) = self.find(tenant, reference).await? {
                return Ok((id, false));
            }
            // The hash is held by an entry whose key a previous release
            // destroyed: that person is erased, so the hash goes too.
            sqlx::query(
                "UPDATE participants SET ref_hash = NULL, hash_key_id = NULL, sealed_ref = NULL
                 WHERE tenant_id = $1 AND ref_hash = $2 AND wrapped_key IS NULL",
            )
            .bind(tenant)
            .bind(self.current_hash(tenant, reference).as_slice())
            .execute(&self.pool)
            .await?;
        }
        Err(Error::Corrupt)
    }

    /// Inserts a new entry; `None` when the reference is already taken.
    async fn register(&self, tenant: &str, reference: &str) -> Result<Option<Uuid>, Error> {
        let id = Uuid::new_v4();
        let key = DataKey::generate();
        let current = self.master.current();
        let wrapped = wrap(current, tenant, id, key.id, &key.key);
        let sealed = seal_ref(&key, tenant, id, reference);
        let hash = self.current_hash(tenant, reference);
        // On a connection with `synchronous_commit = off`: the insert is not
        // flushed on its own. Every caller goes on to append an event
        // through the event store, whose durable commit comes later in the
        // same write-ahead log and so flushes this entry with it. If that
        // append never happens, losing the entry in a crash loses nothing.
        let inserted: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO participants
                (tenant_id, participant_id, ref_hash, hash_key_id, sealed_ref,
                 key_id, wrapped_key, master_key_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (tenant_id, ref_hash) WHERE ref_hash IS NOT NULL DO NOTHING
             RETURNING participant_id",
        )
        .bind(tenant)
        .bind(id)
        .bind(hash.as_slice())
        .bind(&self.lookup_keys[0].0)
        .bind(&sealed)
        .bind(key.id)
        .bind(&wrapped)
        .bind(&current.id)
        .fetch_optional(&self.registrations)
        .await?;
        if let Some(id) = inserted {
            let mut found = lock(&self.found);
            bound(&mut found, FOUND_TTL);
            found.insert((tenant.to_owned(), hash), (id, Instant::now()));
        }
        if inserted.is_some() {
            let mut cache = lock(&self.write_keys);
            bound(&mut cache, WRITE_KEY_TTL);
            cache.insert((tenant.to_owned(), id), (Arc::new(key), Instant::now()));
        }
        Ok(inserted)
    }

    /// The references of these participants; the erased (and the unknown)
    /// are left out.
    pub async fn references(
        &self,
        tenant: &str,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, String>, Error> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        /// Participant, key id, wrapped key, master key id, sealed reference.
        type Row = (Uuid, Uuid, Vec<u8>, String, Vec<u8>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT participant_id, key_id, wrapped_key, master_key_id, sealed_ref
             FROM participants
             WHERE tenant_id = $1 AND participant_id = ANY($2)
               AND wrapped_key IS NOT NULL AND sealed_ref IS NOT NULL",
        )
        .bind(tenant)
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        let mut out = HashMap::with_capacity(rows.len());
        for (id, key_id, wrapped, master_id, sealed) in rows {
            let key = unwrap(self.master.get(&master_id)?, tenant, id, key_id, &wrapped)?;
            out.insert(id, open_ref(&key, tenant, id, &sealed)?);
        }
        Ok(out)
    }

    /// The key to seal something new of the participant's with.
    pub async fn key_for_write(
        &self,
        tenant: &str,
        participant: Uuid,
    ) -> Result<Arc<DataKey>, Error> {
        let slot = (tenant.to_owned(), participant);
        let erasures = self.erasures.load(Ordering::SeqCst);
        if let Some((key, at)) = lock(&self.write_keys).get(&slot)
            && at.elapsed() < WRITE_KEY_TTL
        {
            return Ok(key.clone());
        }
        let key = match self.key_for_read(tenant, participant).await? {
            ReadKey::Key(key) => key,
            ReadKey::Erased => return Err(Error::Erased),
            ReadKey::None => {
                // An entry of an earlier release's participant that never
                // had a key: one is made, once.
                let key = DataKey::generate();
                let current = self.master.current();
                sqlx::query(
                    "INSERT INTO participants
                        (tenant_id, participant_id, key_id, wrapped_key, master_key_id)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (tenant_id, participant_id) DO NOTHING",
                )
                .bind(tenant)
                .bind(participant)
                .bind(key.id)
                .bind(wrap(current, tenant, participant, key.id, &key.key))
                .bind(&current.id)
                .execute(&self.pool)
                .await?;
                match self.key_for_read(tenant, participant).await? {
                    ReadKey::Key(key) => key,
                    ReadKey::Erased => return Err(Error::Erased),
                    ReadKey::None => return Err(Error::Corrupt),
                }
            }
        };
        let key = Arc::new(key);
        if self.erasures.load(Ordering::SeqCst) != erasures {
            // An erasure ran on this server meanwhile: look again, and keep
            // nothing.
            return match self.key_for_read(tenant, participant).await? {
                ReadKey::Key(key) => Ok(Arc::new(key)),
                ReadKey::Erased | ReadKey::None => Err(Error::Erased),
            };
        }
        let mut cache = lock(&self.write_keys);
        bound(&mut cache, WRITE_KEY_TTL);
        cache.insert(slot, (key.clone(), Instant::now()));
        Ok(key)
    }

    /// The key to open what was sealed for the participant, read fresh: an
    /// erasure on any server is seen at once.
    pub async fn key_for_read(&self, tenant: &str, participant: Uuid) -> Result<ReadKey, Error> {
        let row: Option<(Uuid, Option<Vec<u8>>, Option<String>)> = sqlx::query_as(
            "SELECT key_id, wrapped_key, master_key_id FROM participants
             WHERE tenant_id = $1 AND participant_id = $2",
        )
        .bind(tenant)
        .bind(participant)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            None => Ok(ReadKey::None),
            Some((_, None, _)) | Some((_, _, None)) => Ok(ReadKey::Erased),
            Some((id, Some(wrapped), Some(master_id))) => Ok(ReadKey::Key(unwrap(
                self.master.get(&master_id)?,
                tenant,
                participant,
                id,
                &wrapped,
            )?)),
        }
    }

    /// Erases the participant: destroys their data key, sealed reference
    /// and lookup hash, and removes the reference from anything an earlier
    /// release wrote. Afterwards a lookup by their reference finds nothing
    /// and nothing sealed for them opens again. Idempotent; returns whether
    /// this call destroyed anything.
    pub async fn erase(
        &self,
        tenant: &str,
        participant: Uuid,
        receipt: Receipt,
    ) -> Result<bool, Error> {
        // A call that read the entry before this erasure must not cache it
        // after.
        self.erasures.fetch_add(1, Ordering::SeqCst);
        let mut tx = self.pool.begin().await?;
        // First a row, ours or one being made (the insert waits for that to
        // commit): after this, no new key for them can appear.
        sqlx::query(
            "INSERT INTO participants (tenant_id, participant_id, key_id, erased_at)
             VALUES ($1, $2, $3, now())
             ON CONFLICT (tenant_id, participant_id) DO NOTHING",
        )
        .bind(tenant)
        .bind(participant)
        .bind(Uuid::new_v4())
        .execute(&mut *tx)
        .await?;
        let destroyed = sqlx::query(
            "UPDATE participants
             SET ref_hash = NULL, hash_key_id = NULL, sealed_ref = NULL,
                 wrapped_key = NULL, master_key_id = NULL,
                 erased_at = coalesce(erased_at, now())
             WHERE tenant_id = $1 AND participant_id = $2
               AND (wrapped_key IS NOT NULL OR ref_hash IS NOT NULL
                    OR sealed_ref IS NOT NULL OR erased_at IS NULL)",
        )
        .bind(tenant)
        .bind(participant)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        legacy::forget(&mut tx, tenant, participant).await?;
        sqlx::query(
            "INSERT INTO erasures (tenant_id, erasure_id, participant_id, erased_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (tenant_id, erasure_id) DO NOTHING",
        )
        .bind(tenant)
        .bind(receipt.erasure_id)
        .bind(participant)
        .bind(receipt.erased_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        lock(&self.write_keys).remove(&(tenant.to_owned(), participant));
        lock(&self.found).retain(|(t, _), (id, _)| !(t == tenant && *id == participant));
        Ok(destroyed > 0)
    }

    /// The erasure a request id made, if it made one: the participant and
    /// when.
    pub async fn receipt(
        &self,
        tenant: &str,
        erasure_id: Uuid,
    ) -> Result<Option<(Uuid, DateTime<Utc>)>, Error> {
        Ok(sqlx::query_as(
            "SELECT participant_id, erased_at FROM erasures
             WHERE tenant_id = $1 AND erasure_id = $2",
        )
        .bind(tenant)
        .bind(erasure_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Re-wraps every data key, and re-hashes every lookup, not made with
    /// the current master key. Safe to run while servers serve, and to run
    /// again.
    pub async fn rotate(&self) -> Result<Rotated, Error> {
        let current = self.master.current();
        let (current_lookup_id, current_lookup) = &self.lookup_keys[0];
        let mut done = Rotated::default();
        // One pass in key order (no index on the key columns: every
        // registration would pay for it, a rotation is rare).
        let mut after: Option<(String, Uuid)> = None;
        loop {
            type Row = (
                String,
                Uuid,
                Uuid,
                Vec<u8>,
                String,
                Option<Vec<u8>>,
                Option<String>,
            );
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT tenant_id, participant_id, key_id, wrapped_key, master_key_id,
                        sealed_ref, hash_key_id
                 FROM participants
                 WHERE wrapped_key IS NOT NULL
                   AND ($1::text IS NULL OR (tenant_id, participant_id) > ($1, $2))
                 ORDER BY tenant_id, participant_id
                 LIMIT 500",
            )
            .bind(after.as_ref().map(|(t, _)| t.as_str()))
            .bind(after.as_ref().map(|(_, p)| *p))
            .fetch_all(&self.pool)
            .await?;
            let Some(last) = rows.last() else {
                return Ok(done);
            };
            after = Some((last.0.clone(), last.1));
            for (tenant, participant, key_id, wrapped, old, sealed, hash_key) in rows {
                let stale_hash =
                    sealed.is_some() && hash_key.as_ref().is_some_and(|id| id != current_lookup_id);
                if old == current.id && !stale_hash {
                    continue;
                }
                let key = unwrap(
                    self.master.get(&old)?,
                    &tenant,
                    participant,
                    key_id,
                    &wrapped,
                )?;
                let rewrapped = wrap(current, &tenant, participant, key_id, &key.key);
                let rehash = match (&sealed, &hash_key) {
                    (Some(sealed), Some(id)) if id != current_lookup_id => {
                        let reference =
                            Zeroizing::new(open_ref(&key, &tenant, participant, sealed)?);
                        Some(lookup_hash(current_lookup, &tenant, &reference))
                    }
                    _ => None,
                };
                // Only if nothing changed meanwhile (an erasure wins).
                let updated = sqlx::query(
                    "UPDATE participants
                     SET wrapped_key = $4, master_key_id = $5,
                         ref_hash = coalesce($6, ref_hash),
                         hash_key_id = CASE WHEN $6 IS NULL THEN hash_key_id ELSE $5 END
                     WHERE tenant_id = $1 AND participant_id = $2 AND key_id = $3
                       AND master_key_id = $7 AND wrapped_key IS NOT NULL
                       AND hash_key_id IS NOT DISTINCT FROM $8",
                )
                .bind(&tenant)
                .bind(participant)
                .bind(key_id)
                .bind(&rewrapped)
                .bind(&current.id)
                .bind(rehash.as_ref().map(|h| h.as_slice()))
                .bind(&old)
                .bind(&hash_key)
                .execute(&self.pool)
                .await?
                .rows_affected();
                if updated > 0 {
                    if old != current.id {
                        done.keys += 1;
                    }
                    if rehash.is_some() {
                        done.lookups += 1;
                    }
                }
            }
        }
    }

    pub(crate) fn legacy_done(&self) {
        self.legacy.store(false, Ordering::Relaxed);
    }
}

pub(crate) type Tx = Transaction<'static, Postgres>;
