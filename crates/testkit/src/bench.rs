//! Benchmark support: a durable PostgreSQL of the bench's own (or the one
//! at `TEND_BENCH_DATABASE_URL`), a fresh database on it, and the shared
//! `pg-baseline` reference run against the same server in the same run.

use std::path::PathBuf;
use std::process::Command;
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tend_local_postgres::Cluster;

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A number from the environment, or `default`.
pub fn env_number<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The server a benchmark runs against.
#[derive(Debug)]
pub struct BenchServer {
    pub admin_url: String,
    cluster: Option<Cluster>,
    _dir: Option<tempfile::TempDir>,
}

impl BenchServer {
    /// `TEND_BENCH_DATABASE_URL`, or a new durable cluster (fsync on, like
    /// a production server) in a temporary folder.
    pub async fn start() -> Result<Self> {
        if let Ok(url) = std::env::var("TEND_BENCH_DATABASE_URL") {
            return Ok(Self {
                admin_url: url,
                cluster: None,
                _dir: None,
            });
        }
        let dir = tempfile::Builder::new().prefix("tend-bench").tempdir()?;
        // PostgreSQL runs as `postgres` when we are root: it must reach it.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let mut options = tend_local_postgres::Options::new(dir.path().join("pg"));
        options.database = "bench".into();
        let cluster = Cluster::start(options).await?;
        Ok(Self {
            admin_url: cluster.url(),
            cluster: Some(cluster),
            _dir: Some(dir),
        })
    }

    /// A new, migrated database of the bench's own, so that the baseline's
    /// table and ours never mix.
    pub async fn database(&self, max_connections: u32) -> Result<BenchDatabase> {
        let db = self.empty_database(max_connections).await?;
        tend_event_store::migrate(&db.pool).await?;
        Ok(db)
    }

    /// A new database with nothing in it, for a `tend` server under test
    /// to migrate itself (as deployed, whatever build it is).
    pub async fn empty_database(&self, max_connections: u32) -> Result<BenchDatabase> {
        let admin = PgConnectOptions::from_str(&self.admin_url)?;
        let name = format!("tend_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = admin.connect().await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(admin.database(&name))
            .await?;
        let (base, query) = match self.admin_url.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (self.admin_url.as_str(), String::new()),
        };
        let root = base.rsplit_once('/').map_or(base, |(r, _)| r);
        let url = format!("{root}/{name}{query}");
        Ok(BenchDatabase {
            pool,
            url,
            name,
            conn,
        })
    }

    pub fn stop(self) -> Result<()> {
        if let Some(c) = self.cluster {
            c.stop()?;
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct BenchDatabase {
    pub pool: PgPool,
    /// A URL for other processes (a `tend` server under test).
    pub url: String,
    name: String,
    conn: PgConnection,
}

impl BenchDatabase {
    pub async fn drop_database(mut self) -> Result<()> {
        self.pool.close().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE {}", self.name)))
            .execute(&mut self.conn)
            .await?;
        self.conn.close().await?;
        Ok(())
    }
}

/// What `pg-baseline` measured: events per second, one and ten per
/// transaction.
#[derive(Debug, Clone, Copy)]
pub struct Baseline {
    pub single: u64,
    pub batch10: u64,
}

/// Runs `../shared/bench/pg-baseline` (or `TEND_PG_BASELINE`) against `url`
/// with `clients` clients for `seconds` per figure.
pub fn pg_baseline(url: &str, clients: usize, seconds: u64) -> Result<Baseline> {
    let script = std::env::var_os("TEND_PG_BASELINE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/bench/pg-baseline")
        });
    if !script.exists() {
        return Err(format!(
            "the baseline script {} is missing (set TEND_PG_BASELINE)",
            script.display()
        )
        .into());
    }
    // The script's random stream ids collide now and then (a birthday
    // collision among ~100,000 inserts; more likely the longer it runs), and
    // pgbench then aborts with exit status 2. That says nothing about the
    // server: run it again.
    let mut attempt = 0;
    let output = loop {
        attempt += 1;
        eprintln!("running {} ({seconds} s per figure)…", script.display());
        let output = Command::new("bash")
            .arg(&script)
            .arg(url)
            .arg(clients.to_string())
            .arg(seconds.to_string())
            .output()?;
        if output.status.success() {
            break output;
        }
        if attempt == 5 {
            return Err(format!(
                "pg-baseline failed {attempt} times, last ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        eprintln!(
            "pg-baseline failed ({}): pgbench aborts on a collision of its random stream ids; retrying",
            output.status
        );
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value = |key: &str| -> Result<u64> {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("pg-baseline printed no {key}: {stdout}").into())
    };
    Ok(Baseline {
        single: value("baseline_single_events_per_s")?,
        batch10: value("baseline_batch10_events_per_s")?,
    })
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The `q`-quantile (0..=1) of sorted `values`.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Reads the whole log by position through the store, nothing folded (the
/// baseline any fold of the log pays): events read and seconds taken.
pub async fn read_by_position(
    store: &tend_event_store::EventStore,
    filter: &tend_event_store::Filter,
) -> Result<(u64, f64)> {
    let started = std::time::Instant::now();
    let (mut position, mut scanned) = (0u64, 0u64);
    loop {
        let page = store.read_log(filter, position, 10_000).await?;
        if page.scanned_through == position {
            break;
        }
        scanned += page.events.len() as u64;
        position = page.scanned_through;
    }
    Ok((scanned, started.elapsed().as_secs_f64()))
}
