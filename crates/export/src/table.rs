//! Columns, their types and the values in them: what the writers, the
//! codebook and the row builders share.

use jiff::Timestamp;
use jiff::civil::{Date, Time};
use uuid::Uuid;

/// A column's type, as every format spells it (see `docs/exports.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// A recipient's pseudonym: a UUID, the same across this recipient's
    /// exports and streams, and unlinkable to anyone else's.
    Pseudonym,
    /// A short code from Tend's configuration (an activity or instrument
    /// key), never free text.
    Code,
    /// One of the listed values.
    Enum(&'static [(&'static str, &'static str)]),
    Integer,
    Decimal,
    Boolean,
    Date,
    /// An instant, written with the local offset in CSV and as UTC in
    /// Parquet.
    Instant,
    /// A local time of day.
    Time,
}

impl Type {
    /// The name the codebook gives it.
    pub fn name(self) -> &'static str {
        match self {
            Type::Pseudonym => "pseudonym",
            Type::Code => "code",
            Type::Enum(_) => "enum",
            Type::Integer => "integer",
            Type::Decimal => "decimal",
            Type::Boolean => "boolean",
            Type::Date => "date",
            Type::Instant => "instant",
            Type::Time => "time",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub ty: Type,
    /// E.g. `minutes`, `days`; empty when the column has none.
    pub unit: &'static str,
    pub meaning: String,
    /// Whether the column may be empty (and when, in `meaning`).
    pub nullable: bool,
}

impl Column {
    pub fn new(name: &str, ty: Type, unit: &'static str, meaning: &str) -> Self {
        Self {
            name: name.to_owned(),
            ty,
            unit,
            meaning: meaning.to_owned(),
            nullable: false,
        }
    }

    pub fn nullable(mut self) -> Self {
        self.nullable = true;
        self
    }
}

/// One dataset: a file of rows with these columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    /// The file's name without its extension.
    pub name: String,
    pub meaning: String,
    pub columns: Vec<Column>,
}

/// One cell. `Null` is an empty CSV field and a Parquet null.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Uuid(Uuid),
    Code(String),
    Enum(&'static str),
    Integer(i64),
    Decimal(f64),
    Boolean(bool),
    Date(Date),
    /// The instant and the offset from UTC it is written with.
    Instant(Timestamp, i32),
    Time(Time),
}

impl Value {
    /// Whether this value may sit in a column of `ty`.
    pub fn fits(&self, ty: Type) -> bool {
        match (self, ty) {
            (Value::Null, _) => true,
            (Value::Uuid(_), Type::Pseudonym) => true,
            (Value::Code(_), Type::Code) => true,
            (Value::Enum(v), Type::Enum(values)) => values.iter().any(|(n, _)| n == v),
            (Value::Integer(_), Type::Integer) => true,
            (Value::Decimal(d), Type::Decimal) => d.is_finite(),
            (Value::Boolean(_), Type::Boolean) => true,
            (Value::Date(_), Type::Date) => true,
            (Value::Instant(..), Type::Instant) => true,
            (Value::Time(_), Type::Time) => true,
            _ => false,
        }
    }

    pub fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> Value) -> Value {
        v.map_or(Value::Null, f)
    }
}

pub type Row = Vec<Value>;

/// Where a dataset's rows go: a CSV or Parquet file.
pub trait Sink: Send {
    fn push(&mut self, row: Row) -> Result<(), crate::Error>;
    /// Writes what is buffered and closes the file; answers what it
    /// wrote.
    fn finish(self: Box<Self>) -> Result<Written, crate::Error>;
}

/// A finished file: its data rows, size and SHA-256 (lower-case hex),
/// taken as it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}
