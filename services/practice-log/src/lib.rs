//! `tend.practice.v1.PracticeLogService`: what participants practised, with
//! notes sealed by a key per participant that an erasure request destroys.
//!
//! An adapter around `tend_domain::practice`: requests are parsed into
//! domain commands, the domain decides, events are appended to the
//! participant's practice stream. Linking entries to scheduled occurrences
//! is not done here but by the scheduler's worker, which reads both streams
//! and so can never record a practised occurrence as missed. It holds no
//! practice rules of its own, and no note ever leaves it in the clear
//! except in a reply to the tenant that wrote it.

mod api;
mod convert;
mod error;

pub use api::{PracticeLogApi, PracticeOptions};
pub use error::Error;
