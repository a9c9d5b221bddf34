//! PrivacyService in process, against a real PostgreSQL: consent documents,
//! idempotent consent, recipients by tenant.

use std::sync::Arc;

use tend_api::privacy::v1 as pb;
use tend_api::privacy::v1::privacy_service_server::PrivacyService;
use tend_event_store::{Filter, TenantId};
use tend_privacy::Recipients;
use tend_privacy_service::PrivacyApi;
use tend_testkit::grpc::{Services, pb_ts, req, ts};
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;

const TENANT: &str = "clinic-a";
const NOW: &str = "2026-06-10T12:00:00Z";

struct Harness {
    services: Services,
    api: PrivacyApi,
}

async fn harness() -> Harness {
    let services = Services::start(NOW).await;
    let recipients: Recipients = [
        Recipients::generate_entry(TENANT, "analysts", "k2").unwrap(),
        Recipients::generate_entry(TENANT, "analysts", "k1").unwrap(),
        Recipients::generate_entry("clinic-b", "sponsor", "k1").unwrap(),
    ]
    .join(",")
    .parse()
    .unwrap();
    let api = PrivacyApi::new(
        services.store.clone(),
        services.directory.clone(),
        recipients,
        Arc::new(services.clock.clone()),
    );
    Harness { services, api }
}

fn document(
    id: &str,
    version: u32,
    purposes: &[pb::ConsentPurpose],
) -> pb::DefineConsentDocumentRequest {
    pb::DefineConsentDocumentRequest {
        document: Some(pb::ConsentDocumentVersion {
            document_id: id.into(),
            version,
            purposes: purposes.iter().map(|p| *p as i32).collect(),
            defined_at: None,
        }),
    }
}

fn field(status: &tonic::Status) -> String {
    status
        .get_details_bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
        .unwrap_or_default()
}

impl Harness {
    async fn events(&self) -> Vec<String> {
        let filter = Filter {
            tenant: Some(TenantId::new(TENANT).unwrap()),
            categories: vec![],
            event_types: vec![],
        };
        let page = self
            .services
            .store
            .read_log(&filter, 0, 1000)
            .await
            .unwrap();
        page.events.into_iter().map(|e| e.event_type).collect()
    }

    fn consent(
        &self,
        request_id: Uuid,
        purposes: &[pb::ConsentPurpose],
    ) -> pb::RecordConsentRequest {
        pb::RecordConsentRequest {
            participant_ref: "p-1".into(),
            request_id: request_id.to_string(),
            document_id: "main".into(),
            document_version: 1,
            purposes: purposes.iter().map(|p| *p as i32).collect(),
            given_at: Some(pb_ts(ts("2026-06-09T09:00:00Z"))),
            method: pb::ConsentMethod::VerbalWithWitness as i32,
            evidence_sha256: "0".repeat(64),
        }
    }
}

#[tokio::test]
async fn a_document_version_is_defined_once_and_bad_ones_name_the_field() {
    use pb::ConsentPurpose as P;
    let h = harness().await;
    let defined = h
        .api
        .define_consent_document(req(
            TENANT,
            document("main", 1, &[P::Protocol, P::Questionnaires]),
        ))
        .await
        .unwrap()
        .into_inner()
        .document
        .unwrap();
    assert_eq!(defined.defined_at, Some(pb_ts(ts(NOW))));
    // The same again changes nothing; other purposes under that version
    // are refused.
    h.api
        .define_consent_document(req(
            TENANT,
            document("main", 1, &[P::Questionnaires, P::Protocol]),
        ))
        .await
        .unwrap();
    let conflict = h
        .api
        .define_consent_document(req(TENANT, document("main", 1, &[P::Protocol])))
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Code::AlreadyExists);
    for (request, name) in [
        (
            document("Main Consent", 1, &[P::Protocol]),
            "document.document_id",
        ),
        (document("main", 2, &[]), "document.purposes"),
        (document("main", 0, &[P::Protocol]), "document.version"),
        (
            document("main", 2, &[P::Unspecified]),
            "document.purposes[0]",
        ),
    ] {
        let e = h
            .api
            .define_consent_document(req(TENANT, request))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert_eq!(field(&e), name, "{e:?}");
    }
    assert_eq!(h.events().await, vec!["ConsentDocumentVersionDefined"]);
    // Another tenant has no such document.
    let e = h
        .api
        .get_consent_document(req(
            "clinic-b",
            pb::GetConsentDocumentRequest {
                document_id: "main".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn a_retried_consent_or_withdrawal_is_recorded_once() {
    use pb::ConsentPurpose as P;
    let h = harness().await;
    h.api
        .define_consent_document(req(
            TENANT,
            document("main", 1, &[P::Protocol, P::Questionnaires]),
        ))
        .await
        .unwrap();
    let id = Uuid::new_v4();
    let first = h
        .api
        .record_consent(req(
            TENANT,
            h.consent(id, &[P::Protocol, P::Questionnaires]),
        ))
        .await
        .unwrap()
        .into_inner();
    h.services
        .clock
        .advance(jiff::SignedDuration::from_secs(30));
    let again = h
        .api
        .record_consent(req(
            TENANT,
            h.consent(id, &[P::Protocol, P::Questionnaires]),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
    let other = h
        .api
        .record_consent(req(TENANT, h.consent(id, &[P::Protocol])))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::AlreadyExists);
    // Empty withdraws everything granted, once.
    let withdrawal = pb::WithdrawConsentRequest {
        participant_ref: "p-1".into(),
        request_id: Uuid::new_v4().to_string(),
        purposes: vec![],
    };
    let withdrawn = h
        .api
        .withdraw_consent(req(TENANT, withdrawal.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(withdrawn.consent.unwrap().granted.is_empty());
    h.api
        .withdraw_consent(req(TENANT, withdrawal))
        .await
        .unwrap();
    let nothing = h
        .api
        .withdraw_consent(req(
            TENANT,
            pb::WithdrawConsentRequest {
                participant_ref: "p-1".into(),
                request_id: Uuid::new_v4().to_string(),
                purposes: vec![],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(nothing.code(), Code::FailedPrecondition);
    assert_eq!(
        h.events().await,
        vec![
            "ConsentDocumentVersionDefined",
            "ConsentRecorded",
            "ConsentWithdrawn"
        ]
    );
}

#[tokio::test]
async fn a_tenant_lists_only_its_own_recipients() {
    let h = harness().await;
    let listed = h
        .api
        .list_recipients(req(TENANT, pb::ListRecipientsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .recipients;
    assert_eq!(
        listed,
        vec![pb::Recipient {
            recipient_id: "analysts".into(),
            current_key_id: "k2".into(),
        }]
    );
    let none = h
        .api
        .list_recipients(req("clinic-c", pb::ListRecipientsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .recipients;
    assert!(none.is_empty());
}
