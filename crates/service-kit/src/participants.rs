//! Participants and the protocols their enrollments use, loaded from the
//! event store and changed through the executor: what the scheduler
//! service writes and other services read (through `Schedules`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tend_domain::enrollment::{self, Participant, WithProtocols};
use tend_domain::protocol::{self, History, Protocol, ProtocolSet, built_in};
use tend_domain::{Decider, Error as DomainError, practice};
use tend_event_store::{EventStore, Metadata, StreamId, TenantId};
use uuid::Uuid;

use crate::execute::{self, Prepare, Retry};
use crate::{Error, streams};

/// How often a command is decided again when another writer got to the
/// stream first (typically the scheduler recording a due occurrence).
const RETRY: Retry = Retry::on_version_conflict(5);

/// How a participant command is executed.
#[derive(Debug, Clone, Copy)]
pub struct How {
    pub retry: Retry,
    /// The participant was registered by this call: their stream is empty,
    /// and the first attempt need not read it.
    pub new_participant: bool,
}

impl How {
    pub const DEFAULT: How = How {
        retry: RETRY,
        new_participant: false,
    };

    /// Consent and erasure derive their event ids from the caller's
    /// request id, so a concurrent copy of the same request may store that
    /// id first: deciding again sees it.
    pub const DERIVED_IDS: How = How {
        retry: Retry::on_any_conflict(5),
        new_participant: false,
    };
}

/// Published protocol versions by tenant, id and version.
type PublishedCache = HashMap<(TenantId, String, u32), Protocol>;

/// The event store's view of participants and protocols; cheap to clone.
#[derive(Debug, Clone)]
pub struct Participants {
    store: EventStore,
    /// Published protocol versions never change, so they are cached.
    published: Arc<Mutex<PublishedCache>>,
}

/// A participant's state, the version it was read at and the protocols its
/// enrollments use.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub stream: StreamId,
    pub state: Participant,
    pub version: Option<u64>,
    pub protocols: ProtocolSet,
}

impl Participants {
    pub fn new(store: EventStore) -> Self {
        Self {
            store,
            published: Arc::default(),
        }
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// Every version of a partner protocol, and the stream's version; empty
    /// for an unknown id. The built-ins are not stored.
    pub async fn protocol_history(
        &self,
        tenant: &TenantId,
        protocol_id: &str,
    ) -> Result<(History, Option<u64>), Error> {
        let stream = streams::protocol(protocol_id)?;
        execute::load::<protocol::Aggregate>(&self.store, tenant, &stream).await
    }

    /// A published version (`0`: the latest published one).
    pub async fn published_protocol(
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

    /// Decides and appends a protocol command (drafts and publications).
    pub async fn execute_protocol(
        &self,
        tenant: &TenantId,
        protocol_id: &str,
        command: impl Fn() -> protocol::Command,
    ) -> Result<History, Error> {
        let stream = streams::protocol(protocol_id)?;
        let done = execute::execute::<protocol::Aggregate, Error>(
            &self.store,
            tenant,
            &stream,
            RETRY,
            &Metadata::default(),
            |_| Uuid::now_v7(),
            |_| Ok(command()),
        )
        .await?;
        Ok(done.into_after::<protocol::Aggregate>())
    }

    /// The ids of the tenant's own protocols.
    pub async fn protocol_ids(&self, tenant: &TenantId) -> Result<Vec<String>, Error> {
        let streams = self.store.list_streams(tenant, streams::PROTOCOL).await?;
        Ok(streams
            .iter()
            .filter_map(|s| streams::id_in(streams::PROTOCOL, s).map(str::to_owned))
            .collect())
    }

    /// The stream holding an enrollment: found through its enrollment
    /// event, whose id is the enrollment id.
    pub async fn enrollment_stream(
        &self,
        tenant: &TenantId,
        enrollment_id: Uuid,
    ) -> Result<StreamId, Error> {
        match self.store.find_event(tenant, enrollment_id).await? {
            Some(e)
                if e.event_type == "ParticipantEnrolled"
                    && e.stream_id.category() == streams::PARTICIPANT =>
            {
                Ok(e.stream_id)
            }
            _ => Err(Error::not_found("enrollment")),
        }
    }

    /// The protocol versions a participant's enrollments use.
    async fn protocols_of(
        &self,
        tenant: &TenantId,
        state: &Participant,
    ) -> Result<ProtocolSet, Error> {
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
        Ok(protocols)
    }

    pub async fn load_participant(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
    ) -> Result<Loaded, Error> {
        let (state, version) =
            execute::load::<enrollment::Aggregate>(&self.store, tenant, stream).await?;
        let protocols = self.protocols_of(tenant, &state).await?;
        Ok(Loaded {
            stream: stream.clone(),
            state,
            version,
            protocols,
        })
    }

    /// [`Participants::load_participant`] for many participant streams,
    /// read together: one result per stream, in order.
    pub async fn load_participants(
        &self,
        streams: &[(TenantId, StreamId)],
    ) -> Result<Vec<Result<Loaded, Error>>, Error> {
        let folded = execute::load_many::<enrollment::Aggregate>(&self.store, streams).await?;
        let mut out = Vec::with_capacity(streams.len());
        for ((tenant, stream), folded) in streams.iter().zip(folded) {
            let loaded = async {
                let (state, version) = folded?;
                Ok(Loaded {
                    protocols: self.protocols_of(tenant, &state).await?,
                    stream: stream.clone(),
                    state,
                    version,
                })
            };
            out.push(loaded.await);
        }
        Ok(out)
    }

    /// [`Participants::load_practice`] for many participant streams, read
    /// together: one result per stream, in order.
    pub async fn load_practices(
        &self,
        participants: &[(TenantId, StreamId)],
    ) -> Result<Vec<Result<(practice::Log, Option<u64>), Error>>, Error> {
        // A stream that is not a participant's fails alone.
        let not_a_participant =
            || Error::from(DomainError::invalid("stream_id", "is not a participant's"));
        let mut out: Vec<Result<(practice::Log, Option<u64>), Error>> = participants
            .iter()
            .map(|_| Err(not_a_participant()))
            .collect();
        let (slots, streams): (Vec<usize>, Vec<(TenantId, StreamId)>) = participants
            .iter()
            .enumerate()
            .filter_map(|(i, (t, p))| {
                streams::key_of(p).map(|k| (i, (t.clone(), streams::practice(k))))
            })
            .unzip();
        let folded = execute::load_many::<practice::Aggregate>(&self.store, &streams).await?;
        for (i, result) in slots.into_iter().zip(folded) {
            out[i] = result;
        }
        Ok(out)
    }

    /// The practice log beside a participant stream, and its version.
    pub async fn load_practice(
        &self,
        tenant: &TenantId,
        participant: &StreamId,
    ) -> Result<(practice::Log, Option<u64>), Error> {
        let key = streams::key_of(participant).ok_or_else(|| {
            Error::from(DomainError::invalid("stream_id", "is not a participant's"))
        })?;
        execute::load::<practice::Aggregate>(&self.store, tenant, &streams::practice(key)).await
    }

    /// Decides a command against the participant's current state and
    /// appends its events, deciding again (with a fresh command: `command`
    /// reads the clock again) if another writer got there first. Returns
    /// the state before and after.
    pub async fn execute_participant(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        extra_protocols: &[Protocol],
        command: impl FnMut() -> enrollment::Command,
        metadata: &Metadata,
    ) -> Result<(Loaded, Loaded), Error> {
        self.execute_participant_with(
            How::DEFAULT,
            tenant,
            stream,
            extra_protocols,
            command,
            metadata,
        )
        .await
    }

    /// `execute_participant` under another retry policy: consent and
    /// erasure derive their event ids from the caller's request id, so a
    /// concurrent copy of the same request may store that id first.
    pub async fn execute_participant_with(
        &self,
        how: How,
        tenant: &TenantId,
        stream: &StreamId,
        extra_protocols: &[Protocol],
        mut command: impl FnMut() -> enrollment::Command,
        metadata: &Metadata,
    ) -> Result<(Loaded, Loaded), Error> {
        let prepare = ProtocolsOf {
            participants: self,
            tenant,
            extra: extra_protocols,
        };
        let mut protocols = ProtocolSet::default();
        let id = |e: &enrollment::Event| e.deterministic_id().unwrap_or_else(Uuid::now_v7);
        let decide = |_: &Participant, read: ProtocolSet| {
            protocols = read;
            Ok(WithProtocols {
                command: command(),
                protocols: protocols.clone(),
            })
        };
        let done = execute::execute_from::<enrollment::Aggregate, Error, _>(
            &self.store,
            tenant,
            stream,
            how.retry,
            metadata,
            &prepare,
            how.new_participant,
            id,
            decide,
        )
        .await?;
        let after = enrollment::Aggregate::fold(done.before.clone(), &done.events);
        let before = Loaded {
            stream: stream.clone(),
            state: done.before,
            version: done.read_version,
            protocols: protocols.clone(),
        };
        let after = Loaded {
            stream: stream.clone(),
            state: after,
            version: done.version,
            protocols,
        };
        Ok((before, after))
    }
}

/// The protocol versions a participant's enrollments use, and those a
/// command names besides.
struct ProtocolsOf<'a> {
    participants: &'a Participants,
    tenant: &'a TenantId,
    extra: &'a [Protocol],
}

impl Prepare<Participant> for ProtocolsOf<'_> {
    type Output = ProtocolSet;

    async fn prepare(&self, state: &Participant) -> Result<ProtocolSet, Error> {
        let mut protocols = self.participants.protocols_of(self.tenant, state).await?;
        for p in self.extra {
            protocols.insert(p.clone());
        }
        Ok(protocols)
    }
}
