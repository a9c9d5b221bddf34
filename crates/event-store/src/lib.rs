//! Tend's event store: an append-only log of immutable events in PostgreSQL.
//!
//! Appends are atomic per call, checked against an expected stream version,
//! and idempotent by event id. Every event gets a global position in commit
//! order, so a subscriber that follows the log by position never skips an
//! event that a concurrent writer commits late. Appends from many callers are
//! grouped into one transaction by a single writer task (group commit), which
//! is what makes serialised, gap-free positions fast.
//!
//! It is not a domain model: payloads are opaque JSON here. It does not
//! authenticate; callers pass the tenant they have already established.

mod error;
mod folds;
mod lease;
mod model;
mod plan;
mod read;
mod subscription;
mod writer;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use tend_telemetry::Outcome;
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

pub use error::Error;
pub use folds::Folds;
pub use lease::{Held, Lease};
pub use model::{
    Appended, Direction, ExpectedVersion, Filter, LogPage, Metadata, MovedStreams, NewEvent,
    RecordedEvent, StreamId, StreamSlice, TenantId,
};
pub use subscription::{Delivery, Subscription};

use plan::AppendRequest;

/// The last committed position. Never the sequence, which runs ahead of
/// commits.
pub(crate) const HEAD_SQL: &str = "SELECT coalesce(max(position), 0) FROM events";

/// The largest number of events one append may carry.
pub const MAX_EVENTS_PER_APPEND: usize = 1000;

/// The schema migrations in `migrations/`, embedded in the binary.
pub fn migrator() -> Migrator {
    let migrations = [
        (
            1,
            "event store",
            include_str!("../../../migrations/0001_event_store.sql"),
        ),
        (
            2,
            "scheduler",
            include_str!("../../../migrations/0002_scheduler.sql"),
        ),
        (
            3,
            "practice log",
            include_str!("../../../migrations/0003_practice.sql"),
        ),
        (
            4,
            "projections",
            include_str!("../../../migrations/0004_projections.sql"),
        ),
        (
            5,
            "one lease table",
            include_str!("../../../migrations/0005_leases.sql"),
        ),
        (
            6,
            "participants' identities out of the log",
            include_str!("../../../migrations/0006_privacy.sql"),
        ),
        (
            7,
            "webhook secrets and deliveries",
            include_str!("../../../migrations/0007_webhooks.sql"),
        ),
        (
            8,
            "FHIR bulk exports",
            include_str!("../../../migrations/0008_fhir.sql"),
        ),
        (
            9,
            "occurrence row digests",
            include_str!("../../../migrations/0009_occurrence_row_digests.sql"),
        ),
        (
            10,
            "arc practice entries apart from the state",
            include_str!("../../../migrations/0010_arc_practice.sql"),
        ),
        (
            11,
            "scheduler streams behind in a table of their own",
            include_str!("../../../migrations/0011_scheduler_behind.sql"),
        ),
    ];
    Migrator::with_migrations(
        migrations
            .into_iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    sqlx::SqlSafeStr::into_sql_str(sql),
                    false,
                )
            })
            .collect(),
    )
}

/// Applies every pending migration.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    migrator().run(pool).await
}

/// The default of [`Options::fold_cache_events`]: a practice entry folded
/// costs a few hundred bytes, so about 100 MB.
pub const DEFAULT_FOLD_CACHE_EVENTS: usize = 250_000;

/// Tuning knobs; the defaults suit a small server.
#[derive(Debug, Clone)]
pub struct Options {
    /// Appends waiting for the writer before callers wait to enqueue.
    pub queue_capacity: usize,
    /// The writer stops adding appends to a batch past this many events.
    pub max_batch_events: usize,
    /// How often the head of the log is re-read, in case a notification
    /// from another server was lost.
    pub poll_interval: Duration,
    /// Events a subscription reads from the database at a time. This bounds
    /// its memory, however slowly its consumer reads.
    pub page_size: usize,
    /// Events folded into the states kept in memory ([`Folds`]), least
    /// recently used dropped first; 0 keeps none.
    pub fold_cache_events: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            queue_capacity: 4096,
            max_batch_events: 2000,
            poll_interval: Duration::from_millis(500),
            page_size: 500,
            fold_cache_events: DEFAULT_FOLD_CACHE_EVENTS,
        }
    }
}

/// A handle to the store; cheap to clone.
#[derive(Clone, Debug)]
pub struct EventStore {
    inner: Arc<Inner>,
    /// Reads and transactions outside the writer; see [`Self::reading_through`].
    pool: PgPool,
}

#[derive(Debug)]
struct Inner {
    options: Options,
    queue: Mutex<Option<mpsc::Sender<writer::Job>>>,
    head: watch::Receiver<u64>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    folds: Folds,
}

impl EventStore {
    /// Opens the store on a migrated database and starts its writer and
    /// head watcher.
    pub async fn open(pool: PgPool, options: Options) -> Result<Self, Error> {
        let head: i64 = sqlx::query_scalar(HEAD_SQL).fetch_one(&pool).await?;
        let (head_tx, head_rx) = watch::channel(head as u64);
        let (queue_tx, queue_rx) = mpsc::channel(options.queue_capacity.max(1));
        let head_tx = Arc::new(head_tx);
        let writer = tokio::spawn(writer::run(
            pool.clone(),
            queue_rx,
            head_tx.clone(),
            options.max_batch_events,
        ));
        let watcher = tokio::spawn(writer::watch_head(
            pool.clone(),
            head_tx,
            options.poll_interval,
        ));
        Ok(Self {
            pool,
            inner: Arc::new(Inner {
                folds: Folds::new(options.fold_cache_events),
                options,
                queue: Mutex::new(Some(queue_tx)),
                head: head_rx,
                tasks: Mutex::new(vec![writer, watcher]),
            }),
        })
    }

    /// The states folded from this store's streams, kept in memory.
    pub fn folds(&self) -> &Folds {
        &self.inner.folds
    }

    /// Appends `events` to `stream`, atomically: all are stored or none.
    ///
    /// Within a sampled trace, events without trace context get the
    /// append's, so that a subscriber can link an event back to the call
    /// that wrote it.
    pub async fn append(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, Error> {
        let started = std::time::Instant::now();
        let count = events.len() as u64;
        let span = if tend_telemetry::within_trace() {
            tracing::info_span!(
                "append",
                otel.name = "append",
                tend.category = stream.category(),
                tend.events = count,
                tend.outcome = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        };
        let result = self
            .append_traced(tenant, stream, expected, events, &span)
            .instrument(span.clone())
            .await;
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(e) if e.is_refusal() => Outcome::Refused,
            Err(_) => Outcome::Error,
        };
        span.record("tend.outcome", outcome.as_str());
        let metrics = tend_telemetry::instruments();
        metrics
            .append_duration
            .record(started.elapsed().as_secs_f64(), &[outcome.attribute()]);
        metrics.append_events.record(count, &[]);
        result
    }

    async fn append_traced(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        expected: ExpectedVersion,
        mut events: Vec<NewEvent>,
        span: &tracing::Span,
    ) -> Result<Appended, Error> {
        if events.is_empty() {
            return Err(Error::invalid("events", "at least one event is required"));
        }
        if events.len() > MAX_EVENTS_PER_APPEND {
            return Err(Error::invalid("events", "at most 1000 events per append"));
        }
        if let ExpectedVersion::Exact(v) = expected
            && v >= i64::MAX as u64
        {
            return Err(Error::invalid(
                "expected_version",
                "is beyond any stream's version",
            ));
        }
        let mut ids = std::collections::HashSet::with_capacity(events.len());
        for event in &events {
            event.validate()?;
            if !ids.insert(event.id) {
                return Err(Error::invalid(
                    "events",
                    format!("event id {} appears twice", event.id),
                ));
            }
        }
        if let Some(traceparent) = tend_telemetry::current_traceparent() {
            for event in events
                .iter_mut()
                .filter(|e| e.metadata.traceparent.is_none())
            {
                event.metadata.traceparent = Some(traceparent.clone());
            }
        }
        let (reply, answer) = oneshot::channel();
        let job = writer::Job {
            request: AppendRequest {
                tenant: tenant.clone(),
                stream: stream.clone(),
                expected,
                events,
            },
            reply,
            span: span.clone(),
        };
        let queue = self.inner.queue.lock().await.clone();
        let queue = queue.ok_or(Error::ShuttingDown)?;
        queue.send(job).await.map_err(|_| Error::ShuttingDown)?;
        answer.await.map_err(|_| Error::ShuttingDown)?
    }

    /// The highest position this server knows to be committed.
    pub fn head(&self) -> u64 {
        *self.inner.head.borrow()
    }

    /// Follows the log after `after`: catch-up, then live.
    pub fn subscribe(&self, filter: Filter, after: u64) -> Subscription {
        Subscription::new(self.clone(), filter, after)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The same store (its writer, head and kept folds) with its reads and
    /// transactions on `pool`. Background work on a runtime of its own
    /// uses a pool of its own: a connection is driven by the runtime that
    /// opened it, and calls must not wait on the background's threads.
    pub fn reading_through(&self, pool: PgPool) -> Self {
        Self {
            inner: self.inner.clone(),
            pool,
        }
    }

    /// Stops taking appends, writes those already queued, and stops the
    /// background tasks. Subscriptions end with [`Error::ShuttingDown`].
    pub async fn shutdown(&self) {
        self.inner.queue.lock().await.take();
        let tasks = std::mem::take(&mut *self.inner.tasks.lock().await);
        let mut tasks = tasks.into_iter();
        // The writer drains its queue once every sender is gone.
        if let Some(writer) = tasks.next() {
            let _ = writer.await;
        }
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
    }

    /// The head of the log as it moves: a follower waits on it for new
    /// events instead of polling.
    pub fn watch_head(&self) -> watch::Receiver<u64> {
        self.inner.head.clone()
    }

    fn head_watch(&self) -> watch::Receiver<u64> {
        self.inner.head.clone()
    }
}
