//! The partner's reference a call names, resolved through the directory to
//! the participant's opaque id, and back for replies; and erasure of the
//! person, which both the log and the directory take part in.

use std::collections::HashMap;

use jiff::Timestamp;
use tend_domain::consent::ErasureReason;
use tend_domain::enrollment::{self, validate_participant_ref};
use tend_event_store::{Metadata, TenantId};
use tend_privacy::{Directory, Receipt};
use uuid::Uuid;

use crate::{Error, How, Participants, instants, streams};

/// References and ids; cheap to clone.
#[derive(Debug, Clone)]
pub struct Identities {
    directory: Directory,
    participants: Participants,
}

/// Who a first write is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject {
    pub id: Uuid,
    /// Registered by this call: none of their streams holds anything yet.
    pub new: bool,
}

/// What an erasure did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    pub participant_id: Uuid,
    /// When the participant was erased (by this call or an earlier one).
    pub erased_at: Timestamp,
    /// Whether this call destroyed the key (false: an earlier one had).
    pub keys_destroyed: bool,
}

impl Identities {
    /// The erasure an earlier call with this id made.
    pub async fn erased_before(
        &self,
        tenant: &TenantId,
        erasure_id: Uuid,
    ) -> Result<Option<Erasure>, Error> {
        Ok(self
            .directory
            .receipt(tenant.as_str(), erasure_id)
            .await?
            .map(|(participant_id, at)| Erasure {
                participant_id,
                erased_at: instants::from_chrono(at),
                keys_destroyed: false,
            }))
    }
}

impl Identities {
    pub fn new(participants: Participants, directory: Directory) -> Self {
        Self {
            directory,
            participants,
        }
    }

    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// The participant a reference names: NOT_FOUND when it names none
    /// (never seen, or erased).
    pub async fn find(&self, tenant: &TenantId, participant_ref: &str) -> Result<Uuid, Error> {
        self.lookup(tenant, participant_ref)
            .await?
            .ok_or_else(|| Error::not_found("participant"))
    }

    /// The participant a reference names, if any: for the calls that may
    /// write a new participant's first data, which decide before they
    /// register anyone.
    pub async fn lookup(
        &self,
        tenant: &TenantId,
        participant_ref: &str,
    ) -> Result<Option<Uuid>, Error> {
        validate_participant_ref(participant_ref)?;
        Ok(self
            .directory
            .find(tenant.as_str(), participant_ref)
            .await?)
    }

    /// Registers someone new under a reference that `lookup` just found
    /// unknown (or finds who registered it meanwhile): for a call that has
    /// checked what it writes and is about to write it.
    pub async fn register(&self, tenant: &TenantId, participant_ref: &str) -> Result<Uuid, Error> {
        validate_participant_ref(participant_ref)?;
        Ok(self
            .directory
            .register_or_find(tenant.as_str(), participant_ref)
            .await?
            .0)
    }

    /// The participant a call that may write their first data is about.
    /// `accepted_if_new` decides the call as if the participant were new
    /// (on the empty state, no IO): when it refuses, no one is registered
    /// (the reference leaves no trace) unless the reference names someone
    /// already, whose own state the call is then decided on. When it
    /// accepts, someone new is registered in one round trip.
    pub async fn for_first_write<E: From<Error>>(
        &self,
        tenant: &TenantId,
        participant_ref: &str,
        accepted_if_new: impl FnOnce() -> Result<(), E>,
    ) -> Result<Subject, E> {
        validate_participant_ref(participant_ref).map_err(Error::from)?;
        if let Some(id) = self.directory.cached(tenant.as_str(), participant_ref) {
            return Ok(Subject { id, new: false });
        }
        match accepted_if_new() {
            Ok(()) => {
                let (id, new) = self
                    .directory
                    .register_or_find(tenant.as_str(), participant_ref)
                    .await
                    .map_err(Error::from)?;
                Ok(Subject { id, new })
            }
            Err(refused) => match self.lookup(tenant, participant_ref).await? {
                Some(id) => Ok(Subject { id, new: false }),
                None => Err(refused),
            },
        }
    }

    /// The references of these participants, for replies; the erased are
    /// left out.
    pub async fn references(
        &self,
        tenant: &TenantId,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, String>, Error> {
        Ok(self.directory.references(tenant.as_str(), ids).await?)
    }

    /// Erases the participant. The log first (their enrollments withdrawn,
    /// and who erased them, when and why), then their key, sealed reference
    /// and lookup: if the second step fails, a retry still finds them and
    /// finishes, while the other order could leave an unfindable
    /// participant whose schedule runs on. Idempotent and safe to run
    /// concurrently: the event is written once, the key destroyed once.
    pub async fn erase(
        &self,
        tenant: &TenantId,
        participant: Uuid,
        erasure_id: Uuid,
        reason: ErasureReason,
        now: impl Fn() -> Timestamp,
    ) -> Result<Erasure, Error> {
        let (_, after) = self
            .participants
            .execute_participant_with(
                How::DERIVED_IDS,
                tenant,
                &streams::participant(participant),
                &[],
                || enrollment::Command::Erase {
                    erasure_id,
                    by_tenant: tenant.as_str().to_owned(),
                    reason,
                    now: now(),
                },
                &Metadata::default(),
            )
            .await?;
        // To the microsecond, as the receipt keeps it: a retry answers the
        // same.
        let erased_at = after
            .state
            .erased
            .as_ref()
            .map(|e| instants::from_chrono(instants::to_chrono(e.erased_at)))
            .ok_or_else(|| Error::not_found("participant"))?;
        let keys_destroyed = self
            .directory
            .erase(
                tenant.as_str(),
                participant,
                Receipt {
                    erasure_id,
                    erased_at: instants::to_chrono(erased_at),
                },
            )
            .await?;
        Ok(Erasure {
            participant_id: participant,
            erased_at,
            keys_destroyed,
        })
    }
}
