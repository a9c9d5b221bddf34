//! Kept folds against folds from the start, on a real PostgreSQL: a
//! participant's stream and practice log, with every event type each
//! holds, appended one event at a time from two servers (two stores on
//! one database, each keeping its own folds). After every append, what
//! `execute::load` gives (a kept state and the events after it) equals the
//! fold of the whole stream from its first event, on both servers; and so
//! does `execute::load_many`, the scheduler's batched load; and the
//! scheduler's kept placements give each schedule as a fresh expansion
//! does.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use jiff::{SignedDuration, Timestamp};
use tend_domain::consent::{
    ConsentRecorded, DocumentVersionDefined, ErasureReason, Method, Purpose,
};
use tend_domain::enrollment::{self, Command, Participant};
use tend_domain::practice::{self, Content, Log, SealedNote};
use tend_domain::protocol::{ActivityKind, ProtocolSet, built_ins};
use tend_domain::schedule::Placements;
use tend_domain::time::{Zone, parse_local_date_time};
use tend_domain::{Decider, DomainEvent};
use tend_event_store::{EventStore, ExpectedVersion, Metadata, StreamId, TenantId};
use tend_service_kit::execute::{self, decode, new_events};
use tend_service_kit::streams;
use tend_testkit::grpc::{Services, ts};
use uuid::Uuid;

/// Appends `events` to `stream` one at a time, alternately from `a` and
/// `b`, and after each append checks both servers' loads against a fold
/// from the start. Returns the event types seen.
async fn check<D>(
    a: &EventStore,
    b: &EventStore,
    tenant: &TenantId,
    stream: &StreamId,
    events: &[D::Event],
) -> BTreeSet<&'static str>
where
    D: Decider + 'static,
    D::State: PartialEq + Debug + Send + Sync + 'static,
    D::Event: DomainEvent,
{
    let mut types = BTreeSet::new();
    for (i, event) in events.iter().enumerate() {
        types.insert(event.event_type());
        // Two in three from `a`: `b`'s writes reach `a`'s kept state only
        // through the log, and the other way round.
        let writer = if i % 3 == 2 { b } else { a };
        let new = new_events(
            std::slice::from_ref(event),
            |_| Uuid::now_v7(),
            &Metadata::default(),
        )
        .unwrap();
        let expected = ExpectedVersion::as_read(i.checked_sub(1).map(|v| v as u64));
        writer.append(tenant, stream, expected, new).await.unwrap();

        let (all, version) = a.read_whole_stream(tenant, stream).await.unwrap();
        let from_start = D::fold(D::State::default(), &decode::<D::Event>(&all).unwrap());
        assert_eq!(version, Some(i as u64));
        // `b` loads every other time only, so that its kept state is
        // sometimes several events behind.
        let loaders: &[&EventStore] = if i % 2 == 0 { &[a, b] } else { &[a] };
        for (n, store) in loaders.iter().enumerate() {
            // Half of `b`'s loads go through `load_many`, as the scheduler's
            // do, beside a stream that does not exist.
            let (kept, kept_version) = if n == 1 && i % 4 == 0 {
                let nothing = StreamId::new("practice-nobody").unwrap();
                let asks = [(tenant.clone(), stream.clone()), (tenant.clone(), nothing)];
                let mut many = execute::load_many::<D>(store, &asks).await.unwrap();
                assert_eq!(many.len(), 2);
                let (empty, none) = many.pop().unwrap().unwrap();
                assert_eq!((empty, none), (D::State::default(), None));
                many.pop().unwrap().unwrap()
            } else {
                execute::load::<D>(store, tenant, stream).await.unwrap()
            };
            assert_eq!(kept_version, version, "after {} ({i})", event.event_type());
            assert_eq!(kept, from_start, "after {} ({i})", event.event_type());
        }
    }
    types
}

/// `events` folded as they come, so that each command is decided on what
/// came before (as the service does).
struct Script<S, E> {
    state: S,
    events: Vec<E>,
}

impl<S: Clone, E: Clone> Script<S, E> {
    fn then(&mut self, decided: Vec<E>, evolve: fn(S, &E) -> S) -> &[E] {
        assert!(!decided.is_empty(), "the step decided nothing");
        let from = self.events.len();
        for e in decided {
            self.state = evolve(self.state.clone(), &e);
            self.events.push(e);
        }
        &self.events[from..]
    }
}

fn participant(
    script: &mut Script<Participant, enrollment::Event>,
    protocols: &ProtocolSet,
    command: Command,
) {
    let decided = enrollment::decide(&script.state, command, protocols).unwrap();
    script.then(decided, enrollment::evolve);
}

fn content(started: &str, minutes: u32, occurrence: Option<Uuid>, note: bool) -> Content {
    Content {
        kind: "soothing-touch".into(),
        started_at: ts(started),
        utc_offset_seconds: 0,
        time_zone: Some(Zone::new("UTC").unwrap()),
        minutes,
        occurrence_id: occurrence,
        note: note.then(|| SealedNote {
            key_id: Uuid::from_u128(7),
            nonce: "bm9uY2U=".into(),
            ciphertext: "c2VhbGVk".into(),
        }),
    }
}

#[tokio::test]
async fn a_kept_fold_equals_a_fold_from_the_start_for_every_event_type() {
    let s = Services::start("2026-06-01T00:00:00Z").await;
    let a = s.store.clone();
    let b = EventStore::open(s.db.pool.clone(), Default::default())
        .await
        .unwrap();
    let tenant = TenantId::new("clinic").unwrap();
    let key = Uuid::from_u128(42);
    let (participant_stream, practice_stream) = (streams::participant(key), streams::practice(key));

    // A protocol of the tenant's own, with a second version to move to.
    let mut v1 = built_ins()[0].clone();
    v1.id = "own-arc".into();
    v1.version = 1;
    let mut v2 = v1.clone();
    v2.version = 2;
    v2.weeks_after += 1;
    let mut protocols = ProtocolSet::default();
    protocols.insert(v1.clone());
    protocols.insert(v2.clone());

    let enrollment_id = Uuid::from_u128(1);
    let mut p = Script {
        state: Participant::default(),
        events: vec![],
    };
    let now = |t: &str| ts(t);
    participant(
        &mut p,
        &protocols,
        Command::RecordConsent {
            consent: ConsentRecorded {
                consent_id: Uuid::from_u128(2),
                document_id: "main".into(),
                document_version: 1,
                purposes: BTreeSet::from([
                    Purpose::Protocol,
                    Purpose::PracticeNotes,
                    Purpose::ResearchSharing,
                ]),
                given_at: now("2026-06-01T00:00:00Z"),
                method: Method::ElectronicSignature,
                evidence_sha256: "ab".repeat(32),
                recorded_at: now("2026-06-01T00:00:00Z"),
            },
            document: Some(DocumentVersionDefined {
                document_id: "main".into(),
                version: 1,
                purposes: BTreeSet::from([
                    Purpose::Protocol,
                    Purpose::PracticeNotes,
                    Purpose::ResearchSharing,
                ]),
                defined_at: now("2026-05-01T00:00:00Z"),
            }),
            now: now("2026-06-01T00:00:00Z"),
        },
    );
    participant(
        &mut p,
        &protocols,
        Command::Enroll {
            enrollment_id,
            protocol: v1.clone(),
            requested_version: 1,
            session_at: parse_local_date_time("session", "2026-06-20T10:00").unwrap(),
            time_zone: Zone::new("Europe/London").unwrap(),
            now: now("2026-06-01T00:00:00Z"),
        },
    );
    // Time passes: windows open (due) and close (missed).
    let tick_at = now("2026-06-15T19:30:00Z");
    participant(
        &mut p,
        &protocols,
        Command::Tick {
            now: tick_at,
            miss_grace: SignedDuration::ZERO,
        },
    );
    let schedule = p.state.enrollments[0]
        .schedule(&protocols, tick_at)
        .unwrap();
    let open: Vec<_> = schedule
        .iter()
        .filter(|o| o.at <= tick_at && tick_at < o.closes_at && o.completed_at.is_none())
        .collect();
    // The built-in arc's evening journaling and soothing-touch windows.
    let soothing = |o: &tend_domain::schedule::Occurrence| {
        o.kind
            == ActivityKind::Practice {
                practice: "soothing-touch".into(),
            }
    };
    let practised = *open
        .iter()
        .find(|o| soothing(o))
        .expect("a soothing-touch window open");
    let completed = *open
        .iter()
        .find(|o| !soothing(o))
        .expect("another window open");
    participant(
        &mut p,
        &protocols,
        Command::Complete {
            enrollment_id,
            occurrence_id: completed.id,
            completed_at: None,
            now: tick_at,
        },
    );

    // The practice log: an entry for the other open occurrence links it
    // (a completion by practice), a correction, a retraction (which
    // withdraws that completion), an entry with a note, the notes erased.
    let mut l = Script {
        state: Log::default(),
        events: vec![],
    };
    let entry = Uuid::from_u128(10);
    let log = |l: &mut Script<Log, practice::Event>, c: practice::Command| {
        let decided = practice::decide(&l.state, c).unwrap();
        l.then(decided, practice::evolve);
    };
    let started = practised.at.to_string();
    log(
        &mut l,
        practice::Command::Log {
            entry_id: entry,
            content: content(&started, 10, Some(practised.id), false),
        },
    );
    let link = |p: &Script<Participant, enrollment::Event>, log: &Log, at: Timestamp| {
        let e = &p.state.enrollments[0];
        let schedule = e.schedule(&protocols, at).unwrap();
        practice::link(log, &[(e, schedule)])
    };
    let linked = link(&p, &l.state, tick_at);
    assert!(!linked.is_empty(), "the entry completes its occurrence");
    p.then(linked, enrollment::evolve);
    log(
        &mut l,
        practice::Command::Correct {
            entry_id: entry,
            request_id: Uuid::from_u128(11),
            content: content(&started, 12, Some(practised.id), false),
        },
    );
    log(
        &mut l,
        practice::Command::Retract {
            entry_id: entry,
            now: tick_at,
        },
    );
    let unlinked = link(&p, &l.state, tick_at);
    assert!(
        !unlinked.is_empty(),
        "the retraction withdraws the completion"
    );
    p.then(unlinked, enrollment::evolve);
    log(
        &mut l,
        practice::Command::Log {
            entry_id: Uuid::from_u128(12),
            content: content("2026-06-16T09:00:00Z", 5, None, true),
        },
    );
    log(
        &mut l,
        practice::Command::EraseNotes {
            now: now("2026-06-16T13:00:00Z"),
        },
    );

    // Changes to the enrollment, then its end and the participant's.
    let later = now("2026-06-17T08:00:00Z");
    participant(
        &mut p,
        &protocols,
        Command::RescheduleSession {
            enrollment_id,
            session_at: parse_local_date_time("session", "2026-06-22T10:00").unwrap(),
            now: later,
        },
    );
    participant(
        &mut p,
        &protocols,
        Command::ChangeTimeZone {
            enrollment_id,
            time_zone: Zone::new("America/New_York").unwrap(),
            now: later,
        },
    );
    participant(
        &mut p,
        &protocols,
        Command::Migrate {
            enrollment_id,
            protocol: v2.clone(),
            now: later,
        },
    );
    participant(
        &mut p,
        &protocols,
        Command::Pause {
            enrollment_id,
            now: later,
        },
    );
    participant(
        &mut p,
        &protocols,
        Command::Resume {
            enrollment_id,
            now: now("2026-06-18T08:00:00Z"),
        },
    );
    participant(
        &mut p,
        &protocols,
        Command::WithdrawConsent {
            withdrawal_id: Uuid::from_u128(3),
            purposes: BTreeSet::from([Purpose::ResearchSharing]),
            now: now("2026-06-19T08:00:00Z"),
        },
    );
    participant(
        &mut p,
        &protocols,
        Command::Withdraw {
            enrollment_id,
            now: now("2026-06-19T09:00:00Z"),
        },
    );
    participant(
        &mut p,
        &protocols,
        Command::Erase {
            erasure_id: Uuid::from_u128(4),
            by_tenant: "clinic".into(),
            reason: ErasureReason::ParticipantRequest,
            now: now("2026-06-20T09:00:00Z"),
        },
    );

    // The scheduler's kept placements give every enrollment's schedule as
    // a fresh expansion does, after each event.
    let mut placements = Placements::default();
    let mut state = Participant::default();
    for event in &p.events {
        state = enrollment::evolve(state, event);
        for e in &state.enrollments {
            for at in [tick_at, later, now("2026-08-01T00:00:00Z")] {
                assert_eq!(
                    e.schedule_kept(&protocols, at, &mut placements).unwrap(),
                    e.schedule(&protocols, at).unwrap(),
                    "after {}, at {at}",
                    event.event_type()
                );
            }
        }
    }

    let participant_types =
        check::<enrollment::Aggregate>(&a, &b, &tenant, &participant_stream, &p.events).await;
    let practice_types =
        check::<practice::Aggregate>(&a, &b, &tenant, &practice_stream, &l.events).await;

    // Every type each stream can hold was appended and checked.
    let catalogue: BTreeMap<&str, BTreeSet<&str>> = tend_domain::catalogue::all()
        .into_iter()
        .map(|(module, types)| (module, types.iter().map(|t| t.name).collect()))
        .collect();
    assert_eq!(participant_types, catalogue["enrollment"]);
    assert_eq!(practice_types, catalogue["practice"]);

    // The folds were kept (not read from the start each time), and the
    // kept state went on to the end.
    assert!(a.folds().usage().0 >= 2, "{:?}", a.folds().usage());
    b.shutdown().await;
}
