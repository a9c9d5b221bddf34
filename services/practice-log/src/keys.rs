//! Envelope encryption of notes.
//!
//! Each participant has one data key (AES-256), made when their first note
//! arrives. It is stored only wrapped by a master key that comes from
//! configuration, never from the database, so a copy of the database alone
//! opens nothing. Destroying the wrapped data key (ForgetParticipant) makes
//! every note of that participant unreadable for good, while the events
//! that carry the ciphertext stay as they are.
//!
//! Notes and data keys are sealed with AES-256-GCM-SIV. Its nonce misuse
//! resistance is what lets a note's nonce come from its event id: a retried
//! entry seals to the very same bytes, which the event store's idempotency
//! check then recognises as the same event.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sqlx::PgPool;
use tend_domain::practice::SealedNote;
use uuid::Uuid;
use zeroize::Zeroizing;

const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;
/// How long a data key stays in memory for writes. Another server's
/// `ForgetParticipant` is seen by this one within this time; a note sealed
/// meanwhile is sealed with a key that no longer exists anywhere else, so it
/// is as unreadable as the rest.
const WRITE_CACHE_TTL: Duration = Duration::from_secs(60);
const WRITE_CACHE_MAX: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no master key is configured (TEND_MASTER_KEYS): notes cannot be stored or read")]
    NoMasterKey,
    #[error("master key `{0}` wraps stored data keys but is not configured")]
    UnknownMasterKey(String),
    #[error("the participant's notes were erased at their request")]
    Forgotten,
    #[error("a sealed value failed authentication")]
    Corrupt,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// One master key: an id (stored beside each wrapped data key) and 32
/// bytes.
pub struct MasterKey {
    id: String,
    key: Zeroizing<[u8; KEY_BYTES]>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey").field("id", &self.id).finish()
    }
}

/// The configured master keys. The first wraps new data keys; every one can
/// unwrap, so an old key stays configured until `tend keys rotate` has
/// re-wrapped everything it wrapped.
#[derive(Clone)]
pub struct MasterKeys {
    keys: Arc<Vec<MasterKey>>,
}

impl fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("MasterKeys").field("ids", &ids).finish()
    }
}

impl FromStr for MasterKeys {
    type Err = String;

    /// `<id>:<base64 of 32 bytes>`, comma separated, the current key first.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut keys = Vec::new();
        for (n, item) in s.split(',').map(str::trim).enumerate() {
            let Some((id, encoded)) = item.split_once(':') else {
                return Err(format!("master key {}: expected <id>:<base64>", n + 1));
            };
            if id.is_empty()
                || id.len() > 32
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "master key {}: the id must be 1 to 32 letters, digits, - or _",
                    n + 1
                ));
            }
            let bytes = Zeroizing::new(
                B64.decode(encoded)
                    .map_err(|_| format!("master key `{id}`: not valid base64"))?,
            );
            let key: [u8; KEY_BYTES] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| format!("master key `{id}`: must be 32 bytes"))?;
            if keys.iter().any(|k: &MasterKey| k.id == id) {
                return Err(format!("master key `{id}` is listed twice"));
            }
            keys.push(MasterKey {
                id: id.to_owned(),
                key: Zeroizing::new(key),
            });
        }
        Ok(Self {
            keys: Arc::new(keys),
        })
    }
}

impl MasterKeys {
    /// A new random key, as a configuration entry `<id>:<base64>`.
    pub fn generate_entry(id: &str) -> Result<String, getrandom::Error> {
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        getrandom::fill(key.as_mut())?;
        Ok(format!("{id}:{}", B64.encode(key.as_ref())))
    }

    fn current(&self) -> &MasterKey {
        &self.keys[0]
    }

    fn get(&self, id: &str) -> Result<&MasterKey, Error> {
        self.keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| Error::UnknownMasterKey(id.to_owned()))
    }
}

/// A participant's data key, in memory only.
pub struct DataKey {
    pub id: Uuid,
    key: Zeroizing<[u8; KEY_BYTES]>,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey").field("id", &self.id).finish()
    }
}

fn cipher(key: &[u8; KEY_BYTES]) -> Aes256GcmSiv {
    Aes256GcmSiv::new(key.into())
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The operating system's generator failing leaves nothing safe to do.
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    bytes
}

fn wrap_aad(tenant: &str, participant: Uuid, key_id: Uuid) -> Vec<u8> {
    format!("tend/data-key/v1\0{tenant}\0{participant}\0{key_id}").into_bytes()
}

fn note_aad(tenant: &str, participant: Uuid, entry_id: Uuid, key_id: Uuid) -> Vec<u8> {
    format!("tend/note/v1\0{tenant}\0{participant}\0{entry_id}\0{key_id}").into_bytes()
}

fn wrap(
    master: &MasterKey,
    tenant: &str,
    participant: Uuid,
    key_id: Uuid,
    key: &[u8; KEY_BYTES],
) -> Vec<u8> {
    let nonce: [u8; NONCE_BYTES] = random();
    let aad = wrap_aad(tenant, participant, key_id);
    let sealed = cipher(&master.key)
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: key,
                aad: &aad,
            },
        )
        .expect("AES-GCM-SIV seals any 32-byte message");
    [nonce.as_slice(), &sealed].concat()
}

fn unwrap(
    master: &MasterKey,
    tenant: &str,
    participant: Uuid,
    key_id: Uuid,
    wrapped: &[u8],
) -> Result<DataKey, Error> {
    if wrapped.len() <= NONCE_BYTES {
        return Err(Error::Corrupt);
    }
    let (nonce, sealed) = wrapped.split_at(NONCE_BYTES);
    let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| Error::Corrupt)?;
    let aad = wrap_aad(tenant, participant, key_id);
    let plain = Zeroizing::new(
        cipher(&master.key)
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| Error::Corrupt)?,
    );
    let key: [u8; KEY_BYTES] = plain.as_slice().try_into().map_err(|_| Error::Corrupt)?;
    Ok(DataKey {
        id: key_id,
        key: Zeroizing::new(key),
    })
}

/// Seals a note of an entry. The nonce comes from the id of the event that
/// will carry it, so the same event seals to the same bytes.
pub fn seal(
    key: &DataKey,
    tenant: &str,
    participant: Uuid,
    entry_id: Uuid,
    event_id: Uuid,
    text: &str,
) -> SealedNote {
    let nonce: [u8; NONCE_BYTES] = event_id.as_bytes()[..NONCE_BYTES]
        .try_into()
        .expect("a UUID has 16 bytes");
    let aad = note_aad(tenant, participant, entry_id, key.id);
    let sealed = cipher(&key.key)
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: text.as_bytes(),
                aad: &aad,
            },
        )
        .expect("AES-GCM-SIV seals any note within the size limit");
    SealedNote {
        key_id: key.id,
        nonce: B64.encode(nonce),
        ciphertext: B64.encode(sealed),
    }
}

/// Opens a note sealed by `seal`.
pub fn open(
    key: &DataKey,
    tenant: &str,
    participant: Uuid,
    entry_id: Uuid,
    note: &SealedNote,
) -> Result<String, Error> {
    if note.key_id != key.id {
        return Err(Error::Corrupt);
    }
    let nonce: [u8; NONCE_BYTES] = B64
        .decode(&note.nonce)
        .map_err(|_| Error::Corrupt)?
        .try_into()
        .map_err(|_| Error::Corrupt)?;
    let sealed = B64.decode(&note.ciphertext).map_err(|_| Error::Corrupt)?;
    let aad = note_aad(tenant, participant, entry_id, key.id);
    let plain = cipher(&key.key)
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: &sealed,
                aad: &aad,
            },
        )
        .map_err(|_| Error::Corrupt)?;
    String::from_utf8(plain).map_err(|_| Error::Corrupt)
}

type Cache = HashMap<(String, Uuid), (Arc<DataKey>, Instant)>;

/// The participants' data keys in PostgreSQL, unwrapped with the
/// configured master keys. Cheap to clone.
#[derive(Debug, Clone)]
pub struct KeyRing {
    pool: PgPool,
    master: Option<MasterKeys>,
    cache: Arc<Mutex<Cache>>,
    /// Erasures made through this ring: a key read before one is not cached.
    erasures: Arc<AtomicU64>,
}

/// Whether a participant's key exists, for reading.
#[derive(Debug)]
pub enum ReadKey {
    /// No note was ever sealed for them.
    None,
    Erased,
    Key(DataKey),
}

impl KeyRing {
    pub fn new(pool: PgPool, master: Option<MasterKeys>) -> Self {
        Self {
            pool,
            master,
            cache: Arc::default(),
            erasures: Arc::default(),
        }
    }

    fn master(&self) -> Result<&MasterKeys, Error> {
        self.master.as_ref().ok_or(Error::NoMasterKey)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key to seal a new note with: made on first use.
    pub async fn for_write(&self, tenant: &str, participant: Uuid) -> Result<Arc<DataKey>, Error> {
        let master = self.master()?;
        let slot = (tenant.to_owned(), participant);
        let erasures = self.erasures.load(Ordering::SeqCst);
        if let Some((key, at)) = self.cache().get(&slot)
            && at.elapsed() < WRITE_CACHE_TTL
        {
            return Ok(key.clone());
        }
        let key = match self.read(tenant, participant).await? {
            ReadKey::Key(key) => key,
            ReadKey::Erased => return Err(Error::Forgotten),
            ReadKey::None => {
                let id = Uuid::new_v4();
                let key = Zeroizing::new(random::<KEY_BYTES>());
                let current = master.current();
                let wrapped = wrap(current, tenant, participant, id, &key);
                // Two first notes at once: one insert wins and both use it.
                sqlx::query(
                    "INSERT INTO practice_keys (tenant_id, participant_key, key_id, wrapped, master_key_id)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (tenant_id, participant_key) DO NOTHING",
                )
                .bind(tenant)
                .bind(participant)
                .bind(id)
                .bind(&wrapped)
                .bind(&current.id)
                .execute(&self.pool)
                .await?;
                match self.read(tenant, participant).await? {
                    ReadKey::Key(key) => key,
                    ReadKey::Erased => return Err(Error::Forgotten),
                    ReadKey::None => return Err(Error::Corrupt),
                }
            }
        };
        let key = Arc::new(key);
        if self.erasures.load(Ordering::SeqCst) != erasures {
            // An erasure ran on this server meanwhile: look again, and
            // keep nothing.
            return match self.read(tenant, participant).await? {
                ReadKey::Key(key) => Ok(Arc::new(key)),
                ReadKey::Erased | ReadKey::None => Err(Error::Forgotten),
            };
        }
        let mut cache = self.cache();
        if cache.len() >= WRITE_CACHE_MAX {
            cache.retain(|_, (_, at)| at.elapsed() < WRITE_CACHE_TTL);
            if cache.len() >= WRITE_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(slot, (key.clone(), Instant::now()));
        Ok(key)
    }

    /// The key to open notes with, read fresh from the database: an erasure
    /// on any server is seen at once.
    pub async fn read(&self, tenant: &str, participant: Uuid) -> Result<ReadKey, Error> {
        let row: Option<(Uuid, Option<Vec<u8>>, Option<String>)> = sqlx::query_as(
            "SELECT key_id, wrapped, master_key_id FROM practice_keys
             WHERE tenant_id = $1 AND participant_key = $2",
        )
        .bind(tenant)
        .bind(participant)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            None => Ok(ReadKey::None),
            Some((_, None, _)) | Some((_, _, None)) => Ok(ReadKey::Erased),
            Some((id, Some(wrapped), Some(master_id))) => {
                let master = self.master()?.get(&master_id)?;
                Ok(ReadKey::Key(unwrap(
                    master,
                    tenant,
                    participant,
                    id,
                    &wrapped,
                )?))
            }
        }
    }

    /// Destroys the participant's data key, and marks them so that no new
    /// one is ever made. Returns how many keys this call destroyed.
    pub async fn forget(&self, tenant: &str, participant: Uuid) -> Result<u32, Error> {
        // A server that read the key before this erasure must not cache it
        // after.
        self.erasures.fetch_add(1, Ordering::SeqCst);
        let mut tx = self.pool.begin().await?;
        // First a row, ours or one being made for a first note (the insert
        // waits for that to commit): after this, no new key can appear.
        sqlx::query(
            "INSERT INTO practice_keys
                (tenant_id, participant_key, key_id, wrapped, master_key_id, destroyed_at)
             VALUES ($1, $2, $3, NULL, NULL, now())
             ON CONFLICT (tenant_id, participant_key) DO NOTHING",
        )
        .bind(tenant)
        .bind(participant)
        .bind(Uuid::new_v4())
        .execute(&mut *tx)
        .await?;
        let destroyed = sqlx::query(
            "UPDATE practice_keys SET wrapped = NULL, master_key_id = NULL, destroyed_at = now()
             WHERE tenant_id = $1 AND participant_key = $2 AND wrapped IS NOT NULL",
        )
        .bind(tenant)
        .bind(participant)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        self.cache().remove(&(tenant.to_owned(), participant));
        Ok(u32::try_from(destroyed).unwrap_or(u32::MAX))
    }

    /// Re-wraps every data key not wrapped by the current master key.
    /// Returns how many it re-wrapped. Safe to run while servers serve, and
    /// to run again.
    pub async fn rotate(&self) -> Result<u64, Error> {
        let master = self.master()?;
        let current = master.current();
        let mut done = 0;
        loop {
            let rows: Vec<(String, Uuid, Uuid, Vec<u8>, String)> = sqlx::query_as(
                "SELECT tenant_id, participant_key, key_id, wrapped, master_key_id
                 FROM practice_keys
                 WHERE wrapped IS NOT NULL AND master_key_id <> $1
                 LIMIT 500",
            )
            .bind(&current.id)
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                return Ok(done);
            }
            for (tenant, participant, key_id, wrapped, old) in rows {
                let key = unwrap(master.get(&old)?, &tenant, participant, key_id, &wrapped)?;
                let rewrapped = wrap(current, &tenant, participant, key_id, &key.key);
                // Only if nothing changed meanwhile (an erasure wins).
                let updated = sqlx::query(
                    "UPDATE practice_keys SET wrapped = $4, master_key_id = $5
                     WHERE tenant_id = $1 AND participant_key = $2 AND key_id = $3
                       AND master_key_id = $6 AND wrapped IS NOT NULL",
                )
                .bind(&tenant)
                .bind(participant)
                .bind(key_id)
                .bind(&rewrapped)
                .bind(&current.id)
                .bind(&old)
                .execute(&self.pool)
                .await?;
                done += updated.rows_affected();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(s: &str) -> MasterKeys {
        s.parse().unwrap()
    }

    #[test]
    fn parses_master_keys_and_refuses_malformed_ones() {
        let entry = MasterKeys::generate_entry("k1").unwrap();
        let parsed = keys(&format!(
            "{entry}, {}",
            MasterKeys::generate_entry("k0").unwrap()
        ));
        assert_eq!(parsed.current().id, "k1");
        assert!(parsed.get("k0").is_ok());
        for bad in [
            "k1",
            ":AAAA",
            "k 1:AAAA",
            "k1:not base64!",
            "k1:AAAA",
            &format!("{entry},{entry}"),
        ] {
            assert!(bad.parse::<MasterKeys>().is_err(), "{bad}");
        }
        // The key bytes never show in debug output.
        assert!(!format!("{parsed:?}").contains(entry.split_once(':').unwrap().1));
    }

    #[test]
    fn a_note_opens_only_with_its_key_and_its_entry() {
        let key = DataKey {
            id: Uuid::from_u128(1),
            key: Zeroizing::new(random()),
        };
        let entry = Uuid::from_u128(2);
        let event = Uuid::from_u128(3);
        let p = Uuid::from_u128(4);
        let sealed = seal(&key, "t", p, entry, event, "a kind thought");
        assert!(!sealed.ciphertext.contains("kind"));
        assert_eq!(
            open(&key, "t", p, entry, &sealed).unwrap(),
            "a kind thought"
        );
        // The same event seals to the same bytes: retries stay identical.
        assert_eq!(seal(&key, "t", p, entry, event, "a kind thought"), sealed);
        assert!(open(&key, "t", p, Uuid::from_u128(9), &sealed).is_err());
        assert!(open(&key, "u", p, entry, &sealed).is_err());
        let other = DataKey {
            id: Uuid::from_u128(1),
            key: Zeroizing::new(random()),
        };
        assert!(open(&other, "t", p, entry, &sealed).is_err());
    }

    #[test]
    fn a_wrapped_key_unwraps_only_with_its_master_and_owner() {
        let masters = keys(&MasterKeys::generate_entry("k1").unwrap());
        let other = keys(&MasterKeys::generate_entry("k1").unwrap());
        let p = Uuid::from_u128(4);
        let id = Uuid::from_u128(5);
        let key: [u8; KEY_BYTES] = random();
        let wrapped = wrap(masters.current(), "t", p, id, &key);
        assert_eq!(
            *unwrap(masters.current(), "t", p, id, &wrapped).unwrap().key,
            key
        );
        assert!(unwrap(other.current(), "t", p, id, &wrapped).is_err());
        assert!(unwrap(masters.current(), "t", Uuid::from_u128(6), id, &wrapped).is_err());
    }
}
