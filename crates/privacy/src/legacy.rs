//! Participants written before opaque ids. Their streams are named by a
//! name-based UUID of tenant and reference (which stays: stream names are
//! never rewritten), their `ParticipantEnrolled` events (schema version 1)
//! carried the reference in the clear, and their data keys were made only
//! for notes.
//!
//! Each is adopted into the directory: on the server's start for everyone
//! whose reference is in the log, on their first lookup for the others (who
//! only ever logged practice). Adopting seals and hashes the reference like
//! any other and removes it from the version 1 bodies, the one change to a
//! stored event the database allows (migration 0006).

use sqlx::Row;
use uuid::Uuid;

use crate::directory::Tx;
use crate::keys::{DataKey, seal_ref, unwrap, wrap};
use crate::{Directory, Error};

/// The stream of a participant's enrollments, in every release.
const PARTICIPANT_STREAMS: &str = "participant-";
/// Events scanned per statement when adopting from the log.
const BATCH: i64 = 500;

/// The id an earlier release derived from tenant and reference.
pub fn legacy_participant_id(tenant: &str, reference: &str) -> Uuid {
    const NAMESPACE: Uuid = Uuid::from_u128(0x7e4d_0c1e_5b1a_4f3e_9a55_2a8d_6f0b_3c11);
    let mut name = Vec::with_capacity(tenant.len() + 1 + reference.len());
    name.extend_from_slice(tenant.as_bytes());
    name.push(0);
    name.extend_from_slice(reference.as_bytes());
    Uuid::new_v5(&NAMESPACE, &name)
}

/// A lookup that found nothing: the reference may name a participant of an
/// earlier release not adopted yet.
pub(crate) async fn adopt_on_lookup(
    dir: &Directory,
    tenant: &str,
    reference: &str,
) -> Result<Option<Uuid>, Error> {
    let id = legacy_participant_id(tenant, reference);
    let pending: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM legacy_participants
                        WHERE tenant_id = $1 AND participant_id = $2)",
    )
    .bind(tenant)
    .bind(id)
    .fetch_one(dir.pool())
    .await?;
    if !pending {
        return Ok(None);
    }
    adopt(dir, tenant, id, reference).await
}

/// Gives a participant of an earlier release a directory entry; `None` when
/// they had asked to be forgotten (their key was destroyed), who then stay
/// unfindable.
async fn adopt(
    dir: &Directory,
    tenant: &str,
    id: Uuid,
    reference: &str,
) -> Result<Option<Uuid>, Error> {
    let mut tx = dir.pool().begin().await?;
    let row: Option<(Uuid, Option<Vec<u8>>, Option<String>)> = sqlx::query_as(
        "SELECT key_id, wrapped_key, master_key_id FROM participants
         WHERE tenant_id = $1 AND participant_id = $2 FOR UPDATE",
    )
    .bind(tenant)
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let hash = crate::keys::lookup_hash(&lookup(dir), tenant, reference);
    let current = dir.master().current();
    let adopted = match row {
        Some((_, None, _) | (_, _, None)) => None,
        Some((key_id, Some(wrapped), Some(master_id))) => {
            let key = unwrap(dir.master().get(&master_id)?, tenant, id, key_id, &wrapped)?;
            sqlx::query(
                "UPDATE participants SET ref_hash = $3, hash_key_id = $4, sealed_ref = $5
                 WHERE tenant_id = $1 AND participant_id = $2",
            )
            .bind(tenant)
            .bind(id)
            .bind(hash.as_slice())
            .bind(&current.id)
            .bind(seal_ref(&key, tenant, id, reference))
            .execute(&mut *tx)
            .await?;
            Some(id)
        }
        None => {
            let key = DataKey::generate();
            sqlx::query(
                "INSERT INTO participants
                    (tenant_id, participant_id, ref_hash, hash_key_id, sealed_ref,
                     key_id, wrapped_key, master_key_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 -- Servers starting together adopt the same participant:
                 -- the first insert stands.
                 ON CONFLICT DO NOTHING",
            )
            .bind(tenant)
            .bind(id)
            .bind(hash.as_slice())
            .bind(&current.id)
            .bind(seal_ref(&key, tenant, id, reference))
            .bind(key.id)
            .bind(wrap(current, tenant, id, key.id, &key.key))
            .bind(&current.id)
            .execute(&mut *tx)
            .await?;
            Some(id)
        }
    };
    forget(&mut tx, tenant, id).await?;
    tx.commit().await?;
    Ok(adopted)
}

fn lookup(dir: &Directory) -> zeroize::Zeroizing<[u8; 32]> {
    crate::keys::lookup_key(dir.master().current())
}

/// Takes the participant off the legacy list and removes their reference
/// from what an earlier release wrote: the version 1 enrollment bodies.
pub(crate) async fn forget(tx: &mut Tx, tenant: &str, id: Uuid) -> Result<(), Error> {
    sqlx::query("DELETE FROM legacy_participants WHERE tenant_id = $1 AND participant_id = $2")
        .bind(tenant)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "UPDATE events SET payload = (payload::jsonb - 'participant_ref')::json
         WHERE tenant_id = $1 AND stream_id = $2
           AND event_type = 'ParticipantEnrolled' AND schema_version = 1
           AND payload::jsonb ? 'participant_ref'",
    )
    .bind(tenant)
    .bind(format!("{PARTICIPANT_STREAMS}{id}"))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// What `upgrade` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Upgraded {
    /// Participants given a directory entry from the reference in the log.
    pub adopted: u64,
    /// Participants whose reference was removed from the log without an
    /// entry: they had asked to be forgotten.
    pub forgotten: u64,
}

impl Directory {
    /// Adopts every participant whose reference an earlier release wrote
    /// into the log, and removes it from there. Resumes where the last run
    /// stopped (only events written since are read again), so it is cheap
    /// on every start; safe to run on several servers at once.
    pub async fn upgrade_legacy(&self) -> Result<Upgraded, Error> {
        let mut done = Upgraded::default();
        let mut after: i64 = sqlx::query_scalar(
            "SELECT coalesce((SELECT position FROM privacy_upgrade WHERE step = 'references'), 0)",
        )
        .fetch_one(self.pool())
        .await?;
        // Up to the head as it is now, which is then recorded even when
        // nothing was found: the next start reads only what came after.
        let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
            .fetch_one(self.pool())
            .await?;
        while after < head {
            let rows = sqlx::query(
                "SELECT position, tenant_id, stream_id, payload::jsonb ->> 'participant_ref' AS reference
                 FROM events
                 WHERE position > $1 AND position <= $3
                   AND event_type = 'ParticipantEnrolled' AND schema_version = 1
                 ORDER BY position
                 LIMIT $2",
            )
            .bind(after)
            .bind(BATCH)
            .bind(head)
            .fetch_all(self.pool())
            .await?;
            let last: i64 = match rows.last() {
                Some(row) if rows.len() as i64 == BATCH => row.try_get("position")?,
                // The last batch: everything up to the head is read.
                _ => head,
            };
            for row in &rows {
                let tenant: String = row.try_get("tenant_id")?;
                let stream: String = row.try_get("stream_id")?;
                let reference: Option<String> = row.try_get("reference")?;
                let (Some(reference), Some(id)) = (
                    reference,
                    stream
                        .strip_prefix(PARTICIPANT_STREAMS)
                        .and_then(|s| Uuid::try_parse(s).ok()),
                ) else {
                    continue;
                };
                match adopt(self, &tenant, id, &reference).await? {
                    Some(_) => done.adopted += 1,
                    None => done.forgotten += 1,
                }
            }
            sqlx::query(
                "INSERT INTO privacy_upgrade (step, position) VALUES ('references', $1)
                 ON CONFLICT (step) DO UPDATE
                 SET position = greatest(privacy_upgrade.position, EXCLUDED.position)",
            )
            .bind(last)
            .execute(self.pool())
            .await?;
            after = last;
        }
        let pending: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM legacy_participants)")
            .fetch_one(self.pool())
            .await?;
        if !pending {
            self.legacy_done();
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{open, seal};
    use crate::{MasterKeys, ReadKey};

    const TENANT: &str = "clinic";

    fn enrolled(reference: &str) -> serde_json::Value {
        serde_json::json!({
            "enrollment_id": Uuid::new_v4(),
            "participant_ref": reference,
            "protocol_id": "integration-arc-8w",
            "protocol_version": 1,
            "session_at": "2026-12-15T10:00:00",
            "time_zone": "Europe/London",
            "arc_first_day": -28,
            "arc_last_day": 56,
            "enrolled_at": "2026-11-10T09:00:00Z"
        })
    }

    async fn insert_event(
        pool: &sqlx::PgPool,
        stream: &str,
        event_type: &str,
        payload: serde_json::Value,
    ) {
        let category = stream.split('-').next().unwrap();
        sqlx::query(
            "INSERT INTO events (position, tenant_id, stream_id, category, stream_version, event_id,
                                 event_type, schema_version, payload, recorded_at)
             VALUES (nextval('event_position'), $1, $2, $3,
                     (SELECT count(*) FROM events WHERE tenant_id = $1 AND stream_id = $2),
                     $4, $5, 1, $6::json, now())",
        )
        .bind(TENANT)
        .bind(stream)
        .bind(category)
        .bind(Uuid::new_v4())
        .bind(event_type)
        .bind(payload.to_string())
        .execute(pool)
        .await
        .unwrap();
    }

    /// A database the previous release wrote: references in enrollment
    /// bodies, streams named from them, note keys in `practice_keys`.
    #[tokio::test]
    async fn an_earlier_releases_participants_are_adopted_and_their_references_leave_the_log() {
        let db = tend_testkit::fresh_database_migrated_to(5).await;
        let entry = MasterKeys::generate_entry("k1").unwrap();
        let master: MasterKeys = entry.parse().unwrap();
        let (l1, l2, l3) = ("MRN-LEGACY-1", "MRN-LEGACY-2", "MRN-LEGACY-3");
        let (id1, id2, id3) = (
            legacy_participant_id(TENANT, l1),
            legacy_participant_id(TENANT, l2),
            legacy_participant_id(TENANT, l3),
        );
        // 1 enrolled and kept a note; 2 only practised; 3 asked to be
        // forgotten.
        insert_event(
            &db.pool,
            &format!("participant-{id1}"),
            "ParticipantEnrolled",
            enrolled(l1),
        )
        .await;
        insert_event(
            &db.pool,
            &format!("participant-{id3}"),
            "ParticipantEnrolled",
            enrolled(l3),
        )
        .await;
        insert_event(
            &db.pool,
            &format!("practice-{id2}"),
            "PracticeLogged",
            serde_json::json!({"minutes": 5}),
        )
        .await;
        let key = DataKey::generate();
        sqlx::query(
            "INSERT INTO practice_keys (tenant_id, participant_key, key_id, wrapped, master_key_id)
             VALUES ($1, $2, $3, $4, 'k1')",
        )
        .bind(TENANT)
        .bind(id1)
        .bind(key.id)
        .bind(wrap(master.current(), TENANT, id1, key.id, &key.key))
        .execute(&db.pool)
        .await
        .unwrap();
        let note = seal(
            &key,
            TENANT,
            id1,
            Uuid::from_u128(1),
            Uuid::from_u128(2),
            "kept note",
        );
        sqlx::query(
            "INSERT INTO practice_keys (tenant_id, participant_key, key_id, destroyed_at)
             VALUES ($1, $2, $3, now())",
        )
        .bind(TENANT)
        .bind(id3)
        .bind(Uuid::new_v4())
        .execute(&db.pool)
        .await
        .unwrap();

        // The upgrade: the migration, then the start-up adoption.
        tend_event_store::migrate(&db.pool).await.unwrap();
        let dir = Directory::open(db.pool.clone(), entry.parse().unwrap())
            .await
            .unwrap();
        let done = dir.upgrade_legacy().await.unwrap();
        assert_eq!(
            done,
            Upgraded {
                adopted: 1,
                forgotten: 1
            }
        );
        let dump: String = sqlx::query_scalar("SELECT string_agg(payload::text, ' ') FROM events")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert!(!dump.contains("MRN-LEGACY"), "{dump}");
        assert!(dump.contains("integration-arc-8w"));

        // The enrolled one is found by reference, under the id their streams
        // already have, with the key their notes were sealed with.
        assert_eq!(dir.find(TENANT, l1).await.unwrap(), Some(id1));
        let ReadKey::Key(k) = dir.key_for_read(TENANT, id1).await.unwrap() else {
            panic!("the data key survives the upgrade");
        };
        assert_eq!(
            open(&k, TENANT, id1, Uuid::from_u128(1), &note).unwrap(),
            "kept note"
        );
        assert_eq!(dir.references(TENANT, &[id1]).await.unwrap()[&id1], l1);
        // The forgotten one stays unfindable; the practising one is adopted
        // when first looked up.
        assert_eq!(dir.find(TENANT, l3).await.unwrap(), None);
        assert_eq!(dir.find(TENANT, l2).await.unwrap(), Some(id2));
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM legacy_participants")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(pending, 0);
        // Running again reads only what was written since.
        assert_eq!(dir.upgrade_legacy().await.unwrap(), Upgraded::default());

        // The trigger allows that one change and no other.
        for statement in [
            "UPDATE events SET payload = '{}'::json",
            "UPDATE events SET event_type = 'Other' WHERE event_type = 'ParticipantEnrolled'",
            "DELETE FROM events",
        ] {
            let e = sqlx::query(statement).execute(&db.pool).await.unwrap_err();
            assert!(e.to_string().contains("immutable"), "{statement}: {e}");
        }
    }
}
