//! ArcService against a real PostgreSQL and a projected cohort: answers
//! come from the active generation, only ever the caller's tenant; paging,
//! filters and the cohort agree with each other; bad input names its field.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tend_api::arc::v1 as pb;
use tend_api::arc::v1::arc_service_server::ArcService;
use tend_arc::{ArcApi, ArcProjection};
use tend_event_store::{EventStore, TenantId};
use tend_projections::{Runner, RunnerOptions};
use tend_service_kit::ManualClock;
use tend_testkit::grpc::req;
use tonic::Code;

const NOW: &str = "2026-06-01T12:00:00Z";

async fn projected() -> ArcApi {
    let db = tend_testkit::fresh_database().await;
    let store = EventStore::open(db.pool.clone(), Default::default())
        .await
        .unwrap();
    let now: Timestamp = NOW.parse().unwrap();
    let directory =
        tend_privacy::Directory::open(db.pool.clone(), tend_testkit::grpc::master_keys("test"))
            .await
            .unwrap();
    for (tenant, n, seed) in [("clinic-a", 25, 1), ("clinic-b", 3, 2)] {
        tend_demo::generate(
            &store,
            &directory,
            &tend_demo::Options {
                tenant: TenantId::new(tenant).unwrap(),
                participants: n,
                seed,
                now,
                concurrency: 8,
            },
        )
        .await
        .unwrap();
    }
    let clock = Arc::new(ManualClock::new(now));
    let mut runner = Runner::new(
        store.clone(),
        ArcProjection::new(store.clone(), clock.clone(), Default::default(), true),
        RunnerOptions {
            lease_ttl: Duration::from_secs(10),
            ..Default::default()
        },
    );
    while runner.step().await.unwrap().events > 0 {}
    ArcApi::new(db.pool, directory, clock)
}

async fn get_arc(api: &ArcApi, tenant: &str, participant: &str) -> Result<pb::Arc, tonic::Status> {
    api.get_arc(req(
        tenant,
        pb::GetArcRequest {
            participant_ref: participant.into(),
        },
    ))
    .await
    .map(|r| r.into_inner().arc.unwrap())
}

async fn list_all(api: &ArcApi, tenant: &str, filter: pb::ListArcsRequest) -> Vec<pb::ArcSummary> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = api
            .list_arcs(req(
                tenant,
                pb::ListArcsRequest {
                    page_token: token,
                    ..filter.clone()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.arcs.len() <= filter.page_size.max(1) as usize || filter.page_size == 0);
        out.extend(page.arcs);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

fn assert_invalid(status: tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains(field),
        "{status:?} should name {field}"
    );
}

#[tokio::test]
async fn get_arc_reads_the_callers_tenant_only() {
    let api = projected().await;
    let arc = get_arc(&api, "clinic-a", "demo-00003").await.unwrap();
    assert_eq!(arc.participant_ref, "demo-00003");
    assert_ne!(arc.phase, pb::Phase::Unspecified as i32);
    assert!(arc.position > 0);
    let enrollment = arc.enrollment.as_ref().unwrap();
    // Every arc week of the protocol is listed, and the totals add up.
    let week = tend_domain::protocol::arc_week;
    let weeks = week(enrollment.arc_first_day)..=week(enrollment.arc_last_day);
    assert_eq!(arc.weeks.len(), weeks.count());
    let due: u32 = arc
        .weeks
        .iter()
        .map(|w| w.adherence.as_ref().unwrap().due)
        .sum();
    assert_eq!(arc.total.as_ref().unwrap().due, due);
    let split = [&arc.before_session, &arc.session_day, &arc.after_session]
        .iter()
        .map(|a| a.as_ref().unwrap().due)
        .sum::<u32>();
    assert_eq!(split, due);

    // One reference in two tenants is two people.
    let other = get_arc(&api, "clinic-b", "demo-00000").await.unwrap();
    let mine = get_arc(&api, "clinic-a", "demo-00000").await.unwrap();
    assert_ne!(other.enrollment, mine.enrollment);
    // And a tenant sees nothing of another's participants.
    for (tenant, participant) in [("clinic-b", "demo-00003"), ("clinic-c", "demo-00000")] {
        let e = get_arc(&api, tenant, participant).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
    }
    assert_invalid(
        get_arc(&api, "clinic-a", "").await.unwrap_err(),
        "participant_ref",
    );
}

#[tokio::test]
async fn list_arcs_pages_through_everyone_once_and_filters_agree_with_each_arc() {
    let api = projected().await;
    let all = list_all(
        &api,
        "clinic-a",
        pb::ListArcsRequest {
            page_size: 7,
            ..Default::default()
        },
    )
    .await;
    let refs: BTreeSet<_> = all.iter().map(|a| a.participant_ref.clone()).collect();
    assert_eq!((all.len(), refs.len()), (25, 25));
    assert_eq!(
        list_all(&api, "clinic-b", Default::default()).await.len(),
        3
    );

    for phase in [
        pb::Phase::BeforeSession,
        pb::Phase::Integration,
        pb::Phase::Complete,
    ] {
        let listed = list_all(
            &api,
            "clinic-a",
            pb::ListArcsRequest {
                phase: phase as i32,
                page_size: 4,
                ..Default::default()
            },
        )
        .await;
        let expected = all.iter().filter(|a| a.phase == phase as i32).count();
        assert_eq!(listed.len(), expected, "{phase:?}");
        for a in &listed {
            let arc = get_arc(&api, "clinic-a", &a.participant_ref).await.unwrap();
            assert_eq!(arc.phase, phase as i32);
        }
    }
    let mut flagged = 0;
    for flag in [
        pb::FlagKind::CriticReturns,
        pb::FlagKind::SubscaleRise,
        pb::FlagKind::MissedInARow,
    ] {
        let listed = list_all(
            &api,
            "clinic-a",
            pb::ListArcsRequest {
                flag: flag as i32,
                ..Default::default()
            },
        )
        .await;
        flagged += listed.len();
        for a in &listed {
            assert!(a.open_flags.contains(&(flag as i32)));
            let arc = get_arc(&api, "clinic-a", &a.participant_ref).await.unwrap();
            assert!(arc.open_flags.iter().any(|f| f.kind == flag as i32));
        }
        let expected = all
            .iter()
            .filter(|a| a.open_flags.contains(&(flag as i32)))
            .count();
        assert_eq!(listed.len(), expected);
    }
    assert!(flagged > 0, "a cohort of 25 should have some open warnings");

    let bad = |r: pb::ListArcsRequest| {
        let api = api.clone();
        async move { api.list_arcs(req("clinic-a", r)).await.unwrap_err() }
    };
    assert_invalid(
        bad(pb::ListArcsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await,
        "page_size",
    );
    assert_invalid(
        bad(pb::ListArcsRequest {
            page_token: "not-a-token".into(),
            ..Default::default()
        })
        .await,
        "page_token",
    );
    assert_invalid(
        bad(pb::ListArcsRequest {
            phase: 99,
            ..Default::default()
        })
        .await,
        "phase",
    );
}

#[tokio::test]
async fn the_cohort_agrees_with_the_arcs_it_summarises() {
    let api = projected().await;
    let cohort = |protocol: &str| {
        let api = api.clone();
        let protocol = protocol.to_owned();
        async move {
            api.get_cohort(req(
                "clinic-a",
                pb::GetCohortRequest {
                    protocol_id: protocol,
                    ..Default::default()
                },
            ))
            .await
        }
    };
    let mut enrolled = 0;
    for protocol in ["integration-arc-8w", "msc-8w"] {
        let c = cohort(protocol).await.unwrap().into_inner();
        let arcs = list_all(
            &api,
            "clinic-a",
            pb::ListArcsRequest {
                protocol_id: protocol.into(),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(c.enrolled as usize, arcs.len(), "{protocol}");
        enrolled += c.enrolled;
        assert_eq!(
            c.phases.iter().map(|p| p.participants).sum::<u32>(),
            c.enrolled
        );
        for p in &c.phases {
            let n = arcs.iter().filter(|a| a.phase == p.phase).count();
            assert_eq!(p.participants as usize, n, "{protocol} {:?}", p.phase);
        }
        for f in &c.open_flags {
            let n = arcs
                .iter()
                .filter(|a| a.open_flags.contains(&f.kind))
                .count();
            assert_eq!(f.participants as usize, n);
        }
        for w in &c.weeks {
            assert!(
                0.0 <= w.q1 && w.q1 <= w.median && w.median <= w.q3 && w.q3 <= 1.0,
                "{w:?}"
            );
        }
        let changes: Vec<f64> = arcs.iter().filter_map(|a| a.scs_change_percent).collect();
        match &c.scs_change_percent {
            Some(m) => {
                assert_eq!(m.n as usize, changes.len());
                let mean = changes.iter().sum::<f64>() / changes.len() as f64;
                assert!((m.mean - mean).abs() < 1e-9);
                assert!(m.low <= m.mean && m.mean <= m.high);
            }
            None => assert!(changes.is_empty()),
        }
        assert_eq!(c.benchmark_percent, 43.0);
    }
    assert_eq!(enrolled, 25);
    // An unknown protocol is an empty cohort; a missing one is an error.
    assert_eq!(
        cohort("nobody-uses-this")
            .await
            .unwrap()
            .into_inner()
            .enrolled,
        0
    );
    assert_invalid(cohort("").await.unwrap_err(), "protocol_id");
    // Projection status: caught up.
    let s = api
        .get_projection_status(req("clinic-a", pb::GetProjectionStatusRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.projections[0].name, "arc");
    assert_eq!(s.projections[0].events_behind, 0);
}
