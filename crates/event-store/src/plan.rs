//! Deciding a batch of appends: pure, so every rule is tested without a
//! database. The writer feeds it what it read under the log lock (the head
//! position, stream versions, events already stored with the same ids) and
//! writes exactly the rows it returns.

use std::collections::HashMap;

use uuid::Uuid;

use crate::{Appended, Error, ExpectedVersion, NewEvent, StreamId, TenantId};

/// One caller's append, as queued for the writer.
#[derive(Debug)]
pub(crate) struct AppendRequest {
    pub tenant: TenantId,
    pub stream: StreamId,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

/// An event already in the log, as far as idempotency needs it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredEvent {
    pub stream: StreamId,
    pub stream_version: u64,
    pub position: u64,
    pub event_type: String,
    pub schema_version: u32,
    pub payload: serde_json::Value,
}

/// What the writer read before deciding.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub head: u64,
    pub versions: HashMap<(TenantId, StreamId), u64>,
    pub stored: HashMap<(TenantId, Uuid), StoredEvent>,
}

/// A row to insert: event `event` of request `request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Row {
    pub request: usize,
    pub event: usize,
    pub position: u64,
    pub stream_version: u64,
}

#[derive(Debug)]
pub(crate) struct Plan {
    pub outcomes: Vec<Result<Appended, Error>>,
    pub rows: Vec<Row>,
}

/// Decides every request in order, as if each ran alone after the ones
/// before it: a request sees the streams and ids that earlier requests in
/// the same batch wrote.
pub(crate) fn plan(requests: &[AppendRequest], mut snapshot: Snapshot) -> Plan {
    let mut outcomes = Vec::with_capacity(requests.len());
    let mut rows = Vec::new();
    for (r, req) in requests.iter().enumerate() {
        let outcome = decide(req, &snapshot).map(|decision| match decision {
            Decision::AlreadyStored(appended) => appended,
            Decision::Write => {
                let key = (req.tenant.clone(), req.stream.clone());
                let mut version = snapshot.versions.get(&key).map_or(0, |v| v + 1);
                let mut positions = Vec::with_capacity(req.events.len());
                for (e, event) in req.events.iter().enumerate() {
                    snapshot.head += 1;
                    rows.push(Row {
                        request: r,
                        event: e,
                        position: snapshot.head,
                        stream_version: version,
                    });
                    positions.push(snapshot.head);
                    snapshot.stored.insert(
                        (req.tenant.clone(), event.id),
                        StoredEvent {
                            stream: req.stream.clone(),
                            stream_version: version,
                            position: snapshot.head,
                            event_type: event.event_type.clone(),
                            schema_version: event.schema_version,
                            payload: event.payload.clone(),
                        },
                    );
                    version += 1;
                }
                let stream_version = version - 1;
                snapshot.versions.insert(key, stream_version);
                Appended {
                    positions,
                    stream_version,
                    already_stored: false,
                }
            }
        });
        outcomes.push(outcome);
    }
    Plan { outcomes, rows }
}

enum Decision {
    AlreadyStored(Appended),
    Write,
}

fn decide(req: &AppendRequest, snapshot: &Snapshot) -> Result<Decision, Error> {
    let found: Vec<_> = req
        .events
        .iter()
        .map(|e| snapshot.stored.get(&(req.tenant.clone(), e.id)))
        .collect();

    if found.iter().all(Option::is_none) {
        let current = snapshot
            .versions
            .get(&(req.tenant.clone(), req.stream.clone()))
            .copied();
        return if req.expected.admits(current) {
            Ok(Decision::Write)
        } else {
            Err(Error::WrongExpectedVersion {
                stream: req.stream.clone(),
                expected: req.expected,
                actual: current,
            })
        };
    }

    // A retry: it must match what is stored, event for event.
    let mut positions = Vec::with_capacity(req.events.len());
    let mut stream_version = 0;
    for (event, stored) in req.events.iter().zip(&found) {
        let Some(stored) = stored else {
            return Err(Error::IdempotencyConflict { event_id: event.id });
        };
        let same = stored.stream == req.stream
            && stored.event_type == event.event_type
            && stored.schema_version == event.schema_version
            && stored.payload == event.payload;
        if !same {
            return Err(Error::IdempotencyConflict { event_id: event.id });
        }
        positions.push(stored.position);
        stream_version = stream_version.max(stored.stream_version);
    }
    Ok(Decision::AlreadyStored(Appended {
        positions,
        stream_version,
        already_stored: true,
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn tenant() -> TenantId {
        TenantId::new("clinic").expect("valid tenant")
    }

    fn stream(s: &str) -> StreamId {
        StreamId::new(s).expect("valid stream")
    }

    fn event(id: u128, payload: serde_json::Value) -> NewEvent {
        NewEvent {
            id: Uuid::from_u128(id),
            event_type: "Tested".into(),
            schema_version: 1,
            payload,
            metadata: Default::default(),
        }
    }

    fn request(s: &str, expected: ExpectedVersion, events: Vec<NewEvent>) -> AppendRequest {
        AppendRequest {
            tenant: tenant(),
            stream: stream(s),
            expected,
            events,
        }
    }

    #[test]
    fn assigns_dense_positions_and_stream_versions_in_request_order() {
        let snapshot = Snapshot {
            head: 10,
            versions: HashMap::from([((tenant(), stream("a-1")), 4)]),
            ..Default::default()
        };
        let plan = plan(
            &[
                request(
                    "a-1",
                    ExpectedVersion::Exact(4),
                    vec![event(1, json!(1)), event(2, json!(2))],
                ),
                request("b-1", ExpectedVersion::NoStream, vec![event(3, json!(3))]),
                request("a-1", ExpectedVersion::Exact(6), vec![event(4, json!(4))]),
            ],
            snapshot,
        );
        let appended: Vec<_> = plan
            .outcomes
            .into_iter()
            .map(|o| o.expect("each request is admitted"))
            .collect();
        assert_eq!(appended[0].positions, vec![11, 12]);
        assert_eq!(appended[0].stream_version, 6);
        assert_eq!(appended[1].positions, vec![13]);
        assert_eq!(appended[1].stream_version, 0);
        assert_eq!(appended[2].positions, vec![14]);
        assert_eq!(appended[2].stream_version, 7);
        assert_eq!(plan.rows.last().map(|r| r.position), Some(14));
        let versions: Vec<_> = plan.rows.iter().map(|r| r.stream_version).collect();
        assert_eq!(versions, vec![5, 6, 0, 7]);
    }

    #[test]
    fn refuses_a_wrong_expected_version_and_writes_nothing_for_it() {
        let snapshot = Snapshot {
            head: 3,
            versions: HashMap::from([((tenant(), stream("a-1")), 2)]),
            ..Default::default()
        };
        let plan = plan(
            &[
                request("a-1", ExpectedVersion::Exact(1), vec![event(1, json!(1))]),
                request("a-1", ExpectedVersion::NoStream, vec![event(2, json!(2))]),
                request("b-1", ExpectedVersion::Exact(0), vec![event(3, json!(3))]),
            ],
            snapshot,
        );
        for outcome in &plan.outcomes {
            assert!(
                matches!(outcome, Err(Error::WrongExpectedVersion { .. })),
                "{outcome:?}"
            );
        }
        assert!(plan.rows.is_empty());
    }

    #[test]
    fn answers_a_retry_with_the_original_positions() {
        let first = plan(
            &[request(
                "a-1",
                ExpectedVersion::NoStream,
                vec![event(1, json!({"m": 1})), event(2, json!({"m": 2}))],
            )],
            Snapshot::default(),
        );
        let mut stored = HashMap::new();
        for row in &first.rows {
            stored.insert(
                (tenant(), Uuid::from_u128(row.event as u128 + 1)),
                StoredEvent {
                    stream: stream("a-1"),
                    stream_version: row.stream_version,
                    position: row.position,
                    event_type: "Tested".into(),
                    schema_version: 1,
                    payload: json!({"m": row.event + 1}),
                },
            );
        }
        let retry = plan(
            &[request(
                "a-1",
                ExpectedVersion::NoStream,
                vec![event(1, json!({"m": 1})), event(2, json!({"m": 2}))],
            )],
            Snapshot {
                head: 2,
                versions: HashMap::from([((tenant(), stream("a-1")), 1)]),
                stored,
            },
        );
        let appended = retry.outcomes[0].as_ref().expect("retry is answered");
        assert!(appended.already_stored);
        assert_eq!(appended.positions, vec![1, 2]);
        assert_eq!(appended.stream_version, 1);
        assert!(retry.rows.is_empty());
    }

    #[test]
    fn a_retry_within_one_batch_is_answered_from_the_batch() {
        let req = || request("a-1", ExpectedVersion::NoStream, vec![event(1, json!("x"))]);
        let plan = plan(&[req(), req()], Snapshot::default());
        let first = plan.outcomes[0].as_ref().expect("first writes");
        let second = plan.outcomes[1].as_ref().expect("second is a retry");
        assert!(!first.already_stored);
        assert!(second.already_stored);
        assert_eq!(first.positions, second.positions);
        assert_eq!(plan.rows.len(), 1);
    }

    #[test]
    fn refuses_a_reused_id_with_other_content() {
        let plan = plan(
            &[
                request("a-1", ExpectedVersion::Any, vec![event(1, json!("x"))]),
                request("a-1", ExpectedVersion::Any, vec![event(1, json!("y"))]),
                request("b-1", ExpectedVersion::Any, vec![event(1, json!("x"))]),
            ],
            Snapshot::default(),
        );
        assert!(plan.outcomes[0].is_ok());
        for outcome in &plan.outcomes[1..] {
            assert!(
                matches!(outcome, Err(Error::IdempotencyConflict { .. })),
                "{outcome:?}"
            );
        }
        assert_eq!(plan.rows.len(), 1);
    }

    #[test]
    fn refuses_a_retry_that_matches_only_part_of_the_original() {
        let plan = plan(
            &[
                request("a-1", ExpectedVersion::Any, vec![event(1, json!(1))]),
                request(
                    "a-1",
                    ExpectedVersion::Any,
                    vec![event(1, json!(1)), event(2, json!(2))],
                ),
            ],
            Snapshot::default(),
        );
        assert!(matches!(
            plan.outcomes[1],
            Err(Error::IdempotencyConflict { event_id }) if event_id == Uuid::from_u128(2)
        ));
        assert_eq!(plan.rows.len(), 1);
    }

    #[test]
    fn the_same_event_id_in_two_tenants_is_two_events() {
        let other = TenantId::new("other").expect("valid tenant");
        let mut second = request("a-1", ExpectedVersion::NoStream, vec![event(1, json!(1))]);
        second.tenant = other;
        let plan = plan(
            &[
                request("a-1", ExpectedVersion::NoStream, vec![event(1, json!(1))]),
                second,
            ],
            Snapshot::default(),
        );
        assert!(plan.outcomes.iter().all(Result::is_ok));
        assert_eq!(plan.rows.len(), 2);
    }
}
