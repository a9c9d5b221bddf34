//! The one loop every command goes through: load the stream, fold it,
//! decide, append at the version read; and when another writer got there
//! first, decide again on what they wrote, as the `Retry` policy says.

use tend_domain::{Decider, DomainEvent};
use tend_event_store::{
    EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StreamId, TenantId,
};
use uuid::Uuid;

use crate::Error;

/// When a command is decided again, and how often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    attempts: usize,
    idempotency_conflicts: bool,
}

impl Retry {
    /// Decide again only when the stream changed between the read and the
    /// append (wrong expected version), up to `attempts` decisions in all.
    pub const fn on_version_conflict(attempts: usize) -> Self {
        Self {
            attempts: at_least_one(attempts),
            idempotency_conflicts: false,
        }
    }

    /// Also decide again when an event id the decision derived is stored
    /// with other content: another writer decided the same id at another
    /// instant, and deciding on what they wrote gives the answer (a retry
    /// recognised, or a refusal on facts).
    pub const fn on_any_conflict(attempts: usize) -> Self {
        Self {
            attempts: at_least_one(attempts),
            idempotency_conflicts: true,
        }
    }

    fn again(&self, e: &tend_event_store::Error) -> bool {
        match e {
            tend_event_store::Error::WrongExpectedVersion { .. } => true,
            tend_event_store::Error::IdempotencyConflict { .. } => self.idempotency_conflicts,
            _ => false,
        }
    }
}

/// A command is always decided at least once.
const fn at_least_one(attempts: usize) -> usize {
    if attempts == 0 { 1 } else { attempts }
}

/// What a command did.
#[derive(Debug, Clone)]
pub struct Executed<S, E> {
    /// The state it was decided on.
    pub before: S,
    /// The stream's version that state was read at.
    pub read_version: Option<u64>,
    /// What it caused; empty when it changed nothing (a retry, say).
    pub events: Vec<E>,
    /// The stream's version after it (`None`: the stream is still empty).
    pub version: Option<u64>,
}

impl<S, E> Executed<S, E> {
    /// The state after the command: `before` with `events` folded in.
    pub fn into_after<D: Decider<State = S, Event = E>>(self) -> S {
        D::fold(self.before, &self.events)
    }
}

/// Stored events decoded as `E`.
pub fn decode<E: DomainEvent>(events: &[RecordedEvent]) -> Result<Vec<E>, Error> {
    events
        .iter()
        .map(|e| E::from_stored(&e.event_type, e.schema_version, &e.payload).map_err(Error::from))
        .collect()
}

/// Domain events as events to append, each under the id `id` gives it.
pub fn new_events<E: DomainEvent>(
    events: &[E],
    id: impl Fn(&E) -> Uuid,
    metadata: &Metadata,
) -> Result<Vec<NewEvent>, Error> {
    events
        .iter()
        .map(|e| {
            let new = NewEvent::new(id(e), e.event_type(), e.schema_version(), &e.to_payload())?;
            Ok(new.with_metadata(metadata.clone()))
        })
        .collect()
}

/// The stream folded with `D`, and the version it was read at (`None`:
/// empty).
///
/// The state this process last folded of the stream, if it kept one
/// (`EventStore::folds`), is taken up where it left off: only the events
/// after its version are read and folded, so the cost follows what is new,
/// not the stream's length. It is then kept again at the version read.
pub async fn load<D>(
    store: &EventStore,
    tenant: &TenantId,
    stream: &StreamId,
) -> Result<(D::State, Option<u64>), Error>
where
    D: Decider + 'static,
    D::State: Send + Sync + 'static,
{
    let folds = store.folds();
    let (state, after) = match folds.take::<D, D::State>(tenant, stream) {
        Some((state, version)) => (state, Some(version)),
        None => (D::State::default(), None),
    };
    let read = store.read_stream_after(tenant, stream, after).await?;
    fold_read::<D>(store, tenant, stream, (state, after), read).await
}

/// Folds what was read after a taken state (with the version it was
/// folded to) and keeps the result.
async fn fold_read<D>(
    store: &EventStore,
    tenant: &TenantId,
    stream: &StreamId,
    (state, after): (D::State, Option<u64>),
    (events, version): (Vec<RecordedEvent>, Option<u64>),
) -> Result<(D::State, Option<u64>), Error>
where
    D: Decider + 'static,
    D::State: Send + Sync + 'static,
{
    let (state, version) = if version < after {
        // Shorter than the state kept: never for a log whose events are
        // never deleted, but if so, the kept state is not to be trusted.
        let (events, version) = store.read_whole_stream(tenant, stream).await?;
        (
            D::fold(D::State::default(), &decode::<D::Event>(&events)?),
            version,
        )
    } else {
        (D::fold(state, &decode::<D::Event>(&events)?), version)
    };
    if let Some(v) = version {
        store.folds().keep::<D, _>(tenant, stream, v, state.clone());
    }
    Ok((state, version))
}

/// [`load`] for many streams with one read: each stream's current state
/// and version, in the order asked, or why that one could not be folded
/// (the read itself failing fails them all).
pub async fn load_many<D>(
    store: &EventStore,
    streams: &[(TenantId, StreamId)],
) -> Result<Vec<Result<(D::State, Option<u64>), Error>>, Error>
where
    D: Decider + 'static,
    D::State: Send + Sync + 'static,
{
    let folds = store.folds();
    let mut kept = Vec::with_capacity(streams.len());
    let mut asks = Vec::with_capacity(streams.len());
    for (tenant, stream) in streams {
        let (state, after) = match folds.take::<D, D::State>(tenant, stream) {
            Some((state, version)) => (state, Some(version)),
            None => (D::State::default(), None),
        };
        asks.push((tenant.clone(), stream.clone(), after));
        kept.push(state);
    }
    let read = match store.read_streams_after(&asks).await {
        Ok(read) => read,
        Err(e) => {
            // What was taken goes back: nothing was folded onto it.
            for ((tenant, stream, after), state) in asks.iter().zip(kept) {
                if let Some(v) = after {
                    folds.keep::<D, _>(tenant, stream, *v, state);
                }
            }
            return Err(e.into());
        }
    };
    let mut out = Vec::with_capacity(streams.len());
    for (((tenant, stream, after), state), read) in asks.iter().zip(kept).zip(read) {
        // Folding a batch is computation only: a turn for the calls
        // between streams.
        tokio::task::yield_now().await;
        out.push(fold_read::<D>(store, tenant, stream, (state, *after), read).await);
    }
    Ok(out)
}

/// What a decision needs beyond its stream, read after the stream (the
/// protocol versions a participant's enrollments use). `()` for nothing.
pub trait Prepare<S>: Sync {
    type Output: Send;
    fn prepare(&self, state: &S) -> impl Future<Output = Result<Self::Output, Error>> + Send;
}

impl<S: Sync> Prepare<S> for () {
    type Output = ();
    fn prepare(&self, _: &S) -> impl Future<Output = Result<(), Error>> + Send {
        std::future::ready(Ok(()))
    }
}

/// Loads the stream, asks `command` for a command on what was read,
/// decides it, and appends what it causes at the version read (each event
/// under `event_id`'s id). When another writer got there first and `retry`
/// allows, it does all of that again; after the last attempt, `Contended`.
pub async fn execute<D, E>(
    store: &EventStore,
    tenant: &TenantId,
    stream: &StreamId,
    retry: Retry,
    metadata: &Metadata,
    event_id: impl Fn(&D::Event) -> Uuid,
    mut command: impl FnMut(&D::State) -> Result<D::Command, E>,
) -> Result<Executed<D::State, D::Event>, E>
where
    D: Decider + 'static,
    D::State: Send + Sync + 'static,
    E: From<Error>,
{
    execute_prepared::<D, E, ()>(
        store,
        tenant,
        stream,
        retry,
        metadata,
        &(),
        event_id,
        |state, ()| command(state),
    )
    .await
}

/// `execute`, with `prepare`'s reading done on each attempt's state before
/// `command` is asked.
#[allow(clippy::too_many_arguments)]
pub async fn execute_prepared<D, E, P>(
    store: &EventStore,
    tenant: &TenantId,
    stream: &StreamId,
    retry: Retry,
    metadata: &Metadata,
    prepare: &P,
    event_id: impl Fn(&D::Event) -> Uuid,
    command: impl FnMut(&D::State, P::Output) -> Result<D::Command, E>,
) -> Result<Executed<D::State, D::Event>, E>
where
    D: Decider + 'static,
    D::State: Send + Sync + 'static,
    E: From<Error>,
    P: Prepare<D::State>,
{
    execute_from::<D, E, P>(
        store, tenant, stream, retry, metadata, prepare, false, event_id, command,
    )
    .await
}

/// `execute_prepared`, where `known_empty` says the caller knows the
/// stream is empty (its entity was made just now): the first attempt then
/// decides on the empty state without reading. Were it not empty after
/// all, the append fails on the version and the next attempt reads as
/// usual.
#[allow(clippy::too_many_arguments)]
pub async fn execute_from<D, E, P>(
    store: &EventStore,
    tenant: &TenantId,
    stream: &StreamId,
    retry: Retry,
    metadata: &Metadata,
    prepare: &P,
    mut known_empty: bool,
    event_id: impl Fn(&D::Event) -> Uuid,
    mut command: impl FnMut(&D::State, P::Output) -> Result<D::Command, E>,
) -> Result<Executed<D::State, D::Event>, E>
where
    D: Decider + 'static,
    D::State: Send + Sync + 'static,
    E: From<Error>,
    P: Prepare<D::State>,
{
    for _ in 0..retry.attempts {
        let (before, version) = if std::mem::take(&mut known_empty) {
            (D::State::default(), None)
        } else {
            load::<D>(store, tenant, stream).await?
        };
        let prepared = prepare.prepare(&before).await?;
        let decided = D::decide(&before, command(&before, prepared)?).map_err(Error::from)?;
        if decided.is_empty() {
            return Ok(Executed {
                before,
                read_version: version,
                events: decided,
                version,
            });
        }
        let new = new_events(&decided, &event_id, metadata)?;
        match store
            .append(tenant, stream, ExpectedVersion::as_read(version), new)
            .await
        {
            Ok(appended) => {
                return Ok(Executed {
                    before,
                    read_version: version,
                    events: decided,
                    version: Some(appended.stream_version),
                });
            }
            Err(e) if retry.again(&e) => continue,
            Err(e) => return Err(Error::from(e).into()),
        }
    }
    Err(Error::Contended.into())
}
