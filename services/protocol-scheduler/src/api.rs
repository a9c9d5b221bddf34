//! The gRPC handlers.

use std::sync::Arc;

use jiff::Timestamp;
use tend_api::scheduler::v1 as pb;
use tend_api::scheduler::v1::protocol_scheduler_service_server::{
    ProtocolSchedulerService, ProtocolSchedulerServiceServer,
};
use tend_domain::enrollment::{self, Enrollment, enrollment_id_for_request};
use tend_domain::protocol::{self, built_in, built_ins};
use tend_domain::schedule::{Occurrence, change};
use tend_domain::time::{Zone, parse_local_date_time};
use tend_event_store::{EventStore, Metadata, TenantId};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use tend_privacy::Directory;
use tend_service_kit::{
    Clock, How, Identities, Loaded, OccurrenceDetail, Participants, instants, streams,
};

use crate::Error;
use crate::convert::{self, uuid};

const MAX_PAGE: u32 = 1000;
const DEFAULT_PAGE: u32 = 100;

/// The service; cheap to clone.
#[derive(Debug, Clone)]
pub struct SchedulerApi {
    repo: Participants,
    identities: Identities,
    clock: Arc<dyn Clock>,
}

impl SchedulerApi {
    pub fn new(store: EventStore, directory: Directory, clock: Arc<dyn Clock>) -> Self {
        let repo = Participants::new(store);
        Self {
            identities: Identities::new(repo.clone(), directory),
            repo,
            clock,
        }
    }

    /// An enrollment as a reply: with the participant's id, and their
    /// reference from the directory (empty once they are erased).
    async fn enrollment_pb(
        &self,
        tenant: &TenantId,
        participant: Uuid,
        e: &Enrollment,
    ) -> Result<pb::Enrollment, Error> {
        let reference = self
            .identities
            .references(tenant, &[participant])
            .await?
            .remove(&participant)
            .unwrap_or_default();
        Ok(convert::enrollment_to_pb(e, participant, reference))
    }

    pub fn into_server(self) -> ProtocolSchedulerServiceServer<Self> {
        ProtocolSchedulerServiceServer::new(self)
    }

    async fn get_protocol_pb(
        &self,
        tenant: &TenantId,
        protocol_id: &str,
        version: u32,
    ) -> Result<pb::Protocol, Error> {
        if let Some(p) = built_in(protocol_id) {
            if version != 0 && version != p.version {
                return Err(Error::not_found("protocol version"));
            }
            return Ok(convert::protocol_to_pb(p, None, true));
        }
        let (history, _) = self.repo.protocol_history(tenant, protocol_id).await?;
        let found = match version {
            0 => history.latest(),
            v => history.version(v),
        };
        match (found, history.versions.is_empty()) {
            (Some(v), _) => Ok(convert::protocol_version_to_pb(v)),
            (None, true) => Err(Error::not_found("protocol")),
            (None, false) => Err(Error::not_found("protocol version")),
        }
    }

    /// Loads the stream of an enrollment named in a request.
    async fn locate(
        &self,
        tenant: &TenantId,
        enrollment_id: &str,
    ) -> Result<(Uuid, Loaded), Error> {
        let id = uuid("enrollment_id", enrollment_id)?;
        let stream = self.repo.enrollment_stream(tenant, id).await?;
        let loaded = self.repo.load_participant(tenant, &stream).await?;
        Ok((id, loaded))
    }

    /// The participant a reference names, and their stream loaded:
    /// NOT_FOUND for someone unknown or erased.
    async fn by_reference(
        &self,
        tenant: &TenantId,
        participant_ref: &str,
    ) -> Result<(Uuid, Loaded), Error> {
        let participant = self.identities.find(tenant, participant_ref).await?;
        let loaded = self
            .repo
            .load_participant(tenant, &streams::participant(participant))
            .await?;
        Ok((participant, loaded))
    }

    /// Whose stream a loaded participant is.
    fn participant_of(loaded: &Loaded) -> Result<Uuid, Error> {
        streams::key_of(&loaded.stream).ok_or_else(|| Error::not_found("enrollment"))
    }

    /// Runs a command on an existing enrollment; returns the enrollment
    /// after it and what it did to the schedule.
    async fn change_enrollment(
        &self,
        tenant: &TenantId,
        enrollment_id: &str,
        extra: &[protocol::Protocol],
        command: impl Fn(Uuid, Timestamp) -> enrollment::Command,
    ) -> Result<(Enrollment, Uuid, pb::ScheduleChange), Error> {
        let id = uuid("enrollment_id", enrollment_id)?;
        let stream = self.repo.enrollment_stream(tenant, id).await?;
        let (before, after) = self
            .repo
            .execute_participant(
                tenant,
                &stream,
                extra,
                || command(id, self.clock.now()),
                &Metadata::default(),
            )
            .await?;
        let report = report(&before, &after, id, self.clock.now())?;
        let enrollment = after
            .state
            .enrollment(id)
            .cloned()
            .ok_or_else(|| Error::not_found("enrollment"))?;
        Ok((enrollment, Self::participant_of(&after)?, report))
    }

    /// Pause, resume or withdraw: the enrollment afterwards.
    async fn lifecycle(
        &self,
        tenant: &TenantId,
        enrollment_id: &str,
        command: fn(Uuid, Timestamp) -> enrollment::Command,
    ) -> Result<Option<pb::Enrollment>, Error> {
        let (e, participant, _) = self
            .change_enrollment(tenant, enrollment_id, &[], command)
            .await?;
        Ok(Some(self.enrollment_pb(tenant, participant, &e).await?))
    }
}

fn report(
    before: &Loaded,
    after: &Loaded,
    id: Uuid,
    now: Timestamp,
) -> Result<pb::ScheduleChange, Error> {
    let schedule = |l: &Loaded| -> Result<Vec<Occurrence>, Error> {
        match l.state.enrollment(id) {
            Some(e) => Ok(e.schedule(&l.protocols, now)?),
            None => Ok(vec![]),
        }
    };
    Ok(convert::change_to_pb(&change(
        &schedule(before)?,
        &schedule(after)?,
        now,
    )))
}

fn enrollment_of(loaded: &Loaded, id: Uuid) -> Result<&Enrollment, Error> {
    loaded
        .state
        .enrollment(id)
        .ok_or_else(|| Error::not_found("enrollment"))
}

#[tonic::async_trait]
impl ProtocolSchedulerService for SchedulerApi {
    #[tracing::instrument(skip_all, fields(rpc = "CreateProtocol"))]
    async fn create_protocol(
        &self,
        request: Request<pb::CreateProtocolRequest>,
    ) -> Result<Response<pb::CreateProtocolResponse>, Status> {
        let tenant = tend_auth::tenant_of(&request)?;
        let Some(p) = request.into_inner().protocol else {
            return Err(Error::invalid("protocol", "is required").into());
        };
        protocol::validate_id(&p.protocol_id).map_err(|e| Error::from(e.within("protocol")))?;
        if built_in(&p.protocol_id).is_some() {
            return Err(Error::from(tend_domain::Error::already_exists(
                "protocol.protocol_id",
                "is the id of a built-in protocol",
            ))
            .into());
        }
        let p = convert::protocol_from_pb(p)?;
        let id = p.id.clone();
        let now = self.clock.now();
        let history = self
            .repo
            .execute_protocol(&tenant, &id, || protocol::Command::Draft {
                protocol: p.clone(),
                now,
            })
            .await
            .map_err(Error::from)?;
        let latest = history
            .latest()
            .ok_or_else(|| Error::not_found("protocol"))?;
        Ok(Response::new(pb::CreateProtocolResponse {
            protocol: Some(convert::protocol_version_to_pb(latest)),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "PublishProtocol"))]
    async fn publish_protocol(
        &self,
        request: Request<pb::PublishProtocolRequest>,
    ) -> Result<Response<pb::PublishProtocolResponse>, Status> {
        let tenant = tend_auth::tenant_of(&request)?;
        let r = request.into_inner();
        protocol::validate_id(&r.protocol_id).map_err(Error::from)?;
        if r.version == 0 {
            return Err(Error::invalid("version", "is required").into());
        }
        if let Some(p) = built_in(&r.protocol_id) {
            if r.version != p.version {
                return Err(Error::not_found("protocol version").into());
            }
            return Ok(Response::new(pb::PublishProtocolResponse {
                protocol: Some(convert::protocol_to_pb(p, None, true)),
            }));
        }
        let now = self.clock.now();
        let history = self
            .repo
            .execute_protocol(&tenant, &r.protocol_id, || protocol::Command::Publish {
                version: r.version,
                now,
            })
            .await
            .map_err(Error::from)?;
        let v = history
            .version(r.version)
            .ok_or_else(|| Error::not_found("protocol version"))?;
        Ok(Response::new(pb::PublishProtocolResponse {
            protocol: Some(convert::protocol_version_to_pb(v)),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetProtocol"))]
    async fn get_protocol(
        &self,
        request: Request<pb::GetProtocolRequest>,
    ) -> Result<Response<pb::GetProtocolResponse>, Status> {
        let tenant = tend_auth::tenant_of(&request)?;
        let r = request.into_inner();
        protocol::validate_id(&r.protocol_id).map_err(Error::from)?;
        let protocol = self
            .get_protocol_pb(&tenant, &r.protocol_id, r.version)
            .await?;
        Ok(Response::new(pb::GetProtocolResponse {
            protocol: Some(protocol),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListProtocols"))]
    async fn list_protocols(
        &self,
        request: Request<pb::ListProtocolsRequest>,
    ) -> Result<Response<pb::ListProtocolsResponse>, Status> {
        let tenant = tend_auth::tenant_of(&request)?;
        let mut protocols: Vec<pb::Protocol> = built_ins()
            .iter()
            .map(|p| convert::protocol_to_pb(p, None, true))
            .collect();
        for id in self.repo.protocol_ids(&tenant).await.map_err(Error::from)? {
            protocols.push(self.get_protocol_pb(&tenant, &id, 0).await?);
        }
        Ok(Response::new(pb::ListProtocolsResponse { protocols }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "Enroll"))]
    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let tenant = tend_auth::tenant_of(&request)?;
        let r = request.into_inner();
        let request_id = uuid("request_id", &r.request_id)?;
        enrollment::validate_participant_ref(&r.participant_ref).map_err(Error::from)?;
        if r.protocol_id.is_empty() {
            return Err(Error::invalid("protocol_id", "is required").into());
        }
        protocol::validate_id(&r.protocol_id).map_err(Error::from)?;
        let session_at = parse_local_date_time("session_local_time", &r.session_local_time)
            .map_err(Error::from)?;
        let time_zone = Zone::new(&r.time_zone).map_err(Error::from)?;
        let protocol = self
            .repo
            .published_protocol(&tenant, &r.protocol_id, r.protocol_version)
            .await
            .map_err(Error::from)?;
        let enrollment_id = enrollment_id_for_request(request_id);
        let command = || enrollment::Command::Enroll {
            enrollment_id,
            protocol: protocol.clone(),
            requested_version: r.protocol_version,
            session_at,
            time_zone: time_zone.clone(),
            now: self.clock.now(),
        };
        // Someone new: a refused enrollment (a protocol that needs consent,
        // a session out of range) leaves no trace of the reference.
        let participant = self
            .identities
            .for_first_write(&tenant, &r.participant_ref, || {
                let mut protocols = protocol::ProtocolSet::default();
                protocols.insert(protocol.clone());
                enrollment::decide(&Default::default(), command(), &protocols)
                    .map(drop)
                    .map_err(Error::from)
            })
            .await?;
        let stream = streams::participant(participant.id);
        let metadata = Metadata {
            correlation_id: Some(request_id),
            ..Metadata::default()
        };
        let (_, after) = self
            .repo
            .execute_participant_with(
                How {
                    new_participant: participant.new,
                    ..How::DEFAULT
                },
                &tenant,
                &stream,
                std::slice::from_ref(&protocol),
                command,
                &metadata,
            )
            .await
            .map_err(Error::from)?;
        let now = self.clock.now();
        let e = enrollment_of(&after, enrollment_id)?;
        let count = e
            .schedule(&after.protocols, now)
            .map_err(Error::from)?
            .len();
        Ok(Response::new(pb::EnrollResponse {
            enrollment: Some(convert::enrollment_to_pb(
                e,
                participant.id,
                r.participant_ref.clone(),
            )),
            occurrence_count: count as u32,
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetEnrollment"))]
    async fn get_enrollment(
        &self,
        request: Request<pb::GetEnrollmentRequest>,
    ) -> Result<Response<pb::GetEnrollmentResponse>, Status> {
        let tenant = tend_auth::tenant_of(&request)?;
        let (id, loaded) = self
            .locate(&tenant, &request.get_ref().enrollment_id)
            .await?;
        let participant = Self::participant_of(&loaded)?;
        Ok(Response::new(pb::GetEnrollmentResponse {
            enrollment: Some(
                self.enrollment_pb(&tenant, participant, enrollment_of(&loaded, id)?)
                    .await?,
            ),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "RescheduleSession"))]
    async fn reschedule_session(
        &self,
        request: Request<pb::RescheduleSessionRequest>,
    ) -> Result<Response<pb::RescheduleSessionResponse>, Status> {
        let tenant = tend_auth::tenant_of(&request)?;
        let r = request.into_inner();
        uuid("enrollment_id", &r.enrollment_id)?;
        let session_at = parse_local_date_time("session_local_time", &r.session_local_time)
            .map_err(Error::from)?;
        let (e, participant, change) = self
            .change_enrollment(&tenant, &r.enrollment_id, &[], |enrollment_id, now| {
                enrollment::Command::RescheduleSession {
                    enrollment_id,
                    session_at,
                    now,
                }
            })
            .await?;
        Ok(Response::new(pb::RescheduleSessionResponse {
            enrollment: Some(self.enrollment_pb(&tenant, participant, &e).await?),
            change: Some(change),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ChangeTimeZone"))]
    async fn change_time_zone(
        &self,
        request: Request<pb::ChangeTimeZoneRequest>,
    ) -> Result<Response<pb::ChangeTimeZoneResponse>, Status> {
        let tenant = tend_auth::tenant_of(&request)?;
        let r = request.into_inner();
        uuid("enrollment_id", &r.enrollment_id)?;
        let time_zone = Zone::new(&r.time_zone).map_err(Error::from)?;
        let (e, participant, change) = self
            .change_enrollment(&tenant, &r.enrollment_id, &[], |enrollment_id, now| {
                enrollment::Command::ChangeTimeZone {
                    enrollment_id,
                    time_zone: time_zone.clone(),
                    now,
                }
            })
            .await?;
        Ok(Response::new(pb::ChangeTimeZoneResponse {
            enrollment: Some(self.enrollment_pb(&tenant, participant, &e).await?),
            change: Some(change),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "MigrateEnrollment", dry_run = request.get_ref().dry_run))]
    async fn migrate_enrollment(
        &self,
        request: Request<pb::MigrateEnrollmentRequest>,
    ) -> Result<Response<pb::MigrateEnrollmentResponse>, Status> {
        let tenant = tend_auth::tenant_of(&request)?;
        let r = request.into_inner();
        if r.protocol_version == 0 {
            return Err(Error::invalid("protocol_version", "is required").into());
        }
        let (id, loaded) = self.locate(&tenant, &r.enrollment_id).await?;
        let protocol_id = enrollment_of(&loaded, id)?.protocol_id.clone();
        let target = self
            .repo
            .published_protocol(&tenant, &protocol_id, r.protocol_version)
            .await
            .map_err(Error::from)?;
        let command = |enrollment_id, now| enrollment::Command::Migrate {
            enrollment_id,
            protocol: target.clone(),
            now,
        };
        let participant = Self::participant_of(&loaded)?;
        let (e, change) = if r.dry_run {
            let now = self.clock.now();
            let mut before = loaded;
            before.protocols.insert(target.clone());
            let events = enrollment::decide(&before.state, command(id, now), &before.protocols)
                .map_err(Error::from)?;
            let mut after = before.clone();
            after.state = events.iter().fold(after.state, enrollment::evolve);
            let change = report(&before, &after, id, now)?;
            (enrollment_of(&after, id)?.clone(), change)
        } else {
            let (e, _, change) = self
                .change_enrollment(
                    &tenant,
                    &r.enrollment_id,
                    std::slice::from_ref(&target),
                    command,
                )
                .await?;
            (e, change)
        };
        Ok(Response::new(pb::MigrateEnrollmentResponse {
            enrollment: Some(self.enrollment_pb(&tenant, participant, &e).await?),
            change: Some(change),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "PauseEnrollment"))]
    async fn pause_enrollment(
        &self,
        request: Request<pb::PauseEnrollmentRequest>,
    ) -> Result<Response<pb::PauseEnrollmentResponse>, Status> {
        let tenant = tend_auth::tenant_of(&request)?;
        let enrollment = self
            .lifecycle(
                &tenant,
                &request.get_ref().enrollment_id,
                |enrollment_id, now| enrollment::Command::Pause { enrollment_id, now },
            )
            .await?;
        Ok(Response::new(pb::PauseEnrollmentResponse { enrollment }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ResumeEnrollment"))]
    async fn resume_enrollment(
        &self,
        request: Request<pb::ResumeEnrollmentRequest>,
    ) -> Result<Response<pb::ResumeEnrollmentResponse>, Status> {
        let tenant = tend_auth::tenant_of(&request)?;
        let enrollment = self
            .lifecycle(
                &tenant,
                &request.get_ref().enrollment_id,
                |enrollment_id, now| enrollment::Command::Resume { enrollment_id, now },
            )
            .await?;
        Ok(Response::new(pb::ResumeEnrollmentResponse { enrollment }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "WithdrawEnrollment"))]
    async fn withdraw_enrollment(
        &self,
        request: Request<pb::WithdrawEnrollmentRequest>,
    ) -> Result<Response<pb::WithdrawEnrollmentResponse>, Status> {
        let tenant = tend_auth::tenant_of(&request)?;
        let enrollment = self
            .lifecycle(
                &tenant,
                &request.get_ref().enrollment_id,
                |enrollment_id, now| enrollment::Command::Withdraw { enrollment_id, now },
            )
            .await?;
        Ok(Response::new(pb::WithdrawEnrollmentResponse { enrollment }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "CompleteOccurrence"))]
    async fn complete_occurrence(
        &self,
        request: Request<pb::CompleteOccurrenceRequest>,
    ) -> Result<Response<pb::CompleteOccurrenceResponse>, Status> {
        let tenant = tend_auth::tenant_of(&request)?;
        let r = request.into_inner();
        let id = uuid("enrollment_id", &r.enrollment_id)?;
        let occurrence_id = uuid("occurrence_id", &r.occurrence_id)?;
        let completed_at = r
            .completed_at
            .as_ref()
            .map(|t| convert::from_timestamp("completed_at", t))
            .transpose()?;
        let stream = self
            .repo
            .enrollment_stream(&tenant, id)
            .await
            .map_err(Error::from)?;
        let (_, after) = self
            .repo
            .execute_participant(
                &tenant,
                &stream,
                &[],
                || enrollment::Command::Complete {
                    enrollment_id: id,
                    occurrence_id,
                    completed_at,
                    now: self.clock.now(),
                },
                &Metadata::default(),
            )
            .await
            .map_err(Error::from)?;
        let now = self.clock.now();
        let schedule = enrollment_of(&after, id)?
            .schedule(&after.protocols, now)
            .map_err(Error::from)?;
        let o = schedule
            .iter()
            .find(|o| o.id == occurrence_id)
            .ok_or_else(|| Error::not_found("occurrence"))?;
        Ok(Response::new(pb::CompleteOccurrenceResponse {
            occurrence: Some(convert::occurrence_to_pb(o)),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetSchedule"))]
    async fn get_schedule(
        &self,
        request: Request<pb::GetScheduleRequest>,
    ) -> Result<Response<pb::GetScheduleResponse>, Status> {
        let tenant = tend_auth::tenant_of(&request)?;
        let r = request.into_inner();
        uuid("enrollment_id", &r.enrollment_id)?;
        let from = r
            .from
            .as_ref()
            .map(|t| convert::from_timestamp("from", t))
            .transpose()?;
        let to =
            r.to.as_ref()
                .map(|t| convert::from_timestamp("to", t))
                .transpose()?;
        if let (Some(f), Some(t)) = (from, to)
            && f >= t
        {
            return Err(Error::invalid("to", "must be after from").into());
        }
        let (id, loaded) = self.locate(&tenant, &r.enrollment_id).await?;
        let e = enrollment_of(&loaded, id)?;
        let now = self.clock.now();
        let occurrences = e
            .schedule(&loaded.protocols, now)
            .map_err(Error::from)?
            .iter()
            .filter(|o| from.is_none_or(|f| o.at >= f) && to.is_none_or(|t| o.at < t))
            .map(convert::occurrence_to_pb)
            .collect();
        let participant = Self::participant_of(&loaded)?;
        Ok(Response::new(pb::GetScheduleResponse {
            enrollment: Some(self.enrollment_pb(&tenant, participant, e).await?),
            occurrences,
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListDue"))]
    async fn list_due(
        &self,
        request: Request<pb::ListDueRequest>,
    ) -> Result<Response<pb::ListDueResponse>, Status> {
        let tenant = tend_auth::tenant_of(&request)?;
        let r = request.into_inner();
        let from = match &r.from {
            Some(t) => convert::from_timestamp("from", t)?,
            None => return Err(Error::invalid("from", "is required").into()),
        };
        let to = match &r.to {
            Some(t) => convert::from_timestamp("to", t)?,
            None => return Err(Error::invalid("to", "is required").into()),
        };
        if from >= to {
            return Err(Error::invalid("to", "must be after from").into());
        }
        let page_size = match r.page_size {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(Error::invalid("page_size", "must be at most 1000").into());
            }
            n => n,
        };
        let after = parse_page_token(&r.page_token)?;
        // One participant's, by the stream their rows carry.
        let stream = match r.participant_ref.as_str() {
            "" => None,
            reference => Some(streams::participant(
                self.identities
                    .find(&tenant, reference)
                    .await
                    .map_err(Error::from)?,
            )),
        };
        type Row = (
            Uuid,
            Uuid,
            chrono::DateTime<chrono::Utc>,
            chrono::DateTime<chrono::Utc>,
            Option<chrono::DateTime<chrono::Utc>>,
            bool,
            serde_json::Value,
            String,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT occurrence_id, enrollment_id, scheduled_at, closes_at, completed_at, cancelled, detail, stream_id
             FROM scheduler_occurrences
             WHERE tenant_id = $1 AND scheduled_at >= $2 AND scheduled_at < $3
               AND ($4::timestamptz IS NULL OR (scheduled_at, occurrence_id) > ($4, $5))
               AND (NOT $6 OR (completed_at IS NULL AND NOT cancelled))
               AND ($8::text IS NULL OR stream_id = $8)
             ORDER BY scheduled_at, occurrence_id
             LIMIT $7",
        )
        .bind(tenant.as_str())
        .bind(instants::to_chrono(from))
        .bind(instants::to_chrono(to))
        .bind(after.map(|(t, _)| instants::to_chrono(t)))
        .bind(after.map(|(_, id)| id).unwrap_or_default())
        .bind(r.open_only)
        .bind(i64::from(page_size) + 1)
        .bind(stream.as_ref().map(|s| s.as_str()))
        .fetch_all(self.repo.store().pool())
        .await
        .map_err(|e| Error::from(tend_event_store::Error::from(e)))?;
        let rows: Vec<DueRow> = rows
            .into_iter()
            .map(|r| DueRow {
                occurrence_id: r.0,
                enrollment_id: r.1,
                scheduled_at: r.2,
                closes_at: r.3,
                completed_at: r.4,
                cancelled: r.5,
                detail: r.6,
                participant: tend_event_store::StreamId::new(r.7)
                    .ok()
                    .as_ref()
                    .and_then(streams::key_of)
                    .unwrap_or_default(),
            })
            .collect();
        let now = self.clock.now();
        let more = rows.len() > page_size as usize;
        let rows = &rows[..rows.len().min(page_size as usize)];
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => format!(
                "{}.{}",
                last.scheduled_at.timestamp_micros(),
                last.occurrence_id
            ),
            _ => String::new(),
        };
        let mut participants: Vec<Uuid> = rows.iter().map(|r| r.participant).collect();
        participants.sort_unstable();
        participants.dedup();
        let references = self
            .identities
            .references(&tenant, &participants)
            .await
            .map_err(Error::from)?;
        let occurrences = rows
            .iter()
            .map(|row| row.to_pb(now, &references))
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Response::new(pb::ListDueResponse {
            occurrences,
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListEnrollments"))]
    async fn list_enrollments(
        &self,
        request: Request<pb::ListEnrollmentsRequest>,
    ) -> Result<Response<pb::ListEnrollmentsResponse>, Status> {
        let tenant = tend_auth::tenant_of(&request)?;
        let r = request.into_inner();
        let (participant, loaded) = self.by_reference(&tenant, &r.participant_ref).await?;
        let mut enrollments: Vec<&Enrollment> = loaded.state.enrollments.iter().collect();
        enrollments.sort_by_key(|e| std::cmp::Reverse(e.enrolled_at));
        Ok(Response::new(pb::ListEnrollmentsResponse {
            participant_id: participant.to_string(),
            enrollments: enrollments
                .into_iter()
                .map(|e| convert::enrollment_to_pb(e, participant, r.participant_ref.clone()))
                .collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetAgenda"))]
    async fn get_agenda(
        &self,
        request: Request<pb::GetAgendaRequest>,
    ) -> Result<Response<pb::GetAgendaResponse>, Status> {
        let tenant = tend_auth::tenant_of(&request)?;
        let r = request.into_inner();
        let first = optional_date("local_date", &r.local_date)?;
        let last = optional_date("end_local_date", &r.end_local_date)?;
        if last.is_some() && first.is_none() {
            return Err(Error::invalid("local_date", "is required with end_local_date").into());
        }
        let (participant, loaded) = self.by_reference(&tenant, &r.participant_ref).await?;
        let now = self.clock.now();
        // "Today" on the calendar of the zone they live in now: that of
        // their latest enrollment.
        let zone = loaded
            .state
            .enrollments
            .iter()
            .max_by_key(|e| e.enrolled_at)
            .map(|e| e.current().zone.clone());
        let first = match (first, &zone) {
            (Some(d), _) => d,
            (None, Some(zone)) => zone.tz().to_datetime(now).date(),
            (None, None) => jiff::tz::TimeZone::UTC.to_datetime(now).date(),
        };
        let last = last.unwrap_or(first);
        let days = first
            .until(last)
            .map_err(|_| Error::invalid("end_local_date", "is out of range"))?;
        if last < first {
            return Err(Error::invalid("end_local_date", "must not be before local_date").into());
        }
        if days.get_days() > MAX_AGENDA_DAYS {
            return Err(Error::invalid(
                "end_local_date",
                format!("must be at most {MAX_AGENDA_DAYS} days after local_date"),
            )
            .into());
        }
        let mut occurrences = Vec::new();
        for e in &loaded.state.enrollments {
            let schedule = e.schedule(&loaded.protocols, now).map_err(Error::from)?;
            occurrences.extend(schedule.into_iter().filter(|o| {
                (first..=last).contains(&o.local_date)
                    && !(r.open_only
                        && matches!(
                            o.status,
                            tend_domain::schedule::Status::Done
                                | tend_domain::schedule::Status::Late
                                | tend_domain::schedule::Status::Cancelled
                        ))
            }));
        }
        occurrences.sort_by_key(|o| (o.at, o.id));
        Ok(Response::new(pb::GetAgendaResponse {
            participant_id: participant.to_string(),
            time_zone: zone.map(|z| z.name().to_owned()).unwrap_or_default(),
            local_date: first.to_string(),
            end_local_date: last.to_string(),
            occurrences: occurrences
                .iter()
                .map(|o| pb::Occurrence {
                    participant_ref: r.participant_ref.clone(),
                    participant_id: participant.to_string(),
                    ..convert::occurrence_to_pb(o)
                })
                .collect(),
        }))
    }
}

/// How many days past its first an agenda may cover: a season of a
/// protocol, not the whole history.
const MAX_AGENDA_DAYS: i32 = 92;

/// A "YYYY-MM-DD" field that may be empty.
fn optional_date(field: &'static str, value: &str) -> Result<Option<jiff::civil::Date>, Error> {
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse::<jiff::civil::Date>()
        .map(Some)
        .map_err(|_| Error::invalid(field, "must be a date YYYY-MM-DD"))
}

fn parse_page_token(token: &str) -> Result<Option<(Timestamp, Uuid)>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Error::invalid("page_token", "is not a token this service returned");
    let (micros, id) = token.split_once('.').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    let at = Timestamp::from_microsecond(micros).map_err(|_| bad())?;
    convert::from_timestamp("page_token", &instants::to_pb(at))?;
    Ok(Some((at, Uuid::parse_str(id).map_err(|_| bad())?)))
}

#[derive(Debug)]
struct DueRow {
    occurrence_id: Uuid,
    enrollment_id: Uuid,
    scheduled_at: chrono::DateTime<chrono::Utc>,
    closes_at: chrono::DateTime<chrono::Utc>,
    completed_at: Option<chrono::DateTime<chrono::Utc>>,
    cancelled: bool,
    detail: serde_json::Value,
    participant: Uuid,
}

impl DueRow {
    fn to_pb(
        &self,
        now: Timestamp,
        references: &std::collections::HashMap<Uuid, String>,
    ) -> Result<pb::Occurrence, Error> {
        use tend_domain::schedule::Status;
        let d: OccurrenceDetail = serde_json::from_value(self.detail.clone()).map_err(|e| {
            Error::from(tend_event_store::Error::Corrupt {
                position: 0,
                reason: format!("scheduler_occurrences.detail: {e}"),
            })
        })?;
        let (at, closes) = (
            instants::from_chrono(self.scheduled_at),
            instants::from_chrono(self.closes_at),
        );
        let completed = self.completed_at.map(instants::from_chrono);
        let status = match completed {
            Some(c) if c <= closes => Status::Done,
            Some(_) => Status::Late,
            None if self.cancelled => Status::Cancelled,
            None if now < at => Status::Upcoming,
            None if now < closes => Status::Due,
            None => Status::Missed,
        };
        Ok(pb::Occurrence {
            occurrence_id: self.occurrence_id.to_string(),
            enrollment_id: self.enrollment_id.to_string(),
            activity_key: d.activity_key,
            kind: Some(convert::kind_to_pb(&d.kind)),
            day: d.day,
            arc_week: d.arc_week,
            local_date: d.local_date,
            local_time: d.local_time,
            time_zone: d.time_zone,
            scheduled_at: Some(instants::to_pb(at)),
            window_closes_at: Some(instants::to_pb(closes)),
            target_minutes: d.target_minutes,
            status: convert::status_to_pb(status) as i32,
            completed_at: completed.map(instants::to_pb),
            protocol_version: d.protocol_version,
            participant_ref: references
                .get(&self.participant)
                .cloned()
                .unwrap_or_default(),
            participant_id: self.participant.to_string(),
        })
    }
}
