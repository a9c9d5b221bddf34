//! Tend's domain: protocols, enrollments and their dated schedules.
//!
//! Pure and synchronous, in the Decider shape: `decide(&state, command)`
//! returns the events a command causes (or why it is refused) and
//! `evolve(state, &event)` folds an event into state. Everything from
//! outside (the current instant, ids, the protocol definitions a command
//! needs) arrives inside the command.
//!
//! It is not a storage or transport layer: it does no IO, never reads the
//! clock, and knows nothing of PostgreSQL, gRPC or protobuf. Time-zone rules
//! come from the IANA database bundled into the binary.

/// `DomainEvent` for an enum of event bodies: each variant's stored type
/// name, schema version 1.
/// A variant may say `=> "Name" v2 (1..=2)`: it is written at schema
/// version 2 and read from versions 1 and 2 (one body type reads them all;
/// a field a later version dropped is ignored when an earlier body has it).
macro_rules! event_codec {
    (for $event:ident { $($variant:ident => $name:literal $(v $version:literal ($($read:tt)*))?),* $(,)? }) => {
        impl $crate::DomainEvent for $event {
            fn event_type(&self) -> &'static str {
                match self { $(Self::$variant(_) => $name,)* }
            }

            fn schema_version(&self) -> u32 {
                match self { $(Self::$variant(_) => event_codec!(@version $($version)?),)* }
            }

            fn to_payload(&self) -> serde_json::Value {
                match self { $(Self::$variant(e) => $crate::to_payload(e),)* }
            }

            fn from_stored(
                event_type: &str,
                schema_version: u32,
                payload: &serde_json::Value,
            ) -> Result<Self, $crate::DecodeError> {
                match (event_type, schema_version) {
                    $(($name, event_codec!(@reads $($($read)*)?)) => Ok(Self::$variant($crate::decode(event_type, payload)?)),)*
                    _ => Err($crate::DecodeError::unknown(event_type, schema_version)),
                }
            }
        }

        impl $event {
            /// Every type of this enum, for the event catalogue.
            pub fn catalogue() -> Vec<$crate::catalogue::EventType> {
                vec![$($crate::catalogue::EventType {
                    name: $name,
                    version: event_codec!(@version $($version)?),
                    reads: (1..=event_codec!(@version $($version)?))
                        .filter(|v| matches!(*v, event_codec!(@reads $($($read)*)?)))
                        .collect(),
                    fields: $crate::catalogue::fields_of(Self::$variant),
                },)*]
            }
        }
    };
    (@version) => { 1 };
    (@version $v:literal) => { $v };
    (@reads) => { 1 };
    (@reads $($r:tt)+) => { $($r)+ };
}

/// The `Decider` of a module whose `decide(&state, command)` and
/// `evolve(state, &event)` are its own plain functions.
macro_rules! decider {
    ($(#[$meta:meta])* $name:ident: $state:ty, $command:ty => $event:ty) => {
        $(#[$meta])*
        #[derive(Debug)]
        pub enum $name {}

        impl $crate::Decider for $name {
            type State = $state;
            type Command = $command;
            type Event = $event;

            fn decide(state: &$state, command: $command) -> Result<Vec<$event>, $crate::Error> {
                decide(state, command)
            }

            fn evolve(state: $state, event: &$event) -> $state {
                evolve(state, event)
            }
        }
    };
}

pub mod arc;
pub mod assessment;
pub mod catalogue;
pub mod consent;
mod decider;
pub mod enrollment;
mod error;
pub mod practice;
pub mod protocol;
pub mod schedule;
pub mod time;
pub mod webhook;

pub use decider::Decider;
pub use error::Error;

/// An event with the type name and schema version stored beside its body.
/// Reading an older schema version is the job of `from_stored` (the
/// upcaster); a stored body is never edited in place.
pub trait DomainEvent: Sized {
    /// The stored type name, e.g. `ParticipantEnrolled`.
    fn event_type(&self) -> &'static str;
    /// The schema version of the body `to_payload` writes.
    fn schema_version(&self) -> u32 {
        1
    }
    fn to_payload(&self) -> serde_json::Value;
    fn from_stored(
        event_type: &str,
        schema_version: u32,
        payload: &serde_json::Value,
    ) -> Result<Self, DecodeError>;
}

/// A stored event this build cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read stored event {event_type} v{schema_version}: {reason}")]
pub struct DecodeError {
    pub event_type: String,
    pub schema_version: u32,
    pub reason: String,
}

impl DecodeError {
    fn unknown(event_type: &str, schema_version: u32) -> Self {
        Self {
            event_type: event_type.to_owned(),
            schema_version,
            reason: "unknown type or schema version".to_owned(),
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    event_type: &str,
    payload: &serde_json::Value,
) -> Result<T, DecodeError> {
    T::deserialize(payload).map_err(|e| DecodeError {
        event_type: event_type.to_owned(),
        schema_version: 1,
        reason: e.to_string(),
    })
}

fn to_payload<T: serde::Serialize>(body: &T) -> serde_json::Value {
    // Event bodies are plain structs of strings, numbers and timestamps:
    // serialising them cannot fail.
    serde_json::to_value(body).unwrap_or(serde_json::Value::Null)
}
