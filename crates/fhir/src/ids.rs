//! Resource ids. A participant's resources carry the participant in their
//! id, so that a single read finds whose streams to fold without an index
//! from every entity to its owner: `<participant>` for the Patient and
//! `<participant>.<entity>[.<suffix>]` for the rest, each UUID in 26
//! characters of base 32 (FHIR ids are at most 64 characters of
//! `A-Za-z0-9-.`; two UUIDs in hex would not fit). Definitions are named
//! by their key and version, hashed when that would be too long.

use uuid::Uuid;

const DIGITS: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
/// 128 bits in 5-bit digits.
const LEN: usize = 26;
pub const MAX: usize = 64;

/// A UUID in 26 lower-case base-32 digits.
pub fn short(id: Uuid) -> String {
    let mut n = id.as_u128();
    let mut out = [b'0'; LEN];
    for digit in out.iter_mut().rev() {
        *digit = DIGITS[(n & 31) as usize];
        n >>= 5;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The UUID of 26 base-32 digits, if that is what `s` is.
pub fn parse_short(s: &str) -> Option<Uuid> {
    if s.len() != LEN {
        return None;
    }
    let mut n: u128 = 0;
    for (i, b) in s.bytes().enumerate() {
        let d = DIGITS.iter().position(|d| *d == b)? as u128;
        // The first digit holds the top 3 bits only.
        if i == 0 && d > 7 {
            return None;
        }
        n = (n << 5) | d;
    }
    Some(Uuid::from_u128(n))
}

/// The Patient's id.
pub fn patient(participant: Uuid) -> String {
    short(participant)
}

/// One of the participant's entities.
pub fn of(participant: Uuid, entity: Uuid) -> String {
    format!("{}.{}", short(participant), short(entity))
}

/// Something derived from one of the participant's entities (`suffix` is a
/// short fixed word).
pub fn derived(participant: Uuid, entity: Uuid, suffix: &str) -> String {
    format!("{}.{}.{suffix}", short(participant), short(entity))
}

/// Whose resource an id names: its first part.
pub fn participant_of(id: &str) -> Option<Uuid> {
    parse_short(id.split('.').next()?)
}

/// A definition's id from its readable name (slugs, versions and dots),
/// or, when that is longer than FHIR allows, a hash of it.
pub fn definition(readable: &str) -> String {
    if readable.len() <= MAX {
        readable.to_owned()
    } else {
        format!("h{}", short(Uuid::new_v5(&NAMESPACE, readable.as_bytes())))
    }
}

/// The namespace of hashed definition ids.
const NAMESPACE: Uuid = Uuid::from_u128(0x6d0b_4c8e_2f31_4a57_9c1e_8a44_f0d2_1b73);

/// Whether `s` is a well-formed FHIR id.
pub fn is_valid(s: &str) -> bool {
    (1..=MAX).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_round_trip_and_keep_order() {
        let mut previous = String::new();
        for n in [0u128, 1, 31, 32, u128::MAX / 3, u128::MAX - 1, u128::MAX] {
            let id = Uuid::from_u128(n);
            let s = short(id);
            assert_eq!(s.len(), 26);
            assert!(is_valid(&s));
            assert_eq!(parse_short(&s), Some(id));
            assert!(s > previous, "{s} after {previous}");
            previous = s;
        }
        let random = Uuid::new_v4();
        assert_eq!(parse_short(&short(random)), Some(random));
    }

    #[test]
    fn malformed_short_ids_are_refused() {
        assert_eq!(parse_short(""), None);
        assert_eq!(
            parse_short("8000000000000000000000000a"),
            None,
            "more than 128 bits"
        );
        assert_eq!(
            parse_short("0000000000000000000000000w"),
            None,
            "not a digit"
        );
        assert_eq!(parse_short("0000000000000000000000000"), None, "too short");
    }

    #[test]
    fn every_id_fits_fhir() {
        let (p, e) = (Uuid::new_v4(), Uuid::new_v4());
        for id in [
            patient(p),
            of(p, e),
            derived(p, e, "session"),
            derived(p, e, "score"),
        ] {
            assert!(is_valid(&id), "{id}");
            assert_eq!(participant_of(&id), Some(p));
        }
        let long = format!("{}.12", "a".repeat(63));
        let hashed = definition(&long);
        assert!(is_valid(&hashed) && hashed.starts_with('h') && !hashed.contains('.'));
        assert_eq!(hashed, definition(&long), "deterministic");
        assert_eq!(definition("tend-arc.2"), "tend-arc.2");
    }
}
