//! Loading aggregates from the event store and appending what the domain
//! decides: the imperative shell around `tend_domain`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use tend_domain::enrollment::{self, Participant, participant_key};
use tend_domain::practice;
use tend_domain::protocol::{self, History, Protocol, built_in};
use tend_domain::schedule::ProtocolSet;
use tend_domain::{DomainEvent, Error as DomainError};
use tend_event_store::{
    EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StreamId, TenantId,
};
use uuid::Uuid;

use crate::Error;

/// How often a command is decided again when another writer got to the
/// stream first (typically the scheduler recording a due occurrence).
const ATTEMPTS: usize = 5;

pub(crate) const PARTICIPANT: &str = "participant";
/// A participant's practice entries: `practice-<key>` beside
/// `participant-<key>`.
pub(crate) const PRACTICE: &str = "practice";
const PROTOCOL: &str = "protocol";

/// Published protocol versions by tenant, id and version.
type PublishedCache = HashMap<(TenantId, String, u32), Protocol>;

/// The stores' view for this service; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Repo {
    pub(crate) store: EventStore,
    /// Published protocol versions never change, so they are cached.
    published: Arc<Mutex<PublishedCache>>,
}

/// A participant's state, the version it was read at and the protocols its
/// enrollments use.
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    pub(crate) stream: StreamId,
    pub(crate) state: Participant,
    pub(crate) version: Option<u64>,
    pub(crate) protocols: ProtocolSet,
}

pub(crate) fn participant_stream(tenant: &TenantId, participant_ref: &str) -> StreamId {
    StreamId::for_entity(
        PARTICIPANT,
        participant_key(tenant.as_str(), participant_ref),
    )
    .expect("a fixed category and a uuid make a valid stream id")
}

/// The stream of a participant's practice entries, by their key
/// (`enrollment::participant_key`).
pub fn practice_stream(participant_key: Uuid) -> StreamId {
    StreamId::for_entity(PRACTICE, participant_key)
        .expect("a fixed category and a uuid make a valid stream id")
}

fn protocol_stream(protocol_id: &str) -> Result<StreamId, Error> {
    protocol::validate_id(protocol_id)?;
    Ok(StreamId::new(format!("{PROTOCOL}-{protocol_id}"))?)
}

fn decode_all<E: DomainEvent>(events: &[RecordedEvent]) -> Result<Vec<E>, Error> {
    events
        .iter()
        .map(|e| E::from_stored(&e.event_type, e.schema_version, &e.payload).map_err(Error::from))
        .collect()
}

fn to_new_events<E: DomainEvent>(
    events: &[E],
    id: impl Fn(&E) -> Option<Uuid>,
    metadata: &Metadata,
) -> Result<Vec<NewEvent>, Error> {
    events
        .iter()
        .map(|e| {
            let new = NewEvent::new(
                id(e).unwrap_or_else(Uuid::now_v7),
                e.event_type(),
                e.schema_version(),
                &e.to_payload(),
            )?;
            Ok(new.with_metadata(metadata.clone()))
        })
        .collect()
}

impl Repo {
    pub(crate) fn new(store: EventStore) -> Self {
        Self {
            store,
            published: Arc::default(),
        }
    }

    // ---- Protocols ----

    /// Every version of a partner protocol; empty for an unknown id. The
    /// built-ins are not stored.
    pub(crate) async fn protocol_history(
        &self,
        tenant: &TenantId,
        protocol_id: &str,
    ) -> Result<(History, Option<u64>), Error> {
        let stream = protocol_stream(protocol_id)?;
        let (events, version) = self.store.read_whole_stream(tenant, &stream).await?;
        let events: Vec<protocol::Event> = decode_all(&events)?;
        let history = events.iter().fold(History::default(), protocol::evolve);
        Ok((history, version))
    }

    /// A published version (`0`: the latest published one).
    pub(crate) async fn published_protocol(
        &self,
        tenant: &TenantId,
        protocol_id: &str,
        version: u32,
    ) -> Result<Protocol, Error> {
        if let Some(p) = built_in(protocol_id) {
            return if version == 0 || version == p.version {
                Ok(p.clone())
            } else {
                Err(Error::not_found("protocol version"))
            };
        }
        let key = (tenant.clone(), protocol_id.to_owned(), version);
        if version != 0
            && let Some(p) = self.cache().get(&key)
        {
            return Ok(p.clone());
        }
        let (history, _) = self.protocol_history(tenant, protocol_id).await?;
        if history.versions.is_empty() {
            return Err(Error::not_found("protocol"));
        }
        let found = match version {
            0 => history.latest_published(),
            v => history.version(v),
        };
        let Some(found) = found else {
            return Err(Error::not_found("protocol version"));
        };
        if found.published_at.is_none() {
            return Err(DomainError::refused(
                "protocol_version",
                "is a draft: publish it before enrolling anyone on it",
            )
            .into());
        }
        let p = found.protocol.clone();
        self.cache()
            .insert((tenant.clone(), p.id.clone(), p.version), p.clone());
        Ok(p)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, PublishedCache> {
        self.published.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The practice log beside a participant stream, and its version.
    pub(crate) async fn load_practice(
        &self,
        tenant: &TenantId,
        participant: &StreamId,
    ) -> Result<(practice::Log, Option<u64>), Error> {
        let key = participant
            .as_str()
            .strip_prefix("participant-")
            .unwrap_or_default();
        let stream = StreamId::new(format!("{PRACTICE}-{key}"))?;
        let (events, version) = self.store.read_whole_stream(tenant, &stream).await?;
        let events: Vec<practice::Event> = decode_all(&events)?;
        Ok((
            events
                .iter()
                .fold(practice::Log::default(), practice::evolve),
            version,
        ))
    }

    /// Decides and appends a protocol command.
    pub(crate) async fn execute_protocol(
        &self,
        tenant: &TenantId,
        protocol_id: &str,
        command: impl Fn(Timestamp) -> protocol::Command,
        now: Timestamp,
    ) -> Result<History, Error> {
        let stream = protocol_stream(protocol_id)?;
        for _ in 0..ATTEMPTS {
            let (history, version) = self.protocol_history(tenant, protocol_id).await?;
            let events = protocol::decide(&history, command(now))?;
            if events.is_empty() {
                return Ok(history);
            }
            let new = to_new_events(&events, |_| None, &Metadata::default())?;
            match self
                .store
                .append(tenant, &stream, ExpectedVersion::as_read(version), new)
                .await
            {
                Ok(_) => return Ok(events.iter().fold(history, protocol::evolve)),
                Err(tend_event_store::Error::WrongExpectedVersion { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Contended)
    }

    /// The ids of the tenant's own protocols.
    pub(crate) async fn protocol_ids(&self, tenant: &TenantId) -> Result<Vec<String>, Error> {
        let streams = self.store.list_streams(tenant, PROTOCOL).await?;
        Ok(streams
            .iter()
            .filter_map(|s| s.as_str().strip_prefix("protocol-").map(str::to_owned))
            .collect())
    }

    // ---- Participants ----

    /// The stream holding an enrollment: found through its enrollment
    /// event, whose id is the enrollment id.
    pub(crate) async fn enrollment_stream(
        &self,
        tenant: &TenantId,
        enrollment_id: Uuid,
    ) -> Result<StreamId, Error> {
        match self.store.find_event(tenant, enrollment_id).await? {
            Some(e)
                if e.event_type == "ParticipantEnrolled"
                    && e.stream_id.category() == PARTICIPANT =>
            {
                Ok(e.stream_id)
            }
            _ => Err(Error::not_found("enrollment")),
        }
    }

    pub(crate) async fn load_participant(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
    ) -> Result<Loaded, Error> {
        let (events, version) = self.store.read_whole_stream(tenant, stream).await?;
        let events: Vec<enrollment::Event> = decode_all(&events)?;
        let state = events
            .iter()
            .fold(Participant::default(), enrollment::evolve);
        let mut protocols = ProtocolSet::default();
        for e in &state.enrollments {
            for r in &e.revisions {
                if !protocols.contains(&e.protocol_id, r.protocol_version) {
                    protocols.insert(
                        self.published_protocol(tenant, &e.protocol_id, r.protocol_version)
                            .await?,
                    );
                }
            }
        }
        Ok(Loaded {
            stream: stream.clone(),
            state,
            version,
            protocols,
        })
    }

    /// Decides a command against the participant's current state and
    /// appends its events, deciding again (with a fresh command: the caller
    /// reads the clock again) if another writer got there first. Returns
    /// the state before and after.
    pub(crate) async fn execute_participant(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        extra_protocols: &[Protocol],
        command: impl Fn(&Loaded) -> enrollment::Command,
        metadata: &Metadata,
    ) -> Result<(Loaded, Loaded), Error> {
        for _ in 0..ATTEMPTS {
            let mut before = self.load_participant(tenant, stream).await?;
            for p in extra_protocols {
                before.protocols.insert(p.clone());
            }
            let events = enrollment::decide(&before.state, command(&before), &before.protocols)?;
            if events.is_empty() {
                return Ok((before.clone(), before));
            }
            let new = to_new_events(&events, enrollment::Event::deterministic_id, metadata)?;
            match self
                .store
                .append(
                    tenant,
                    stream,
                    ExpectedVersion::as_read(before.version),
                    new,
                )
                .await
            {
                Ok(appended) => {
                    let after = Loaded {
                        stream: stream.clone(),
                        state: events.iter().fold(before.state.clone(), enrollment::evolve),
                        version: Some(appended.stream_version),
                        protocols: before.protocols.clone(),
                    };
                    return Ok((before, after));
                }
                Err(tend_event_store::Error::WrongExpectedVersion { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Contended)
    }

    /// Appends time-driven events at the version they were decided on.
    pub(crate) async fn append_tick(
        &self,
        tenant: &TenantId,
        loaded: &Loaded,
        events: &[enrollment::Event],
    ) -> Result<u64, Error> {
        let new = to_new_events(
            events,
            enrollment::Event::deterministic_id,
            &Metadata::default(),
        )?;
        let appended = self
            .store
            .append(
                tenant,
                &loaded.stream,
                ExpectedVersion::as_read(loaded.version),
                new,
            )
            .await?;
        // Events already in the history that was read, decided again: the
        // state and the decision disagree, and retrying would only repeat
        // it. (Already stored *after* that version is another scheduler
        // having got there first, which the next round sees.)
        if appended.already_stored && loaded.version.is_some_and(|v| appended.stream_version <= v) {
            return Err(Error::Redecided);
        }
        Ok(appended.stream_version)
    }
}
