//! W3C trace context: read from a partner's call, written into events.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The caller's trace context from gRPC metadata (`traceparent`,
/// `tracestate`); an empty context when there is none or it is malformed.
pub fn remote_parent(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&Headers(headers))
}

/// Collects the `traceparent` an injection writes. A partner's
/// `tracestate` is vendor data of any length; the immutable log is not the
/// place for it.
#[derive(Default)]
struct Traceparent(Option<String>);

impl Injector for Traceparent {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

/// The W3C `traceparent` of the current span, as stored in event metadata,
/// if tracing is on and the span is part of a sampled trace (an unsampled
/// one leads nowhere). `None` costs one lookup when tracing is off.
pub fn current_traceparent() -> Option<String> {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_sampled() {
        return None;
    }
    let mut out = Traceparent::default();
    TraceContextPropagator::new().inject_context(&cx, &mut out);
    out.0
}

/// True when `span` belongs to a trace that is being recorded.
pub fn is_sampled(span: &tracing::Span) -> bool {
    !span.is_disabled() && span.context().span().span_context().is_sampled()
}

/// Links `span` to the trace of `from` (a group commit serves several
/// callers: it is the child of one and linked to the others).
pub fn link_to(span: &tracing::Span, from: &tracing::Span) {
    let cx = from.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.add_link(sc);
    }
}
