//! The codebook every export carries: what each column means, its type,
//! unit and allowed values, how scores were made and from which sources,
//! and what the export is (position, recipient, options, files).

use std::path::Path;

use jiff::Timestamp;
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};
use tend_domain::assessment::Instrument;

use crate::table::{Schema, Type};
use crate::write::arrow_type;
use crate::{Error, FileReport, Request};

pub(crate) struct Meta<'a> {
    pub request: &'a Request,
    pub position: u64,
    pub as_of: Timestamp,
    pub recipient: &'a str,
    pub key_id: &'a str,
    pub participants: u64,
}

/// The scoring keys and the change statistic, with their sources.
fn methods() -> Json {
    json!({
        "scoring": {
            "mean_of_subscale_means": "Self-Compassion Scale (SCS), 26 items: reverse-score the negative items (Self-Judgment, Isolation, Over-Identification), take each of the six subscale means, then the mean of the six (Neff 2003, Self and Identity 2:223-250; Neff's current scoring key).",
            "mean_of_items": "Self-Compassion Scale - Short Form (SCS-SF), 12 items: reverse-score the negative items, then the mean of all 12 (Raes, Pommier, Neff & Van Gucht 2011, Clinical Psychology & Psychotherapy 18:250-255). Its authors advise against reading its subscales alone.",
            "sum": "Reverse-score the reversed items, then sum; with missing answers, the mean of the answered items times the item count.",
            "exact": "Scores are computed exactly as fractions; `score` is the nearest double to score_numerator / score_denominator."
        },
        "change": {
            "change": "score minus the baseline's score, exact.",
            "change_percent": "100 * change / |baseline score|.",
            "reliable_change_index": "Jacobson & Truax 1991 (J Consult Clin Psychol 59:12-19): RCI = change / S_diff, S_diff = SD * sqrt(2) * sqrt(1 - r), with the SD and reliability r configured for the instrument (listed under `instruments`).",
            "reliable_change": "|RCI| > 1.96 (p < .05), in the direction the instrument counts as better."
        },
        "baseline": "The designated baseline, else the first administration at or after the start of the current arc (the first ever without an enrollment)."
    })
}

fn instrument(i: &Instrument) -> Json {
    let sourced = |s: &Option<tend_domain::assessment::Sourced>| {
        s.as_ref().map_or(
            Json::Null,
            |s| json!({"value": s.value, "source": s.source}),
        )
    };
    json!({
        "instrument": i.id,
        "version": i.version,
        "title": i.title,
        "method": i.method.name(),
        "answers": {"min": i.min_answer, "max": i.max_answer},
        "items": i.items.len(),
        "higher_is_better": i.higher_is_better,
        "subscales": i.subscales.iter().map(|s| json!({
            "scale": s.key,
            "higher_is_better": s.higher_is_better,
            "reported_reversed": s.report_reversed,
        })).collect::<Vec<_>>(),
        "subscales_interpretable": i.subscales_interpretable,
        "bands": i.bands.iter().map(|b| json!({
            "band": b.label, "up_to": b.up_to, "inclusive": b.inclusive,
        })).collect::<Vec<_>>(),
        "sd": sourced(&i.sd),
        "reliability": sourced(&i.reliability),
        "source": i.source,
    })
}

fn column(c: &crate::table::Column, format: crate::Format) -> Json {
    let storage = match format {
        crate::Format::Csv => match c.ty {
            Type::Instant => {
                "text: YYYY-MM-DDTHH:MM:SS[.ffffff]+HH:MM, the local time and its offset".to_owned()
            }
            Type::Date => "text: YYYY-MM-DD".to_owned(),
            Type::Time => "text: HH:MM:SS".to_owned(),
            Type::Boolean => "text: true or false".to_owned(),
            Type::Decimal => "text: a decimal number".to_owned(),
            Type::Integer => "text: an integer".to_owned(),
            _ => "text".to_owned(),
        },
        crate::Format::Parquet => format!("{}", arrow_type(c.ty)),
    };
    let values = match c.ty {
        Type::Enum(values) => values
            .iter()
            .map(|(v, label)| json!({"value": v, "label": label}))
            .collect::<Vec<_>>(),
        _ => vec![],
    };
    json!({
        "column": c.name,
        "type": c.ty.name(),
        "storage": storage,
        "unit": c.unit,
        "nullable": c.nullable,
        "meaning": c.meaning,
        "values": values,
    })
}

/// Writes one of the codebook's own files, whose digest is of the bytes
/// in hand.
fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<FileReport, Error> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
    std::fs::File::open(&path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(&path, e))?;
    Ok(FileReport {
        file: name.to_owned(),
        rows: 0,
        bytes: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(bytes)),
    })
}

/// Writes `codebook.json` and `codebook.csv` beside the data files, and
/// answers every file's report (data files first).
pub(crate) fn write(
    dir: &Path,
    meta: &Meta<'_>,
    schemas: &[Schema],
    files: &[FileReport],
    instruments: &[Instrument],
) -> Result<Vec<FileReport>, Error> {
    let mut reports = files.to_vec();
    let mut datasets = Vec::new();
    for (schema, f) in schemas.iter().zip(files) {
        datasets.push(json!({
            "dataset": schema.name,
            "file": f.file,
            "rows": f.rows,
            "bytes": f.bytes,
            "sha256": f.sha256,
            "meaning": schema.meaning,
            "columns": schema.columns.iter().map(|c| column(c, meta.request.format)).collect::<Vec<_>>(),
        }));
    }
    let r = meta.request;
    let book = json!({
        "tend_version": env!("CARGO_PKG_VERSION"),
        "format": r.format.name(),
        "recipient": meta.recipient,
        "pseudonym_key_id": meta.key_id,
        "position": meta.position,
        // With dates shifted, the export's instant would date the phases.
        "as_of": if r.shift_dates { Json::Null } else { json!(meta.as_of.to_string()) },
        "since_position": if r.since_position == 0 { Json::Null } else { json!(r.since_position) },
        "dates_shifted": r.shift_dates,
        "retracted_practice": if r.include_retracted || r.since_position != 0 { "included, marked" } else { "left out" },
        "participants": meta.participants,
        "who": "Participants who share their data for research (consent purpose research_sharing) as the log stood at `position`, and people erased while sharing (their numbers only). Pseudonyms are HMAC-SHA-256 of Tend's opaque ids under the recipient's key: the same in this recipient's streams and exports, unlinkable to another recipient's.",
        "null": if r.format == crate::Format::Csv { "an empty field" } else { "a Parquet null" },
        "methods": methods(),
        "instruments": instruments.iter().map(instrument).collect::<Vec<_>>(),
        "datasets": datasets,
    });
    let mut text = serde_json::to_vec_pretty(&book).map_err(|e| Error::Write(e.to_string()))?;
    text.push(b'\n');

    // The same columns as a flat table, for tools that read codebooks so.
    let mut csv = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    let failed = |e: csv::Error| Error::Write(e.to_string());
    csv.write_record([
        "dataset", "column", "type", "unit", "nullable", "meaning", "values",
    ])
    .map_err(failed)?;
    for schema in schemas {
        for c in &schema.columns {
            let values = match c.ty {
                Type::Enum(values) => values
                    .iter()
                    .map(|(v, label)| format!("{v}={label}"))
                    .collect::<Vec<_>>()
                    .join("; "),
                _ => String::new(),
            };
            csv.write_record([
                schema.name.as_str(),
                &c.name,
                c.ty.name(),
                c.unit,
                if c.nullable { "true" } else { "false" },
                &c.meaning,
                &values,
            ])
            .map_err(failed)?;
        }
    }
    let csv = csv
        .into_inner()
        .map_err(|e| Error::Write(e.error().to_string()))?;
    reports.push(write_file(dir, "codebook.csv", &csv)?);
    reports.push(write_file(dir, "codebook.json", &text)?);
    Ok(reports)
}
