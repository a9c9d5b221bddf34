//! The wide tables, spooled: a wide table's columns depend on the most
//! waves any participant has, known only at the end, so each participant's
//! waves go to a scratch file in the export's directory as they are folded,
//! and the table is written from it at the end. Memory holds no
//! participant's numbers for longer than their fold.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde_json::{Value as Json, json};
use uuid::Uuid;

use crate::rows::Wave;
use crate::table::{Schema, Value, Written};
use crate::{Error, Format, datasets};

struct Spool {
    path: PathBuf,
    file: BufWriter<File>,
    waves: usize,
    subscales: BTreeSet<String>,
}

/// Every instrument's spool, by instrument id.
#[derive(Default)]
pub(crate) struct Spools {
    by_instrument: BTreeMap<String, Spool>,
}

fn write_err(e: impl std::fmt::Display) -> Error {
    Error::Write(e.to_string())
}

impl Spools {
    /// One participant's waves of one instrument.
    pub(crate) fn push(
        &mut self,
        dir: &Path,
        instrument: &str,
        participant: Uuid,
        waves: &[Wave],
    ) -> Result<(), Error> {
        if !self.by_instrument.contains_key(instrument) {
            let path = dir.join(format!(".wide-{}.spool", self.by_instrument.len()));
            let file = BufWriter::new(File::create(&path).map_err(|e| Error::io(&path, e))?);
            self.by_instrument.insert(
                instrument.to_owned(),
                Spool {
                    path,
                    file,
                    waves: 0,
                    subscales: BTreeSet::new(),
                },
            );
        }
        let spool = self
            .by_instrument
            .get_mut(instrument)
            .expect("inserted above");
        spool.waves = spool.waves.max(waves.len());
        let line = json!({
            "p": participant,
            "w": waves.iter().map(|w| {
                spool.subscales.extend(w.subscales.keys().cloned());
                json!({
                    "a": match w.administered_at {
                        Value::Instant(at, offset) => json!([at.as_microsecond(), offset]),
                        _ => Json::Null,
                    },
                    "d": match w.day {
                        Value::Integer(d) => json!(d),
                        _ => Json::Null,
                    },
                    "t": w.total,
                    "s": w.subscales,
                })
            }).collect::<Vec<_>>(),
        });
        serde_json::to_writer(&mut spool.file, &line).map_err(write_err)?;
        spool.file.write_all(b"\n").map_err(write_err)
    }

    /// Writes each wide table from its spool, and removes the spools;
    /// answers each table's schema, file name and rows.
    pub(crate) fn finish(
        self,
        dir: &Path,
        format: Format,
    ) -> Result<Vec<(Schema, String, Written)>, Error> {
        let mut out = Vec::new();
        for (instrument, spool) in self.by_instrument {
            let Spool {
                path,
                file,
                waves,
                subscales,
            } = spool;
            drop(file.into_inner().map_err(|e| write_err(e.error()))?);
            let schema = datasets::wide(&instrument, waves, &subscales);
            let name = format!("{}.{}", schema.name, format.extension());
            let mut sink = format.sink(&schema, &dir.join(&name))?;
            let reader = BufReader::new(File::open(&path).map_err(|e| Error::io(&path, e))?);
            for line in reader.lines() {
                let line = line.map_err(|e| Error::io(&path, e))?;
                let json: Json = serde_json::from_str(&line).map_err(write_err)?;
                sink.push(row(&json, waves, &subscales)?)?;
            }
            let written = sink.finish()?;
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            out.push((schema, name, written));
        }
        Ok(out)
    }
}

/// A wide row from its spooled line.
fn row(json: &Json, waves: usize, subscales: &BTreeSet<String>) -> Result<Vec<Value>, Error> {
    let bad = || Error::Write("a wide table's spool line does not read back".into());
    let participant: Uuid = json["p"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let mut row = vec![Value::Uuid(participant)];
    let spooled = json["w"].as_array().ok_or_else(bad)?;
    for i in 0..waves {
        let Some(w) = spooled.get(i) else {
            row.extend((0..3 + subscales.len()).map(|_| Value::Null));
            continue;
        };
        row.push(match w["a"].as_array() {
            Some(a) => {
                let micros = a.first().and_then(Json::as_i64).ok_or_else(bad)?;
                let offset = a.get(1).and_then(Json::as_i64).ok_or_else(bad)?;
                let at = Timestamp::from_microsecond(micros).map_err(|_| bad())?;
                Value::Instant(at, offset as i32)
            }
            None => Value::Null,
        });
        row.push(w["d"].as_i64().map_or(Value::Null, Value::Integer));
        row.push(Value::Decimal(w["t"].as_f64().ok_or_else(bad)?));
        for s in subscales {
            row.push(w["s"][s].as_f64().map_or(Value::Null, Value::Decimal));
        }
    }
    Ok(row)
}
