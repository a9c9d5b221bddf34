//! `tend.assessment.v1.AssessmentService`: instruments as versioned data,
//! exact scoring, and change from baseline with the reliable change index.
//!
//! An adapter around `tend_domain::assessment`, which holds every scoring
//! rule: requests become domain commands, the domain decides, events are
//! appended to the participant's assessment stream (`assessment-<key>`)
//! and a tenant's instruments to `instrument-<id>`. It stores no item
//! wording, and logs no answers or scores.

mod api;
mod convert;
mod error;

pub use api::AssessmentApi;
pub use error::Error;
