//! `tend.arc.v1.ArcService` and the arc projection behind it.
//!
//! The projection (`projection.rs`) folds each participant's enrollment,
//! practice, assessment and flag events into an [`ArcState`] row per
//! participant, through the machinery in `tend-projections`; after each
//! batch the live runner decides early warnings by the domain's rules and
//! appends them to the participant's `arc-<key>` stream, from which they
//! are folded back like any other event. The service (`api.rs`) reads the
//! active generation only, scoped to the caller's tenant.
//!
//! [`ArcState`]: tend_domain::arc::ArcState

mod api;
mod error;
mod projection;

pub use api::ArcApi;
pub use error::Error;
pub use projection::{ArcProjection, NAME};
