//! Single reads, `GET [base]/Type/{id}`, so that an integration engine can
//! follow references: a participant's resource is found by folding that
//! participant's streams (its id says whose), a definition by reading its
//! protocol or instrument, all in a snapshot at the head.

use sqlx::PgPool;
use tend_domain::assessment::{self, Instrument};
use tend_domain::protocol::{self, Protocol};
use tend_export::read::Snapshot;
use tend_privacy::Directory;
use tend_service_kit::streams;

use crate::participant::{self, Context};
use crate::{Error, Kind, definitions, ids};

/// The resource, or `None` when the tenant has none of that type and id
/// (or it is not shared with clinicians).
pub async fn read(
    pool: &PgPool,
    directory: &Directory,
    tenant: &str,
    kind: Kind,
    id: &str,
) -> Result<Option<serde_json::Value>, Error> {
    if !ids::is_valid(id) {
        return Ok(None);
    }
    let mut snapshot = Snapshot::open(pool, tenant, 0).await?;
    let found = if kind.of_participant() {
        of_participant(&mut snapshot, directory, tenant, kind, id).await?
    } else {
        definition(&mut snapshot, kind, id).await?
    };
    snapshot.close().await?;
    Ok(found)
}

async fn of_participant(
    snapshot: &mut Snapshot,
    directory: &Directory,
    tenant: &str,
    kind: Kind,
    id: &str,
) -> Result<Option<serde_json::Value>, Error> {
    let Some(key) = ids::participant_of(id) else {
        return Ok(None);
    };
    if !snapshot.has_participant(key).await? {
        return Ok(None);
    }
    let chunk = snapshot.chunk(&[key]).await?;
    let decoded = chunk.decode()?;
    let mut protocols = protocol::ProtocolSet::default();
    for p in decoded.protocols {
        protocols.insert(p);
    }
    let mut instruments = tend_export::rows::InstrumentSet::default();
    for i in decoded.instruments {
        instruments.insert(i);
    }
    let references = directory
        .references(tenant, &[key])
        .await
        .map_err(|e| Error::Directory(e.to_string()))?;
    let ctx = Context {
        protocols: &protocols,
        instruments: &instruments,
        as_of: snapshot.as_of,
        since: 0,
    };
    Ok(decoded.histories.first().and_then(|h| {
        participant::resources(
            h,
            references.get(&key).map(String::as_str),
            &ctx,
            participant::Membership::ALWAYS,
        )
        .resources
        .into_iter()
        .find(|r| r.kind == kind && r.id == id)
        .map(|r| r.body)
    }))
}

/// A definition: its id names its protocol or instrument and version
/// (`<key>.<version>[.<activity>]`), or is a hash of that when it would be
/// too long, and then every one of the tenant's is looked at.
async fn definition(
    snapshot: &mut Snapshot,
    kind: Kind,
    id: &str,
) -> Result<Option<serde_json::Value>, Error> {
    let key = id.split('.').next().unwrap_or_default();
    let hashed = !id.contains('.');
    if kind == Kind::Questionnaire {
        let candidates: Vec<String> = if hashed {
            snapshot.ids_in(streams::INSTRUMENT).await?
        } else {
            vec![key.to_owned()]
        };
        let mut all: Vec<Instrument> = assessment::built_ins()
            .iter()
            .filter(|i| hashed || i.id == key)
            .cloned()
            .collect();
        let mut positions = vec![0; all.len()];
        for (i, at) in snapshot.defined(&candidates).await? {
            all.push(i);
            positions.push(at);
        }
        return Ok(all
            .iter()
            .zip(positions)
            .map(|(i, at)| definitions::instrument(i, at))
            .find(|r| r.id == id)
            .map(|r| r.body));
    }
    let candidates: Vec<String> = if hashed {
        snapshot.ids_in(streams::PROTOCOL).await?
    } else {
        vec![key.to_owned()]
    };
    let mut all: Vec<(Protocol, u64)> = protocol::built_ins()
        .iter()
        .filter(|p| hashed || p.id == key)
        .map(|p| (p.clone(), 0))
        .collect();
    all.extend(snapshot.published(&candidates).await?);
    Ok(all
        .iter()
        .flat_map(|(p, at)| definitions::protocol(p, *at))
        .find(|r| r.kind == kind && r.id == id)
        .map(|r| r.body))
}
