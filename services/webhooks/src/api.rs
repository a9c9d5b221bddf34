//! The gRPC handlers.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tend_api::webhooks::v1 as pb;
use tend_api::webhooks::v1::webhook_service_server::{WebhookService, WebhookServiceServer};
use tend_auth::tenant_of;
use tend_domain::webhook::{self, DisabledReason, Endpoint, Endpoints, Selection, Status};
use tend_event_store::{EventStore, Filter, Metadata, TenantId};
use tend_privacy::{MasterKeys, Recipients};
use tend_service_kit::execute::{self, Retry};
use tend_service_kit::{Clock, instants, streams};
use tonic::{Request, Response, Status as GrpcStatus};
use uuid::Uuid;

use crate::Error;
use crate::sign;
use crate::tables::{DeliveryRow, Tables};
use crate::target::{Refused, Targets};

const RETRY: Retry = Retry::on_version_conflict(5);
/// How long the previous secret signs beside a rotated one.
const ROTATION_OVERLAP: chrono::Duration = chrono::Duration::hours(24);
/// How long registration waits for the URL's host to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Endpoint ids are made from the client's request id in this namespace.
const ENDPOINT_NAMESPACE: Uuid = Uuid::from_u128(0x6a1f_3c52_9e0b_4d8f_a7c1_2b5e_0d93_f864);

/// The service; cheap to clone.
#[derive(Debug, Clone)]
pub struct WebhookApi {
    store: EventStore,
    tables: Tables,
    targets: Arc<Targets>,
    recipients: Recipients,
    clock: Arc<dyn Clock>,
}

impl WebhookApi {
    pub fn new(
        store: EventStore,
        keys: MasterKeys,
        targets: Arc<Targets>,
        recipients: Recipients,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            tables: Tables::new(store.pool().clone(), keys),
            store,
            targets,
            recipients,
            clock,
        }
    }

    pub fn into_server(self) -> WebhookServiceServer<Self> {
        WebhookServiceServer::new(self)
    }

    /// The endpoint as it stands; NOT_FOUND when there is none (or it was
    /// removed).
    async fn load(&self, tenant: &TenantId, id: Uuid) -> Result<Endpoint, Error> {
        let (state, _) =
            execute::load::<Endpoints>(&self.store, tenant, &streams::webhook(id)).await?;
        match (state.endpoint, state.removed) {
            (Some(e), false) => Ok(e),
            _ => Err(Error::not_found("endpoint")),
        }
    }

    /// Runs a command on an endpoint and answers it as it stands after.
    async fn change(
        &self,
        tenant: &TenantId,
        id: Uuid,
        command: impl Fn(&webhook::State, Timestamp) -> webhook::Command,
    ) -> Result<pb::Endpoint, Error> {
        // The decider answers NOT_FOUND for an endpoint never registered or
        // removed: no read before it.
        let done = execute::execute::<Endpoints, Error>(
            &self.store,
            tenant,
            &streams::webhook(id),
            RETRY,
            &Metadata::default(),
            |_| Uuid::now_v7(),
            |state| Ok(command(state, self.clock.now())),
        )
        .await?;
        let after = done.into_after::<Endpoints>();
        let endpoint = after.endpoint.ok_or_else(|| Error::not_found("endpoint"))?;
        self.to_pb(tenant, &endpoint).await
    }

    async fn to_pb(&self, tenant: &TenantId, e: &Endpoint) -> Result<pb::Endpoint, Error> {
        let row = self
            .tables
            .delivery(tenant, e.id)
            .await?
            .unwrap_or(DeliveryRow {
                delivered_position: e.restart.after_position as i64,
                ..Default::default()
            });
        let head = self.store.head();
        let lag = self.lag(tenant, e, row.delivered_position as u64).await?;
        let (state, reason, at) = match e.status {
            Status::Active => (pb::EndpointState::Active, None, None),
            Status::Disabled { reason, at } => {
                (pb::EndpointState::Disabled, Some(reason), Some(at))
            }
        };
        let ts = |t: chrono::DateTime<Utc>| instants::to_pb(instants::from_chrono(t));
        Ok(pb::Endpoint {
            endpoint_id: e.id.to_string(),
            url: e.url.clone(),
            categories: e.selection.categories.iter().cloned().collect(),
            event_types: e.selection.event_types.iter().cloned().collect(),
            recipient_id: e.selection.recipient_id.clone().unwrap_or_default(),
            state: state as i32,
            disabled_reason: reason.map_or(pb::DisabledReason::Unspecified, reason_pb) as i32,
            disabled_at: at.map(instants::to_pb),
            created_at: Some(instants::to_pb(e.registered_at)),
            delivery: Some(pb::Delivery {
                delivered_position: row.delivered_position as u64,
                head_position: head,
                lag_seconds: lag,
                failing_position: row.failing_position.unwrap_or(0) as u64,
                failed_attempts: row.attempts as u32,
                failing_since: row.failing_since.map(ts),
                next_attempt_at: row.next_attempt_at.map(ts),
                last_attempt_at: row.last_attempt_at.map(ts),
                last_status: row.last_status.unwrap_or(0) as u32,
                last_error: row.last_error.unwrap_or_default(),
                delivered_total: row.delivered_total as u64,
                failed_total: row.failed_total as u64,
            }),
        })
    }

    /// How long the first matching event after `delivered` has waited.
    async fn lag(&self, tenant: &TenantId, e: &Endpoint, delivered: u64) -> Result<f64, Error> {
        let filter = Filter {
            tenant: Some(tenant.clone()),
            categories: e.selection.categories.iter().cloned().collect(),
            event_types: e.selection.event_types.iter().cloned().collect(),
        };
        let page = self.store.read_log(&filter, delivered, 1).await?;
        Ok(page
            .events
            .first()
            .map(|first| {
                (Utc::now() - first.recorded_at)
                    .to_std()
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0)
            })
            .unwrap_or(0.0))
    }

    /// A position deliveries may continue after: in the log.
    fn within_log(&self, after: u64) -> Result<(), Error> {
        let head = self.store.head();
        if after > head {
            return Err(Error::invalid(
                "after_position",
                format!("is beyond the log's head ({head})"),
            ));
        }
        Ok(())
    }

    /// The URL, if webhooks may go there: its form, and every address its
    /// host resolves to now (checked again at each delivery).
    async fn check_url(&self, url: &str) -> Result<String, Error> {
        let parsed = self.targets.check_url(url)?;
        let host = parsed.host_str().ok_or(Refused::NoHost)?.to_owned();
        let port = parsed.port_or_known_default().unwrap_or(443);
        match tokio::time::timeout(RESOLVE_TIMEOUT, self.targets.resolve(&host, port)).await {
            Ok(resolved) => resolved?,
            Err(_) => return Err(Refused::Unresolved("no answer in time".into()).into()),
        };
        Ok(parsed.to_string())
    }
}

type Timestamp = jiff::Timestamp;

fn reason_pb(reason: DisabledReason) -> pb::DisabledReason {
    match reason {
        DisabledReason::PartnerRequest => pb::DisabledReason::PartnerRequest,
        DisabledReason::RetriesExhausted => pb::DisabledReason::RetriesExhausted,
        DisabledReason::Gone => pb::DisabledReason::Gone,
    }
}

fn uuid(field: &'static str, value: &str) -> Result<Uuid, Error> {
    Uuid::try_parse(value).map_err(|_| Error::invalid(field, "must be a UUID"))
}

#[tonic::async_trait]
impl WebhookService for WebhookApi {
    #[tracing::instrument(skip_all, fields(rpc = "CreateEndpoint"))]
    async fn create_endpoint(
        &self,
        request: Request<pb::CreateEndpointRequest>,
    ) -> Result<Response<pb::CreateEndpointResponse>, GrpcStatus> {
        let tenant = tenant_of(&request)?;
        let r = request.into_inner();
        let request_id = uuid("request_id", &r.request_id)?;
        if r.url.is_empty() {
            return Err(Error::invalid("url", "is required").into());
        }
        if r.url.len() > 2000 {
            return Err(Error::invalid("url", "must be at most 2000 bytes").into());
        }
        let recipient_id = (!r.recipient_id.is_empty()).then_some(r.recipient_id);
        if let Some(recipient) = &recipient_id
            && self
                .recipients
                .pseudonymizer(tenant.as_str(), recipient, None)
                .is_none()
        {
            return Err(Error::UnknownRecipient.into());
        }
        let selection = Selection {
            categories: r.categories.into_iter().collect(),
            event_types: r.event_types.into_iter().collect(),
            recipient_id,
        };
        webhook::validate_selection(&selection).map_err(Error::from)?;
        let url = self.check_url(&r.url).await?;
        let id = Uuid::new_v5(&ENDPOINT_NAMESPACE, request_id.as_bytes());
        // The secret first: an endpoint in the log always has one.
        let secret = self.tables.create_secret(&tenant, id).await?;
        let done = execute::execute::<Endpoints, Error>(
            &self.store,
            &tenant,
            &streams::webhook(id),
            RETRY,
            &Metadata::default(),
            |_| Uuid::now_v7(),
            |_| {
                Ok(webhook::Command::Register {
                    endpoint_id: id,
                    url: url.clone(),
                    selection: selection.clone(),
                    head: self.store.head(),
                    now: self.clock.now(),
                })
            },
        )
        .await?;
        let after = done.into_after::<Endpoints>();
        let endpoint = after.endpoint.ok_or_else(|| Error::not_found("endpoint"))?;
        Ok(Response::new(pb::CreateEndpointResponse {
            endpoint: Some(self.to_pb(&tenant, &endpoint).await?),
            secret: sign::display(&secret),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetEndpoint"))]
    async fn get_endpoint(
        &self,
        request: Request<pb::GetEndpointRequest>,
    ) -> Result<Response<pb::GetEndpointResponse>, GrpcStatus> {
        let tenant = tenant_of(&request)?;
        let id = uuid("endpoint_id", &request.get_ref().endpoint_id)?;
        let endpoint = self.load(&tenant, id).await?;
        Ok(Response::new(pb::GetEndpointResponse {
            endpoint: Some(self.to_pb(&tenant, &endpoint).await?),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListEndpoints"))]
    async fn list_endpoints(
        &self,
        request: Request<pb::ListEndpointsRequest>,
    ) -> Result<Response<pb::ListEndpointsResponse>, GrpcStatus> {
        let tenant = tenant_of(&request)?;
        let listed = self
            .store
            .list_streams(&tenant, streams::WEBHOOK)
            .await
            .map_err(Error::from)?;
        let mut endpoints = Vec::new();
        for stream in listed {
            let Some(id) = streams::key_of(&stream) else {
                continue;
            };
            match self.load(&tenant, id).await {
                Ok(e) => endpoints.push(self.to_pb(&tenant, &e).await?),
                Err(Error::Kit(tend_service_kit::Error::Domain(
                    tend_domain::Error::NotFound { .. },
                ))) => {}
                Err(e) => return Err(e.into()),
            }
        }
        endpoints.sort_by(|a, b| {
            (a.created_at.map(|t| (t.seconds, t.nanos)), &a.endpoint_id)
                .cmp(&(b.created_at.map(|t| (t.seconds, t.nanos)), &b.endpoint_id))
        });
        Ok(Response::new(pb::ListEndpointsResponse { endpoints }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "DisableEndpoint"))]
    async fn disable_endpoint(
        &self,
        request: Request<pb::DisableEndpointRequest>,
    ) -> Result<Response<pb::DisableEndpointResponse>, GrpcStatus> {
        let tenant = tenant_of(&request)?;
        let id = uuid("endpoint_id", &request.get_ref().endpoint_id)?;
        let endpoint = self
            .change(&tenant, id, |_, now| webhook::Command::Disable {
                reason: DisabledReason::PartnerRequest,
                failed_position: None,
                last_status: None,
                now,
            })
            .await?;
        Ok(Response::new(pb::DisableEndpointResponse {
            endpoint: Some(endpoint),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "EnableEndpoint"))]
    async fn enable_endpoint(
        &self,
        request: Request<pb::EnableEndpointRequest>,
    ) -> Result<Response<pb::EnableEndpointResponse>, GrpcStatus> {
        let tenant = tenant_of(&request)?;
        let r = request.into_inner();
        let id = uuid("endpoint_id", &r.endpoint_id)?;
        if let Some(after) = r.after_position {
            self.within_log(after)?;
        }
        let saved = self
            .tables
            .delivery(&tenant, id)
            .await?
            .map(|row| row.delivered_position as u64);
        let endpoint = self
            .change(&tenant, id, |state, now| webhook::Command::Enable {
                after_position: r.after_position,
                // Where it stopped; never delivered: where it started.
                delivered: saved.unwrap_or_else(|| {
                    state
                        .endpoint
                        .as_ref()
                        .map_or(0, |e| e.restart.after_position)
                }),
                now,
            })
            .await?;
        Ok(Response::new(pb::EnableEndpointResponse {
            endpoint: Some(endpoint),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "RedeliverEvents"))]
    async fn redeliver_events(
        &self,
        request: Request<pb::RedeliverEventsRequest>,
    ) -> Result<Response<pb::RedeliverEventsResponse>, GrpcStatus> {
        let tenant = tenant_of(&request)?;
        let r = request.into_inner();
        let id = uuid("endpoint_id", &r.endpoint_id)?;
        self.within_log(r.after_position)?;
        let endpoint = self
            .change(&tenant, id, |_, now| webhook::Command::Redeliver {
                after_position: r.after_position,
                now,
            })
            .await?;
        Ok(Response::new(pb::RedeliverEventsResponse {
            endpoint: Some(endpoint),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "RotateSecret"))]
    async fn rotate_secret(
        &self,
        request: Request<pb::RotateSecretRequest>,
    ) -> Result<Response<pb::RotateSecretResponse>, GrpcStatus> {
        let tenant = tenant_of(&request)?;
        let id = uuid("endpoint_id", &request.get_ref().endpoint_id)?;
        self.load(&tenant, id).await?;
        let until = Utc::now() + ROTATION_OVERLAP;
        let secret = match self.tables.rotate(&tenant, id, until).await {
            Err(Error::SecretMissing) => self.tables.create_secret(&tenant, id).await?,
            other => other?,
        };
        Ok(Response::new(pb::RotateSecretResponse {
            secret: sign::display(&secret),
            previous_valid_until: Some(instants::to_pb(instants::from_chrono(until))),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "DeleteEndpoint"))]
    async fn delete_endpoint(
        &self,
        request: Request<pb::DeleteEndpointRequest>,
    ) -> Result<Response<pb::DeleteEndpointResponse>, GrpcStatus> {
        let tenant = tenant_of(&request)?;
        let id = uuid("endpoint_id", &request.get_ref().endpoint_id)?;
        self.load(&tenant, id).await?;
        execute::execute::<Endpoints, Error>(
            &self.store,
            &tenant,
            &streams::webhook(id),
            RETRY,
            &Metadata::default(),
            |_| Uuid::now_v7(),
            |_| {
                Ok(webhook::Command::Remove {
                    now: self.clock.now(),
                })
            },
        )
        .await?;
        Ok(Response::new(pb::DeleteEndpointResponse {}))
    }
}
