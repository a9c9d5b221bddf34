//! The gRPC handlers.

use std::sync::Arc;

use jiff::Timestamp;
use jiff::civil::Time;
use tend_api::assessment::v1 as pb;
use tend_api::assessment::v1::assessment_service_server::{
    AssessmentService, AssessmentServiceServer,
};
use tend_auth::tenant_of;
use tend_domain::Error as DomainError;
use tend_domain::assessment::{
    self, Command, Event, Instrument, InstrumentEvent, Record, assessment_id_for_request,
};
use tend_domain::protocol::ActivityKind;
use tend_event_store::{EventStore, ExpectedVersion, Metadata, StreamId, TenantId};
use tend_privacy::Directory;
use tend_service_kit::execute::{self, Retry, new_events};
use tend_service_kit::{Clock, Identities, Participants, Schedules, streams};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::Error;
use crate::convert::{assessment_pb, change_pb, instrument, instrument_pb, method_pb, sourced};

/// An event id derived from the request may be stored already by another
/// writer deciding at another instant: decide again on what they wrote.
const RETRY: Retry = Retry::on_any_conflict(5);

#[derive(Debug, Clone)]
pub struct AssessmentApi {
    store: EventStore,
    schedules: Schedules,
    identities: Identities,
    clock: Arc<dyn Clock>,
}

/// Who a call is about: the participant's opaque id and their assessment
/// stream.
struct Subject {
    tenant: TenantId,
    key: Uuid,
    stream: StreamId,
}

fn parse_uuid(field: &str, s: &str) -> Result<Uuid, Error> {
    match Uuid::try_parse(s) {
        Ok(id) if !id.is_nil() => Ok(id),
        _ => Err(Error::invalid(field, "must be a UUID (not the nil UUID)")),
    }
}

impl AssessmentApi {
    pub fn new(store: EventStore, directory: Directory, clock: Arc<dyn Clock>) -> Self {
        Self {
            schedules: Schedules::new(store.clone()),
            identities: Identities::new(Participants::new(store.clone()), directory),
            store,
            clock,
        }
    }

    pub fn into_server(self) -> AssessmentServiceServer<Self> {
        AssessmentServiceServer::new(self)
    }

    /// The participant a reference names; NOT_FOUND for someone unknown
    /// (or erased). Questionnaires follow an enrollment, which registers
    /// the participant.
    async fn subject(&self, tenant: TenantId, participant_ref: &str) -> Result<Subject, Error> {
        let key = self.identities.find(&tenant, participant_ref).await?;
        Ok(Subject {
            stream: streams::assessment(key),
            tenant,
            key,
        })
    }

    // ---- Instruments ----

    fn instrument_stream(id: &str) -> Result<StreamId, Error> {
        tend_domain::protocol::validate_id(id).map_err(|e| e.within("instrument_id"))?;
        Ok(streams::instrument(id)?)
    }

    /// Every version of a tenant instrument, oldest first, and the stream's
    /// version.
    async fn versions(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<(Vec<Instrument>, Option<u64>), Error> {
        let stream = Self::instrument_stream(id)?;
        Ok(execute::load::<assessment::Instruments>(&self.store, tenant, &stream).await?)
    }

    /// A built-in or the tenant's own; version 0 is the latest.
    async fn instrument(
        &self,
        tenant: &TenantId,
        id: &str,
        version: u32,
    ) -> Result<Instrument, Error> {
        if let Some(i) = assessment::built_in(id) {
            return if version == 0 || version == i.version {
                Ok(i.clone())
            } else {
                Err(DomainError::not_found("instrument version").into())
            };
        }
        let (versions, _) = self.versions(tenant, id).await?;
        if versions.is_empty() {
            return Err(DomainError::not_found("instrument").into());
        }
        let found = match version {
            0 => versions.last(),
            v => versions.iter().find(|i| i.version == v),
        };
        found
            .cloned()
            .ok_or_else(|| DomainError::not_found("instrument version").into())
    }

    /// Completes the occurrence a stored administration fulfils. Its
    /// preconditions were checked before the administration was written;
    /// what can still refuse it (a withdrawal in between) does not undo
    /// the administration, which is the fact that matters: it is logged,
    /// and a retry of the submission tries again.
    async fn complete(
        &self,
        subject: &Subject,
        occurrence_id: Option<Uuid>,
        administered_at: Timestamp,
        now: Timestamp,
    ) {
        let Some(occurrence) = occurrence_id else {
            return;
        };
        if let Err(e) = self
            .schedules
            .complete_occurrence(
                &subject.tenant,
                subject.key,
                occurrence,
                administered_at,
                // An administration dated within the allowed clock skew
                // completes at its own time.
                now.max(administered_at),
            )
            .await
        {
            tracing::warn!(tenant = %subject.tenant, error = %e, "an administration did not complete its occurrence");
        }
    }

    // ---- Assessments ----

    async fn load(&self, subject: &Subject) -> Result<(Record, Option<u64>), Error> {
        Ok(
            execute::load::<assessment::Aggregate>(&self.store, &subject.tenant, &subject.stream)
                .await?,
        )
    }

    async fn execute(&self, subject: &Subject, command: Command) -> Result<(Record, usize), Error> {
        let done = execute::execute::<assessment::Aggregate, Error>(
            &self.store,
            &subject.tenant,
            &subject.stream,
            RETRY,
            &Metadata::default(),
            |e| e.id().unwrap_or_else(Uuid::now_v7),
            |_| Ok(command.clone()),
        )
        .await?;
        let n = done.events.len();
        Ok((done.into_after::<assessment::Aggregate>(), n))
    }

    /// The first instant of the participant's latest arc, if they have one.
    async fn arc_start(&self, subject: &Subject) -> Result<Option<Timestamp>, Error> {
        let (participant, _) = self
            .schedules
            .participant(&subject.tenant, subject.key)
            .await?;
        Ok(participant
            .enrollments
            .iter()
            .max_by_key(|e| e.enrolled_at)
            .map(|e| {
                let (first, _) = e.arc_dates();
                e.current()
                    .zone
                    .tz()
                    .to_ambiguous_timestamp(first.to_datetime(Time::midnight()))
                    .compatible()
                    .unwrap_or(e.enrolled_at)
            }))
    }
}

#[tonic::async_trait]
impl AssessmentService for AssessmentApi {
    async fn list_instruments(
        &self,
        request: Request<pb::ListInstrumentsRequest>,
    ) -> Result<Response<pb::ListInstrumentsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let mut instruments: Vec<pb::Instrument> =
            assessment::built_ins().iter().map(instrument_pb).collect();
        let found = self
            .store
            .list_streams(&tenant, streams::INSTRUMENT)
            .await
            .map_err(Error::from)?;
        for stream in found {
            let Some(id) = streams::id_in(streams::INSTRUMENT, &stream) else {
                continue;
            };
            let (versions, _) = self.versions(&tenant, id).await?;
            if let Some(latest) = versions.last() {
                instruments.push(instrument_pb(latest));
            }
        }
        Ok(Response::new(pb::ListInstrumentsResponse { instruments }))
    }

    async fn get_instrument(
        &self,
        request: Request<pb::GetInstrumentRequest>,
    ) -> Result<Response<pb::GetInstrumentResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let r = request.into_inner();
        let i = self
            .instrument(&tenant, &r.instrument_id, r.version)
            .await?;
        Ok(Response::new(pb::GetInstrumentResponse {
            instrument: Some(instrument_pb(&i)),
        }))
    }

    async fn define_instrument(
        &self,
        request: Request<pb::DefineInstrumentRequest>,
    ) -> Result<Response<pb::DefineInstrumentResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let given = request
            .into_inner()
            .instrument
            .ok_or_else(|| Error::invalid("instrument", "is required"))?;
        let given = instrument(given)?;
        let stream = Self::instrument_stream(&given.id).map_err(|_| {
            Error::invalid(
                "instrument.instrument_id",
                "must be 1 to 64 lowercase letters, digits and dashes",
            )
        })?;
        let done = execute::execute::<assessment::Instruments, Error>(
            &self.store,
            &tenant,
            &stream,
            RETRY,
            &Metadata::default(),
            |InstrumentEvent::Defined(defined)| {
                Uuid::new_v5(
                    &Uuid::NAMESPACE_OID,
                    format!(
                        "{tenant}/instrument/{}/{}",
                        defined.instrument.id, defined.instrument.version
                    )
                    .as_bytes(),
                )
            },
            |_| Ok(given.clone()),
        )
        .await?;
        let instrument = match done.events.first() {
            Some(InstrumentEvent::Defined(defined)) => defined.instrument.clone(),
            // Defined before with the same content (as that version, or as
            // the latest when the next one was asked for).
            None => done
                .before
                .iter()
                .filter(|v| given.version == 0 || v.version == given.version)
                .max_by_key(|v| v.version)
                .cloned()
                .unwrap_or(given),
        };
        Ok(Response::new(pb::DefineInstrumentResponse {
            instrument: Some(instrument_pb(&instrument)),
        }))
    }

    async fn submit_responses(
        &self,
        request: Request<pb::SubmitResponsesRequest>,
    ) -> Result<Response<pb::SubmitResponsesResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let r = request.into_inner();
        let subject = self.subject(tenant, &r.participant_ref).await?;
        let request_id = parse_uuid("request_id", &r.request_id)?;
        let administered_at =
            tend_service_kit::instants::from_pb("administered_at", r.administered_at.as_ref())
                .map_err(Error::from)?;
        let occurrence_id = match r.occurrence_id.as_str() {
            "" => None,
            s => Some(parse_uuid("occurrence_id", s)?),
        };
        let instrument = self
            .instrument(&subject.tenant, &r.instrument_id, r.instrument_version)
            .await?;
        let (participant, _) = self
            .schedules
            .participant(&subject.tenant, subject.key)
            .await
            .map_err(Error::from)?;
        if participant.enrollments.is_empty() {
            return Err(Status::not_found(
                "participant not found: enroll them before assessing them",
            ));
        }
        let now = self.clock.now();
        if let Some(occurrence) = occurrence_id {
            let facts = self
                .schedules
                .occurrence_of(&subject.tenant, subject.key, occurrence, now)
                .await
                .map_err(Error::from)?
                .ok_or_else(|| {
                    Error::invalid("occurrence_id", "is not an occurrence of this participant")
                })?;
            match facts.kind {
                ActivityKind::Assessment { instrument: ref id } if *id == instrument.id => {}
                _ => {
                    return Err(Error::invalid(
                        "occurrence_id",
                        format!("is not an administration of {}", instrument.id),
                    )
                    .into());
                }
            }
            // Everything that would refuse the completion is checked before
            // anything is written.
            if facts.cancelled {
                return Err(Error::from(DomainError::refused(
                    "occurrence_id",
                    "the occurrence was cancelled by a pause or withdrawal",
                ))
                .into());
            }
            if administered_at < facts.opens_at {
                return Err(Error::invalid(
                    "administered_at",
                    "is before the named occurrence's window opens",
                )
                .into());
            }
            if facts.completed_at.is_some_and(|c| c != administered_at) {
                return Err(Error::from(DomainError::refused(
                    "occurrence_id",
                    "is already completed by another administration",
                ))
                .into());
            }
        }
        let assessment_id = assessment_id_for_request(subject.key, request_id);
        let answers: Vec<(u32, i32)> = r.answers.iter().map(|a| (a.item, a.answer)).collect();
        // No read of the participant's record: every event's id follows
        // from the request, so the store's idempotency check recognises a
        // retry (and refuses the same request id with other content).
        let events = assessment::decide(
            &Record::default(),
            Command::Submit {
                assessment_id,
                instrument,
                answers,
                administered_at,
                occurrence_id,
                now,
            },
        )
        .map_err(Error::from)?;
        let new = new_events(
            &events,
            |e| e.id().unwrap_or_else(Uuid::now_v7),
            &Metadata::default(),
        )
        .map_err(Error::from)?;
        let fresh = match self
            .store
            .append(&subject.tenant, &subject.stream, ExpectedVersion::Any, new)
            .await
        {
            Ok(appended) => !appended.already_stored,
            Err(tend_event_store::Error::IdempotencyConflict { .. }) => {
                // Either other content under this request id, or the same
                // submission scored differently since (a new instrument
                // version when 0 asked for the latest): the stored one
                // answers if it is the same submission.
                let (record, _) = self.load(&subject).await?;
                let Some(Event::Submitted(mine)) = events.first() else {
                    return Err(Error::contended().into());
                };
                return match record.assessments.get(&assessment_id) {
                    Some(a)
                        if a.instrument_id == mine.instrument_id
                            && (r.instrument_version == 0
                                || a.instrument_version == r.instrument_version)
                            && a.answers == mine.answers
                            && a.administered_at == mine.administered_at
                            && a.occurrence_id == mine.occurrence_id =>
                    {
                        self.complete(&subject, occurrence_id, administered_at, now)
                            .await;
                        Ok(Response::new(pb::SubmitResponsesResponse {
                            assessment: Some(assessment_pb(a)),
                        }))
                    }
                    _ => Err(Status::already_exists(
                        "request_id: was already used for a different submission",
                    )),
                };
            }
            Err(e) => return Err(Error::from(e).into()),
        };
        if fresh {
            for e in &events {
                if let Event::SafetySignal(s) = e {
                    // Ids only: no answers, no participant reference.
                    tracing::warn!(tenant = %subject.tenant, instrument = %s.instrument_id, item = s.item, "safety signal raised");
                }
            }
        }
        self.complete(&subject, occurrence_id, administered_at, now)
            .await;
        let record = events.iter().fold(Record::default(), assessment::evolve);
        Ok(Response::new(pb::SubmitResponsesResponse {
            assessment: record.assessments.get(&assessment_id).map(assessment_pb),
        }))
    }

    async fn get_assessment(
        &self,
        request: Request<pb::GetAssessmentRequest>,
    ) -> Result<Response<pb::GetAssessmentResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let r = request.into_inner();
        let subject = self.subject(tenant, &r.participant_ref).await?;
        let id = parse_uuid("assessment_id", &r.assessment_id)?;
        let (record, _) = self.load(&subject).await?;
        let a = record
            .assessments
            .get(&id)
            .ok_or_else(|| Error::from(DomainError::not_found("assessment")))?;
        Ok(Response::new(pb::GetAssessmentResponse {
            assessment: Some(assessment_pb(a)),
        }))
    }

    async fn list_assessments(
        &self,
        request: Request<pb::ListAssessmentsRequest>,
    ) -> Result<Response<pb::ListAssessmentsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let r = request.into_inner();
        let subject = self.subject(tenant, &r.participant_ref).await?;
        let (record, _) = self.load(&subject).await?;
        let mut list: Vec<&assessment::Assessment> = record
            .assessments
            .values()
            .filter(|a| r.instrument_id.is_empty() || a.instrument_id == r.instrument_id)
            .collect();
        list.sort_by_key(|a| (a.administered_at, a.seq));
        Ok(Response::new(pb::ListAssessmentsResponse {
            assessments: list.into_iter().map(assessment_pb).collect(),
        }))
    }

    async fn get_change(
        &self,
        request: Request<pb::GetChangeRequest>,
    ) -> Result<Response<pb::GetChangeResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let r = request.into_inner();
        let subject = self.subject(tenant, &r.participant_ref).await?;
        let sd = sourced("sd", r.sd.as_ref())?;
        let reliability = sourced("reliability", r.reliability.as_ref())?;
        if sd.as_ref().is_some_and(|s| s.value <= 0.0) {
            return Err(Error::invalid("sd.value", "must be above 0").into());
        }
        if reliability
            .as_ref()
            .is_some_and(|s| s.value <= 0.0 || s.value >= 1.0)
        {
            return Err(Error::invalid("reliability.value", "must lie between 0 and 1").into());
        }
        let (record, _) = self.load(&subject).await?;
        let arc_start = self.arc_start(&subject).await?;
        let baseline = record
            .baseline(&r.instrument_id, arc_start)
            .ok_or_else(|| Error::from(DomainError::not_found("baseline assessment")))?;
        let current = match r.assessment_id.as_str() {
            "" => record.of(&r.instrument_id).last().copied(),
            s => {
                let id = parse_uuid("assessment_id", s)?;
                record
                    .assessments
                    .get(&id)
                    .filter(|a| a.instrument_id == r.instrument_id)
            }
        }
        .ok_or_else(|| Error::from(DomainError::not_found("assessment")))?;
        if current.assessment_id == baseline.assessment_id {
            return Err(Error::from(DomainError::refused(
                "assessment_id",
                "is the baseline itself: there is no later administration to compare",
            ))
            .into());
        }
        let version = current
            .latest()
            .map_or(current.instrument_version, |s| s.instrument_version);
        let instrument = self
            .instrument(&subject.tenant, &r.instrument_id, version)
            .await?;
        let sd = sd.or_else(|| instrument.sd.clone());
        let reliability = reliability.or_else(|| instrument.reliability.clone());
        let report = assessment::compare(
            &instrument,
            baseline,
            current,
            sd.as_ref(),
            reliability.as_ref(),
        )
        .map_err(Error::from)?;
        Ok(Response::new(pb::GetChangeResponse {
            baseline_assessment_id: baseline.assessment_id.to_string(),
            current_assessment_id: current.assessment_id.to_string(),
            instrument_version: report.instrument_version,
            method: method_pb(report.method).into(),
            total: Some(change_pb(&report.total)),
            subscales: report
                .subscales
                .iter()
                .map(|(key, c)| pb::SubscaleChange {
                    key: key.clone(),
                    change: Some(change_pb(c)),
                    interpretable: instrument.subscales_interpretable,
                })
                .collect(),
            reliable_change_unavailable: report.reliable_missing.unwrap_or_default(),
        }))
    }

    async fn designate_baseline(
        &self,
        request: Request<pb::DesignateBaselineRequest>,
    ) -> Result<Response<pb::DesignateBaselineResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let r = request.into_inner();
        let subject = self.subject(tenant, &r.participant_ref).await?;
        let assessment_id = parse_uuid("assessment_id", &r.assessment_id)?;
        let (record, _) = self
            .execute(&subject, Command::DesignateBaseline { assessment_id })
            .await?;
        Ok(Response::new(pb::DesignateBaselineResponse {
            assessment: record.assessments.get(&assessment_id).map(assessment_pb),
        }))
    }

    async fn rescore_assessments(
        &self,
        request: Request<pb::RescoreAssessmentsRequest>,
    ) -> Result<Response<pb::RescoreAssessmentsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let r = request.into_inner();
        let subject = self.subject(tenant, &r.participant_ref).await?;
        let instrument = self
            .instrument(&subject.tenant, &r.instrument_id, r.instrument_version)
            .await?;
        let (before, _) = self.load(&subject).await?;
        let due = before
            .of(&instrument.id)
            .iter()
            .filter(|a| {
                a.latest().is_none_or(|s| {
                    (s.instrument_version, s.method) != (instrument.version, instrument.method)
                })
            })
            .count();
        let (_, rescored) = self
            .execute(&subject, Command::Rescore { instrument })
            .await?;
        Ok(Response::new(pb::RescoreAssessmentsResponse {
            rescored: rescored as u32,
            skipped: due.saturating_sub(rescored) as u32,
        }))
    }
}
