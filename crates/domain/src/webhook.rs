//! Webhook endpoints: where a tenant wants its events delivered, which of
//! them, and whether deliveries are on. Each endpoint is a stream of its
//! own (`webhook-<endpoint id>`); the deliverer folds these to know what to
//! send where, and writes `WebhookEndpointDisabled` itself when an endpoint
//! stops answering.
//!
//! The URL arrives checked (scheme, host, addresses: the shell's policy);
//! the signing secret is never here: it is kept sealed outside the log.

use std::collections::BTreeSet;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Error;

/// At most this many categories and this many event types per endpoint.
pub const MAX_FILTER_VALUES: usize = 100;

/// Why an endpoint stopped receiving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisabledReason {
    /// The partner asked (DisableEndpoint).
    PartnerRequest,
    /// Deliveries kept failing for the whole retry period.
    RetriesExhausted,
    /// The receiver answered 410 Gone: it wants no more.
    Gone,
}

impl DisabledReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PartnerRequest => "partner_request",
            Self::RetriesExhausted => "retries_exhausted",
            Self::Gone => "gone",
        }
    }
}

/// What an endpoint receives: events of these categories and types (empty:
/// all), pseudonymous for a recipient when one is named.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Selection {
    pub categories: BTreeSet<String>,
    pub event_types: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEndpointRegistered {
    pub endpoint_id: Uuid,
    pub url: String,
    #[serde(flatten)]
    pub selection: Selection,
    /// Deliveries start after this log position: the head when registered.
    pub after_position: u64,
    pub registered_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEndpointDisabled {
    pub endpoint_id: Uuid,
    pub reason: DisabledReason,
    /// The position whose delivery failed, when a failure disabled it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_position: Option<u64>,
    /// The receiver's last HTTP status, when it answered at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    pub disabled_at: Timestamp,
}

/// Deliveries on again, from `after_position` (the next event after it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEndpointEnabled {
    pub endpoint_id: Uuid,
    pub after_position: u64,
    pub enabled_at: Timestamp,
}

/// Deliver again every matching event after `after_position`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookRedeliveryRequested {
    pub endpoint_id: Uuid,
    pub after_position: u64,
    pub requested_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEndpointRemoved {
    pub endpoint_id: Uuid,
    pub removed_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Registered(WebhookEndpointRegistered),
    Disabled(WebhookEndpointDisabled),
    Enabled(WebhookEndpointEnabled),
    RedeliveryRequested(WebhookRedeliveryRequested),
    Removed(WebhookEndpointRemoved),
}

event_codec! {
    for Event {
        Registered => "WebhookEndpointRegistered",
        Disabled => "WebhookEndpointDisabled",
        Enabled => "WebhookEndpointEnabled",
        RedeliveryRequested => "WebhookRedeliveryRequested",
        Removed => "WebhookEndpointRemoved",
    }
}

impl Event {
    pub fn endpoint_id(&self) -> Uuid {
        match self {
            Self::Registered(e) => e.endpoint_id,
            Self::Disabled(e) => e.endpoint_id,
            Self::Enabled(e) => e.endpoint_id,
            Self::RedeliveryRequested(e) => e.endpoint_id,
            Self::Removed(e) => e.endpoint_id,
        }
    }
}

/// The event catalogue's webhook types: the flattened selection included.
pub fn catalogue() -> Vec<crate::catalogue::EventType> {
    let selection = crate::catalogue::fields::<Selection>();
    let mut types = Event::catalogue();
    for t in &mut types {
        if t.name == "WebhookEndpointRegistered" {
            // serde hands a flattened struct's fields to no one.
            t.fields = ["endpoint_id", "url"]
                .into_iter()
                .chain(selection.iter().copied())
                .chain(["after_position", "registered_at"])
                .collect();
        }
    }
    types
}

/// Whether deliveries are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Active,
    Disabled {
        reason: DisabledReason,
        at: Timestamp,
    },
}

/// One endpoint, folded from its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub id: Uuid,
    pub url: String,
    pub selection: Selection,
    pub registered_at: Timestamp,
    pub status: Status,
    /// Where deliveries (re)start: the registration's, an enabling's or a
    /// redelivery's position, the latest of these events.
    pub restart: Restart,
}

/// The latest instruction on where deliveries continue from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart {
    /// The log position of the event that said so: each is obeyed once.
    pub at_event: u64,
    pub after_position: u64,
}

/// An endpoint's stream, folded: `None` before registration; removed
/// endpoints are kept, marked, so their id is never reused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub endpoint: Option<Endpoint>,
    pub removed: bool,
}

#[derive(Debug, Clone)]
pub enum Command {
    Register {
        endpoint_id: Uuid,
        url: String,
        selection: Selection,
        head: u64,
        now: Timestamp,
    },
    Disable {
        reason: DisabledReason,
        failed_position: Option<u64>,
        last_status: Option<u16>,
        now: Timestamp,
    },
    /// `after_position`: `None` resumes after what was last delivered
    /// (`delivered`, which the deliverer knows).
    Enable {
        after_position: Option<u64>,
        delivered: u64,
        now: Timestamp,
    },
    Redeliver {
        after_position: u64,
        now: Timestamp,
    },
    Remove {
        now: Timestamp,
    },
}

/// The values a category or type filter may hold: what stream categories
/// and event type names are made of.
pub fn validate_selection(selection: &Selection) -> Result<(), Error> {
    for (field, values) in [
        ("categories", &selection.categories),
        ("event_types", &selection.event_types),
    ] {
        if values.len() > MAX_FILTER_VALUES {
            return Err(Error::invalid(field, "at most 100 values"));
        }
        let bad = values.iter().any(|v| {
            v.is_empty()
                || v.len() > 100
                || !v
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        });
        if bad {
            return Err(Error::invalid(
                field,
                "values must be 1 to 100 characters of letters, digits, '_' or '.'",
            ));
        }
    }
    if let Some(r) = &selection.recipient_id
        && r.is_empty()
    {
        return Err(Error::invalid("recipient_id", "must not be empty when set"));
    }
    Ok(())
}

pub fn decide(state: &State, command: Command) -> Result<Vec<Event>, Error> {
    if state.removed {
        return match command {
            Command::Remove { .. } => Ok(vec![]),
            Command::Register { .. } => Err(Error::already_exists(
                "request_id",
                "was used for an endpoint since removed",
            )),
            _ => Err(Error::not_found("endpoint")),
        };
    }
    match (command, &state.endpoint) {
        (
            Command::Register {
                endpoint_id,
                url,
                selection,
                head,
                now,
            },
            existing,
        ) => {
            validate_selection(&selection)?;
            match existing {
                Some(e) if e.url == url && e.selection == selection => Ok(vec![]),
                Some(_) => Err(Error::already_exists(
                    "request_id",
                    "was already used for a different endpoint",
                )),
                None => Ok(vec![Event::Registered(WebhookEndpointRegistered {
                    endpoint_id,
                    url,
                    selection,
                    after_position: head,
                    registered_at: now,
                })]),
            }
        }
        (_, None) => Err(Error::not_found("endpoint")),
        (
            Command::Disable {
                reason,
                failed_position,
                last_status,
                now,
            },
            Some(e),
        ) => match e.status {
            Status::Disabled { .. } => Ok(vec![]),
            Status::Active => Ok(vec![Event::Disabled(WebhookEndpointDisabled {
                endpoint_id: e.id,
                reason,
                failed_position,
                last_status,
                disabled_at: now,
            })]),
        },
        (
            Command::Enable {
                after_position,
                delivered,
                now,
            },
            Some(e),
        ) => match (e.status, after_position) {
            (Status::Active, None) => Ok(vec![]),
            (_, position) => Ok(vec![Event::Enabled(WebhookEndpointEnabled {
                endpoint_id: e.id,
                after_position: position.unwrap_or(delivered),
                enabled_at: now,
            })]),
        },
        (
            Command::Redeliver {
                after_position,
                now,
            },
            Some(e),
        ) => {
            if let Status::Disabled { .. } = e.status {
                return Err(Error::refused(
                    "endpoint_id",
                    "the endpoint is disabled: enable it from a position instead (EnableEndpoint)",
                ));
            }
            Ok(vec![Event::RedeliveryRequested(
                WebhookRedeliveryRequested {
                    endpoint_id: e.id,
                    after_position,
                    requested_at: now,
                },
            )])
        }
        (Command::Remove { now }, Some(e)) => Ok(vec![Event::Removed(WebhookEndpointRemoved {
            endpoint_id: e.id,
            removed_at: now,
        })]),
    }
}

/// Folds one event; `position` is the event's log position (a restart
/// instruction is identified by it).
pub fn apply(mut state: State, event: &Event, position: u64) -> State {
    match event {
        Event::Registered(e) => {
            state.endpoint.get_or_insert_with(|| Endpoint {
                id: e.endpoint_id,
                url: e.url.clone(),
                selection: e.selection.clone(),
                registered_at: e.registered_at,
                status: Status::Active,
                restart: Restart {
                    at_event: position,
                    after_position: e.after_position,
                },
            });
        }
        Event::Disabled(e) => {
            if let Some(endpoint) = &mut state.endpoint {
                endpoint.status = Status::Disabled {
                    reason: e.reason,
                    at: e.disabled_at,
                };
            }
        }
        Event::Enabled(e) => {
            if let Some(endpoint) = &mut state.endpoint {
                endpoint.status = Status::Active;
                endpoint.restart = Restart {
                    at_event: position,
                    after_position: e.after_position,
                };
            }
        }
        Event::RedeliveryRequested(e) => {
            if let Some(endpoint) = &mut state.endpoint {
                endpoint.restart = Restart {
                    at_event: position,
                    after_position: e.after_position,
                };
            }
        }
        Event::Removed(_) => state.removed = true,
    }
    state
}

/// `apply` without a position, for deciding: restarts are not compared
/// there.
pub fn evolve(state: State, event: &Event) -> State {
    apply(state, event, 0)
}

decider! {
    /// A webhook endpoint as a decider.
    Endpoints: State, Command => Event
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decider::spec::given;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn register(url: &str) -> Command {
        Command::Register {
            endpoint_id: Uuid::nil(),
            url: url.into(),
            selection: Selection::default(),
            head: 40,
            now: at("2026-06-01T00:00:00Z"),
        }
    }

    #[test]
    fn registering_starts_after_the_head_and_a_retry_is_a_no_op() {
        let events = given::<Endpoints>(&[])
            .when(register("https://a.example/hook"))
            .outcome
            .unwrap();
        assert!(matches!(&events[..], [Event::Registered(e)] if e.after_position == 40));
        let registered = given::<Endpoints>(&events);
        assert_eq!(
            registered.when(register("https://a.example/hook")).outcome,
            Ok(vec![])
        );
        assert!(matches!(
            registered.when(register("https://b.example/hook")).outcome,
            Err(Error::AlreadyExists { .. })
        ));
    }

    #[test]
    fn a_disabled_endpoint_is_enabled_from_where_it_stopped_or_a_position() {
        let registered = given::<Endpoints>(&[]).and(register("https://a.example/hook"));
        let disabled = registered.clone().and(Command::Disable {
            reason: DisabledReason::RetriesExhausted,
            failed_position: Some(57),
            last_status: Some(500),
            now: at("2026-06-02T00:00:00Z"),
        });
        assert!(matches!(
            disabled.state.endpoint.as_ref().unwrap().status,
            Status::Disabled {
                reason: DisabledReason::RetriesExhausted,
                ..
            }
        ));
        let resumed = disabled
            .when(Command::Enable {
                after_position: None,
                delivered: 56,
                now: at("2026-06-03T00:00:00Z"),
            })
            .outcome
            .unwrap();
        assert!(matches!(&resumed[..], [Event::Enabled(e)] if e.after_position == 56));
        let redeliver = disabled.when(Command::Redeliver {
            after_position: 10,
            now: at("2026-06-03T00:00:00Z"),
        });
        assert!(matches!(redeliver.outcome, Err(Error::Refused { .. })));
        // Enabling an active endpoint without a position changes nothing.
        assert_eq!(
            registered
                .when(Command::Enable {
                    after_position: None,
                    delivered: 3,
                    now: at("2026-06-03T00:00:00Z"),
                })
                .outcome,
            Ok(vec![])
        );
    }

    #[test]
    fn filters_hold_names_only() {
        let mut selection = Selection::default();
        selection.categories.insert("practice".into());
        assert!(validate_selection(&selection).is_ok());
        selection.event_types.insert("Practice Logged".into());
        assert!(matches!(
            validate_selection(&selection),
            Err(Error::Invalid { field, .. }) if field == "event_types"
        ));
    }

    #[test]
    fn a_removed_endpoint_is_gone_for_good() {
        let removed = given::<Endpoints>(&[])
            .and(register("https://a.example/hook"))
            .and(Command::Remove {
                now: at("2026-06-02T00:00:00Z"),
            });
        assert!(removed.state.removed);
        assert!(matches!(
            removed.when(register("https://a.example/hook")).outcome,
            Err(Error::AlreadyExists { .. })
        ));
        assert!(matches!(
            removed
                .when(Command::Redeliver {
                    after_position: 1,
                    now: at("2026-06-03T00:00:00Z")
                })
                .outcome,
            Err(Error::NotFound { .. })
        ));
    }
}
