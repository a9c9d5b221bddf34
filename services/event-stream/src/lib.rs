//! `tend.events.v1.EventStreamService`: a partner's view of the event log,
//! always limited to the caller's tenant.
//!
//! It is an adapter only: validation of the request, conversion between
//! protobuf and the store's types, and the streaming loop. Ordering and
//! gap-freedom come from the event store.

mod error;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tend_api::events::v1 as pb;
use tend_api::events::v1::event_stream_service_server::{
    EventStreamService, EventStreamServiceServer,
};
use tend_event_store::{Delivery, Direction, EventStore, Filter, RecordedEvent, StreamId};
use tend_privacy::Recipients;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use error::Error;
use tend_service_kit::Pseudonymous;

/// Messages buffered per subscription between the store and the socket.
const SUBSCRIPTION_BUFFER: usize = 64;
const MAX_FILTER_VALUES: usize = 100;
/// How long a subscription waits for its client to take the shutdown notice.
const SHUTDOWN_NOTICE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The service. `shutdown` ends every open subscription when cancelled.
#[derive(Debug, Clone)]
pub struct EventStreamApi {
    store: EventStore,
    recipients: Recipients,
    shutdown: CancellationToken,
    open: Arc<OpenSubscriptions>,
}

/// The subscriptions open on this server and how far each has read: what
/// the subscription lag metric observes.
#[derive(Debug, Default)]
pub struct OpenSubscriptions {
    positions: Mutex<HashMap<u64, Arc<AtomicU64>>>,
    next_id: AtomicU64,
}

impl OpenSubscriptions {
    fn open(self: &Arc<Self>, after: u64) -> Open {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let position = Arc::new(AtomicU64::new(after));
        self.lock().insert(id, position.clone());
        tend_telemetry::instruments().subscriptions.add(1, &[]);
        Open {
            id,
            position,
            registry: self.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<AtomicU64>>> {
        // The map is consistent after any panic: entries are whole.
        self.positions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// The position the furthest-behind open subscription has read to.
    pub fn oldest_position(&self) -> Option<u64> {
        self.lock()
            .values()
            .map(|p| p.load(Ordering::Relaxed))
            .min()
    }
}

/// One open subscription; closing it is dropping it.
struct Open {
    id: u64,
    position: Arc<AtomicU64>,
    registry: Arc<OpenSubscriptions>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
        tend_telemetry::instruments().subscriptions.add(-1, &[]);
    }
}

impl EventStreamApi {
    pub fn new(store: EventStore, recipients: Recipients, shutdown: CancellationToken) -> Self {
        Self {
            store,
            recipients,
            shutdown,
            open: Arc::default(),
        }
    }

    /// The open subscriptions, for metrics.
    pub fn open_subscriptions(&self) -> Arc<OpenSubscriptions> {
        self.open.clone()
    }

    pub fn into_server(self) -> EventStreamServiceServer<Self> {
        EventStreamServiceServer::new(self)
    }
}

type SubscribeStream = ReceiverStream<Result<pb::SubscribeResponse, Status>>;

#[tonic::async_trait]
impl EventStreamService for EventStreamApi {
    type SubscribeStream = SubscribeStream;

    #[tracing::instrument(skip_all, fields(rpc = "Subscribe", after = request.get_ref().after_position))]
    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let tenant = tend_auth::tenant_of(&request)?;
        let request = request.into_inner();
        let mut filter = Filter {
            tenant: Some(tenant.clone()),
            categories: filter_values("categories", request.categories)?,
            event_types: filter_values("event_types", request.event_types)?,
        };
        let mut pseudonymous = match request.pseudonymous {
            None => None,
            Some(p) => {
                let key = (!p.key_id.is_empty()).then_some(p.key_id.as_str());
                let pseudonyms = self
                    .recipients
                    .pseudonymizer(tenant.as_str(), &p.recipient_id, key)
                    .ok_or(Error::UnknownRecipient)?;
                Some(Pseudonymous::new(
                    self.store.clone(),
                    tenant,
                    pseudonyms,
                    p.relative_days,
                ))
            }
        };
        // A pseudonymous stream follows every participant stream, whatever
        // the consumer's filter, to know who shares; it filters afterwards.
        let wanted = pseudonymous.is_some().then(|| {
            (
                std::mem::take(&mut filter.categories),
                std::mem::take(&mut filter.event_types),
            )
        });
        let mut subscription = self.store.subscribe(filter, request.after_position);
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
        let shutdown = self.shutdown.clone();
        let open = self.open.open(request.after_position);
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = shutdown.cancelled() => Err(shutting_down()),
                    _ = tx.closed() => return,
                    delivery = subscription.next() => match delivery {
                        Ok(Delivery::Event(event)) => match &mut pseudonymous {
                            None => Ok(event_message(to_proto(event))),
                            Some(p) => {
                                let position = event.position;
                                let kept = wanted.as_ref().is_none_or(|(categories, types)| {
                                    (categories.is_empty()
                                        || categories.iter().any(|c| c == event.stream_id.category()))
                                        && (types.is_empty() || types.contains(&event.event_type))
                                });
                                match p.transform(event).await {
                                    Ok(Some(event)) if kept => {
                                        let mut out = to_proto(event);
                                        out.pseudonym_key_id = p.key_id().to_owned();
                                        if p.relative_days() {
                                            out.recorded_at = None;
                                        }
                                        Ok(event_message(out))
                                    }
                                    Ok(_) => Ok(pb::SubscribeResponse {
                                        message: Some(pb::subscribe_response::Message::Checkpoint(
                                            pb::Checkpoint { position },
                                        )),
                                    }),
                                    Err(e) => Err(Status::from(Error::from(e))),
                                }
                            }
                        },
                        Ok(Delivery::Checkpoint(position)) => Ok(pb::SubscribeResponse {
                            message: Some(pb::subscribe_response::Message::Checkpoint(
                                pb::Checkpoint { position },
                            )),
                        }),
                        Err(tend_event_store::Error::ShuttingDown) => Err(shutting_down()),
                        Err(e) => Err(Status::from(Error::Store(e))),
                    },
                };
                open.position
                    .store(subscription.position(), Ordering::Relaxed);
                let last = message.is_err();
                // Waiting here is the backpressure on a slow client; the
                // subscription reads no further until there is room.
                let sent = tokio::select! {
                    sent = tx.send(message) => sent.is_ok(),
                    _ = shutdown.cancelled() => {
                        // Wait (briefly) for room, so the client is told why
                        // the stream ends rather than seeing a clean end.
                        let _ = tokio::time::timeout(
                            SHUTDOWN_NOTICE_WAIT,
                            tx.send(Err(shutting_down())),
                        )
                        .await;
                        false
                    }
                };
                if last || !sent {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ReadStream"))]
    async fn read_stream(
        &self,
        request: Request<pb::ReadStreamRequest>,
    ) -> Result<Response<pb::ReadStreamResponse>, Status> {
        let tenant = tend_auth::tenant_of(&request)?;
        let request = request.into_inner();
        // The store names the field `stream_id`, as the request does.
        let stream = StreamId::new(request.stream_id).map_err(Error::from)?;
        let direction = match pb::ReadDirection::try_from(request.direction) {
            Ok(pb::ReadDirection::Unspecified | pb::ReadDirection::Forwards) => Direction::Forwards,
            Ok(pb::ReadDirection::Backwards) => Direction::Backwards,
            Err(_) => return Err(Error::invalid("direction", "unknown direction").into()),
        };
        let max = match request.max_count {
            0 => 100,
            n @ 1..=1000 => n as usize,
            _ => return Err(Error::invalid("max_count", "must be at most 1000").into()),
        };
        let slice = self
            .store
            .read_stream(&tenant, &stream, direction, request.from_version, max)
            .await
            .map_err(Error::from)?;
        let Some(stream_version) = slice.stream_version else {
            return Err(Error::StreamNotFound.into());
        };
        Ok(Response::new(pb::ReadStreamResponse {
            events: slice.events.into_iter().map(to_proto).collect(),
            stream_version,
            end_of_stream: slice.end_of_stream,
        }))
    }
}

fn event_message(event: pb::RecordedEvent) -> pb::SubscribeResponse {
    pb::SubscribeResponse {
        message: Some(pb::subscribe_response::Message::Event(event)),
    }
}

fn shutting_down() -> Status {
    Status::unavailable("the server is shutting down: resume after the last position received")
}

fn filter_values(field: &'static str, values: Vec<String>) -> Result<Vec<String>, Error> {
    if values.len() > MAX_FILTER_VALUES {
        return Err(Error::invalid(field, "at most 100 values"));
    }
    if values.iter().any(|v| v.is_empty() || v.len() > 200) {
        return Err(Error::invalid(field, "values must be 1 to 200 bytes"));
    }
    Ok(values)
}

fn to_proto(e: RecordedEvent) -> pb::RecordedEvent {
    let metadata = pb::EventMetadata {
        correlation_id: e
            .metadata
            .correlation_id
            .map(|u| u.to_string())
            .unwrap_or_default(),
        causation_id: e
            .metadata
            .causation_id
            .map(|u| u.to_string())
            .unwrap_or_default(),
        actor: e.metadata.actor.unwrap_or_default(),
        traceparent: e.metadata.traceparent.unwrap_or_default(),
        tracestate: e.metadata.tracestate.unwrap_or_default(),
    };
    pb::RecordedEvent {
        position: e.position,
        stream_id: e.stream_id.as_str().to_string(),
        stream_version: e.stream_version,
        event_id: e.id.to_string(),
        event_type: e.event_type,
        schema_version: e.schema_version,
        payload_json: e.payload.to_string(),
        metadata: Some(metadata),
        pseudonym_key_id: String::new(),
        recorded_at: Some(prost_types::Timestamp {
            seconds: e.recorded_at.timestamp(),
            nanos: e.recorded_at.timestamp_subsec_nanos() as i32,
        }),
    }
}
