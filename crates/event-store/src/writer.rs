//! The imperative shell around [`crate::plan`]: one task per server takes
//! queued appends, and writes as many as are waiting in one transaction
//! under the log's head-row lock (group commit). The lock is held until
//! commit, so positions become visible in order, across servers too.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::{PgPool, Postgres, Row, Transaction};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::error::sqlx_is_unavailable;
use crate::plan::{self, AppendRequest, Snapshot, StoredEvent};
use crate::{Appended, Error, StreamId, TenantId};

/// The channel that wakes other servers' subscribers after a commit.
pub(crate) const NOTIFY_CHANNEL: &str = "tend_events";

#[derive(Debug)]
pub(crate) struct Job {
    pub request: AppendRequest,
    pub reply: oneshot::Sender<Result<Appended, Error>>,
}

pub(crate) async fn run(
    pool: PgPool,
    mut queue: mpsc::Receiver<Job>,
    head: Arc<watch::Sender<u64>>,
    max_batch_events: usize,
) {
    while let Some(first) = queue.recv().await {
        let mut events = first.request.events.len();
        let mut batch = vec![first];
        while events < max_batch_events {
            match queue.try_recv() {
                Ok(job) => {
                    events += job.request.events.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        write(&pool, batch, &head).await;
    }
}

async fn write(pool: &PgPool, batch: Vec<Job>, head: &watch::Sender<u64>) {
    let (requests, replies): (Vec<_>, Vec<_>) =
        batch.into_iter().map(|j| (j.request, j.reply)).unzip();
    match transact(pool, &requests).await {
        Ok((outcomes, new_head)) => {
            advance(head, new_head);
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome);
            }
        }
        Err(e) if sqlx_is_unavailable(&e) => {
            tracing::warn!(appends = requests.len(), error = %e, "database unavailable; batch refused");
            let reason = e.to_string();
            for reply in replies {
                let _ = reply.send(Err(Error::Unavailable(reason.clone())));
            }
        }
        Err(e) if requests.len() == 1 => {
            let _ = replies
                .into_iter()
                .next()
                .map(|r| r.send(Err(Error::Database(e))));
        }
        Err(e) => {
            // Something in one append broke the whole transaction: write
            // each alone so that only the culprit fails.
            tracing::warn!(appends = requests.len(), error = %e, "batch failed; retrying appends one by one");
            for (request, reply) in requests.into_iter().zip(replies) {
                let requests = [request];
                let outcome = match transact(pool, &requests).await {
                    Ok((mut outcomes, new_head)) => {
                        advance(head, new_head);
                        outcomes.pop().unwrap_or(Err(Error::ShuttingDown))
                    }
                    Err(e) => Err(Error::Database(e)),
                };
                let _ = reply.send(outcome);
            }
        }
    }
}

fn advance(head: &watch::Sender<u64>, to: u64) {
    head.send_if_modified(|h| {
        let moved = to > *h;
        *h = (*h).max(to);
        moved
    });
}

type Outcomes = Vec<Result<Appended, Error>>;

/// One transaction for the whole batch. Returns each request's outcome and
/// the head after commit.
async fn transact(
    pool: &PgPool,
    requests: &[AppendRequest],
) -> Result<(Outcomes, u64), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let head: i64 =
        sqlx::query_scalar("SELECT position FROM event_log_head WHERE singleton FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
    let snapshot = Snapshot {
        head: head as u64,
        versions: stream_versions(&mut tx, requests).await?,
        stored: stored_events(&mut tx, requests).await?,
    };
    let plan = plan::plan(requests, snapshot);
    if plan.rows.is_empty() {
        tx.rollback().await?;
        return Ok((plan.outcomes, head as u64));
    }

    let n = plan.rows.len();
    let mut positions = Vec::with_capacity(n);
    let mut tenants = Vec::with_capacity(n);
    let mut streams = Vec::with_capacity(n);
    let mut categories = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut schemas = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    let mut metadata = Vec::with_capacity(n);
    for row in &plan.rows {
        let request = &requests[row.request];
        let event = &request.events[row.event];
        positions.push(row.position as i64);
        tenants.push(request.tenant.as_str());
        streams.push(request.stream.as_str());
        categories.push(request.stream.category());
        versions.push(row.stream_version as i64);
        ids.push(event.id);
        types.push(event.event_type.as_str());
        schemas.push(event.schema_version as i32);
        payloads.push(&event.payload);
        metadata.push(serde_json::to_value(&event.metadata).unwrap_or_default());
    }
    sqlx::query(
        "WITH inserted AS (
             INSERT INTO events (position, tenant_id, stream_id, category, stream_version,
                                 event_id, event_type, schema_version, payload, metadata, recorded_at)
             SELECT p, t, s, c, v, i, y, sv, d, m, now()
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                         $6::uuid[], $7::text[], $8::int[], $9::jsonb[], $10::jsonb[])
                  AS r(p, t, s, c, v, i, y, sv, d, m)
             RETURNING 1
         ), moved AS (
             UPDATE event_log_head SET position = $11 WHERE singleton RETURNING position
         )
         SELECT pg_notify($12, (SELECT position FROM moved)::text), (SELECT count(*) FROM inserted)",
    )
    .bind(positions)
    .bind(tenants)
    .bind(streams)
    .bind(categories)
    .bind(versions)
    .bind(ids)
    .bind(types)
    .bind(schemas)
    .bind(payloads)
    .bind(metadata)
    .bind(plan.head as i64)
    .bind(NOTIFY_CHANNEL)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((plan.outcomes, plan.head))
}

async fn stream_versions(
    tx: &mut Transaction<'_, Postgres>,
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
    .fetch_all(&mut **tx)
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
    tx: &mut Transaction<'_, Postgres>,
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
        "SELECT e.tenant_id, e.event_id, e.stream_id, e.stream_version, e.position,
                e.event_type, e.schema_version, e.payload
         FROM events e
         JOIN unnest($1::text[], $2::uuid[]) AS k(t, i) ON e.tenant_id = k.t AND e.event_id = k.i",
    )
    .bind(tenants)
    .bind(ids)
    .fetch_all(&mut **tx)
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
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if listener.is_none() {
            listener = connect_listener(&pool).await;
        }
        tokio::select! {
            _ = tick.tick() => {
                match sqlx::query_scalar::<_, i64>("SELECT position FROM event_log_head WHERE singleton")
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
