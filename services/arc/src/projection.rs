//! The arc projection: one row per participant, folded from their
//! participant, practice, assessment and arc streams (which all share the
//! participant's key).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgConnection, PgPool};
use tend_domain::arc::{self, ArcState, FlagEvent, FlagKind, Input, Rules, SlotCache};
use tend_domain::protocol::ProtocolSet;
use tend_domain::{DomainEvent, assessment, enrollment, practice, protocol};
use tend_event_store::{EventStore, ExpectedVersion, Filter, Metadata, RecordedEvent, TenantId};
use tend_projections::{BoxError, Projection};
use tend_service_kit::execute::new_events;
use tend_service_kit::{Clock, Schedules, instants, streams};
use uuid::Uuid;

pub const NAME: &str = "arc";
/// A participant's flag events: `arc-<participant key>`.
const CATEGORIES: [&str; 4] = [
    streams::PARTICIPANT,
    streams::PRACTICE,
    streams::ASSESSMENT,
    streams::ARC,
];
/// Rows read or written per statement.
const CHUNK: usize = 1000;
/// Participants' states kept between batches. Past this many, the working
/// set is forgotten after a batch and read again as needed: each state is
/// tens of kilobytes (its occurrences), so this bounds it to a few hundred
/// megabytes while any realistic set of active participants stays in it.
const KEPT_PARTICIPANTS: usize = 10_000;

/// One event, decoded.
#[derive(Debug)]
enum Decoded {
    Enrollment(enrollment::Event),
    Practice(practice::Event),
    Assessment(assessment::Event),
    Flag(FlagEvent),
}

#[derive(Debug, Default)]
struct Cached {
    state: ArcState,
    dirty: bool,
    /// Practice entries changed since the last flush (in `state.practice`).
    entries: BTreeSet<Uuid>,
}

/// A stored practice entry: (tenant, participant key, entry id, started
/// at and its nanoseconds, local date, minutes, live).
type EntryRow = (String, Uuid, Uuid, DateTime<Utc>, i32, NaiveDate, i32, bool);

type Key = (TenantId, Uuid);

#[derive(Debug)]
pub struct ArcProjection {
    store: EventStore,
    schedules: Schedules,
    clock: Arc<dyn Clock>,
    rules: Rules,
    /// Decide and append flags after each batch (the live runner; a
    /// rebuild only folds the flags already in the log).
    decide_flags: bool,
    cache: HashMap<Key, Cached>,
    /// The generation held no rows when folding began and nothing was
    /// evicted since: a participant not cached has no row.
    empty: bool,
    protocols: HashMap<TenantId, ProtocolSet>,
    /// Loaded (tenant, protocol, version), found or not.
    looked_up: HashSet<(TenantId, String, u32)>,
    flushed: Vec<Key>,
    slots: SlotCache,
    /// Participants whose flags are to be decided once caught up.
    pending_flags: HashSet<Key>,
    /// The generation last folded (flags are decided on its rows).
    generation: i32,
}

impl ArcProjection {
    pub fn new(store: EventStore, clock: Arc<dyn Clock>, rules: Rules, decide_flags: bool) -> Self {
        Self {
            schedules: Schedules::new(store.clone()),
            store,
            clock,
            rules,
            decide_flags,
            cache: HashMap::new(),
            empty: false,
            protocols: HashMap::new(),
            looked_up: HashSet::new(),
            flushed: Vec::new(),
            slots: SlotCache::default(),
            pending_flags: HashSet::new(),
            generation: 0,
        }
    }

    async fn load(
        &mut self,
        pool: &PgPool,
        generation: i32,
        keys: Vec<Key>,
    ) -> Result<(), BoxError> {
        for chunk in keys.chunks(CHUNK) {
            let tenants: Vec<&str> = chunk.iter().map(|(t, _)| t.as_str()).collect();
            let ids: Vec<Uuid> = chunk.iter().map(|(_, k)| *k).collect();
            let rows: Vec<(String, Uuid, Vec<u8>)> = sqlx::query_as(
                "SELECT a.tenant_id, a.participant_key, a.state
                 FROM arc_participants a
                 JOIN unnest($2::text[], $3::uuid[]) AS k(t, p)
                   ON a.tenant_id = k.t AND a.participant_key = k.p
                 WHERE a.generation = $1",
            )
            .bind(generation)
            .bind(&tenants)
            .bind(&ids)
            .fetch_all(pool)
            .await?;
            for (tenant, key, state) in rows {
                // The decoder's reason may quote stored values.
                let mut state: ArcState = serde_json::from_slice(&state).map_err(|_| {
                    format!("a stored arc state of generation {generation} does not decode")
                })?;
                // An older build's state holds every entry: they move to
                // their own rows at the next flush.
                let moved = state.settle_stored();
                let entries = if moved {
                    state.practice.keys().copied().collect()
                } else {
                    BTreeSet::new()
                };
                self.cache.insert(
                    (TenantId::new(tenant)?, key),
                    Cached {
                        state,
                        dirty: moved,
                        entries,
                    },
                );
            }
        }
        Ok(())
    }

    /// Reads into the working set the stored entries that this batch's
    /// corrections and retractions need: the entries they name and every
    /// other entry on those entries' dates, old and new, so that a day's
    /// totals are summed again from all of its entries.
    async fn entries_for(
        &mut self,
        pool: &PgPool,
        generation: i32,
        decoded: &[(Key, u64, Decoded)],
    ) -> Result<(), BoxError> {
        let (mut tenants, mut keys, mut ids, mut dates) = (vec![], vec![], vec![], vec![]);
        // The date each entry has reached within this batch, for an entry
        // logged or corrected earlier in it: neither stored nor held yet.
        let mut in_batch: HashMap<(&Key, Uuid), NaiveDate> = HashMap::new();
        for (k, _, event) in decoded {
            let (entry_id, new_date) = match event {
                Decoded::Practice(practice::Event::Logged(e)) => {
                    let date = instants::date_to_chrono(e.content.local_date());
                    in_batch.insert((k, e.entry_id), date);
                    continue;
                }
                Decoded::Practice(practice::Event::Corrected(e)) => (
                    e.entry_id,
                    Some(instants::date_to_chrono(e.content.local_date())),
                ),
                Decoded::Practice(practice::Event::Retracted(e)) => (e.entry_id, None),
                _ => continue,
            };
            let held = self
                .cache
                .get(k)
                .and_then(|c| c.state.practice.get(&entry_id))
                .map(|p| instants::date_to_chrono(p.local_date));
            let earlier = in_batch.get(&(k, entry_id)).copied();
            // The stored row's date comes from the entry id (a NULL date).
            for date in [None, new_date, held, earlier] {
                tenants.push(k.0.as_str().to_owned());
                keys.push(k.1);
                ids.push(entry_id);
                dates.push(date);
            }
            if let Some(date) = new_date {
                in_batch.insert((k, entry_id), date);
            }
        }
        if ids.is_empty() {
            return Ok(());
        }
        let rows: Vec<EntryRow> = sqlx::query_as(
            "WITH named AS (
                 SELECT * FROM unnest($2::text[], $3::uuid[], $4::uuid[], $5::date[])
                     AS n(t, k, e, d)
             ), wanted AS (
                 SELECT p.tenant_id AS t, p.participant_key AS k, p.local_date AS d
                 FROM arc_practice p
                 JOIN named n ON p.tenant_id = n.t AND p.participant_key = n.k
                     AND p.entry_id = n.e
                 WHERE p.generation = $1
                 UNION
                 SELECT t, k, d FROM named WHERE d IS NOT NULL
             )
             SELECT p.tenant_id, p.participant_key, p.entry_id, p.started_at,
                    p.started_nanos, p.local_date, p.minutes, p.live
             FROM arc_practice p
             JOIN wanted w ON p.tenant_id = w.t AND p.participant_key = w.k
                 AND p.local_date = w.d
             WHERE p.generation = $1",
        )
        .bind(generation)
        .bind(&tenants)
        .bind(&keys)
        .bind(&ids)
        .bind(&dates)
        .fetch_all(pool)
        .await?;
        for (tenant, key, entry_id, started_at, nanos, date, minutes, live) in rows {
            let practised = arc::Practised {
                started_at: instants::from_chrono_exact(started_at, nanos),
                local_date: instants::date_from_chrono(date)
                    .ok_or("a stored practice date is out of range")?,
                minutes: u32::try_from(minutes)?,
                live,
            };
            // What the working set holds is newer than any stored row.
            self.cache
                .entry((TenantId::new(tenant)?, key))
                .or_default()
                .state
                .practice
                .entry(entry_id)
                .or_insert(practised);
        }
        Ok(())
    }

    /// Makes sure the tenant's protocol versions these enrollments use are
    /// at hand (the built-ins always are).
    async fn protocols_for(
        &mut self,
        wanted: Vec<(TenantId, String, u32)>,
    ) -> Result<(), BoxError> {
        for (tenant, id, version) in wanted {
            if protocol::built_in(&id).is_some()
                || self
                    .looked_up
                    .contains(&(tenant.clone(), id.clone(), version))
            {
                continue;
            }
            match self
                .schedules
                .published_protocol(&tenant, &id, version)
                .await
            {
                Ok(p) => self.protocols.entry(tenant.clone()).or_default().insert(p),
                Err(tend_service_kit::Error::Domain(e)) => {
                    // Without the definition its occurrences count 0
                    // planned minutes; the rest of the arc stands.
                    tracing::warn!(tenant = %tenant, error = %e, "a protocol version an enrollment uses cannot be read");
                }
                Err(e) => return Err(e.into()),
            }
            self.looked_up.insert((tenant, id, version));
        }
        Ok(())
    }

    /// Writes the changed practice entries of these participants.
    async fn flush_entries(
        &self,
        tx: &mut PgConnection,
        generation: i32,
        dirty: &[Key],
    ) -> Result<(), BoxError> {
        let mut rows: Vec<(&Key, Uuid, &arc::Practised)> = Vec::new();
        for key in dirty {
            let cached = &self.cache[key];
            for id in &cached.entries {
                if let Some(p) = cached.state.practice.get(id) {
                    rows.push((key, *id, p));
                }
            }
        }
        for chunk in rows.chunks(CHUNK) {
            let tenants: Vec<&str> = chunk.iter().map(|(k, _, _)| k.0.as_str()).collect();
            let keys: Vec<Uuid> = chunk.iter().map(|(k, _, _)| k.1).collect();
            let ids: Vec<Uuid> = chunk.iter().map(|(_, id, _)| *id).collect();
            let (starts, nanos): (Vec<DateTime<Utc>>, Vec<i32>) = chunk
                .iter()
                .map(|(_, _, p)| instants::to_chrono_exact(p.started_at))
                .unzip();
            let dates: Vec<NaiveDate> = chunk
                .iter()
                .map(|(_, _, p)| instants::date_to_chrono(p.local_date))
                .collect();
            let minutes: Vec<i32> = chunk
                .iter()
                .map(|(_, _, p)| i32::try_from(p.minutes).unwrap_or(i32::MAX))
                .collect();
            let live: Vec<bool> = chunk.iter().map(|(_, _, p)| p.live).collect();
            sqlx::query(
                "INSERT INTO arc_practice
                    (generation, tenant_id, participant_key, entry_id, started_at,
                     started_nanos, local_date, minutes, live)
                 SELECT $1, * FROM unnest($2::text[], $3::uuid[], $4::uuid[],
                     $5::timestamptz[], $6::int[], $7::date[], $8::int[], $9::bool[])
                 ON CONFLICT (generation, tenant_id, participant_key, entry_id) DO UPDATE SET
                    started_at = EXCLUDED.started_at,
                    started_nanos = EXCLUDED.started_nanos,
                    local_date = EXCLUDED.local_date,
                    minutes = EXCLUDED.minutes,
                    live = EXCLUDED.live",
            )
            .bind(generation)
            .bind(&tenants)
            .bind(&keys)
            .bind(&ids)
            .bind(&starts)
            .bind(&nanos)
            .bind(&dates)
            .bind(&minutes)
            .bind(&live)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }

    /// Decides the flags of these participants now and appends them.
    async fn decide_and_append(&mut self, pending: Vec<Key>) -> Result<(), BoxError> {
        let missing: Vec<Key> = pending
            .iter()
            .filter(|k| !self.cache.contains_key(*k))
            .cloned()
            .collect();
        if !missing.is_empty() {
            let pool = self.store.pool().clone();
            let generation = self.generation;
            self.load(&pool, generation, missing).await?;
        }
        let now = self.clock.now();
        for key in pending {
            let Some(cached) = self.cache.get(&key) else {
                continue;
            };
            let events = arc::decide_flags(&cached.state, &self.rules, now, Uuid::now_v7);
            if events.is_empty() {
                continue;
            }
            let expected = match cached.state.arc_version {
                None => ExpectedVersion::NoStream,
                Some(v) => ExpectedVersion::Exact(v),
            };
            let new = new_events(&events, |_| Uuid::now_v7(), &Metadata::default())?;
            match self
                .store
                .append(&key.0, &streams::arc(key.1), expected, new)
                .await
            {
                Ok(_) => {
                    for e in &events {
                        if let FlagEvent::Raised(r) = e {
                            tracing::info!(tenant = %key.0, kind = r.kind.name(), "arc flag raised");
                        }
                    }
                }
                // Decided on a state behind the arc stream (flags this
                // runner appended are not folded yet): the next batch
                // that touches the participant decides again.
                Err(tend_event_store::Error::WrongExpectedVersion { .. }) => {}
                Err(e) => tracing::warn!(tenant = %key.0, error = %e, "could not append arc flags"),
            }
        }
        Ok(())
    }
}

/// The entry a practice event is about.
fn entry_of(e: &practice::Event) -> Option<Uuid> {
    match e {
        practice::Event::Logged(e) => Some(e.entry_id),
        practice::Event::Corrected(e) => Some(e.entry_id),
        practice::Event::Retracted(e) => Some(e.entry_id),
        practice::Event::NotesErased(_) => None,
    }
}

fn decode(e: &RecordedEvent) -> Result<(Uuid, Decoded), BoxError> {
    let category = e.stream_id.category();
    let key: Uuid = e.stream_id.as_str()[category.len() + 1..].parse()?;
    let (t, v, p) = (e.event_type.as_str(), e.schema_version, &e.payload);
    let decoded = match category {
        streams::PARTICIPANT => Decoded::Enrollment(enrollment::Event::from_stored(t, v, p)?),
        streams::PRACTICE => Decoded::Practice(practice::Event::from_stored(t, v, p)?),
        streams::ASSESSMENT => Decoded::Assessment(assessment::Event::from_stored(t, v, p)?),
        streams::ARC => Decoded::Flag(FlagEvent::from_stored(t, v, p)?),
        other => return Err(format!("unexpected category {other}").into()),
    };
    Ok((key, decoded))
}

/// The row's summary columns, from the state.
struct Row {
    erased: bool,
    protocol_id: Option<String>,
    protocol_version: Option<i32>,
    status: &'static str,
    bounds: Option<arc::Bounds>,
    flags_mask: i32,
    weeks: serde_json::Value,
    scs_change: Option<f64>,
}

pub(crate) fn flag_bit(kind: FlagKind) -> i32 {
    1 << FlagKind::ALL.iter().position(|k| *k == kind).unwrap_or(0)
}

fn row(state: &ArcState) -> Row {
    let current = state.current();
    Row {
        erased: state.erased_at.is_some(),
        protocol_id: current.map(|e| e.protocol_id.clone()),
        protocol_version: current.map(|e| e.protocol_version as i32),
        status: match current {
            None => "not_enrolled",
            Some(e) if e.withdrawn_at.is_some() => "withdrawn",
            Some(e) if e.paused_at.is_some() => "paused",
            Some(_) => "active",
        },
        bounds: current.map(|e| e.bounds()),
        flags_mask: state
            .flags
            .keys()
            .map(|k| flag_bit(*k))
            .fold(0, |a, b| a | b),
        weeks: serde_json::Value::Array(
            state
                .weeks()
                .into_iter()
                .map(|(w, a)| serde_json::json!([w, a.due, a.done + a.late]))
                .collect(),
        ),
        scs_change: state.scs_change_percent(),
    }
}

impl Projection for ArcProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self) -> Filter {
        Filter {
            tenant: None,
            categories: CATEGORIES.iter().map(|c| (*c).to_owned()).collect(),
            event_types: vec![],
        }
    }

    async fn fold(
        &mut self,
        pool: &PgPool,
        generation: i32,
        events: &[RecordedEvent],
    ) -> Result<(), BoxError> {
        if generation != self.generation {
            // Another generation: participants pending are decided again
            // when next touched.
            self.pending_flags.clear();
            self.generation = generation;
        }
        let mut decoded = Vec::with_capacity(events.len());
        for e in events {
            let (key, event) = decode(e).map_err(|_| {
                // The decoder's reason may quote the payload: only where the
                // event is, for an operator to look at.
                format!(
                    "cannot read the event at position {} ({} v{}); the projection waits here",
                    e.position, e.event_type, e.schema_version
                )
            })?;
            decoded.push(((e.tenant.clone(), key), e.stream_version, event));
        }
        if !self.empty {
            let mut missing: Vec<Key> = decoded
                .iter()
                .map(|(k, _, _)| k)
                .filter(|k| !self.cache.contains_key(*k))
                .cloned()
                .collect();
            missing.sort();
            missing.dedup();
            if !missing.is_empty() {
                self.load(pool, generation, missing.clone()).await?;
                let wanted = missing
                    .iter()
                    .filter_map(|k| self.cache.get(k).map(|c| (k, c)))
                    .flat_map(|((t, _), c)| {
                        c.state
                            .enrollments
                            .iter()
                            .map(|e| (t.clone(), e.protocol_id.clone(), e.protocol_version))
                    })
                    .collect();
                self.protocols_for(wanted).await?;
            }
        }
        let wanted = decoded
            .iter()
            .filter_map(|((t, _), _, e)| match e {
                Decoded::Enrollment(enrollment::Event::Enrolled(e)) => {
                    Some((t.clone(), e.protocol_id.clone(), e.protocol_version))
                }
                _ => None,
            })
            .collect::<Vec<_>>();
        self.protocols_for(wanted).await?;
        self.entries_for(pool, generation, &decoded).await?;
        // Migrations name only the new version: look it up by the
        // enrollment's protocol, once the enrollment is folded.
        let empty = ProtocolSet::default();
        for (key, version, event) in &decoded {
            if let Decoded::Enrollment(enrollment::Event::Migrated(m)) = event {
                let protocol_id = self
                    .cache
                    .get(key)
                    .and_then(|c| c.state.enrollments.iter().find(|e| e.id == m.enrollment_id))
                    .map(|e| e.protocol_id.clone());
                if let Some(id) = protocol_id {
                    self.protocols_for(vec![(key.0.clone(), id, m.to_version)])
                        .await?;
                }
            }
            let protocols = self.protocols.get(&key.0).unwrap_or(&empty);
            let cached = self.cache.entry(key.clone()).or_default();
            let input = match event {
                Decoded::Enrollment(e) => Input::Enrollment(e),
                Decoded::Practice(e) => {
                    if let Some(id) = entry_of(e) {
                        cached.entries.insert(id);
                    }
                    Input::Practice(e)
                }
                Decoded::Assessment(e) => Input::Assessment(e),
                Decoded::Flag(e) => {
                    cached.state.arc_version = Some(*version);
                    Input::Flag(e)
                }
            };
            cached.state.apply(input, protocols, &mut self.slots);
            cached.dirty = true;
        }
        Ok(())
    }

    async fn flush(&mut self, tx: &mut PgConnection, generation: i32) -> Result<(), BoxError> {
        let dirty: Vec<Key> = self
            .cache
            .iter()
            .filter(|(_, c)| c.dirty)
            .map(|(k, _)| k.clone())
            .collect();
        for chunk in dirty.chunks(CHUNK) {
            let n = chunk.len();
            let mut tenants = Vec::with_capacity(n);
            let mut keys = Vec::with_capacity(n);
            let mut erased = Vec::with_capacity(n);
            let mut protocol_ids = Vec::with_capacity(n);
            let mut versions = Vec::with_capacity(n);
            let mut statuses = Vec::with_capacity(n);
            let mut starts = Vec::with_capacity(n);
            let mut ends = Vec::with_capacity(n);
            let mut arc_ends = Vec::with_capacity(n);
            let mut masks = Vec::with_capacity(n);
            let mut weeks = Vec::with_capacity(n);
            let mut changes = Vec::with_capacity(n);
            let mut states = Vec::with_capacity(n);
            for key in chunk {
                let cached = &self.cache[key];
                let r = row(&cached.state);
                tenants.push(key.0.as_str().to_owned());
                keys.push(key.1);
                erased.push(r.erased);
                protocol_ids.push(r.protocol_id);
                versions.push(r.protocol_version);
                statuses.push(r.status);
                starts.push(r.bounds.map(|b| instants::to_chrono(b.session_start)));
                ends.push(r.bounds.map(|b| instants::to_chrono(b.session_end)));
                arc_ends.push(r.bounds.map(|b| instants::to_chrono(b.arc_end)));
                masks.push(r.flags_mask);
                weeks.push(r.weeks);
                changes.push(r.scs_change);
                states.push(serde_json::to_vec(&cached.state)?);
            }
            sqlx::query(
                "INSERT INTO arc_participants
                    (generation, tenant_id, participant_key, erased, protocol_id,
                     protocol_version, status, session_start, session_end, arc_end, flags_mask,
                     weeks, scs_change, state)
                 SELECT $1, * FROM unnest($2::text[], $3::uuid[], $4::bool[], $5::text[],
                     $6::int[], $7::text[], $8::timestamptz[], $9::timestamptz[],
                     $10::timestamptz[], $11::int[], $12::jsonb[], $13::float8[], $14::bytea[])
                 ON CONFLICT (generation, tenant_id, participant_key) DO UPDATE SET
                    erased = EXCLUDED.erased,
                    protocol_id = EXCLUDED.protocol_id,
                    protocol_version = EXCLUDED.protocol_version,
                    status = EXCLUDED.status,
                    session_start = EXCLUDED.session_start,
                    session_end = EXCLUDED.session_end,
                    arc_end = EXCLUDED.arc_end,
                    flags_mask = EXCLUDED.flags_mask,
                    weeks = EXCLUDED.weeks,
                    scs_change = EXCLUDED.scs_change,
                    state = EXCLUDED.state",
            )
            .bind(generation)
            .bind(&tenants)
            .bind(&keys)
            .bind(&erased)
            .bind(&protocol_ids)
            .bind(&versions)
            .bind(&statuses)
            .bind(&starts)
            .bind(&ends)
            .bind(&arc_ends)
            .bind(&masks)
            .bind(&weeks)
            .bind(&changes)
            .bind(&states)
            .execute(&mut *tx)
            .await?;
        }
        self.flush_entries(tx, generation, &dirty).await?;
        for key in &dirty {
            if let Some(c) = self.cache.get_mut(key) {
                c.dirty = false;
                // Stored: the next correction reads them back.
                c.entries.clear();
                c.state.practice.clear();
            }
        }
        self.flushed = dirty;
        Ok(())
    }

    fn batch_done(&mut self) {
        if self.cache.len() > KEPT_PARTICIPANTS {
            self.reset();
        }
    }

    async fn committed(&mut self, caught_up: bool) -> Result<(), BoxError> {
        let flushed = std::mem::take(&mut self.flushed);
        if !self.decide_flags {
            return Ok(());
        }
        self.pending_flags.extend(flushed);
        // Rules judge the present: a participant half way through a backlog
        // would raise warnings that later events clear at once.
        if !caught_up {
            return Ok(());
        }
        let pending: Vec<Key> = self.pending_flags.iter().cloned().collect();
        // Kept pending until decided: a failed read leaves them for the
        // next batch.
        self.decide_and_append(pending).await?;
        self.pending_flags.clear();
        Ok(())
    }

    /// Arcs whose own flags are open though the arc has ended (completed
    /// or withdrawn) with no event since: time alone ended them.
    async fn sweep(&mut self, pool: &PgPool, generation: i32) -> Result<(), BoxError> {
        if !self.decide_flags {
            return Ok(());
        }
        self.generation = generation;
        let arc_rules = flag_bit(FlagKind::CriticReturns) | flag_bit(FlagKind::MissedInARow);
        let rows: Vec<(String, Uuid)> = sqlx::query_as(
            "SELECT tenant_id, participant_key FROM arc_participants
             WHERE generation = $1 AND flags_mask & $2 <> 0
               AND (status = 'withdrawn' OR (status = 'active' AND arc_end <= $3))
             LIMIT 1000",
        )
        .bind(generation)
        .bind(arc_rules)
        .bind(instants::to_chrono(self.clock.now()))
        .fetch_all(pool)
        .await?;
        let keys = rows
            .into_iter()
            .map(|(t, k)| Ok((TenantId::new(t)?, k)))
            .collect::<Result<Vec<Key>, BoxError>>()?;
        self.decide_and_append(keys).await
    }

    fn reset(&mut self) {
        if !self.cache.is_empty() {
            self.empty = false;
        }
        self.cache.clear();
        self.flushed.clear();
    }

    fn starting_empty(&mut self) {
        self.cache.clear();
        self.empty = true;
    }

    async fn drop_generation(
        &self,
        tx: &mut PgConnection,
        generation: i32,
    ) -> Result<(), BoxError> {
        sqlx::query("DELETE FROM arc_participants WHERE generation = $1")
            .bind(generation)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM arc_practice WHERE generation = $1")
            .bind(generation)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}
