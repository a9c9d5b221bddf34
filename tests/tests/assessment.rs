//! The assessment service end to end: the real `tend` binary, real gRPC
//! clients, a subscriber that sees the safety signal.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use tend_api::assessment::v1 as pb;
use tend_api::assessment::v1::assessment_service_client::AssessmentServiceClient;
use tend_api::events::v1 as events;
use tend_api::events::v1::event_stream_service_client::EventStreamServiceClient;
use tend_api::scheduler::v1 as spb;
use tend_api::scheduler::v1::protocol_scheduler_service_client::ProtocolSchedulerServiceClient;
use tend_testkit::fresh_database;
use tend_testkit::grpc::pb_ts;
use tend_tests::TendProcess;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_types::StatusExt;
use uuid::Uuid;

const TOKEN: &str = "tend_test_token_for_assessments";

fn authed<T>(message: T) -> Request<T> {
    tend_tests::bearer(TOKEN, message)
}

fn submission(instrument: &str, values: &[i32], at: Timestamp) -> pb::SubmitResponsesRequest {
    pb::SubmitResponsesRequest {
        participant_ref: "p-1".into(),
        request_id: Uuid::new_v4().to_string(),
        instrument_id: instrument.into(),
        instrument_version: 0,
        answers: values
            .iter()
            .enumerate()
            .map(|(i, &answer)| pb::Answer {
                item: i as u32 + 1,
                answer,
            })
            .collect(),
        administered_at: Some(pb_ts(at)),
        occurrence_id: String::new(),
    }
}

#[tokio::test]
async fn scores_change_and_safety_signal_over_the_wire() {
    let db = fresh_database().await;
    let server = TendProcess::start(&[
        ("TEND_DATABASE_URL", &db.url),
        (
            "TEND_AUTH_TOKENS",
            &format!("clinic={}", tend_auth::TokenHash::of(TOKEN)),
        ),
    ]);
    let channel = Channel::from_shared(server.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut subscription = EventStreamServiceClient::new(channel.clone())
        .subscribe(authed(events::SubscribeRequest {
            event_types: vec!["SafetySignalRaised".into()],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let mut client = AssessmentServiceClient::new(channel.clone());

    let instruments = client
        .list_instruments(authed(pb::ListInstrumentsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .instruments;
    let ids: Vec<&str> = instruments
        .iter()
        .map(|i| i.instrument_id.as_str())
        .collect();
    assert_eq!(ids, ["scs", "scs-sf", "phq-9", "gad-7", "ffmq-15"]);

    // Not enrolled yet: an unknown participant.
    let now = Timestamp::now();
    let unknown = client
        .submit_responses(authed(submission("scs-sf", &[3; 12], now)))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let session = now + SignedDuration::from_hours(28 * 24);
    ProtocolSchedulerServiceClient::new(channel.clone())
        .enroll(authed(spb::EnrollRequest {
            request_id: Uuid::new_v4().to_string(),
            participant_ref: "p-1".into(),
            protocol_id: "integration-arc-8w".into(),
            protocol_version: 0,
            session_local_time: session.strftime("%Y-%m-%dT10:00").to_string(),
            time_zone: "UTC".into(),
        }))
        .await
        .unwrap();

    let baseline = client
        .submit_responses(authed(submission(
            "scs-sf",
            &[4, 2, 2, 4, 2, 2, 2, 4, 4, 2, 4, 4],
            now,
        )))
        .await
        .unwrap()
        .into_inner()
        .assessment
        .unwrap();
    assert_eq!(baseline.scorings[0].total.as_ref().unwrap().exact, "2");
    client
        .submit_responses(authed(submission(
            "scs-sf",
            &[2, 4, 3, 5, 4, 3, 4, 2, 1, 3, 4, 2],
            now + SignedDuration::from_secs(1),
        )))
        .await
        .unwrap();
    let change = client
        .get_change(authed(pb::GetChangeRequest {
            participant_ref: "p-1".into(),
            instrument_id: "scs-sf".into(),
            sd: Some(pb::SourcedFigure {
                value: 0.6,
                source: "study baseline sample".into(),
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(change.baseline_assessment_id, baseline.assessment_id);
    let total = change.total.unwrap();
    assert_eq!(total.current.unwrap().exact, "41/12");
    assert_eq!(
        total.reliable_change.unwrap().verdict(),
        pb::Verdict::ReliablyImproved
    );

    let bad = client
        .submit_responses(authed(submission(
            "phq-9",
            &[0, 0, 0, 0, 0, 0, 0, 0, 4],
            now,
        )))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(
        bad.get_details_bad_request().unwrap().field_violations[0].field,
        "answers[8].answer"
    );

    let phq = client
        .submit_responses(authed(submission(
            "phq-9",
            &[0, 0, 0, 0, 0, 0, 0, 0, 2],
            now,
        )))
        .await
        .unwrap()
        .into_inner()
        .assessment
        .unwrap();
    let signal = loop {
        let message = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("the safety signal within 10 s")
            .unwrap()
            .unwrap();
        if let Some(events::subscribe_response::Message::Event(e)) = message.message {
            break e;
        }
    };
    let payload: serde_json::Value = serde_json::from_str(&signal.payload_json).unwrap();
    assert_eq!(payload["assessment_id"], phq.assessment_id);
    assert_eq!(
        (payload["item"].as_u64(), payload["answer"].as_i64()),
        (Some(9), Some(2))
    );
}
