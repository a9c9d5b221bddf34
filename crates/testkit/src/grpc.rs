//! What tests of the services share: instants written as text, requests
//! as an authenticated caller, and a store with a hand-moved clock.

use jiff::Timestamp;
use tend_auth::Caller;
use tend_event_store::{EventStore, TenantId};
use tend_privacy::{Directory, MasterKeys};
use tend_service_kit::ManualClock;
use tonic::Request;

use crate::TestDatabase;

/// An RFC 3339 instant, e.g. `2026-06-01T12:00:00Z`.
pub fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// An instant on the wire, to the whole second.
pub fn pb_ts(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.as_second(),
        nanos: 0,
    }
}

/// A request as the authentication interceptor leaves it: from a caller of
/// `tenant`.
pub fn req<T>(tenant: &str, message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.extensions_mut().insert(Caller {
        tenant: TenantId::new(tenant).unwrap(),
    });
    r
}

/// A fresh database, its event store, the directory of participants (with
/// a fresh master key), and a clock that moves only when told: what every
/// service's test harness starts from.
#[derive(Debug)]
pub struct Services {
    pub db: TestDatabase,
    pub store: EventStore,
    pub directory: Directory,
    pub clock: ManualClock,
}

/// A new random master key set, as a server would be configured with.
pub fn master_keys(id: &str) -> MasterKeys {
    MasterKeys::generate_entry(id)
        .expect("the random source works")
        .parse()
        .expect("a generated entry parses")
}

impl Services {
    /// On a fresh database, with the clock at `start` (RFC 3339).
    pub async fn start(start: &str) -> Self {
        let db = crate::fresh_database().await;
        let store = EventStore::open(db.pool.clone(), Default::default())
            .await
            .unwrap();
        let directory = Directory::open(db.pool.clone(), master_keys("test"))
            .await
            .unwrap();
        Self {
            db,
            store,
            directory,
            clock: ManualClock::new(ts(start)),
        }
    }
}
