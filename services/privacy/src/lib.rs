//! `tend.privacy.v1.PrivacyService`: consent documents as versioned data,
//! consent given and withdrawn as events in the participant's stream, the
//! erasure of a person, and the tenant's recipients of pseudonymous data.
//!
//! An adapter: consent rules are `tend_domain::consent` and the participant
//! aggregate's (`tend_domain::enrollment`), erasure is
//! `tend_service_kit::Identities::erase`, keys and pseudonyms are
//! `tend_privacy`'s. It logs no reference, evidence hash or pseudonym key.

mod api;
mod convert;
mod error;

pub use api::PrivacyApi;
pub use error::Error;
