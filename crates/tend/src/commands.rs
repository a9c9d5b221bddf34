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
use crate::config::{DatabaseOptions, DemoOptions, ExportOptions, KeyOptions};
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

pub(crate) async fn export(options: ExportOptions) -> Result<()> {
    let recipients = crate::keys::recipients(&options.keys)?;
    let pseudonymizer = tend_export::pseudonymizer(
        &recipients,
        &options.tenant,
        &options.recipient,
        options.key_id.as_deref(),
    )?;
    let request = tend_export::Request {
        tenant: TenantId::new(&options.tenant)?.as_str().to_owned(),
        format: match options.format.as_str() {
            "parquet" => tend_export::Format::Parquet,
            _ => tend_export::Format::Csv,
        },
        at_position: options.at_position,
        since_position: options.since_position,
        shift_dates: options.shift_dates,
        include_retracted: options.include_retracted,
        sd: options
            .sd
            .iter()
            .map(|s| {
                s.split_once('=')
                    .and_then(|(i, v)| Some((i.to_owned(), v.trim().parse::<f64>().ok()?)))
                    .ok_or_else(|| format!("--sd {s:?}: expected INSTRUMENT=SD, e.g. scs-sf=0.6"))
            })
            .collect::<std::result::Result<_, _>>()?,
    };
    let database = Database::open(&options.database).await?;
    let started = std::time::Instant::now();
    // Stopped by a signal, the export is dropped, and with it the files it
    // had begun: nothing is left beside --out.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let exported = tokio::select! {
        r = tend_export::export(&database.pool, pseudonymizer, &request, &options.out) => r,
        _ = tokio::signal::ctrl_c() => Err(tend_export::Error::Cancelled),
        _ = terminate.recv() => Err(tend_export::Error::Cancelled),
    };
    database.close().await?;
    let report = exported?;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "exported {} participants ({} events) of tenant {} for recipient {} (key {}) at position {} (as of {}) into {} in {elapsed:.1} s",
        report.participants,
        report.events,
        options.tenant,
        options.recipient,
        report.pseudonym_key_id,
        report.position,
        report.as_of,
        options.out.display(),
    );
    for f in &report.files {
        println!(
            "  {:<28} {:>9} rows {:>12} bytes  sha256 {}",
            f.file, f.rows, f.bytes, f.sha256
        );
    }
    if let Some(r) = own_resources() {
        println!(
            "resources: {:.2} s CPU, peak memory {:.1} MiB",
            r.cpu_seconds,
            r.peak_rss_bytes as f64 / (1024.0 * 1024.0)
        );
    }
    Ok(())
}

/// CPU time and peak resident memory of this process so far, from /proc
/// (Linux); for `tend export`'s report.
struct Resources {
    cpu_seconds: f64,
    peak_rss_bytes: u64,
}

fn own_resources() -> Option<Resources> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime, fields 14 and 15, in USER_HZ (100 on Linux).
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Resources {
        cpu_seconds: ticks as f64 / 100.0,
        peak_rss_bytes: peak_kib * 1024,
    })
}
