//! The deliverer: one server at a time (the `webhooks` lease) reads the
//! `webhook-*` streams to know the endpoints, and runs one task per active
//! endpoint that follows the tenant's log from the endpoint's position and
//! POSTs each matching event, in log order, until the receiver answers
//! 2xx. The position is saved after the answer (at least once: a crash in
//! between sends that event again, with the same `webhook-id`).
//!
//! A failing delivery is retried with exponential backoff and jitter (a
//! `Retry-After` is honoured); after the retry period the endpoint is
//! disabled with `WebhookEndpointDisabled`. A 410 Gone disables it at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use opentelemetry::KeyValue;
use serde_json::{Value, json};
use tend_domain::DomainEvent;
use tend_domain::webhook::{self, DisabledReason, Endpoint, Endpoints, Status};
use tend_event_store::{
    Delivery, EventStore, Filter, Lease, Metadata, RecordedEvent, Subscription, TenantId,
};
use tend_privacy::Recipients;
use tend_service_kit::execute::{self, Retry};
use tend_service_kit::{Clock, Pseudonymous, streams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::sign;
use crate::tables::{Failure, Tables};
use crate::target::Targets;

/// The lease one delivering server holds.
pub const LEASE: &str = "webhooks";
/// How soon saved progress follows deliveries.
const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// How often secrets are read again (a rotation reaches deliveries within
/// this; the previous secret signs beside the new one meanwhile).
const SECRETS_EVERY: Duration = Duration::from_secs(30);
/// How often the leader looks for endpoints registered, changed or
/// removed. A new endpoint's deliveries start from its registration
/// whenever it is seen, so this delays them and loses none; unpaced, the
/// registry was read at every commit of a busy log.
const REGISTRY_PACE: Duration = Duration::from_millis(250);

/// How deliveries are made and retried.
#[derive(Debug, Clone)]
pub struct DeliveryOptions {
    /// How long one event's delivery is retried before the endpoint is
    /// disabled.
    pub retry_period: Duration,
    /// The first retry's delay; each next one doubles, up to `backoff_max`.
    pub backoff_first: Duration,
    pub backoff_max: Duration,
    /// One request's limit, connecting included.
    pub timeout: Duration,
    pub lease_ttl: Duration,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        Self {
            retry_period: Duration::from_secs(24 * 3600),
            backoff_first: Duration::from_secs(1),
            backoff_max: Duration::from_secs(600),
            timeout: Duration::from_secs(15),
            lease_ttl: Duration::from_secs(10),
        }
    }
}

/// What the endpoint tasks share.
#[derive(Debug)]
struct Shared {
    store: EventStore,
    targets: Arc<Targets>,
    tables: Tables,
    recipients: Recipients,
    client: reqwest::Client,
    clock: Arc<dyn Clock>,
    options: DeliveryOptions,
}

#[derive(Debug)]
pub struct Deliverer {
    shared: Arc<Shared>,
    lease: Lease,
}

/// The HTTP client deliveries use: rustls (ring) trusting the Mozilla roots
/// and `extra_roots`, no proxy, no redirects, every address checked.
pub fn client(
    targets: &Arc<Targets>,
    extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    timeout: Duration,
) -> Result<reqwest::Client, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for cert in extra_roots {
        roots
            .add(cert)
            .map_err(|e| format!("TEND_WEBHOOK_CA: {e}"))?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .dns_resolver(targets.resolver())
        .user_agent(concat!("Tend-Webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("the webhook HTTP client: {e}"))
}

impl Deliverer {
    pub fn new(
        store: EventStore,
        keys: tend_privacy::MasterKeys,
        targets: Arc<Targets>,
        recipients: Recipients,
        client: reqwest::Client,
        clock: Arc<dyn Clock>,
        options: DeliveryOptions,
    ) -> Self {
        let lease = Lease::new(LEASE, options.lease_ttl);
        Self {
            shared: Arc::new(Shared {
                tables: Tables::new(store.pool().clone(), keys),
                store,
                targets,
                recipients,
                client,
                clock,
                options,
            }),
            lease,
        }
    }

    /// Delivers while this server holds the lease, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let ttl = self.shared.options.lease_ttl;
        let pool = self.shared.store.pool().clone();
        loop {
            let held = match self.lease.acquire(&pool).await {
                Ok(held) => held,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach the webhook lease; retrying");
                    false
                }
            };
            tend_telemetry::lease_held(LEASE, held);
            if held {
                tracing::info!(holder = %self.lease.holder(), "delivering webhooks");
                lead(
                    self.shared.clone(),
                    &self.lease,
                    &pool,
                    shutdown.child_token(),
                )
                .await;
                tend_telemetry::lease_held(LEASE, false);
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(ttl / 3) => {}
            }
        }
        if let Err(e) = self.lease.release(&pool).await {
            tracing::warn!(error = %e, "could not release the webhook lease; it will expire");
        }
    }
}

/// A task delivering to one endpoint.
struct Running {
    updates: watch::Sender<Endpoint>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Follows the endpoint streams and keeps one task per active endpoint,
/// renewing the lease every third of its life; returns when it is lost
/// (or cannot be renewed before it would expire) or at `stop`.
async fn lead(shared: Arc<Shared>, lease: &Lease, pool: &sqlx::PgPool, stop: CancellationToken) {
    let ttl = shared.options.lease_ttl;
    let mut renew = tokio::time::interval(ttl / 3);
    renew.tick().await;
    let mut renewed = Instant::now();
    let filter = Filter {
        tenant: None,
        categories: vec![streams::WEBHOOK.to_owned()],
        event_types: vec![],
    };
    let head_at_start = shared.store.head();
    let mut registry = shared
        .store
        .subscribe(filter.clone(), 0)
        .paced(REGISTRY_PACE);
    let mut states: HashMap<(TenantId, Uuid), webhook::State> = HashMap::new();
    let mut running: HashMap<(TenantId, Uuid), Running> = HashMap::new();
    // Tasks told to stop and not yet ended: a new task for the same
    // endpoint waits for the old one, so that one endpoint never has two.
    let mut stopping: HashMap<(TenantId, Uuid), tokio::task::JoinHandle<()>> = HashMap::new();
    let mut caught_up = false;
    loop {
        let delivery = tokio::select! {
            _ = stop.cancelled() => break,
            _ = renew.tick() => {
                // Bounded: a renewal that cannot finish before the lease
                // would expire stops deliveries here first, so that two
                // servers never deliver at once for long.
                let left = (ttl * 2 / 3).saturating_sub(renewed.elapsed());
                match tokio::time::timeout(left, lease.acquire(pool)).await {
                    Ok(Ok(true)) => renewed = Instant::now(),
                    Ok(Ok(false)) => {
                        tracing::warn!("the webhook lease was taken over; stopping deliveries here");
                        break;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot renew the webhook lease");
                        if renewed.elapsed() >= ttl * 2 / 3 {
                            break;
                        }
                    }
                    Err(_) => {
                        tracing::warn!("the webhook lease could not be renewed in time; stopping deliveries here");
                        break;
                    }
                }
                continue;
            }
            d = registry.next() => d,
        };
        match delivery {
            Ok(Delivery::Event(e)) => {
                let Ok(event) =
                    webhook::Event::from_stored(&e.event_type, e.schema_version, &e.payload)
                else {
                    tracing::error!(position = e.position, "unreadable webhook event; skipped");
                    continue;
                };
                let key = (e.tenant.clone(), event.endpoint_id());
                let state = states.remove(&key).unwrap_or_default();
                states.insert(key.clone(), webhook::apply(state, &event, e.position));
                if caught_up {
                    reconcile(
                        &shared,
                        &key,
                        &states[&key],
                        &mut running,
                        &mut stopping,
                        &stop,
                    );
                }
            }
            Ok(Delivery::Checkpoint(_)) => {}
            Err(tend_event_store::Error::ShuttingDown) => break,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the webhook endpoints; retrying");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                registry = shared
                    .store
                    .subscribe(filter.clone(), registry.position())
                    .paced(REGISTRY_PACE);
                continue;
            }
        }
        // Only once the endpoints as they stand are known: an endpoint
        // registered and removed long ago must not deliver in between.
        if !caught_up && registry.position() >= head_at_start {
            caught_up = true;
            for (key, state) in &states {
                reconcile(&shared, key, state, &mut running, &mut stopping, &stop);
            }
        }
    }
    // Every task told at once, then waited for: none delivers on while
    // another is being waited for.
    for r in running.values() {
        r.stop.cancel();
    }
    for (_, r) in running.drain() {
        let _ = r.task.await;
    }
    for (_, task) in stopping.drain() {
        let _ = task.await;
    }
}

/// Starts, updates or stops the task of one endpoint to match its state.
fn reconcile(
    shared: &Arc<Shared>,
    key: &(TenantId, Uuid),
    state: &webhook::State,
    running: &mut HashMap<(TenantId, Uuid), Running>,
    stopping: &mut HashMap<(TenantId, Uuid), tokio::task::JoinHandle<()>>,
    stop: &CancellationToken,
) {
    stopping.retain(|_, task| !task.is_finished());
    let active = match (&state.endpoint, state.removed) {
        (Some(e), false) if e.status == Status::Active => Some(e.clone()),
        _ => None,
    };
    match (active, running.remove(key)) {
        // A task that ended on its own (it could not record a disabling,
        // say) is started again rather than left for dead.
        (Some(endpoint), Some(r)) if !r.task.is_finished() => {
            r.updates.send_replace(endpoint);
            running.insert(key.clone(), r);
        }
        (Some(endpoint), _) => {
            let (updates, rx) = watch::channel(endpoint);
            let task_stop = stop.child_token();
            let previous = stopping.remove(key);
            let task = tokio::spawn(endpoint_task(
                shared.clone(),
                key.0.clone(),
                rx,
                task_stop.clone(),
                previous,
            ));
            running.insert(
                key.clone(),
                Running {
                    updates,
                    stop: task_stop,
                    task,
                },
            );
        }
        (None, Some(r)) => {
            r.stop.cancel();
            stopping.insert(key.clone(), r.task);
            record_failing(key.1, false);
        }
        (None, None) => {}
    }
}

/// Why delivering from a position ended.
enum Ended {
    /// Stopped: the endpoint was disabled, removed, or this server stops.
    Stop,
    /// The endpoint changed (a redelivery, new filters): start again.
    Restart,
}

async fn endpoint_task(
    shared: Arc<Shared>,
    tenant: TenantId,
    mut updates: watch::Receiver<Endpoint>,
    stop: CancellationToken,
    previous: Option<tokio::task::JoinHandle<()>>,
) {
    if let Some(previous) = previous {
        let _ = previous.await;
    }
    loop {
        let endpoint = updates.borrow_and_update().clone();
        let from = tokio::select! {
            _ = stop.cancelled() => return,
            from = shared.tables.restart(
                &tenant,
                endpoint.id,
                endpoint.restart.after_position,
                endpoint.restart.at_event,
            ) => from,
        };
        let ended = match from {
            Ok(from) => deliver_from(&shared, &tenant, &endpoint, from, &mut updates, &stop).await,
            Err(e) => {
                tracing::warn!(endpoint = %endpoint.id, error = %e, "cannot read where deliveries stand; retrying");
                tokio::select! {
                    _ = stop.cancelled() => Ended::Stop,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => Ended::Restart,
                }
            }
        };
        if let Ended::Stop = ended {
            return;
        }
    }
}

/// One endpoint's progress not yet saved.
struct Progress {
    /// The restart instruction this task obeys: its writes count only
    /// while no newer one was obeyed (a redelivery meanwhile wins).
    restart_event: u64,
    position: u64,
    delivered: u64,
    status: Option<u16>,
    saved_position: u64,
}

impl Progress {
    fn dirty(&self) -> bool {
        self.position != self.saved_position || self.delivered > 0
    }

    async fn flush(&mut self, shared: &Shared, tenant: &TenantId, endpoint: Uuid) {
        if !self.dirty() {
            return;
        }
        match shared
            .tables
            .progress(
                tenant,
                endpoint,
                self.restart_event,
                self.position,
                self.delivered,
                self.status,
            )
            .await
        {
            Ok(()) => {
                self.saved_position = self.position;
                self.delivered = 0;
            }
            // Kept for the next flush; a crash meanwhile delivers again.
            Err(e) => tracing::warn!(%endpoint, error = %e, "cannot save webhook progress"),
        }
    }
}

/// The secrets that sign, read again now and then.
struct Secrets {
    values: Vec<Zeroizing<Vec<u8>>>,
    read_at: Instant,
}

async fn deliver_from(
    shared: &Shared,
    tenant: &TenantId,
    endpoint: &Endpoint,
    from: u64,
    updates: &mut watch::Receiver<Endpoint>,
    stop: &CancellationToken,
) -> Ended {
    let id = endpoint.id;
    let selection = &endpoint.selection;
    let mut pseudonymous = match &selection.recipient_id {
        None => None,
        Some(recipient) => match shared
            .recipients
            .pseudonymizer(tenant.as_str(), recipient, None)
        {
            Some(p) => Some(Pseudonymous::new(
                shared.store.clone(),
                tenant.clone(),
                p,
                false,
            )),
            None => {
                tracing::warn!(endpoint = %id, "the endpoint's recipient has no key on this server (TEND_RECIPIENT_KEYS); not delivering");
                return wait_for_change(updates, stop).await;
            }
        },
    };
    // A pseudonymous view follows every participant stream (consent
    // decides what it carries); the filters apply to what it gives.
    let filter = Filter {
        tenant: Some(tenant.clone()),
        categories: if pseudonymous.is_some() {
            vec![]
        } else {
            selection.categories.iter().cloned().collect()
        },
        event_types: if pseudonymous.is_some() {
            vec![]
        } else {
            selection.event_types.iter().cloned().collect()
        },
    };
    let mut subscription: Subscription = shared.store.subscribe(filter, from);
    let mut progress = Progress {
        restart_event: endpoint.restart.at_event,
        position: from,
        delivered: 0,
        status: None,
        saved_position: from,
    };
    let mut secrets: Option<Secrets> = None;
    let key_id = pseudonymous.as_ref().map(|p| p.key_id().to_owned());
    // A failure of this endpoint recorded before (by this server before a
    // restart, or by another before a handover): its retry period goes on.
    let mut failed_before = match shared.tables.delivery(tenant, id).await {
        Ok(Some(row)) => match (row.failing_position, row.failing_since) {
            (Some(position), Some(since)) => Some((position as u64, since, row.attempts as u32)),
            _ => None,
        },
        _ => None,
    };
    let flush_timer = tokio::time::sleep(FLUSH_EVERY);
    tokio::pin!(flush_timer);
    loop {
        let delivery = tokio::select! {
            biased;
            _ = stop.cancelled() => {
                progress.flush(shared, tenant, id).await;
                return Ended::Stop;
            }
            changed = updates.changed() => {
                progress.flush(shared, tenant, id).await;
                return if changed.is_ok() { Ended::Restart } else { Ended::Stop };
            }
            _ = &mut flush_timer, if progress.dirty() => {
                progress.flush(shared, tenant, id).await;
                flush_timer.as_mut().reset(tokio::time::Instant::now() + FLUSH_EVERY);
                continue;
            }
            d = subscription.next() => d,
        };
        match delivery {
            Ok(Delivery::Event(event)) => {
                let position = event.position;
                let out = match &mut pseudonymous {
                    None => Some(event),
                    Some(p) => {
                        let category = event.stream_id.category().to_owned();
                        let event_type = event.event_type.clone();
                        match p.transform(event).await {
                            Ok(Some(e)) if selected(selection, &category, &event_type) => Some(e),
                            Ok(_) => None,
                            Err(e) => {
                                tracing::warn!(endpoint = %id, error = %e, "cannot make the pseudonymous view; retrying");
                                progress.flush(shared, tenant, id).await;
                                return wait(stop, Duration::from_secs(1)).await;
                            }
                        }
                    }
                };
                // Its own lifecycle is not for an endpoint unless asked.
                let out = out.filter(|e| {
                    !selection.categories.is_empty() || e.stream_id.category() != streams::WEBHOOK
                });
                if let Some(event) = out {
                    match send(
                        shared,
                        tenant,
                        endpoint,
                        &event,
                        key_id.as_deref(),
                        &mut secrets,
                        &mut progress,
                        &mut failed_before,
                        updates,
                        stop,
                    )
                    .await
                    {
                        Sent::Delivered(status) => {
                            progress.delivered += 1;
                            progress.status = Some(status);
                        }
                        Sent::Ended(ended) => {
                            progress.flush(shared, tenant, id).await;
                            return ended;
                        }
                    }
                }
                progress.position = position;
                record_position(id, position);
            }
            Ok(Delivery::Checkpoint(position)) => {
                progress.position = position;
                record_lag(id, 0.0);
                record_position(id, position);
            }
            Err(tend_event_store::Error::ShuttingDown) => {
                progress.flush(shared, tenant, id).await;
                return Ended::Stop;
            }
            Err(e) => {
                tracing::warn!(endpoint = %id, error = %e, "cannot read the log for webhooks; retrying");
                progress.flush(shared, tenant, id).await;
                return wait(stop, Duration::from_secs(1)).await;
            }
        }
    }
}

fn selected(selection: &webhook::Selection, category: &str, event_type: &str) -> bool {
    (selection.categories.is_empty() || selection.categories.contains(category))
        && (selection.event_types.is_empty() || selection.event_types.contains(event_type))
}

fn fresh(secrets: &Option<Secrets>) -> bool {
    secrets
        .as_ref()
        .is_some_and(|s| s.read_at.elapsed() < SECRETS_EVERY)
}

async fn wait_for_change(
    updates: &mut watch::Receiver<Endpoint>,
    stop: &CancellationToken,
) -> Ended {
    tokio::select! {
        _ = stop.cancelled() => Ended::Stop,
        changed = updates.changed() => if changed.is_ok() { Ended::Restart } else { Ended::Stop },
    }
}

/// What a delivery came to.
enum Sent {
    Delivered(u16),
    Ended(Ended),
}

/// The body POSTed: Standard Webhooks' `type`, `timestamp` and `data`,
/// the event with its envelope in `data`.
pub(crate) fn body(event: &RecordedEvent, pseudonym_key_id: Option<&str>) -> Value {
    let recorded_at = event
        .recorded_at
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let Metadata {
        correlation_id,
        causation_id,
        actor,
        traceparent,
        tracestate,
    } = &event.metadata;
    let mut data = json!({
        "position": event.position,
        "stream_id": event.stream_id.as_str(),
        "stream_version": event.stream_version,
        "event_id": event.id,
        "event_type": event.event_type,
        "schema_version": event.schema_version,
        "recorded_at": recorded_at,
        "payload": event.payload,
        "metadata": {
            "correlation_id": correlation_id,
            "causation_id": causation_id,
            "actor": actor,
            "traceparent": traceparent,
            "tracestate": tracestate,
        },
    });
    if let Some(key) = pseudonym_key_id {
        data["pseudonym_key_id"] = Value::from(key);
    }
    json!({
        "type": event.event_type,
        "timestamp": recorded_at,
        "data": data,
    })
}

/// Delivers one event, retrying as the options say; returns when it was
/// delivered, or when the endpoint stopped (disabled here, or changed).
#[allow(clippy::too_many_arguments)]
async fn send(
    shared: &Shared,
    tenant: &TenantId,
    endpoint: &Endpoint,
    event: &RecordedEvent,
    pseudonym_key_id: Option<&str>,
    secrets: &mut Option<Secrets>,
    progress: &mut Progress,
    failed_before: &mut Option<(u64, chrono::DateTime<Utc>, u32)>,
    updates: &mut watch::Receiver<Endpoint>,
    stop: &CancellationToken,
) -> Sent {
    let id = endpoint.id;
    let body = serde_json::to_vec(&body(event, pseudonym_key_id)).unwrap_or_default();
    let message_id = event.position.to_string();
    let options = &shared.options;
    let (mut attempts, mut failing_since) = match failed_before.take() {
        Some((position, since, attempts)) if position == event.position => (attempts, Some(since)),
        _ => (0, None),
    };
    let endpoint_attr = attribute(id);
    loop {
        if stop.is_cancelled() {
            return Sent::Ended(Ended::Stop);
        }
        // Read again now and then: a rotation reaches retries too.
        if !fresh(secrets) {
            match shared.tables.secrets(tenant, id, Utc::now()).await {
                Ok(values) if !values.is_empty() => {
                    *secrets = Some(Secrets {
                        values,
                        read_at: Instant::now(),
                    })
                }
                Ok(_) => {
                    tracing::warn!(endpoint = %id, "the endpoint has no secret; not delivering until it is rotated");
                    return Sent::Ended(wait(stop, SECRETS_EVERY).await);
                }
                Err(e) => {
                    tracing::warn!(endpoint = %id, error = %e, "cannot read the endpoint's secret; retrying");
                    return Sent::Ended(wait(stop, Duration::from_secs(1)).await);
                }
            }
        }
        let keys: Vec<&[u8]> = secrets
            .as_ref()
            .map(|s| s.values.iter().map(|v| v.as_slice()).collect())
            .unwrap_or_default();
        // The wall clock, whatever the domain clock says: receivers check
        // it against theirs to refuse replays.
        let timestamp = Utc::now().timestamp();
        let signature = sign::signature(&keys, &message_id, timestamp, &body);
        let started = Instant::now();
        // The whole URL again at each attempt (the operator's allowances
        // may have changed since it was registered); an address in it is
        // dialled without the resolver, so this is its only check.
        let attempt = async {
            if shared.targets.check_url(&endpoint.url).is_err() {
                return Err(Attempt::Refused);
            }
            let response = shared
                .client
                .post(&endpoint.url)
                .header("content-type", "application/json")
                .header("webhook-id", &message_id)
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", signature)
                .body(body.clone())
                .send()
                .await
                .map_err(Attempt::Failed)?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            drain(response).await;
            Ok((status, retry_after))
        };
        // Stopping does not wait for a receiver: a request in flight is
        // dropped (and the event sent again by whoever delivers next).
        let answer = tokio::select! {
            biased;
            _ = stop.cancelled() => return Sent::Ended(Ended::Stop),
            answer = attempt => answer,
        };
        let instruments = tend_telemetry::instruments();
        instruments
            .webhook_attempt_duration
            .record(started.elapsed().as_secs_f64(), &endpoint_attr);
        let (status, error, retry_after) = match answer {
            Ok((status, _)) if status.is_success() => {
                attempt_counted(id, true);
                record_failing(id, false);
                record_lag(id, lag_of(event));
                return Sent::Delivered(status.as_u16());
            }
            Ok((status, _)) if status == reqwest::StatusCode::GONE => {
                attempt_counted(id, false);
                tracing::warn!(endpoint = %id, "the receiver answered 410 Gone: disabling the endpoint");
                return Sent::Ended(
                    disable(
                        shared,
                        tenant,
                        id,
                        DisabledReason::Gone,
                        event.position,
                        Some(410),
                    )
                    .await,
                );
            }
            Ok((status, retry_after)) => (Some(status.as_u16()), "status", retry_after),
            Err(Attempt::Refused) => (None, "address_not_allowed", None),
            Err(Attempt::Failed(e)) => (None, classify(&e), None),
        };
        attempt_counted(id, false);
        record_failing(id, true);
        record_lag(id, lag_of(event));
        attempts += 1;
        let now = Utc::now();
        let since = *failing_since.get_or_insert(now);
        let failed_for = (now - since).to_std().unwrap_or_default();
        if failed_for >= options.retry_period {
            tracing::warn!(endpoint = %id, position = event.position, attempts, "webhook deliveries failed for the whole retry period: disabling the endpoint");
            return Sent::Ended(
                disable(
                    shared,
                    tenant,
                    id,
                    DisabledReason::RetriesExhausted,
                    event.position,
                    status,
                )
                .await,
            );
        }
        let wait_for = backoff(options, attempts)
            .max(retry_after.unwrap_or_default().min(options.backoff_max))
            .min(options.retry_period - failed_for);
        let failure = Failure {
            position: event.position,
            since,
            attempts,
            next_at: chrono::Duration::from_std(wait_for).ok().map(|w| now + w),
            status,
            error,
        };
        if let Err(e) = shared
            .tables
            .failure(tenant, id, progress.restart_event, &failure)
            .await
        {
            tracing::warn!(endpoint = %id, error = %e, "cannot record a webhook failure");
        }
        tracing::debug!(endpoint = %id, position = event.position, attempts, ?status, error, "webhook delivery failed; retrying");
        tokio::select! {
            _ = stop.cancelled() => return Sent::Ended(Ended::Stop),
            changed = updates.changed() => {
                return Sent::Ended(if changed.is_ok() { Ended::Restart } else { Ended::Stop });
            }
            _ = tokio::time::sleep(wait_for) => {}
        }
        // Progress made before this event stays saved while it fails.
        progress.flush(shared, tenant, id).await;
    }
}

/// Reads what a receiver answered, up to 64 KiB, so that the connection
/// can be reused; more is not read (the connection is dropped instead).
async fn drain(mut response: reqwest::Response) {
    let mut read = 0usize;
    while let Ok(Some(chunk)) = response.chunk().await {
        read += chunk.len();
        if read > 64 * 1024 {
            return;
        }
    }
}

/// Waits `how_long` (or until stop), then starts again.
async fn wait(stop: &CancellationToken, how_long: Duration) -> Ended {
    tokio::select! {
        _ = stop.cancelled() => Ended::Stop,
        _ = tokio::time::sleep(how_long) => Ended::Restart,
    }
}

/// The delay before attempt `attempts + 1`: doubling from the first, up to
/// the most, each drawn between half and all of it (jitter, so that
/// endpoints failing together do not retry together).
pub(crate) fn backoff(options: &DeliveryOptions, attempts: u32) -> Duration {
    let exponent = attempts.saturating_sub(1).min(30);
    let full = options
        .backoff_first
        .saturating_mul(1u32 << exponent)
        .min(options.backoff_max);
    let mut byte = [0u8; 2];
    let _ = getrandom::fill(&mut byte);
    let share = 0.5 + f64::from(u16::from_le_bytes(byte)) / f64::from(u16::MAX) / 2.0;
    full.mul_f64(share)
}

/// Why a request got no answer.
enum Attempt {
    /// Not sent: the URL's address is not allowed.
    Refused,
    Failed(reqwest::Error),
}

/// A failed request, as a code for the status (never the receiver's text).
fn classify(e: &reqwest::Error) -> &'static str {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<crate::target::Refused>().is_some() {
            return "address_not_allowed";
        }
        if s.downcast_ref::<rustls::Error>().is_some() {
            return "tls";
        }
        source = s.source();
    }
    if e.is_timeout() {
        "timeout"
    } else {
        "connection"
    }
}

fn lag_of(event: &RecordedEvent) -> f64 {
    (Utc::now() - event.recorded_at)
        .to_std()
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Disables the endpoint (an event in its stream, which the registry then
/// acts on); if that cannot be written, starts again so that the failure
/// is retried rather than the endpoint left active and idle.
async fn disable(
    shared: &Shared,
    tenant: &TenantId,
    endpoint: Uuid,
    reason: DisabledReason,
    failed_position: u64,
    last_status: Option<u16>,
) -> Ended {
    let done = execute::execute::<Endpoints, crate::Error>(
        &shared.store,
        tenant,
        &streams::webhook(endpoint),
        Retry::on_version_conflict(5),
        &Metadata::default(),
        |_| Uuid::now_v7(),
        |_| {
            Ok(webhook::Command::Disable {
                reason,
                failed_position: Some(failed_position),
                last_status,
                now: shared.clock.now(),
            })
        },
    )
    .await;
    record_failing(endpoint, false);
    match done {
        Ok(_) => Ended::Stop,
        Err(e) => {
            tracing::error!(%endpoint, error = %e, "cannot disable the webhook endpoint; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ended::Restart
        }
    }
}

fn attempt_counted(endpoint: Uuid, ok: bool) {
    let outcome = if ok {
        tend_telemetry::Outcome::Ok
    } else {
        tend_telemetry::Outcome::Error
    };
    let [endpoint] = attribute(endpoint);
    tend_telemetry::instruments()
        .webhook_attempts
        .add(1, &[endpoint, outcome.attribute()]);
}

fn attribute(endpoint: Uuid) -> [KeyValue; 1] {
    [KeyValue::new("tend.webhook.endpoint", endpoint.to_string())]
}

fn record_lag(endpoint: Uuid, seconds: f64) {
    tend_telemetry::instruments()
        .webhook_lag
        .record(seconds, &attribute(endpoint));
}

fn record_position(endpoint: Uuid, position: u64) {
    tend_telemetry::instruments()
        .webhook_position
        .record(position, &attribute(endpoint));
}

fn record_failing(endpoint: Uuid, failing: bool) {
    tend_telemetry::instruments()
        .webhook_failing
        .record(u64::from(failing), &attribute(endpoint));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_most_with_jitter_between_half_and_all() {
        let options = DeliveryOptions {
            backoff_first: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            ..Default::default()
        };
        for (attempt, full) in [(1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (40, 60.0)] {
            for _ in 0..20 {
                let d = backoff(&options, attempt).as_secs_f64();
                assert!(d >= full * 0.5 - 1e-9 && d <= full + 1e-9, "{attempt}: {d}");
            }
        }
    }
}
