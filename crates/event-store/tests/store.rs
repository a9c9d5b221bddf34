//! The event store against a real PostgreSQL: one fresh database per test.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use tend_event_store::{
    Delivery, Direction, Error, EventStore, ExpectedVersion, Filter, Held, Lease, NewEvent,
    Options, StreamId, TenantId,
};
use tend_testkit::fresh_database;
use uuid::Uuid;

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).expect("valid tenant")
}

fn stream(id: &str) -> StreamId {
    StreamId::new(id).expect("valid stream")
}

fn event(n: u64) -> NewEvent {
    NewEvent::new(Uuid::new_v4(), "PracticeLogged", 1, &json!({ "n": n })).expect("event")
}

async fn open() -> (EventStore, sqlx::PgPool) {
    open_with(Options::default()).await
}

async fn open_with(options: Options) -> (EventStore, sqlx::PgPool) {
    let db = fresh_database().await;
    let store = EventStore::open(db.pool.clone(), options)
        .await
        .expect("open store");
    (store, db.pool)
}

async fn count(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn enforces_expected_versions() {
    let (store, pool) = open().await;
    let (t, s) = (tenant("clinic"), stream("practice-1"));

    let first = store
        .append(&t, &s, ExpectedVersion::NoStream, vec![event(0), event(1)])
        .await
        .expect("new stream");
    assert_eq!(first.stream_version, 1);
    assert_eq!(first.positions, vec![1, 2]);

    let err = store
        .append(&t, &s, ExpectedVersion::NoStream, vec![event(2)])
        .await
        .expect_err("stream exists");
    assert!(
        matches!(
            err,
            Error::WrongExpectedVersion {
                actual: Some(1),
                ..
            }
        ),
        "{err}"
    );
    let err = store
        .append(&t, &s, ExpectedVersion::Exact(0), vec![event(2)])
        .await
        .expect_err("stale version");
    assert!(matches!(err, Error::WrongExpectedVersion { .. }), "{err}");
    let err = store
        .append(
            &t,
            &stream("practice-2"),
            ExpectedVersion::Exact(0),
            vec![event(2)],
        )
        .await
        .expect_err("no such stream");
    assert!(
        matches!(err, Error::WrongExpectedVersion { actual: None, .. }),
        "{err}"
    );

    let next = store
        .append(&t, &s, ExpectedVersion::Exact(1), vec![event(2)])
        .await
        .expect("right version");
    assert_eq!(next.stream_version, 2);
    let any = store
        .append(&t, &s, ExpectedVersion::Any, vec![event(3)])
        .await
        .expect("any version");
    assert_eq!(any.stream_version, 3);
    assert_eq!(count(&pool).await, 4);
}

#[tokio::test]
async fn a_retried_append_writes_nothing_and_returns_the_original_positions() {
    let (store, pool) = open().await;
    let (t, s) = (tenant("clinic"), stream("practice-1"));
    let events = vec![event(0), event(1), event(2)];

    let first = store
        .append(&t, &s, ExpectedVersion::NoStream, events.clone())
        .await
        .expect("first");
    // The retry's expected version is now stale; it is answered anyway.
    let retry = store
        .append(&t, &s, ExpectedVersion::NoStream, events.clone())
        .await
        .expect("retry");
    assert!(!first.already_stored);
    assert!(retry.already_stored);
    assert_eq!(retry.positions, first.positions);
    assert_eq!(retry.stream_version, first.stream_version);
    assert_eq!(count(&pool).await, 3);

    let mut changed = events.clone();
    changed[1].payload = json!({ "n": 99 });
    let err = store
        .append(&t, &s, ExpectedVersion::Any, changed)
        .await
        .expect_err("same id, other content");
    assert!(
        matches!(err, Error::IdempotencyConflict { event_id } if event_id == events[1].id),
        "{err}"
    );
    assert_eq!(count(&pool).await, 3);
}

#[tokio::test]
async fn the_same_append_sent_concurrently_is_stored_once() {
    let (store, pool) = open().await;
    let (t, s) = (tenant("clinic"), stream("practice-1"));
    let events = vec![event(0), event(1)];
    let attempts = (0..20).map(|_| {
        let (store, t, s, events) = (store.clone(), t.clone(), s.clone(), events.clone());
        tokio::spawn(async move { store.append(&t, &s, ExpectedVersion::Any, events).await })
    });
    let results = futures::future::join_all(attempts).await;
    let positions: HashSet<_> = results
        .into_iter()
        .map(|r| r.expect("task").expect("append").positions)
        .collect();
    assert_eq!(positions.len(), 1, "every attempt sees the same positions");
    assert_eq!(count(&pool).await, 2);
}

#[tokio::test]
async fn an_append_is_all_or_nothing() {
    let (store, pool) = open().await;
    let t = tenant("clinic");
    // Two writers race for the same version with five events each: one
    // wins whole, the other leaves no trace, and nothing interleaves.
    let racers = (0..2).map(|w| {
        let (store, t) = (store.clone(), t.clone());
        tokio::spawn(async move {
            let events = (0..5).map(|i| event(w * 10 + i)).collect();
            store
                .append(&t, &stream("practice-1"), ExpectedVersion::NoStream, events)
                .await
        })
    });
    let results = futures::future::join_all(racers).await;
    let won = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    assert_eq!(won, 1);
    let slice = store
        .read_stream(&t, &stream("practice-1"), Direction::Forwards, None, 100)
        .await
        .expect("read");
    assert_eq!(slice.events.len(), 5);
    let writers: HashSet<_> = slice
        .events
        .iter()
        .map(|e| e.payload["n"].as_u64().expect("n") / 10)
        .collect();
    assert_eq!(writers.len(), 1, "events of one writer only");

    // A retry that matches only part of an earlier append writes none of it.
    let stored = store
        .append(
            &t,
            &stream("practice-2"),
            ExpectedVersion::Any,
            vec![event(1)],
        )
        .await
        .expect("append");
    let before = count(&pool).await;
    let partial = vec![
        event(5),
        NewEvent {
            id: slice.events[0].id,
            ..event(6)
        },
    ];
    let err = store
        .append(&t, &stream("practice-2"), ExpectedVersion::Any, partial)
        .await
        .expect_err("partial retry");
    assert!(matches!(err, Error::IdempotencyConflict { .. }), "{err}");
    assert_eq!(count(&pool).await, before);
    assert_eq!(stored.positions.len(), 1);
}

#[tokio::test]
async fn refuses_malformed_appends() {
    let (store, pool) = open().await;
    let t = tenant("clinic");
    let s = stream("practice-1");
    let empty = store.append(&t, &s, ExpectedVersion::Any, vec![]).await;
    assert!(matches!(
        empty,
        Err(Error::InvalidInput {
            field: "events",
            ..
        })
    ));

    let e = event(1);
    let twice = store
        .append(&t, &s, ExpectedVersion::Any, vec![e.clone(), e])
        .await;
    assert!(matches!(
        twice,
        Err(Error::InvalidInput {
            field: "events",
            ..
        })
    ));

    let nul = NewEvent::new(Uuid::new_v4(), "Noted", 1, &json!({ "x": "a\u{0}b" })).expect("event");
    let nul = store
        .append(&t, &s, ExpectedVersion::Any, vec![event(2), nul])
        .await;
    assert!(matches!(
        nul,
        Err(Error::InvalidInput {
            field: "payload",
            ..
        })
    ));

    let mut bad_type = event(3);
    bad_type.event_type = "has spaces".into();
    let bad_type = store
        .append(&t, &s, ExpectedVersion::Any, vec![bad_type])
        .await;
    assert!(matches!(
        bad_type,
        Err(Error::InvalidInput {
            field: "event_type",
            ..
        })
    ));

    let beyond = store
        .append(&t, &s, ExpectedVersion::Exact(u64::MAX), vec![event(4)])
        .await;
    assert!(matches!(
        beyond,
        Err(Error::InvalidInput {
            field: "expected_version",
            ..
        })
    ));

    assert!(StreamId::new("nocategory").is_err());
    assert!(StreamId::new("-x").is_err());
    assert!(TenantId::new("Upper").is_err());
    assert_eq!(count(&pool).await, 0);
}

#[tokio::test]
async fn reads_a_stream_forwards_and_backwards_in_pages() {
    let (store, _pool) = open().await;
    let (t, s) = (tenant("clinic"), stream("practice-1"));
    store
        .append(
            &t,
            &s,
            ExpectedVersion::NoStream,
            (0..5).map(event).collect(),
        )
        .await
        .expect("append");
    store
        .append(&t, &stream("other-1"), ExpectedVersion::Any, vec![event(9)])
        .await
        .expect("append");

    let page = store
        .read_stream(&t, &s, Direction::Forwards, Some(1), 2)
        .await
        .expect("read");
    let versions: Vec<_> = page.events.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, vec![1, 2]);
    assert_eq!(page.stream_version, Some(4));
    assert!(!page.end_of_stream);

    let rest = store
        .read_stream(&t, &s, Direction::Forwards, Some(3), 10)
        .await
        .expect("read");
    assert_eq!(rest.events.len(), 2);
    assert!(rest.end_of_stream);

    let back = store
        .read_stream(&t, &s, Direction::Backwards, None, 3)
        .await
        .expect("read");
    let versions: Vec<_> = back.events.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, vec![4, 3, 2]);
    assert!(!back.end_of_stream);
    let payloads: Vec<_> = back.events.iter().map(|e| e.payload["n"].clone()).collect();
    assert_eq!(payloads, vec![json!(4), json!(3), json!(2)]);

    let past_the_end = store
        .read_stream(&t, &s, Direction::Forwards, Some(u64::MAX), 10)
        .await
        .expect("read");
    assert!(past_the_end.events.is_empty());
    assert!(past_the_end.end_of_stream);

    let missing = store
        .read_stream(&t, &stream("practice-404"), Direction::Forwards, None, 10)
        .await
        .expect("read");
    assert!(missing.events.is_empty());
    assert_eq!(missing.stream_version, None);
    assert!(missing.end_of_stream);
}

#[tokio::test]
async fn stored_events_cannot_be_changed_or_deleted() {
    let (store, pool) = open().await;
    store
        .append(
            &tenant("clinic"),
            &stream("practice-1"),
            ExpectedVersion::Any,
            vec![event(1)],
        )
        .await
        .expect("append");
    for sql in [
        "UPDATE events SET event_type = 'Other'",
        "DELETE FROM events",
        "TRUNCATE events",
    ] {
        let err = sqlx::raw_sql(sql).execute(&pool).await.expect_err(sql);
        assert!(err.to_string().contains("immutable"), "{sql}: {err}");
    }
    assert_eq!(count(&pool).await, 1);
}

#[tokio::test]
async fn a_tenant_never_reads_another_tenants_events() {
    let (store, _pool) = open().await;
    let (a, b) = (tenant("clinic-a"), tenant("clinic-b"));
    let s = stream("practice-1");
    for i in 0..10 {
        let t = if i % 2 == 0 { &a } else { &b };
        store
            .append(t, &s, ExpectedVersion::Any, vec![event(i)])
            .await
            .expect("append");
    }
    let only_a = store
        .read_stream(&a, &s, Direction::Forwards, None, 100)
        .await
        .expect("read");
    assert_eq!(only_a.events.len(), 5);
    assert!(only_a.events.iter().all(|e| e.tenant == a));
    assert_eq!(only_a.stream_version, Some(4));

    let mut sub = store.subscribe(Filter::tenant(a.clone()), 0);
    let mut seen = Vec::new();
    while seen.len() < 5 {
        match next(&mut sub).await {
            Delivery::Event(e) => seen.push(e),
            Delivery::Checkpoint(_) => {}
        }
    }
    assert!(seen.iter().all(|e| e.tenant == a));
    assert_eq!(
        seen.iter()
            .map(|e| e.payload["n"].as_u64().expect("n"))
            .collect::<Vec<_>>(),
        vec![0, 2, 4, 6, 8]
    );
    // Tenant b's last event (position 10) is passed over with a checkpoint.
    assert_eq!(next(&mut sub).await, Delivery::Checkpoint(10));
}

#[tokio::test]
async fn a_filtered_subscription_still_advances_its_checkpoint() {
    let (store, _pool) = open().await;
    let t = tenant("clinic");
    store
        .append(
            &t,
            &stream("assessment-1"),
            ExpectedVersion::Any,
            vec![event(0)],
        )
        .await
        .expect("append");
    for i in 1..=50 {
        store
            .append(
                &t,
                &stream("practice-1"),
                ExpectedVersion::Any,
                vec![event(i)],
            )
            .await
            .expect("append");
    }
    let filter = Filter {
        tenant: Some(t.clone()),
        categories: vec!["assessment".into()],
        event_types: vec![],
    };
    let mut sub = store.subscribe(filter, 0);
    match next(&mut sub).await {
        Delivery::Event(e) => assert_eq!(e.position, 1),
        other => panic!("expected the assessment event, got {other:?}"),
    }
    assert_eq!(next(&mut sub).await, Delivery::Checkpoint(51));
    assert_eq!(sub.position(), 51);
}

#[tokio::test]
async fn sixteen_concurrent_writers_and_a_live_subscriber_see_every_event_once_in_order() {
    const WRITERS: usize = 16;
    const EVENTS: usize = 10_000;
    let (store, pool) = open().await;
    let t = tenant("clinic");

    // The subscriber starts before any write and follows live.
    let mut sub = store.subscribe(Filter::tenant(t.clone()), 0);
    let reader = tokio::spawn(async move {
        let mut positions = Vec::with_capacity(EVENTS);
        let mut ids = HashSet::with_capacity(EVENTS);
        while positions.len() < EVENTS {
            match tokio::time::timeout(Duration::from_secs(30), sub.next()).await {
                Ok(Ok(Delivery::Event(e))) => {
                    positions.push(e.position);
                    assert!(ids.insert(e.id), "event {} delivered twice", e.id);
                }
                Ok(Ok(Delivery::Checkpoint(_))) => {}
                Ok(Err(e)) => panic!("subscription failed: {e}"),
                Err(_) => panic!("stalled after {} events", positions.len()),
            }
        }
        (positions, ids)
    });

    // Each writer mixes single-event and five-event appends on its own
    // streams, so commits interleave across writers all the time.
    let writers = (0..WRITERS).map(|w| {
        let (store, t) = (store.clone(), t.clone());
        tokio::spawn(async move {
            let mut written = Vec::new();
            let mut left = EVENTS / WRITERS;
            let mut round = 0;
            while left > 0 {
                let n = if round % 2 == 0 { 1 } else { 5.min(left) };
                let events: Vec<_> = (0..n).map(|_| event(w as u64)).collect();
                written.extend(events.iter().map(|e| e.id));
                let s = stream(&format!("practice-{w}_{}", round % 7));
                store
                    .append(&t, &s, ExpectedVersion::Any, events)
                    .await
                    .expect("append");
                left -= n;
                round += 1;
            }
            written
        })
    });
    let mut written = HashSet::new();
    for w in futures::future::join_all(writers).await {
        written.extend(w.expect("writer"));
    }
    assert_eq!(written.len(), EVENTS);

    let (positions, ids) = reader.await.expect("reader");
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions strictly increase"
    );
    assert_eq!(ids, written, "every written event arrived exactly once");
    assert_eq!(count(&pool).await, EVENTS as i64);
}

#[tokio::test]
async fn a_subscriber_on_one_server_sees_commits_from_another() {
    let db = fresh_database().await;
    let quick = Options {
        poll_interval: Duration::from_secs(60),
        ..Options::default()
    };
    // Two stores on one database, as two servers would be: the subscriber
    // is woken by the other's notification, not by polling.
    let writer = EventStore::open(db.pool.clone(), quick.clone())
        .await
        .expect("open");
    let reader = EventStore::open(db.pool.clone(), quick)
        .await
        .expect("open");
    let t = tenant("clinic");
    let mut sub = reader.subscribe(Filter::tenant(t.clone()), 0);
    let (next_event, _) = tokio::join!(next(&mut sub), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        writer
            .append(
                &t,
                &stream("practice-1"),
                ExpectedVersion::Any,
                vec![event(7)],
            )
            .await
            .expect("append")
    });
    match next_event {
        Delivery::Event(e) => assert_eq!(e.payload, json!({ "n": 7 })),
        other => panic!("expected the event, got {other:?}"),
    }
}

#[tokio::test]
async fn shutdown_writes_what_was_queued_and_ends_subscriptions() {
    let (store, pool) = open().await;
    let t = tenant("clinic");
    let mut sub = store.subscribe(Filter::tenant(t.clone()), 0);
    let appends: Vec<_> = (0..50)
        .map(|i| {
            let (store, t) = (store.clone(), t.clone());
            tokio::spawn(async move {
                store
                    .append(
                        &t,
                        &stream("practice-1"),
                        ExpectedVersion::Any,
                        vec![event(i)],
                    )
                    .await
            })
        })
        .collect();
    tokio::task::yield_now().await;
    store.shutdown().await;
    let mut stored = 0;
    for a in appends {
        match a.await.expect("task") {
            Ok(_) => stored += 1,
            Err(e) => assert!(matches!(e, Error::ShuttingDown), "{e}"),
        }
    }
    assert_eq!(count(&pool).await, stored);
    let refused = store
        .append(
            &t,
            &stream("practice-1"),
            ExpectedVersion::Any,
            vec![event(0)],
        )
        .await;
    assert!(matches!(refused, Err(Error::ShuttingDown)));
    // The subscriber drains what was committed, then ends.
    let mut delivered = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("subscription ends")
        {
            Ok(Delivery::Event(_)) => delivered += 1,
            Ok(Delivery::Checkpoint(_)) => {}
            Err(e) => {
                assert!(matches!(e, Error::ShuttingDown), "{e}");
                break;
            }
        }
    }
    assert_eq!(delivered, stored);
}

async fn next(sub: &mut tend_event_store::Subscription) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("delivery within 10 s")
        .expect("subscription")
}

#[tokio::test]
async fn a_slow_subscriber_is_never_dropped_and_reads_on_from_the_database() {
    let (store, _pool) = open_with(Options {
        page_size: 50,
        ..Options::default()
    })
    .await;
    let t = tenant("clinic");
    let mut sub = store.subscribe(Filter::tenant(t.clone()), 0);
    store
        .append(
            &t,
            &stream("practice-1"),
            ExpectedVersion::Any,
            vec![event(0)],
        )
        .await
        .expect("append");
    assert!(matches!(next(&mut sub).await, Delivery::Event(_)));

    // The consumer stalls while 40 pages' worth of events are written.
    for chunk in 0..20 {
        let events = (0..100).map(|i| event(1 + chunk * 100 + i)).collect();
        store
            .append(&t, &stream("practice-1"), ExpectedVersion::Any, events)
            .await
            .expect("append");
    }
    let mut last = 0;
    let mut received = 0;
    while received < 2000 {
        if let Delivery::Event(e) = next(&mut sub).await {
            let n = e.payload["n"].as_u64().expect("n");
            assert_eq!(n, last + 1, "in order, none missing");
            last = n;
            received += 1;
        }
    }
}

#[tokio::test]
async fn two_servers_writing_the_same_streams_keep_versions_dense_and_the_log_in_order() {
    const PER_WRITER: u64 = 300;
    let db = fresh_database().await;
    // Two stores on one database, as two `tend` replicas: each has its own
    // writer and its own remembered stream versions, which the other's
    // writes make stale all the time.
    let a = EventStore::open(db.pool.clone(), Options::default())
        .await
        .expect("open a");
    let b = EventStore::open(db.pool.clone(), Options::default())
        .await
        .expect("open b");
    let t = tenant("clinic");
    let mut sub = a.subscribe(Filter::tenant(t.clone()), 0);

    let writers = (0..8u64).map(|w| {
        let store = if w % 2 == 0 { a.clone() } else { b.clone() };
        let t = t.clone();
        tokio::spawn(async move {
            for i in 0..PER_WRITER {
                // Four streams shared by all writers on both servers.
                let s = stream(&format!("practice-shared{}", i % 4));
                store
                    .append(&t, &s, ExpectedVersion::Any, vec![event(w * 1000 + i)])
                    .await
                    .expect("append");
            }
        })
    });
    for w in futures::future::join_all(writers).await {
        w.expect("writer");
    }

    let total = 8 * PER_WRITER as usize;
    let mut positions = Vec::with_capacity(total);
    while positions.len() < total {
        if let Delivery::Event(e) = next(&mut sub).await {
            positions.push(e.position);
        }
    }
    assert!(positions.windows(2).all(|p| p[0] < p[1]));
    for i in 0..4 {
        let slice = a
            .read_stream(
                &t,
                &stream(&format!("practice-shared{i}")),
                Direction::Forwards,
                None,
                10_000,
            )
            .await
            .expect("read");
        let versions: Vec<_> = slice.events.iter().map(|e| e.stream_version).collect();
        let dense: Vec<_> = (0..versions.len() as u64).collect();
        assert_eq!(versions, dense, "stream {i}: versions 0..n without gaps");
    }
    assert_eq!(count(&db.pool).await, total as i64);
}

#[tokio::test]
async fn a_retry_is_recognised_whatever_numbers_the_payload_holds() {
    let (store, pool) = open().await;
    let (t, s) = (tenant("clinic"), stream("assessment-1"));
    // Doubles that a parser without exact round trips reads back changed.
    let payload = json!({
        "score": 99.92497928518063,
        "tiny": 1.0e-300,
        "big": 12345678901234567890u64,
        "negative": -0.1,
    });
    let events = vec![NewEvent::new(Uuid::new_v4(), "Scored", 1, &payload).expect("event")];
    let first = store
        .append(&t, &s, ExpectedVersion::NoStream, events.clone())
        .await
        .expect("first");
    let retry = store
        .append(&t, &s, ExpectedVersion::NoStream, events)
        .await
        .expect("retry recognised");
    assert!(retry.already_stored);
    assert_eq!(retry.positions, first.positions);
    let read = store
        .read_stream(&t, &s, Direction::Forwards, None, 10)
        .await
        .expect("read");
    assert_eq!(read.events[0].payload, payload, "read back exactly");
    assert_eq!(count(&pool).await, 1);
}

#[tokio::test]
async fn a_paced_subscription_reads_at_most_once_per_pace_once_caught_up() {
    // Pages of two, so that a backlog takes several reads.
    let (store, _pool) = open_with(Options {
        page_size: 2,
        ..Options::default()
    })
    .await;
    let t = tenant("clinic");
    let s = stream("practice-1");
    let append = |n| {
        let store = store.clone();
        let (t, s) = (t.clone(), s.clone());
        async move {
            store
                .append(&t, &s, ExpectedVersion::Any, vec![event(n)])
                .await
                .expect("append")
        }
    };
    // A backlog is read without waiting, page after page: paced by an
    // hour, it would not come within `next`'s ten seconds.
    for n in 0..3 {
        append(n).await;
    }
    let mut backlog = store
        .subscribe(Filter::tenant(t.clone()), 0)
        .paced(Duration::from_secs(3600));
    let mut read = Vec::new();
    while read.len() < 3 {
        if let Delivery::Event(e) = next(&mut backlog).await {
            read.push(e.payload["n"].as_u64().expect("n"));
        }
    }
    assert_eq!(read, vec![0, 1, 2]);
    let pace = Duration::from_millis(400);
    let mut sub = store.subscribe(Filter::tenant(t.clone()), 0).paced(pace);
    let started = std::time::Instant::now();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        if let Delivery::Event(e) = next(&mut sub).await {
            seen.push(e.payload["n"].as_u64().expect("n"));
        }
    }
    // Caught up: the next commit is read a pace after the last read.
    append(3).await;
    let event = loop {
        if let Delivery::Event(e) = next(&mut sub).await {
            break e;
        }
    };
    let waited = started.elapsed();
    assert_eq!(event.payload["n"], 3);
    assert_eq!(seen, vec![0, 1, 2]);
    assert!(
        waited >= pace,
        "the second read came {waited:?} after the first, within the pace of {pace:?}"
    );
    // Nothing is lost to the pace: commits made meanwhile come in order.
    for n in 4..8 {
        append(n).await;
    }
    let mut rest = Vec::new();
    while rest.len() < 4 {
        if let Delivery::Event(e) = next(&mut sub).await {
            rest.push(e.payload["n"].as_u64().expect("n"));
        }
    }
    assert_eq!(rest, vec![4, 5, 6, 7]);
}

#[tokio::test]
async fn a_lease_held_is_renewed_once_a_third_of_its_life_has_passed() {
    let (_store, pool) = open().await;
    let expires = |name: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>(
                "SELECT expires_at FROM leases WHERE name = $1",
            )
            .bind(name)
            .fetch_one(&pool)
            .await
            .expect("lease row")
        }
    };
    let a = Lease::new("job", Duration::from_secs(60));
    let b = Lease::new("job", Duration::from_secs(60));
    assert_eq!(a.hold(&pool).await.expect("hold"), Held::Anew);
    let first = expires("job").await;
    // Within a third of its life: held, and the row is not written.
    assert_eq!(a.hold(&pool).await.expect("hold"), Held::Still);
    assert_eq!(expires("job").await, first);
    assert_eq!(b.hold(&pool).await.expect("hold"), Held::Not);
    // Past a third of its life: renewed, without a break.
    let short = Lease::new("short", Duration::from_millis(600));
    assert_eq!(short.hold(&pool).await.expect("hold"), Held::Anew);
    let before = expires("short").await;
    tokio::time::sleep(Duration::from_millis(210)).await;
    assert_eq!(short.hold(&pool).await.expect("hold"), Held::Still);
    assert!(expires("short").await > before);

    // A holder that stalled past its expiry, and a taker meanwhile: the
    // stalled one's fence refuses, and its next hold asks and is refused.
    sqlx::query("UPDATE leases SET expires_at = now() - interval '1 second' WHERE name = 'job'")
        .execute(&pool)
        .await
        .expect("expire");
    assert_eq!(b.hold(&pool).await.expect("hold"), Held::Anew);
    let mut tx = pool.begin().await.expect("begin");
    assert!(!a.fence(&mut tx).await.expect("fence"));
    tx.rollback().await.expect("rollback");
    assert_eq!(a.hold(&pool).await.expect("hold"), Held::Not);

    // Given up and taken again later: a break, so `Anew`.
    b.release(&pool).await.expect("release");
    assert_eq!(a.hold(&pool).await.expect("hold"), Held::Anew);
    assert_eq!(b.hold(&pool).await.expect("hold"), Held::Not);
}

#[tokio::test]
async fn streams_moved_names_each_stream_once_with_its_newest_version_in_the_stretch() {
    let (store, _pool) = open().await;
    let (a, b) = (tenant("clinic-a"), tenant("clinic-b"));
    let append = |t: &TenantId, s: &str, n: usize| {
        let (store, t, s) = (store.clone(), t.clone(), stream(s));
        async move {
            store
                .append(
                    &t,
                    &s,
                    ExpectedVersion::Any,
                    (0..n as u64).map(event).collect(),
                )
                .await
                .expect("append")
        }
    };
    append(&a, "participant-1", 2).await; // positions 1-2, versions 0-1
    append(&a, "practice-1", 3).await; // 3-5, 0-2
    append(&b, "participant-1", 1).await; // 6, 0 (another tenant, same id)
    append(&a, "webhook-1", 2).await; // 7-8: another category
    append(&a, "participant-1", 1).await; // 9, version 2
    let categories = ["participant".to_owned(), "practice".to_owned()];
    let sorted = |mut m: tend_event_store::MovedStreams| {
        m.streams.sort();
        m
    };

    let all = sorted(
        store
            .streams_moved(&categories, 0, u64::MAX)
            .await
            .expect("moved"),
    );
    assert_eq!(all.scanned_through, 9);
    assert_eq!(
        all.streams,
        vec![
            (a.clone(), stream("participant-1"), 2),
            (a.clone(), stream("practice-1"), 2),
            (b.clone(), stream("participant-1"), 0),
        ]
    );

    // Bounded by the caller: positions 3 to 7 only.
    let part = sorted(store.streams_moved(&categories, 2, 7).await.expect("moved"));
    assert_eq!(part.scanned_through, 7);
    assert_eq!(
        part.streams,
        vec![
            (a.clone(), stream("practice-1"), 2),
            (b.clone(), stream("participant-1"), 0),
        ]
    );

    // A stretch of other categories only is scanned all the same.
    let other = store.streams_moved(&categories, 6, 8).await.expect("moved");
    assert_eq!((other.streams.len(), other.scanned_through), (0, 8));

    // Never past the head, and nothing after it.
    let tail = store
        .streams_moved(&categories, 9, u64::MAX)
        .await
        .expect("moved");
    assert_eq!((tail.streams.len(), tail.scanned_through), (0, 9));
    let beyond = store
        .streams_moved(&categories, 8, 100)
        .await
        .expect("moved");
    assert_eq!(beyond.scanned_through, 9);
    assert_eq!(beyond.streams, vec![(a, stream("participant-1"), 2)]);
}

#[tokio::test]
async fn read_streams_after_reads_each_stream_as_read_stream_after_would() {
    let (store, _pool) = open().await;
    let (a, b) = (tenant("clinic-a"), tenant("clinic-b"));
    let long = stream("practice-long");
    // Longer than the batched read's page, so that it reads on.
    for chunk in 0..3 {
        store
            .append(
                &a,
                &long,
                ExpectedVersion::Any,
                (0..250).map(|n| event(chunk * 250 + n)).collect(),
            )
            .await
            .expect("append");
    }
    store
        .append(
            &a,
            &stream("practice-short"),
            ExpectedVersion::Any,
            vec![event(0), event(1), event(2)],
        )
        .await
        .expect("append");
    store
        .append(
            &b,
            &stream("practice-short"),
            ExpectedVersion::Any,
            vec![event(9)],
        )
        .await
        .expect("append");
    let asks = vec![
        (a.clone(), long.clone(), None),
        (a.clone(), stream("practice-short"), Some(0)),
        (b.clone(), stream("practice-short"), Some(0)),
        (a.clone(), stream("practice-none"), None),
        (a.clone(), long.clone(), Some(700)),
    ];
    let many = store.read_streams_after(&asks).await.expect("read many");
    assert_eq!(many.len(), asks.len());
    for ((t, s, after), got) in asks.iter().zip(&many) {
        let one = store
            .read_stream_after(t, s, *after)
            .await
            .expect("read one");
        assert_eq!(got, &one, "{s} after {after:?}");
    }
    assert_eq!(many[0].0.len(), 750);
    assert_eq!(many[0].1, Some(749));
    assert_eq!((many[1].0.len(), many[1].1), (2, Some(2)));
    assert_eq!((many[2].0.len(), many[2].1), (0, Some(0)));
    assert_eq!((many[3].0.len(), many[3].1), (0, None));
    assert_eq!((many[4].0.len(), many[4].1), (49, Some(749)));
    assert!(
        store
            .read_streams_after(&[])
            .await
            .expect("none")
            .is_empty()
    );
}
