//! A Bulk Data export's resources, read in one repeatable-read snapshot a
//! chunk of participants at a time: each chunk's events are decoded and
//! folded off the async threads into NDJSON lines by type, then the
//! definitions those resources name.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use jiff::Timestamp;
use sqlx::PgPool;
use tend_domain::assessment;
use tend_domain::enrollment::Event as EnrollmentEvent;
use tend_domain::protocol::{self, ProtocolSet};
use tend_export::read::{Decoded, Snapshot};
use tend_export::rows::InstrumentSet;
use tend_privacy::Directory;
use uuid::Uuid;

use crate::participant::{self, Context, Membership};
use crate::{Error, Kind, Resource, definitions};

/// Participants read per statement (as in the analysts' exports).
const CHUNK: usize = 100;

/// Which participants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything of the tenant's: participants and definitions.
    System,
    /// Every participant's resources (FHIR's Patient compartment).
    Patient,
    /// Those whose current enrollment follows this protocol.
    Group(String),
}

#[derive(Debug, Clone)]
pub struct Request {
    pub tenant: String,
    pub scope: Scope,
    /// Only these types (empty: every type the scope has).
    pub types: BTreeSet<Kind>,
    /// 0: the head when the export starts.
    pub at_position: u64,
    /// Only what changed after this position (0: everything).
    pub since_position: u64,
}

impl Request {
    fn wants(&self, kind: Kind) -> bool {
        (self.types.is_empty() || self.types.contains(&kind))
            && (self.scope == Scope::System || kind.of_participant())
    }
}

/// A chunk's output: NDJSON lines by type, and resources gone since.
#[derive(Debug, Default)]
pub struct Batch {
    pub lines: BTreeMap<Kind, Vec<u8>>,
    pub counts: BTreeMap<Kind, u64>,
    pub gone: Vec<(Kind, String)>,
}

impl Batch {
    fn push(&mut self, r: &Resource) -> Result<(), Error> {
        let buf = self.lines.entry(r.kind).or_default();
        serde_json::to_writer(&mut *buf, &r.body)
            .map_err(|e| Error::Stopped(format!("serialising a resource: {e}")))?;
        buf.push(b'\n');
        *self.counts.entry(r.kind).or_default() += 1;
        Ok(())
    }
}

/// An export under way.
#[derive(Debug)]
pub struct Export {
    snapshot: Snapshot,
    request: Request,
    keys: Vec<Uuid>,
    /// Participants read (the chunk read ahead included).
    next: usize,
    /// Participants folded.
    folded: usize,
    /// The chunk read while the one before was folded.
    ahead: Option<Read>,
    protocols: Arc<ProtocolSet>,
    instruments: Arc<InstrumentSet>,
    /// Definitions the resources name, and whether a participant new to
    /// this export names them (so they are new to the reader too).
    plans: BTreeMap<(String, u32), bool>,
    questionnaires: BTreeMap<(String, u32), bool>,
}

/// A chunk of participants read and decoded, with their references.
#[derive(Debug)]
struct Read {
    decoded: Decoded,
    references: HashMap<Uuid, String>,
}

impl Export {
    /// Opens the snapshot and lists the tenant's participants.
    pub async fn open(pool: &PgPool, request: Request) -> Result<Self, Error> {
        let mut snapshot = Snapshot::open(pool, &request.tenant, request.at_position).await?;
        let keys = snapshot.participants().await?;
        Ok(Self {
            snapshot,
            request,
            keys,
            next: 0,
            folded: 0,
            ahead: None,
            protocols: Arc::new(ProtocolSet::default()),
            instruments: Arc::new(InstrumentSet::default()),
            plans: BTreeMap::new(),
            questionnaires: BTreeMap::new(),
        })
    }

    pub fn position(&self) -> u64 {
        self.snapshot.position
    }

    pub fn as_of(&self) -> Timestamp {
        self.snapshot.as_of
    }

    /// Participants folded so far, of how many.
    pub fn progress(&self) -> (usize, usize) {
        (self.folded, self.keys.len())
    }

    /// Reads and decodes the next chunk of participants.
    async fn read(&mut self, directory: &Directory) -> Result<Option<Read>, Error> {
        if self.next >= self.keys.len() {
            return Ok(None);
        }
        let end = (self.next + CHUNK).min(self.keys.len());
        let keys = self.keys[self.next..end].to_vec();
        self.next = end;
        let chunk = self.snapshot.chunk(&keys).await?;
        let references = directory
            .references(&self.request.tenant, &keys)
            .await
            .map_err(|e| Error::Directory(e.to_string()))?;
        let decoded = tokio::task::spawn_blocking(move || chunk.decode())
            .await
            .map_err(|e| Error::Stopped(format!("decoding: {e}")))??;
        Ok(Some(Read {
            decoded,
            references,
        }))
    }

    /// The next chunk of participants' resources; `None` when all are read.
    /// The chunk after it is read while this one is folded.
    pub async fn next(&mut self, directory: &Directory) -> Result<Option<Batch>, Error> {
        let read = match self.ahead.take() {
            Some(r) => r,
            None => match self.read(directory).await? {
                Some(r) => r,
                None => return Ok(None),
            },
        };
        let Read {
            decoded,
            references,
        } = read;
        if !decoded.protocols.is_empty() {
            let set = Arc::make_mut(&mut self.protocols);
            for p in decoded.protocols {
                set.insert(p);
            }
        }
        if !decoded.instruments.is_empty() {
            let set = Arc::make_mut(&mut self.instruments);
            for i in decoded.instruments {
                set.insert(i);
            }
        }
        let (protocols, instruments) = (self.protocols.clone(), self.instruments.clone());
        let (request, as_of) = (self.request.clone(), self.snapshot.as_of);
        let histories = decoded.histories;
        let participants = histories.len();
        type Used = Vec<(BTreeMap<(String, u32), bool>, BTreeMap<(String, u32), bool>)>;
        let folding = tokio::task::spawn_blocking(move || {
            let ctx = Context {
                protocols: &protocols,
                instruments: &instruments,
                as_of,
                since: request.since_position,
            };
            let mut batch = Batch::default();
            let mut used = Vec::new();
            for h in &histories {
                // A Group's members now and at `since`: who joins gets all
                // their resources, who leaves is listed as gone.
                let membership = match &request.scope {
                    Scope::Group(protocol) => Membership {
                        now: follows(h, protocol, u64::MAX),
                        then: follows(h, protocol, request.since_position),
                    },
                    _ => Membership::ALWAYS,
                };
                let was_in = membership.then && request.since_position > 0;
                if !(membership.now || was_in) {
                    continue;
                }
                let reference = references.get(&h.key).map(String::as_str);
                let outcome = participant::resources(h, reference, &ctx, membership);
                for r in outcome.resources.iter().filter(|r| request.wants(r.kind)) {
                    batch.push(r)?;
                }
                batch.gone.extend(
                    outcome
                        .gone
                        .into_iter()
                        .filter(|(kind, _)| request.wants(*kind)),
                );
                used.push((outcome.plans, outcome.questionnaires));
            }
            Ok::<_, Error>((batch, used))
        });
        // The next chunk's read and decoding overlap this fold.
        let ahead = self.read(directory).await;
        let (batch, used): (Batch, Used) = folding
            .await
            .map_err(|e| Error::Stopped(format!("folding: {e}")))??;
        self.ahead = ahead?;
        self.folded += participants;
        for (plans, questionnaires) in used {
            for (p, new) in plans {
                *self.plans.entry(p).or_default() |= new;
            }
            for (q, new) in questionnaires {
                *self.questionnaires.entry(q).or_default() |= new;
            }
        }
        Ok(Some(batch))
    }

    /// The definitions the participants' resources name (in a system-level
    /// export): those published after `since`, or named by a participant
    /// new to this export. Ends the snapshot.
    pub async fn finish(mut self) -> Result<Batch, Error> {
        let mut batch = Batch::default();
        if self.request.scope == Scope::System {
            let since = self.request.since_position;
            let tenant_protocols: Vec<String> = self
                .plans
                .keys()
                .map(|(id, _)| id.clone())
                .filter(|id| protocol::built_in(id).is_none())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let mut published: BTreeMap<(String, u32), (protocol::Protocol, u64)> = self
                .snapshot
                .published(&tenant_protocols)
                .await?
                .into_iter()
                .map(|(p, at)| ((p.id.clone(), p.version), (p, at)))
                .collect();
            // Instruments the protocols' activities name (any version: an
            // ActivityDefinition depends on the Questionnaire's URL).
            let mut named: BTreeMap<String, bool> = BTreeMap::new();
            for ((id, version), new) in &self.plans {
                let found = match protocol::built_in(id) {
                    Some(p) if p.version == *version => Some((p.clone(), 0)),
                    Some(_) => None,
                    None => published.remove(&(id.clone(), *version)),
                };
                let Some((p, at)) = found else { continue };
                for a in &p.activities {
                    if let protocol::ActivityKind::Assessment { instrument } = &a.kind {
                        *named.entry(instrument.clone()).or_default() |= *new || at > since;
                    }
                }
                if *new || at > since {
                    for r in definitions::protocol(&p, at) {
                        if self.request.wants(r.kind) {
                            batch.push(&r)?;
                        }
                    }
                }
            }
            let tenant_instruments: Vec<String> = self
                .questionnaires
                .keys()
                .map(|(id, _)| id.clone())
                .chain(named.keys().cloned())
                .filter(|id| assessment::built_in(id).is_none())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let mut defined: BTreeMap<(String, u32), (assessment::Instrument, u64)> = self
                .snapshot
                .defined(&tenant_instruments)
                .await?
                .into_iter()
                .map(|(i, at)| ((i.id.clone(), i.version), (i, at)))
                .collect();
            for (id, new) in named {
                let versions: Vec<u32> = match assessment::built_in(&id) {
                    Some(i) => vec![i.version],
                    None => defined
                        .keys()
                        .filter(|(i, _)| *i == id)
                        .map(|(_, v)| *v)
                        .collect(),
                };
                for v in versions {
                    *self.questionnaires.entry((id.clone(), v)).or_default() |= new;
                }
            }
            for ((id, version), new) in &self.questionnaires {
                let found = match assessment::built_in(id) {
                    Some(i) if i.version == *version => Some((i.clone(), 0)),
                    Some(_) => None,
                    None => defined.remove(&(id.clone(), *version)),
                };
                let Some((i, at)) = found else { continue };
                let r = definitions::instrument(&i, at);
                if (*new || at > since) && self.request.wants(r.kind) {
                    batch.push(&r)?;
                }
            }
        }
        self.snapshot.close().await?;
        Ok(batch)
    }
}

/// Whether the participant's current enrollment follows `protocol`, as the
/// log stood at `upto`.
fn follows(h: &tend_export::rows::History, protocol: &str, upto: u64) -> bool {
    let mut latest: Option<(jiff::Timestamp, Uuid, &str)> = None;
    for (_, e) in h.participant.iter().filter(|(p, _)| *p <= upto) {
        if let EnrollmentEvent::Enrolled(x) = e {
            let candidate = (x.enrolled_at, x.enrollment_id, x.protocol_id.as_str());
            if latest.is_none_or(|l| (l.0, l.1) < (candidate.0, candidate.1)) {
                latest = Some(candidate);
            }
        }
    }
    latest.is_some_and(|(_, _, p)| p == protocol)
}
