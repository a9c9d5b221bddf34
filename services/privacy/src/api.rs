//! The gRPC handlers.

use std::sync::Arc;

use tend_api::privacy::v1 as pb;
use tend_api::privacy::v1::privacy_service_server::{PrivacyService, PrivacyServiceServer};
use tend_auth::tenant_of;
use tend_domain::consent::{self, ConsentRecorded, Document, DocumentCommand};
use tend_domain::enrollment::{self, validate_participant_ref};
use tend_domain::protocol::ProtocolSet;
use tend_event_store::{EventStore, Metadata, TenantId};
use tend_privacy::{Directory, Recipients};
use tend_service_kit::execute::{self, Retry};
use tend_service_kit::{Clock, How, Identities, Participants, instants, streams};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::Error;
use crate::convert::{self, uuid};

/// A document version is written once; a concurrent definition of the same
/// version is decided again on what the other wrote.
const RETRY: Retry = Retry::on_version_conflict(5);

/// Ids of what a request records, made from the caller's request id so
/// that a retry is the same event; one namespace each, so that one request
/// id used for two kinds of call makes two ids.
const CONSENT_IDS: Uuid = Uuid::from_u128(0x5c0e_7a11_0b6d_4f8e_8d3a_61e2_c4f9_0a17);
const WITHDRAWAL_IDS: Uuid = Uuid::from_u128(0x9a41_22d0_3e5b_4c6a_b7f8_0c1d_2e3f_4a5b);
const ERASURE_IDS: Uuid = Uuid::from_u128(0x1e7a_5e00_8c2b_4d19_a6f3_7b8c_9d0e_1f2a);

/// The service; cheap to clone.
#[derive(Debug, Clone)]
pub struct PrivacyApi {
    store: EventStore,
    participants: Participants,
    identities: Identities,
    recipients: Recipients,
    clock: Arc<dyn Clock>,
}

impl PrivacyApi {
    pub fn new(
        store: EventStore,
        directory: Directory,
        recipients: Recipients,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let participants = Participants::new(store.clone());
        Self {
            identities: Identities::new(participants.clone(), directory),
            participants,
            store,
            recipients,
            clock,
        }
    }

    pub fn into_server(self) -> PrivacyServiceServer<Self> {
        PrivacyServiceServer::new(self)
    }

    async fn document(&self, tenant: &TenantId, document_id: &str) -> Result<Document, Error> {
        let stream = streams::consent_document(document_id)?;
        let (document, _) =
            execute::load::<consent::Documents>(&self.store, tenant, &stream).await?;
        Ok(document)
    }

    async fn record_consent(
        &self,
        tenant: TenantId,
        r: pb::RecordConsentRequest,
    ) -> Result<pb::Consent, Error> {
        let request_id = uuid("request_id", &r.request_id)?;
        validate_participant_ref(&r.participant_ref)?;
        if r.document_version == 0 {
            return Err(Error::invalid("document_version", "is required"));
        }
        let purposes = convert::purposes("purposes", &r.purposes)?;
        let given_at = instants::from_pb("given_at", r.given_at.as_ref())?;
        let method = convert::method(r.method)?;
        let document = self.document(&tenant, &r.document_id).await?;
        if document.versions.is_empty() {
            return Err(Error::invalid(
                "document_id",
                "is not one of the tenant's consent documents (DefineConsentDocument)",
            ));
        }
        let version = document.versions.get(&r.document_version).cloned();
        let consent = ConsentRecorded {
            consent_id: Uuid::new_v5(&CONSENT_IDS, request_id.as_bytes()),
            document_id: r.document_id.clone(),
            document_version: r.document_version,
            purposes,
            given_at,
            method,
            evidence_sha256: r.evidence_sha256.clone(),
            recorded_at: self.clock.now(),
        };
        let command = || enrollment::Command::RecordConsent {
            consent: consent.clone(),
            document: version.clone(),
            now: self.clock.now(),
        };
        // Someone new is registered only once their consent is valid: a
        // refused one leaves no trace of the reference.
        let participant = self
            .identities
            .for_first_write(&tenant, &r.participant_ref, || {
                enrollment::decide(&Default::default(), command(), &ProtocolSet::default())
                    .map(drop)
                    .map_err(Error::from)
            })
            .await?;
        let (_, after) = self
            .participants
            .execute_participant_with(
                How {
                    new_participant: participant.new,
                    ..How::DERIVED_IDS
                },
                &tenant,
                &streams::participant(participant.id),
                &[],
                command,
                &Metadata {
                    correlation_id: Some(request_id),
                    ..Metadata::default()
                },
            )
            .await?;
        Ok(convert::consent_pb(
            &r.participant_ref,
            &after.state.consent,
        ))
    }

    async fn withdraw_consent(
        &self,
        tenant: TenantId,
        r: pb::WithdrawConsentRequest,
    ) -> Result<pb::WithdrawConsentResponse, Error> {
        let request_id = uuid("request_id", &r.request_id)?;
        let purposes = convert::purposes("purposes", &r.purposes)?;
        let participant = self.identities.find(&tenant, &r.participant_ref).await?;
        let withdrawal_id = Uuid::new_v5(&WITHDRAWAL_IDS, request_id.as_bytes());
        let (before, after) = self
            .participants
            .execute_participant_with(
                How::DERIVED_IDS,
                &tenant,
                &streams::participant(participant),
                &[],
                || enrollment::Command::WithdrawConsent {
                    withdrawal_id,
                    purposes: purposes.clone(),
                    now: self.clock.now(),
                },
                &Metadata {
                    correlation_id: Some(request_id),
                    ..Metadata::default()
                },
            )
            .await?;
        let stopped = after
            .state
            .enrollments
            .iter()
            .filter(|e| {
                e.withdrawn_at.is_some()
                    && before
                        .state
                        .enrollment(e.id)
                        .is_some_and(|b| b.withdrawn_at.is_none())
            })
            .map(|e| e.id.to_string())
            .collect();
        Ok(pb::WithdrawConsentResponse {
            consent: Some(convert::consent_pb(
                &r.participant_ref,
                &after.state.consent,
            )),
            withdrawn_enrollment_ids: stopped,
        })
    }

    async fn erase(
        &self,
        tenant: TenantId,
        r: pb::EraseParticipantRequest,
    ) -> Result<pb::EraseParticipantResponse, Error> {
        let request_id = uuid("request_id", &r.request_id)?;
        let reason = convert::reason(r.reason)?;
        validate_participant_ref(&r.participant_ref)?;
        let erasure_id = Uuid::new_v5(&ERASURE_IDS, request_id.as_bytes());
        let erasure = match self.identities.erased_before(&tenant, erasure_id).await? {
            Some(before) => before,
            None => {
                let participant = self.identities.find(&tenant, &r.participant_ref).await?;
                let erasure = self
                    .identities
                    .erase(&tenant, participant, erasure_id, reason, || {
                        self.clock.now()
                    })
                    .await?;
                tracing::info!(
                    tenant = %tenant,
                    reason = ?reason,
                    keys_destroyed = erasure.keys_destroyed,
                    "participant erased"
                );
                erasure
            }
        };
        Ok(pb::EraseParticipantResponse {
            participant_id: erasure.participant_id.to_string(),
            erased_at: Some(instants::to_pb(erasure.erased_at)),
        })
    }
}

/// A refusal of the document's fields, named as the request nests them.
fn within_document(e: impl Into<Error>) -> Error {
    match e.into() {
        Error::Kit(tend_service_kit::Error::Domain(d)) => Error::from(d.within("document")),
        other => other,
    }
}

#[tonic::async_trait]
impl PrivacyService for PrivacyApi {
    #[tracing::instrument(skip_all, fields(rpc = "DefineConsentDocument"))]
    async fn define_consent_document(
        &self,
        request: Request<pb::DefineConsentDocumentRequest>,
    ) -> Result<Response<pb::DefineConsentDocumentResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let d = request
            .into_inner()
            .document
            .ok_or_else(|| Error::invalid("document", "is required"))?;
        let stream = streams::consent_document(&d.document_id).map_err(within_document)?;
        let purposes = convert::purposes("document.purposes", &d.purposes)?;
        let done = execute::execute::<consent::Documents, Error>(
            &self.store,
            &tenant,
            &stream,
            RETRY,
            &Metadata::default(),
            |_| Uuid::now_v7(),
            |_| {
                Ok(DocumentCommand::Define {
                    document_id: d.document_id.clone(),
                    version: d.version,
                    purposes: purposes.clone(),
                    now: self.clock.now(),
                })
            },
        )
        .await
        .map_err(within_document)?;
        let after = done.into_after::<consent::Documents>();
        let version = after
            .versions
            .get(&d.version)
            .ok_or_else(|| Error::not_found("document version"))?;
        Ok(Response::new(pb::DefineConsentDocumentResponse {
            document: Some(convert::document_pb(version)),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetConsentDocument"))]
    async fn get_consent_document(
        &self,
        request: Request<pb::GetConsentDocumentRequest>,
    ) -> Result<Response<pb::GetConsentDocumentResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let document = self
            .document(&tenant, &request.get_ref().document_id)
            .await?;
        if document.versions.is_empty() {
            return Err(Error::not_found("consent document").into());
        }
        Ok(Response::new(pb::GetConsentDocumentResponse {
            versions: document
                .versions
                .values()
                .map(convert::document_pb)
                .collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "RecordConsent"))]
    async fn record_consent(
        &self,
        request: Request<pb::RecordConsentRequest>,
    ) -> Result<Response<pb::RecordConsentResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let consent = self.record_consent(tenant, request.into_inner()).await?;
        Ok(Response::new(pb::RecordConsentResponse {
            consent: Some(consent),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "WithdrawConsent"))]
    async fn withdraw_consent(
        &self,
        request: Request<pb::WithdrawConsentRequest>,
    ) -> Result<Response<pb::WithdrawConsentResponse>, Status> {
        let tenant = tenant_of(&request)?;
        Ok(Response::new(
            self.withdraw_consent(tenant, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetConsent"))]
    async fn get_consent(
        &self,
        request: Request<pb::GetConsentRequest>,
    ) -> Result<Response<pb::GetConsentResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let r = request.into_inner();
        let participant = self
            .identities
            .find(&tenant, &r.participant_ref)
            .await
            .map_err(Error::from)?;
        let loaded = self
            .participants
            .load_participant(&tenant, &streams::participant(participant))
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::GetConsentResponse {
            consent: Some(convert::consent_pb(
                &r.participant_ref,
                &loaded.state.consent,
            )),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "EraseParticipant"))]
    async fn erase_participant(
        &self,
        request: Request<pb::EraseParticipantRequest>,
    ) -> Result<Response<pb::EraseParticipantResponse>, Status> {
        let tenant = tenant_of(&request)?;
        Ok(Response::new(
            self.erase(tenant, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListRecipients"))]
    async fn list_recipients(
        &self,
        request: Request<pb::ListRecipientsRequest>,
    ) -> Result<Response<pb::ListRecipientsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        Ok(Response::new(pb::ListRecipientsResponse {
            recipients: self
                .recipients
                .of_tenant(tenant.as_str())
                .into_iter()
                .map(|(recipient_id, current_key_id)| pb::Recipient {
                    recipient_id,
                    current_key_id,
                })
                .collect(),
        }))
    }
}
