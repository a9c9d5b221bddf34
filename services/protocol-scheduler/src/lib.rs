//! `tend.scheduler.v1.ProtocolSchedulerService` and the background
//! scheduler that turns the passing of time into due and missed events.
//!
//! An adapter around `tend_domain`: requests are parsed into domain commands,
//! the domain decides, events are appended to the participant's stream.
//! It holds no scheduling rules of its own. Every call is scoped to the
//! caller's tenant; the background worker is the one part that reads every
//! tenant, and it writes only to the stream each event came from.

mod api;
mod clock;
mod convert;
mod error;
pub mod instants;
mod repo;
mod schedules;
mod worker;

pub use api::SchedulerApi;
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::Error;
pub use repo::practice_stream;
pub use schedules::{OccurrenceFacts, Schedules};
pub use worker::{DEFAULT_MISS_GRACE, Round, Worker, WorkerOptions};
