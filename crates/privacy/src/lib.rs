//! Who a participant is, kept out of the event log.
//!
//! Events, projections and every table name a participant by an opaque id
//! (a random UUID). Their partner's reference is stored only in the
//! directory (`participants` table): sealed with the participant's own
//! data key, and as a keyed hash for lookups by reference. Erasure destroys
//! the data key and the hash, after which no reference, note or other free
//! text of theirs can be recovered from the database, and what is left in
//! the log are numbers and opaque ids.
//!
//! - `keys`: master keys (configuration), data keys, sealing;
//! - `Directory`: reference to id and back, data keys, erasure, rotation;
//! - `legacy`: participants written before opaque ids (a name-based UUID of
//!   tenant and reference, and the reference inside `ParticipantEnrolled`);
//! - `Recipients`: per-recipient pseudonym keys and the pseudonym function.

mod directory;
mod error;
pub mod keys;
mod legacy;
mod recipients;

pub use directory::{Directory, ReadKey, Receipt, Rotated};
pub use error::Error;
pub use keys::{DataKey, MasterKeys, SealedSecret};
pub use keys::{open as open_note, seal as seal_note};
pub use legacy::Upgraded;
pub use legacy::legacy_participant_id;
pub use recipients::{Pseudonymizer, Recipients};
