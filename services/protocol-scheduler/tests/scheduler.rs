//! The scheduler against a real PostgreSQL, with a hand-moved clock: due and
//! missed events exactly once with two schedulers, after downtime, and with
//! completions racing them; ListDue across a tenant; lease takeover.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use tend_api::scheduler::v1 as pb;
use tend_api::scheduler::v1::protocol_scheduler_service_server::ProtocolSchedulerService;
use tend_event_store::{EventStore, Filter, TenantId};
use tend_protocol_scheduler::{SchedulerApi, Worker, WorkerOptions};
use tend_service_kit::ManualClock;
use tend_testkit::grpc::{Services, pb_ts, req, ts};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

struct Harness {
    store: EventStore,
    clock: ManualClock,
    api: SchedulerApi,
}

async fn harness(start: &str) -> Harness {
    let Services {
        store,
        clock,
        directory,
        ..
    } = Services::start(start).await;
    let api = SchedulerApi::new(store.clone(), directory, Arc::new(clock.clone()));
    Harness { store, clock, api }
}

impl Harness {
    fn worker(&self, lease_ttl: Duration) -> Worker {
        self.worker_on(self.store.clone(), lease_ttl)
    }

    fn worker_on(&self, store: EventStore, lease_ttl: Duration) -> Worker {
        Worker::new(
            store,
            Arc::new(self.clock.clone()),
            WorkerOptions {
                tick_interval: Duration::from_millis(20),
                lease_ttl,
                batch_size: 7,
                miss_grace: jiff::SignedDuration::ZERO,
                ..WorkerOptions::default()
            },
        )
    }

    /// A published two-a-day protocol over days -7..7.
    async fn twice_daily(&self, tenant: &str) {
        let activity = pb::Activity {
            key: "practice".into(),
            kind: Some(pb::activity::Kind::Practice(pb::PracticeActivity {
                practice: "self-compassion-break".into(),
            })),
            span: Some(pb::activity::Span::Days(pb::DayRange {
                first: -7,
                last: 7,
            })),
            cadence: pb::Cadence::Daily as i32,
            times: vec!["08:00".into(), "20:00".into()],
            target_minutes: 10,
            window_minutes: 120,
        };
        self.api
            .create_protocol(req(
                tenant,
                pb::CreateProtocolRequest {
                    protocol: Some(pb::Protocol {
                        protocol_id: "twice-daily".into(),
                        title: "Twice daily".into(),
                        weeks_before: 1,
                        weeks_after: 1,
                        activities: vec![activity],
                        ..Default::default()
                    }),
                },
            ))
            .await
            .unwrap();
        self.api
            .publish_protocol(req(
                tenant,
                pb::PublishProtocolRequest {
                    protocol_id: "twice-daily".into(),
                    version: 1,
                },
            ))
            .await
            .unwrap();
    }

    async fn enroll(&self, tenant: &str, participant: &str, zone: &str) -> pb::Enrollment {
        self.api
            .enroll(req(
                tenant,
                pb::EnrollRequest {
                    request_id: Uuid::new_v4().to_string(),
                    participant_ref: participant.into(),
                    protocol_id: "twice-daily".into(),
                    protocol_version: 0,
                    session_local_time: "2026-06-08T10:00".into(),
                    time_zone: zone.into(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .enrollment
            .unwrap()
    }

    async fn schedule(&self, tenant: &str, enrollment_id: &str) -> Vec<pb::Occurrence> {
        self.api
            .get_schedule(req(
                tenant,
                pb::GetScheduleRequest {
                    enrollment_id: enrollment_id.into(),
                    from: None,
                    to: None,
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .occurrences
    }

    /// Makes every stream due for processing again, as if it had moved,
    /// and with `forget_digests` as if its rows were another build's.
    async fn process_again(&self, forget_digests: bool) {
        let digests = if forget_digests {
            ", rows_digest = NULL"
        } else {
            ""
        };
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "UPDATE scheduler_streams SET processed_version = -1{digests};
             INSERT INTO scheduler_behind SELECT tenant_id, stream_id FROM scheduler_streams
             ON CONFLICT DO NOTHING;"
        )))
        .execute(self.store.pool())
        .await
        .unwrap();
    }

    /// The tenant's occurrence rows that `ListDue` reads: id to (scheduled
    /// at, in seconds; completed; the transaction that last wrote the row).
    async fn stored_rows(&self, tenant: &str) -> BTreeMap<String, (i64, bool, String)> {
        sqlx::query_as::<_, (Uuid, i64, bool, String)>(
            "SELECT occurrence_id, extract(epoch FROM scheduled_at)::bigint,
                    completed_at IS NOT NULL, xmin::text
             FROM scheduler_occurrences WHERE tenant_id = $1",
        )
        .bind(tenant)
        .fetch_all(self.store.pool())
        .await
        .unwrap()
        .into_iter()
        .map(|(id, at, done, xmin)| (id.to_string(), (at, done, xmin)))
        .collect()
    }

    /// Due and missed events per occurrence id, from the whole log.
    async fn time_driven_events(&self) -> HashMap<String, (usize, usize)> {
        let filter = Filter {
            tenant: None,
            categories: vec![],
            event_types: vec!["OccurrenceDue".into(), "OccurrenceMissed".into()],
        };
        let mut counts: HashMap<String, (usize, usize)> = HashMap::new();
        let mut after = 0;
        loop {
            let page = self.store.read_log(&filter, after, 1000).await.unwrap();
            for e in &page.events {
                let id = e.payload["occurrence_id"].as_str().unwrap().to_owned();
                let c = counts.entry(id).or_default();
                match e.event_type.as_str() {
                    "OccurrenceDue" => c.0 += 1,
                    _ => c.1 += 1,
                }
            }
            if page.scanned_through == after {
                return counts;
            }
            after = page.scanned_through;
        }
    }
}

const ZONES: [&str; 4] = [
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
];

#[tokio::test]
async fn two_schedulers_record_each_due_and_missed_exactly_once() {
    let h = harness("2026-05-31T00:00:00Z").await;
    h.twice_daily("clinic").await;
    let mut enrollments = Vec::new();
    for i in 0..16 {
        enrollments.push(h.enroll("clinic", &format!("P-{i:03}"), ZONES[i % 4]).await);
    }
    // Long enough that a round never outlives its lease on a slow machine.
    let ttl = Duration::from_secs(2);
    let (a, b) = (h.worker(ttl), h.worker(ttl));
    let mut completed = Vec::new();
    let mut a_alive = true;
    // 80 × 5 h runs past the last window of every zone.
    for step in 0..80 {
        h.clock.advance(SignedDuration::from_hours(5));
        // Participants with an even number complete what is open now,
        // racing the schedulers.
        for e in enrollments.iter().step_by(2) {
            for o in h.schedule("clinic", &e.enrollment_id).await {
                if o.status == pb::OccurrenceStatus::Due as i32 {
                    h.api
                        .complete_occurrence(req(
                            "clinic",
                            pb::CompleteOccurrenceRequest {
                                enrollment_id: e.enrollment_id.clone(),
                                occurrence_id: o.occurrence_id.clone(),
                                completed_at: None,
                            },
                        ))
                        .await
                        .unwrap();
                    completed.push(o.occurrence_id);
                }
            }
        }
        if step == 25 {
            // A dies without giving up its lease; B takes over once it expires.
            a_alive = false;
            tokio::time::sleep(ttl + Duration::from_millis(100)).await;
        }
        let (ra, rb) = if a_alive {
            tokio::join!(a.run_once(), b.run_once())
        } else {
            (Ok(Default::default()), b.run_once().await)
        };
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert!(
            !(ra.held_lease && rb.held_lease),
            "one lease holder at a time"
        );
    }
    let counts = h.time_driven_events().await;
    let mut expected = 0;
    for e in &enrollments {
        for o in h.schedule("clinic", &e.enrollment_id).await {
            let (due, missed) = counts.get(&o.occurrence_id).copied().unwrap_or((0, 0));
            assert!(
                due <= 1 && missed <= 1,
                "{} recorded {due} due, {missed} missed",
                o.occurrence_id
            );
            if completed.contains(&o.occurrence_id) {
                assert_eq!(missed, 0, "a completed occurrence is never missed");
                assert_eq!(o.status, pb::OccurrenceStatus::Done as i32);
            } else {
                assert_eq!((due, missed), (1, 1), "every window opened and closed once");
                assert_eq!(o.status, pb::OccurrenceStatus::Missed as i32);
                expected += 2;
            }
        }
    }
    assert!(!completed.is_empty());
    assert!(expected > 200, "the test exercised {expected} events");
}

#[tokio::test]
async fn downtime_is_caught_up_in_one_round_without_duplicates() {
    let h = harness("2026-05-31T00:00:00Z").await;
    h.twice_daily("clinic").await;
    let e = h.enroll("clinic", "P-1", "Europe/London").await;
    let worker = h.worker(Duration::from_secs(10));
    assert_eq!(worker.run_once().await.unwrap().events, 0);
    // Down for ten days.
    h.clock.set(ts("2026-06-10T12:00:00Z"));
    let round = worker.run_once().await.unwrap();
    let schedule = h.schedule("clinic", &e.enrollment_id).await;
    let closed = schedule
        .iter()
        .filter(|o| o.status == pb::OccurrenceStatus::Missed as i32)
        .count();
    let open = schedule
        .iter()
        .filter(|o| o.status == pb::OccurrenceStatus::Due as i32)
        .count();
    assert_eq!(round.events, 2 * closed + open);
    // 06-01 to 06-09 twice a day, and 06-10 08:00 (closed at 10:00).
    assert_eq!(closed, 19);
    assert_eq!(worker.run_once().await.unwrap().events, 0);
    // Events arrived in the order time made them.
    let filter = Filter::tenant(TenantId::new("clinic").unwrap());
    let page = h.store.read_log(&filter, 0, 10_000).await.unwrap();
    let instants: Vec<Timestamp> = page
        .events
        .iter()
        .filter_map(|e| match e.event_type.as_str() {
            "OccurrenceDue" => e.payload["scheduled_at"].as_str(),
            "OccurrenceMissed" => e.payload["window_closed_at"].as_str(),
            _ => None,
        })
        .map(|s| s.parse().unwrap())
        .collect();
    assert!(instants.windows(2).all(|w| w[0] <= w[1]));
}

/// A holder of the previous release marks streams seen without listing
/// them in `scheduler_behind`; whoever takes the lease next finds them.
#[tokio::test]
async fn streams_left_behind_unlisted_are_found_by_the_next_holder_of_the_lease() {
    let h = harness("2026-06-01T00:00:00Z").await;
    h.twice_daily("clinic").await;
    for i in 0..3 {
        h.enroll("clinic", &format!("P-{i}"), "UTC").await;
    }
    let first = h.worker(Duration::from_secs(60));
    assert_eq!(first.run_once().await.unwrap().streams, 3);
    // As the previous release leaves it: behind, but not listed.
    sqlx::query("UPDATE scheduler_streams SET processed_version = -1")
        .execute(h.store.pool())
        .await
        .unwrap();
    assert_eq!(
        first.run_once().await.unwrap().streams,
        0,
        "a holder that kept the lease reads only the list"
    );
    sqlx::query("DELETE FROM leases")
        .execute(h.store.pool())
        .await
        .unwrap();
    let next = h.worker(Duration::from_secs(60));
    assert_eq!(next.run_once().await.unwrap().streams, 3);
    let behind: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM scheduler_streams WHERE seen_version > processed_version),
                (SELECT count(*) FROM scheduler_behind)",
    )
    .fetch_one(h.store.pool())
    .await
    .unwrap();
    assert_eq!(behind, (0, 0));
}

/// What a mark and a round write is in no index of `scheduler_streams`, so
/// that PostgreSQL updates its rows in place (HOT) rather than adding an
/// entry to every index twice per logged practice.
#[tokio::test]
async fn the_columns_a_round_writes_are_in_no_index_of_scheduler_streams() {
    let h = harness("2026-06-01T00:00:00Z").await;
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT pg_get_indexdef(indexrelid) FROM pg_index
         WHERE indrelid = 'scheduler_streams'::regclass",
    )
    .fetch_all(h.store.pool())
    .await
    .unwrap();
    assert!(indexes.len() >= 2, "{indexes:?}");
    for def in &indexes {
        for column in ["seen_version", "processed_version", "rows_digest"] {
            assert!(!def.contains(column), "{def} names {column}");
        }
    }
    let fillfactor: Vec<String> = sqlx::query_scalar(
        "SELECT unnest(reloptions) FROM pg_class WHERE oid = 'scheduler_streams'::regclass",
    )
    .fetch_all(h.store.pool())
    .await
    .unwrap();
    assert_eq!(fillfactor, vec!["fillfactor=80".to_string()]);
}

#[tokio::test]
async fn a_catch_up_marks_every_moved_stream_across_its_chunks_before_its_checkpoint() {
    // More participants than one mark transaction takes (200), twice over.
    let h = harness("2026-06-01T00:00:00Z").await;
    h.twice_daily("clinic").await;
    let n = 450;
    for i in 0..n {
        h.enroll("clinic", &format!("P-{i}"), ZONES[i % ZONES.len()])
            .await;
    }
    let worker = h.worker(Duration::from_secs(10));
    let head = h.store.head();
    worker.run_once().await.unwrap();
    let (marked, behind, listed): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE seen_version > processed_version),
                (SELECT count(*) FROM scheduler_behind WHERE tenant_id = 'clinic')
         FROM scheduler_streams WHERE tenant_id = 'clinic' AND seen_version >= 0",
    )
    .fetch_one(h.store.pool())
    .await
    .unwrap();
    assert_eq!(listed, behind, "each stream behind is listed as such");
    let checkpoint: i64 =
        sqlx::query_scalar("SELECT position FROM scheduler_checkpoint WHERE name = 'scheduler'")
            .fetch_one(h.store.pool())
            .await
            .unwrap();
    assert_eq!(marked, n as i64, "every enrolled stream is marked seen");
    // The first round processes 20 batches of 7; the rest wait, marked.
    assert_eq!(behind, n as i64 - 140);
    assert!(
        checkpoint as u64 >= head,
        "the checkpoint moved past the marks"
    );
    // Later rounds process the rest and nothing more.
    let mut rounds = 0;
    while worker.run_once().await.unwrap().streams > 0 {
        rounds += 1;
        assert!(rounds < 10, "rounds never ran out of streams");
    }
    let behind: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM scheduler_streams
                 WHERE seen_version > processed_version
                    OR practice_seen_version > practice_processed_version),
                (SELECT count(*) FROM scheduler_behind)",
    )
    .fetch_one(h.store.pool())
    .await
    .unwrap();
    assert_eq!(
        behind,
        (0, 0),
        "no stream is left behind, nor listed as such"
    );
    let occurrences: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT stream_id) FROM scheduler_occurrences WHERE tenant_id = 'clinic'",
    )
    .fetch_one(h.store.pool())
    .await
    .unwrap();
    assert_eq!(
        occurrences, n as i64,
        "every participant's schedule is written"
    );
}

#[tokio::test]
async fn list_due_answers_for_the_callers_tenant_in_pages() {
    let h = harness("2026-05-31T00:00:00Z").await;
    for tenant in ["clinic", "other"] {
        h.twice_daily(tenant).await;
    }
    let mut enrolled = Vec::new();
    for (i, zone) in ZONES.iter().take(3).enumerate() {
        enrolled.push(h.enroll("clinic", &format!("P-{i}"), zone).await);
    }
    h.enroll("other", "P-0", "UTC").await;
    let worker = h.worker(Duration::from_secs(10));
    worker.run_once().await.unwrap();
    let (from, to) = (ts("2026-06-05T00:00:00Z"), ts("2026-06-07T00:00:00Z"));
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = h
            .api
            .list_due(req(
                "clinic",
                pb::ListDueRequest {
                    from: Some(pb_ts(from)),
                    to: Some(pb_ts(to)),
                    page_size: 5,
                    page_token: token.clone(),
                    open_only: false,
                    participant_ref: String::new(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.occurrences.len() <= 5);
        all.extend(page.occurrences);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    // Two days, twice a day, three participants.
    assert_eq!(all.len(), 12);
    let refs: BTreeMap<&str, usize> = all.iter().fold(BTreeMap::new(), |mut m, o| {
        *m.entry(o.participant_ref.as_str()).or_default() += 1;
        m
    });
    assert_eq!(refs.len(), 3, "only the caller's tenant: {refs:?}");
    let times: Vec<i64> = all
        .iter()
        .map(|o| o.scheduled_at.unwrap().seconds)
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "in time order");
    assert!(
        all.iter()
            .all(|o| o.status == pb::OccurrenceStatus::Upcoming as i32)
    );

    // Time passes (due events only: the rows stay as they were), then one
    // occurrence is completed: the next round shows it done.
    h.clock.set(ts("2026-06-05T12:30:00Z"));
    assert!(worker.run_once().await.unwrap().events > 0);
    let open = h.schedule("clinic", &enrolled[0].enrollment_id).await;
    let done = open
        .iter()
        .find(|o| o.local_date == "2026-06-05" && o.local_time == "08:00")
        .unwrap();
    assert_eq!(done.status, pb::OccurrenceStatus::Due as i32);
    h.api
        .complete_occurrence(req(
            "clinic",
            pb::CompleteOccurrenceRequest {
                enrollment_id: enrolled[0].enrollment_id.clone(),
                occurrence_id: done.occurrence_id.clone(),
                completed_at: None,
            },
        ))
        .await
        .unwrap();
    worker.run_once().await.unwrap();
    let listed = |open_only| {
        h.api.list_due(req(
            "clinic",
            pb::ListDueRequest {
                from: Some(pb_ts(from)),
                to: Some(pb_ts(to)),
                page_size: 100,
                page_token: String::new(),
                open_only,
                participant_ref: String::new(),
            },
        ))
    };
    let everything = listed(false).await.unwrap().into_inner().occurrences;
    assert_eq!(everything.len(), 12);
    let status_of = |id: &str| {
        everything
            .iter()
            .find(|o| o.occurrence_id == id)
            .unwrap()
            .status
    };
    assert_eq!(
        status_of(&done.occurrence_id),
        pb::OccurrenceStatus::Done as i32
    );
    let open_only = listed(true).await.unwrap().into_inner().occurrences;
    assert_eq!(open_only.len(), 11);
    assert!(
        open_only
            .iter()
            .all(|o| o.occurrence_id != done.occurrence_id)
    );

    let bad = h
        .api
        .list_due(req(
            "clinic",
            pb::ListDueRequest {
                from: Some(pb_ts(to)),
                to: Some(pb_ts(from)),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().starts_with("to:"), "{}", bad.message());
    // Far outside what PostgreSQL holds: refused, not an internal error.
    for (from_seconds, token) in [(-300_000_000_000, ""), (0, "-9000000000000000000.0")] {
        let bad = h
            .api
            .list_due(req(
                "clinic",
                pb::ListDueRequest {
                    from: Some(prost_types::Timestamp {
                        seconds: from_seconds,
                        nanos: 0,
                    }),
                    to: Some(pb_ts(to)),
                    page_token: token.into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(
            bad.code(),
            tonic::Code::InvalidArgument,
            "{}",
            bad.message()
        );
    }
}

#[tokio::test]
async fn a_dead_schedulers_lease_passes_on_and_a_stopped_one_hands_it_over() {
    let h = harness("2026-06-01T07:00:00Z").await;
    h.twice_daily("clinic").await;
    let e = h.enroll("clinic", "P-1", "UTC").await;
    let pool = h.store.pool().clone();
    let holder = || async {
        sqlx::query_scalar::<_, Uuid>("SELECT holder FROM leases WHERE name = 'scheduler'")
            .fetch_optional(&pool)
            .await
            .unwrap()
    };
    let ttl = Duration::from_millis(500);
    // A runs on connections of its own, so that it can die as a process
    // does: its sessions end, and with them any transaction it had open
    // (and the fence's lock on the lease row). An aborted task alone would
    // leave such a transaction on a pooled connection until its next use.
    let a_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap();
    let a_store = EventStore::open(a_pool.clone(), Default::default())
        .await
        .unwrap();
    let a = tokio::spawn(h.worker_on(a_store, ttl).run(CancellationToken::new()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while holder().await.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "A never took the lease"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = holder().await;
    a.abort(); // dies: the lease is left behind
    let _ = a.await;
    a_pool.close().await;
    let stop = CancellationToken::new();
    let b = tokio::spawn(h.worker(ttl).run(stop.clone()));
    // 08:00 UTC on day -7 falls due; only B can record it.
    h.clock.set(ts("2026-06-01T08:00:00Z"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = h.schedule("clinic", &e.enrollment_id).await;
        let counts = h.time_driven_events().await;
        if counts.get(&s[0].occurrence_id) == Some(&(1, 0)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "B never took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(holder().await, first);
    stop.cancel();
    b.await.unwrap();
    assert_eq!(
        holder().await,
        None,
        "a stopping scheduler gives its lease up"
    );
}

#[tokio::test]
async fn migrating_reports_the_change_and_a_dry_run_writes_nothing() {
    let h = harness("2026-05-31T00:00:00Z").await;
    h.twice_daily("clinic").await;
    let e = h.enroll("clinic", "P-1", "Europe/London").await;
    // Version 2: one time a day, at 09:00.
    let mut v2 = h
        .api
        .get_protocol(req(
            "clinic",
            pb::GetProtocolRequest {
                protocol_id: "twice-daily".into(),
                version: 1,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .protocol
        .unwrap();
    v2.activities[0].times = vec!["09:00".into()];
    let draft = h
        .api
        .create_protocol(req(
            "clinic",
            pb::CreateProtocolRequest { protocol: Some(v2) },
        ))
        .await
        .unwrap()
        .into_inner()
        .protocol
        .unwrap();
    assert_eq!(draft.version, 2);
    let migrate = |dry_run| pb::MigrateEnrollmentRequest {
        enrollment_id: e.enrollment_id.clone(),
        protocol_version: 2,
        dry_run,
    };
    let refused = h
        .api
        .migrate_enrollment(req("clinic", migrate(true)))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "v2 is a draft"
    );
    h.api
        .publish_protocol(req(
            "clinic",
            pb::PublishProtocolRequest {
                protocol_id: "twice-daily".into(),
                version: 2,
            },
        ))
        .await
        .unwrap();

    // Three days in: days -7..-5 are history, days -4..7 change.
    h.clock.set(ts("2026-06-03T21:00:00Z"));
    let worker = h.worker(Duration::from_secs(10));
    worker.run_once().await.unwrap();
    assert_eq!(h.stored_rows("clinic").await.len(), 30);
    let before = h.schedule("clinic", &e.enrollment_id).await;
    let stream_version = || async {
        let filter = Filter::tenant(TenantId::new("clinic").unwrap());
        h.store
            .read_log(&filter, 0, 10_000)
            .await
            .unwrap()
            .events
            .len()
    };
    let events_before = stream_version().await;
    let dry = h
        .api
        .migrate_enrollment(req("clinic", migrate(true)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stream_version().await,
        events_before,
        "a dry run writes nothing"
    );
    assert_eq!(h.schedule("clinic", &e.enrollment_id).await, before);
    let real = h
        .api
        .migrate_enrollment(req("clinic", migrate(false)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dry.change, real.change, "the dry run told the truth");
    let change = real.change.unwrap();
    // 12 future days: the 08:00 slot moves to 09:00, the 20:00 slot goes.
    assert_eq!(
        (
            change.moved_occurrence_ids.len(),
            change.removed_occurrence_ids.len(),
            change.added_occurrence_ids.len()
        ),
        (12, 12, 0)
    );
    assert_eq!(real.enrollment.unwrap().protocol_version, 2);
    let after = h.schedule("clinic", &e.enrollment_id).await;
    assert_eq!(after.len(), 6 + 12);
    assert!(
        after[6..]
            .iter()
            .all(|o| o.local_time == "09:00" && o.protocol_version == 2)
    );
    assert!(after[..6].iter().all(|o| o.protocol_version == 1));

    // The next round brings the stored rows along: the removed ones are
    // deleted, the moved ones rewritten, the history left as it was.
    let rows_before = h.stored_rows("clinic").await;
    worker.run_once().await.unwrap();
    let rows = h.stored_rows("clinic").await;
    let stored: BTreeMap<&str, i64> = rows.iter().map(|(id, r)| (id.as_str(), r.0)).collect();
    let scheduled: BTreeMap<&str, i64> = after
        .iter()
        .map(|o| (o.occurrence_id.as_str(), o.scheduled_at.unwrap().seconds))
        .collect();
    assert_eq!(stored, scheduled);
    let rewritten = rows
        .iter()
        .filter(|(id, r)| rows_before.get(*id).map(|b| &b.2) != Some(&r.2))
        .count();
    assert_eq!(rewritten, 12, "only the moved rows are written");
}

#[tokio::test]
async fn a_round_rewrites_only_the_occurrence_rows_that_changed() {
    let h = harness("2026-05-31T00:00:00Z").await;
    h.twice_daily("clinic").await;
    let e = h.enroll("clinic", "P-1", "UTC").await;
    let worker = h.worker(Duration::from_secs(10));
    worker.run_once().await.unwrap();
    let first = h.stored_rows("clinic").await;
    assert_eq!(first.len(), 30);

    // Time passes: due and missed events, and no row changes.
    h.clock.set(ts("2026-06-05T12:30:00Z"));
    assert!(worker.run_once().await.unwrap().events > 0);
    assert_eq!(h.stored_rows("clinic").await, first);

    // One occurrence completed: that row alone is written.
    let done = h
        .schedule("clinic", &e.enrollment_id)
        .await
        .into_iter()
        .find(|o| o.local_date == "2026-06-05" && o.local_time == "08:00")
        .unwrap();
    h.api
        .complete_occurrence(req(
            "clinic",
            pb::CompleteOccurrenceRequest {
                enrollment_id: e.enrollment_id.clone(),
                occurrence_id: done.occurrence_id.clone(),
                completed_at: None,
            },
        ))
        .await
        .unwrap();
    worker.run_once().await.unwrap();
    let rows = h.stored_rows("clinic").await;
    let changed: Vec<(&String, &(i64, bool, String))> = rows
        .iter()
        .filter(|(id, r)| first.get(*id) != Some(*r))
        .collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0].0, &done.occurrence_id);
    assert!(changed[0].1.1, "it is stored as completed");

    // Rows the scheduler did not write itself (another build's, with no
    // digest) are rewritten once, then left alone.
    sqlx::query("UPDATE scheduler_occurrences SET row_digest = NULL, detail = '{}'")
        .execute(h.store.pool())
        .await
        .unwrap();
    h.process_again(true).await;
    worker.run_once().await.unwrap();
    let emptied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM scheduler_occurrences WHERE detail = '{}'")
            .fetch_one(h.store.pool())
            .await
            .unwrap();
    assert_eq!(emptied, 0, "every row is written again");
    let mended = h.stored_rows("clinic").await;
    assert_eq!(mended.len(), 30);
    h.process_again(false).await;
    worker.run_once().await.unwrap();
    assert_eq!(h.stored_rows("clinic").await, mended);
}

/// A round writes its batch of participants in one transaction; when that
/// fails, it writes them one by one, so that the participant whose rows
/// cannot be written is parked for a minute and the others go on.
#[tokio::test]
async fn a_batch_that_cannot_be_written_is_written_stream_by_stream() {
    let h = harness("2026-05-31T00:00:00Z").await;
    h.twice_daily("clinic").await;
    h.enroll("clinic", "P-1", "UTC").await;
    let worker = h.worker(Duration::from_secs(10));
    worker.run_once().await.unwrap();
    let first: String = sqlx::query_scalar("SELECT DISTINCT stream_id FROM scheduler_occurrences")
        .fetch_one(h.store.pool())
        .await
        .unwrap();
    // Rows of any other participant fail to insert.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE FUNCTION refuse_others() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.stream_id <> '{first}' THEN RAISE EXCEPTION 'refused'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_others BEFORE INSERT OR UPDATE ON scheduler_occurrences
             FOR EACH ROW EXECUTE FUNCTION refuse_others();"
    )))
    .execute(h.store.pool())
    .await
    .unwrap();
    h.enroll("clinic", "P-2", "UTC").await;
    // Both in the next round's batch: the first's rows are stored again.
    h.process_again(true).await;
    sqlx::query("DELETE FROM scheduler_occurrences")
        .execute(h.store.pool())
        .await
        .unwrap();
    let round = worker.run_once().await.unwrap();
    assert_eq!(round.streams, 1, "{round:?}");
    let stored: Vec<(String, i64)> =
        sqlx::query_as("SELECT stream_id, count(*) FROM scheduler_occurrences GROUP BY stream_id")
            .fetch_all(h.store.pool())
            .await
            .unwrap();
    assert_eq!(stored, vec![(first.clone(), 30)]);
    let parked: (String, bool, bool) = sqlx::query_as(
        "SELECT stream_id, processed_version = seen_version, next_at > $1 + interval '59 s'
         FROM scheduler_streams WHERE stream_id <> $2",
    )
    .bind(tend_service_kit::instants::to_chrono(ts(
        "2026-05-31T00:00:00Z",
    )))
    .bind(&first)
    .fetch_one(h.store.pool())
    .await
    .unwrap();
    assert!(parked.1 && parked.2, "the other is parked: {parked:?}");
    // Once it can be written, it is, a minute later.
    sqlx::raw_sql("DROP TRIGGER refuse_others ON scheduler_occurrences")
        .execute(h.store.pool())
        .await
        .unwrap();
    h.clock.set(ts("2026-05-31T00:01:01Z"));
    worker.run_once().await.unwrap();
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM scheduler_occurrences WHERE stream_id = $1")
            .bind(&parked.0)
            .fetch_one(h.store.pool())
            .await
            .unwrap();
    assert_eq!(rows, 30);
}

#[tokio::test]
async fn another_tenant_cannot_see_or_change_an_enrollment() {
    let h = harness("2026-05-31T00:00:00Z").await;
    h.twice_daily("clinic").await;
    let e = h.enroll("clinic", "P-1", "UTC").await;
    let schedule = h
        .api
        .get_schedule(req(
            "other",
            pb::GetScheduleRequest {
                enrollment_id: e.enrollment_id.clone(),
                from: None,
                to: None,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(schedule.code(), tonic::Code::NotFound);
    let pause = h
        .api
        .pause_enrollment(req(
            "other",
            pb::PauseEnrollmentRequest {
                enrollment_id: e.enrollment_id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(pause.code(), tonic::Code::NotFound);
    // Nor its protocols.
    let protocol = h
        .api
        .get_protocol(req(
            "other",
            pb::GetProtocolRequest {
                protocol_id: "twice-daily".into(),
                version: 0,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(protocol.code(), tonic::Code::NotFound);
}
