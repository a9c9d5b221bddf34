//! The kit every Tend service is built on, so that a new service is a
//! domain module, a proto and a thin `api.rs`, with nothing copied:
//!
//! - `Clock`: where "now" comes from (the system, or a test's hand);
//! - `instants`: one conversion of an instant to protobuf and `timestamptz`;
//! - `streams`: the names of every stream category and how ids become
//!   stream names;
//! - `execute`: load a stream, fold it with a `Decider`, decide, append at
//!   the version read, and decide again under an explicit `Retry` policy;
//! - `Identities`: the partner's reference of a call resolved to the
//!   participant's opaque id (and back), and erasure of the person;
//! - `Participants` and `Schedules`: participants' enrollments, protocols
//!   and occurrences, the one read API shared between services;
//! - `Error` and `status`: the failures services share and the one mapping
//!   of them to gRPC statuses; each service keeps its own error enum (with
//!   a `Kit` variant, see `service_error!`) and its own words.
//!
//! It is not a service: it registers no gRPC handler and runs no task.

mod clock;
mod error;
pub mod execute;
mod identities;
pub mod instants;
mod participants;
pub mod pseudonymous;
mod schedules;
pub mod status;
pub mod streams;

pub use clock::{Clock, ManualClock, OffsetClock, SystemClock};
pub use error::{Conflicts, Error};
pub use execute::{Executed, Retry};
pub use identities::{Erasure, Identities, Subject};
pub use participants::{How, Loaded, Participants};
pub use pseudonymous::Pseudonymous;
pub use schedules::{OccurrenceDetail, OccurrenceFacts, Schedules};

// For `service_error!`, so that a service need not name these crates.
#[doc(hidden)]
pub use tend_domain as __domain;
#[doc(hidden)]
pub use tend_event_store as __store;
#[doc(hidden)]
pub use tend_privacy as __privacy;
