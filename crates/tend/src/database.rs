//! Where the data lives: the configured PostgreSQL, or our own embedded
//! cluster; opened and closed the same way by every subcommand.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
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
                let connect: PgConnectOptions = url
                    .parse()
                    .map_err(|e| format!("TEND_DATABASE_URL is not a PostgreSQL URL: {e}"))?;
                let pool = pool_options
                    .connect_with(connect.application_name("tend"))
                    .await
                    .map_err(|e| format!("cannot connect to TEND_DATABASE_URL: {e}"))?;
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
