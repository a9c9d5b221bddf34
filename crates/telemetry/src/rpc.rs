//! A tower layer around the gRPC server: one span and one duration per
//! call, by method and status code, the span continuing the caller's trace.
//!
//! A unary call ends with its response; a streaming call ends with its
//! trailers (or when the client goes away), so a subscription's duration
//! is how long it stayed open.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use opentelemetry::KeyValue;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::instruments;

/// Traces (when `trace` is on) and measures every call.
#[derive(Debug, Clone)]
pub struct RpcLayer {
    trace: bool,
    methods: Arc<HashSet<&'static str>>,
}

impl RpcLayer {
    /// `trace`: open a span per call; off, calls are only measured.
    /// `methods`: every `package.Service/Method` served.
    pub fn new(trace: bool, methods: impl IntoIterator<Item = String>) -> Self {
        // Leaked once at start-up: attribute values then cost no
        // allocation per call.
        let methods = methods
            .into_iter()
            .map(|m| &*Box::leak(m.into_boxed_str()))
            .collect();
        Self {
            trace,
            methods: Arc::new(methods),
        }
    }
}

impl<S> tower_layer::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            trace: self.trace,
            methods: self.methods.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RpcService<S> {
    inner: S,
    trace: bool,
    methods: Arc<HashSet<&'static str>>,
}

/// A call in flight: what is recorded when it ends.
#[derive(Debug)]
struct Call {
    method: &'static str,
    started: Instant,
    span: tracing::Span,
}

impl Call {
    fn finish(self, code: i32) {
        let name = code_name(code);
        instruments().rpc_duration.record(
            self.started.elapsed().as_secs_f64(),
            &[
                KeyValue::new("rpc.system.name", "grpc"),
                KeyValue::new("rpc.method", self.method),
                KeyValue::new("rpc.response.status_code", name),
            ],
        );
        self.span.record("rpc.response.status_code", name);
        if is_server_error(code) {
            self.span.record("otel.status_code", "ERROR");
        }
    }
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for RpcService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<RpcBody<ResBody>>;
    type Error = S::Error;
    type Future = RpcFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = method_name(&self.methods, request.uri().path());
        let span = if self.trace {
            let span = tracing::info_span!(
                "rpc",
                otel.name = method,
                otel.kind = "server",
                rpc.system.name = "grpc",
                rpc.method = method,
                rpc.response.status_code = Empty,
                otel.status_code = Empty,
            );
            // A malformed or absent traceparent starts a new trace.
            let _ = span.set_parent(crate::remote_parent(request.headers()));
            span
        } else {
            tracing::Span::none()
        };
        let inner = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        RpcFuture {
            inner,
            call: Some(Call {
                method,
                started: Instant::now(),
                span,
            }),
        }
    }
}

pin_project_lite::pin_project! {
    #[derive(Debug)]
    pub struct RpcFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }

    impl<F> PinnedDrop for RpcFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before it answered: the client went away, or its
            // deadline passed (tonic then answers CANCELLED itself).
            if let Some(call) = this.project().call.take() {
                call.finish(CANCELLED);
            }
        }
    }
}

impl<F, ResBody, E> Future for RpcFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<RpcBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let polled = match this.call.as_ref() {
            Some(call) => {
                let _entered = call.span.enter();
                ready!(this.inner.poll(cx))
            }
            None => ready!(this.inner.poll(cx)),
        };
        let call = this.call.take();
        Poll::Ready(match polled {
            Ok(response) => {
                // A trailers-only response (every error) carries its status
                // in the headers; otherwise it comes in the trailers.
                let code = grpc_status(response.headers());
                let call = match (call, code) {
                    (Some(call), Some(code)) => {
                        call.finish(code);
                        None
                    }
                    (call, _) => call,
                };
                Ok(response.map(|inner| RpcBody { inner, call }))
            }
            Err(e) => {
                if let Some(call) = call {
                    call.finish(UNKNOWN);
                }
                Err(e)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// The response body, watched for the trailers that end the call.
    #[derive(Debug)]
    pub struct RpcBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }

    impl<B> PinnedDrop for RpcBody<B> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before its trailers: the client went away.
            if let Some(call) = this.project().call.take() {
                call.finish(CANCELLED);
            }
        }
    }
}

impl<B: Body> Body for RpcBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = match this.call.as_ref() {
            Some(call) => {
                // A streaming handler's work happens as the body is polled.
                let _entered = call.span.enter();
                ready!(this.inner.poll_frame(cx))
            }
            None => ready!(this.inner.poll_frame(cx)),
        };
        match &polled {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(call) = this.call.take()
                {
                    call.finish(grpc_status(trailers).unwrap_or(UNKNOWN));
                }
            }
            Some(Err(_)) => {
                if let Some(call) = this.call.take() {
                    call.finish(UNKNOWN);
                }
            }
            None => {
                if let Some(call) = this.call.take() {
                    call.finish(UNKNOWN);
                }
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

const CANCELLED: i32 = 1;
const UNKNOWN: i32 = 2;

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The method as `package.Service/Method` when the server serves it;
/// anything else is one bucket, so that a scanner probing paths cannot
/// grow the metric without bound.
fn method_name(known: &HashSet<&'static str>, path: &str) -> &'static str {
    path.strip_prefix('/')
        .and_then(|p| known.get(p).copied())
        .unwrap_or("_OTHER")
}

/// Codes that mean the server failed, not the caller (OpenTelemetry's
/// gRPC conventions for server spans).
fn is_server_error(code: i32) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_the_services_share_one_name() {
        let known = HashSet::from(["tend.practice.v1.PracticeLogService/LogPractice"]);
        assert_eq!(
            method_name(&known, "/tend.practice.v1.PracticeLogService/LogPractice"),
            "tend.practice.v1.PracticeLogService/LogPractice"
        );
        assert_eq!(
            method_name(&known, "/tend.practice.v1.PracticeLogService/Nope"),
            "_OTHER"
        );
        assert_eq!(method_name(&known, "/wp-login.php"), "_OTHER");
        assert_eq!(method_name(&known, ""), "_OTHER");
    }

    #[test]
    fn status_codes_have_their_names() {
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(10), "ABORTED");
        assert_eq!(code_name(16), "UNAUTHENTICATED");
        assert_eq!(code_name(99), "UNKNOWN");
        assert!(is_server_error(13) && !is_server_error(3) && !is_server_error(10));
    }
}
