//! Envelope encryption: master keys from configuration wrap one data key
//! per participant, and the data key seals what identifies or is written
//! by that participant (their partner reference, their practice notes).
//!
//! Master keys never come from the database, so a copy of the database
//! alone opens nothing. Destroying a participant's wrapped data key makes
//! everything sealed with it unreadable for good, while the events that
//! carry the ciphertext stay as they are.
//!
//! Everything is sealed with AES-256-GCM-SIV. Its nonce misuse resistance
//! is what lets a note's nonce come from its event id: a retried entry
//! seals to the very same bytes, which the event store's idempotency check
//! then recognises as the same event.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit as _, Mac};
use sha2_hmac::Sha256;
use uuid::Uuid;
use zeroize::Zeroizing;

use tend_domain::practice::SealedNote;

use crate::Error;

pub(crate) const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;

/// One master key: an id (stored beside each wrapped data key) and 32
/// bytes.
pub struct MasterKey {
    pub(crate) id: String,
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

    pub(crate) fn current(&self) -> &MasterKey {
        &self.keys[0]
    }

    /// Every configured key, the current one first.
    pub(crate) fn all(&self) -> impl Iterator<Item = &MasterKey> {
        self.keys.iter()
    }

    pub(crate) fn get(&self, id: &str) -> Result<&MasterKey, Error> {
        self.keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| Error::UnknownMasterKey(id.to_owned()))
    }
}

/// A secret of the operator's (a webhook endpoint's signing secret)
/// sealed with a master key, bound to what it is for (`purpose`) and whose
/// it is (`owner`), so that a sealed value moved elsewhere does not open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSecret {
    pub master_key_id: String,
    /// Nonce, then ciphertext with its tag.
    pub sealed: Vec<u8>,
}

fn secret_aad(purpose: &str, owner: &str) -> Vec<u8> {
    format!("tend/secret/v1\0{purpose}\0{owner}").into_bytes()
}

impl MasterKeys {
    /// Seals `secret` with the current master key.
    pub fn seal_secret(&self, purpose: &str, owner: &str, secret: &[u8]) -> SealedSecret {
        let master = self.current();
        SealedSecret {
            master_key_id: master.id.clone(),
            sealed: seal_random_nonce(&master.key, &secret_aad(purpose, owner), secret),
        }
    }

    /// Opens a secret `seal_secret` sealed, with whichever configured master
    /// key sealed it.
    pub fn open_secret(
        &self,
        purpose: &str,
        owner: &str,
        secret: &SealedSecret,
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let master = self.get(&secret.master_key_id)?;
        open_random_nonce(&master.key, &secret_aad(purpose, owner), &secret.sealed)
    }
}

/// A participant's data key, in memory only.
pub struct DataKey {
    pub id: Uuid,
    pub(crate) key: Zeroizing<[u8; KEY_BYTES]>,
}

impl DataKey {
    /// A new random key.
    pub(crate) fn generate() -> Self {
        Self {
            id: Uuid::new_v4(),
            key: Zeroizing::new(random()),
        }
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey").field("id", &self.id).finish()
    }
}

fn cipher(key: &[u8; KEY_BYTES]) -> Aes256GcmSiv {
    Aes256GcmSiv::new(key.into())
}

/// `msg` sealed under `key` with a random nonce, which is kept in front of
/// the ciphertext: how data keys, references and operator secrets are kept.
fn seal_random_nonce(key: &[u8; KEY_BYTES], aad: &[u8], msg: &[u8]) -> Vec<u8> {
    let nonce: [u8; NONCE_BYTES] = random();
    let sealed = cipher(key)
        .encrypt(&Nonce::from(nonce), Payload { msg, aad })
        .expect("AES-GCM-SIV seals any message of the sizes sealed here");
    [nonce.as_slice(), &sealed].concat()
}

/// Opens what `seal_random_nonce` sealed.
fn open_random_nonce(
    key: &[u8; KEY_BYTES],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, Error> {
    if sealed.len() <= NONCE_BYTES {
        return Err(Error::Corrupt);
    }
    let (nonce, body) = sealed.split_at(NONCE_BYTES);
    let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| Error::Corrupt)?;
    cipher(key)
        .decrypt(&Nonce::from(nonce), Payload { msg: body, aad })
        .map(Zeroizing::new)
        .map_err(|_| Error::Corrupt)
}

pub(crate) fn random<const N: usize>() -> [u8; N] {
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

pub(crate) fn wrap(
    master: &MasterKey,
    tenant: &str,
    participant: Uuid,
    key_id: Uuid,
    key: &[u8; KEY_BYTES],
) -> Vec<u8> {
    seal_random_nonce(&master.key, &wrap_aad(tenant, participant, key_id), key)
}

pub(crate) fn unwrap(
    master: &MasterKey,
    tenant: &str,
    participant: Uuid,
    key_id: Uuid,
    wrapped: &[u8],
) -> Result<DataKey, Error> {
    let plain = open_random_nonce(&master.key, &wrap_aad(tenant, participant, key_id), wrapped)?;
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

fn ref_aad(tenant: &str, participant: Uuid, key_id: Uuid) -> Vec<u8> {
    format!("tend/participant-ref/v1\0{tenant}\0{participant}\0{key_id}").into_bytes()
}

/// Seals a participant's partner reference with their data key (a random
/// nonce, kept in front of the ciphertext).
pub(crate) fn seal_ref(key: &DataKey, tenant: &str, participant: Uuid, reference: &str) -> Vec<u8> {
    seal_random_nonce(
        &key.key,
        &ref_aad(tenant, participant, key.id),
        reference.as_bytes(),
    )
}

/// Opens a reference sealed by `seal_ref`.
pub(crate) fn open_ref(
    key: &DataKey,
    tenant: &str,
    participant: Uuid,
    sealed: &[u8],
) -> Result<String, Error> {
    let plain = open_random_nonce(&key.key, &ref_aad(tenant, participant, key.id), sealed)?;
    String::from_utf8(plain.to_vec()).map_err(|_| Error::Corrupt)
}

/// HMAC-SHA-256 of `parts`, each followed by a zero byte so that no two
/// different lists hash alike.
pub(crate) fn keyed_hash(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256>>::new_from_slice(key).expect("HMAC takes a key of any length");
    for part in parts {
        mac.update(part);
        mac.update(&[0]);
    }
    mac.finalize().into_bytes().into()
}

/// The key that reference lookups are hashed with, derived from a master
/// key: like the master key, it is never in the database, so a dump and a
/// list of candidate references cannot be matched against the lookup
/// column.
pub(crate) fn lookup_key(master: &MasterKey) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(keyed_hash(
        master.key.as_ref(),
        &[b"tend/ref-lookup-key/v1"],
    ))
}

/// The lookup hash of a reference within a tenant.
pub(crate) fn lookup_hash(lookup_key: &[u8; 32], tenant: &str, reference: &str) -> [u8; 32] {
    keyed_hash(
        lookup_key,
        &[
            b"tend/ref-lookup/v1",
            tenant.as_bytes(),
            reference.as_bytes(),
        ],
    )
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
    fn a_secret_opens_only_for_its_purpose_and_owner_with_an_older_key_too() {
        let old = keys(&MasterKeys::generate_entry("k0").unwrap());
        let sealed = old.seal_secret("webhook", "clinic/e1", b"shh");
        assert_eq!(sealed.master_key_id, "k0");
        let rotated = keys(&format!(
            "{},{}",
            MasterKeys::generate_entry("k1").unwrap(),
            MasterKeys::generate_entry("k0").unwrap()
        ));
        // Another k0: the bytes differ, so it does not open.
        assert!(
            rotated
                .open_secret("webhook", "clinic/e1", &sealed)
                .is_err()
        );
        assert_eq!(
            old.open_secret("webhook", "clinic/e1", &sealed)
                .unwrap()
                .as_slice(),
            b"shh"
        );
        assert!(old.open_secret("webhook", "clinic/e2", &sealed).is_err());
        assert!(old.open_secret("notes", "clinic/e1", &sealed).is_err());
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

    #[test]
    fn a_reference_opens_only_with_its_key_and_owner_and_its_lookup_needs_the_master() {
        let key = DataKey::generate();
        let p = Uuid::from_u128(4);
        let sealed = seal_ref(&key, "t", p, "MRN-0001");
        assert!(!String::from_utf8_lossy(&sealed).contains("MRN"));
        assert_eq!(open_ref(&key, "t", p, &sealed).unwrap(), "MRN-0001");
        assert!(open_ref(&key, "t", Uuid::from_u128(5), &sealed).is_err());
        assert!(open_ref(&key, "u", p, &sealed).is_err());
        assert!(open_ref(&DataKey::generate(), "t", p, &sealed).is_err());
        // Sealed twice, two ciphertexts: equal references do not show.
        assert_ne!(seal_ref(&key, "t", p, "MRN-0001"), sealed);
        // The lookup is stable for one master key, and another master key
        // (or tenant) gives another hash.
        let a = keys(&MasterKeys::generate_entry("k1").unwrap());
        let b = keys(&MasterKeys::generate_entry("k1").unwrap());
        let hash = |m: &MasterKeys, t: &str| lookup_hash(&lookup_key(m.current()), t, "MRN-0001");
        assert_eq!(hash(&a, "t"), hash(&a, "t"));
        assert_ne!(hash(&a, "t"), hash(&b, "t"));
        assert_ne!(hash(&a, "t"), hash(&a, "u"));
    }
}
