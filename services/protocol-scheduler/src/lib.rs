//! `tend.scheduler.v1.ProtocolSchedulerService` and the background
//! scheduler that turns the passing of time into due and missed events.
//!
//! An adapter around `tend_domain`: requests are parsed into domain commands,
//! the domain decides, events are appended to the participant's stream
//! (through `tend-service-kit`, which also holds the read API other
//! services use, `Schedules`). It holds no scheduling rules of its own.
//! Every call is scoped to the caller's tenant; the background worker is
//! the one part that reads every tenant, and it writes only to the stream
//! each event came from.

mod api;
mod convert;
mod error;
mod worker;

pub use api::SchedulerApi;
pub use error::Error;
pub use worker::{DEFAULT_MISS_GRACE, Round, Worker, WorkerOptions};
