//! Strings in requests carry no control characters where they make no
//! sense: a NUL would reach PostgreSQL (which refuses it in text) and an
//! escape sequence would reach a clinician's screen. Every request the
//! server decodes is checked here, before any handler runs, so that each
//! service gets the same answer: INVALID_ARGUMENT naming the field.
//!
//! `build.rs` generates the walk over each message's string fields
//! (nested messages and oneofs included); this module holds the rule and
//! the codec that applies it.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::ProstEncoder;
use tonic_types::{ErrorDetails, StatusExt};

/// Fields a person types into, where line breaks and tabs belong. Every
/// other string (ids, references, zones, dates, tokens, keys) refuses all
/// control characters.
const FREE_TEXT: [&str; 5] = ["title", "name", "label", "source", "benchmark_source"];

/// Where a field sits in a request: `practice.kind`.
#[derive(Debug, Clone)]
pub struct At(String);

impl At {
    pub fn root() -> Self {
        Self(String::new())
    }

    pub fn join(&self, name: &str) -> Self {
        Self(self.field(name))
    }

    fn field(&self, name: &str) -> String {
        if self.0.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.0)
        }
    }
}

/// A string refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadString {
    pub field: String,
    pub reason: String,
}

/// The generated walk over a message's strings.
pub trait Strings {
    /// Checks every string of this message and the messages in it.
    fn check_fields(&self, at: &At) -> Result<(), BadString>;
    /// As `check_fields` for a request type (an RPC's input); nothing for
    /// the others, so that a client decoding answers checks nothing.
    fn check_request(&self) -> Result<(), BadString>;
}

/// Checks one string field.
pub fn check(at: &At, name: &str, value: &str) -> Result<(), BadString> {
    let free_text = FREE_TEXT.contains(&name);
    match refusal(value, free_text) {
        None => Ok(()),
        Some(reason) => Err(BadString {
            field: at.field(name),
            reason,
        }),
    }
}

/// Why `value` is refused, if it is.
pub fn refusal(value: &str, free_text: bool) -> Option<String> {
    let bad = value
        .chars()
        .find(|&c| c.is_control() && !(free_text && matches!(c, '\t' | '\n' | '\r')))?;
    Some(if bad == '\0' {
        "must not contain a NUL character".to_owned()
    } else {
        format!(
            "must not contain control characters (found U+{:04X})",
            u32::from(bad)
        )
    })
}

impl From<BadString> for Status {
    fn from(bad: BadString) -> Self {
        Status::with_error_details(
            Code::InvalidArgument,
            format!("{}: {}", bad.field, bad.reason),
            ErrorDetails::with_bad_request_violation(bad.field, bad.reason),
        )
    }
}

/// prost's codec, whose decoder also refuses bad strings in requests and
/// answers a message that is not protobuf with INVALID_ARGUMENT (prost's
/// says INTERNAL, which would blame the server).
#[derive(Debug, Clone, Copy)]
pub struct CheckedCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for CheckedCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for CheckedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Strings + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = CheckedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckedDecoder(PhantomData)
    }
}

/// See [`CheckedCodec`].
#[derive(Debug)]
pub struct CheckedDecoder<U>(PhantomData<U>);

impl<U: Message + Default + Strings> Decoder for CheckedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let message = U::decode(buf).map_err(|e| {
            Status::invalid_argument(format!("the message is not valid protobuf: {e}"))
        })?;
        message.check_request()?;
        Ok(Some(message))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_refuse_every_control_character() {
        assert_eq!(refusal("p-1", false), None);
        assert_eq!(
            refusal("p\0", false).unwrap(),
            "must not contain a NUL character"
        );
        assert_eq!(
            refusal("a\nb", false).unwrap(),
            "must not contain control characters (found U+000A)"
        );
        assert!(refusal("\u{1b}[31m", false).is_some());
        assert!(refusal("\u{85}", false).is_some());
        assert_eq!(refusal("Zürich – 東京", false), None);
    }

    #[test]
    fn free_text_keeps_line_breaks_and_tabs_but_not_nul() {
        assert_eq!(refusal("line one\nline two\tend\r\n", true), None);
        assert!(refusal("a\0b", true).is_some());
        assert!(refusal("bell\u{7}", true).is_some());
    }

    #[test]
    fn nested_fields_are_named_by_their_path() {
        let bad = check(&At::root().join("practice"), "kind", "x\0").unwrap_err();
        assert_eq!(bad.field, "practice.kind");
        let ok = check(&At::root(), "title", "two\nlines");
        assert_eq!(ok, Ok(()));
    }

    #[test]
    fn generated_checks_walk_into_messages_and_oneofs() {
        use crate::practice::v1 as pb;
        let request = pb::LogPracticeRequest {
            participant_ref: "p-1".into(),
            practice: Some(pb::PracticeDetails {
                kind: "soothing\u{0}touch".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let bad = request.check_request().unwrap_err();
        assert_eq!(bad.field, "practice.kind");
        // Answers are not checked.
        let reply = pb::LogPracticeResponse::default();
        assert_eq!(reply.check_request(), Ok(()));
    }
}
