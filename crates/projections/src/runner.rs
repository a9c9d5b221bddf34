//! The live runner, rebuilds, and status.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use tend_event_store::{EventStore, Held, Lease};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{BoxError, Error, Projection};

#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Events read and written per transaction.
    pub batch: usize,
    /// How long a lease lasts without renewal: how soon another server
    /// takes over from one that died.
    pub lease_ttl: Duration,
    /// How often a server without the lease tries for it, and how long an
    /// idle holder waits before renewing it.
    pub idle: Duration,
    /// How often an idle holder calls [`Projection::sweep`].
    pub sweep: Duration,
    /// How long the holder waits after a batch that reached the head
    /// before reading the next one, so that a busy log is folded in
    /// batches of many events rather than of the few each commit adds:
    /// each batch costs about ten statements and a commit whatever its
    /// size. A backlog is read without waiting; 0 never waits.
    pub linger: Duration,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            batch: 1000,
            lease_ttl: Duration::from_secs(10),
            idle: Duration::from_secs(1),
            sweep: Duration::from_secs(60),
            linger: Duration::from_millis(50),
        }
    }
}

/// What one step of the runner did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Step {
    pub held_lease: bool,
    pub generation: i32,
    /// Events folded and written.
    pub events: usize,
    /// Where the checkpoint is now.
    pub position: u64,
    /// The checkpoint moved (over events of other categories too).
    pub advanced: bool,
    /// More events are waiting: the batch was full, or its read stopped
    /// short of the head.
    pub behind: bool,
}

/// Runs one projection on this server while it holds the lease.
#[derive(Debug)]
pub struct Runner<P> {
    store: EventStore,
    projection: P,
    options: RunnerOptions,
    lease: Lease,
    generation: Option<i32>,
    /// The checkpoint as this runner last wrote or read it: the working set
    /// it kept is folded to there, and to be forgotten if the checkpoint is
    /// found elsewhere (another server held the lease meanwhile).
    known_checkpoint: Option<u64>,
    last_sweep: Option<Instant>,
}

fn pool(store: &EventStore) -> &PgPool {
    store.pool()
}

impl<P: Projection> Runner<P> {
    pub fn new(store: EventStore, projection: P, options: RunnerOptions) -> Self {
        Self {
            store,
            lease: Lease::new(projection.name(), options.lease_ttl),
            projection,
            options,
            generation: None,
            known_checkpoint: None,
            last_sweep: None,
        }
    }

    /// Steps until `shutdown`, then gives the lease up so that another
    /// server takes over at once.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let name = self.projection.name();
        let mut held = false;
        let mut head = self.store.watch_head();
        loop {
            let wait = match self.step().await {
                Ok(step) => {
                    tend_telemetry::lease_held(name, step.held_lease);
                    if step.held_lease != held {
                        held = step.held_lease;
                        tracing::info!(projection = name, holder = %self.lease.holder(), held, "projection lease changed hands");
                    }
                    if step.advanced && !step.behind && !self.options.linger.is_zero() {
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(self.options.linger) => {}
                        }
                    }
                    // Caught up (or not the holder): wait for the log to move.
                    !step.advanced
                }
                Err(e) => {
                    // Not working, whatever the lease row says.
                    tend_telemetry::lease_held(name, false);
                    tracing::warn!(projection = name, error = %e, "projection batch failed; retrying");
                    true
                }
            };
            if wait {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = head.changed(), if held => {}
                    _ = tokio::time::sleep(self.options.idle) => {}
                }
            } else if shutdown.is_cancelled() {
                break;
            }
        }
        if let Err(e) = self.lease.release(pool(&self.store)).await {
            tracing::warn!(projection = name, error = %e, "could not release the projection lease; it will expire");
        }
        tend_telemetry::lease_held(name, false);
    }

    /// One batch, if this runner holds (or can take) the lease.
    pub async fn step(&mut self) -> Result<Step, Error> {
        loop {
            match self.try_step().await {
                Ok(Some(step)) => return Ok(step),
                // Another generation became active, or the checkpoint moved,
                // since this runner read them: nothing was written (and all
                // was forgotten); step again from what is stored.
                Ok(None) => {}
                Err(e) => {
                    // A commit may have landed without its answer, and the
                    // lease may change hands before the next step.
                    self.forget();
                    return Err(e);
                }
            }
        }
    }

    /// Forgets the working set, the generation and the checkpoint, so that
    /// the next step reads them from what is stored.
    fn forget(&mut self) {
        self.projection.reset();
        self.generation = None;
        self.known_checkpoint = None;
    }

    async fn try_step(&mut self) -> Result<Option<Step>, Error> {
        let name = self.projection.name();
        let pool = pool(&self.store).clone();
        let held = self.lease.hold(&pool).await?;
        if !held.is_held() {
            self.forget();
            return Ok(Some(Step::default()));
        }
        // Held without a break since this runner last wrote or read the
        // checkpoint: nobody else moved it, and a rebuild's switch of
        // generation is caught by the fence before anything is written.
        let kept = match (held, self.generation, self.known_checkpoint) {
            (Held::Still, Some(generation), Some(known_checkpoint)) => {
                Some((generation, known_checkpoint))
            }
            _ => None,
        };
        let (generation, checkpoint) = match kept {
            Some(kept) => kept,
            None => {
                let generation = active_generation(&pool, name).await?;
                if self.generation != Some(generation) {
                    // A rebuild switched generations: what is cached is of the old.
                    self.projection.reset();
                    self.generation = Some(generation);
                    self.known_checkpoint = None;
                }
                let checkpoint = checkpoint(&pool, name, generation).await?.unwrap_or(0);
                if self.known_checkpoint.is_some_and(|w| w != checkpoint) {
                    self.projection.reset();
                }
                self.known_checkpoint = Some(checkpoint);
                (generation, checkpoint)
            }
        };
        let page = self
            .store
            .read_log(&self.projection.filter(), checkpoint, self.options.batch)
            .await?;
        let mut step = Step {
            held_lease: true,
            generation,
            events: 0,
            position: checkpoint,
            advanced: false,
            behind: page.events.len() >= self.options.batch
                || page.scanned_through < self.store.head(),
        };
        if page.scanned_through == checkpoint {
            if self
                .last_sweep
                .is_none_or(|t| t.elapsed() >= self.options.sweep)
            {
                // A rebuild may have switched generations while nothing
                // was written: sweep the one that is active.
                if active_generation(&pool, name).await? != generation {
                    self.forget();
                    return Ok(None);
                }
                self.last_sweep = Some(Instant::now());
                let swept = self.projection.sweep(&pool, generation).await;
                self.projection.reset();
                swept.map_err(|e| wrap(name, e))?;
            }
            return Ok(Some(step));
        }
        let started = Instant::now();
        let span = if tend_telemetry::tracing_enabled() {
            tracing::info_span!(
                "projection batch",
                otel.name = "projection batch",
                tend.projection = name,
                tend.events = page.events.len(),
            )
        } else {
            tracing::Span::none()
        };
        let written = async {
            self.projection
                .fold(&pool, generation, &page.events)
                .await
                .map_err(|e| wrap(name, e))?;
            let mut tx = pool.begin().await?;
            match fenced(&mut tx, &self.lease, name, generation).await? {
                Fence::Held => {}
                Fence::Lost => return Err(Error::LeaseLost),
                Fence::Switched => return Ok(false),
            }
            self.projection
                .flush(&mut tx, generation)
                .await
                .map_err(|e| wrap(name, e))?;
            // Only from where this batch was read: whatever the clocks did,
            // a checkpoint that moved meanwhile (another holder) is never
            // written over from a working set folded elsewhere.
            if !advance_checkpoint(&mut tx, name, generation, checkpoint, page.scanned_through)
                .await?
            {
                return Ok(false);
            }
            tx.commit().await?;
            Ok(true)
        }
        .instrument(span.clone())
        .await;
        match written {
            Ok(true) => {}
            Ok(false) => {
                self.forget();
                return Ok(None);
            }
            Err(Error::LeaseLost) => {
                self.forget();
                return Ok(Some(Step::default()));
            }
            // `step` forgets on every error.
            Err(e) => return Err(e),
        }
        let caught_up = page.scanned_through >= self.store.head();
        if let Err(e) = self.projection.committed(caught_up).instrument(span).await {
            tracing::warn!(projection = name, error = %e, "after a projection batch");
        }
        let metrics = tend_telemetry::instruments();
        let attributes = [opentelemetry::KeyValue::new("tend.projection", name)];
        metrics
            .projection_events
            .add(page.events.len() as u64, &attributes);
        metrics
            .projection_batch_duration
            .record(started.elapsed().as_secs_f64(), &attributes);
        self.projection.batch_done();
        self.known_checkpoint = Some(page.scanned_through);
        step.events = page.events.len();
        step.position = page.scanned_through;
        step.advanced = true;
        Ok(Some(step))
    }
}

fn wrap(name: &str, source: BoxError) -> Error {
    Error::Projection {
        name: name.to_owned(),
        source,
    }
}

enum Fence {
    Held,
    /// The lease is another's (or expired).
    Lost,
    /// Another generation is active.
    Switched,
}

/// Holds the lease and the generation for the rest of the transaction: the
/// share locks make a taker (or a rebuild's switch) wait until it ends.
async fn fenced(
    tx: &mut PgConnection,
    lease: &Lease,
    name: &str,
    generation: i32,
) -> Result<Fence, Error> {
    if !lease.fence(tx).await? {
        return Ok(Fence::Lost);
    }
    let active: Option<i32> =
        sqlx::query_scalar("SELECT active_generation FROM projections WHERE name = $1 FOR SHARE")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
    Ok(if active == Some(generation) {
        Fence::Held
    } else {
        Fence::Switched
    })
}

/// The generation queries read; the first is 1.
pub(crate) async fn active_generation(pool: &PgPool, name: &str) -> Result<i32, Error> {
    sqlx::query(
        "INSERT INTO projections (name, active_generation) VALUES ($1, 1)
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .execute(pool)
    .await?;
    Ok(
        sqlx::query_scalar("SELECT active_generation FROM projections WHERE name = $1")
            .bind(name)
            .fetch_one(pool)
            .await?,
    )
}

async fn checkpoint(pool: &PgPool, name: &str, generation: i32) -> Result<Option<u64>, Error> {
    let p: Option<i64> = sqlx::query_scalar(
        "SELECT position FROM projection_checkpoints WHERE name = $1 AND generation = $2",
    )
    .bind(name)
    .bind(generation)
    .fetch_optional(pool)
    .await?;
    Ok(p.map(|p| p as u64))
}

/// Moves the checkpoint from `from` to `to`; false (nothing written) if it
/// is not at `from`. No checkpoint counts as 0.
async fn advance_checkpoint(
    tx: &mut PgConnection,
    name: &str,
    generation: i32,
    from: u64,
    to: u64,
) -> Result<bool, Error> {
    let moved = sqlx::query(
        "UPDATE projection_checkpoints SET position = $4, updated_at = now()
         WHERE name = $1 AND generation = $2 AND position = $3",
    )
    .bind(name)
    .bind(generation)
    .bind(from as i64)
    .bind(to as i64)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if moved == 1 || from != 0 {
        return Ok(moved == 1);
    }
    let inserted = sqlx::query(
        "INSERT INTO projection_checkpoints (name, generation, position) VALUES ($1, $2, $3)
         ON CONFLICT (name, generation) DO NOTHING",
    )
    .bind(name)
    .bind(generation)
    .bind(to as i64)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

async fn set_checkpoint(
    tx: &mut PgConnection,
    name: &str,
    generation: i32,
    position: u64,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO projection_checkpoints (name, generation, position) VALUES ($1, $2, $3)
         ON CONFLICT (name, generation)
            DO UPDATE SET position = EXCLUDED.position, updated_at = now()",
    )
    .bind(name)
    .bind(generation)
    .bind(position as i64)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

// ---- Rebuild ----

/// Events folded between offers of the CPU in a rebuild (well under a
/// millisecond of work).
const FOLD_SLICE: usize = 128;

#[derive(Debug, Clone)]
pub struct RebuildOptions {
    /// Events read per page.
    pub page: usize,
    /// Events folded in memory between writes. Larger is faster (each
    /// participant's row is written once per flush) and holds more in
    /// memory; a rebuild that stops resumes from its last flush.
    pub flush_every: usize,
    /// The rebuild's own lease, so that two rebuilds do not collide.
    pub lease_ttl: Duration,
    /// Read the next page while folding this one. Off by default: on the
    /// two-core machine it was measured on it gave no more events per
    /// second, and kept one more thread busy beside the servers.
    pub read_ahead: bool,
    /// The share of the time the rebuild works (0 to 1): after each page it
    /// rests in proportion, so that on a small machine the servers beside it
    /// keep their latency. 1 never rests.
    pub duty: f64,
}

impl Default for RebuildOptions {
    fn default() -> Self {
        Self {
            page: 10_000,
            flush_every: 500_000,
            lease_ttl: Duration::from_secs(60),
            read_ahead: false,
            duty: 1.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RebuildReport {
    pub from_generation: i32,
    pub to_generation: i32,
    /// Events folded by this run (a resumed rebuild counts from where it
    /// resumed).
    pub events: u64,
    pub position: u64,
    pub elapsed: Duration,
    /// Whether it resumed a rebuild that had stopped part way.
    pub resumed: bool,
}

impl RebuildReport {
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Builds the next generation of `projection` from the start of the log
/// beside the active one, then switches queries to it and drops the old.
/// A rebuild that stopped part way is resumed from its last flush.
pub async fn rebuild<P: Projection>(
    store: &EventStore,
    mut projection: P,
    options: RebuildOptions,
) -> Result<RebuildReport, Error> {
    let name = projection.name();
    let pool = pool(store).clone();
    let lease = Lease::new(format!("{name}#rebuild"), options.lease_ttl);
    if !lease.acquire(&pool).await? {
        return Err(Error::RebuildRunning(name.to_owned()));
    }
    let result = rebuild_held(store, &mut projection, &options, &lease).await;
    let _ = lease.release(&pool).await;
    result
}

async fn rebuild_held<P: Projection>(
    store: &EventStore,
    projection: &mut P,
    options: &RebuildOptions,
    lease: &Lease,
) -> Result<RebuildReport, Error> {
    let name = projection.name();
    let pool = pool(store).clone();
    let started = Instant::now();
    let active = active_generation(&pool, name).await?;
    let (target, mut position, resumed) = match unfinished(&pool, name, active).await? {
        Some((g, p)) => (g, p, true),
        None => {
            let target = active + 1;
            let mut tx = pool.begin().await?;
            if !lease.fence(&mut tx).await? {
                return Err(Error::LeaseLost);
            }
            projection
                .drop_generation(&mut tx, target)
                .await
                .map_err(|e| wrap(name, e))?;
            set_checkpoint(&mut tx, name, target, 0).await?;
            tx.commit().await?;
            projection.starting_empty();
            (target, 0, false)
        }
    };
    tracing::info!(
        projection = name,
        generation = target,
        position,
        resumed,
        "rebuilding"
    );
    let filter = projection.filter();
    let mut events = 0u64;
    let mut unflushed = 0usize;
    // Read ahead: the next page is fetched while this one is folded.
    let read = |after: u64| {
        let store = store.clone();
        let filter = filter.clone();
        let size = options.page;
        tokio::spawn(async move { store.read_log(&filter, after, size).await })
    };
    let mut next = options.read_ahead.then(|| read(position));
    let duty = options.duty.clamp(0.05, 1.0);
    loop {
        let worked = Instant::now();
        let page = match next.take() {
            Some(task) => task.await.map_err(|e| wrap(name, Box::new(e)))??,
            None => store.read_log(&filter, position, options.page).await?,
        };
        if page.scanned_through == position {
            break;
        }
        let after = page.scanned_through;
        if options.read_ahead {
            next = Some(read(after));
        }
        // Folded a slice at a time, offering the CPU between slices: on a
        // small machine a woken server thread then waits for a slice, not
        // for the scheduler to preempt a long fold.
        for slice in page.events.chunks(FOLD_SLICE) {
            projection
                .fold(&pool, target, slice)
                .await
                .map_err(|e| wrap(name, e))?;
            std::thread::yield_now();
        }
        events += page.events.len() as u64;
        unflushed += page.events.len();
        position = after;
        if duty < 1.0 {
            tokio::time::sleep(worked.elapsed().mul_f64((1.0 - duty) / duty)).await;
        }
        // Renewed per page, and checked in every transaction below: a
        // rebuild that stalled past its lease writes nothing over another.
        if !lease.acquire(&pool).await? {
            return Err(Error::LeaseLost);
        }
        if unflushed >= options.flush_every {
            flush_fenced(&pool, projection, lease, target, position).await?;
            projection.reset();
            unflushed = 0;
        }
    }
    // Caught up: write what is folded first, so that the switch below holds
    // its lock only for the few events that arrived meanwhile.
    if unflushed > 0 {
        flush_fenced(&pool, projection, lease, target, position).await?;
    }
    // The last events and the switch in one transaction. The
    // exclusive lock on the generation row waits for the live runner's
    // batch in flight and keeps its next one out until the switch is done.
    let mut tx = pool.begin().await?;
    if !lease.fence(&mut tx).await? {
        return Err(Error::LeaseLost);
    }
    sqlx::query("SELECT active_generation FROM projections WHERE name = $1 FOR UPDATE")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    loop {
        let page = store.read_log(&filter, position, options.page).await?;
        if page.scanned_through == position {
            break;
        }
        projection
            .fold(&pool, target, &page.events)
            .await
            .map_err(|e| wrap(name, e))?;
        events += page.events.len() as u64;
        position = page.scanned_through;
    }
    projection
        .flush(&mut tx, target)
        .await
        .map_err(|e| wrap(name, e))?;
    set_checkpoint(&mut tx, name, target, position).await?;
    sqlx::query(
        "UPDATE projections SET active_generation = $2, switched_at = now() WHERE name = $1",
    )
    .bind(name)
    .bind(target)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    projection.reset();
    tracing::info!(
        projection = name,
        generation = target,
        position,
        "switched to the rebuilt generation"
    );
    // The old generations are no longer read.
    let mut tx = pool.begin().await?;
    let old: Vec<i32> = sqlx::query_scalar(
        "DELETE FROM projection_checkpoints WHERE name = $1 AND generation < $2
         RETURNING generation",
    )
    .bind(name)
    .bind(target)
    .fetch_all(&mut *tx)
    .await?;
    for g in old {
        projection
            .drop_generation(&mut tx, g)
            .await
            .map_err(|e| wrap(name, e))?;
    }
    tx.commit().await?;
    Ok(RebuildReport {
        from_generation: active,
        to_generation: target,
        events,
        position,
        elapsed: started.elapsed(),
        resumed,
    })
}

/// A generation above the active one, with its position: an unfinished
/// rebuild.
async fn unfinished(pool: &PgPool, name: &str, active: i32) -> Result<Option<(i32, u64)>, Error> {
    let row: Option<(i32, i64)> = sqlx::query_as(
        "SELECT generation, position FROM projection_checkpoints
         WHERE name = $1 AND generation > $2 ORDER BY generation DESC LIMIT 1",
    )
    .bind(name)
    .bind(active)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(g, p)| (g, p as u64)))
}

/// Writes a rebuild's folded rows and its checkpoint, if it still holds
/// its lease.
async fn flush_fenced<P: Projection>(
    pool: &PgPool,
    projection: &mut P,
    lease: &Lease,
    target: i32,
    position: u64,
) -> Result<(), Error> {
    let name = projection.name();
    let mut tx = pool.begin().await?;
    if !lease.fence(&mut tx).await? {
        return Err(Error::LeaseLost);
    }
    projection
        .flush(&mut tx, target)
        .await
        .map_err(|e| wrap(name, e))?;
    set_checkpoint(&mut tx, name, target, position).await?;
    tx.commit().await?;
    Ok(())
}

// ---- Status ----

/// How far a projection is behind the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub name: String,
    pub active_generation: i32,
    pub position: u64,
    pub head: u64,
    /// Log positions not yet read: an upper bound on the events behind
    /// (it counts events of other categories too).
    pub events_behind: u64,
    /// Age of the oldest event not yet read; zero when caught up.
    pub seconds_behind: f64,
    /// A rebuild beside the active generation: (generation, position).
    pub rebuilding: Option<(i32, u64)>,
}

pub async fn status(pool: &PgPool, name: &str) -> Result<Status, Error> {
    let active: Option<i32> =
        sqlx::query_scalar("SELECT active_generation FROM projections WHERE name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await?;
    let active = active.unwrap_or(1);
    let position = checkpoint(pool, name, active).await?.unwrap_or(0);
    let (head, oldest): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT (SELECT coalesce(max(position), 0) FROM events),
                (SELECT recorded_at FROM events WHERE position > $1 ORDER BY position LIMIT 1)",
    )
    .bind(position as i64)
    .fetch_one(pool)
    .await?;
    let rebuilding = unfinished(pool, name, active).await?;
    let head = head as u64;
    Ok(Status {
        name: name.to_owned(),
        active_generation: active,
        position,
        head,
        events_behind: head.saturating_sub(position),
        seconds_behind: oldest.map_or(0.0, |t| {
            (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0
        }),
        rebuilding,
    })
}
