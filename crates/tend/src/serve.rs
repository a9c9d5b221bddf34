//! Start-up, serving and an orderly shutdown.

use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tend_api::arc::v1::arc_service_server::ArcServiceServer;
use tend_api::assessment::v1::assessment_service_server::AssessmentServiceServer;
use tend_api::events::v1::event_stream_service_server::EventStreamServiceServer;
use tend_api::practice::v1::practice_log_service_server::PracticeLogServiceServer;
use tend_api::scheduler::v1::protocol_scheduler_service_server::ProtocolSchedulerServiceServer;
use tend_arc::{ArcApi, ArcProjection};
use tend_assessment::AssessmentApi;
use tend_auth::{Authenticator, TokenHash, Tokens};
use tend_event_store::{EventStore, TenantId};
use tend_event_stream::EventStreamApi;
use tend_local_postgres::Cluster;
use tend_practice_log::keys::{KeyRing, MasterKeys};
use tend_practice_log::{PracticeLogApi, PracticeOptions};
use tend_protocol_scheduler::{SchedulerApi, SystemClock, Worker, WorkerOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::config::{ArcOptions, DatabaseOptions, DemoOptions, KeyOptions, ServeOptions};
use crate::telemetry::Telemetry;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

/// The tenant of the development token issued with the embedded database.
const DEV_TENANT: &str = "dev";

/// Where the data lives: a configured server, or our own cluster.
struct Database {
    pool: PgPool,
    embedded: Option<Cluster>,
}

impl Database {
    async fn open(options: &DatabaseOptions) -> Result<Self> {
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

    async fn close(self) -> Result<()> {
        self.pool.close().await;
        if let Some(cluster) = self.embedded {
            cluster.stop()?;
        }
        Ok(())
    }
}

pub async fn migrate_only(options: DatabaseOptions) -> Result<()> {
    let database = Database::open(&options).await?;
    let applied = tend_event_store::migrate(&database.pool).await;
    database.close().await?;
    applied?;
    println!("migrations applied");
    Ok(())
}

pub fn new_token(tenant: &str) -> Result<()> {
    let tenant = TenantId::new(tenant)?;
    let token = tend_auth::generate_token()?;
    println!("token (give it to the partner; it is not stored anywhere): {token}");
    println!(
        "TEND_AUTH_TOKENS entry (keep it in the server's configuration): {tenant}={}",
        TokenHash::of(&token)
    );
    Ok(())
}

pub fn new_master_key(id: &str) -> Result<()> {
    let entry =
        MasterKeys::generate_entry(id).map_err(|e| format!("the random source failed: {e}"))?;
    // Validate the id the same way the server will.
    entry.parse::<MasterKeys>()?;
    println!("{entry}");
    Ok(())
}

pub async fn rotate_keys(keys: KeyOptions, options: DatabaseOptions) -> Result<()> {
    let database = Database::open(&options).await?;
    let rotated = async {
        let master = master_keys(&keys, &options, &database)?
            .ok_or("no master keys configured: set TEND_MASTER_KEYS")?;
        let ring = KeyRing::new(database.pool.clone(), Some(master));
        Ok::<_, Box<dyn Error + Send + Sync>>(ring.rotate().await?)
    }
    .await;
    database.close().await?;
    println!(
        "re-wrapped {} data keys with the current master key",
        rotated?
    );
    Ok(())
}

fn arc_rules(options: &ArcOptions) -> Result<tend_domain::arc::Rules> {
    let ratio = |name: &str, v: f64| {
        if v > 0.0 && v <= 1.0 {
            Ok(v)
        } else {
            Err(format!("{name} must be above 0 and at most 1"))
        }
    };
    let critic_ratio = ratio("TEND_ARC_CRITIC_RATIO", options.arc_critic_ratio)?;
    let critic_clear_ratio = ratio(
        "TEND_ARC_CRITIC_CLEAR_RATIO",
        options.arc_critic_clear_ratio,
    )?;
    if critic_clear_ratio < critic_ratio {
        return Err("TEND_ARC_CRITIC_CLEAR_RATIO must be at least TEND_ARC_CRITIC_RATIO".into());
    }
    if !(options.arc_rise_sd > 0.0 && options.arc_rise_sd.is_finite()) {
        return Err("TEND_ARC_RISE_SD must be a positive number".into());
    }
    Ok(tend_domain::arc::Rules {
        critic_ratio,
        critic_clear_ratio,
        missed_in_a_row: options.arc_missed_in_a_row,
        rise_sd: options.arc_rise_sd,
        ..Default::default()
    })
}

pub async fn rebuild_projection(
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
        let clock = std::sync::Arc::new(SystemClock);
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

pub async fn projection_status(options: DatabaseOptions) -> Result<()> {
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

pub async fn demo(options: DemoOptions) -> Result<()> {
    let tenant = TenantId::new(&options.tenant)?;
    if options.participants == 0 || options.participants > 100_000 {
        return Err("--participants must be 1 to 100000".into());
    }
    let database = Database::open(&options.database).await?;
    let generated = async {
        tend_event_store::migrate(&database.pool).await?;
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
                &tend_demo::Options {
                    tenant: tenant.clone(),
                    participants: options.participants,
                    seed: options.seed,
                    now: jiff::Timestamp::now(),
                    concurrency: 32,
                },
            )
            .await?;
            Ok::<_, Box<dyn Error + Send + Sync>>((report, started.elapsed()))
        }
        .await;
        store.shutdown().await;
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

/// The master keys: configured, or for the embedded database a key kept in
/// its data directory (a development convenience: a key beside the data it
/// protects protects nothing against a copy of the directory).
fn master_keys(
    keys: &KeyOptions,
    options: &DatabaseOptions,
    database: &Database,
) -> Result<Option<MasterKeys>> {
    let spec = match (&keys.master_keys, &keys.master_keys_file) {
        (Some(spec), _) => Some(spec.clone()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read TEND_MASTER_KEYS_FILE {}: {e}", path.display()))?
                .trim()
                .to_owned(),
        ),
        (None, None) if database.embedded.is_some() => {
            let path = options.data_dir().join("master-keys");
            if !path.exists() {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let entry = MasterKeys::generate_entry("dev")
                    .map_err(|e| format!("the random source failed: {e}"))?;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .and_then(|mut f| f.write_all(entry.as_bytes()))
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            }
            tracing::warn!(path = %path.display(), "no TEND_MASTER_KEYS: using a development master key kept beside the embedded database");
            Some(std::fs::read_to_string(&path)?.trim().to_owned())
        }
        (None, None) => None,
    };
    spec.map(|s| {
        s.parse::<MasterKeys>()
            .map_err(|e| format!("TEND_MASTER_KEYS: {e}").into())
    })
    .transpose()
}

pub async fn serve(options: ServeOptions, telemetry: &Telemetry) -> Result<()> {
    // Handlers go in first: a signal during start-up then stops the server
    // as soon as it serves, through the orderly path, embedded PostgreSQL
    // included.
    let stop_signal = stop_signal()?;
    // A lease shorter than two ticks would change hands between rounds.
    if options.scheduler_lease_seconds * 1000 <= 2 * options.scheduler_tick_ms {
        return Err(
            "TEND_SCHEDULER_LEASE_SECONDS must be more than twice TEND_SCHEDULER_TICK_MS".into(),
        );
    }
    let database = Database::open(&options.database).await?;
    let served = run(&options, &database, telemetry, stop_signal).await;
    let closed = database.close().await;
    served?;
    closed
}

async fn run(
    options: &ServeOptions,
    database: &Database,
    telemetry: &Telemetry,
    stop_signal: impl Future<Output = &'static str> + Send + 'static,
) -> Result<()> {
    if options.migrate {
        tend_event_store::migrate(&database.pool).await?;
    }
    let (tokens, dev_token) = tokens(options, database.embedded.is_some())?;
    let master = master_keys(&options.keys, &options.database, database)?;
    if master.is_none() {
        tracing::warn!("no TEND_MASTER_KEYS: practice entries with notes will be refused");
    }
    let rules = arc_rules(&options.arc)?;
    let store = EventStore::open(database.pool.clone(), Default::default()).await?;
    let shutdown = CancellationToken::new();

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<EventStreamServiceServer<EventStreamApi>>()
        .await;
    health
        .set_serving::<ProtocolSchedulerServiceServer<SchedulerApi>>()
        .await;
    health
        .set_serving::<PracticeLogServiceServer<PracticeLogApi>>()
        .await;
    health
        .set_serving::<AssessmentServiceServer<AssessmentApi>>()
        .await;
    health.set_serving::<ArcServiceServer<ArcApi>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tend_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let auth = Authenticator::new(tokens);
    let event_stream = EventStreamApi::new(store.clone(), shutdown.clone());
    let _observed = observe(
        database,
        options.database.db_max_connections,
        &store,
        &event_stream,
        telemetry,
        shutdown.clone(),
    );
    let metrics_stop = CancellationToken::new();
    let _stop_metrics = metrics_stop.clone().drop_guard();
    let metrics_endpoint = match &telemetry.prometheus {
        Some((spec, reader)) => {
            let addr = crate::telemetry::prometheus_addr(spec).await?;
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
            let addr = listener.local_addr()?;
            // Served until the very end, so that a draining server stays
            // observable.
            tokio::spawn(tend_telemetry::prometheus::serve(
                listener,
                reader.clone(),
                metrics_stop.clone(),
            ));
            tracing::info!(%addr, "serving Prometheus metrics at /metrics");
            Some(addr)
        }
        None => None,
    };
    let events = InterceptedService::new(event_stream.into_server(), auth.clone());
    let clock = std::sync::Arc::new(SystemClock);
    let scheduler = InterceptedService::new(
        SchedulerApi::new(store.clone(), clock.clone()).into_server(),
        auth.clone(),
    );
    let practice = InterceptedService::new(
        PracticeLogApi::new(
            store.clone(),
            KeyRing::new(database.pool.clone(), master),
            clock.clone(),
            PracticeOptions {
                limits: tend_domain::practice::Limits {
                    backdating: jiff::SignedDuration::from_hours(
                        24 * i64::from(options.practice_backdate_days),
                    ),
                },
            },
        )
        .into_server(),
        auth.clone(),
    );
    let assessment = InterceptedService::new(
        AssessmentApi::new(store.clone(), clock.clone()).into_server(),
        auth.clone(),
    );
    let arc = InterceptedService::new(
        ArcApi::new(database.pool.clone(), clock.clone()).into_server(),
        auth,
    );
    let projection = options.arc.arc_projection.then(|| {
        tokio::spawn(
            tend_projections::Runner::new(
                store.clone(),
                ArcProjection::new(store.clone(), clock.clone(), rules.clone(), true),
                tend_projections::RunnerOptions {
                    lease_ttl: Duration::from_secs(options.scheduler_lease_seconds),
                    ..Default::default()
                },
            )
            .run(shutdown.clone()),
        )
    });
    let worker = tokio::spawn(
        Worker::new(
            store.clone(),
            clock,
            WorkerOptions {
                tick_interval: Duration::from_millis(options.scheduler_tick_ms),
                lease_ttl: Duration::from_secs(options.scheduler_lease_seconds),
                miss_grace: jiff::SignedDuration::from_mins(i64::from(
                    options.scheduler_miss_grace_minutes,
                )),
                ..WorkerOptions::default()
            },
        )
        .run(shutdown.clone()),
    );

    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", options.listen))?;
    let addr = listener.local_addr()?;
    let methods = [
        tend_api::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]
    .into_iter()
    .flat_map(tend_api::method_names);
    let server = Server::builder()
        .layer(tend_telemetry::RpcLayer::new(
            tend_telemetry::tracing_enabled(),
            methods,
        ))
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(events)
        .add_service(scheduler)
        .add_service(practice)
        .add_service(assessment)
        .add_service(arc)
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.clone().cancelled_owned(),
        );
    tracing::info!(%addr, "serving gRPC");
    print_banner(addr, metrics_endpoint, database, dev_token.as_deref());

    let drain = Duration::from_secs(options.shutdown_drain_seconds);
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let signal = stop_signal.await;
            tracing::info!(
                signal,
                drain_seconds = drain.as_secs(),
                "shutting down: health says NOT_SERVING; then no new calls, and calls in flight finish"
            );
            // The whole server ("", what Kubernetes' gRPC probes ask
            // about) as well as each service.
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            health
                .set_not_serving::<EventStreamServiceServer<EventStreamApi>>()
                .await;
            health
                .set_not_serving::<ProtocolSchedulerServiceServer<SchedulerApi>>()
                .await;
            health
                .set_not_serving::<PracticeLogServiceServer<PracticeLogApi>>()
                .await;
            health
                .set_not_serving::<AssessmentServiceServer<AssessmentApi>>()
                .await;
            health.set_not_serving::<ArcServiceServer<ArcApi>>().await;
            tokio::time::sleep(drain).await;
            shutdown.cancel();
        }
    });

    let grace = Duration::from_secs(options.shutdown_grace_seconds);
    tokio::pin!(server);
    tokio::select! {
        served = &mut server => served?,
        _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(seconds = grace.as_secs(), "calls still in flight after the grace period; closing them");
        }
    }
    // The worker gives its lease up on the way out, so that another server
    // takes over at once.
    let _ = worker.await;
    if let Some(projection) = projection {
        let _ = projection.await;
    }
    store.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

fn tokens(options: &ServeOptions, embedded: bool) -> Result<(Tokens, Option<String>)> {
    match &options.auth_tokens {
        Some(spec) => {
            let tokens = Tokens::parse(spec)?;
            if tokens.is_empty() {
                return Err("TEND_AUTH_TOKENS holds no token entry".into());
            }
            Ok((tokens, None))
        }
        None if embedded => {
            // Development only: a fresh token each start, never written down.
            let token = tend_auth::generate_token()?;
            let mut tokens = Tokens::default();
            tokens.insert(TokenHash::of(&token), TenantId::new(DEV_TENANT)?)?;
            Ok((tokens, Some(token)))
        }
        None => Err(
            "TEND_AUTH_TOKENS is not set: with an external database Tend needs partner \
                     tokens (issue one with `tend token new --tenant <tenant>`)"
                .into(),
        ),
    }
}

fn print_banner(
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
    database: &Database,
    dev_token: Option<&str>,
) {
    println!("Tend is serving gRPC on {addr}");
    if let Some(metrics) = metrics {
        println!("  metrics: http://{metrics}/metrics");
    }
    if let Some(cluster) = &database.embedded {
        println!(
            "  database: embedded PostgreSQL in {} (psql \"{}\")",
            cluster.data_dir().display(),
            cluster.url()
        );
    }
    if let Some(token) = dev_token {
        println!("  development token for tenant \"{DEV_TENANT}\" (new at each start): {token}");
        println!("  try: grpcurl -plaintext {addr} list");
        println!(
            "       grpcurl -plaintext -H 'authorization: Bearer {token}' -d '{{}}' {addr} tend.events.v1.EventStreamService/Subscribe"
        );
    }
    // The empty line ends the banner (scripts and tests wait for it).
    println!();
}

/// The gauges read from state this server owns: the connection pool, the
/// open subscriptions against the head, and the projection's lag (polled
/// from the database, so every replica reports it, lease holder or not).
/// Kept alive by the caller for as long as it serves.
fn observe(
    database: &Database,
    max_connections: u32,
    store: &EventStore,
    event_stream: &EventStreamApi,
    telemetry: &Telemetry,
    shutdown: CancellationToken,
) -> Vec<Box<dyn std::any::Any + Send>> {
    use opentelemetry::KeyValue;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    if !telemetry.metrics_enabled() {
        return Vec::new();
    }
    let meter = opentelemetry::global::meter("tend");
    let pool = database.pool.clone();
    let connections = meter
        .i64_observable_up_down_counter("db.client.connection.count")
        .with_unit("{connection}")
        .with_description("Connections in the pool, by state")
        .with_callback(move |o| {
            let size = i64::from(pool.size());
            let idle = pool.num_idle() as i64;
            let name = KeyValue::new("db.client.connection.pool.name", "tend");
            o.observe(
                idle,
                &[
                    name.clone(),
                    KeyValue::new("db.client.connection.state", "idle"),
                ],
            );
            o.observe(
                (size - idle).max(0),
                &[name, KeyValue::new("db.client.connection.state", "used")],
            );
        })
        .build();
    let max = meter
        .i64_observable_up_down_counter("db.client.connection.max")
        .with_unit("{connection}")
        .with_description("The most connections the pool opens")
        .with_callback(move |o| {
            o.observe(
                i64::from(max_connections.max(2)),
                &[KeyValue::new("db.client.connection.pool.name", "tend")],
            );
        })
        .build();
    let open = event_stream.open_subscriptions();
    let head_store = store.clone();
    let subscription_lag = meter
        .u64_observable_gauge("tend.event_stream.subscription.lag")
        .with_unit("{event}")
        .with_description("Events between the head and the furthest-behind open subscription")
        .with_callback(move |o| {
            let head = head_store.head();
            let lag = open.oldest_position().map_or(0, |p| head.saturating_sub(p));
            o.observe(lag, &[]);
        })
        .build();
    let head_store = store.clone();
    let head = meter
        .u64_observable_gauge("tend.event_store.head")
        .with_unit("{position}")
        .with_description("The last committed position this server knows of")
        .with_callback(move |o| o.observe(head_store.head(), &[]))
        .build();

    let behind = Arc::new(AtomicU64::new(0));
    let seconds_behind = Arc::new(AtomicU64::new(0f64.to_bits()));
    let known = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn({
        let (behind, seconds_behind, known) =
            (behind.clone(), seconds_behind.clone(), known.clone());
        let pool = database.pool.clone();
        async move {
            loop {
                match tend_projections::status(&pool, tend_arc::NAME).await {
                    Ok(s) => {
                        behind.store(s.events_behind, Ordering::Relaxed);
                        seconds_behind.store(s.seconds_behind.to_bits(), Ordering::Relaxed);
                        known.store(true, Ordering::Relaxed);
                    }
                    Err(e) => {
                        // No figure rather than a stale one.
                        known.store(false, Ordering::Relaxed);
                        tracing::debug!(error = %e, "projection status unavailable");
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(PROJECTION_STATUS_EVERY) => {}
                }
            }
        }
    });
    let projection = [KeyValue::new("tend.projection", tend_arc::NAME)];
    let events_behind = meter
        .u64_observable_gauge("tend.projection.events_behind")
        .with_unit("{event}")
        .with_description("Events in the log the projection has not folded yet")
        .with_callback({
            let (behind, known, projection) = (behind.clone(), known.clone(), projection.clone());
            move |o| {
                if known.load(Ordering::Relaxed) {
                    o.observe(behind.load(Ordering::Relaxed), &projection);
                }
            }
        })
        .build();
    let lag = meter
        .f64_observable_gauge("tend.projection.lag")
        .with_unit("s")
        .with_description("Age of the oldest event the projection has not folded yet")
        .with_callback(move |o| {
            if known.load(Ordering::Relaxed) {
                o.observe(
                    f64::from_bits(seconds_behind.load(Ordering::Relaxed)),
                    &projection,
                );
            }
        })
        .build();
    vec![
        Box::new(connections),
        Box::new(max),
        Box::new(subscription_lag),
        Box::new(head),
        Box::new(events_behind),
        Box::new(lag),
    ]
}

/// How often the projection lag gauges are refreshed from the database.
const PROJECTION_STATUS_EVERY: Duration = Duration::from_secs(5);

/// Resolves with the name of the first SIGTERM or SIGINT.
fn stop_signal() -> Result<impl Future<Output = &'static str>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}
