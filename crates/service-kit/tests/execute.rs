//! The executor against a real PostgreSQL.

use std::collections::BTreeSet;

use tend_domain::consent::{DocumentCommand, Documents, Purpose};
use tend_event_store::{Metadata, TenantId};
use tend_service_kit::execute::{self, Retry};
use tend_service_kit::streams;
use tend_testkit::grpc::{Services, ts};
use uuid::Uuid;

fn define() -> DocumentCommand {
    DocumentCommand::Define {
        document_id: "main".into(),
        version: 1,
        purposes: BTreeSet::from([Purpose::Protocol]),
        now: ts("2026-06-01T00:00:00Z"),
    }
}

/// A stream wrongly believed empty: the first attempt's append fails on
/// the version, the next reads and decides on what is there.
#[tokio::test]
async fn a_stream_wrongly_believed_empty_is_read_on_the_next_attempt() {
    let s = Services::start("2026-06-01T00:00:00Z").await;
    let tenant = TenantId::new("clinic").unwrap();
    let stream = streams::consent_document("main").unwrap();
    let metadata = Metadata::default();
    let run = |known_empty| {
        execute::execute_from::<Documents, tend_service_kit::Error, ()>(
            &s.store,
            &tenant,
            &stream,
            Retry::on_version_conflict(2),
            &metadata,
            &(),
            known_empty,
            |_| Uuid::now_v7(),
            |_, ()| Ok(define()),
        )
    };
    let first = run(true).await.unwrap();
    assert_eq!((first.events.len(), first.version), (1, Some(0)));
    // The same definition again, believing the stream empty: it is not, so
    // the append fails, the next attempt reads it, and the same version
    // with the same purposes changes nothing.
    let again = run(true).await.unwrap();
    assert_eq!((again.events.len(), again.read_version), (0, Some(0)));
    let (events, version) = s.store.read_whole_stream(&tenant, &stream).await.unwrap();
    assert_eq!((events.len(), version), (1, Some(0)));
}
