//! Webhooks: a tenant's events POSTed to the endpoints it registers,
//! signed as the Standard Webhooks specification says, at least once and
//! in log order per endpoint, never into the operator's private network.
//!
//! - `api`: the gRPC `WebhookService` (endpoints as event-sourced streams,
//!   `tend_domain::webhook`);
//! - `deliver`: the deliverer one server at a time runs (by lease);
//! - `target`: where webhooks may go (the address policy);
//! - `sign`: the signatures;
//! - `tables`: the sealed secrets and where deliveries stand.

mod api;
mod deliver;
mod error;
mod sign;
mod tables;
pub mod target;

pub use api::WebhookApi;
pub use deliver::{Deliverer, DeliveryOptions, LEASE, client};
pub use error::Error;
pub use target::Targets;
