//! Bulk exports as background jobs, kept in PostgreSQL so that they outlive
//! the server that took them.
//!
//! A kick-off stores the request with the log position it is as of. Every
//! server runs up to `workers` jobs at once: it claims one by taking a
//! session advisory lock on it, on a connection it keeps for the job, so
//! that when the server dies the lock goes with its connection and another
//! server (or the same one restarted) takes the job over from the start, at
//! the same position, with the same result. A job taken over too often is
//! failed with a reason, never left hanging. The files go into the database
//! too, so that any replica answers a download.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use tend_fhir::Kind;
use tend_fhir::bulk::{Export, Request, Scope};
use tend_privacy::Directory;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The advisory lock class of exports (the second key: the export's hash).
const LOCK_CLASS: i32 = 0x4648_4952; // "FHIR"
/// How many times a job may be taken over before it is failed.
const MAX_ATTEMPTS: i32 = 3;
/// How often expired files are looked for.
const EXPIRY_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// A file is cut at this size; a type may have several.
const FILE_BYTES: usize = 8 << 20;

#[derive(Debug, Clone)]
pub struct Settings {
    /// Jobs this server runs at once.
    pub workers: usize,
    /// Kick-offs a tenant may have queued or running at once.
    pub per_tenant: i64,
    /// How long a finished export's files are kept.
    pub retention: Duration,
    /// How often servers look for jobs queued elsewhere or left by a server
    /// that stopped.
    pub poll: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            workers: 1,
            per_tenant: 4,
            retention: Duration::from_secs(24 * 3600),
            poll: Duration::from_secs(2),
        }
    }
}

/// A job's row, as the status endpoint reads it.
#[derive(Debug, Clone)]
pub struct Job {
    pub export_id: Uuid,
    pub tenant: String,
    pub request: Value,
    pub position: u64,
    pub transaction_time: chrono::DateTime<chrono::Utc>,
    pub status: String,
    pub done: i32,
    pub total: i32,
    pub error: Option<String>,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// How many times a server began building it.
    pub attempts: i32,
}

#[derive(Debug, Clone)]
pub struct FileRow {
    pub file_no: i32,
    pub resource_type: String,
    pub part: String,
    pub count: i64,
}

/// What a kick-off asks for, as stored.
pub fn request_json(request: &Request, url: &str) -> Value {
    json!({
        "scope": match &request.scope {
            Scope::System => json!({"system": true}),
            Scope::Patient => json!({"patient": true}),
            Scope::Group(id) => json!({"group": id}),
        },
        "types": request.types.iter().map(|k| k.name()).collect::<Vec<_>>(),
        "since_position": request.since_position,
        "url": url,
    })
}

fn request_of(tenant: &str, position: u64, v: &Value) -> Option<Request> {
    let scope = &v["scope"];
    let scope = if let Some(g) = scope["group"].as_str() {
        Scope::Group(g.to_owned())
    } else if scope["patient"].as_bool() == Some(true) {
        Scope::Patient
    } else {
        Scope::System
    };
    let types = v["types"]
        .as_array()?
        .iter()
        .map(|t| t.as_str().and_then(Kind::parse))
        .collect::<Option<BTreeSet<Kind>>>()?;
    Some(Request {
        tenant: tenant.to_owned(),
        scope,
        types,
        at_position: position,
        since_position: v["since_position"].as_u64()?,
    })
}

#[derive(Clone)]
pub struct Jobs {
    pool: PgPool,
    directory: Directory,
    settings: Settings,
    wake: Arc<Notify>,
}

type JobRow = (
    Uuid,
    String,
    Value,
    i64,
    chrono::DateTime<chrono::Utc>,
    String,
    i32,
    i32,
    Option<String>,
    Option<chrono::DateTime<chrono::Utc>>,
    i32,
);

fn job(r: JobRow) -> Job {
    Job {
        export_id: r.0,
        tenant: r.1,
        request: r.2,
        position: r.3 as u64,
        transaction_time: r.4,
        status: r.5,
        done: r.6,
        total: r.7,
        error: r.8,
        expires_at: r.9,
        attempts: r.10,
    }
}

#[derive(Debug)]
pub enum Kickoff {
    Accepted(Uuid),
    /// The tenant has this many exports under way already.
    Busy(i64),
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Jobs {
    pub fn new(pool: PgPool, directory: Directory, settings: Settings) -> Self {
        Self {
            pool,
            directory,
            settings,
            wake: Arc::new(Notify::new()),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Stores a kick-off at the log's head; the transaction time is the
    /// database's clock, so that every replica gives the same answer to a
    /// later `_since` of it.
    pub async fn kick_off(&self, request: &Request, url: &str) -> Result<Kickoff, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // One kick-off at a time per tenant, so that the limit holds.
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(LOCK_CLASS + 1)
            .bind(&request.tenant)
            .execute(&mut *tx)
            .await?;
        let busy: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM fhir_exports
             WHERE tenant_id = $1 AND status IN ('queued', 'running')",
        )
        .bind(&request.tenant)
        .fetch_one(&mut *tx)
        .await?;
        if busy >= self.settings.per_tenant {
            return Ok(Kickoff::Busy(busy));
        }
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO fhir_exports (export_id, tenant_id, request, position, transaction_time, status)
             SELECT $1, $2, $3, coalesce(max(position), 0), clock_timestamp(), 'queued' FROM events",
        )
        .bind(id)
        .bind(&request.tenant)
        .bind(request_json(request, url))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.wake.notify_one();
        Ok(Kickoff::Accepted(id))
    }

    /// The tenant's job (another tenant's is not found).
    pub async fn get(&self, tenant: &str, id: Uuid) -> Result<Option<Job>, sqlx::Error> {
        let row: Option<JobRow> = sqlx::query_as(
            "SELECT export_id, tenant_id, request, position, transaction_time, status, done, total,
                    error, expires_at, attempts
             FROM fhir_exports WHERE export_id = $1 AND tenant_id = $2",
        )
        .bind(id)
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(job))
    }

    pub async fn files(&self, id: Uuid) -> Result<Vec<FileRow>, sqlx::Error> {
        let rows: Vec<(i32, String, String, i64)> = sqlx::query_as(
            "SELECT file_no, resource_type, part, count FROM fhir_export_files
             WHERE export_id = $1 ORDER BY file_no",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(file_no, resource_type, part, count)| FileRow {
                file_no,
                resource_type,
                part,
                count,
            })
            .collect())
    }

    /// A file of the tenant's complete export.
    pub async fn file(
        &self,
        tenant: &str,
        id: Uuid,
        file_no: i32,
    ) -> Result<Option<Vec<u8>>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT f.data FROM fhir_export_files f
             JOIN fhir_exports e USING (export_id)
             WHERE f.export_id = $1 AND f.file_no = $2 AND e.tenant_id = $3
               AND e.status = 'complete'",
        )
        .bind(id)
        .bind(file_no)
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await
    }

    /// Deletes the tenant's export: its files go, a running job stops at
    /// its next chunk. Whether there was one to delete.
    pub async fn delete(&self, tenant: &str, id: Uuid) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query(
            "UPDATE fhir_exports SET status = 'deleted', finished_at = now()
             WHERE export_id = $1 AND tenant_id = $2 AND status NOT IN ('deleted', 'expired')",
        )
        .bind(id)
        .bind(tenant)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        sqlx::query("DELETE FROM fhir_export_files WHERE export_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(deleted)
    }

    /// The position an export `_since` this instant starts after: exactly
    /// the position of an export whose transaction time it is, or else the
    /// position before the first event recorded after it.
    pub async fn since_position(
        &self,
        tenant: &str,
        instant: jiff::Timestamp,
    ) -> Result<u64, tend_fhir::Error> {
        let at = tend_service_kit::instants::to_chrono(instant);
        let issued: Option<i64> = sqlx::query_scalar(
            "SELECT min(position) FROM fhir_exports WHERE tenant_id = $1 AND transaction_time = $2",
        )
        .bind(tenant)
        .bind(at)
        .fetch_one(&self.pool)
        .await
        .map_err(tend_export::Error::from)?;
        if let Some(p) = issued {
            return Ok(p as u64);
        }
        let mut snapshot = tend_export::read::Snapshot::open(&self.pool, tenant, 0).await?;
        let p = snapshot.position_before(instant).await?;
        snapshot.close().await?;
        Ok(p)
    }

    /// Runs jobs until `shutdown`: up to `workers` at once, woken by a
    /// kick-off here or every `poll` for the rest.
    pub async fn run(self, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.settings.workers.max(1)));
        let mut tick = tokio::time::interval(self.settings.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Expiry is by the hour: a look a minute is plenty, and keeps an
        // idle server's rounds to the claim alone.
        let mut expired_at: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                _ = self.wake.notified() => {}
            }
            if expired_at.is_none_or(|at| at.elapsed() >= EXPIRY_EVERY) {
                expired_at = Some(std::time::Instant::now());
                if let Err(e) = self.expire().await {
                    tracing::debug!(error = %e, "expiring FHIR exports failed");
                }
            }
            // Claim while there are free slots and jobs to claim.
            loop {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    break;
                };
                match self.claim().await {
                    Ok(Some((connection, job))) => {
                        let jobs = self.clone();
                        let shutdown = shutdown.clone();
                        tokio::spawn(async move {
                            let _slot = slot;
                            jobs.run_one(connection, job, shutdown).await;
                        });
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "claiming a FHIR export failed");
                        break;
                    }
                }
            }
        }
    }

    /// Removes the files of exports past their expiry.
    async fn expire(&self) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE fhir_exports SET status = 'expired'
             WHERE status = 'complete' AND expires_at < now() RETURNING export_id",
        )
        .fetch_all(&mut *tx)
        .await?;
        if !ids.is_empty() {
            sqlx::query("DELETE FROM fhir_export_files WHERE export_id = ANY($1)")
                .bind(&ids)
                .execute(&mut *tx)
                .await?;
        }
        // Belt and braces: no file outlives an export that is not complete
        // or being built.
        sqlx::query(
            "DELETE FROM fhir_export_files f USING fhir_exports e
             WHERE f.export_id = e.export_id AND e.status IN ('failed', 'deleted', 'expired')",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    /// A queued job, or a running one whose server is gone (its lock free).
    async fn claim(&self) -> Result<Option<(PoolConnection<Postgres>, Job)>, sqlx::Error> {
        let mut connection = self.pool.acquire().await?;
        let candidates: Vec<Uuid> = sqlx::query_scalar(
            "SELECT export_id FROM fhir_exports WHERE status IN ('queued', 'running')
             ORDER BY status = 'running', created_at LIMIT 32",
        )
        .fetch_all(&mut *connection)
        .await?;
        for id in candidates {
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
                .bind(LOCK_CLASS)
                .bind(id.to_string())
                .fetch_one(&mut *connection)
                .await?;
            if !locked {
                continue;
            }
            // Under the lock: the row as it is now (it may have finished
            // between the list and the lock).
            let row: Result<Option<JobRow>, sqlx::Error> = sqlx::query_as(
                "UPDATE fhir_exports SET status = 'running', attempts = attempts + 1, done = 0
                 WHERE export_id = $1 AND status IN ('queued', 'running')
                 RETURNING export_id, tenant_id, request, position, transaction_time, status,
                           done, total, error, expires_at, attempts",
            )
            .bind(id)
            .fetch_optional(&mut *connection)
            .await;
            // A connection that may still hold the lock never goes back to
            // the pool: closed, its session (and lock) ends.
            match row {
                Ok(Some(row)) => return Ok(Some((connection, job(row)))),
                Ok(None) => {
                    if let Err(e) = unlock(&mut connection, id).await {
                        let _ = connection.close().await;
                        return Err(e);
                    }
                }
                Err(e) => {
                    let _ = connection.close().await;
                    return Err(e);
                }
            }
        }
        Ok(None)
    }

    async fn run_one(
        &self,
        mut connection: PoolConnection<Postgres>,
        job: Job,
        shutdown: CancellationToken,
    ) {
        let id = job.export_id;
        let started = std::time::Instant::now();
        let outcome = if job.attempts > MAX_ATTEMPTS {
            Err(format!(
                "the export was started {MAX_ATTEMPTS} times and did not finish (its server stopped each time); kick it off again"
            ))
        } else {
            tokio::select! {
                r = self.build(&mut connection, &job) => r,
                _ = shutdown.cancelled() => {
                    // Left running and unlocked: another server, or this one
                    // restarted, takes it over. A clean stop is not a failed
                    // attempt.
                    let given_back = sqlx::query(
                        "UPDATE fhir_exports SET attempts = greatest(attempts - 1, 0)
                         WHERE export_id = $1 AND status = 'running'",
                    )
                    .bind(id)
                    .execute(&mut *connection)
                    .await;
                    if given_back.is_err() || unlock(&mut connection, id).await.is_err() {
                        let _ = connection.close().await;
                    }
                    return;
                }
            }
        };
        // Only a build that finished while its export was still wanted is
        // complete; every other end removes whatever files it wrote.
        let finished = self.finish(&mut connection, id, &outcome).await;
        let ended = match (&outcome, &finished) {
            (_, Err(_)) => None,
            (Ok(Some(_)), Ok(true)) => Some("ok"),
            (Ok(_), Ok(_)) => Some("deleted"),
            (Err(_), Ok(_)) => Some("error"),
        };
        let instruments = tend_telemetry::instruments();
        if let Some(ended) = ended {
            instruments
                .fhir_exports
                .add(1, &[opentelemetry::KeyValue::new("tend.outcome", ended)]);
        }
        if let (Ok(Some(resources)), Some("ok")) = (&outcome, ended) {
            instruments
                .fhir_export_duration
                .record(started.elapsed().as_secs_f64(), &[]);
            instruments.fhir_export_resources.add(*resources, &[]);
        }
        if let Err(e) = finished {
            // Still locked on a connection that may be broken: closing it
            // frees the lock, and the job is taken over.
            tracing::warn!(export = %id, error = %e, "recording a FHIR export's end failed");
            let _ = connection.close().await;
            return;
        }
        if unlock(&mut connection, id).await.is_err() {
            let _ = connection.close().await;
        }
    }

    /// Records how a build ended, in one transaction on the locked
    /// connection: complete (whether it was), or failed or deleted with its
    /// files removed.
    async fn finish(
        &self,
        connection: &mut PoolConnection<Postgres>,
        id: Uuid,
        outcome: &Result<Option<u64>, String>,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = sqlx::Connection::begin(&mut **connection).await?;
        let complete = match outcome {
            Ok(Some(_)) => {
                sqlx::query(
                    "UPDATE fhir_exports SET status = 'complete', finished_at = now(),
                            expires_at = now() + make_interval(secs => $2)
                     WHERE export_id = $1 AND status = 'running'",
                )
                .bind(id)
                .bind(self.settings.retention.as_secs_f64())
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    > 0
            }
            Ok(None) => false,
            Err(reason) => {
                tracing::warn!(export = %id, %reason, "a FHIR export failed");
                sqlx::query(
                    "UPDATE fhir_exports SET status = 'failed', error = $2, finished_at = now()
                     WHERE export_id = $1 AND status = 'running'",
                )
                .bind(id)
                .bind(reason)
                .execute(&mut *tx)
                .await?;
                false
            }
        };
        if !complete {
            sqlx::query("DELETE FROM fhir_export_files WHERE export_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(complete)
    }

    /// Builds the export's files: how many resources it wrote, or `None`
    /// when it was deleted meanwhile.
    async fn build(
        &self,
        connection: &mut PoolConnection<Postgres>,
        job: &Job,
    ) -> Result<Option<u64>, String> {
        let id = job.export_id;
        let request = request_of(&job.tenant, job.position, &job.request)
            .ok_or("the stored request cannot be read by this version")?;
        let failed = |e: &dyn std::fmt::Display| e.to_string();
        // A restart begins again: whatever an earlier attempt wrote goes.
        sqlx::query("DELETE FROM fhir_export_files WHERE export_id = $1")
            .bind(id)
            .execute(&mut **connection)
            .await
            .map_err(|e| failed(&e))?;
        if job.position == 0 {
            // The log was empty at kick-off: so is the export (a snapshot
            // at position 0 would be taken at the head).
            return Ok(Some(0));
        }
        let export = Export::open(&self.pool, request)
            .await
            .map_err(|e| failed(&e))?;
        // The export is read and folded on a task of its own, a chunk ahead
        // of the files being stored here.
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let producer = AbortOnDrop(tokio::spawn(produce(export, self.directory.clone(), tx)));
        let mut files = Files::default();
        let mut gone: Vec<(Kind, String)> = Vec::new();
        let mut resources = 0;
        let mut whole = false;
        while let Some(item) = rx.recv().await {
            let (batch, progress) = item.map_err(|e| failed(&e))?;
            whole |= progress.is_none();
            resources += batch.counts.values().sum::<u64>();
            for (kind, lines) in batch.lines {
                files.append(kind, &lines, batch.counts.get(&kind).copied().unwrap_or(0));
            }
            gone.extend(batch.gone);
            for (kind, data, count) in files.full() {
                if !files
                    .store(connection, id, kind.name(), "output", count, &data)
                    .await
                    .map_err(|e| failed(&e))?
                {
                    return Ok(None);
                }
            }
            let Some((done, total)) = progress else {
                continue;
            };
            let still: Option<i32> = sqlx::query_scalar(
                "UPDATE fhir_exports SET done = $2, total = $3
                 WHERE export_id = $1 AND status = 'running' RETURNING 1",
            )
            .bind(id)
            .bind(done as i32)
            .bind(total as i32)
            .fetch_optional(&mut **connection)
            .await
            .map_err(|e| failed(&e))?;
            if still.is_none() {
                return Ok(None);
            }
        }
        drop(producer);
        if !whole {
            return Err("the export's reader stopped before the end".to_owned());
        }
        for (kind, data, count) in files.rest() {
            if !files
                .store(connection, id, kind.name(), "output", count, &data)
                .await
                .map_err(|e| failed(&e))?
            {
                return Ok(None);
            }
        }
        // What readers of the export `_since` must remove: one Bundle of
        // deletions per line, as Bulk Data's `deleted` asks.
        if !gone.is_empty() {
            let mut data = Vec::new();
            for (kind, rid) in &gone {
                let bundle = json!({
                    "resourceType": "Bundle",
                    "type": "transaction",
                    "entry": [{"request": {"method": "DELETE", "url": format!("{}/{rid}", kind.name())}}],
                });
                serde_json::to_writer(&mut data, &bundle).map_err(|e| failed(&e))?;
                data.push(b'\n');
            }
            files
                .store(
                    connection,
                    id,
                    "Bundle",
                    "deleted",
                    gone.len() as i64,
                    &data,
                )
                .await
                .map_err(|e| failed(&e))?;
        }
        Ok(Some(resources))
    }
}

/// A chunk's output with the progress after it (`None`: the definitions,
/// last).
type Produced = Result<(tend_fhir::bulk::Batch, Option<(usize, usize)>), tend_fhir::Error>;

/// Reads and folds the export, chunk by chunk, then its definitions; stops
/// when the receiver goes.
async fn produce(
    mut export: Export,
    directory: Directory,
    tx: tokio::sync::mpsc::Sender<Produced>,
) {
    loop {
        match export.next(&directory).await {
            Ok(Some(batch)) => {
                if tx.send(Ok((batch, Some(export.progress())))).await.is_err() {
                    return;
                }
            }
            Ok(None) => break,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
    let _ = tx.send(export.finish().await.map(|b| (b, None))).await;
}

/// Aborts its task when dropped (the job stopped, or its future went).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn unlock(connection: &mut PoolConnection<Postgres>, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_unlock($1, hashtext($2))")
        .bind(LOCK_CLASS)
        .bind(id.to_string())
        .execute(&mut **connection)
        .await
        .map(|_| ())
}

/// NDJSON by type, cut into files of about [`FILE_BYTES`].
#[derive(Default)]
struct Files {
    open: BTreeMap<Kind, (Vec<u8>, i64)>,
    next_no: i32,
}

impl Files {
    fn append(&mut self, kind: Kind, lines: &[u8], count: u64) {
        let (data, n) = self.open.entry(kind).or_default();
        data.extend_from_slice(lines);
        *n += count as i64;
    }

    /// The files that reached their size.
    fn full(&mut self) -> Vec<(Kind, Vec<u8>, i64)> {
        let full: Vec<Kind> = self
            .open
            .iter()
            .filter(|(_, (d, _))| d.len() >= FILE_BYTES)
            .map(|(k, _)| *k)
            .collect();
        full.into_iter()
            .filter_map(|k| self.open.remove(&k).map(|(d, n)| (k, d, n)))
            .collect()
    }

    fn rest(&mut self) -> Vec<(Kind, Vec<u8>, i64)> {
        std::mem::take(&mut self.open)
            .into_iter()
            .filter(|(_, (d, _))| !d.is_empty())
            .map(|(k, (d, n))| (k, d, n))
            .collect()
    }

    async fn store(
        &mut self,
        connection: &mut PoolConnection<Postgres>,
        id: Uuid,
        resource_type: &str,
        part: &str,
        count: i64,
        data: &[u8],
    ) -> Result<bool, sqlx::Error> {
        self.next_no += 1;
        // Only while the export is still wanted: a file stored after a
        // delete would outlive it.
        let stored = sqlx::query(
            "INSERT INTO fhir_export_files (export_id, file_no, resource_type, part, count, data)
             SELECT $1, $2, $3, $4, $5, $6
             WHERE EXISTS (SELECT 1 FROM fhir_exports WHERE export_id = $1 AND status = 'running')",
        )
        .bind(id)
        .bind(self.next_no)
        .bind(resource_type)
        .bind(part)
        .bind(count)
        .bind(data)
        .execute(&mut **connection)
        .await?
        .rows_affected()
            > 0;
        Ok(stored)
    }
}
