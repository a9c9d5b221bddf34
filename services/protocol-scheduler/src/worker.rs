//! The background scheduler: records due and missed occurrences as time
//! passes, and keeps the tenant-wide occurrence table that `ListDue` reads.
//!
//! One server at a time does this, the holder of a lease row in PostgreSQL;
//! any server takes over once the holder stops renewing it. Each round:
//! 1. *catch up*: read the global log (participant streams only) after the
//!    checkpoint and note, per stream, the newest version seen;
//! 2. *process*: every stream seen past the version its schedule was built
//!    from, or whose next window opens or closes by now, is loaded, ticked
//!    (the domain decides which due and missed events time has caused), and
//!    those of its occurrence rows that changed are written.
//!
//! Exactly once: due and missed events carry ids derived from the
//! occurrence and its instant, and are appended at the stream version they
//! were decided on. A second scheduler deciding the same thing (a holder
//! that lost its lease mid-round) writes nothing new; a completion that
//! lands first makes the append fail its version check, and the next round
//! decides again, without a missed event. After downtime, the first round
//! finds every stream whose windows opened or closed meanwhile.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use jiff::Timestamp;
use sqlx::{PgPool, Postgres, Transaction};
use tend_domain::enrollment::{self, Enrollment};
use tend_domain::practice;
use tend_domain::schedule::{Occurrence, Placements, Status};
use tend_event_store::{EventStore, ExpectedVersion, Held, Lease, Metadata, StreamId, TenantId};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use tend_service_kit::execute::new_events;
use tend_service_kit::streams::{PARTICIPANT, PRACTICE};
use tend_service_kit::{Clock, Loaded, OccurrenceDetail, Participants, instants};

use crate::Error;

const LEASE: &str = "scheduler";
const CHECKPOINT: &str = "scheduler";
/// Streams processed per batch, and batches per round before the lease is
/// renewed again.
const MAX_BATCHES_PER_ROUND: usize = 20;
/// Streams marked seen per transaction in a catch-up step.
const MARK_CHUNK: usize = 200;
/// How long a stream that failed to process waits before it is tried again.
const RETRY_AFTER: jiff::SignedDuration = jiff::SignedDuration::from_secs(60);

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// How often the scheduler wakes: the granularity of due and missed
    /// events.
    pub tick_interval: Duration,
    /// How long a lease lasts without renewal: how soon another server
    /// takes over from one that died.
    pub lease_ttl: Duration,
    /// Streams loaded per batch.
    pub batch_size: usize,
    /// Streams decided at once (their reads overlap). One per core by
    /// default: a round deciding more at once than there are cores takes
    /// every core from the calls being served for as long as it lasts.
    pub concurrency: usize,
    /// How long after a window closes its missed event waits, so that
    /// practice logged offline and synced late still completes it.
    pub miss_grace: jiff::SignedDuration,
}

/// Six hours: an app that syncs overnight, or on the evening's Wi-Fi,
/// still turns a practice into a completion rather than a miss, while a
/// practitioner still hears of a miss the same day.
pub const DEFAULT_MISS_GRACE: jiff::SignedDuration = jiff::SignedDuration::from_hours(6);

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            tick_interval: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(10),
            batch_size: 100,
            concurrency: std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8)),
            miss_grace: DEFAULT_MISS_GRACE,
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    /// This worker held the lease and did the round.
    pub held_lease: bool,
    /// Participant streams rebuilt.
    pub streams: usize,
    /// Due and missed events appended.
    pub events: usize,
}

#[derive(Debug)]
pub struct Worker {
    repo: Participants,
    clock: Arc<dyn Clock>,
    options: WorkerOptions,
    lease: Lease,
    /// Where each participant's slots fall, kept from round to round.
    placements: std::sync::Mutex<Placements>,
}

impl Worker {
    pub fn new(store: EventStore, clock: Arc<dyn Clock>, options: WorkerOptions) -> Self {
        Self {
            repo: Participants::new(store),
            clock,
            lease: Lease::new(LEASE, options.lease_ttl),
            options,
            placements: Default::default(),
        }
    }

    /// Never held across an await: a round's streams are decided one at a
    /// time.
    fn placements(&self) -> std::sync::MutexGuard<'_, Placements> {
        // A panic while placing leaves at worst an entry missing.
        self.placements
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn pool(&self) -> &PgPool {
        self.repo.store().pool()
    }

    /// Runs rounds until `shutdown`, then gives the lease up so that another
    /// server takes over at once.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut held = false;
        let metrics = tend_telemetry::instruments();
        loop {
            let started = std::time::Instant::now();
            let result = self.run_once().await;
            // Only the holder's rounds are ticks; a failure counts wherever
            // it happens, since it may be why nobody holds the lease.
            let outcome = match &result {
                Ok(round) if round.held_lease => Some(tend_telemetry::Outcome::Ok),
                Ok(_) => None,
                Err(_) => Some(tend_telemetry::Outcome::Error),
            };
            if let Some(outcome) = outcome {
                let attributes = [outcome.attribute()];
                metrics.scheduler_ticks.add(1, &attributes);
                metrics
                    .scheduler_tick_duration
                    .record(started.elapsed().as_secs_f64(), &attributes);
            }
            match result {
                Ok(round) => {
                    tend_telemetry::lease_held(LEASE, round.held_lease);
                    if round.held_lease != held {
                        held = round.held_lease;
                        tracing::info!(holder = %self.lease.holder(), held, "scheduler lease changed hands");
                    }
                    if round.streams > 0 {
                        tracing::debug!(
                            streams = round.streams,
                            events = round.events,
                            "scheduler round"
                        );
                    }
                }
                Err(e) => {
                    // Not working, whatever the lease row says.
                    tend_telemetry::lease_held(LEASE, false);
                    tracing::warn!(error = %e, "scheduler round failed; retrying");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.options.tick_interval) => {}
            }
        }
        if let Err(e) = self.lease.release(self.pool()).await {
            tracing::warn!(error = %e, "could not release the scheduler lease; it will expire");
        }
        tend_telemetry::lease_held(LEASE, false);
    }

    /// One round, if this worker holds (or can take) the lease.
    pub async fn run_once(&self) -> Result<Round, Error> {
        if !self.acquire().await? {
            return Ok(Round::default());
        }
        let mut round = Round {
            held_lease: true,
            ..Round::default()
        };
        match self.catch_up().await {
            Err(Error::LeaseLost) => return Ok(Round::default()),
            other => other?,
        }
        let now = self.clock.now();
        for batch_number in 0..MAX_BATCHES_PER_ROUND {
            // A long round renews its lease as it goes, so that it never
            // outlives it.
            if batch_number > 0 && !self.acquire().await? {
                return Ok(round);
            }
            let pending = self.pending(now).await?;
            let batch = pending.len();
            // The batch's streams are read together, a statement for their
            // own streams and one for their practice.
            let loaded = self.load(&pending).await?;
            let results: Vec<_> = futures::stream::iter(pending.into_iter().zip(loaded))
                .map(|((tenant, stream), loaded)| async move {
                    // Read already, a stream's decision is all computation:
                    // give the calls a turn between streams rather than
                    // keep a core for the whole batch.
                    tokio::task::yield_now().await;
                    let result = match loaded {
                        Ok((loaded, log, practice_version)) => {
                            self.plan(&tenant, loaded, log, practice_version, now).await
                        }
                        Err(e) => Err(e),
                    };
                    (tenant, stream, result)
                })
                .buffer_unordered(self.options.concurrency.max(1))
                .collect()
                .await;
            let mut plans = Vec::with_capacity(results.len());
            for (tenant, stream, result) in results {
                match result {
                    Ok((plan, events)) => {
                        round.events += events;
                        plans.push(plan);
                    }
                    Err(Error::Kit(tend_service_kit::Error::Store(
                        tend_event_store::Error::WrongExpectedVersion { .. },
                    ))) => {
                        // Changed while we decided (by a command, or by a
                        // scheduler that lost its lease mid-round): the
                        // change is in the log and the next round sees it.
                    }
                    Err(Error::Kit(tend_service_kit::Error::Store(e))) if e.is_unavailable() => {
                        tracing::warn!(error = %e, "database unavailable; retrying next round");
                    }
                    Err(e) if is_lease_lost(&e) => return Ok(round),
                    Err(e) => {
                        // The stream id is derived from a participant's
                        // reference: it stays out of the log.
                        match &e {
                            // Its reason may quote stored content.
                            Error::Kit(tend_service_kit::Error::Decode(d)) => tracing::error!(
                                tenant = %tenant,
                                event_type = %d.event_type,
                                schema_version = d.schema_version,
                                "cannot read a participant stream; retrying in a minute"
                            ),
                            e => tracing::error!(
                                error = %e,
                                tenant = %tenant,
                                "cannot schedule a participant stream; retrying in a minute"
                            ),
                        }
                        self.defer(&tenant, &stream, now).await?;
                    }
                }
            }
            match self.write(&plans, now).await {
                Ok(written) => round.streams += written,
                Err(e) if is_lease_lost(&e) => return Ok(round),
                Err(Error::Kit(tend_service_kit::Error::Store(e))) if e.is_unavailable() => {
                    tracing::warn!(error = %e, "database unavailable; retrying next round");
                }
                Err(e) => return Err(e),
            }
            if batch < self.options.batch_size {
                break;
            }
        }
        Ok(round)
    }

    /// Holds the lease; on taking it anew, first finds the streams left
    /// behind without a row in `scheduler_behind`.
    async fn acquire(&self) -> Result<bool, Error> {
        match self.lease.hold(self.pool()).await.map_err(store_error)? {
            Held::Not => Ok(false),
            Held::Still => Ok(true),
            Held::Anew => match self.sweep().await {
                Ok(()) => Ok(true),
                Err(Error::LeaseLost) => Ok(false),
                Err(e) => Err(e),
            },
        }
    }

    /// Puts every stream seen past what it was processed at in
    /// `scheduler_behind`. A holder of the previous release (during a
    /// rolling upgrade) marks streams without it; this reads the whole
    /// table, once per taking of the lease.
    async fn sweep(&self) -> Result<(), Error> {
        let mut tx = self.fenced().await?;
        sqlx::query(
            "INSERT INTO scheduler_behind (tenant_id, stream_id)
             SELECT tenant_id, stream_id FROM scheduler_streams
             WHERE seen_version > processed_version
                OR practice_seen_version > practice_processed_version
             ON CONFLICT DO NOTHING",
        )
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(())
    }

    /// Opens a transaction that writes only while this worker holds the
    /// lease (`Lease::fence`); this worker's own transactions still run
    /// side by side.
    async fn fenced(&self) -> Result<Transaction<'static, Postgres>, Error> {
        let mut tx = self.pool().begin().await.map_err(store_error)?;
        if !self.lease.fence(&mut tx).await.map_err(store_error)? {
            return Err(Error::LeaseLost);
        }
        Ok(tx)
    }

    async fn catch_up(&self) -> Result<(), Error> {
        let categories = [PARTICIPANT.to_owned(), PRACTICE.to_owned()];
        let mut checkpoint: u64 = sqlx::query_scalar::<_, i64>(
            "SELECT position FROM scheduler_checkpoint WHERE name = $1",
        )
        .bind(CHECKPOINT)
        .fetch_optional(self.pool())
        .await
        .map_err(store_error)?
        .unwrap_or(0) as u64;
        // Up to the head as it is now: on a busy log, chasing commits that
        // land meanwhile would read and write a few events at a time for
        // as long as they keep coming. The next round reads them.
        // This server's view of the head may lag another server's commits:
        // then one step up to the database's head.
        let head = self.repo.store().head();
        let (through, once) = if head > checkpoint {
            (head, false)
        } else {
            (u64::MAX, true)
        };
        loop {
            // Which streams moved and how far, not the events: a stream
            // that moved many times since the last round is one row.
            let moved = self
                .repo
                .store()
                .streams_moved(&categories, checkpoint, through)
                .await?;
            if moved.scanned_through <= checkpoint {
                return Ok(());
            }
            // Newest version seen per participant, of their own stream and
            // of their practice stream, which share the participant's key.
            type Seen = std::collections::BTreeMap<(String, String), i64>;
            let (mut seen, mut practice): (Seen, Seen) = Default::default();
            for (tenant, stream, version) in &moved.streams {
                let (map, stream) = match stream.as_str().strip_prefix("practice-") {
                    Some(key) => (&mut practice, format!("{PARTICIPANT}-{key}")),
                    None => (&mut seen, stream.as_str().to_owned()),
                };
                let v = map.entry((tenant.as_str().to_owned(), stream)).or_default();
                *v = (*v).max(*version as i64);
            }
            let columns = |map: &Seen| {
                let mut tenants = Vec::with_capacity(map.len());
                let mut streams = Vec::with_capacity(map.len());
                let mut versions = Vec::with_capacity(map.len());
                for ((t, s), v) in map {
                    tenants.push(t.clone());
                    streams.push(s.clone());
                    versions.push(*v);
                }
                (tenants, streams, versions)
            };
            // Marked in chunks, a transaction each: one statement marking
            // a round's thousand streams ran for 20–35 ms and wrote half a
            // megabyte of WAL at once, and the calls' commits waited behind
            // it. A mark only ever raises a version, so marks that commit
            // before a failure are harmless; the checkpoint moves after all
            // of them.
            // A stream marked past what it was processed at is also put
            // in `scheduler_behind`, which is what `pending` reads.
            self.mark(
                "WITH marked AS (
                    INSERT INTO scheduler_streams (tenant_id, stream_id, seen_version)
                    SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
                    ON CONFLICT (tenant_id, stream_id) DO UPDATE
                       SET seen_version = GREATEST(scheduler_streams.seen_version, EXCLUDED.seen_version)
                    RETURNING tenant_id, stream_id, seen_version > processed_version AS behind)
                 INSERT INTO scheduler_behind (tenant_id, stream_id)
                 SELECT tenant_id, stream_id FROM marked WHERE behind
                 ON CONFLICT DO NOTHING",
                columns(&seen),
            )
            .await?;
            self.mark(
                "WITH marked AS (
                    INSERT INTO scheduler_streams
                        (tenant_id, stream_id, seen_version, practice_seen_version)
                    SELECT t, s, -1, v FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(t, s, v)
                    ON CONFLICT (tenant_id, stream_id) DO UPDATE
                       SET practice_seen_version = GREATEST(
                           scheduler_streams.practice_seen_version, EXCLUDED.practice_seen_version)
                    RETURNING tenant_id, stream_id,
                        practice_seen_version > practice_processed_version AS behind)
                 INSERT INTO scheduler_behind (tenant_id, stream_id)
                 SELECT tenant_id, stream_id FROM marked WHERE behind
                 ON CONFLICT DO NOTHING",
                columns(&practice),
            )
            .await?;
            let mut tx = self.fenced().await?;
            sqlx::query(
                "INSERT INTO scheduler_checkpoint (name, position) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position",
            )
            .bind(CHECKPOINT)
            .bind(moved.scanned_through as i64)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
            tx.commit().await.map_err(store_error)?;
            checkpoint = moved.scanned_through;
            if once || checkpoint >= through {
                return Ok(());
            }
            if !self.acquire().await? {
                return Err(Error::LeaseLost);
            }
        }
    }

    /// Runs `sql` (an upsert of tenants, streams and versions) over the
    /// marks, `MARK_CHUNK` of them per fenced transaction.
    async fn mark(
        &self,
        sql: &'static str,
        (tenants, streams, versions): (Vec<String>, Vec<String>, Vec<i64>),
    ) -> Result<(), Error> {
        for at in (0..tenants.len()).step_by(MARK_CHUNK) {
            let to = (at + MARK_CHUNK).min(tenants.len());
            let mut tx = self.fenced().await?;
            sqlx::query(sql)
                .bind(&tenants[at..to])
                .bind(&streams[at..to])
                .bind(&versions[at..to])
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
            tx.commit().await.map_err(store_error)?;
        }
        Ok(())
    }

    /// The streams to process next: those behind the log first, then
    /// those whose next window opens or closes by `now`, soonest first.
    async fn pending(&self, now: Timestamp) -> Result<Vec<(TenantId, StreamId)>, Error> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT tenant_id, stream_id FROM (
                SELECT DISTINCT ON (tenant_id, stream_id) tenant_id, stream_id, at
                FROM ((SELECT tenant_id, stream_id, NULL::timestamptz AS at
                       FROM scheduler_behind LIMIT $2)
                      UNION ALL
                      (SELECT tenant_id, stream_id, next_at FROM scheduler_streams
                       WHERE next_at <= $1 ORDER BY next_at LIMIT $2)) AS u
                ORDER BY tenant_id, stream_id, at NULLS FIRST) AS p
             ORDER BY at NULLS FIRST
             LIMIT $2",
        )
        .bind(instants::to_chrono(now))
        .bind(self.options.batch_size as i64)
        .fetch_all(self.pool())
        .await
        .map_err(store_error)?;
        rows.into_iter()
            .map(|(t, s)| Ok((TenantId::new(t)?, StreamId::new(s)?)))
            .collect()
    }

    /// Each stream's state and practice log, as of now, in order.
    async fn load(
        &self,
        streams: &[(TenantId, StreamId)],
    ) -> Result<Vec<Result<(Loaded, practice::Log, Option<u64>), Error>>, Error> {
        let participants = self.repo.load_participants(streams).await?;
        let practices = self.repo.load_practices(streams).await?;
        Ok(participants
            .into_iter()
            .zip(practices)
            .map(|(loaded, practice)| {
                let (log, version) = practice?;
                Ok((loaded?, log, version))
            })
            .collect())
    }

    /// Ticks one participant, and returns their occurrence rows as they
    /// now stand and how many events it appended. A batch's rows are then
    /// written together.
    async fn plan(
        &self,
        tenant: &TenantId,
        mut loaded: Loaded,
        log: practice::Log,
        practice_version: Option<u64>,
        now: Timestamp,
    ) -> Result<(Plan, usize), Error> {
        // Practice completes occurrences first, so that a practised one is
        // never then missed.
        let (mut events, schedules) = {
            let mut placements = self.placements();
            let linking = loaded
                .state
                .enrollments
                .iter()
                .map(|e| Ok((e, e.schedule_kept(&loaded.protocols, now, &mut placements)?)))
                .collect::<Result<Vec<_>, tend_domain::Error>>()?;
            drop(placements);
            let events = practice::link(&log, &linking);
            let schedules: Vec<Vec<Occurrence>> = linking.into_iter().map(|(_, s)| s).collect();
            (events, schedules)
        };
        let ticked = if events.is_empty() {
            // Nothing linked: the schedules linking expanded are the state's.
            enrollment::tick_on(&loaded.state, &schedules, now, self.options.miss_grace)
        } else {
            let tick = enrollment::Command::Tick {
                now,
                miss_grace: self.options.miss_grace,
            };
            let linked = events.iter().fold(loaded.state.clone(), enrollment::evolve);
            enrollment::decide(&linked, tick, &loaded.protocols)?
        };
        events.extend(ticked);
        // Unchanged, the state's schedules are the ones linking expanded.
        let schedules = if events.is_empty() {
            schedules
        } else {
            let version = self.append_tick(tenant, &loaded, &events).await?;
            loaded.state = events.iter().fold(loaded.state, enrollment::evolve);
            loaded.version = Some(version);
            let mut placements = self.placements();
            loaded
                .state
                .enrollments
                .iter()
                .map(|e| e.schedule_kept(&loaded.protocols, now, &mut placements))
                .collect::<Result<Vec<_>, tend_domain::Error>>()?
        };
        let mut rows = Vec::new();
        let mut next: Option<Timestamp> = None;
        for schedule in schedules {
            next = match (
                next,
                Enrollment::next_wake(&schedule, self.options.miss_grace),
            ) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            rows.extend(schedule);
        }
        let plan = Plan::new(
            tenant,
            &loaded.stream,
            (loaded.version, practice_version),
            next,
            rows,
        );
        Ok((plan, events.len()))
    }

    /// Writes a batch's plans in one fenced transaction: each stream's
    /// progress, and those of its occurrence rows that changed. A batch
    /// that cannot be written (for a reason other than the lease or the
    /// database being away) is written stream by stream, so that a stream
    /// that cannot be is parked and the others go on.
    /// Returns how many streams it wrote.
    async fn write(&self, plans: &[Plan], now: Timestamp) -> Result<usize, Error> {
        if plans.is_empty() {
            return Ok(0);
        }
        match self.write_together(plans).await {
            Ok(()) => Ok(plans.len()),
            Err(e) if is_lease_lost(&e) || is_unavailable(&e) => Err(e),
            Err(e) if plans.len() == 1 => {
                self.park(&plans[0], &e, now).await?;
                Ok(0)
            }
            Err(e) => {
                tracing::warn!(error = %e, streams = plans.len(), "could not write a scheduler batch; writing its streams one by one");
                let mut written = 0;
                for plan in plans {
                    match self.write_together(std::slice::from_ref(plan)).await {
                        Ok(()) => written += 1,
                        Err(e) if is_lease_lost(&e) || is_unavailable(&e) => return Err(e),
                        Err(e) => self.park(plan, &e, now).await?,
                    }
                }
                Ok(written)
            }
        }
    }

    async fn park(&self, plan: &Plan, e: &Error, now: Timestamp) -> Result<(), Error> {
        tracing::error!(error = %e, tenant = %plan.tenant, "cannot write a participant's occurrences; retrying in a minute");
        self.defer(&plan.tenant, &plan.stream, now).await
    }

    async fn write_together(&self, plans: &[Plan]) -> Result<(), Error> {
        let tenants: Vec<&str> = plans.iter().map(|p| p.tenant.as_str()).collect();
        let streams: Vec<&str> = plans.iter().map(|p| p.stream.as_str()).collect();
        let mut tx = self.fenced().await?;
        let previous: Vec<(String, String, Option<i64>)> = sqlx::query_as(
            "SELECT s.tenant_id, s.stream_id, s.rows_digest
             FROM scheduler_streams s
             JOIN unnest($1::text[], $2::text[]) AS k(t, s) ON s.tenant_id = k.t AND s.stream_id = k.s",
        )
        .bind(&tenants)
        .bind(&streams)
        .fetch_all(&mut *tx)
        .await
        .map_err(store_error)?;
        let previous: HashMap<(String, String), Option<i64>> =
            previous.into_iter().map(|(t, s, d)| ((t, s), d)).collect();
        let changed: Vec<&Plan> = plans
            .iter()
            .filter(|p| {
                let key = (p.tenant.as_str().to_owned(), p.stream.as_str().to_owned());
                previous.get(&key).copied().flatten() != Some(p.digest)
            })
            .collect();
        if !changed.is_empty() {
            self.update_rows(&mut tx, &changed).await?;
        }
        let versions: Vec<i64> = plans
            .iter()
            .map(|p| p.version.map_or(-1, |v| v as i64))
            .collect();
        let practice_versions: Vec<i64> = plans
            .iter()
            .map(|p| p.practice_version.map_or(-1, |v| v as i64))
            .collect();
        let next: Vec<Option<DateTime<Utc>>> = plans
            .iter()
            .map(|p| p.next.map(instants::to_chrono))
            .collect();
        let digests: Vec<i64> = plans.iter().map(|p| p.digest).collect();
        sqlx::query(
            "INSERT INTO scheduler_streams
                (tenant_id, stream_id, seen_version, processed_version, next_at, rows_digest,
                 practice_seen_version, practice_processed_version)
             SELECT t, s, v, v, n, d, pv, pv
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[], $5::bigint[],
                 $6::bigint[]) AS u(t, s, v, n, d, pv)
             ON CONFLICT (tenant_id, stream_id) DO UPDATE
                SET processed_version = EXCLUDED.processed_version, next_at = EXCLUDED.next_at,
                    rows_digest = EXCLUDED.rows_digest,
                    practice_processed_version = EXCLUDED.practice_processed_version",
        )
        .bind(&tenants)
        .bind(&streams)
        .bind(&versions)
        .bind(&next)
        .bind(&digests)
        .bind(&practice_versions)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        // Caught up, unless marked further meanwhile.
        sqlx::query(
            "DELETE FROM scheduler_behind b
             USING unnest($1::text[], $2::text[]) AS k(t, s), scheduler_streams s
             WHERE b.tenant_id = k.t AND b.stream_id = k.s
               AND s.tenant_id = k.t AND s.stream_id = k.s
               AND s.seen_version <= s.processed_version
               AND s.practice_seen_version <= s.practice_processed_version",
        )
        .bind(&tenants)
        .bind(&streams)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(())
    }

    /// Brings these streams' stored occurrence rows to their plans, writing
    /// only the rows whose digest differs and deleting those no longer
    /// there.
    async fn update_rows(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        plans: &[&Plan],
    ) -> Result<(), Error> {
        let tenants: Vec<&str> = plans.iter().map(|p| p.tenant.as_str()).collect();
        let streams: Vec<&str> = plans.iter().map(|p| p.stream.as_str()).collect();
        let stored: Vec<(String, String, Uuid, Option<i64>)> = sqlx::query_as(
            "SELECT o.tenant_id, o.stream_id, o.occurrence_id, o.row_digest
             FROM scheduler_occurrences o
             JOIN unnest($1::text[], $2::text[]) AS k(t, s) ON o.tenant_id = k.t AND o.stream_id = k.s",
        )
        .bind(&tenants)
        .bind(&streams)
        .fetch_all(&mut **tx)
        .await
        .map_err(store_error)?;
        let mut stored_by: HashMap<(String, String), HashMap<Uuid, Option<i64>>> = HashMap::new();
        for (t, s, id, digest) in stored {
            stored_by.entry((t, s)).or_default().insert(id, digest);
        }
        let none = HashMap::new();
        let mut gone = Columns::default();
        // Rows to write, in groups: an occurrence id is its stream's own
        // (derived from its enrollment), but should two streams of a batch
        // name the same one, the later one's row goes in a statement of its
        // own, as it would have had they been written one after the other.
        let mut groups: Vec<Columns> = vec![Columns::default()];
        let mut seen: HashMap<(&str, Uuid), usize> = HashMap::new();
        for plan in plans {
            let key = (
                plan.tenant.as_str().to_owned(),
                plan.stream.as_str().to_owned(),
            );
            let stored = stored_by.get(&key).unwrap_or(&none);
            let wanted: HashSet<Uuid> = plan.rows.iter().map(|o| o.id).collect();
            for id in stored.keys().filter(|id| !wanted.contains(id)) {
                gone.push_key(plan, *id);
            }
            for (i, o) in plan.rows.iter().enumerate() {
                let id = o.id;
                if stored.get(&id) == Some(&Some(plan.digests[i])) {
                    continue;
                }
                let n = seen.entry((plan.tenant.as_str(), id)).or_insert(0);
                if *n == groups.len() {
                    groups.push(Columns::default());
                }
                groups[*n].push_row(plan, i);
                *n += 1;
            }
        }
        if !gone.ids.is_empty() {
            sqlx::query(
                "DELETE FROM scheduler_occurrences o
                 USING unnest($1::text[], $2::text[], $3::uuid[]) AS g(t, s, id)
                 WHERE o.tenant_id = g.t AND o.stream_id = g.s AND o.occurrence_id = g.id",
            )
            .bind(&gone.tenants)
            .bind(&gone.streams)
            .bind(&gone.ids)
            .execute(&mut **tx)
            .await
            .map_err(store_error)?;
        }
        for group in groups.iter().filter(|g| !g.ids.is_empty()) {
            // A conflict with another stream's row is left alone.
            sqlx::query(
                "INSERT INTO scheduler_occurrences
                    (tenant_id, stream_id, occurrence_id, enrollment_id, scheduled_at, closes_at,
                     completed_at, cancelled, detail, row_digest)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::uuid[],
                     $5::timestamptz[], $6::timestamptz[], $7::timestamptz[], $8::bool[],
                     $9::jsonb[], $10::bigint[])
                 ON CONFLICT (tenant_id, occurrence_id) DO UPDATE
                    SET enrollment_id = EXCLUDED.enrollment_id,
                        scheduled_at = EXCLUDED.scheduled_at,
                        closes_at = EXCLUDED.closes_at, completed_at = EXCLUDED.completed_at,
                        cancelled = EXCLUDED.cancelled, detail = EXCLUDED.detail,
                        row_digest = EXCLUDED.row_digest
                    WHERE scheduler_occurrences.stream_id = EXCLUDED.stream_id",
            )
            .bind(&group.tenants)
            .bind(&group.streams)
            .bind(&group.ids)
            .bind(&group.enrollments)
            .bind(&group.at)
            .bind(&group.closes)
            .bind(&group.completed)
            .bind(&group.cancelled)
            .bind(&group.details)
            .bind(&group.digests)
            .execute(&mut **tx)
            .await
            .map_err(store_error)?;
        }
        Ok(())
    }

    /// Parks a stream that cannot be processed, so that it does not hold up
    /// the others; it is tried again after [`RETRY_AFTER`].
    async fn defer(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        now: Timestamp,
    ) -> Result<(), Error> {
        let retry = now.saturating_add(RETRY_AFTER).unwrap_or(now);
        let mut tx = self.fenced().await?;
        sqlx::query(
            "UPDATE scheduler_streams SET processed_version = seen_version,
                practice_processed_version = practice_seen_version, next_at = $3
             WHERE tenant_id = $1 AND stream_id = $2",
        )
        .bind(tenant.as_str())
        .bind(stream.as_str())
        .bind(instants::to_chrono(retry))
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        sqlx::query("DELETE FROM scheduler_behind WHERE tenant_id = $1 AND stream_id = $2")
            .bind(tenant.as_str())
            .bind(stream.as_str())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(())
    }
}

/// One stream's round, ready to write: its progress and its occurrence
/// rows as they now stand.
struct Plan {
    tenant: TenantId,
    stream: StreamId,
    version: Option<u64>,
    practice_version: Option<u64>,
    next: Option<Timestamp>,
    rows: Vec<Occurrence>,
    /// Of each row, and of all of them: equal to the stored one, nothing
    /// to rewrite.
    digests: Vec<i64>,
    digest: i64,
}

impl Plan {
    fn new(
        tenant: &TenantId,
        stream: &StreamId,
        (version, practice_version): (Option<u64>, Option<u64>),
        next: Option<Timestamp>,
        rows: Vec<Occurrence>,
    ) -> Plan {
        let digests: Vec<i64> = rows.iter().map(row_digest).collect();
        let ids: Vec<Uuid> = rows.iter().map(|o| o.id).collect();
        Plan {
            tenant: tenant.clone(),
            stream: stream.clone(),
            version,
            practice_version,
            next,
            digest: rows_digest(&ids, &digests),
            rows,
            digests,
        }
    }
}

/// Occurrence rows of several streams, column by column, for one
/// statement. Only rows to write are turned into columns.
#[derive(Default)]
struct Columns {
    tenants: Vec<String>,
    streams: Vec<String>,
    ids: Vec<Uuid>,
    enrollments: Vec<Uuid>,
    at: Vec<DateTime<Utc>>,
    closes: Vec<DateTime<Utc>>,
    completed: Vec<Option<DateTime<Utc>>>,
    cancelled: Vec<bool>,
    details: Vec<serde_json::Value>,
    digests: Vec<i64>,
}

impl Columns {
    /// A row's key alone (a row to delete).
    fn push_key(&mut self, plan: &Plan, id: Uuid) {
        self.tenants.push(plan.tenant.as_str().to_owned());
        self.streams.push(plan.stream.as_str().to_owned());
        self.ids.push(id);
    }

    fn push_row(&mut self, plan: &Plan, i: usize) {
        let o = &plan.rows[i];
        self.push_key(plan, o.id);
        self.enrollments.push(o.enrollment_id);
        self.at.push(instants::to_chrono(o.at));
        self.closes.push(instants::to_chrono(o.closes_at));
        self.completed.push(o.completed_at.map(instants::to_chrono));
        self.cancelled.push(o.status == Status::Cancelled);
        self.details.push(
            serde_json::to_value(OccurrenceDetail {
                activity_key: o.activity_key.clone(),
                kind: o.kind.clone(),
                day: o.day,
                arc_week: o.arc_week,
                local_date: o.local_date.to_string(),
                local_time: o.local_time.to_string(),
                time_zone: o.zone.name().to_owned(),
                target_minutes: o.target_minutes,
                protocol_version: o.protocol_version,
            })
            .unwrap_or_default(),
        );
        self.digests.push(plan.digests[i]);
    }
}

/// A digest of one occurrence row, from every field it stores: equal
/// digests mean nothing to rewrite. Hashed from the fields rather than the
/// row's JSON, so that only rows to write are encoded. Only ever compared
/// with digests this same code wrote; a different build at worst rewrites
/// each row once.
fn row_digest(o: &Occurrence) -> i64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (o.id, o.enrollment_id, o.at, o.closes_at, o.completed_at).hash(&mut h);
    (o.status == Status::Cancelled).hash(&mut h);
    (&o.activity_key, &o.kind, o.day, o.arc_week).hash(&mut h);
    (o.local_date, o.local_time, o.zone.name()).hash(&mut h);
    (o.target_minutes, o.protocol_version).hash(&mut h);
    h.finish() as i64
}

/// A digest of a stream's rows, from theirs: equal digests mean no row to
/// rewrite and none to delete.
fn rows_digest(ids: &[Uuid], digests: &[i64]) -> i64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ids.hash(&mut h);
    digests.hash(&mut h);
    h.finish() as i64
}

impl Worker {
    /// Appends time-driven events at the version they were decided on.
    async fn append_tick(
        &self,
        tenant: &TenantId,
        loaded: &Loaded,
        events: &[enrollment::Event],
    ) -> Result<u64, Error> {
        let new = new_events(
            events,
            |e| e.deterministic_id().unwrap_or_else(Uuid::now_v7),
            &Metadata::default(),
        )?;
        let appended = self
            .repo
            .store()
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

fn is_lease_lost(e: &Error) -> bool {
    matches!(e, Error::LeaseLost)
}

fn is_unavailable(e: &Error) -> bool {
    matches!(e, Error::Kit(tend_service_kit::Error::Store(e)) if e.is_unavailable())
}

fn store_error(e: sqlx::Error) -> Error {
    Error::from(tend_event_store::Error::from(e))
}
