//! Where the data lives: the configured PostgreSQL, or our own embedded
//! cluster; opened and closed the same way by every subcommand.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use tend_local_postgres::Cluster;

use crate::Result;
use crate::config::DatabaseOptions;

/// Where the data lives: a configured server, or our own cluster.
pub(crate) struct Database {
    pub pool: PgPool,
    pub embedded: Option<Cluster>,
}

impl Database {
    pub(crate) async fn open(options: &DatabaseOptions) -> Result<Self> {
        let pool_options = PgPoolOptions::new()
            .max_connections(options.db_max_connections.max(2))
            .acquire_timeout(Duration::from_secs(10));
        match &options.database_url {
            Some(url) => {
                let connect = parse_url(url)?.application_name("tend");
                // One connection first, briefly, so that a wrong setting is
                // named at once instead of as a pool timeout.
                diagnose(&connect).await?;
                let pool = pool_options
                    .connect_with(connect)
                    .await
                    .map_err(|e| format!("cannot connect to TEND_DATABASE_URL: {}", cause(&e)))?;
                Ok(Self {
                    pool,
                    embedded: None,
                })
            }
            None => {
                let dir = options.data_dir().join("postgres");
                tracing::info!(data_dir = %dir.display(), "no TEND_DATABASE_URL: starting the embedded PostgreSQL");
                let cluster = Cluster::start(tend_local_postgres::Options::new(&dir)).await?;
                let pool = match pool_options
                    .connect_with(cluster.connect_options().application_name("tend"))
                    .await
                {
                    Ok(pool) => pool,
                    Err(e) => {
                        cluster.stop()?;
                        return Err(
                            format!("cannot connect to the embedded PostgreSQL: {e}").into()
                        );
                    }
                };
                Ok(Self {
                    pool,
                    embedded: Some(cluster),
                })
            }
        }
    }

    pub(crate) async fn close(self) -> Result<()> {
        self.pool.close().await;
        if let Some(cluster) = self.embedded {
            cluster.stop()?;
        }
        Ok(())
    }
}

/// How long a first connection may take before start-up says so.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `TEND_DATABASE_URL`, parsed: checked with the other settings, before
/// any connection.
pub(crate) fn parse_url(url: &str) -> Result<PgConnectOptions> {
    url.parse::<PgConnectOptions>()
        .map_err(|e| format!("TEND_DATABASE_URL is not a PostgreSQL URL: {e}").into())
}

/// Opens and closes one connection, naming what went wrong.
async fn diagnose(connect: &PgConnectOptions) -> Result<()> {
    let target = format!(
        "{}:{} (database \"{}\")",
        connect.get_host(),
        connect.get_port(),
        connect.get_database().unwrap_or("postgres")
    );
    match tokio::time::timeout(CONNECT_TIMEOUT, connect.connect()).await {
        Err(_) => Err(format!(
            "cannot connect to TEND_DATABASE_URL {target}: no answer within {} s (a firewall, or the wrong host or port?)",
            CONNECT_TIMEOUT.as_secs()
        )
        .into()),
        Ok(Err(e)) => {
            Err(format!("cannot connect to TEND_DATABASE_URL {target}: {}", cause(&e)).into())
        }
        Ok(Ok(connection)) => {
            let _ = sqlx::Connection::close(connection).await;
            Ok(())
        }
    }
}

/// What a failed connection means, in the operator's words (never the
/// password).
pub(crate) fn cause(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused: nothing listens there (is PostgreSQL running, on this port?)"
                .to_owned()
        }
        // A Unix socket that is not there: nothing listens either.
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
            "connection refused: no socket there (is PostgreSQL running?)".to_owned()
        }
        sqlx::Error::Io(io) if is_lookup_failure(io) => {
            format!("unknown host: the name does not resolve ({io})")
        }
        sqlx::Error::Io(io) => format!("network error: {io}"),
        sqlx::Error::Tls(tls) => format!("TLS failed: {tls}"),
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("28P01" | "28000") => format!(
                "authentication failed: the server refused this user or password ({})",
                db.message()
            ),
            Some("3D000") => format!("database missing: {}", db.message()),
            Some("53300") => format!("too many connections: {}", db.message()),
            Some("57P03") => format!(
                "the server is starting up or shutting down: {}",
                db.message()
            ),
            _ => db.message().to_owned(),
        },
        sqlx::Error::PoolTimedOut => {
            "no connection became available in time (is the database reachable?)".to_owned()
        }
        e => e.to_string(),
    }
}

fn is_lookup_failure(io: &std::io::Error) -> bool {
    // tokio reports a failed name lookup as an uncategorised error whose
    // text comes from getaddrinfo.
    let text = io.to_string();
    text.contains("failed to lookup address")
        || text.contains("Name or service not known")
        || text.contains("nodename nor servname")
        || text.contains("Temporary failure in name resolution")
}
