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

/// The W3C trace context of a span, as stored in event metadata: the
/// `traceparent` only. A partner's `tracestate` is vendor data of any
/// length; the log is immutable and is not the place for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: Option<String>,
}

impl Injector for TraceContext {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.traceparent = Some(value);
        }
    }
}

/// The trace context of the current span, if tracing is on and the span is
/// part of a sampled trace (an unsampled one leads nowhere). `None` costs
/// one lookup when tracing is off.
pub fn current_trace_context() -> Option<TraceContext> {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_sampled() {
        return None;
    }
    let mut out = TraceContext::default();
    TraceContextPropagator::new().inject_context(&cx, &mut out);
    out.traceparent.is_some().then_some(out)
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
