//! Per-recipient pseudonyms. A tenant names recipients of pseudonymous
//! data (a study's analysis team, a sponsor, a registry), each with its own
//! secret key from configuration. A participant's pseudonym for a recipient
//! is a keyed hash of their opaque id: the same for that recipient every
//! time, on every server, and unlinkable to the pseudonym another recipient
//! receives without one of the two keys.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::keys::{KEY_BYTES, keyed_hash, random};

struct RecipientKey {
    id: String,
    key: Zeroizing<[u8; KEY_BYTES]>,
}

/// The configured recipients, by tenant and recipient id; for each, its
/// keys with the current one first. Cheap to clone.
#[derive(Clone, Default)]
pub struct Recipients {
    keys: Arc<HashMap<(String, String), Vec<RecipientKey>>>,
}

impl fmt::Debug for Recipients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<String> = self
            .keys
            .iter()
            .map(|((t, r), keys)| {
                let ids: Vec<&str> = keys.iter().map(|k| k.id.as_str()).collect();
                format!("{t}/{r}[{}]", ids.join(","))
            })
            .collect();
        names.sort();
        f.debug_struct("Recipients").field("keys", &names).finish()
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl FromStr for Recipients {
    type Err = String;

    /// `<tenant>/<recipient>/<key id>:<base64 of 32 bytes>`, comma
    /// separated; of one recipient's keys, the first listed is current.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut keys: HashMap<(String, String), Vec<RecipientKey>> = HashMap::new();
        for (n, item) in s
            .split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .enumerate()
        {
            let n = n + 1;
            let Some((name, encoded)) = item.split_once(':') else {
                return Err(format!(
                    "recipient key {n}: expected <tenant>/<recipient>/<key id>:<base64>"
                ));
            };
            let parts: Vec<&str> = name.split('/').collect();
            let [tenant, recipient, key_id] = parts[..] else {
                return Err(format!(
                    "recipient key {n}: expected <tenant>/<recipient>/<key id>:<base64>"
                ));
            };
            if ![tenant, recipient, key_id].into_iter().all(valid_name) {
                return Err(format!(
                    "recipient key {n}: tenant, recipient and key id must each be 1 to 64 of a-z, 0-9, - or _"
                ));
            }
            let bytes = Zeroizing::new(
                B64.decode(encoded)
                    .map_err(|_| format!("recipient key {n}: not valid base64"))?,
            );
            let key: [u8; KEY_BYTES] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| format!("recipient key {n}: must be 32 bytes"))?;
            let list = keys
                .entry((tenant.to_owned(), recipient.to_owned()))
                .or_default();
            if list.iter().any(|k| k.id == key_id) {
                return Err(format!(
                    "recipient key {n}: {tenant}/{recipient} lists key `{key_id}` twice"
                ));
            }
            list.push(RecipientKey {
                id: key_id.to_owned(),
                key: Zeroizing::new(key),
            });
        }
        Ok(Self {
            keys: Arc::new(keys),
        })
    }
}

impl Recipients {
    /// A new random key, as a configuration entry.
    pub fn generate_entry(tenant: &str, recipient: &str, key_id: &str) -> Result<String, String> {
        if ![tenant, recipient, key_id].into_iter().all(valid_name) {
            return Err(
                "tenant, recipient and key id must each be 1 to 64 of a-z, 0-9, - or _".to_owned(),
            );
        }
        let key = Zeroizing::new(random::<KEY_BYTES>());
        Ok(format!(
            "{tenant}/{recipient}/{key_id}:{}",
            B64.encode(key.as_ref())
        ))
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The tenant's recipients, each with its current key id.
    pub fn of_tenant(&self, tenant: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .keys
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|((_, r), keys)| (r.clone(), keys[0].id.clone()))
            .collect();
        out.sort();
        out
    }

    /// The pseudonym function for one of the tenant's recipients, with its
    /// current key or a named one. `None` when the tenant has no such
    /// recipient (another tenant's recipient included) or key.
    pub fn pseudonymizer(
        &self,
        tenant: &str,
        recipient: &str,
        key_id: Option<&str>,
    ) -> Option<Pseudonymizer> {
        let keys = self.keys.get(&(tenant.to_owned(), recipient.to_owned()))?;
        let key = match key_id {
            None => keys.first()?,
            Some(id) => keys.iter().find(|k| k.id == id)?,
        };
        Some(Pseudonymizer {
            tenant: tenant.to_owned(),
            recipient: recipient.to_owned(),
            key_id: key.id.clone(),
            key: key.key.clone(),
        })
    }
}

/// One recipient's pseudonym function.
pub struct Pseudonymizer {
    tenant: String,
    recipient: String,
    key_id: String,
    key: Zeroizing<[u8; KEY_BYTES]>,
}

impl fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pseudonymizer")
            .field("recipient", &self.recipient)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Pseudonymizer {
    pub fn recipient(&self) -> &str {
        &self.recipient
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The recipient's pseudonym of an opaque id (a participant's, or any
    /// other id that would otherwise be the same in two recipients' data):
    /// a UUID (version 8) made of the keyed hash.
    pub fn pseudonym(&self, id: Uuid) -> Uuid {
        let hash = keyed_hash(
            self.key.as_ref(),
            &[b"tend/pseudonym/v1", self.tenant.as_bytes(), id.as_bytes()],
        );
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&hash[..16]);
        uuid::Builder::from_custom_bytes(bytes).into_uuid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_stable_per_recipient_and_differ_between_recipients() {
        let spec = [
            Recipients::generate_entry("t", "analysts", "k1").unwrap(),
            Recipients::generate_entry("t", "sponsor", "k1").unwrap(),
            Recipients::generate_entry("u", "analysts", "k1").unwrap(),
        ]
        .join(",");
        let recipients: Recipients = spec.parse().unwrap();
        let again: Recipients = spec.parse().unwrap();
        let id = Uuid::new_v4();
        let a = recipients.pseudonymizer("t", "analysts", None).unwrap();
        let s = recipients.pseudonymizer("t", "sponsor", None).unwrap();
        assert_eq!(
            a.pseudonym(id),
            again
                .pseudonymizer("t", "analysts", None)
                .unwrap()
                .pseudonym(id)
        );
        assert_ne!(a.pseudonym(id), s.pseudonym(id));
        assert_ne!(a.pseudonym(id), id);
        assert_eq!(a.pseudonym(id).get_version_num(), 8);
        // Another tenant's recipient of the same name is not this tenant's.
        assert!(recipients.pseudonymizer("u", "sponsor", None).is_none());
        assert_ne!(
            recipients
                .pseudonymizer("u", "analysts", None)
                .unwrap()
                .pseudonym(id),
            a.pseudonym(id)
        );
        // The key never shows in debug output.
        let key = spec.split(',').next().unwrap().split_once(':').unwrap().1;
        assert!(!format!("{recipients:?}{a:?}").contains(key));
    }

    #[test]
    fn refuses_malformed_entries() {
        let good = Recipients::generate_entry("t", "r", "k1").unwrap();
        let key = good.split_once(':').unwrap().1;
        for bad in [
            format!("t/r:{key}"),
            format!("T/r/k1:{key}"),
            "t/r/k1:not base64!".to_owned(),
            "t/r/k1:AAAA".to_owned(),
            format!("{good},{good}"),
        ] {
            assert!(bad.parse::<Recipients>().is_err(), "{bad}");
        }
        let rotated: Recipients = format!(
            "{},{good}",
            Recipients::generate_entry("t", "r", "k2").unwrap()
        )
        .parse()
        .unwrap();
        assert_eq!(
            rotated.of_tenant("t"),
            vec![("r".to_owned(), "k2".to_owned())]
        );
        assert!(rotated.pseudonymizer("t", "r", Some("k1")).is_some());
        assert!(rotated.pseudonymizer("t", "r", Some("k3")).is_none());
    }
}
