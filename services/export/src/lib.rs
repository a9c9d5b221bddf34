//! `tend.exports.v1.ExportService`: the tenant's data as analysis-ready
//! files for one of its recipients, streamed in chunks.
//!
//! An adapter: what an export holds and how it is made is `tend_export`'s;
//! this builds it in a private temporary directory (deleted when the
//! stream ends) and streams the files. It logs no pseudonym or data.

mod api;
mod error;

pub use api::ExportApi;
pub use error::Error;
