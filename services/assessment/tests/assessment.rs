//! The assessment service against a real PostgreSQL: the SCS-SF worked
//! example from baseline to week +4, idempotent retries, the safety
//! signal, bad input, partner instruments and rescoring, tenant scoping.

use std::sync::Arc;

use tend_api::assessment::v1 as pb;
use tend_api::assessment::v1::assessment_service_server::AssessmentService;
use tend_api::scheduler::v1 as spb;
use tend_api::scheduler::v1::protocol_scheduler_service_server::ProtocolSchedulerService;
use tend_assessment::AssessmentApi;
use tend_event_store::{EventStore, Filter, TenantId};
use tend_protocol_scheduler::SchedulerApi;
use tend_service_kit::ManualClock;
use tend_testkit::grpc::{self, Services, req, ts};
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;

const TENANT: &str = "clinic-a";

fn pb_ts(s: &str) -> prost_types::Timestamp {
    grpc::pb_ts(ts(s))
}

struct Harness {
    store: EventStore,
    clock: ManualClock,
    scheduler: SchedulerApi,
    api: AssessmentApi,
}

async fn harness(start: &str) -> Harness {
    let Services {
        store,
        clock,
        directory,
        ..
    } = Services::start(start).await;
    Harness {
        scheduler: SchedulerApi::new(store.clone(), directory.clone(), Arc::new(clock.clone())),
        api: AssessmentApi::new(store.clone(), directory, Arc::new(clock.clone())),
        store,
        clock,
    }
}

fn answers(values: &[i32]) -> Vec<pb::Answer> {
    values
        .iter()
        .enumerate()
        .map(|(i, &answer)| pb::Answer {
            item: i as u32 + 1,
            answer,
        })
        .collect()
}

fn submission(
    participant: &str,
    instrument: &str,
    values: &[i32],
    at: &str,
) -> pb::SubmitResponsesRequest {
    pb::SubmitResponsesRequest {
        participant_ref: participant.into(),
        request_id: Uuid::new_v4().to_string(),
        instrument_id: instrument.into(),
        instrument_version: 0,
        answers: answers(values),
        administered_at: Some(pb_ts(at)),
        occurrence_id: String::new(),
    }
}

fn field_of(status: &tonic::Status) -> String {
    status
        .get_details_bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
        .unwrap_or_default()
}

impl Harness {
    /// Enrolls on the built-in arc, the session on 2026-06-29 at 10:00 UTC
    /// (the arc runs 2026-06-01 .. 2026-07-27).
    async fn enroll(&self, tenant: &str, participant: &str) -> spb::Enrollment {
        self.scheduler
            .enroll(req(
                tenant,
                spb::EnrollRequest {
                    request_id: Uuid::new_v4().to_string(),
                    participant_ref: participant.into(),
                    protocol_id: "integration-arc-8w".into(),
                    protocol_version: 0,
                    session_local_time: "2026-06-29T10:00".into(),
                    time_zone: "UTC".into(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .enrollment
            .unwrap()
    }

    async fn occurrence(&self, enrollment: &spb::Enrollment, key: &str) -> spb::Occurrence {
        self.scheduler
            .get_schedule(req(
                TENANT,
                spb::GetScheduleRequest {
                    enrollment_id: enrollment.enrollment_id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .occurrences
            .into_iter()
            .find(|o| o.activity_key == key)
            .unwrap()
    }

    async fn submit(&self, r: pb::SubmitResponsesRequest) -> Result<pb::Assessment, tonic::Status> {
        self.api
            .submit_responses(req(TENANT, r))
            .await
            .map(|r| r.into_inner().assessment.unwrap())
    }

    async fn events(&self, tenant: &str) -> Vec<(String, serde_json::Value)> {
        let filter = Filter {
            tenant: Some(TenantId::new(tenant).unwrap()),
            categories: vec!["assessment".into()],
            event_types: vec![],
        };
        self.store
            .read_log(&filter, 0, 10_000)
            .await
            .unwrap()
            .events
            .into_iter()
            .map(|e| (e.event_type, e.payload))
            .collect()
    }
}

#[tokio::test]
async fn scs_sf_from_baseline_to_week_4_with_reliable_change() {
    let h = harness("2026-05-20T00:00:00Z").await;
    let enrollment = h.enroll(TENANT, "p-1").await;
    let baseline_slot = h.occurrence(&enrollment, "baseline-scs-sf").await;

    // Baseline (day -28, 09:00): positive items 2, negative items 4: every
    // item scores 2 after reversing; total 2.
    h.clock.set(ts("2026-06-01T09:30:00Z"));
    let baseline = h
        .submit(pb::SubmitResponsesRequest {
            occurrence_id: baseline_slot.occurrence_id.clone(),
            ..submission(
                "p-1",
                "scs-sf",
                &[4, 2, 2, 4, 2, 2, 2, 4, 4, 2, 4, 4],
                "2026-06-01T09:20:00Z",
            )
        })
        .await
        .unwrap();
    let scores = &baseline.scorings[0];
    assert_eq!(scores.total.as_ref().unwrap().exact, "2");
    assert_eq!(scores.band, "low");
    assert_eq!(scores.method(), pb::ScoringMethod::MeanOfItems);
    assert_eq!(scores.subscales.len(), 6);
    assert!(!scores.subscales_interpretable);
    // The administration completed its scheduled occurrence.
    let slot = h.occurrence(&enrollment, "baseline-scs-sf").await;
    assert_eq!(slot.status(), spb::OccurrenceStatus::Done);

    // Week +4: items 2,4,3,5,4,3,4,2,1,3,4,2 score 41/12.
    h.clock.set(ts("2026-07-27T10:00:00Z"));
    h.submit(submission(
        "p-1",
        "scs-sf",
        &[2, 4, 3, 5, 4, 3, 4, 2, 1, 3, 4, 2],
        "2026-07-27T09:30:00Z",
    ))
    .await
    .unwrap();
    let change = h
        .api
        .get_change(req(
            TENANT,
            pb::GetChangeRequest {
                participant_ref: "p-1".into(),
                instrument_id: "scs-sf".into(),
                sd: Some(pb::SourcedFigure {
                    value: 0.6,
                    source: "the study's baseline sample".into(),
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(change.baseline_assessment_id, baseline.assessment_id);
    let total = change.total.unwrap();
    assert_eq!(total.absolute.unwrap().exact, "17/12");
    // 17/12 of 2 is 70.83%.
    assert!((total.percent.unwrap() - 70.833_333).abs() < 1e-4);
    let rc = total.reliable_change.unwrap();
    // S_diff = 0.6 * sqrt(2) * sqrt(1 - .86) = 0.317490; RC = (17/12) / S_diff.
    assert!((rc.s_diff - 0.317_490).abs() < 1e-6);
    assert!((rc.rc - 4.462_081).abs() < 1e-5, "{}", rc.rc);
    assert_eq!(rc.verdict(), pb::Verdict::ReliablyImproved);
    assert_eq!(rc.reliability.unwrap().value, 0.86);
    assert_eq!(rc.sd.unwrap().source, "the study's baseline sample");
    assert_eq!(change.subscales.len(), 6);
    let sj = change
        .subscales
        .iter()
        .find(|s| s.key == "self-judgment")
        .unwrap();
    // Self-judgment as answered: (4+4)/2 = 4 at baseline, (4+2)/2 = 3 now.
    assert_eq!(
        sj.change.as_ref().unwrap().absolute.as_ref().unwrap().exact,
        "-1"
    );
    assert!(!sj.interpretable);

    // Without an SD there is no reliable change, and it says why.
    let bare = h
        .api
        .get_change(req(
            TENANT,
            pb::GetChangeRequest {
                participant_ref: "p-1".into(),
                instrument_id: "scs-sf".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(bare.total.unwrap().reliable_change.is_none());
    assert!(
        bare.reliable_change_unavailable
            .contains("standard deviation")
    );
}

#[tokio::test]
async fn a_retry_is_the_same_assessment_and_another_content_is_refused() {
    let h = harness("2026-06-10T00:00:00Z").await;
    h.enroll(TENANT, "p-1").await;
    let first = submission(
        "p-1",
        "gad-7",
        &[1, 1, 2, 0, 3, 1, 2],
        "2026-06-09T09:00:00Z",
    );
    let calls = (0..10).map(|_| h.submit(first.clone()));
    let results = futures::future::join_all(calls).await;
    let a = results[0].as_ref().unwrap().clone();
    for r in &results {
        assert_eq!(r.as_ref().unwrap(), &a);
    }
    assert_eq!(a.scorings[0].total.as_ref().unwrap().exact, "10");
    assert_eq!(h.events(TENANT).await.len(), 2);
    let other = h
        .submit(pb::SubmitResponsesRequest {
            answers: answers(&[0; 7]),
            ..first
        })
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::AlreadyExists);
    assert_eq!(h.events(TENANT).await.len(), 2);
}

#[tokio::test]
async fn phq9_item_9_above_0_puts_a_safety_signal_on_the_stream() {
    let h = harness("2026-06-10T00:00:00Z").await;
    h.enroll(TENANT, "p-1").await;
    let a = h
        .submit(submission(
            "p-1",
            "phq-9",
            &[1, 2, 0, 3, 1, 1, 2, 0, 1],
            "2026-06-09T09:00:00Z",
        ))
        .await
        .unwrap();
    assert_eq!(a.safety_signals, [pb::SafetySignal { item: 9, answer: 1 }]);
    let events = h.events(TENANT).await;
    let types: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "AssessmentSubmitted",
            "AssessmentScored",
            "SafetySignalRaised"
        ]
    );
    assert_eq!(events[2].1["item"], 9);
}

#[tokio::test]
async fn bad_input_names_the_item_or_field_and_writes_nothing() {
    let h = harness("2026-05-25T00:00:00Z").await;
    let enrollment = h.enroll(TENANT, "p-1").await;
    let someone_else = h.enroll(TENANT, "p-2").await;
    let theirs = h.occurrence(&someone_else, "baseline-scs-sf").await;
    let not_scs = h.occurrence(&enrollment, "self-compassion-break").await;
    h.clock.set(ts("2026-06-10T00:00:00Z"));
    let ok = || submission("p-1", "scs-sf", &[3; 12], "2026-06-09T09:00:00Z");
    let mut outside = ok();
    outside.answers[4].answer = 6;
    let mut unknown = ok();
    unknown.answers.push(pb::Answer {
        item: 13,
        answer: 3,
    });
    let mut twice = ok();
    twice.answers[11].item = 4;
    let mut missing = ok();
    missing.answers.truncate(10);
    let cases: Vec<(&str, pb::SubmitResponsesRequest, Code, &str)> = vec![
        (
            "answer outside the scale",
            outside,
            Code::InvalidArgument,
            "answers[4].answer",
        ),
        (
            "unknown item",
            unknown,
            Code::InvalidArgument,
            "answers[12].item",
        ),
        (
            "repeated item",
            twice,
            Code::InvalidArgument,
            "answers[11].item",
        ),
        (
            "too many missing",
            missing,
            Code::InvalidArgument,
            "answers",
        ),
        (
            "unknown instrument",
            pb::SubmitResponsesRequest {
                instrument_id: "bdi-ii".into(),
                ..ok()
            },
            Code::NotFound,
            "",
        ),
        (
            "unknown version",
            pb::SubmitResponsesRequest {
                instrument_version: 2,
                ..ok()
            },
            Code::NotFound,
            "",
        ),
        (
            "unknown participant",
            pb::SubmitResponsesRequest {
                participant_ref: "nobody".into(),
                ..ok()
            },
            Code::NotFound,
            "",
        ),
        (
            "another participant's occurrence",
            pb::SubmitResponsesRequest {
                occurrence_id: theirs.occurrence_id,
                ..ok()
            },
            Code::InvalidArgument,
            "occurrence_id",
        ),
        (
            "an occurrence of a practice",
            pb::SubmitResponsesRequest {
                occurrence_id: not_scs.occurrence_id,
                ..ok()
            },
            Code::InvalidArgument,
            "occurrence_id",
        ),
        (
            "no administration time",
            pb::SubmitResponsesRequest {
                administered_at: None,
                ..ok()
            },
            Code::InvalidArgument,
            "administered_at",
        ),
        (
            "administered tomorrow",
            pb::SubmitResponsesRequest {
                administered_at: Some(pb_ts("2026-06-11T00:00:00Z")),
                ..ok()
            },
            Code::InvalidArgument,
            "administered_at",
        ),
        (
            "no request id",
            pb::SubmitResponsesRequest {
                request_id: String::new(),
                ..ok()
            },
            Code::InvalidArgument,
            "request_id",
        ),
    ];
    for (case, request, code, field) in cases {
        let status = h.submit(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{case}: {status:?}");
        assert_eq!(field_of(&status), field, "{case}");
    }
    assert!(h.events(TENANT).await.is_empty());
}

fn mood(version: u32, method: pb::ScoringMethod) -> pb::Instrument {
    pb::Instrument {
        instrument_id: "mood-3".into(),
        version,
        title: "Three mood items".into(),
        min_answer: 0,
        max_answer: 4,
        items: (1..=3)
            .map(|number| pb::Item {
                number,
                reversed: number == 3,
                ..Default::default()
            })
            .collect(),
        method: method.into(),
        max_missing: 0,
        higher_is_better: true,
        subscales_interpretable: true,
        source: "the clinic's own".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_partner_instrument_is_scored_and_rescored_with_its_new_version() {
    let h = harness("2026-06-10T00:00:00Z").await;
    h.enroll(TENANT, "p-1").await;
    let v1 = h
        .api
        .define_instrument(req(
            TENANT,
            pb::DefineInstrumentRequest {
                instrument: Some(mood(0, pb::ScoringMethod::Sum)),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .instrument
        .unwrap();
    assert_eq!((v1.version, v1.built_in), (1, false));
    // Answers 4, 2, 1: item 3 reversed to 3; sum 9.
    let a = h
        .submit(submission(
            "p-1",
            "mood-3",
            &[4, 2, 1],
            "2026-06-09T09:00:00Z",
        ))
        .await
        .unwrap();
    assert_eq!(a.scorings[0].total.as_ref().unwrap().exact, "9");
    h.api
        .define_instrument(req(
            TENANT,
            pb::DefineInstrumentRequest {
                instrument: Some(mood(2, pb::ScoringMethod::MeanOfItems)),
            },
        ))
        .await
        .unwrap();
    let rescored = h
        .api
        .rescore_assessments(req(
            TENANT,
            pb::RescoreAssessmentsRequest {
                participant_ref: "p-1".into(),
                instrument_id: "mood-3".into(),
                instrument_version: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((rescored.rescored, rescored.skipped), (1, 0));
    let after = h
        .api
        .get_assessment(req(
            TENANT,
            pb::GetAssessmentRequest {
                participant_ref: "p-1".into(),
                assessment_id: a.assessment_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .assessment
        .unwrap();
    let totals: Vec<(u32, String)> = after
        .scorings
        .iter()
        .map(|s| {
            (
                s.instrument_version,
                s.total.as_ref().unwrap().exact.clone(),
            )
        })
        .collect();
    assert_eq!(totals, [(1, "9".into()), (2, "3".into())]);
    // Defining a version again with other content is refused; a bad
    // definition names its field.
    let changed = h
        .api
        .define_instrument(req(
            TENANT,
            pb::DefineInstrumentRequest {
                instrument: Some(mood(1, pb::ScoringMethod::MeanOfItems)),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(changed.code(), Code::AlreadyExists);
    let mut bad = mood(0, pb::ScoringMethod::Sum);
    bad.items[1].number = 5;
    let bad = h
        .api
        .define_instrument(req(
            TENANT,
            pb::DefineInstrumentRequest {
                instrument: Some(bad),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(field_of(&bad), "instrument.items[1].number");
    // Another tenant sees only the built-ins.
    let theirs = h
        .api
        .list_instruments(req("clinic-b", pb::ListInstrumentsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .instruments;
    assert_eq!(theirs.len(), 5);
    let mine = h
        .api
        .list_instruments(req(TENANT, pb::ListInstrumentsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .instruments;
    assert_eq!(mine.len(), 6);
    assert_eq!(mine[5].version, 2);
}

#[tokio::test]
async fn a_designated_baseline_is_used_and_other_tenants_see_nothing() {
    let h = harness("2026-06-10T00:00:00Z").await;
    h.enroll(TENANT, "p-1").await;
    let mut ids = vec![];
    for (values, at) in [
        ([2; 7], "2026-06-02T09:00:00Z"),
        ([1; 7], "2026-06-05T09:00:00Z"),
        ([0; 7], "2026-06-09T09:00:00Z"),
    ] {
        ids.push(
            h.submit(submission("p-1", "gad-7", &values, at))
                .await
                .unwrap()
                .assessment_id,
        );
    }
    let change = |tenant: &'static str| {
        h.api.get_change(req(
            tenant,
            pb::GetChangeRequest {
                participant_ref: "p-1".into(),
                instrument_id: "gad-7".into(),
                sd: Some(pb::SourcedFigure {
                    value: 4.0,
                    source: "test".into(),
                }),
                reliability: Some(pb::SourcedFigure {
                    value: 0.8,
                    source: "test".into(),
                }),
                ..Default::default()
            },
        ))
    };
    let first = change(TENANT).await.unwrap().into_inner();
    assert_eq!(first.baseline_assessment_id, ids[0]);
    // 14 -> 0 on a scale where lower is better: RC = -14 / (4 * sqrt(2) *
    // sqrt(.2)) = -5.53: reliably improved.
    let total = first.total.unwrap();
    assert_eq!(total.absolute.unwrap().exact, "-14");
    assert_eq!(
        total.reliable_change.unwrap().verdict(),
        pb::Verdict::ReliablyImproved
    );
    h.api
        .designate_baseline(req(
            TENANT,
            pb::DesignateBaselineRequest {
                participant_ref: "p-1".into(),
                assessment_id: ids[1].clone(),
            },
        ))
        .await
        .unwrap();
    let second = change(TENANT).await.unwrap().into_inner();
    assert_eq!(second.baseline_assessment_id, ids[1]);
    assert_eq!(second.total.unwrap().absolute.unwrap().exact, "-7");
    // Back to the first: it takes effect again.
    h.api
        .designate_baseline(req(
            TENANT,
            pb::DesignateBaselineRequest {
                participant_ref: "p-1".into(),
                assessment_id: ids[0].clone(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        change(TENANT)
            .await
            .unwrap()
            .into_inner()
            .baseline_assessment_id,
        ids[0]
    );
    assert_eq!(change("clinic-b").await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn an_occurrence_that_cannot_be_completed_is_refused_before_anything_is_written() {
    let h = harness("2026-05-25T00:00:00Z").await;
    let enrollment = h.enroll(TENANT, "p-1").await;
    let slot = h.occurrence(&enrollment, "baseline-scs-sf").await;
    h.clock.set(ts("2026-06-02T12:00:00Z"));
    let named = |at: &str| pb::SubmitResponsesRequest {
        occurrence_id: slot.occurrence_id.clone(),
        ..submission("p-1", "scs-sf", &[3; 12], at)
    };
    // Before the window opens (06-01 09:00).
    let early = h.submit(named("2026-06-01T08:00:00Z")).await.unwrap_err();
    assert_eq!(
        (early.code(), field_of(&early).as_str()),
        (Code::InvalidArgument, "administered_at")
    );
    assert!(h.events(TENANT).await.is_empty());
    let first = named("2026-06-01T10:00:00Z");
    h.submit(first.clone()).await.unwrap();
    // The retry completes nothing new and succeeds.
    h.submit(first).await.unwrap();
    assert_eq!(
        h.occurrence(&enrollment, "baseline-scs-sf").await.status(),
        spb::OccurrenceStatus::Done
    );
    let written = h.events(TENANT).await.len();
    // A second administration for the same slot.
    let again = h.submit(named("2026-06-02T10:00:00Z")).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert_eq!(h.events(TENANT).await.len(), written);
}
