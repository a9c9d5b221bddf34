//! The gRPC handlers: reads of the arc projection's active generation,
//! scoped to the caller's tenant.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use jiff::Timestamp;
use sqlx::{PgPool, Postgres, Transaction};
use tend_api::arc::v1 as pb;
use tend_api::arc::v1::arc_service_server::{ArcService, ArcServiceServer};
use tend_auth::tenant_of;
use tend_domain::arc::{
    self, Adherence, ArcState, Bounds, CohortMember, Delta, FlagKind, MSC_BENCHMARK_PERCENT, Phase,
};
use tend_domain::enrollment::validate_participant_ref;
use tend_event_store::TenantId;
use tend_privacy::Directory;
use tend_service_kit::Clock;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::Error;
use crate::projection::{NAME, flag_bit};
use tend_service_kit::instants;

const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 200;

#[derive(Debug, Clone)]
pub struct ArcApi {
    pool: PgPool,
    directory: Directory,
    clock: Arc<dyn Clock>,
}

/// Whether erased participants count, as a query chose.
fn erased_choice(value: i32) -> Result<bool, Error> {
    match pb::ErasedParticipants::try_from(value) {
        Ok(pb::ErasedParticipants::Unspecified | pb::ErasedParticipants::Include) => Ok(true),
        Ok(pb::ErasedParticipants::Exclude) => Ok(false),
        Err(_) => Err(Error::invalid("erased", "is not a known choice")),
    }
}

impl ArcApi {
    pub fn new(pool: PgPool, directory: Directory, clock: Arc<dyn Clock>) -> Self {
        Self {
            pool,
            directory,
            clock,
        }
    }

    pub fn into_server(self) -> ArcServiceServer<Self> {
        ArcServiceServer::new(self)
    }

    /// A read-only transaction on one snapshot, with the active generation
    /// and how far it has read: the rows read in it belong to that
    /// generation even if a rebuild switches and deletes it meanwhile.
    async fn snapshot(&self) -> Result<(Transaction<'static, Postgres>, i32, u64), Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let row: Option<(i32, Option<i64>)> = sqlx::query_as(
            "SELECT p.active_generation, c.position FROM projections p
             LEFT JOIN projection_checkpoints c
               ON c.name = p.name AND c.generation = p.active_generation
             WHERE p.name = $1",
        )
        .bind(NAME)
        .fetch_optional(&mut *tx)
        .await?;
        let (generation, position) = row.map_or((1, 0), |(g, p)| (g, p.unwrap_or(0) as u64));
        Ok((tx, generation, position))
    }

    async fn get_arc(&self, tenant: &TenantId, participant_ref: &str) -> Result<pb::Arc, Error> {
        validate_participant_ref(participant_ref)?;
        let key = self
            .directory
            .find(tenant.as_str(), participant_ref)
            .await?
            .ok_or_else(|| Error::from(tend_domain::Error::not_found("participant")))?;
        // One statement, so that a rebuild switching generations between
        // two reads cannot hide the row.
        let row: Option<(Option<Vec<u8>>, Option<i64>)> = sqlx::query_as(
            "SELECT a.state, c.position FROM projections p
             LEFT JOIN projection_checkpoints c
               ON c.name = p.name AND c.generation = p.active_generation
             LEFT JOIN arc_participants a
               ON a.generation = p.active_generation AND a.tenant_id = $2
              AND a.participant_key = $3
             WHERE p.name = $1",
        )
        .bind(NAME)
        .bind(tenant.as_str())
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        let (state, position) = match row {
            Some((Some(state), position)) => (state, position.unwrap_or(0) as u64),
            _ => {
                return Err(Error::from(tend_domain::Error::not_found(
                    "participant (no enrollment, practice or assessment has reached the arc projection yet)",
                )));
            }
        };
        let state = decode_state(&state)?;
        let now = self.clock.now();
        Ok(arc_pb(&state, now, position, key, participant_ref))
    }

    async fn list_arcs(
        &self,
        tenant: &TenantId,
        request: pb::ListArcsRequest,
    ) -> Result<pb::ListArcsResponse, Error> {
        let phase = match pb::Phase::try_from(request.phase) {
            Ok(pb::Phase::Unspecified) => None,
            Ok(p) => Some(phase_of_pb(p)),
            Err(_) => return Err(Error::invalid("phase", "is not a known phase")),
        };
        let flag = match pb::FlagKind::try_from(request.flag) {
            Ok(pb::FlagKind::Unspecified) => None,
            Ok(f) => Some(flag_of_pb(f)),
            Err(_) => return Err(Error::invalid("flag", "is not a known flag kind")),
        };
        let include_erased = erased_choice(request.erased)?;
        let size = match request.page_size {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(Error::invalid("page_size", "must be at most 200"));
            }
            n => n,
        };
        let after =
            match request.page_token.as_str() {
                "" => None,
                t => Some(Uuid::try_parse(t).map_err(|_| {
                    Error::invalid("page_token", "is not a token this call returned")
                })?),
            };
        let (mut tx, generation, position) = self.snapshot().await?;
        let now = instants::to_chrono(self.clock.now());
        let rows: Vec<(Uuid, Vec<u8>)> = sqlx::query_as(
            "SELECT participant_key, state FROM arc_participants
             WHERE generation = $1 AND tenant_id = $2
               AND ($3::uuid IS NULL OR participant_key > $3)
               AND ($4::text IS NULL OR protocol_id = $4)
               AND ($5::int IS NULL OR flags_mask & $5 <> 0)
               AND ($6::text IS NULL OR $6 = CASE
                    WHEN status <> 'active' THEN status
                    WHEN $7 < session_start THEN 'before_session'
                    WHEN $7 < session_end THEN 'session_day'
                    WHEN $7 < arc_end THEN 'integration'
                    ELSE 'complete' END)
               AND ($9 OR NOT erased)
             ORDER BY participant_key
             LIMIT $8",
        )
        .bind(generation)
        .bind(tenant.as_str())
        .bind(after)
        .bind((!request.protocol_id.is_empty()).then_some(request.protocol_id.as_str()))
        .bind(flag.map(flag_bit))
        .bind(phase.map(Phase::name))
        .bind(now)
        .bind(i64::from(size) + 1)
        .bind(include_erased)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let more = rows.len() > size as usize;
        let rows: Vec<(Uuid, Vec<u8>)> = rows.into_iter().take(size as usize).collect();
        let ids: Vec<Uuid> = rows.iter().map(|(k, _)| *k).collect();
        let references = self.directory.references(tenant.as_str(), &ids).await?;
        let now = self.clock.now();
        let mut arcs = Vec::with_capacity(rows.len());
        let mut last = None;
        for (key, state) in rows {
            let state = decode_state(&state)?;
            let reference = references.get(&key).map_or("", String::as_str);
            arcs.push(summary_pb(&state, now, key, reference));
            last = Some(key);
        }
        Ok(pb::ListArcsResponse {
            arcs,
            next_page_token: match (more, last) {
                (true, Some(k)) => k.to_string(),
                _ => String::new(),
            },
            position,
        })
    }

    async fn get_cohort(
        &self,
        tenant: &TenantId,
        protocol_id: &str,
        include_erased: bool,
    ) -> Result<pb::GetCohortResponse, Error> {
        if protocol_id.is_empty() {
            return Err(Error::invalid(
                "protocol_id",
                "is required: a cohort is one protocol's participants",
            ));
        }
        let (mut tx, generation, position) = self.snapshot().await?;
        type CohortRow = (
            String,
            Option<DateTime<Utc>>,
            Option<DateTime<Utc>>,
            Option<DateTime<Utc>>,
            serde_json::Value,
            Option<f64>,
            i32,
        );
        let rows: Vec<CohortRow> = sqlx::query_as(
            "SELECT status, session_start, session_end, arc_end, weeks, scs_change, flags_mask
             FROM arc_participants
             WHERE generation = $1 AND tenant_id = $2 AND protocol_id = $3
               AND ($4 OR NOT erased)",
        )
        .bind(generation)
        .bind(tenant.as_str())
        .bind(protocol_id)
        .bind(include_erased)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let now = self.clock.now();
        let members: Vec<CohortMember> = rows
            .into_iter()
            .map(|(status, start, end, arc_end, weeks, change, mask)| {
                let phase = match (status.as_str(), start, end, arc_end) {
                    ("paused", ..) => Phase::Paused,
                    ("withdrawn", ..) => Phase::Withdrawn,
                    ("active", Some(s), Some(e), Some(a)) => Bounds {
                        session_start: instants::from_chrono(s),
                        session_end: instants::from_chrono(e),
                        arc_end: instants::from_chrono(a),
                    }
                    .phase(now),
                    _ => Phase::NotEnrolled,
                };
                let weeks: Vec<(i32, u32, u32)> = serde_json::from_value(weeks).unwrap_or_default();
                CohortMember {
                    phase,
                    weeks,
                    scs_change_percent: change,
                    flags: FlagKind::ALL
                        .into_iter()
                        .filter(|k| mask & flag_bit(*k) != 0)
                        .collect(),
                }
            })
            .collect();
        let cohort = arc::cohort(&members);
        Ok(pb::GetCohortResponse {
            protocol_id: protocol_id.to_owned(),
            enrolled: cohort.enrolled,
            active: cohort.active,
            phases: cohort
                .by_phase
                .iter()
                .map(|(p, n)| pb::PhaseCount {
                    phase: phase_pb(*p) as i32,
                    participants: *n,
                })
                .collect(),
            weeks: cohort
                .weeks
                .iter()
                .map(|w| pb::WeekSpread {
                    arc_week: w.week,
                    participants: w.participants,
                    q1: w.q1,
                    median: w.median,
                    q3: w.q3,
                })
                .collect(),
            scs_change_percent: cohort.scs_change.map(|c| pb::MeanInterval {
                n: c.n,
                mean: c.mean,
                low: c.low,
                high: c.high,
            }),
            benchmark_percent: MSC_BENCHMARK_PERCENT,
            benchmark_source: "Neff & Germer, Mindful Self-Compassion program: SCS scores about 43% higher at post-program, holding at 6 and 12 months".into(),
            open_flags: cohort
                .open_flags
                .iter()
                .map(|(k, n)| pb::FlagCount {
                    kind: flag_pb(*k) as i32,
                    participants: *n,
                })
                .collect(),
            position,
            as_of: Some(instants::to_pb(now)),
        })
    }
}

#[tonic::async_trait]
impl ArcService for ArcApi {
    async fn get_arc(
        &self,
        request: Request<pb::GetArcRequest>,
    ) -> Result<Response<pb::GetArcResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let arc = self
            .get_arc(&tenant, &request.get_ref().participant_ref)
            .await?;
        Ok(Response::new(pb::GetArcResponse { arc: Some(arc) }))
    }

    async fn list_arcs(
        &self,
        request: Request<pb::ListArcsRequest>,
    ) -> Result<Response<pb::ListArcsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        Ok(Response::new(
            self.list_arcs(&tenant, request.into_inner()).await?,
        ))
    }

    async fn get_cohort(
        &self,
        request: Request<pb::GetCohortRequest>,
    ) -> Result<Response<pb::GetCohortResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let r = request.get_ref();
        let include_erased = erased_choice(r.erased)?;
        Ok(Response::new(
            self.get_cohort(&tenant, &r.protocol_id, include_erased)
                .await?,
        ))
    }

    async fn get_projection_status(
        &self,
        request: Request<pb::GetProjectionStatusRequest>,
    ) -> Result<Response<pb::GetProjectionStatusResponse>, Status> {
        // Any authenticated caller: positions and ages, no tenant's data.
        tenant_of(&request)?;
        let s = tend_projections::status(&self.pool, NAME)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::GetProjectionStatusResponse {
            projections: vec![pb::ProjectionStatus {
                name: s.name,
                active_generation: s.active_generation as u32,
                position: s.position,
                head: s.head,
                events_behind: s.events_behind,
                seconds_behind: s.seconds_behind,
                rebuilding_generation: s.rebuilding.map(|(g, _)| g as u32),
                rebuilding_position: s.rebuilding.map(|(_, p)| p),
            }],
        }))
    }
}

/// A stored state; the decoder's reason is left out, since it may quote
/// stored values.
fn decode_state(state: &[u8]) -> Result<ArcState, Error> {
    let mut state: ArcState = serde_json::from_slice(state).map_err(|_| {
        Error::Corrupt("a stored arc state does not decode: rebuild the arc projection".into())
    })?;
    // An older build's state, not folded again since: its entries are
    // summed here as the projection would.
    state.settle_stored();
    Ok(state)
}

pub(crate) fn phase_pb(p: Phase) -> pb::Phase {
    match p {
        Phase::NotEnrolled => pb::Phase::NotEnrolled,
        Phase::BeforeSession => pb::Phase::BeforeSession,
        Phase::SessionDay => pb::Phase::SessionDay,
        Phase::Integration => pb::Phase::Integration,
        Phase::Complete => pb::Phase::Complete,
        Phase::Paused => pb::Phase::Paused,
        Phase::Withdrawn => pb::Phase::Withdrawn,
    }
}

fn phase_of_pb(p: pb::Phase) -> Phase {
    match p {
        pb::Phase::Unspecified | pb::Phase::NotEnrolled => Phase::NotEnrolled,
        pb::Phase::BeforeSession => Phase::BeforeSession,
        pb::Phase::SessionDay => Phase::SessionDay,
        pb::Phase::Integration => Phase::Integration,
        pb::Phase::Complete => Phase::Complete,
        pb::Phase::Paused => Phase::Paused,
        pb::Phase::Withdrawn => Phase::Withdrawn,
    }
}

fn flag_pb(k: FlagKind) -> pb::FlagKind {
    match k {
        FlagKind::CriticReturns => pb::FlagKind::CriticReturns,
        FlagKind::SubscaleRise => pb::FlagKind::SubscaleRise,
        FlagKind::MissedInARow => pb::FlagKind::MissedInARow,
        FlagKind::SafetySignal => pb::FlagKind::SafetySignal,
    }
}

fn flag_of_pb(k: pb::FlagKind) -> FlagKind {
    match k {
        pb::FlagKind::Unspecified | pb::FlagKind::CriticReturns => FlagKind::CriticReturns,
        pb::FlagKind::SubscaleRise => FlagKind::SubscaleRise,
        pb::FlagKind::MissedInARow => FlagKind::MissedInARow,
        pb::FlagKind::SafetySignal => FlagKind::SafetySignal,
    }
}

fn adherence_pb(a: &Adherence) -> pb::Adherence {
    pb::Adherence {
        due: a.due,
        done: a.done,
        late: a.late,
        missed: a.missed,
        minutes_planned: a.minutes_planned,
        minutes_done: a.minutes_done,
        rate: a.rate(),
        minutes_rate: a.minutes_rate(),
    }
}

fn delta_pb(d: &Delta) -> pb::Delta {
    pb::Delta {
        absolute: d.absolute,
        percent: d.percent,
    }
}

pub(crate) fn arc_pb(
    state: &ArcState,
    now: Timestamp,
    position: u64,
    participant: Uuid,
    participant_ref: &str,
) -> pb::Arc {
    let v = state.view(now);
    pb::Arc {
        participant_ref: participant_ref.to_owned(),
        participant_id: participant.to_string(),
        phase: phase_pb(v.phase) as i32,
        enrollment: v.enrollment.map(|e| pb::ArcEnrollment {
            enrollment_id: e.enrollment_id.to_string(),
            protocol_id: e.protocol_id,
            protocol_version: e.protocol_version,
            session_at: e.session.to_string(),
            time_zone: e.session_zone.name().to_owned(),
            participant_time_zone: e.zone.name().to_owned(),
            arc_first_day: e.arc_days.0,
            arc_last_day: e.arc_days.1,
            days_from_session: e.days_from_session,
            arc_week: e.arc_week,
        }),
        weeks: v
            .weeks
            .iter()
            .map(|(w, a)| pb::WeekAdherence {
                arc_week: *w,
                adherence: Some(adherence_pb(a)),
            })
            .collect(),
        before_session: Some(adherence_pb(&v.before_session)),
        session_day: Some(adherence_pb(&v.session_day)),
        after_session: Some(adherence_pb(&v.after_session)),
        total: Some(adherence_pb(&v.total)),
        streak_days: v.streak_days,
        last_practice_at: v.last_practice_at.map(instants::to_pb),
        assessments: v
            .assessments
            .iter()
            .map(|a| pb::ArcAssessment {
                assessment_id: a.assessment_id.to_string(),
                instrument_id: a.instrument_id.clone(),
                administered_at: Some(instants::to_pb(a.administered_at)),
                days_from_session: a.days_from_session,
                total: a.total,
                subscales: a
                    .subscales
                    .iter()
                    .map(|(k, v)| pb::SubscaleValue {
                        key: k.clone(),
                        value: *v,
                    })
                    .collect(),
                is_baseline: a.is_baseline,
                change: a.change.as_ref().map(|c| pb::ScoreChange {
                    baseline_assessment_id: c.baseline_assessment.to_string(),
                    total: Some(delta_pb(&c.total)),
                    subscales: c
                        .subscales
                        .iter()
                        .map(|(k, d)| pb::SubscaleDelta {
                            key: k.clone(),
                            delta: Some(delta_pb(d)),
                        })
                        .collect(),
                }),
            })
            .collect(),
        open_flags: v
            .flags
            .iter()
            .map(|f| pb::Flag {
                flag_id: f.flag_id.to_string(),
                kind: flag_pb(f.kind) as i32,
                raised_at: Some(instants::to_pb(f.raised_at)),
                enrollment_id: f.enrollment_id.map(|e| e.to_string()).unwrap_or_default(),
                evidence_json: serde_json::to_string(&f.evidence).unwrap_or_default(),
            })
            .collect(),
        as_of: Some(instants::to_pb(now)),
        position,
    }
}

fn summary_pb(
    state: &ArcState,
    now: Timestamp,
    participant: Uuid,
    participant_ref: &str,
) -> pb::ArcSummary {
    let v = state.view(now);
    pb::ArcSummary {
        participant_ref: participant_ref.to_owned(),
        participant_id: participant.to_string(),
        erased: v.erased_at.is_some(),
        phase: phase_pb(v.phase) as i32,
        protocol_id: v
            .enrollment
            .as_ref()
            .map(|e| e.protocol_id.clone())
            .unwrap_or_default(),
        protocol_version: v.enrollment.as_ref().map_or(0, |e| e.protocol_version),
        days_from_session: v.enrollment.as_ref().map_or(0, |e| e.days_from_session),
        adherence: v.total.rate(),
        open_flags: v.flags.iter().map(|f| flag_pb(f.kind) as i32).collect(),
        scs_change_percent: state.scs_change_percent(),
    }
}
