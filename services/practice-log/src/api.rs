//! The gRPC handlers: requests become domain commands, notes are sealed on
//! the way in and opened on the way out, events go to the participant's
//! practice stream.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::civil::Date;
use jiff::tz::Offset;
use jiff::{SignedDuration, Timestamp};
use tend_api::practice::v1::practice_log_service_server::{
    PracticeLogService, PracticeLogServiceServer,
};
use tend_api::practice::v1::{
    CorrectEntryRequest, CorrectEntryResponse, ForgetParticipantRequest, ForgetParticipantResponse,
    GetSummaryRequest, GetSummaryResponse, KindTally, ListEntriesRequest, ListEntriesResponse,
    LogPracticeRequest, LogPracticeResponse, NoteState, PracticeDetails, PracticeEntry,
    RetractEntryRequest, RetractEntryResponse, WeekTally,
};
use tend_auth::tenant_of;
use tend_domain::consent::ErasureReason;
use tend_domain::practice::{self, Command, Content, Entry, Limits, Log};
use tend_domain::{DomainEvent, Error as DomainError};
use tend_event_store::{EventStore, ExpectedVersion, Metadata, StreamId, TenantId};
use tend_privacy::{Directory, ReadKey, open_note, seal_note};
use tend_service_kit::execute::{self, Retry, new_events};
use tend_service_kit::{Clock, Identities, Participants, Schedules, instants, streams};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::Error;
use crate::convert::{
    entry_pb, from_timestamp_pb, page_key, parse_page_token, parse_start, parse_uuid,
};

/// Someone else may write first (perhaps an event with the very id a
/// command derives, decided at another instant): decide again on what they
/// wrote.
const RETRY: Retry = Retry::on_any_conflict(5);
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 500;
/// How long a tenant's protocol-defined practice kinds are trusted before
/// an unknown kind makes them be read again.
const KINDS_FRESH: Duration = Duration::from_secs(5);

/// Settings of the practice log.
#[derive(Debug, Clone, Copy, Default)]
pub struct PracticeOptions {
    pub limits: Limits,
}

type KindCache = HashMap<TenantId, (Arc<BTreeSet<String>>, Instant)>;

#[derive(Debug, Clone)]
pub struct PracticeLogApi {
    store: EventStore,
    identities: Identities,
    schedules: Schedules,
    clock: Arc<dyn Clock>,
    options: PracticeOptions,
    kinds: Arc<Mutex<KindCache>>,
}

/// Who a call is about, resolved once: the participant's opaque id and
/// their practice stream.
struct Subject {
    tenant: TenantId,
    key: Uuid,
    stream: StreamId,
}

impl PracticeLogApi {
    pub fn new(
        store: EventStore,
        directory: Directory,
        clock: Arc<dyn Clock>,
        options: PracticeOptions,
    ) -> Self {
        Self {
            schedules: Schedules::new(store.clone()),
            identities: Identities::new(Participants::new(store.clone()), directory),
            store,
            clock,
            options,
            kinds: Arc::default(),
        }
    }

    pub fn into_server(self) -> PracticeLogServiceServer<Self> {
        PracticeLogServiceServer::new(self)
    }

    /// The participant a reference names; NOT_FOUND for someone unknown
    /// (or erased).
    async fn subject(&self, tenant: TenantId, participant_ref: &str) -> Result<Subject, Error> {
        let key = self.identities.find(&tenant, participant_ref).await?;
        Ok(Self::subject_of(tenant, key))
    }

    fn subject_of(tenant: TenantId, key: Uuid) -> Subject {
        Subject {
            stream: streams::practice(key),
            tenant,
            key,
        }
    }

    /// Whether the tenant may log `kind`: Tend's own, or one of its
    /// protocols'.
    async fn known_kinds(&self, tenant: &TenantId, kind: &str) -> Result<bool, Error> {
        if practice::BUILT_IN_KINDS.contains(&kind) {
            return Ok(true);
        }
        let cached = self.kind_cache().get(tenant).cloned();
        if let Some((kinds, at)) = &cached
            && (kinds.contains(kind) || at.elapsed() < KINDS_FRESH)
        {
            return Ok(kinds.contains(kind));
        }
        let kinds = Arc::new(self.schedules.protocol_practice_kinds(tenant).await?);
        let known = kinds.contains(kind);
        self.kind_cache()
            .insert(tenant.clone(), (kinds, Instant::now()));
        Ok(known)
    }

    fn kind_cache(&self) -> std::sync::MutexGuard<'_, KindCache> {
        self.kinds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Turns request details into validated content, with the note still in
    /// the clear (it is sealed once the event id is known).
    async fn content(
        &self,
        tenant: &TenantId,
        participant: Option<Uuid>,
        details: Option<PracticeDetails>,
        now: Timestamp,
        unchanged_start: Option<Timestamp>,
    ) -> Result<(Content, Option<String>), Error> {
        let details = details.ok_or_else(|| Error::invalid("practice", "is required"))?;
        let (started_at, utc_offset_seconds, time_zone) =
            parse_start(&details.started_at, &details.time_zone)?;
        let occurrence_id = match details.occurrence_id.as_str() {
            "" => None,
            s => Some(parse_uuid("practice.occurrence_id", s)?),
        };
        let note = practice::validate_note(&details.note)
            .map_err(|e| e.within("practice"))?
            .map(str::to_owned);
        let content = Content {
            kind: details.kind,
            started_at,
            utc_offset_seconds,
            time_zone,
            minutes: details.minutes,
            occurrence_id,
            note: None,
        };
        let kind_known = self.known_kinds(tenant, &content.kind).await?;
        let mut limits = self.options.limits;
        if unchanged_start == Some(content.started_at) {
            // Correcting the minutes of an old entry is fine.
            limits.backdating = SignedDuration::MAX;
        }
        practice::validate(&content, now, &limits, kind_known).map_err(|e| e.within("practice"))?;
        if let Some(occurrence) = occurrence_id {
            let facts = match participant {
                Some(p) => {
                    self.schedules
                        .occurrence_of(tenant, p, occurrence, now)
                        .await?
                }
                // Someone new has no occurrences.
                None => None,
            }
            .ok_or_else(|| {
                Error::invalid(
                    "practice.occurrence_id",
                    "is not an occurrence of this participant",
                )
            })?;
            practice::check_named(&content, &facts.kind, facts.cancelled, facts.opens_at)
                .map_err(|e| e.within("practice"))?;
        }
        Ok((content, note))
    }

    async fn seal(
        &self,
        subject: &Subject,
        entry_id: Uuid,
        event_id: Uuid,
        content: &mut Content,
        note: Option<&str>,
    ) -> Result<(), Error> {
        if let Some(text) = note {
            let key = self
                .identities
                .directory()
                .key_for_write(subject.tenant.as_str(), subject.key)
                .await?;
            content.note = Some(seal_note(
                &key,
                subject.tenant.as_str(),
                subject.key,
                entry_id,
                event_id,
                text,
            ));
        }
        Ok(())
    }

    async fn load(&self, subject: &Subject) -> Result<(Log, Option<u64>), Error> {
        Ok(
            execute::load::<practice::Aggregate>(&self.store, &subject.tenant, &subject.stream)
                .await?,
        )
    }

    /// Decides a command on the current log and appends what it causes,
    /// deciding again if another writer got there first.
    async fn execute(
        &self,
        subject: &Subject,
        command: impl Fn(&Log) -> Command,
        event_id: impl Fn(&practice::Event) -> Uuid,
    ) -> Result<Log, Error> {
        let done = execute::execute::<practice::Aggregate, Error>(
            &self.store,
            &subject.tenant,
            &subject.stream,
            RETRY,
            &Metadata::default(),
            event_id,
            |log| Ok(command(log)),
        )
        .await?;
        Ok(done.into_after::<practice::Aggregate>())
    }

    /// The stored entry, if `details` are what was logged under this id.
    async fn stored_retry(
        &self,
        subject: &Subject,
        entry_id: Uuid,
        event_id: Uuid,
        details: Option<&PracticeDetails>,
    ) -> Result<Option<PracticeEntry>, Error> {
        let Some(details) = details else {
            return Ok(None);
        };
        let Some(stored) = self.store.find_event(&subject.tenant, event_id).await? else {
            return Ok(None);
        };
        if stored.stream_id != subject.stream {
            return Ok(None);
        }
        let practice::Event::Logged(logged) = practice::Event::from_stored(
            &stored.event_type,
            stored.schema_version,
            &stored.payload,
        )?
        else {
            return Ok(None);
        };
        let Ok((started_at, offset, zone)) = parse_start(&details.started_at, &details.time_zone)
        else {
            return Ok(None);
        };
        let occurrence_id = match details.occurrence_id.as_str() {
            "" => None,
            s => Uuid::try_parse(s).ok(),
        };
        let c = &logged.content;
        let same = c.kind == details.kind
            && (c.started_at, c.utc_offset_seconds, &c.time_zone) == (started_at, offset, &zone)
            && c.minutes == details.minutes
            && c.occurrence_id == occurrence_id
            && c.note.is_some() != details.note.is_empty();
        if !same {
            return Ok(None);
        }
        let log = practice::evolve(Log::default(), &practice::Event::Logged(logged));
        let entry = &log.entries[&entry_id];
        let key = self.read_key(subject, &[entry]).await?;
        let pb = self.entry_pb(subject, entry, &key)?;
        // A note that can still be read must be the same note; an erased one
        // can no longer be compared, and the entry is what was logged.
        if pb.note_state() == NoteState::Present && pb.note.as_bytes() != details.note.as_slice() {
            return Ok(None);
        }
        Ok(Some(pb))
    }

    /// The key to open the subject's notes with, if any note needs one.
    async fn read_key(&self, subject: &Subject, entries: &[&Entry]) -> Result<ReadKey, Error> {
        if entries.iter().all(|e| e.current.note.is_none()) {
            return Ok(ReadKey::None);
        }
        Ok(self
            .identities
            .directory()
            .key_for_read(subject.tenant.as_str(), subject.key)
            .await?)
    }

    fn entry_pb(
        &self,
        subject: &Subject,
        entry: &Entry,
        key: &ReadKey,
    ) -> Result<PracticeEntry, Error> {
        let (note, state) = match (&entry.current.note, key) {
            (None, _) => (String::new(), NoteState::None),
            (Some(sealed), ReadKey::Key(key)) => (
                open_note(
                    key,
                    subject.tenant.as_str(),
                    subject.key,
                    entry.entry_id,
                    sealed,
                )?,
                NoteState::Present,
            ),
            (Some(_), ReadKey::Erased | ReadKey::None) => (String::new(), NoteState::Erased),
        };
        Ok(entry_pb(entry, note, state))
    }
}

#[tonic::async_trait]
impl PracticeLogService for PracticeLogApi {
    async fn log_practice(
        &self,
        request: Request<LogPracticeRequest>,
    ) -> Result<Response<LogPracticeResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let r = request.into_inner();
        let entry_id = parse_uuid("entry_id", &r.entry_id)?;
        let found = self
            .identities
            .lookup(&tenant, &r.participant_ref)
            .await
            .map_err(Error::from)?;
        let now = self.clock.now();
        let prepared = async {
            let (mut content, note) = self
                .content(&tenant, found, r.practice.clone(), now, None)
                .await?;
            // Someone new is registered only once their entry is valid.
            let key = match found {
                Some(key) => key,
                None => {
                    self.identities
                        .register(&tenant, &r.participant_ref)
                        .await?
                }
            };
            let subject = Self::subject_of(tenant.clone(), key);
            let event_id = practice::entry_event_id(subject.key, entry_id);
            self.seal(&subject, entry_id, event_id, &mut content, note.as_deref())
                .await?;
            Ok::<_, Error>((subject, event_id, content, note))
        }
        .await;
        let (subject, event_id, content, note) = match (prepared, found) {
            (Ok(prepared), _) => prepared,
            (Err(e), None) => return Err(e.into()),
            (Err(e), Some(key)) => {
                // A retry of an entry already stored gets the original
                // result even when it would not pass today (the backdating
                // limit moved on, its occurrence was cancelled, the notes
                // were erased).
                let subject = Self::subject_of(tenant, key);
                let event_id = practice::entry_event_id(subject.key, entry_id);
                return match self
                    .stored_retry(&subject, entry_id, event_id, r.practice.as_ref())
                    .await?
                {
                    Some(entry) => Ok(Response::new(LogPracticeResponse { entry: Some(entry) })),
                    None => Err(e.into()),
                };
            }
        };
        // No read: the event id is the entry's, and the store's idempotency
        // check makes a retry the same event (same content) or refuses it
        // (other content), whoever gets there first.
        let events = practice::decide(&Log::default(), Command::Log { entry_id, content })
            .map_err(Error::from)?;
        let new = new_events(&events, |_| event_id, &Metadata::default()).map_err(Error::from)?;
        self.store
            .append(&subject.tenant, &subject.stream, ExpectedVersion::Any, new)
            .await
            .map_err(Error::from)?;
        let log = events.iter().fold(Log::default(), practice::evolve);
        let entry = &log.entries[&entry_id];
        let state = if note.is_some() {
            NoteState::Present
        } else {
            NoteState::None
        };
        Ok(Response::new(LogPracticeResponse {
            entry: Some(entry_pb(entry, note.unwrap_or_default(), state)),
        }))
    }

    async fn correct_entry(
        &self,
        request: Request<CorrectEntryRequest>,
    ) -> Result<Response<CorrectEntryResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let r = request.into_inner();
        let entry_id = parse_uuid("entry_id", &r.entry_id)?;
        let request_id = parse_uuid("request_id", &r.request_id)?;
        let subject = self.subject(tenant, &r.participant_ref).await?;
        let (before, _) = self.load(&subject).await?;
        let current_start = before.entries.get(&entry_id).map(|e| e.current.started_at);
        let now = self.clock.now();
        let (mut content, note) = self
            .content(
                &subject.tenant,
                Some(subject.key),
                r.practice,
                now,
                current_start,
            )
            .await?;
        let event_id = practice::correction_event_id(subject.key, entry_id, request_id);
        self.seal(&subject, entry_id, event_id, &mut content, note.as_deref())
            .await?;
        let log = self
            .execute(
                &subject,
                |_| Command::Correct {
                    entry_id,
                    request_id,
                    content: content.clone(),
                },
                |_| event_id,
            )
            .await?;
        let entry = &log.entries[&entry_id];
        let key = self.read_key(&subject, &[entry]).await?;
        Ok(Response::new(CorrectEntryResponse {
            entry: Some(self.entry_pb(&subject, entry, &key)?),
        }))
    }

    async fn retract_entry(
        &self,
        request: Request<RetractEntryRequest>,
    ) -> Result<Response<RetractEntryResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let r = request.into_inner();
        let subject = self.subject(tenant, &r.participant_ref).await?;
        let entry_id = parse_uuid("entry_id", &r.entry_id)?;
        let log = self
            .execute(
                &subject,
                |_| Command::Retract {
                    entry_id,
                    now: self.clock.now(),
                },
                |_| Uuid::now_v7(),
            )
            .await?;
        let entry = &log.entries[&entry_id];
        let key = self.read_key(&subject, &[entry]).await?;
        Ok(Response::new(RetractEntryResponse {
            entry: Some(self.entry_pb(&subject, entry, &key)?),
        }))
    }

    async fn list_entries(
        &self,
        request: Request<ListEntriesRequest>,
    ) -> Result<Response<ListEntriesResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let r = request.into_inner();
        let subject = self.subject(tenant, &r.participant_ref).await?;
        let from = r
            .from
            .as_ref()
            .map(|t| from_timestamp_pb("from", t))
            .transpose()?;
        let to =
            r.to.as_ref()
                .map(|t| from_timestamp_pb("to", t))
                .transpose()?;
        let page_size = match r.page_size as usize {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(Error::invalid("page_size", "must be at most 500").into());
            }
            n => n,
        };
        let after = parse_page_token(&r.page_token)?;
        let (log, _) = self.load(&subject).await?;
        let mut entries: Vec<&Entry> = log
            .entries
            .values()
            .map(|e| &**e)
            .filter(|e| r.include_retracted || e.is_live())
            .filter(|e| from.is_none_or(|f| e.current.started_at >= f))
            .filter(|e| to.is_none_or(|t| e.current.started_at < t))
            .filter(|e| after.is_none_or(|a| page_key(e) > a))
            .collect();
        entries.sort_by_key(|e| page_key(e));
        let more = entries.len() > page_size;
        entries.truncate(page_size);
        let key = self.read_key(&subject, &entries).await?;
        let next_page_token = match entries.last() {
            Some(last) if more => {
                let (micros, id) = page_key(last);
                format!("{micros}.{id}")
            }
            _ => String::new(),
        };
        let entries = entries
            .iter()
            .map(|e| self.entry_pb(&subject, e, &key))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Response::new(ListEntriesResponse {
            entries,
            next_page_token,
        }))
    }

    async fn get_summary(
        &self,
        request: Request<GetSummaryRequest>,
    ) -> Result<Response<GetSummaryResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let r = request.into_inner();
        let subject = self.subject(tenant, &r.participant_ref).await?;
        let wanted = match r.enrollment_id.as_str() {
            "" => None,
            s => Some(parse_uuid("enrollment_id", s)?),
        };
        let (log, _) = self.load(&subject).await?;
        let (participant, _) = self
            .schedules
            .participant(&subject.tenant, subject.key)
            .await
            .map_err(Error::from)?;
        let enrollment = match wanted {
            Some(id) => Some(
                participant
                    .enrollment(id)
                    .ok_or_else(|| Error::from(DomainError::not_found("enrollment")))?,
            ),
            None => participant.enrollments.iter().max_by_key(|e| e.enrolled_at),
        };
        let now = self.clock.now();
        let today: Date = match enrollment {
            Some(e) => e.current().zone.tz().to_datetime(now).date(),
            None => {
                // Without a zone, the offset of their latest entry.
                let offset = log
                    .live()
                    .last()
                    .map_or(0, |e| e.current.utc_offset_seconds);
                Offset::from_seconds(offset)
                    .unwrap_or(Offset::UTC)
                    .to_datetime(now)
                    .date()
            }
        };
        let s = practice::summarize(&log, enrollment.map(|e| e.current().session.date()), today);
        Ok(Response::new(GetSummaryResponse {
            entries: s.entries,
            minutes: s.minutes,
            weeks: s
                .weeks
                .into_iter()
                .map(|t| WeekTally {
                    arc_week: t.key,
                    entries: t.entries,
                    minutes: t.minutes,
                })
                .collect(),
            kinds: s
                .kinds
                .into_iter()
                .map(|t| KindTally {
                    kind: t.key,
                    entries: t.entries,
                    minutes: t.minutes,
                })
                .collect(),
            streak_days: s.streak_days,
            last_practice_at: s.last_practice_at.map(instants::to_pb),
            enrollment_id: enrollment.map(|e| e.id.to_string()).unwrap_or_default(),
        }))
    }

    async fn forget_participant(
        &self,
        request: Request<ForgetParticipantRequest>,
    ) -> Result<Response<ForgetParticipantResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let r = request.into_inner();
        let subject = self.subject(tenant, &r.participant_ref).await?;
        // The whole person is erased (PrivacyService.EraseParticipant with
        // reason PARTICIPANT_REQUEST): the notes are sealed with the same
        // key as the reference. The practice log records it first.
        let log = self
            .execute(
                &subject,
                |_| Command::EraseNotes {
                    now: self.clock.now(),
                },
                |_| Uuid::new_v5(&subject.key, b"notes-erased"),
            )
            .await?;
        let erasure = self
            .identities
            .erase(
                &subject.tenant,
                subject.key,
                Uuid::new_v5(&subject.key, b"forget-participant"),
                ErasureReason::ParticipantRequest,
                || self.clock.now(),
            )
            .await
            .map_err(Error::from)?;
        tracing::info!(tenant = %subject.tenant, keys_destroyed = erasure.keys_destroyed, "participant erased (ForgetParticipant)");
        Ok(Response::new(ForgetParticipantResponse {
            notes_erased_at: log.notes_erased_at.map(instants::to_pb),
            keys_destroyed: u32::from(erasure.keys_destroyed),
        }))
    }
}
