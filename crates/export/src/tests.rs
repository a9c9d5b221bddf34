//! The pure parts, without a database: formatting, the rows one
//! participant's events make, and the output directory's rules.

use std::collections::{BTreeMap, BTreeSet};

use jiff::civil::{DateTime, date, time};
use jiff::{SignedDuration, Timestamp};
use tend_domain::consent::{ConsentRecorded, DocumentVersionDefined, Method, Purpose};
use tend_domain::enrollment::{self, Command, OccurrenceDue, Participant};
use tend_domain::practice;
use tend_domain::protocol::{self, ProtocolSet};
use tend_domain::time::Zone;
use uuid::Uuid;

use crate::datasets;
use crate::rows::{Context, History, InstrumentSet, rows};
use crate::table::{Schema, Value};
use crate::write::{instant_text, text};

#[test]
fn instants_are_written_on_the_local_clock_with_their_offset() {
    let at: Timestamp = "2026-03-29T00:30:00Z".parse().unwrap();
    assert_eq!(instant_text(at, 0), "2026-03-29T00:30:00+00:00");
    assert_eq!(instant_text(at, -7 * 3600), "2026-03-28T17:30:00-07:00");
    assert_eq!(
        instant_text(at, 5 * 3600 + 1800),
        "2026-03-29T06:00:00+05:30"
    );
    let fraction: Timestamp = "2026-03-29T00:30:00.123456789Z".parse().unwrap();
    assert_eq!(
        instant_text(fraction, 3600),
        "2026-03-29T01:30:00.123456+01:00"
    );
}

#[test]
fn decimals_keep_a_point_and_read_back_to_the_same_double() {
    assert_eq!(text(&Value::Decimal(3.0)), "3.0");
    for d in [1.0 / 3.0, 41.0 / 12.0, -0.25, 1e-7, 123456789.5] {
        let t = text(&Value::Decimal(d));
        assert!(t.contains('.') || t.contains('e'), "{t}");
        assert_eq!(t.parse::<f64>().unwrap(), d);
    }
    assert_eq!(text(&Value::Null), "");
    assert_eq!(text(&Value::Boolean(true)), "true");
    assert_eq!(text(&Value::Time(time(9, 5, 0, 0))), "09:05:00");
    assert_eq!(text(&Value::Date(date(2026, 1, 2))), "2026-01-02");
}

const NOW: &str = "2026-05-20T12:00:00Z";

fn now() -> Timestamp {
    NOW.parse().unwrap()
}

/// A participant who consented (with or without research sharing),
/// enrolled on a built-in protocol whose session was a week ago, had one
/// occurrence fall due, and logged two practices, one retracted.
fn history(shares: bool) -> (History, ProtocolSet) {
    let key = Uuid::from_u128(7);
    let protocols = ProtocolSet::default();
    let mut purposes = BTreeSet::from([Purpose::Protocol, Purpose::PracticeNotes]);
    if shares {
        purposes.insert(Purpose::ResearchSharing);
    }
    let document = DocumentVersionDefined {
        document_id: "study".into(),
        version: 1,
        purposes: Purpose::ALL.into_iter().collect(),
        defined_at: now() - SignedDuration::from_hours(24 * 90),
    };
    let zone = Zone::new("Europe/London").unwrap();
    let enrolled_at = now() - SignedDuration::from_hours(24 * 40);
    let mut state = Participant::default();
    let mut events = Vec::new();
    let mut apply = |state: &mut Participant, new: Vec<enrollment::Event>| {
        for e in new {
            *state = enrollment::evolve(std::mem::take(state), &e);
            events.push(e);
        }
    };
    let consent = enrollment::decide(
        &state,
        Command::RecordConsent {
            consent: ConsentRecorded {
                consent_id: Uuid::from_u128(1),
                document_id: "study".into(),
                document_version: 1,
                purposes,
                given_at: enrolled_at,
                method: Method::Paper,
                evidence_sha256: "ab".repeat(32),
                recorded_at: enrolled_at,
            },
            document: Some(document),
            now: enrolled_at,
        },
        &protocols,
    )
    .unwrap();
    apply(&mut state, consent);
    let enroll = enrollment::decide(
        &state,
        Command::Enroll {
            enrollment_id: Uuid::from_u128(2),
            protocol: protocol::built_in("integration-arc-8w").unwrap().clone(),
            requested_version: 0,
            session_at: DateTime::from_parts(date(2026, 5, 13), time(10, 0, 0, 0)),
            time_zone: zone.clone(),
            now: enrolled_at,
        },
        &protocols,
    )
    .unwrap();
    apply(&mut state, enroll);
    let schedule = state.enrollments[0].schedule(&protocols, now()).unwrap();
    let first = &schedule[0];
    apply(
        &mut state,
        vec![enrollment::Event::Due(OccurrenceDue {
            enrollment_id: first.enrollment_id,
            occurrence_id: first.id,
            activity_key: first.activity_key.clone(),
            local_date: first.local_date,
            local_time: first.local_time,
            time_zone: first.zone.clone(),
            scheduled_at: first.at,
            window_closes_at: first.closes_at,
        })],
    );
    let participant = events
        .into_iter()
        .enumerate()
        .map(|(i, e)| (i as u64 + 1, e))
        .collect();
    let content = |minutes| practice::Content {
        kind: "soothing-touch".into(),
        started_at: now() - SignedDuration::from_hours(30),
        utc_offset_seconds: 3600,
        time_zone: Some(zone.clone()),
        minutes,
        occurrence_id: None,
        note: None,
    };
    let mut log = practice::Log::default();
    let mut practice_events = Vec::new();
    for command in [
        practice::Command::Log {
            entry_id: Uuid::from_u128(10),
            content: content(5),
        },
        practice::Command::Log {
            entry_id: Uuid::from_u128(11),
            content: content(7),
        },
        practice::Command::Retract {
            entry_id: Uuid::from_u128(11),
            now: now(),
        },
    ] {
        for e in practice::decide(&log, command).unwrap() {
            log = practice::evolve(log, &e);
            practice_events.push(e);
        }
    }
    let practice = practice_events
        .into_iter()
        .enumerate()
        .map(|(i, e)| (100 + i as u64, e))
        .collect();
    (
        History {
            key,
            participant,
            practice,
            ..Default::default()
        },
        protocols,
    )
}

fn pseudonym(id: Uuid) -> Uuid {
    Uuid::from_u128(id.as_u128() ^ 0xffff)
}

fn export(
    history: &History,
    protocols: &ProtocolSet,
    shift_dates: bool,
    since: u64,
    include_retracted: bool,
) -> Option<crate::rows::Rows> {
    let instruments = InstrumentSet::default();
    let sd = BTreeMap::new();
    rows(
        history,
        &Context {
            protocols,
            instruments: &instruments,
            pseudonym: &pseudonym,
            as_of: now(),
            shift_dates,
            since,
            include_retracted,
            sd: &sd,
        },
    )
}

fn check_fits(schema: &Schema, rows: &[Vec<Value>]) {
    for row in rows {
        assert_eq!(row.len(), schema.columns.len(), "{}", schema.name);
        for (v, c) in row.iter().zip(&schema.columns) {
            assert!(v.fits(c.ty), "{}.{}: {v:?}", schema.name, c.name);
            assert!(
                c.nullable || *v != Value::Null,
                "{}.{} is null",
                schema.name,
                c.name
            );
        }
    }
}

#[test]
fn only_participants_who_share_for_research_are_exported() {
    let (h, protocols) = history(false);
    assert!(export(&h, &protocols, false, 0, false).is_none());
    let (h, protocols) = history(true);
    let rows = export(&h, &protocols, false, 0, false).unwrap();
    check_fits(&datasets::participants(), &rows.participants);
    check_fits(&datasets::occurrences(), &rows.occurrences);
    check_fits(&datasets::practice(), &rows.practice);
    let p = &rows.participants[0];
    assert_eq!(p[0], Value::Uuid(pseudonym(Uuid::from_u128(7))));
    assert_eq!(p[2], Value::Uuid(pseudonym(Uuid::from_u128(2))));
    assert_eq!(p[5], Value::Date(date(2026, 5, 13)));
    assert_eq!(p[10], Value::Enum("integration"));
    assert_eq!(rows.occurrences.len(), 1);
    assert_eq!(rows.occurrences[0][14], Value::Enum("open"));
    // The retracted entry is left out; the live one is on day 6 of the
    // arc (local date 2026-05-19), week 1.
    assert_eq!(rows.practice.len(), 1);
    assert_eq!(rows.practice[0][6], Value::Integer(6));
    assert_eq!(rows.practice[0][7], Value::Integer(1));
    assert_eq!(rows.practice[0][8], Value::Integer(5));
}

#[test]
fn shifted_dates_leave_every_date_and_instant_out_and_keep_the_days() {
    let (h, protocols) = history(true);
    let rows = export(&h, &protocols, true, 0, false).unwrap();
    let schemas = datasets::long();
    for (schema, set) in schemas
        .iter()
        .zip([&rows.participants, &rows.occurrences, &rows.practice])
    {
        check_fits(schema, set);
        for row in set {
            for (v, c) in row.iter().zip(&schema.columns) {
                if matches!(c.ty, crate::table::Type::Date | crate::table::Type::Instant) {
                    assert_eq!(*v, Value::Null, "{}.{}", schema.name, c.name);
                }
            }
        }
    }
    assert_eq!(rows.practice[0][6], Value::Integer(6));
}

#[test]
fn incremental_rows_are_the_ones_changed_after_the_position_and_show_retractions() {
    let (h, protocols) = history(true);
    // After everything: no data rows, the participant still listed.
    let rows = export(&h, &protocols, false, 1000, false).unwrap();
    assert_eq!(rows.participants.len(), 1);
    assert!(rows.occurrences.is_empty() && rows.practice.is_empty());
    // After the first entry was logged: the retracted one, marked.
    let rows = export(&h, &protocols, false, 100, false).unwrap();
    assert_eq!(rows.practice.len(), 1);
    assert_eq!(
        rows.practice[0][1],
        Value::Uuid(pseudonym(Uuid::from_u128(11)))
    );
    assert_eq!(rows.practice[0][11], Value::Boolean(true));
    // Asked for: every entry, the retracted one marked.
    let rows = export(&h, &protocols, false, 0, true).unwrap();
    assert_eq!(rows.practice.len(), 2);
}

#[test]
fn the_output_directory_is_new_or_empty_and_never_half_written() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("export");
    let staging = crate::files::Staging::create(&out).unwrap();
    std::fs::write(staging.path().join("a.csv"), "x").unwrap();
    assert!(!out.exists(), "nothing at the name until it is whole");
    staging.commit().unwrap();
    assert_eq!(std::fs::read_to_string(out.join("a.csv")).unwrap(), "x");
    // Now it holds files: refused.
    assert!(matches!(
        crate::files::Staging::create(&out),
        Err(crate::Error::NotEmpty(_))
    ));
    // A file where the directory would be.
    let file = work.path().join("file");
    std::fs::write(&file, "").unwrap();
    assert!(matches!(
        crate::files::Staging::create(&file),
        Err(crate::Error::Output { .. })
    ));
    // Abandoned: nothing left beside it.
    let staging = crate::files::Staging::create(&work.path().join("other")).unwrap();
    std::fs::write(staging.path().join("half.csv"), "x").unwrap();
    drop(staging);
    let names: BTreeSet<String> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["export".to_owned(), "file".to_owned()])
    );
}

#[test]
fn docs_describe_every_dataset_and_column() {
    let docs = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/exports.md"),
    )
    .unwrap();
    for schema in datasets::long() {
        let heading = format!("### `{}`", schema.name);
        let section = docs
            .split(&heading)
            .nth(1)
            .unwrap_or_else(|| panic!("docs/exports.md has no {heading}"));
        let section = section.split("\n### ").next().unwrap();
        for c in &schema.columns {
            let row = format!("| `{}` | {}", c.name, c.ty.name());
            assert!(
                section.contains(&row),
                "docs/exports.md, {heading}: no row `{row}`"
            );
        }
        let rows = section.lines().filter(|l| l.starts_with("| `")).count();
        assert_eq!(
            rows,
            schema.columns.len(),
            "{heading}: rows for columns that do not exist"
        );
    }
}

#[test]
fn someone_who_began_sharing_after_the_position_comes_with_every_row() {
    let (mut h, protocols) = history(false);
    let later = now() - SignedDuration::from_hours(1);
    h.participant.push((
        1000,
        enrollment::Event::ConsentRecorded(ConsentRecorded {
            consent_id: Uuid::from_u128(3),
            document_id: "study".into(),
            document_version: 1,
            purposes: BTreeSet::from([Purpose::ResearchSharing]),
            given_at: later,
            method: Method::Paper,
            evidence_sha256: "cd".repeat(32),
            recorded_at: later,
        }),
    ));
    let rows = export(&h, &protocols, false, 500, false).unwrap();
    assert_eq!(rows.occurrences.len(), 1);
    assert_eq!(rows.practice.len(), 2, "the retracted one too, marked");
}

#[test]
fn a_link_made_after_the_position_brings_the_entry_back_with_its_occurrence() {
    let (mut h, protocols) = history(true);
    let (enrollment_id, occurrence_id) = match &h.participant.last().unwrap().1 {
        enrollment::Event::Due(d) => (d.enrollment_id, d.occurrence_id),
        other => panic!("{other:?}"),
    };
    h.participant.push((
        900,
        enrollment::Event::Completed(enrollment::OccurrenceCompleted {
            enrollment_id,
            occurrence_id,
            completed_at: now() - SignedDuration::from_hours(30),
            entry_id: Some(Uuid::from_u128(10)),
            entry_revision: Some(1),
        }),
    ));
    let rows = export(&h, &protocols, false, 500, false).unwrap();
    let entry = rows
        .practice
        .iter()
        .find(|r| r[1] == Value::Uuid(pseudonym(Uuid::from_u128(10))))
        .expect("the linked entry is a changed row");
    assert_eq!(entry[9], Value::Uuid(pseudonym(occurrence_id)));
    assert_eq!(rows.occurrences.len(), 1);
}
