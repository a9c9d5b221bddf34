//! `tend serve`: start-up, the wiring of the services and background
//! workers, serving, and an orderly shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tend_api::arc::v1::arc_service_server::ArcServiceServer;
use tend_api::assessment::v1::assessment_service_server::AssessmentServiceServer;
use tend_api::events::v1::event_stream_service_server::EventStreamServiceServer;
use tend_api::exports::v1::export_service_server::ExportServiceServer;
use tend_api::practice::v1::practice_log_service_server::PracticeLogServiceServer;
use tend_api::privacy::v1::privacy_service_server::PrivacyServiceServer;
use tend_api::scheduler::v1::protocol_scheduler_service_server::ProtocolSchedulerServiceServer;
use tend_api::webhooks::v1::webhook_service_server::WebhookServiceServer;
use tend_arc::{ArcApi, ArcProjection};
use tend_assessment::AssessmentApi;
use tend_auth::Authenticator;
use tend_event_store::EventStore;
use tend_event_stream::EventStreamApi;
use tend_export_service::ExportApi;
use tend_practice_log::PracticeLogApi;
use tend_privacy::Directory;
use tend_privacy_service::PrivacyApi;
use tend_protocol_scheduler::{SchedulerApi, Worker};
use tend_webhooks::{Deliverer, WebhookApi};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::Result;
use crate::background::Background;
use crate::database::Database;
use crate::options::{self, DEV_TENANT};
use crate::telemetry::Telemetry;
use crate::{gauges, keys, readiness, tls, web};

/// What health reports on: the whole server ("", what Kubernetes' gRPC
/// probes ask about; serving from the start) as well as each service.
const HEALTH: [&str; 9] = [
    "",
    <EventStreamServiceServer<EventStreamApi> as NamedService>::NAME,
    <ProtocolSchedulerServiceServer<SchedulerApi> as NamedService>::NAME,
    <PracticeLogServiceServer<PracticeLogApi> as NamedService>::NAME,
    <AssessmentServiceServer<AssessmentApi> as NamedService>::NAME,
    <ArcServiceServer<ArcApi> as NamedService>::NAME,
    <PrivacyServiceServer<PrivacyApi> as NamedService>::NAME,
    <WebhookServiceServer<WebhookApi> as NamedService>::NAME,
    <ExportServiceServer<ExportApi> as NamedService>::NAME,
];

pub(crate) async fn serve(options: options::Serve, telemetry: &Telemetry) -> Result<()> {
    // Handlers go in first: a signal during start-up stops the server
    // promptly (a database that does not answer included); after it, through
    // the orderly path, embedded PostgreSQL included.
    let stop = Stop::install()?;
    let database = tokio::select! {
        database = Database::open(&options.database) => database?,
        signal = stop.signalled() => {
            tracing::info!(signal, "stopped during start-up, before the database was open");
            return Ok(());
        }
    };
    let served = run(options, &database, telemetry, stop).await;
    let closed = database.close().await;
    served?;
    closed
}

async fn run(
    options: options::Serve,
    database: &Database,
    telemetry: &Telemetry,
    stop: Stop,
) -> Result<()> {
    let clock = options::clock(options.test_clock);
    let master = keys::or_development(options.master_keys, &options.database, database)?
        .ok_or(options::MASTER_KEYS_REQUIRED)?;
    let ready = async {
        if options.migrate {
            tend_event_store::migrate(&database.pool).await?;
        }
        let directory = Directory::open(database.pool.clone(), master.clone()).await?;
        // Participants an earlier release wrote with their reference in the
        // log: adopted into the directory and the reference removed, before
        // anything is served.
        let upgraded = directory.upgrade_legacy().await?;
        if upgraded.adopted + upgraded.forgotten > 0 {
            tracing::info!(
                adopted = upgraded.adopted,
                forgotten = upgraded.forgotten,
                "references written by an earlier release moved out of the event log"
            );
        }
        let store = EventStore::open(
            database.pool.clone(),
            tend_event_store::Options {
                fold_cache_events: options.fold_cache_events,
                ..Default::default()
            },
        )
        .await?;
        crate::Result::Ok((directory, store))
    };
    let (directory, store) = tokio::select! {
        ready = ready => ready?,
        signal = stop.signalled() => {
            tracing::info!(signal, "stopped during start-up");
            return Ok(());
        }
    };
    let shutdown = CancellationToken::new();

    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::Serving).await;
    let stopping = Arc::new(AtomicBool::new(false));
    tokio::spawn(readiness::watch(
        (*database.pool.connect_options()).clone(),
        health.clone(),
        stopping.clone(),
        shutdown.clone(),
    ));
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tend_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let auth = Authenticator::with_bindings(options.tokens, options.bindings);
    let event_stream =
        EventStreamApi::new(store.clone(), options.recipients.clone(), shutdown.clone());
    let _observed = gauges::observe(
        &database.pool,
        options.database.db_max_connections,
        &store,
        &event_stream,
        telemetry,
        shutdown.clone(),
    );
    let metrics_stop = CancellationToken::new();
    let _stop_metrics = metrics_stop.clone().drop_guard();
    let metrics_endpoint = serve_metrics(telemetry, metrics_stop.clone()).await?;
    // Health alone, in plain text, for probes that cannot speak TLS: the
    // same answers as the gRPC port's, until the very end (like metrics).
    let health_endpoint = match options.health_listen {
        None => None,
        Some(listen) => {
            let listener = TcpListener::bind(listen).await.map_err(|e| {
                format!("cannot serve health on {listen} (TEND_HEALTH_LISTEN): {e}")
            })?;
            let addr = listener.local_addr()?;
            tokio::spawn(
                Server::builder()
                    .add_service(health_service.clone())
                    .serve_with_incoming_shutdown(
                        TcpIncoming::from(listener),
                        metrics_stop.cancelled_owned(),
                    ),
            );
            Some(addr)
        }
    };
    let events = InterceptedService::new(event_stream.into_server(), auth.clone());
    let scheduler = InterceptedService::new(
        SchedulerApi::new(store.clone(), directory.clone(), clock.clone()).into_server(),
        auth.clone(),
    );
    let practice = InterceptedService::new(
        PracticeLogApi::new(
            store.clone(),
            directory.clone(),
            clock.clone(),
            options.practice,
        )
        .into_server(),
        auth.clone(),
    );
    let assessment = InterceptedService::new(
        AssessmentApi::new(store.clone(), directory.clone(), clock.clone()).into_server(),
        auth.clone(),
    );
    let arc = InterceptedService::new(
        ArcApi::new(database.pool.clone(), directory.clone(), clock.clone()).into_server(),
        auth.clone(),
    );
    let privacy = InterceptedService::new(
        PrivacyApi::new(
            store.clone(),
            directory.clone(),
            options.recipients.clone(),
            clock.clone(),
        )
        .into_server(),
        auth.clone(),
    );
    let webhooks = InterceptedService::new(
        WebhookApi::new(
            store.clone(),
            master.clone(),
            options.webhook_targets.clone(),
            options.recipients.clone(),
            clock.clone(),
        )
        .into_server(),
        auth.clone(),
    );
    let exports = InterceptedService::new(
        ExportApi::new(database.pool.clone(), options.recipients.clone()).into_server(),
        auth.clone(),
    );
    let deliverer = match options.webhooks {
        None => None,
        Some(delivery) => {
            let client = tend_webhooks::client(
                &options.webhook_targets,
                options.webhook_roots,
                delivery.timeout,
            )?;
            // On the calls' runtime: delivery is many small requests across
            // endpoints, and on the background's one thread 50 endpoints got
            // half the deliveries a second (the delivery bench).
            Some(tokio::spawn(
                Deliverer::new(
                    store.clone(),
                    master,
                    options.webhook_targets.clone(),
                    options.recipients,
                    client,
                    clock.clone(),
                    delivery,
                )
                .run(shutdown.clone()),
            ))
        }
    };
    // The scheduler and the arc projection on a runtime of their own
    // (`background`).
    let background = Background::start(&store, options.background_nice)?;
    let projection = options.arc_projection.map(|runner| {
        background.spawn(
            tend_projections::Runner::new(
                background.store.clone(),
                ArcProjection::new(
                    background.store.clone(),
                    clock.clone(),
                    options.arc_rules,
                    true,
                ),
                runner,
            )
            .run(shutdown.clone()),
        )
    });
    let worker = background
        .spawn(Worker::new(background.store.clone(), clock, options.worker).run(shutdown.clone()));

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
    let router = Server::builder()
        // gRPC-Web arrives over HTTP/1.1 from browsers.
        .accept_http1(true)
        // Outermost: browsers' preflights are answered before gRPC-Web
        // would refuse them, and only for the configured origins.
        .layer(web::cors(&options.web_origins))
        .layer(web::WholeBodies)
        .layer(tonic_web::GrpcWebLayer::new())
        // Inside gRPC-Web: calls are measured as the gRPC they become.
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
        .add_service(privacy)
        .add_service(webhooks)
        .add_service(exports);
    let stopped = shutdown.clone().cancelled_owned();
    let tls_line = options.tls.as_ref().map(|(files, loaded)| {
        format!(
            "TLS, certificate sha256:{}{}",
            loaded.fingerprint,
            if files.client_ca.is_some() {
                "; client certificates required"
            } else {
                ""
            }
        )
    });
    // The TLS configuration as it is now, reloaded when its files change:
    // for the gRPC port and the FHIR port alike.
    let tls_config = options.tls.map(|(files, loaded)| {
        let (publish, current) = tokio::sync::watch::channel(loaded.config.clone());
        tokio::spawn(tls::reload(files, loaded, publish, shutdown.clone()));
        current
    });
    let fhir_endpoint = match options.fhir {
        None => None,
        Some(fhir) => {
            let listener = TcpListener::bind(fhir.listen).await.map_err(|e| {
                format!(
                    "cannot serve FHIR on {} (TEND_FHIR_LISTEN): {e}",
                    fhir.listen
                )
            })?;
            let addr = listener.local_addr()?;
            let jobs =
                tend_fhir_service::Jobs::new(database.pool.clone(), directory.clone(), fhir.jobs);
            tokio::spawn(jobs.clone().run(shutdown.clone()));
            let endpoint = Arc::new(tend_fhir_service::Fhir::new(jobs, auth, fhir.base_url));
            tokio::spawn(serve_fhir(
                listener,
                endpoint,
                tls_config.clone(),
                shutdown.clone(),
            ));
            tracing::info!(%addr, "serving FHIR at /fhir");
            Some(addr)
        }
    };
    let server: std::pin::Pin<
        Box<dyn Future<Output = std::result::Result<(), tonic::transport::Error>> + Send>,
    > = match tls_config {
        None => Box::pin(router.serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            stopped,
        )),
        Some(current) => Box::pin(router.serve_with_incoming_shutdown(
            tls::incoming(listener, current, false, shutdown.clone()),
            stopped,
        )),
    };
    if tls_line.is_none() && database.embedded.is_none() {
        tracing::warn!(
            "the gRPC port speaks plain TCP: tokens and participants' data cross the network unencrypted; set TEND_TLS_CERT and TEND_TLS_KEY unless a proxy in front terminates TLS"
        );
    }
    tracing::info!(%addr, "serving gRPC");
    print_banner(
        Endpoints {
            grpc: addr,
            health: health_endpoint,
            fhir: fhir_endpoint.map(|a| (a, tls_line.is_some())),
            metrics: metrics_endpoint,
        },
        tls_line.as_deref(),
        options.webhook_development,
        database,
        options.dev_token.as_deref(),
    );

    let drain = options.shutdown_drain;
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let signal = stop.signalled().await;
            // Readiness must not say SERVING again from here on.
            stopping.store(true, Ordering::SeqCst);
            tracing::info!(
                signal,
                drain_seconds = drain.as_secs(),
                "shutting down: health says NOT_SERVING; then no new calls, and calls in flight finish"
            );
            set_health(&health, ServingStatus::NotServing).await;
            tokio::time::sleep(drain).await;
            shutdown.cancel();
        }
    });

    let grace = options.shutdown_grace;
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
    if let Some(deliverer) = deliverer {
        let _ = deliverer.await;
    }
    background.close().await;
    store.shutdown().await;
    directory.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Accepts FHIR connections until `shutdown`, each served on a task of its
/// own; over TLS when the gRPC port has it (HTTP/1.1 only).
async fn serve_fhir(
    listener: TcpListener,
    endpoint: Arc<tend_fhir_service::Fhir>,
    tls_config: Option<tokio::sync::watch::Receiver<Arc<rustls::ServerConfig>>>,
    shutdown: CancellationToken,
) {
    use tend_fhir_service::Connection;
    use tokio_stream::StreamExt;
    match tls_config {
        None => loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((tcp, _)) => {
                    let _ = tcp.set_nodelay(true);
                    tokio::spawn(endpoint.clone().serve_connection(
                        tcp,
                        Connection::default(),
                        shutdown.clone(),
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a FHIR connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        },
        Some(current) => {
            let mut incoming = tls::incoming(listener, current, true, shutdown.clone());
            while let Some(Ok(tls)) = incoming.next().await {
                let certificate = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.as_ref().to_vec());
                tokio::spawn(endpoint.clone().serve_connection(
                    tls,
                    Connection {
                        tls: true,
                        certificate,
                    },
                    shutdown.clone(),
                ));
            }
        }
    }
}

/// Sets every entry of `HEALTH` to `status`.
pub(crate) async fn set_health(health: &HealthReporter, status: ServingStatus) {
    for service in HEALTH {
        health.set_service_status(service, status).await;
    }
}

/// Serves `/metrics` when a scrape endpoint was asked for, until `stop`
/// (the very end, so that a draining server stays observable); returns
/// its address.
async fn serve_metrics(
    telemetry: &Telemetry,
    stop: CancellationToken,
) -> Result<Option<SocketAddr>> {
    let Some((spec, reader)) = &telemetry.prometheus else {
        return Ok(None);
    };
    let addr = crate::telemetry::prometheus_addr(spec).await?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    let addr = listener.local_addr()?;
    tokio::spawn(tend_telemetry::prometheus::serve(
        listener,
        reader.clone(),
        stop,
    ));
    tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    Ok(Some(addr))
}

/// Where the server listens.
struct Endpoints {
    grpc: SocketAddr,
    health: Option<SocketAddr>,
    /// With whether it speaks TLS.
    fhir: Option<(SocketAddr, bool)>,
    metrics: Option<SocketAddr>,
}

fn print_banner(
    endpoints: Endpoints,
    tls: Option<&str>,
    webhook_development: bool,
    database: &Database,
    dev_token: Option<&str>,
) {
    let Endpoints {
        grpc: addr,
        health,
        fhir,
        metrics,
    } = endpoints;
    println!("Tend is serving gRPC on {addr}");
    match tls {
        Some(tls) => println!("  {tls}"),
        None if database.embedded.is_none() => println!(
            "  WARNING: plain TCP, no TLS (TEND_TLS_CERT, TEND_TLS_KEY): only behind a proxy that terminates TLS"
        ),
        None => {}
    }
    if let Some(metrics) = metrics {
        println!("  metrics: http://{metrics}/metrics");
    }
    if let Some(health) = health {
        println!("  health for probes (plain gRPC): {health}");
    }
    if let Some((fhir, tls)) = fhir {
        let scheme = if tls { "https" } else { "http" };
        println!("  FHIR R4: {scheme}://{fhir}/fhir (Bulk Data $export, reads)");
    }
    if webhook_development {
        println!(
            "  webhooks may reach this machine (http://127.0.0.1, development only; see TEND_WEBHOOK_ALLOW_*)"
        );
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

/// The first SIGTERM or SIGINT, heard from the start.
#[derive(Clone)]
struct Stop {
    token: CancellationToken,
    signal: Arc<std::sync::OnceLock<&'static str>>,
}

impl Stop {
    fn install() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let stop = Self {
            token: CancellationToken::new(),
            signal: Arc::default(),
        };
        let heard = stop.clone();
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            let _ = heard.signal.set(name);
            heard.token.cancel();
        });
        Ok(stop)
    }

    /// Resolves with the signal's name once one came.
    async fn signalled(&self) -> &'static str {
        self.token.cancelled().await;
        self.signal.get().copied().unwrap_or("signal")
    }
}
