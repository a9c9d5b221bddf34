//! The subcommands other than `tend serve`: each does one job against the
//! database (or none) and exits.

use std::error::Error;
use std::sync::Arc;

use tend_arc::ArcProjection;
use tend_auth::TokenHash;
use tend_event_store::{EventStore, TenantId};
use tend_privacy::{Directory, MasterKeys, Recipients};
use tend_service_kit::SystemClock;

use crate::Result;
use crate::config::{DatabaseOptions, DemoOptions, KeyOptions};
use crate::database::Database;

pub(crate) async fn migrate_only(options: DatabaseOptions) -> Result<()> {
    let database = Database::open(&options).await?;
    let applied = tend_event_store::migrate(&database.pool).await;
    database.close().await?;
    applied?;
    println!("migrations applied");
    Ok(())
}

pub(crate) fn new_token(tenant: &str) -> Result<()> {
    let tenant = TenantId::new(tenant)?;
    let token = tend_auth::generate_token()?;
    println!("token (give it to the partner; it is not stored anywhere): {token}");
    println!(
        "TEND_AUTH_TOKENS entry (keep it in the server's configuration): {tenant}={}",
        TokenHash::of(&token)
    );
    Ok(())
}

pub(crate) fn new_master_key(id: &str) -> Result<()> {
    let entry =
        MasterKeys::generate_entry(id).map_err(|e| format!("the random source failed: {e}"))?;
    // Validate the id the same way the server will.
    entry.parse::<MasterKeys>()?;
    println!("{entry}");
    Ok(())
}

pub(crate) fn new_recipient_key(tenant: &str, recipient: &str, id: &str) -> Result<()> {
    let entry = Recipients::generate_entry(tenant, recipient, id)?;
    // Validate the entry the same way the server will.
    entry.parse::<Recipients>()?;
    println!("{entry}");
    Ok(())
}

pub(crate) async fn rotate_keys(keys: KeyOptions, options: DatabaseOptions) -> Result<()> {
    let database = Database::open(&options).await?;
    let rotated = async {
        let configured = crate::keys::configured(&keys)?;
        let master = crate::keys::or_development(configured, &options, &database)?
            .ok_or("no master keys configured: set TEND_MASTER_KEYS")?;
        tend_event_store::migrate(&database.pool).await?;
        let directory = Directory::open(database.pool.clone(), master).await?;
        Ok::<_, Box<dyn Error + Send + Sync>>(directory.rotate().await?)
    }
    .await;
    database.close().await?;
    let rotated = rotated?;
    println!(
        "re-wrapped {} data keys and re-hashed {} reference lookups with the current master key",
        rotated.keys, rotated.lookups
    );
    Ok(())
}

pub(crate) async fn rebuild_projection(
    name: &str,
    flush_every: usize,
    duty: f64,
    options: DatabaseOptions,
) -> Result<()> {
    if name != tend_arc::NAME {
        return Err(format!("unknown projection {name:?}: the projections are: arc").into());
    }
    if !(0.05..=1.0).contains(&duty) {
        return Err("--duty must be from 0.05 to 1".into());
    }
    let database = Database::open(&options).await?;
    let rebuilt = async {
        tend_event_store::migrate(&database.pool).await?;
        let store = EventStore::open(database.pool.clone(), Default::default()).await?;
        let clock = Arc::new(SystemClock);
        let report = tend_projections::rebuild(
            &store,
            ArcProjection::new(store.clone(), clock, Default::default(), false),
            tend_projections::RebuildOptions {
                flush_every: flush_every.max(1),
                duty,
                ..Default::default()
            },
        )
        .await;
        store.shutdown().await;
        Ok::<_, Box<dyn Error + Send + Sync>>(report?)
    }
    .await;
    database.close().await?;
    let r = rebuilt?;
    println!(
        "rebuilt projection {name}: generation {} -> {}, {} events in {:.1} s ({:.0} events/s){}, at position {}",
        r.from_generation,
        r.to_generation,
        r.events,
        r.elapsed.as_secs_f64(),
        r.events_per_second(),
        if r.resumed { ", resumed" } else { "" },
        r.position
    );
    Ok(())
}

pub(crate) async fn projection_status(options: DatabaseOptions) -> Result<()> {
    let database = Database::open(&options).await?;
    let status = tend_projections::status(&database.pool, tend_arc::NAME).await;
    database.close().await?;
    let s = status?;
    println!(
        "{}: generation {}, position {} of {} ({} behind, {:.1} s){}",
        s.name,
        s.active_generation,
        s.position,
        s.head,
        s.events_behind,
        s.seconds_behind,
        s.rebuilding
            .map(|(g, p)| format!("; rebuilding generation {g} at {p}"))
            .unwrap_or_default()
    );
    Ok(())
}

pub(crate) async fn demo(options: DemoOptions) -> Result<()> {
    let tenant = TenantId::new(&options.tenant)?;
    if options.participants == 0 || options.participants > 100_000 {
        return Err("--participants must be 1 to 100000".into());
    }
    let clock = crate::options::clock(options.clock.start()?);
    let database = Database::open(&options.database).await?;
    let generated = async {
        tend_event_store::migrate(&database.pool).await?;
        let master = crate::keys::or_development(
            crate::keys::configured(&options.keys)?,
            &options.database,
            &database,
        )?
        .ok_or("no master keys configured: set TEND_MASTER_KEYS")?;
        let directory = Directory::open(database.pool.clone(), master).await?;
        let store = EventStore::open(database.pool.clone(), Default::default()).await?;
        let result = async {
            if tend_demo::tenant_has_participants(&store, &tenant).await? {
                return Err(format!(
                    "tenant {tenant} already holds participants, and the demo fills an empty tenant only. \
                     Give another --data-dir (a fresh embedded database), or another --tenant \
                     and serve with a token for it (`tend token new --tenant <name>`, then TEND_AUTH_TOKENS)"
                )
                .into());
            }
            let started = std::time::Instant::now();
            let report = tend_demo::generate(
                &store,
                &directory,
                &tend_demo::Options {
                    tenant: tenant.clone(),
                    participants: options.participants,
                    seed: options.seed,
                    now: clock.now(),
                    concurrency: 32,
                },
            )
            .await?;
            Ok::<_, Box<dyn Error + Send + Sync>>((report, started.elapsed()))
        }
        .await;
        store.shutdown().await;
        directory.close().await;
        result
    }
    .await;
    database.close().await?;
    let (report, elapsed) = generated?;
    println!(
        "tenant {tenant}: {} participants, {} events in {:.1} s",
        report.participants,
        report.events,
        elapsed.as_secs_f64()
    );
    println!(
        "next: `tend serve`, then ArcService.GetCohort {{\"protocol_id\": \"integration-arc-8w\"}} (docs/arc-example.py shows one)"
    );
    Ok(())
}
