//! The demo log a benchmark runs on: a synthetic cohort from `tend-demo`
//! in one tenant of a database of the benchmark's own cluster, vacuumed
//! and analysed, and the master key its references are sealed with.

use std::time::Instant;

use tend_event_store::{EventStore, TenantId};
use tend_testkit::bench::{BenchDatabase, Result};

pub(crate) struct DemoLog {
    /// The store it was written through, still open.
    pub store: EventStore,
    /// The master key entry (`TEND_MASTER_KEYS`) of its directory, for a
    /// server started on it (not every benchmark starts one).
    #[allow(dead_code)]
    pub master: String,
    pub report: tend_demo::Report,
}

pub(crate) async fn generate(
    db: &BenchDatabase,
    tenant: &TenantId,
    participants: usize,
) -> Result<DemoLog> {
    let store = EventStore::open(db.pool.clone(), Default::default()).await?;
    let master = tend_privacy::MasterKeys::generate_entry("bench").map_err(|e| e.to_string())?;
    let directory = tend_privacy::Directory::open(db.pool.clone(), master.parse()?).await?;
    let started = Instant::now();
    let report = tend_demo::generate(
        &store,
        &directory,
        &tend_demo::Options {
            tenant: tenant.clone(),
            participants,
            seed: 1,
            now: jiff::Timestamp::now(),
            concurrency: 32,
        },
    )
    .await?;
    eprintln!(
        "generated {} events, {} participants in {:.0} s",
        report.events,
        report.participants,
        started.elapsed().as_secs_f64()
    );
    directory.close().await;
    sqlx::query("VACUUM ANALYZE").execute(&db.pool).await?;
    Ok(DemoLog {
        store,
        master,
        report,
    })
}
