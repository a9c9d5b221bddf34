//! Analysis-ready exports of a tenant's data for one of its recipients.
//!
//! The log is read in one repeatable-read snapshot up to a position, a
//! chunk of participants at a time; each participant's events are folded by
//! the domain's own deciders (`rows`, pure) into the rows of every dataset
//! (`datasets`), which the writers (`write`) put into CSV or Parquet files
//! in a temporary directory; with the codebook (`codebook`) written last,
//! the directory is renamed into place. The same position and options give
//! the same bytes: nothing depends on the clock, the order is the
//! pseudonyms', and the writers are deterministic.

mod codebook;
pub mod datasets;
mod error;
mod files;
pub mod read;
pub mod rows;
pub mod table;
mod wide;
pub mod write;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use jiff::Timestamp;
use sqlx::PgPool;
use tend_domain::protocol::ProtocolSet;
use tend_privacy::Pseudonymizer;
use uuid::Uuid;

pub use error::Error;
pub use write::Format;

use crate::rows::{Context, InstrumentSet};
use crate::table::{Schema, Sink};

/// Participants read per statement: bounds memory (a chunk's events are
/// held as JSON while they are decoded), and keeps the next chunk's read
/// and decoding overlapping this one's fold.
const CHUNK: usize = 100;

/// What to export.
#[derive(Debug, Clone)]
pub struct Request {
    pub tenant: String,
    pub format: Format,
    /// 0: the head when the export starts.
    pub at_position: u64,
    /// Only rows changed after this position (0: everything).
    pub since_position: u64,
    pub shift_dates: bool,
    pub include_retracted: bool,
    /// Reference SDs of instruments' totals for the reliable change index,
    /// by instrument id, over the instrument's own (the built-ins have
    /// none: a study gives the SD of its population).
    pub sd: BTreeMap<String, f64>,
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct Report {
    pub position: u64,
    pub as_of: Timestamp,
    pub pseudonym_key_id: String,
    pub participants: u64,
    /// Events folded.
    pub events: u64,
    pub files: Vec<FileReport>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    pub file: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

impl FileReport {
    fn of(file: String, w: table::Written) -> Self {
        Self {
            file,
            rows: w.rows,
            bytes: w.bytes,
            sha256: w.sha256,
        }
    }
}

/// The pseudonym function of one of the tenant's recipients, with its
/// current key or a named one.
pub fn pseudonymizer(
    recipients: &tend_privacy::Recipients,
    tenant: &str,
    recipient: &str,
    key_id: Option<&str>,
) -> Result<Pseudonymizer, Error> {
    if recipients.pseudonymizer(tenant, recipient, None).is_none() {
        return Err(Error::UnknownRecipient(recipient.to_owned()));
    }
    recipients
        .pseudonymizer(tenant, recipient, key_id)
        .ok_or_else(|| Error::UnknownKey {
            recipient: recipient.to_owned(),
            key_id: key_id.unwrap_or_default().to_owned(),
        })
}

/// Exports into `out`, a directory that must not exist yet or be empty;
/// on failure nothing is left there.
pub async fn export(
    pool: &PgPool,
    pseudonymizer: Pseudonymizer,
    request: &Request,
    out: &Path,
) -> Result<Report, Error> {
    // Dropped (on an error, or with this future when the caller goes
    // away), the staging directory is removed.
    let staging = files::Staging::create(out)?;
    let report = build(pool, pseudonymizer, request, staging.path()).await?;
    staging.commit()?;
    Ok(report)
}

/// Builds the export's files in `dir`.
async fn build(
    pool: &PgPool,
    pseudonymizer: Pseudonymizer,
    request: &Request,
    dir: &Path,
) -> Result<Report, Error> {
    if let Some((instrument, _)) = request
        .sd
        .iter()
        .find(|(_, v)| !(v.is_finite() && **v > 0.0))
    {
        return Err(Error::BadSd(instrument.clone()));
    }
    let mut snapshot = read::Snapshot::open(pool, &request.tenant, request.at_position).await?;
    if request.since_position != 0 && request.since_position >= snapshot.position {
        return Err(Error::SinceNotBefore {
            since: request.since_position,
            at: snapshot.position,
        });
    }
    let (position, as_of) = (snapshot.position, snapshot.as_of);
    // The export's order: by pseudonym, so that it says nothing of the
    // opaque ids' order and is the same on every run.
    let mut keys: Vec<(Uuid, Uuid)> = snapshot
        .participants()
        .await?
        .into_iter()
        .map(|k| (pseudonymizer.pseudonym(k), k))
        .collect();
    keys.sort_unstable();
    let keys: Vec<Uuid> = keys.into_iter().map(|(_, k)| k).collect();

    let (tx, rx) = tokio::sync::mpsc::channel::<read::Decoded>(1);
    // The folder runs on a thread of its own: told when this future is
    // dropped, it stops after the chunk in hand instead of running on.
    let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let folder = Folder::new(dir, request, pseudonymizer, as_of, stop.0.clone());
    let folding = tokio::task::spawn_blocking(move || folder.run(rx));
    let mut read_error = None;
    for chunk in keys.chunks(CHUNK) {
        let decoded = match snapshot.chunk(chunk).await {
            // Decoding is CPU work: off the async threads, beside the fold
            // of the chunk before.
            Ok(c) => tokio::task::spawn_blocking(move || c.decode())
                .await
                .unwrap_or_else(|e| Err(Error::Write(format!("decoding stopped: {e}")))),
            Err(e) => Err(e),
        };
        match decoded {
            Ok(d) => {
                if tx.send(d).await.is_err() {
                    break; // the folder failed: its error says why
                }
            }
            Err(e) => {
                read_error = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let folded = folding
        .await
        .map_err(|e| Error::Write(format!("the export's writer stopped: {e}")))?;
    if let Some(e) = read_error {
        return Err(e);
    }
    let folded = folded?;
    snapshot.close().await?;
    let meta = codebook::Meta {
        request,
        position,
        as_of,
        recipient: &folded.recipient,
        key_id: &folded.key_id,
        participants: folded.participants,
    };
    let files = codebook::write(
        dir,
        &meta,
        &folded.schemas,
        &folded.files,
        &folded.instruments,
    )?;
    Ok(Report {
        position,
        as_of,
        pseudonym_key_id: folded.key_id,
        participants: folded.participants,
        events: folded.events,
        files,
    })
}

/// Sets its flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The fold and the writers, on a thread of their own.
struct Folder {
    stopped: Arc<AtomicBool>,
    dir: PathBuf,
    request: Request,
    pseudonymizer: Pseudonymizer,
    as_of: Timestamp,
}

/// What the folder wrote.
pub(crate) struct Folded {
    schemas: Vec<Schema>,
    /// Each data file, in the schemas' order.
    files: Vec<FileReport>,
    participants: u64,
    events: u64,
    /// The instrument versions that scored what is exported.
    instruments: Vec<tend_domain::assessment::Instrument>,
    recipient: String,
    key_id: String,
}

impl Folder {
    fn new(
        dir: &Path,
        request: &Request,
        pseudonymizer: Pseudonymizer,
        as_of: Timestamp,
        stopped: Arc<AtomicBool>,
    ) -> Self {
        Self {
            stopped,
            dir: dir.to_owned(),
            request: request.clone(),
            pseudonymizer,
            as_of,
        }
    }

    fn file(&self, schema: &Schema) -> String {
        format!("{}.{}", schema.name, self.request.format.extension())
    }

    fn run(self, mut rx: tokio::sync::mpsc::Receiver<read::Decoded>) -> Result<Folded, Error> {
        let long = datasets::long();
        let mut sinks: Vec<Box<dyn Sink>> = long
            .iter()
            .map(|s| self.request.format.sink(s, &self.dir.join(self.file(s))))
            .collect::<Result<_, _>>()?;
        let mut protocols = ProtocolSet::default();
        let mut instruments = InstrumentSet::default();
        let sd: BTreeMap<String, tend_domain::assessment::Sourced> = self
            .request
            .sd
            .iter()
            .map(|(i, v)| {
                let source = "given for this export".to_owned();
                (
                    i.clone(),
                    tend_domain::assessment::Sourced { value: *v, source },
                )
            })
            .collect();
        let pseudonym = |id: Uuid| self.pseudonymizer.pseudonym(id);
        let mut wide = wide::Spools::default();
        let mut used: BTreeSet<(String, u32)> = BTreeSet::new();
        let (mut participants, mut events) = (0u64, 0u64);
        while let Some(chunk) = rx.blocking_recv() {
            if self.stopped.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            for p in chunk.protocols {
                protocols.insert(p);
            }
            for i in chunk.instruments {
                instruments.insert(i);
            }
            let ctx = Context {
                protocols: &protocols,
                instruments: &instruments,
                pseudonym: &pseudonym,
                as_of: self.as_of,
                shift_dates: self.request.shift_dates,
                since: self.request.since_position,
                include_retracted: self.request.include_retracted,
                sd: &sd,
            };
            for history in &chunk.histories {
                let key = &history.key;
                events += history.events() as u64;
                let Some(rows) = rows::rows(history, &ctx) else {
                    continue;
                };
                participants += 1;
                for (i, set) in [
                    rows.participants,
                    rows.occurrences,
                    rows.practice,
                    rows.assessments,
                    rows.flags,
                ]
                .into_iter()
                .enumerate()
                {
                    for row in set {
                        debug_assert_eq!(row.len(), long[i].columns.len(), "{}", long[i].name);
                        sinks[i].push(row)?;
                    }
                }
                for (_, e) in &history.assessment {
                    if let tend_domain::assessment::Event::Scored(s) = e {
                        used.insert((s.scores.instrument_id.clone(), s.scores.instrument_version));
                    }
                }
                for (instrument, waves) in rows.wide {
                    wide.push(&self.dir, &instrument, pseudonym(*key), &waves)?;
                }
            }
        }
        let mut schemas: Vec<Schema> = long.to_vec();
        let mut files: Vec<FileReport> = Vec::new();
        for (schema, sink) in long.iter().zip(sinks) {
            files.push(FileReport::of(self.file(schema), sink.finish()?));
        }
        for (schema, name, written) in wide.finish(&self.dir, self.request.format)? {
            files.push(FileReport::of(name, written));
            schemas.push(schema);
        }
        Ok(Folded {
            schemas,
            files,
            participants,
            events,
            instruments: used
                .iter()
                .filter_map(|(id, v)| {
                    let mut i = instruments.get(id, *v)?.clone();
                    if let Some(given) = sd.get(id) {
                        i.sd = Some(given.clone());
                    }
                    Some(i)
                })
                .collect(),
            recipient: self.pseudonymizer.recipient().to_owned(),
            key_id: self.pseudonymizer.key_id().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests;
