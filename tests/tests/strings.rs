//! Fuzz-style: every string field of every request of every Tend RPC (and
//! of the messages one level inside it), sent to the real server with a
//! NUL and with an escape character in it, is refused with
//! INVALID_ARGUMENT naming the field, before anything is read or written.
//! The requests are built from the descriptors, so a new RPC or field is
//! covered without touching this test.

use std::marker::PhantomData;

use bytes::{Buf, BufMut};
use prost::Message;
// Repeated strings encode as one element each, like a single string.
use prost_types::field_descriptor_proto::Type;
use prost_types::{DescriptorProto, FileDescriptorSet, MethodDescriptorProto};
use tend_testkit::fresh_database;
use tend_tests::{TendProcess, channel};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

const TOKEN: &str = "tend_test_token_for_strings";

/// Raw protobuf bytes both ways.
#[derive(Debug, Default, Clone)]
struct Raw(PhantomData<()>);

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw::default()
    }
    fn decoder(&mut self) -> Raw {
        Raw::default()
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field `number` holding `bytes`.
fn field(number: i32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(((number as u64) << 3) | 2, &mut out);
    varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

/// One probe: the request bytes, and the field path it must be refused on.
struct Probe {
    bytes: Vec<u8>,
    path: String,
}

/// Every string field of `message`, and of the Tend messages one level in.
fn probes(set: &FileDescriptorSet, message: &DescriptorProto, value: &str) -> Vec<Probe> {
    let mut out = Vec::new();
    for f in &message.field {
        match f.r#type() {
            Type::String => out.push(Probe {
                bytes: field(f.number(), value.as_bytes()),
                path: f.name().to_owned(),
            }),
            Type::Message if f.type_name().starts_with(".tend.") => {
                let Some(inner) = find(set, f.type_name()) else {
                    continue;
                };
                for g in inner.field.iter().filter(|g| g.r#type() == Type::String) {
                    let inner_bytes = field(g.number(), value.as_bytes());
                    out.push(Probe {
                        bytes: field(f.number(), &inner_bytes),
                        path: format!("{}.{}", f.name(), g.name()),
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// The message named `.pkg.Name` or `.pkg.Outer.Inner`.
fn find<'a>(set: &'a FileDescriptorSet, name: &str) -> Option<&'a DescriptorProto> {
    let name = name.trim_start_matches('.');
    for file in &set.file {
        let Some(rest) = name.strip_prefix(&format!("{}.", file.package())) else {
            continue;
        };
        let mut parts = rest.split('.');
        let first = parts.next()?;
        let mut message = file.message_type.iter().find(|m| m.name() == first)?;
        for part in parts {
            message = message.nested_type.iter().find(|m| m.name() == part)?;
        }
        return Some(message);
    }
    None
}

async fn call(
    channel: &tonic::transport::Channel,
    path: &str,
    method: &MethodDescriptorProto,
    bytes: Vec<u8>,
) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    let path: http::uri::PathAndQuery = path.parse().unwrap();
    let request = tend_tests::bearer(TOKEN, bytes);
    if method.server_streaming() {
        let mut stream = grpc
            .server_streaming(request, path, Raw::default())
            .await?
            .into_inner();
        stream.message().await?;
    } else {
        grpc.unary(request, path, Raw::default()).await?;
    }
    Ok(())
}

#[tokio::test]
async fn every_string_field_of_every_rpc_refuses_nul_and_escape_characters() {
    let db = fresh_database().await;
    let tokens = format!("strings={}", tend_auth::TokenHash::of(TOKEN));
    let server = TendProcess::start(&[
        ("TEND_DATABASE_URL", db.url.as_str()),
        ("TEND_AUTH_TOKENS", tokens.as_str()),
    ]);
    let channel = channel(&server).await;
    let set = FileDescriptorSet::decode(tend_api::FILE_DESCRIPTOR_SET).unwrap();
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let count = || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&pool)
            .await
            .unwrap();
        n
    };
    let before = count().await;

    let mut checked = 0;
    let mut methods = 0;
    for file in set.file.iter().filter(|f| f.package().starts_with("tend.")) {
        for service in &file.service {
            for method in &service.method {
                methods += 1;
                let input = find(&set, method.input_type()).expect("input type");
                let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                for value in ["bad\0value", "bad\u{1b}[2Jvalue"] {
                    for probe in probes(&set, input, value) {
                        let status = call(&channel, &path, method, probe.bytes)
                            .await
                            .expect_err(&format!("{path} accepted {value:?} in {}", probe.path));
                        assert_eq!(
                            status.code(),
                            Code::InvalidArgument,
                            "{path} {}: {status:?}",
                            probe.path
                        );
                        assert!(
                            status
                                .message()
                                .starts_with(&format!("{}: must not contain", probe.path)),
                            "{path}: {:?}",
                            status.message()
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    // Every service and over a hundred and fifty probes, not a vacuous pass.
    assert!(methods >= 40, "{methods} methods");
    assert!(checked >= 160, "{checked} probes");

    // A message that is not protobuf at all is the caller's fault too.
    let method = MethodDescriptorProto::default();
    let status = call(
        &channel,
        "/tend.scheduler.v1.ProtocolSchedulerService/GetEnrollment",
        &method,
        vec![0x0a, 0xff],
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // Nothing of it reached the log.
    assert_eq!(count().await, before);
}
