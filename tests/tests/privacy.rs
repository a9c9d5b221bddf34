//! Privacy end to end: the real `tend` binary, real gRPC clients over real
//! sockets, the real database and a real `pg_dump` of it. Consent gates
//! enrollment and the schedule, a pseudonymous stream identifies no one,
//! and an erased person cannot be named from a dump.

use std::collections::BTreeSet;

use jiff::{SignedDuration, Timestamp};
use tend_api::arc::v1 as apb;
use tend_api::arc::v1::arc_service_client::ArcServiceClient;
use tend_api::events::v1 as events;
use tend_api::events::v1::event_stream_service_client::EventStreamServiceClient;
use tend_api::practice::v1 as ppb;
use tend_api::practice::v1::practice_log_service_client::PracticeLogServiceClient;
use tend_api::privacy::v1 as pb;
use tend_api::privacy::v1::privacy_service_client::PrivacyServiceClient;
use tend_api::scheduler::v1 as spb;
use tend_api::scheduler::v1::protocol_scheduler_service_client::ProtocolSchedulerServiceClient;
use tend_privacy::{Directory, Recipients};
use tend_testkit::{TestDatabase, fresh_database};
use tend_tests::{TEST_MASTER_KEYS, TendProcess, channel};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_types::StatusExt;
use uuid::Uuid;

const TOKEN: &str = "tend_test_token_for_privacy";
const OTHER_TOKEN: &str = "tend_test_token_for_another_clinic";
const EVIDENCE: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn recipients() -> String {
    // Test keys, in the test code only.
    [
        "clinic/analysts/k1:loMS65xAtKnxZMLG8jC4KL9ECPhDS6Z8PKznanE7Y8s=",
        "clinic/sponsor/k1:U8vJsqC/5cZnokSNmEuI1tWy0WzaGCYqFii2oonjzgs=",
        "other/analysts/k1:YmqdxjIZXJlbjYBtxCmKa7tGvXbtOljOFSIFPdCaDXo=",
    ]
    .join(",")
}

fn start(db: &TestDatabase) -> TendProcess {
    let tokens = format!(
        "clinic={},other={}",
        tend_auth::TokenHash::of(TOKEN),
        tend_auth::TokenHash::of(OTHER_TOKEN)
    );
    let recipients = recipients();
    TendProcess::start(&[
        ("TEND_DATABASE_URL", db.url.as_str()),
        ("TEND_AUTH_TOKENS", tokens.as_str()),
        ("TEND_RECIPIENT_KEYS", recipients.as_str()),
        ("TEND_SCHEDULER_TICK_MS", "100"),
        ("TEND_SCHEDULER_LEASE_SECONDS", "2"),
    ])
}

fn authed<T>(message: T) -> Request<T> {
    tend_tests::bearer(TOKEN, message)
}

struct Clients {
    privacy: PrivacyServiceClient<Channel>,
    scheduler: ProtocolSchedulerServiceClient<Channel>,
    practice: PracticeLogServiceClient<Channel>,
    events: EventStreamServiceClient<Channel>,
    arcs: ArcServiceClient<Channel>,
}

impl Clients {
    fn new(channel: Channel) -> Self {
        Self {
            privacy: PrivacyServiceClient::new(channel.clone()),
            scheduler: ProtocolSchedulerServiceClient::new(channel.clone()),
            practice: PracticeLogServiceClient::new(channel.clone()),
            events: EventStreamServiceClient::new(channel.clone()),
            arcs: ArcServiceClient::new(channel),
        }
    }

    async fn define_document(&mut self) {
        self.privacy
            .define_consent_document(authed(pb::DefineConsentDocumentRequest {
                document: Some(pb::ConsentDocumentVersion {
                    document_id: "study-consent".into(),
                    version: 1,
                    purposes: vec![
                        pb::ConsentPurpose::Protocol as i32,
                        pb::ConsentPurpose::PracticeNotes as i32,
                        pb::ConsentPurpose::ResearchSharing as i32,
                    ],
                    defined_at: None,
                }),
            }))
            .await
            .unwrap();
    }

    async fn consent(
        &mut self,
        participant: &str,
        purposes: &[pb::ConsentPurpose],
    ) -> Result<pb::Consent, tonic::Status> {
        let given = Timestamp::now() - SignedDuration::from_mins(10);
        self.privacy
            .record_consent(authed(pb::RecordConsentRequest {
                participant_ref: participant.into(),
                request_id: Uuid::new_v4().to_string(),
                document_id: "study-consent".into(),
                document_version: 1,
                purposes: purposes.iter().map(|p| *p as i32).collect(),
                given_at: Some(prost_types::Timestamp {
                    seconds: given.as_second(),
                    nanos: 0,
                }),
                method: pb::ConsentMethod::ElectronicSignature as i32,
                evidence_sha256: EVIDENCE.into(),
            }))
            .await
            .map(|r| r.into_inner().consent.unwrap())
    }

    async fn enroll(&mut self, participant: &str) -> Result<spb::Enrollment, tonic::Status> {
        let session = Timestamp::now() + SignedDuration::from_hours(3 * 24);
        self.scheduler
            .enroll(authed(spb::EnrollRequest {
                request_id: Uuid::new_v4().to_string(),
                participant_ref: participant.into(),
                protocol_id: "consented-practice".into(),
                protocol_version: 0,
                session_local_time: session.strftime("%Y-%m-%dT10:00").to_string(),
                time_zone: "Europe/London".into(),
            }))
            .await
            .map(|r| r.into_inner().enrollment.unwrap())
    }

    async fn log(&mut self, participant: &str, note: &str) -> ppb::PracticeEntry {
        let started = Timestamp::now() - SignedDuration::from_mins(30);
        self.practice
            .log_practice(authed(ppb::LogPracticeRequest {
                participant_ref: participant.into(),
                entry_id: Uuid::new_v4().to_string(),
                practice: Some(ppb::PracticeDetails {
                    kind: "soothing-touch".into(),
                    started_at: started.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    minutes: 4,
                    note: note.as_bytes().to_vec(),
                    ..Default::default()
                }),
            }))
            .await
            .unwrap()
            .into_inner()
            .entry
            .unwrap()
    }

    async fn withdraw(
        &mut self,
        participant: &str,
        purposes: &[pb::ConsentPurpose],
    ) -> Result<pb::WithdrawConsentResponse, tonic::Status> {
        self.privacy
            .withdraw_consent(authed(pb::WithdrawConsentRequest {
                participant_ref: participant.into(),
                request_id: Uuid::new_v4().to_string(),
                purposes: purposes.iter().map(|p| *p as i32).collect(),
            }))
            .await
            .map(|r| r.into_inner())
    }

    /// A whole stream, forwards.
    async fn stream(&mut self, stream_id: &str) -> events::ReadStreamResponse {
        self.events
            .read_stream(authed(events::ReadStreamRequest {
                stream_id: stream_id.into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
    }

    async fn erase(
        &mut self,
        participant: &str,
        request_id: Uuid,
    ) -> Result<pb::EraseParticipantResponse, tonic::Status> {
        self.privacy
            .erase_participant(authed(pb::EraseParticipantRequest {
                participant_ref: participant.into(),
                request_id: request_id.to_string(),
                reason: pb::ErasureReason::ParticipantRequest as i32,
            }))
            .await
            .map(|r| r.into_inner())
    }

    /// The tenant's stream, plain or pseudonymous, from the start until it
    /// reaches `head`.
    async fn events_until(
        &mut self,
        pseudonymous: Option<events::Pseudonymous>,
        head: u64,
    ) -> Vec<events::RecordedEvent> {
        let mut stream = self
            .events
            .subscribe(authed(events::SubscribeRequest {
                pseudonymous,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        let mut out = Vec::new();
        let deadline = std::time::Duration::from_secs(30);
        loop {
            let message = tokio::time::timeout(deadline, stream.next())
                .await
                .expect("the stream reaches the head")
                .expect("the stream stays open")
                .unwrap();
            let position = match message.message.unwrap() {
                events::subscribe_response::Message::Event(e) => {
                    let p = e.position;
                    out.push(e);
                    p
                }
                events::subscribe_response::Message::Checkpoint(c) => c.position,
            };
            if position >= head {
                return out;
            }
        }
    }
}

/// A protocol that needs consent to take part and to keep notes.
fn protocol() -> spb::Protocol {
    spb::Protocol {
        protocol_id: "consented-practice".into(),
        title: "Practice with consent".into(),
        weeks_before: 1,
        weeks_after: 2,
        activities: vec![spb::Activity {
            key: "touch".into(),
            kind: Some(spb::activity::Kind::Practice(spb::PracticeActivity {
                practice: "soothing-touch".into(),
            })),
            span: Some(spb::activity::Span::Days(spb::DayRange {
                first: -7,
                last: 14,
            })),
            cadence: spb::Cadence::Daily as i32,
            times: vec!["09:00".into()],
            target_minutes: 5,
            window_minutes: 600,
        }],
        required_purposes: vec![
            pb::ConsentPurpose::Protocol as i32,
            pb::ConsentPurpose::PracticeNotes as i32,
        ],
        ..Default::default()
    }
}

fn pseudonymous(recipient: &str, relative_days: bool) -> Option<events::Pseudonymous> {
    Some(events::Pseudonymous {
        recipient_id: recipient.into(),
        key_id: String::new(),
        relative_days,
    })
}

fn pseudonym(recipient: &str, id: &str) -> String {
    let recipients: Recipients = recipients().parse().unwrap();
    recipients
        .pseudonymizer("clinic", recipient, None)
        .unwrap()
        .pseudonym(Uuid::parse_str(id).unwrap())
        .to_string()
}

fn field(status: &tonic::Status) -> String {
    status
        .get_details_bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
        .or_else(|| {
            status
                .get_details_precondition_failure()
                .and_then(|p| p.violations.first().map(|v| v.subject.clone()))
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn consent_gates_the_arc_and_the_pseudonymous_stream_identifies_no_one() {
    let db = fresh_database().await;
    let server = start(&db);
    let mut c = Clients::new(channel(&server).await);
    c.define_document().await;
    tend_tests::publish_protocol(channel(&server).await, TOKEN, protocol()).await;
    let (a, b) = (
        format!("MRN-{}", Uuid::new_v4().simple()),
        format!("MRN-{}", Uuid::new_v4().simple()),
    );

    // Enrolling without the consent the protocol needs: refused, naming
    // the purpose, and no trace of the reference.
    let refused = c.enroll(&a).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("`protocol`"), "{refused:?}");
    assert_eq!(field(&refused), "consent");
    let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM participants")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(entries, 0);

    // Bad consents name the field and write nothing.
    use pb::ConsentPurpose as P;
    let now = Timestamp::now().as_second();
    for (purposes, document, version, given_at, field_name) in [
        (P::Questionnaires, "study-consent", 1, now - 60, "purposes"),
        (P::Protocol, "no-such-document", 1, now - 60, "document_id"),
        (
            P::Protocol,
            "study-consent",
            7,
            now - 60,
            "document_version",
        ),
        (P::Unspecified, "study-consent", 1, now - 60, "purposes[0]"),
        (P::Protocol, "study-consent", 1, now + 3600, "given_at"),
    ] {
        let e = c
            .privacy
            .record_consent(authed(pb::RecordConsentRequest {
                participant_ref: a.clone(),
                request_id: Uuid::new_v4().to_string(),
                document_id: document.into(),
                document_version: version,
                purposes: vec![purposes as i32],
                given_at: Some(prost_types::Timestamp {
                    seconds: given_at,
                    nanos: 0,
                }),
                method: pb::ConsentMethod::Paper as i32,
                evidence_sha256: EVIDENCE.into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert_eq!(field(&e), field_name, "{e:?}");
    }
    let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM participants")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(entries, 0);

    // A shares for research; B takes part but does not share.
    c.consent(&a, &[P::Protocol, P::PracticeNotes, P::ResearchSharing])
        .await
        .unwrap();
    c.consent(&b, &[P::Protocol, P::PracticeNotes])
        .await
        .unwrap();
    let enrolled_a = c.enroll(&a).await.unwrap();
    let enrolled_b = c.enroll(&b).await.unwrap();
    assert_eq!(enrolled_a.participant_ref, a);
    let id_a = enrolled_a.participant_id.clone();
    let id_b = enrolled_b.participant_id.clone();
    assert_ne!(id_a, id_b);
    let note_a = format!("note-before-{}", Uuid::new_v4().simple());
    let note_b = format!("note-of-b-{}", Uuid::new_v4().simple());
    let before = c.log(&a, &note_a).await;
    c.log(&b, &note_b).await;

    // A withdraws research sharing mid-arc, then keeps practising; then
    // withdraws taking part, which stops the schedule.
    let withdrawn = c.withdraw(&a, &[P::ResearchSharing]).await.unwrap();
    assert!(withdrawn.withdrawn_enrollment_ids.is_empty());
    let after = c.log(&a, "note after sharing was withdrawn").await;
    let never = c.withdraw(&a, &[P::ResearchSharing]).await.unwrap_err();
    assert_eq!(never.code(), Code::InvalidArgument);
    assert_eq!(field(&never), "purposes");
    let stopped = c.withdraw(&a, &[P::Protocol]).await.unwrap();
    assert_eq!(
        stopped.withdrawn_enrollment_ids,
        vec![enrolled_a.enrollment_id.clone()]
    );
    let schedule = c
        .scheduler
        .get_schedule(authed(spb::GetScheduleRequest {
            enrollment_id: enrolled_a.enrollment_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        schedule.enrollment.unwrap().state,
        spb::EnrollmentState::Withdrawn as i32
    );
    // Everything still to do is cancelled. The practice logged half an
    // hour ago completes today's occurrence when its window (09:00–19:00
    // London) was open then, and a completion stays on record.
    let now = Timestamp::now().as_second();
    let cancelled = spb::OccurrenceStatus::Cancelled as i32;
    assert!(
        schedule.occurrences.iter().all(|o| o.status == cancelled
            || (o.status == spb::OccurrenceStatus::Done as i32
                && o.completed_at.is_some()
                && o.scheduled_at.as_ref().unwrap().seconds <= now)),
        "{:?}",
        schedule.occurrences
    );
    assert!(
        schedule
            .occurrences
            .iter()
            .filter(|o| o.scheduled_at.as_ref().unwrap().seconds > now)
            .all(|o| o.status == cancelled)
    );
    assert!(schedule.occurrences.iter().any(|o| o.status == cancelled));
    // What was granted and when, with the history.
    let consent = c
        .privacy
        .get_consent(authed(pb::GetConsentRequest {
            participant_ref: a.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .consent
        .unwrap();
    let granted: Vec<i32> = consent.granted.iter().map(|g| g.purpose).collect();
    assert_eq!(granted, vec![P::PracticeNotes as i32]);
    assert_eq!(consent.history.len(), 3);
    assert!(matches!(
        consent.history[0].change,
        Some(pb::consent_change::Change::Given(ref g)) if g.evidence_sha256 == EVIDENCE
    ));

    // The log as the tenant sees it, to find where A stopped sharing.
    let mut head = 0;
    for category in ["participant", "practice"] {
        let last = c
            .events
            .read_stream(authed(events::ReadStreamRequest {
                stream_id: format!("{category}-{id_a}"),
                direction: events::ReadDirection::Backwards as i32,
                max_count: 1,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .events
            .pop()
            .unwrap();
        head = head.max(last.position);
    }
    let plain = c.events_until(None, head).await;
    let withdrawal = plain
        .iter()
        .find(|e| e.event_type == "ConsentWithdrawn")
        .unwrap()
        .position;
    let logged = |entry: &ppb::PracticeEntry| {
        plain
            .iter()
            .find(|e| e.event_type == "PracticeLogged" && e.payload_json.contains(&entry.entry_id))
            .unwrap()
            .position
    };
    assert!(logged(&before) < withdrawal && withdrawal < logged(&after));

    // The analysts' stream: A's events before the withdrawal and none
    // after; nothing of B; no reference, note or plain id anywhere.
    let analysts = c.events_until(pseudonymous("analysts", true), head).await;
    let a_streams: BTreeSet<String> = ["participant", "practice", "assessment", "arc"]
        .iter()
        .map(|c| format!("{c}-{}", pseudonym("analysts", &id_a)))
        .collect();
    let positions: Vec<u64> = analysts
        .iter()
        .filter(|e| a_streams.contains(&e.stream_id))
        .map(|e| e.position)
        .collect();
    let expected: Vec<u64> = plain
        .iter()
        .filter(|e| e.stream_id.ends_with(&id_a) && e.position < withdrawal)
        .filter(|e| {
            // From the consent that grants research sharing on.
            e.position
                >= plain
                    .iter()
                    .find(|g| g.event_type == "ConsentRecorded" && g.stream_id.ends_with(&id_a))
                    .unwrap()
                    .position
        })
        .map(|e| e.position)
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(positions, expected);
    assert!(positions.contains(&logged(&before)));
    for e in &analysts {
        let text = format!("{e:?}");
        for secret in [&a, &b, &id_a, &id_b, &note_a, &note_b, &EVIDENCE.to_owned()] {
            assert!(!text.contains(secret.as_str()), "{secret} in {text}");
        }
        assert!(!e.payload_json.contains("\"note\""), "{}", e.payload_json);
        assert_eq!(e.pseudonym_key_id, "k1");
        assert!(e.recorded_at.is_none());
        assert!(e.metadata.as_ref().is_none_or(|m| m.actor.is_empty()));
    }
    let practised = analysts
        .iter()
        .find(|e| e.position == logged(&before))
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&practised.payload_json).unwrap();
    // About three days before the session (London dates), as whole days.
    let day = body["started_at"]
        .as_i64()
        .unwrap_or_else(|| panic!("{body}"));
    assert!((-4..=-2).contains(&day), "{body}");

    // Another recipient: other pseudonyms for the same person. Another
    // tenant's recipient is not this tenant's.
    let sponsor = c.events_until(pseudonymous("sponsor", false), head).await;
    let sponsor_ids: BTreeSet<&str> = sponsor.iter().map(|e| e.stream_id.as_str()).collect();
    assert!(sponsor_ids.contains(format!("participant-{}", pseudonym("sponsor", &id_a)).as_str()));
    assert!(sponsor_ids.is_disjoint(&a_streams.iter().map(String::as_str).collect()));
    assert!(sponsor.iter().all(|e| e.recorded_at.is_some()));
    let foreign = c
        .events
        .subscribe(authed(events::SubscribeRequest {
            pseudonymous: Some(events::Pseudonymous {
                recipient_id: "nobody".into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::NotFound);
    assert!(foreign.message().contains("recipient_id"));

    // A replica, and then a restart, give the very same pseudonyms.
    let replica = start(&db);
    let mut r = Clients::new(channel(&replica).await);
    let again = r.events_until(pseudonymous("analysts", true), head).await;
    let ids = |events: &[events::RecordedEvent]| -> Vec<(u64, String, String)> {
        events
            .iter()
            .filter(|e| e.position <= head)
            .map(|e| (e.position, e.stream_id.clone(), e.payload_json.clone()))
            .collect()
    };
    assert_eq!(ids(&again), ids(&analysts));
    drop(server);
    drop(replica);
    let restarted = start(&db);
    let mut r = Clients::new(channel(&restarted).await);
    assert_eq!(
        ids(&r.events_until(pseudonymous("analysts", true), head).await),
        ids(&analysts)
    );
}

#[tokio::test]
async fn an_erased_person_cannot_be_named_from_a_dump_and_the_numbers_stay() {
    let db = fresh_database().await;
    let server = start(&db);
    let mut c = Clients::new(channel(&server).await);
    c.define_document().await;
    tend_tests::publish_protocol(channel(&server).await, TOKEN, protocol()).await;
    let marker = format!("MRN-ERASE-{}", Uuid::new_v4().simple());
    let notes = [
        format!("first-marker-note-{}", Uuid::new_v4().simple()),
        format!("second-marker-note-{}", Uuid::new_v4().simple()),
    ];
    let kept = format!("MRN-KEPT-{}", Uuid::new_v4().simple());
    use pb::ConsentPurpose as P;
    for who in [&marker, &kept] {
        c.consent(who, &[P::Protocol, P::PracticeNotes])
            .await
            .unwrap();
        c.enroll(who).await.unwrap();
    }
    for note in &notes {
        c.log(&marker, note).await;
    }
    c.log(&kept, "kept participant's note").await;

    // Before: sealed, so no reference or note in the clear.
    let dump = db.dump();
    for secret in notes.iter().chain([&marker, &kept]) {
        assert!(!dump.contains(secret.as_str()), "{secret} in the dump");
    }

    let request = Uuid::new_v4();
    let erased = c.erase(&marker, request).await.unwrap();
    // A retry with the same request answers the same, though the reference
    // finds no one any more; an unknown reference is NOT_FOUND.
    assert_eq!(c.erase(&marker, request).await.unwrap(), erased);
    assert_eq!(
        c.erase(&marker, Uuid::new_v4()).await.unwrap_err().code(),
        Code::NotFound
    );
    let no_reason = c
        .privacy
        .erase_participant(authed(pb::EraseParticipantRequest {
            participant_ref: kept.clone(),
            request_id: Uuid::new_v4().to_string(),
            reason: 0,
        }))
        .await
        .unwrap_err();
    assert_eq!(field(&no_reason), "reason");

    // After: nothing names them, not even with the master key.
    let dump = db.dump();
    for secret in notes.iter().chain([&marker]) {
        assert!(!dump.contains(secret.as_str()), "{secret} in the dump");
    }
    let directory = Directory::open(db.pool.clone(), TEST_MASTER_KEYS.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(directory.find("clinic", &marker).await.unwrap(), None);
    let id: Uuid = erased.participant_id.parse().unwrap();
    assert!(
        directory
            .references("clinic", &[id])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(directory.find("clinic", &kept).await.unwrap().is_some());
    let left: bool = sqlx::query_scalar(
        "SELECT ref_hash IS NULL AND sealed_ref IS NULL AND wrapped_key IS NULL
                AND erased_at IS NOT NULL
         FROM participants WHERE participant_id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(left, "the entry keeps only the id and the times");
    // Every lookup by the reference is NOT_FOUND.
    let statuses = [
        c.privacy
            .get_consent(authed(pb::GetConsentRequest {
                participant_ref: marker.clone(),
            }))
            .await
            .map(|_| ()),
        c.practice
            .list_entries(authed(ppb::ListEntriesRequest {
                participant_ref: marker.clone(),
                ..Default::default()
            }))
            .await
            .map(|_| ()),
        c.arcs
            .get_arc(authed(apb::GetArcRequest {
                participant_ref: marker.clone(),
            }))
            .await
            .map(|_| ()),
    ];
    for s in statuses {
        assert_eq!(s.unwrap_err().code(), Code::NotFound);
    }
    // The erasure is an event: when, by whom, why; the minutes stay.
    let stream = c.stream(&format!("participant-{id}")).await;
    let recorded = stream
        .events
        .iter()
        .find(|e| e.event_type == "ParticipantErased")
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&recorded.payload_json).unwrap();
    assert_eq!(body["by_tenant"], "clinic");
    assert_eq!(body["reason"], "participant_request");
    assert!(
        stream
            .events
            .iter()
            .any(|e| e.event_type == "EnrollmentWithdrawn"
                && e.payload_json.contains("participant_erased"))
    );
    let practice = c.stream(&format!("practice-{id}")).await;
    assert_eq!(
        practice
            .events
            .iter()
            .filter(|e| e.event_type == "PracticeLogged")
            .count(),
        2
    );

    // The cohort counts them unless asked not to.
    let status = loop {
        let s = c
            .arcs
            .get_projection_status(authed(apb::GetProjectionStatusRequest {}))
            .await
            .unwrap()
            .into_inner()
            .projections
            .remove(0);
        if s.position >= recorded.position {
            break s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(status.position >= recorded.position);
    let cohort = |erased: apb::ErasedParticipants| {
        let mut arcs = c.arcs.clone();
        async move {
            arcs.get_cohort(authed(apb::GetCohortRequest {
                protocol_id: "consented-practice".into(),
                erased: erased as i32,
            }))
            .await
            .unwrap()
            .into_inner()
            .enrolled
        }
    };
    assert_eq!(cohort(apb::ErasedParticipants::Unspecified).await, 2);
    assert_eq!(cohort(apb::ErasedParticipants::Exclude).await, 1);
    let listed = c
        .arcs
        .list_arcs(authed(apb::ListArcsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .arcs;
    let gone = listed
        .iter()
        .find(|a| a.participant_id == erased.participant_id)
        .unwrap();
    assert!(gone.erased && gone.participant_ref.is_empty());
    assert!(listed.iter().any(|a| a.participant_ref == kept));

    // The same reference again is someone new.
    c.consent(&marker, &[P::Protocol, P::PracticeNotes])
        .await
        .unwrap();
    let again = c.enroll(&marker).await.unwrap();
    assert_ne!(again.participant_id, erased.participant_id);
}

#[tokio::test]
async fn concurrent_erasures_record_one_erasure_and_another_tenant_sees_nothing() {
    let db = fresh_database().await;
    let server = start(&db);
    let mut c = Clients::new(channel(&server).await);
    c.define_document().await;
    let who = format!("MRN-{}", Uuid::new_v4().simple());
    let consent = c
        .consent(&who, &[pb::ConsentPurpose::Protocol])
        .await
        .unwrap();
    assert_eq!(consent.participant_ref, who);
    // Another tenant: the same reference names no one there.
    let mut other = PrivacyServiceClient::new(channel(&server).await);
    let unseen = other
        .get_consent(tend_tests::bearer(
            OTHER_TOKEN,
            pb::GetConsentRequest {
                participant_ref: who.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(unseen.code(), Code::NotFound);

    let calls = (0..8).map(|_| {
        let mut c = c.privacy.clone();
        let who = who.clone();
        async move {
            c.erase_participant(authed(pb::EraseParticipantRequest {
                participant_ref: who,
                request_id: Uuid::new_v4().to_string(),
                reason: pb::ErasureReason::LegalObligation as i32,
            }))
            .await
        }
    });
    let results = futures::future::join_all(calls).await;
    let mut ids = BTreeSet::new();
    for r in results {
        match r {
            Ok(r) => {
                ids.insert(r.into_inner().participant_id);
            }
            Err(e) => assert_eq!(e.code(), Code::NotFound, "{e:?}"),
        }
    }
    assert_eq!(ids.len(), 1);
    let id = ids.into_iter().next().unwrap();
    let stream = c.stream(&format!("participant-{id}")).await;
    assert_eq!(
        stream
            .events
            .iter()
            .filter(|e| e.event_type == "ParticipantErased")
            .count(),
        1
    );
}
