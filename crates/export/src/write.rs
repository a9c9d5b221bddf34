//! The two formats: CSV (RFC 4180) and Parquet (typed columns).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder,
    StringDictionaryBuilder, Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::types::Int32Type;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, TimeUnit};
use jiff::Timestamp;
use jiff::civil::{Date, Time};
use jiff::tz::Offset;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use sha2::{Digest, Sha256};

use crate::Error;
use crate::table::{Row, Schema, Sink, Type, Value, Written};

/// A file written through a SHA-256 and a byte count, so that the codebook
/// has each file's digest without reading it back.
pub(crate) struct Hashed {
    file: File,
    hasher: Sha256,
    bytes: u64,
}

impl Hashed {
    pub(crate) fn create(path: &Path) -> Result<Self, Error> {
        Ok(Self {
            file: File::create(path).map_err(|e| Error::io(path, e))?,
            hasher: Sha256::new(),
            bytes: 0,
        })
    }

    /// Syncs the file; answers its size and digest.
    pub(crate) fn finish(self) -> Result<(u64, String), Error> {
        self.file
            .sync_all()
            .map_err(|e| Error::Write(e.to_string()))?;
        Ok((self.bytes, hex::encode(self.hasher.finalize())))
    }
}

impl Write for Hashed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn written(rows: u64, out: BufWriter<Hashed>) -> Result<Written, Error> {
    let (bytes, sha256) = out
        .into_inner()
        .map_err(|e| Error::Write(e.error().to_string()))?
        .finish()?;
    Ok(Written {
        rows,
        bytes,
        sha256,
    })
}

/// The export's file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Parquet,
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Parquet => "parquet",
        }
    }

    pub fn name(self) -> &'static str {
        self.extension()
    }

    /// A sink writing `schema`'s rows to `path`.
    pub fn sink(self, schema: &Schema, path: &Path) -> Result<Box<dyn Sink>, Error> {
        Ok(match self {
            Format::Csv => Box::new(CsvSink::create(schema, path)?),
            Format::Parquet => Box::new(ParquetSink::create(schema, path)?),
        })
    }
}

// ---- CSV ----

/// `YYYY-MM-DDTHH:MM:SS[.ffffff]+HH:MM`: the local wall clock and its
/// offset, to the microsecond (as Parquet keeps it).
pub fn instant_text(at: Timestamp, offset_seconds: i32) -> String {
    let offset = Offset::from_seconds(offset_seconds).unwrap_or(Offset::UTC);
    let dt = offset.to_datetime(at);
    let micros = dt.subsec_nanosecond() / 1000;
    let mut s = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    );
    if micros != 0 {
        s.push_str(&format!(".{micros:06}"));
    }
    let total = offset.seconds();
    let sign = if total < 0 { '-' } else { '+' };
    let m = total.unsigned_abs() / 60;
    s.push_str(&format!("{sign}{:02}:{:02}", m / 60, m % 60));
    s
}

fn time_text(t: Time) -> String {
    format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second())
}

/// A value as its CSV field.
pub fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::Uuid(u) => u.hyphenated().to_string(),
        Value::Code(s) => s.clone(),
        Value::Enum(s) => (*s).to_owned(),
        Value::Integer(n) => n.to_string(),
        // Always with a point or an exponent, so that a reader never takes
        // a decimal column for integers; the shortest text that reads back
        // to the same double.
        Value::Decimal(d) => format!("{d:?}"),
        Value::Boolean(b) => if *b { "true" } else { "false" }.to_owned(),
        Value::Date(d) => d.to_string(),
        Value::Instant(at, offset) => instant_text(*at, *offset),
        Value::Time(t) => time_text(*t),
    }
}

struct CsvSink {
    writer: csv::Writer<BufWriter<Hashed>>,
    rows: u64,
    field: Vec<String>,
}

impl CsvSink {
    fn create(schema: &Schema, path: &Path) -> Result<Self, Error> {
        let file = Hashed::create(path)?;
        let mut writer = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .quote_style(csv::QuoteStyle::Necessary)
            .from_writer(BufWriter::with_capacity(1 << 16, file));
        writer
            .write_record(schema.columns.iter().map(|c| c.name.as_str()))
            .map_err(|e| Error::csv(path, e))?;
        Ok(Self {
            writer,
            rows: 0,
            field: Vec::new(),
        })
    }
}

impl Sink for CsvSink {
    fn push(&mut self, row: Row) -> Result<(), Error> {
        self.field.clear();
        self.field.extend(row.iter().map(text));
        self.writer
            .write_record(&self.field)
            .map_err(|e| Error::Write(e.to_string()))?;
        self.rows += 1;
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<Written, Error> {
        let out = self
            .writer
            .into_inner()
            .map_err(|e| Error::Write(e.error().to_string()))?;
        written(self.rows, out)
    }
}

// ---- Parquet ----

/// Rows per record batch handed to the Parquet writer.
const BATCH: usize = 8192;
/// Rows per row group: bounds what the writer holds in memory.
const ROW_GROUP: usize = 65_536;

/// The Arrow type of a column type.
pub fn arrow_type(ty: Type) -> DataType {
    match ty {
        Type::Pseudonym | Type::Code => DataType::Utf8,
        Type::Enum(_) => DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
        Type::Integer => DataType::Int64,
        Type::Decimal => DataType::Float64,
        Type::Boolean => DataType::Boolean,
        Type::Date => DataType::Date32,
        Type::Instant => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        Type::Time => DataType::Time64(TimeUnit::Microsecond),
    }
}

fn days_since_epoch(d: Date) -> i32 {
    Date::constant(1970, 1, 1)
        .until(d)
        .map_or(0, |span| span.get_days())
}

fn micros_of_day(t: Time) -> i64 {
    (i64::from(t.hour()) * 3600 + i64::from(t.minute()) * 60 + i64::from(t.second())) * 1_000_000
        + i64::from(t.subsec_nanosecond()) / 1000
}

struct ParquetSink {
    schema: Arc<arrow_schema::Schema>,
    columns: Vec<Type>,
    buffered: Vec<Row>,
    writer: ArrowWriter<BufWriter<Hashed>>,
    rows: u64,
}

impl ParquetSink {
    fn create(schema: &Schema, path: &Path) -> Result<Self, Error> {
        let fields: Vec<Field> = schema
            .columns
            .iter()
            .map(|c| Field::new(&c.name, arrow_type(c.ty), c.nullable))
            .collect();
        let arrow = Arc::new(arrow_schema::Schema::new(fields));
        let file = Hashed::create(path)?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP))
            .build();
        let writer = ArrowWriter::try_new(
            BufWriter::with_capacity(1 << 16, file),
            arrow.clone(),
            Some(props),
        )
        .map_err(|e| Error::Write(e.to_string()))?;
        Ok(Self {
            schema: arrow,
            columns: schema.columns.iter().map(|c| c.ty).collect(),
            buffered: Vec::with_capacity(BATCH),
            writer,
            rows: 0,
        })
    }

    fn flush_batch(&mut self) -> Result<(), Error> {
        if self.buffered.is_empty() {
            return Ok(());
        }
        let n = self.buffered.len();
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for (i, ty) in self.columns.iter().enumerate() {
            let cells = self.buffered.iter().map(|r| &r[i]);
            let array: ArrayRef = match ty {
                Type::Pseudonym | Type::Code => {
                    let mut b = StringBuilder::with_capacity(n, n * 16);
                    for v in cells {
                        match v {
                            Value::Uuid(u) => b.append_value(u.hyphenated().to_string()),
                            Value::Code(s) => b.append_value(s),
                            _ => b.append_null(),
                        }
                    }
                    Arc::new(b.finish())
                }
                Type::Enum(_) => {
                    let mut b = StringDictionaryBuilder::<Int32Type>::new();
                    for v in cells {
                        match v {
                            Value::Enum(s) => {
                                b.append(s).map_err(|e| Error::Write(e.to_string()))?;
                            }
                            _ => b.append_null(),
                        }
                    }
                    Arc::new(b.finish())
                }
                Type::Integer => {
                    let mut b = Int64Builder::with_capacity(n);
                    for v in cells {
                        b.append_option(match v {
                            Value::Integer(x) => Some(*x),
                            _ => None,
                        });
                    }
                    Arc::new(b.finish())
                }
                Type::Decimal => {
                    let mut b = Float64Builder::with_capacity(n);
                    for v in cells {
                        b.append_option(match v {
                            Value::Decimal(x) => Some(*x),
                            _ => None,
                        });
                    }
                    Arc::new(b.finish())
                }
                Type::Boolean => {
                    let mut b = BooleanBuilder::with_capacity(n);
                    for v in cells {
                        b.append_option(match v {
                            Value::Boolean(x) => Some(*x),
                            _ => None,
                        });
                    }
                    Arc::new(b.finish())
                }
                Type::Date => {
                    let mut b = Date32Builder::with_capacity(n);
                    for v in cells {
                        b.append_option(match v {
                            Value::Date(d) => Some(days_since_epoch(*d)),
                            _ => None,
                        });
                    }
                    Arc::new(b.finish())
                }
                Type::Instant => {
                    let mut b = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
                    for v in cells {
                        b.append_option(match v {
                            Value::Instant(at, _) => Some(at.as_microsecond()),
                            _ => None,
                        });
                    }
                    Arc::new(b.finish())
                }
                Type::Time => {
                    let mut b = Time64MicrosecondBuilder::with_capacity(n);
                    for v in cells {
                        b.append_option(match v {
                            Value::Time(t) => Some(micros_of_day(*t)),
                            _ => None,
                        });
                    }
                    Arc::new(b.finish())
                }
            };
            arrays.push(array);
        }
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|e| Error::Write(e.to_string()))?;
        self.writer
            .write(&batch)
            .map_err(|e| Error::Write(e.to_string()))?;
        self.buffered.clear();
        Ok(())
    }
}

impl Sink for ParquetSink {
    fn push(&mut self, row: Row) -> Result<(), Error> {
        self.buffered.push(row);
        self.rows += 1;
        if self.buffered.len() >= BATCH {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<Written, Error> {
        self.flush_batch()?;
        let out = self
            .writer
            .into_inner()
            .map_err(|e| Error::Write(e.to_string()))?;
        written(self.rows, out)
    }
}
