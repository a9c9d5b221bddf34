//! Reading the log for an export: one repeatable-read snapshot, the
//! position and its instant, the tenant's participants, and their events a
//! chunk of participants at a time (bounded memory, whatever the log's
//! size).

use std::collections::{BTreeSet, HashMap};

use jiff::Timestamp;
use sqlx::{PgPool, Postgres, Transaction};
use tend_domain::DomainEvent;
use tend_domain::arc::FlagEvent;
use tend_domain::assessment::{self, Instrument, InstrumentEvent};
use tend_domain::protocol::{self, Protocol};
use tend_domain::{enrollment, practice};
use tend_service_kit::{instants, streams};
use uuid::Uuid;

use crate::Error;
use crate::rows::History;

/// A stored event as read, not yet decoded.
#[derive(Debug)]
pub struct Raw {
    pub stream_id: String,
    pub position: u64,
    pub event_type: String,
    pub schema_version: u32,
    pub payload: serde_json::Value,
}

/// One chunk of participants' events, in the export's order, with the
/// protocol and instrument versions first needed by them.
#[derive(Debug, Default)]
pub struct Chunk {
    /// Each participant's events, with the category of the stream each
    /// came from.
    pub participants: Vec<(Uuid, Vec<(&'static str, Raw)>)>,
    pub protocols: Vec<Protocol>,
    pub instruments: Vec<Instrument>,
}

/// A chunk with its events decoded: far smaller than the JSON trees.
#[derive(Debug, Default)]
pub struct Decoded {
    pub histories: Vec<History>,
    pub protocols: Vec<Protocol>,
    pub instruments: Vec<Instrument>,
}

impl Chunk {
    pub fn decode(self) -> Result<Decoded, Error> {
        Ok(Decoded {
            histories: self
                .participants
                .iter()
                .map(|(key, raw)| history(*key, raw))
                .collect::<Result<_, _>>()?,
            protocols: self.protocols,
            instruments: self.instruments,
        })
    }
}

#[derive(Debug)]
pub struct Snapshot {
    tx: Transaction<'static, Postgres>,
    tenant: String,
    pub position: u64,
    pub as_of: Timestamp,
    protocols_seen: BTreeSet<String>,
    instruments_seen: BTreeSet<String>,
}

impl Snapshot {
    /// Opens the snapshot and settles the position: `at` (0: the head).
    pub async fn open(pool: &PgPool, tenant: &str, at: u64) -> Result<Self, Error> {
        let mut tx = pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        // Positions are handed out in commit order, so the snapshot holds
        // every event up to its head and none will appear below it.
        let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
            .fetch_one(&mut *tx)
            .await?;
        let head = head as u64;
        if at > head {
            return Err(Error::BeyondHead { asked: at, head });
        }
        let position = if at == 0 { head } else { at };
        let recorded: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
            "SELECT recorded_at FROM events WHERE position <= $1 ORDER BY position DESC LIMIT 1",
        )
        .bind(position as i64)
        .fetch_optional(&mut *tx)
        .await?;
        Ok(Self {
            tx,
            tenant: tenant.to_owned(),
            position,
            as_of: recorded.map_or(Timestamp::UNIX_EPOCH, instants::from_chrono),
            protocols_seen: BTreeSet::new(),
            instruments_seen: BTreeSet::new(),
        })
    }

    /// The tenant's participants: every opaque id in the directory (each
    /// was registered before their first event).
    pub async fn participants(&mut self) -> Result<Vec<Uuid>, Error> {
        Ok(sqlx::query_scalar(
            "SELECT participant_id FROM participants WHERE tenant_id = $1 ORDER BY participant_id",
        )
        .bind(&self.tenant)
        .fetch_all(&mut *self.tx)
        .await?)
    }

    async fn events_of(&mut self, streams: &[String]) -> Result<Vec<Raw>, Error> {
        let rows: Vec<(String, i64, String, i32, serde_json::Value)> = sqlx::query_as(
            "SELECT stream_id, position, event_type, schema_version, payload FROM events
             WHERE tenant_id = $1 AND stream_id = ANY($2) AND position <= $3
             ORDER BY stream_id, stream_version",
        )
        .bind(&self.tenant)
        .bind(streams)
        .bind(self.position as i64)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(stream_id, position, event_type, schema_version, payload)| Raw {
                    stream_id,
                    position: position as u64,
                    event_type,
                    schema_version: schema_version as u32,
                    payload,
                },
            )
            .collect())
    }

    /// The events of `keys`' four streams each, and the tenant's protocol
    /// and instrument versions they name that were not read before.
    pub async fn chunk(&mut self, keys: &[Uuid]) -> Result<Chunk, Error> {
        // Whose stream, and which: known from what was asked for, so no
        // stream name is parsed back.
        let mut asked: HashMap<String, (usize, &'static str)> =
            HashMap::with_capacity(4 * keys.len());
        for (i, k) in keys.iter().enumerate() {
            for (category, stream) in [
                (streams::PARTICIPANT, streams::participant(*k)),
                (streams::PRACTICE, streams::practice(*k)),
                (streams::ASSESSMENT, streams::assessment(*k)),
                (streams::ARC, streams::arc(*k)),
            ] {
                asked.insert(stream.as_str().to_owned(), (i, category));
            }
        }
        let names: Vec<String> = asked.keys().cloned().collect();
        let raw = self.events_of(&names).await?;
        let mut protocols = BTreeSet::new();
        let mut instruments = BTreeSet::new();
        let mut participants: Vec<(Uuid, Vec<(&'static str, Raw)>)> =
            keys.iter().map(|k| (*k, Vec::new())).collect();
        for e in raw {
            let field = match e.event_type.as_str() {
                "ParticipantEnrolled" => Some(("protocol_id", &mut protocols)),
                "AssessmentSubmitted" => Some(("instrument_id", &mut instruments)),
                _ => None,
            };
            if let Some((name, set)) = field
                && let Some(id) = e.payload.get(name).and_then(|v| v.as_str())
            {
                set.insert(id.to_owned());
            }
            if let Some(&(i, category)) = asked.get(&e.stream_id) {
                participants[i].1.push((category, e));
            }
        }
        let protocols: Vec<String> = protocols
            .into_iter()
            .filter(|p| protocol::built_in(p).is_none() && self.protocols_seen.insert(p.clone()))
            .collect();
        let instruments: Vec<String> = instruments
            .into_iter()
            .filter(|i| {
                assessment::built_in(i).is_none() && self.instruments_seen.insert(i.clone())
            })
            .collect();
        Ok(Chunk {
            participants,
            protocols: self.protocols(&protocols).await?,
            instruments: self.instruments(&instruments).await?,
        })
    }

    /// Every published version of these protocols, as of the position.
    pub async fn protocols(&mut self, ids: &[String]) -> Result<Vec<Protocol>, Error> {
        Ok(self
            .published(ids)
            .await?
            .into_iter()
            .map(|(p, _)| p)
            .collect())
    }

    /// Every published version of these protocols, as of the position, with
    /// the position that published it.
    pub async fn published(&mut self, ids: &[String]) -> Result<Vec<(Protocol, u64)>, Error> {
        let names: Vec<String> = ids
            .iter()
            .filter_map(|id| streams::protocol(id).ok())
            .map(|s| s.as_str().to_owned())
            .collect();
        if names.is_empty() {
            return Ok(vec![]);
        }
        let mut histories: HashMap<String, protocol::History> = HashMap::new();
        let mut published: HashMap<(String, u32), u64> = HashMap::new();
        for e in self.events_of(&names).await? {
            let event = decode::<protocol::Event>(&e)?;
            let h = histories.remove(&e.stream_id).unwrap_or_default();
            let h = protocol::evolve(h, &event);
            for v in h.versions.iter().filter(|v| v.published_at.is_some()) {
                published
                    .entry((v.protocol.id.clone(), v.protocol.version))
                    .or_insert(e.position);
            }
            histories.insert(e.stream_id, h);
        }
        let mut out = Vec::new();
        for h in histories.into_values() {
            out.extend(
                h.versions
                    .iter()
                    .filter(|v| v.published_at.is_some())
                    .map(|v| {
                        let at = published
                            .get(&(v.protocol.id.clone(), v.protocol.version))
                            .copied()
                            .unwrap_or(0);
                        (v.protocol.clone(), at)
                    }),
            );
        }
        Ok(out)
    }

    /// Every version of these instruments, as of the position.
    pub async fn instruments(&mut self, ids: &[String]) -> Result<Vec<Instrument>, Error> {
        Ok(self
            .defined(ids)
            .await?
            .into_iter()
            .map(|(i, _)| i)
            .collect())
    }

    /// Every version of these instruments, as of the position, with the
    /// position that defined it.
    pub async fn defined(&mut self, ids: &[String]) -> Result<Vec<(Instrument, u64)>, Error> {
        let names: Vec<String> = ids
            .iter()
            .filter_map(|id| streams::instrument(id).ok())
            .map(|s| s.as_str().to_owned())
            .collect();
        if names.is_empty() {
            return Ok(vec![]);
        }
        let mut out = Vec::new();
        for e in self.events_of(&names).await? {
            let InstrumentEvent::Defined(d) = decode::<InstrumentEvent>(&e)?;
            out.push((d.instrument, e.position));
        }
        Ok(out)
    }

    /// The ids of the tenant's streams of one category (its protocols, its
    /// instruments) as of the position.
    pub async fn ids_in(&mut self, category: &str) -> Result<Vec<String>, Error> {
        let streams: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT stream_id FROM events
             WHERE tenant_id = $1 AND category = $2 AND stream_version = 0 AND position <= $3",
        )
        .bind(&self.tenant)
        .bind(category)
        .bind(self.position as i64)
        .fetch_all(&mut *self.tx)
        .await?;
        let prefix = format!("{category}-");
        Ok(streams
            .into_iter()
            .filter_map(|s| s.strip_prefix(&prefix).map(str::to_owned))
            .collect())
    }

    /// Whether the tenant's directory holds this participant.
    pub async fn has_participant(&mut self, id: Uuid) -> Result<bool, Error> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM participants WHERE tenant_id = $1 AND participant_id = $2)",
        )
        .bind(&self.tenant)
        .bind(id)
        .fetch_one(&mut *self.tx)
        .await?)
    }

    /// The first position after which every event of the tenant's was
    /// recorded after `instant`: an export `_since` an instant is one since
    /// this position. Events are recorded when their transaction starts,
    /// which is not always in position order, so this is the position
    /// before the first one recorded after the instant.
    pub async fn position_before(&mut self, instant: Timestamp) -> Result<u64, Error> {
        let first: Option<i64> = sqlx::query_scalar(
            "SELECT min(position) FROM events
             WHERE tenant_id = $1 AND recorded_at > $2 AND position <= $3",
        )
        .bind(&self.tenant)
        .bind(instants::to_chrono(instant))
        .bind(self.position as i64)
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(first.map_or(self.position, |p| (p as u64).saturating_sub(1)))
    }

    /// Ends the snapshot (read only: nothing to keep).
    pub async fn close(self) -> Result<(), Error> {
        self.tx.rollback().await?;
        Ok(())
    }
}

fn decode<E: DomainEvent>(e: &Raw) -> Result<E, Error> {
    // The reason names the type and version only, never stored values.
    E::from_stored(&e.event_type, e.schema_version, &e.payload).map_err(|d| {
        Error::Decode(format!(
            "{} v{} at position {}",
            d.event_type, d.schema_version, e.position
        ))
    })
}

/// Decodes one participant's events into their history, by stream.
fn history(key: Uuid, raw: &[(&'static str, Raw)]) -> Result<History, Error> {
    let mut h = History {
        key,
        ..Default::default()
    };
    for (category, e) in raw {
        match *category {
            streams::PARTICIPANT => h
                .participant
                .push((e.position, decode::<enrollment::Event>(e)?)),
            streams::PRACTICE => h.practice.push((e.position, decode::<practice::Event>(e)?)),
            streams::ASSESSMENT => h
                .assessment
                .push((e.position, decode::<assessment::Event>(e)?)),
            streams::ARC => h.flags.push((e.position, decode::<FlagEvent>(e)?)),
            _ => {}
        }
    }
    Ok(h)
}
