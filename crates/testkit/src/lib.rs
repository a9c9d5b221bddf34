//! Test support: a fresh, migrated database per test, on the throwaway
//! PostgreSQL cluster that the test harness (`scripts/test`) starts once
//! per run and names in `TEND_TEST_DATABASE_URL`.
//!
//! It is not a mock: every test talks to a real PostgreSQL server.

pub mod bench;
pub mod grpc;

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

pub const DATABASE_URL_VAR: &str = "TEND_TEST_DATABASE_URL";

/// A database of one's own, migrated to the current schema.
#[derive(Debug)]
pub struct TestDatabase {
    pub pool: PgPool,
    /// A URL for the database, for a `tend` server under test.
    pub url: String,
    pub name: String,
}

/// Creates a new database on the run's cluster and applies every migration.
pub async fn fresh_database() -> TestDatabase {
    fresh_database_migrated_to(i64::MAX).await
}

/// A new database with the migrations up to version `last` only: the schema
/// an earlier release left, for tests of an upgrade.
pub async fn fresh_database_migrated_to(last: i64) -> TestDatabase {
    let admin_url = std::env::var(DATABASE_URL_VAR).unwrap_or_else(|_| {
        panic!(
            "{DATABASE_URL_VAR} is not set: run the suite with `scripts/test`, which starts a \
             throwaway PostgreSQL cluster for the run"
        )
    });
    let admin = PgConnectOptions::from_str(&admin_url)
        .unwrap_or_else(|e| panic!("{DATABASE_URL_VAR} is not a PostgreSQL URL: {e}"));
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = admin
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test cluster at {DATABASE_URL_VAR}: {e}"));
    // The name is generated above from a UUID: a plain identifier.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create the test database");
    conn.close().await.ok();

    let options = admin.database(&name);
    let url = options.to_url_lossy().to_string();
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect_with(options)
        .await
        .expect("connect to the test database");
    let mut migrator = tend_event_store::migrator();
    migrator.migrations = migrator
        .migrations
        .iter()
        .filter(|m| m.version <= last)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    migrator.run(&pool).await.expect("apply migrations");
    TestDatabase { pool, url, name }
}

impl TestDatabase {
    /// Everything in the database, as `pg_dump` writes it: what a copy of
    /// the database would hold.
    pub fn dump(&self) -> String {
        let options: PgConnectOptions = self.url.parse().expect("a PostgreSQL URL");
        // The pg_dump beside the server binaries the tests run: the same
        // version.
        let pg_dump = tend_local_postgres::binaries_dir()
            .map(|d| d.join("pg_dump"))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| "pg_dump".into());
        let out = std::process::Command::new(pg_dump)
            .arg("--host")
            .arg(
                options
                    .get_socket()
                    .map_or(options.get_host().to_owned(), |s| s.display().to_string()),
            )
            .arg("--port")
            .arg(options.get_port().to_string())
            .arg("--username")
            .arg(options.get_username())
            .arg(&self.name)
            .output()
            .expect("pg_dump runs (PostgreSQL client binaries on PATH)");
        assert!(
            out.status.success(),
            "pg_dump failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("a dump in UTF-8")
    }
}
