//! The store's vocabulary: who writes, where, what, and what was recorded.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Error;

/// The partner organisation that owns data. Every read and write is scoped
/// to exactly one tenant; it comes from the caller's credential.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// Lower-case ASCII letters, digits, `-` and `_`; 1 to 64 characters.
    pub fn new(id: impl Into<String>) -> Result<Self, Error> {
        let id = id.into();
        let valid = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if valid {
            Ok(Self(id))
        } else {
            Err(Error::invalid(
                "tenant",
                "must be 1 to 64 characters of a-z, 0-9, '-' or '_'",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A stream: `<category>-<id>`, for example `practice-5f0c…`. The category
/// (before the first `-`) is what subscribers filter on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(String);

impl StreamId {
    pub const MAX_LEN: usize = 200;

    pub fn new(id: impl Into<String>) -> Result<Self, Error> {
        let id = id.into();
        let Some((category, rest)) = id.split_once('-') else {
            return Err(Error::invalid(
                "stream_id",
                "must be <category>-<id>, with a '-' after the category",
            ));
        };
        if category.is_empty() || rest.is_empty() {
            return Err(Error::invalid(
                "stream_id",
                "category and id must both be non-empty",
            ));
        }
        if id.len() > Self::MAX_LEN {
            return Err(Error::invalid("stream_id", "must be at most 200 bytes"));
        }
        if !category
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(Error::invalid(
                "stream_id",
                "category must be a-z, 0-9 or '_'",
            ));
        }
        if id.chars().any(char::is_control) {
            return Err(Error::invalid(
                "stream_id",
                "must not contain control characters",
            ));
        }
        Ok(Self(id))
    }

    /// Builds `<category>-<uuid>`; the category must be valid.
    pub fn for_entity(category: &str, id: Uuid) -> Result<Self, Error> {
        Self::new(format!("{category}-{id}"))
    }

    pub fn category(&self) -> &str {
        self.0.split_once('-').map_or(self.0.as_str(), |(c, _)| c)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the writer believes the stream's current version to be. Versions
/// count from 0: a stream with one event is at version 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the stream holds.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have exactly this version.
    Exact(u64),
}

impl ExpectedVersion {
    /// The stream exactly as it was read: `version` is its last event's, or
    /// `None` when it did not exist. For decide-then-append loops.
    pub fn as_read(version: Option<u64>) -> Self {
        version.map_or(Self::NoStream, Self::Exact)
    }

    pub(crate) fn admits(self, current: Option<u64>) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => current.is_none(),
            Self::Exact(v) => current == Some(v),
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::NoStream => f.write_str("no stream"),
            Self::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// Context stored beside every event. It never holds free text about a
/// participant: ids and trace context only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// A pseudonymous reference to who acted (a partner's user or system id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// W3C trace context of the call that wrote the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

/// An event to append. The id is the writer's: appending the same id again
/// is a retry, answered from what is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub payload: serde_json::Value,
    pub metadata: Metadata,
}

impl NewEvent {
    /// Serialises a typed event body.
    pub fn new<T: Serialize>(
        id: Uuid,
        event_type: impl Into<String>,
        schema_version: u32,
        payload: &T,
    ) -> Result<Self, Error> {
        let payload = serde_json::to_value(payload)
            .map_err(|e| Error::invalid("payload", format!("cannot be serialised: {e}")))?;
        Ok(Self {
            id,
            event_type: event_type.into(),
            schema_version,
            payload,
            metadata: Metadata::default(),
        })
    }

    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        let t = &self.event_type;
        if t.is_empty()
            || t.len() > 100
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        {
            return Err(Error::invalid(
                "event_type",
                "must be 1 to 100 characters of A-Z, a-z, 0-9, '_' or '.'",
            ));
        }
        if self.schema_version == 0 || self.schema_version > i32::MAX as u32 {
            return Err(Error::invalid("schema_version", "must be at least 1"));
        }
        let m = &self.metadata;
        for value in [&m.actor, &m.traceparent, &m.tracestate]
            .into_iter()
            .flatten()
        {
            if value.len() > 512 || value.chars().any(char::is_control) {
                return Err(Error::invalid(
                    "metadata",
                    "actor and trace context must be at most 512 bytes, without control characters",
                ));
            }
        }
        if contains_nul(&self.payload) {
            // PostgreSQL's jsonb cannot hold U+0000: refuse it at the door,
            // so that every stored payload can be read as jsonb later.
            return Err(Error::invalid("payload", "must not contain U+0000"));
        }
        Ok(())
    }
}

fn contains_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(contains_nul),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// Position in the global log: strictly increasing in commit order.
    pub position: u64,
    pub tenant: TenantId,
    pub stream_id: StreamId,
    pub stream_version: u64,
    pub id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub payload: serde_json::Value,
    pub metadata: Metadata,
    pub recorded_at: DateTime<Utc>,
}

impl RecordedEvent {
    /// Deserialises the body into a typed event.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.payload)
    }
}

/// Where an append landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Global position of each event, in the order given.
    pub positions: Vec<u64>,
    /// The stream's version after the append (that of its last event).
    pub stream_version: u64,
    /// True when every event was already stored by an earlier append with
    /// the same ids: nothing was written, and the original positions are
    /// returned.
    pub already_stored: bool,
}

/// Which events a reader of the global log wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// `None` reads every tenant: for trusted internal consumers such as
    /// projections, never for a partner's call.
    pub tenant: Option<TenantId>,
    /// Stream categories; empty means all.
    pub categories: Vec<String>,
    /// Event types; empty means all.
    pub event_types: Vec<String>,
}

impl Filter {
    pub fn tenant(tenant: TenantId) -> Self {
        Self {
            tenant: Some(tenant),
            ..Self::default()
        }
    }
}

/// Direction of a stream read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forwards,
    Backwards,
}

/// A page of one stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSlice {
    pub events: Vec<RecordedEvent>,
    /// The stream's current version; `None` when it has no events.
    pub stream_version: Option<u64>,
    /// No further event lies in the direction read.
    pub end_of_stream: bool,
}

/// A page of the global log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogPage {
    pub events: Vec<RecordedEvent>,
    /// Every position up to here has been returned or filtered out; a
    /// reader continues after it.
    pub scanned_through: u64,
}

/// The streams that moved in a stretch of the global log, each with the
/// newest version it reached there: what a reader that only needs to know
/// which streams changed reads instead of the events.
#[derive(Debug, Clone, PartialEq)]
pub struct MovedStreams {
    /// In no particular order, each stream once.
    pub streams: Vec<(TenantId, StreamId, u64)>,
    /// Every position up to here has been counted; a reader continues
    /// after it.
    pub scanned_through: u64,
}
