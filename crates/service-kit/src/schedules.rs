//! Read access to participants' schedules: the one read API shared between
//! services (the practice log checks named occurrences, assessments
//! complete theirs, the arc projection reads protocol versions). It lives
//! here, not in the scheduler service, so that no service depends on
//! another.

use std::collections::BTreeSet;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tend_domain::enrollment::{Command, Participant};
use tend_domain::protocol::ActivityKind;
use tend_domain::protocol::ProtocolSet;
use tend_domain::schedule::Status;
use tend_event_store::{EventStore, Metadata, TenantId};
use uuid::Uuid;

use crate::{Error, Participants, instants, streams};

/// What a service needs to know about one occurrence.
#[derive(Debug, Clone, PartialEq)]
pub struct OccurrenceFacts {
    pub kind: ActivityKind,
    pub opens_at: Timestamp,
    pub cancelled: bool,
    pub completed_at: Option<Timestamp>,
}

/// The rest of an occurrence in `scheduler_occurrences`, stored beside its
/// indexed columns: written by the scheduler's worker, read here.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OccurrenceDetail {
    pub activity_key: String,
    pub kind: ActivityKind,
    pub day: i32,
    pub arc_week: i32,
    pub local_date: String,
    pub local_time: String,
    pub time_zone: String,
    pub target_minutes: u32,
    pub protocol_version: u32,
}

/// Participants' enrollments and schedules, read-only. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Schedules {
    repo: Participants,
}

impl Schedules {
    pub fn new(store: EventStore) -> Self {
        Self {
            repo: Participants::new(store),
        }
    }

    /// The participant's enrollments and the protocol versions they use;
    /// empty for someone never enrolled.
    pub async fn participant(
        &self,
        tenant: &TenantId,
        participant: Uuid,
    ) -> Result<(Participant, ProtocolSet), Error> {
        let stream = streams::participant(participant);
        let loaded = self.repo.load_participant(tenant, &stream).await?;
        Ok((loaded.state, loaded.protocols))
    }

    /// A published protocol version (built in or the tenant's own); they
    /// never change once published, so this is cached.
    pub async fn published_protocol(
        &self,
        tenant: &TenantId,
        protocol_id: &str,
        version: u32,
    ) -> Result<tend_domain::protocol::Protocol, Error> {
        self.repo
            .published_protocol(tenant, protocol_id, version)
            .await
    }

    /// The practice kinds the tenant's own protocols define, in any
    /// version.
    pub async fn protocol_practice_kinds(
        &self,
        tenant: &TenantId,
    ) -> Result<BTreeSet<String>, Error> {
        let mut kinds = BTreeSet::new();
        for id in self.repo.protocol_ids(tenant).await? {
            let (history, _) = self.repo.protocol_history(tenant, &id).await?;
            for v in &history.versions {
                for a in &v.protocol.activities {
                    if let ActivityKind::Practice { practice } = &a.kind {
                        kinds.insert(practice.clone());
                    }
                }
            }
        }
        Ok(kinds)
    }

    /// Marks an occurrence of this participant completed at `completed_at`
    /// (for an assessment that fulfils it). Completing it again at the same
    /// time is nothing new.
    pub async fn complete_occurrence(
        &self,
        tenant: &TenantId,
        participant: Uuid,
        occurrence_id: Uuid,
        completed_at: Timestamp,
        now: Timestamp,
    ) -> Result<(), Error> {
        let stream = streams::participant(participant);
        let loaded = self.repo.load_participant(tenant, &stream).await?;
        let mut enrollment_id = None;
        for e in &loaded.state.enrollments {
            if e.schedule(&loaded.protocols, now)?
                .iter()
                .any(|o| o.id == occurrence_id)
            {
                enrollment_id = Some(e.id);
            }
        }
        let enrollment_id = enrollment_id.ok_or_else(|| Error::not_found("occurrence"))?;
        self.repo
            .execute_participant(
                tenant,
                &stream,
                &[],
                || Command::Complete {
                    enrollment_id,
                    occurrence_id,
                    completed_at: Some(completed_at),
                    now,
                },
                &Metadata::default(),
            )
            .await?;
        Ok(())
    }

    /// An occurrence of this participant, if it is one of theirs: from the
    /// scheduler's table when it is there (one indexed read), otherwise
    /// from their schedule as it stands at `now` (a new enrollment's rows
    /// appear within a scheduler round).
    pub async fn occurrence_of(
        &self,
        tenant: &TenantId,
        participant: Uuid,
        occurrence_id: Uuid,
        now: Timestamp,
    ) -> Result<Option<OccurrenceFacts>, Error> {
        let stream = streams::participant(participant);
        type Row = (
            String,
            chrono::DateTime<chrono::Utc>,
            bool,
            Option<chrono::DateTime<chrono::Utc>>,
            serde_json::Value,
        );
        let row: Option<Row> = sqlx::query_as(
            "SELECT stream_id, scheduled_at, cancelled, completed_at, detail
             FROM scheduler_occurrences WHERE tenant_id = $1 AND occurrence_id = $2",
        )
        .bind(tenant.as_str())
        .bind(occurrence_id)
        .fetch_optional(self.repo.store().pool())
        .await
        .map_err(|e| Error::Store(e.into()))?;
        if let Some((row_stream, at, cancelled, completed_at, detail)) = row
            && let Ok(detail) = serde_json::from_value::<OccurrenceDetail>(detail)
        {
            return Ok((row_stream == stream.as_str()).then(|| OccurrenceFacts {
                kind: detail.kind,
                opens_at: instants::from_chrono(at),
                cancelled,
                completed_at: completed_at.map(instants::from_chrono),
            }));
        }
        let loaded = self.repo.load_participant(tenant, &stream).await?;
        for e in &loaded.state.enrollments {
            if let Some(o) = e
                .schedule(&loaded.protocols, now)?
                .into_iter()
                .find(|o| o.id == occurrence_id)
            {
                return Ok(Some(OccurrenceFacts {
                    kind: o.kind,
                    opens_at: o.at,
                    cancelled: o.status == Status::Cancelled,
                    completed_at: o.completed_at,
                }));
            }
        }
        Ok(None)
    }
}
