//! The imperative shell around [`crate::plan`]: one task per server takes
//! queued appends and writes as many as are waiting in one statement, one
//! commit (group commit in the application).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Row};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;
use uuid::Uuid;

use crate::plan::{self, AppendRequest, Plan, Snapshot, StoredEvent};
use crate::{Appended, Error, ExpectedVersion, HEAD_SQL, Metadata, StreamId, TenantId};

/// The transaction-scoped advisory lock every append holds from taking its
/// positions until it commits ("tend" in ASCII, then "events").
pub(crate) const APPEND_LOCK: i64 = 0x7465_6e64_0000_0001;

/// The channel that wakes other servers' subscribers after a commit.
pub(crate) const NOTIFY_CHANNEL: &str = "tend_events";

#[derive(Debug)]
pub(crate) struct Job {
    pub request: AppendRequest,
    pub reply: oneshot::Sender<Result<Appended, Error>>,
    /// The caller's append span: the commit's parent, or a link.
    pub span: tracing::Span,
}

pub(crate) async fn run(
    pool: PgPool,
    mut queue: mpsc::Receiver<Job>,
    head: Arc<watch::Sender<u64>>,
    max_batch_events: usize,
) {
    let connect_options = (*pool.connect_options())
        .clone()
        .application_name("tend-writer")
        // One statement shape, run thousands of times a second: plan it once.
        .options([("plan_cache_mode", "force_generic_plan")]);
    let mut writer = Writer {
        pool,
        connect_options,
        connection: None,
        head,
        versions: HashMap::new(),
        last_notified: None,
        notify_owed: false,
    };
    loop {
        let first = if writer.notify_owed {
            // A commit went out without a notification: send one if no
            // batch comes to carry it soon.
            match tokio::time::timeout(NOTIFY_EVERY, queue.recv()).await {
                Ok(job) => job,
                Err(_) => {
                    writer.notify().await;
                    continue;
                }
            }
        } else {
            queue.recv().await
        };
        let Some(first) = first else { break };
        let mut events = first.request.events.len();
        let mut batch = vec![first];
        // Take what is queued; then yield a few times, so that callers
        // just answered by the last batch can join this one.
        for _ in 0..3 {
            let before = batch.len();
            while events < max_batch_events {
                match queue.try_recv() {
                    Ok(job) => {
                        events += job.request.events.len();
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
            if events >= max_batch_events || (batch.len() == before && before > 1) {
                break;
            }
            tokio::task::yield_now().await;
        }
        writer.write(batch).await;
    }
    if writer.notify_owed {
        writer.notify().await;
    }
}

/// Other servers learn of commits by NOTIFY, at most this often from one
/// writer. Each NOTIFY costs every listening server a wake-up, and costs
/// the commit a global lock; this server's own subscribers are woken
/// in-process at once.
const NOTIFY_EVERY: Duration = Duration::from_millis(5);

/// Stream versions remembered as hints; past this the memory is dropped.
const MAX_REMEMBERED_STREAMS: usize = 100_000;

struct Writer {
    pool: PgPool,
    /// The writer's own connection, opened on first use and again after a
    /// failure.
    connect_options: PgConnectOptions,
    connection: Option<PgConnection>,
    head: Arc<watch::Sender<u64>>,
    /// The versions this writer last wrote: hints for the next append to
    /// the same stream, verified by the database on every write.
    versions: HashMap<(TenantId, StreamId), u64>,
    last_notified: Option<tokio::time::Instant>,
    /// A commit has not been announced to other servers yet.
    notify_owed: bool,
}

impl Writer {
    async fn write(&mut self, batch: Vec<Job>) {
        let started = std::time::Instant::now();
        let appends = batch.len() as u64;
        let span = commit_span(&batch);
        let (requests, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|j| (j.request, j.reply)).unzip();
        self.write_requests(requests, replies)
            .instrument(span)
            .await;
        let metrics = tend_telemetry::instruments();
        metrics.commit_appends.record(appends, &[]);
        metrics
            .commit_duration
            .record(started.elapsed().as_secs_f64(), &[]);
    }

    async fn write_requests(
        &mut self,
        requests: Vec<AppendRequest>,
        replies: Vec<oneshot::Sender<Result<Appended, Error>>>,
    ) {
        match self.append(&requests).await {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            Err(Error::Contended) if requests.len() > 1 => {
                // Only the appends to the contended streams should fail.
                self.write_one_by_one(requests, replies).await;
            }
            Err(e) if e.is_unavailable() => {
                tracing::warn!(appends = requests.len(), error = %e, "database unavailable; batch refused");
                let reason = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(Error::Unavailable(reason.clone())));
                }
            }
            Err(e) if requests.len() == 1 => {
                if let Some(reply) = replies.into_iter().next() {
                    let _ = reply.send(Err(e));
                }
            }
            Err(e) => {
                // Something in one append broke the whole batch: write each
                // alone so that only the culprit fails.
                tracing::warn!(appends = requests.len(), error = %e, "batch failed; retrying appends one by one");
                self.write_one_by_one(requests, replies).await;
            }
        }
    }

    async fn write_one_by_one(
        &mut self,
        requests: Vec<AppendRequest>,
        replies: Vec<oneshot::Sender<Result<Appended, Error>>>,
    ) {
        for (request, reply) in requests.into_iter().zip(replies) {
            let requests = [request];
            let outcome = match self.append(&requests).await {
                Ok(mut outcomes) => outcomes.pop().unwrap_or(Err(Error::ShuttingDown)),
                Err(e) => Err(e),
            };
            let _ = reply.send(outcome);
        }
    }

    /// Appends a batch in one statement (one round trip, one commit). The
    /// first round decides from what this writer remembers and what callers
    /// expect; the database then verifies every assumption: a stream's
    /// version, and through unique constraints, new event ids and stream
    /// versions. When one does not hold (another server wrote, or a caller
    /// retried), the next round reads the facts and decides again.
    async fn append(&mut self, requests: &[AppendRequest]) -> Result<Outcomes, Error> {
        let result = self.try_append(requests).await;
        if let Err(Error::Database(e)) = &result
            && !is_unique_violation(e)
        {
            // The connection may be broken; the next batch opens another.
            self.connection = None;
        }
        result
    }

    /// Round 0 decides from hints, round 1 from facts read without a lock;
    /// if other servers keep changing the same streams under it, round 2
    /// reads the facts and writes while holding the append lock, so nothing
    /// can change in between and it always decides.
    async fn try_append(&mut self, requests: &[AppendRequest]) -> Result<Outcomes, Error> {
        for round in 0..2 {
            let connection = self.connection().await?;
            let snapshot = if round == 0 {
                self.guess(requests)
            } else {
                lookup(connection, requests)
                    .instrument(lookup_span())
                    .await?
            };
            let assumed_head = snapshot.head;
            let plan = plan::plan(requests, snapshot);
            if round == 0 && plan.outcomes.iter().any(Result::is_err) {
                // A refusal must rest on facts, not on hints.
                continue;
            }
            if plan.rows.is_empty() {
                return Ok(plan.outcomes);
            }
            let notify = self.notify_due();
            let connection = self.connection().await?;
            match insert(connection, requests, &plan, assumed_head, notify)
                .instrument(insert_span())
                .await
            {
                Ok(Some(base)) => {
                    return Ok(self.written(requests, plan, assumed_head, base, notify));
                }
                Ok(None) => continue,
                Err(e) if is_unique_violation(&e) => continue,
                Err(e) => return Err(Error::Database(e)),
            }
        }

        let notify = self.notify_due();
        let connection = self.connection().await?;
        let mut tx = connection.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(APPEND_LOCK)
            .execute(&mut *tx)
            .await?;
        let snapshot = lookup(&mut tx, requests).instrument(lookup_span()).await?;
        let assumed_head = snapshot.head;
        let plan = plan::plan(requests, snapshot);
        if plan.rows.is_empty() {
            tx.commit().await?;
            return Ok(plan.outcomes);
        }
        // Under the lock the facts cannot go stale: the guard passes.
        let base = insert(&mut tx, requests, &plan, assumed_head, notify)
            .instrument(insert_span())
            .await?
            .ok_or(Error::Contended)?;
        tx.commit().await?;
        Ok(self.written(requests, plan, assumed_head, base, notify))
    }

    async fn connection(&mut self) -> Result<&mut PgConnection, Error> {
        if self.connection.is_none() {
            self.connection = Some(self.connect_options.connect().await?);
        }
        self.connection.as_mut().ok_or(Error::ShuttingDown)
    }

    fn notify_due(&self) -> bool {
        self.last_notified
            .is_none_or(|at| at.elapsed() >= NOTIFY_EVERY)
    }

    /// Bookkeeping after a commit: the head, hints, notifications, and the
    /// positions the database gave.
    fn written(
        &mut self,
        requests: &[AppendRequest],
        plan: Plan,
        assumed_head: u64,
        base: u64,
        notified: bool,
    ) -> Outcomes {
        if notified {
            self.last_notified = Some(tokio::time::Instant::now());
        }
        self.notify_owed = !notified;
        tend_telemetry::instruments()
            .events_appended
            .add(plan.rows.len() as u64, &[]);
        advance(&self.head, base + plan.rows.len() as u64);
        self.remember(requests, &plan);
        rebase(plan.outcomes, assumed_head, base)
    }

    async fn notify(&mut self) {
        let head = *self.head.borrow();
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(head.to_string())
            .execute(&self.pool)
            .await;
        if let Err(e) = sent {
            // Other servers still find the commit by polling.
            tracing::warn!(error = %e, "cannot notify other servers of a commit");
        }
        self.last_notified = Some(tokio::time::Instant::now());
        self.notify_owed = false;
    }

    fn guess(&self, requests: &[AppendRequest]) -> Snapshot {
        let mut versions = HashMap::new();
        for r in requests {
            let key = (r.tenant.clone(), r.stream.clone());
            if versions.contains_key(&key) {
                continue;
            }
            let guess = self.versions.get(&key).copied().or(match r.expected {
                ExpectedVersion::Exact(v) => Some(v),
                ExpectedVersion::NoStream | ExpectedVersion::Any => None,
            });
            if let Some(v) = guess {
                versions.insert(key, v);
            }
        }
        Snapshot {
            head: *self.head.borrow(),
            versions,
            stored: HashMap::new(),
        }
    }

    fn remember(&mut self, requests: &[AppendRequest], plan: &Plan) {
        if self.versions.len() > MAX_REMEMBERED_STREAMS {
            self.versions.clear();
        }
        // Rows come in request order; a request's last row holds its
        // stream's new version.
        for (i, row) in plan.rows.iter().enumerate() {
            if plan
                .rows
                .get(i + 1)
                .is_some_and(|next| next.request == row.request)
            {
                continue;
            }
            let r = &requests[row.request];
            self.versions
                .insert((r.tenant.clone(), r.stream.clone()), row.stream_version);
        }
    }
}

/// One commit serves several callers: it continues the trace of the first
/// one that is sampled and links to the other sampled ones'. A batch of
/// untraced appends (background work) makes no span at all.
fn commit_span(batch: &[Job]) -> tracing::Span {
    if !tend_telemetry::tracing_enabled() {
        return tracing::Span::none();
    }
    let mut traced = batch.iter().filter(|j| tend_telemetry::is_sampled(&j.span));
    let Some(parent) = traced.next() else {
        return tracing::Span::none();
    };
    let events: usize = batch.iter().map(|j| j.request.events.len()).sum();
    let span = tracing::info_span!(
        parent: &parent.span,
        "commit",
        otel.name = "commit",
        tend.appends = batch.len(),
        tend.events = events,
    );
    for job in traced {
        tend_telemetry::link_to(&span, &job.span);
    }
    span
}

fn insert_span() -> tracing::Span {
    tend_telemetry::db_span("INSERT events", "INSERT", "events")
}

fn lookup_span() -> tracing::Span {
    tend_telemetry::db_span("SELECT events", "SELECT", "events")
}

fn advance(head: &watch::Sender<u64>, to: u64) {
    head.send_if_modified(|h| {
        let moved = to > *h;
        *h = (*h).max(to);
        moved
    });
}

type Outcomes = Vec<Result<Appended, Error>>;

/// The plan numbered new events after `assumed`; the database put them
/// after `base`. Positions at or below `assumed` were read from the log.
fn rebase(outcomes: Outcomes, assumed: u64, base: u64) -> Outcomes {
    outcomes
        .into_iter()
        .map(|o| {
            o.map(|mut a| {
                for p in &mut a.positions {
                    if *p > assumed {
                        *p = *p - assumed + base;
                    }
                }
                a
            })
        })
        .collect()
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

/// Reads what a batch needs to know: current stream versions and events
/// already stored under its ids. The head is read last, so every stored
/// position seen is at or below it.
async fn lookup(
    connection: &mut PgConnection,
    requests: &[AppendRequest],
) -> Result<Snapshot, Error> {
    let versions = stream_versions(&mut *connection, requests).await?;
    let stored = stored_events(&mut *connection, requests).await?;
    let head: i64 = sqlx::query_scalar(HEAD_SQL)
        .fetch_one(&mut *connection)
        .await?;
    Ok(Snapshot {
        head: head as u64,
        versions,
        stored,
    })
}

/// Writes the plan's rows in one autocommitted statement, if every stream
/// is still at the version the plan assumed. Returns the position after
/// which the rows were placed, or `None` when an assumption failed.
///
/// Taking the head row's lock hands out positions; the lock is held until
/// commit, so positions become visible in order, across servers too.
async fn insert(
    connection: &mut PgConnection,
    requests: &[AppendRequest],
    plan: &Plan,
    assumed_head: u64,
    notify: bool,
) -> Result<Option<u64>, sqlx::Error> {
    let n = plan.rows.len();
    let mut offsets = Vec::with_capacity(n);
    let mut tenants = Vec::with_capacity(n);
    let mut streams = Vec::with_capacity(n);
    let mut categories = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut schemas = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    let mut metadata = Vec::with_capacity(n);
    let (mut guard_tenants, mut guard_streams, mut guard_versions) = (vec![], vec![], vec![]);
    let mut guarded = std::collections::HashSet::new();
    for row in &plan.rows {
        let request = &requests[row.request];
        let event = &request.events[row.event];
        if guarded.insert((&request.tenant, &request.stream)) {
            // The version before this batch's first event; -1: no stream.
            guard_tenants.push(request.tenant.as_str());
            guard_streams.push(request.stream.as_str());
            guard_versions.push(row.stream_version as i64 - 1);
        }
        offsets.push((row.position - assumed_head) as i64);
        tenants.push(request.tenant.as_str());
        streams.push(request.stream.as_str());
        categories.push(request.stream.category());
        versions.push(row.stream_version as i64);
        ids.push(event.id);
        types.push(event.event_type.as_str());
        schemas.push(event.schema_version as i32);
        payloads.push(event.payload.to_string());
        metadata.push(
            (event.metadata != Metadata::default())
                .then(|| serde_json::to_string(&event.metadata).unwrap_or_default()),
        );
    }
    // The guard reads with the statement's snapshot, which may predate a
    // concurrent commit; that commit's versions then collide with ours on
    // the unique constraint instead. Versions only grow, so the guard just
    // has to catch a stream that is behind what was assumed.
    sqlx::query_scalar(
        "WITH guard AS (
             SELECT bool_and(coalesce((SELECT max(e.stream_version) FROM events e
                                       WHERE e.tenant_id = g.t AND e.stream_id = g.s), -1) = g.v) AS ok
             FROM unnest($11::text[], $12::text[], $13::bigint[]) AS g(t, s, v)
         ), locked AS (
             SELECT pg_advisory_xact_lock($16) FROM guard WHERE ok
         ), moved AS (
             SELECT setval('event_position', nextval('event_position') + $14 - 1) - $14 AS base
             FROM locked
         ), inserted AS (
             INSERT INTO events (position, tenant_id, stream_id, category, stream_version,
                                 event_id, event_type, schema_version, payload, metadata, recorded_at)
             SELECT moved.base + r.o, r.t, r.s, r.c, r.v, r.i, r.y, r.sv, r.d::json, r.m::json, now()
             FROM moved, unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                                $6::uuid[], $7::text[], $8::int[], $9::text[], $10::text[])
                         AS r(o, t, s, c, v, i, y, sv, d, m)
             RETURNING 1
         )
         SELECT moved.base FROM moved
         LEFT JOIN LATERAL (SELECT pg_notify($15, (moved.base + $14)::text) WHERE $17) n ON true",
    )
    .bind(offsets)
    .bind(tenants)
    .bind(streams)
    .bind(categories)
    .bind(versions)
    .bind(ids)
    .bind(types)
    .bind(schemas)
    .bind(payloads)
    .bind(metadata)
    .bind(guard_tenants)
    .bind(guard_streams)
    .bind(guard_versions)
    .bind(n as i64)
    .bind(NOTIFY_CHANNEL)
    .bind(APPEND_LOCK)
    .bind(notify)
    .fetch_optional(connection)
    .await
    .map(|base: Option<i64>| base.map(|b| b as u64))
}

async fn stream_versions(
    connection: &mut PgConnection,
    requests: &[AppendRequest],
) -> Result<HashMap<(TenantId, StreamId), u64>, sqlx::Error> {
    let mut keys: Vec<_> = requests.iter().map(|r| (&r.tenant, &r.stream)).collect();
    keys.sort();
    keys.dedup();
    let tenants: Vec<&str> = keys.iter().map(|(t, _)| t.as_str()).collect();
    let streams: Vec<&str> = keys.iter().map(|(_, s)| s.as_str()).collect();
    let rows = sqlx::query(
        "SELECT k.i, (SELECT max(e.stream_version) FROM events e
                      WHERE e.tenant_id = k.t AND e.stream_id = k.s)
         FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(t, s, i)",
    )
    .bind(tenants)
    .bind(streams)
    .fetch_all(&mut *connection)
    .await?;
    let mut versions = HashMap::new();
    for row in rows {
        let i: i64 = row.try_get(0)?;
        let version: Option<i64> = row.try_get(1)?;
        if let (Some(version), Some((tenant, stream))) = (version, keys.get(i as usize - 1)) {
            versions.insert(((*tenant).clone(), (*stream).clone()), version as u64);
        }
    }
    Ok(versions)
}

async fn stored_events(
    connection: &mut PgConnection,
    requests: &[AppendRequest],
) -> Result<HashMap<(TenantId, Uuid), StoredEvent>, sqlx::Error> {
    let mut tenants = Vec::new();
    let mut ids = Vec::new();
    for request in requests {
        for event in &request.events {
            tenants.push(request.tenant.as_str());
            ids.push(event.id);
        }
    }
    let rows = sqlx::query(
        // LATERAL keeps this an index probe per id, whatever the log's size.
        "SELECT e.tenant_id, e.event_id, e.stream_id, e.stream_version, e.position,
                e.event_type, e.schema_version, e.payload
         FROM unnest($1::text[], $2::uuid[]) AS k(t, i)
         CROSS JOIN LATERAL (SELECT * FROM events e WHERE e.tenant_id = k.t AND e.event_id = k.i) e",
    )
    .bind(tenants)
    .bind(ids)
    .fetch_all(&mut *connection)
    .await?;
    let mut stored = HashMap::with_capacity(rows.len());
    for row in rows {
        let tenant: String = row.try_get(0)?;
        let stream: String = row.try_get(2)?;
        // Rows were written through the same validating constructors.
        let (Ok(tenant), Ok(stream)) = (TenantId::new(tenant), StreamId::new(stream)) else {
            continue;
        };
        stored.insert(
            (tenant, row.try_get::<Uuid, _>(1)?),
            StoredEvent {
                stream,
                stream_version: row.try_get::<i64, _>(3)? as u64,
                position: row.try_get::<i64, _>(4)? as u64,
                event_type: row.try_get(5)?,
                schema_version: row.try_get::<i32, _>(6)? as u32,
                payload: row.try_get(7)?,
            },
        );
    }
    Ok(stored)
}

/// Keeps this server's view of the head current: notifications from any
/// server's commits, and a periodic re-read in case one was lost.
pub(crate) async fn watch_head(pool: PgPool, head: Arc<watch::Sender<u64>>, every: Duration) {
    let mut listener = None;
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if listener.is_none() {
            listener = connect_listener(&pool).await;
        }
        tokio::select! {
            _ = tick.tick() => {
                match sqlx::query_scalar::<_, i64>(HEAD_SQL)
                    .fetch_one(&pool)
                    .await
                {
                    Ok(position) => advance(&head, position as u64),
                    Err(e) => tracing::warn!(error = %e, "cannot read the log head"),
                }
            }
            notification = recv(&mut listener) => match notification {
                Ok(position) => advance(&head, position),
                Err(e) => {
                    tracing::warn!(error = %e, "event notifications lost; polling until reconnected");
                    listener = None;
                }
            }
        }
    }
}

async fn connect_listener(pool: &PgPool) -> Option<PgListener> {
    let mut listener = PgListener::connect_with(pool).await.ok()?;
    listener.listen(NOTIFY_CHANNEL).await.ok()?;
    Some(listener)
}

async fn recv(listener: &mut Option<PgListener>) -> Result<u64, sqlx::Error> {
    match listener {
        Some(l) => loop {
            let n = l.recv().await?;
            if let Ok(position) = n.payload().parse() {
                return Ok(position);
            }
        },
        None => std::future::pending().await,
    }
}
