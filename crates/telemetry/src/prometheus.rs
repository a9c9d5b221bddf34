//! The Prometheus scrape endpoint: the meter provider's metrics read on
//! demand and written in the Prometheus text format (0.0.4), names
//! converted the way OpenTelemetry specifies (`rpc.server.call.duration`
//! in seconds becomes `rpc_server_call_duration_seconds`, counters end in
//! `_total`).
//!
//! Written here rather than taken from `opentelemetry-prometheus`, which is
//! discontinued and depends on an unmaintained protobuf crate.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write;
use std::sync::{Arc, Weak};
use std::time::Duration;

use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{InstrumentKind, ManualReader, Pipeline, Temporality};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A reader the meter provider owns one handle of, and the endpoint the
/// other.
#[derive(Debug, Clone, Default)]
pub struct PrometheusReader(Arc<ManualReader>);

impl MetricReader for PrometheusReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }

    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn temporality(&self, _kind: InstrumentKind) -> Temporality {
        // Prometheus counters and histograms are cumulative.
        Temporality::Cumulative
    }
}

impl PrometheusReader {
    /// Every metric now, in the text format.
    pub fn render(&self) -> Result<String, String> {
        let mut rm = ResourceMetrics::default();
        self.0.collect(&mut rm).map_err(|e| e.to_string())?;
        Ok(render(&rm))
    }
}

#[derive(Default)]
struct Family {
    kind: &'static str,
    help: String,
    samples: String,
}

/// Writes `rm` in the Prometheus text format. Families are merged by name
/// and sorted, so the output is stable.
pub fn render(rm: &ResourceMetrics) -> String {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for scope in rm.scope_metrics() {
        for metric in scope.metrics() {
            let (name, kind) = match metric.data() {
                AggregatedMetrics::F64(d) => shape(metric.name(), metric.unit(), d),
                AggregatedMetrics::U64(d) => shape(metric.name(), metric.unit(), d),
                AggregatedMetrics::I64(d) => shape(metric.name(), metric.unit(), d),
            };
            let family = families.entry(name.clone()).or_default();
            family.kind = kind;
            if family.help.is_empty() {
                family.help = metric
                    .description()
                    .replace('\\', "\\\\")
                    .replace('\n', "\\n");
            }
            let out = &mut family.samples;
            match metric.data() {
                AggregatedMetrics::F64(d) => samples(out, &name, d),
                AggregatedMetrics::U64(d) => samples(out, &name, d),
                AggregatedMetrics::I64(d) => samples(out, &name, d),
            }
        }
    }
    let mut text = String::new();
    for (name, family) in families {
        if !family.help.is_empty() {
            let _ = writeln!(text, "# HELP {name} {}", family.help);
        }
        let _ = writeln!(text, "# TYPE {name} {}", family.kind);
        text.push_str(&family.samples);
    }
    text
}

trait Number: Copy {
    fn text(self) -> String;
}

impl Number for u64 {
    fn text(self) -> String {
        self.to_string()
    }
}

impl Number for i64 {
    fn text(self) -> String {
        self.to_string()
    }
}

impl Number for f64 {
    fn text(self) -> String {
        if self.is_nan() {
            "NaN".into()
        } else if self.is_infinite() {
            if self > 0.0 { "+Inf" } else { "-Inf" }.into()
        } else {
            self.to_string()
        }
    }
}

/// The Prometheus name and type of a metric.
fn shape<T>(name: &str, unit: &str, data: &MetricData<T>) -> (String, &'static str) {
    let (kind, counter, gauge) = match data {
        MetricData::Sum(s) if s.is_monotonic() => ("counter", true, false),
        MetricData::Sum(_) | MetricData::Gauge(_) => ("gauge", false, true),
        MetricData::Histogram(_) | MetricData::ExponentialHistogram(_) => {
            ("histogram", false, false)
        }
    };
    let mut out = sanitize(name);
    let suffix = match unit {
        "" => None,
        u if u.starts_with('{') => None,
        "s" => Some("seconds".to_owned()),
        "ms" => Some("milliseconds".to_owned()),
        "By" => Some("bytes".to_owned()),
        "1" if gauge => Some("ratio".to_owned()),
        "1" => None,
        u => Some(sanitize(u)),
    };
    if let Some(suffix) = suffix
        && !out.ends_with(&format!("_{suffix}"))
    {
        out.push('_');
        out.push_str(&suffix);
    }
    if counter && !out.ends_with("_total") {
        out.push_str("_total");
    }
    (out, kind)
}

fn samples<T: Number>(out: &mut String, name: &str, data: &MetricData<T>) {
    match data {
        MetricData::Sum(s) => points(
            out,
            name,
            s.data_points().map(|p| (p.attributes(), p.value())),
        ),
        MetricData::Gauge(g) => points(
            out,
            name,
            g.data_points().map(|p| (p.attributes(), p.value())),
        ),
        MetricData::Histogram(h) => {
            for p in h.data_points() {
                let mut cumulative = 0u64;
                let counts: Vec<u64> = p.bucket_counts().collect();
                for (i, bound) in p.bounds().enumerate() {
                    cumulative += counts.get(i).copied().unwrap_or(0);
                    let le = labels(p.attributes(), Some(&bound.text()));
                    line(out, name, "_bucket", &le, cumulative.to_string());
                }
                let le = labels(p.attributes(), Some("+Inf"));
                line(out, name, "_bucket", &le, p.count().to_string());
                let plain = labels(p.attributes(), None);
                line(out, name, "_sum", &plain, p.sum().text());
                line(out, name, "_count", &plain, p.count().to_string());
            }
        }
        // Not used by Tend (no instrument asks for one).
        MetricData::ExponentialHistogram(_) => {}
    }
}

fn points<'a, T: Number, A: Iterator<Item = &'a KeyValue>>(
    out: &mut String,
    name: &str,
    points: impl Iterator<Item = (A, T)>,
) {
    for (attributes, value) in points {
        line(out, name, "", &labels(attributes, None), value.text());
    }
}

fn line(out: &mut String, name: &str, suffix: &str, labels: &str, value: String) {
    let _ = writeln!(out, "{name}{suffix}{labels} {value}");
}

fn labels<'a>(attributes: impl Iterator<Item = &'a KeyValue>, le: Option<&str>) -> String {
    let mut pairs: Vec<(String, String)> = attributes
        .map(|kv| (sanitize(kv.key.as_str()), value_text(&kv.value)))
        .collect();
    pairs.sort();
    if let Some(le) = le {
        pairs.push(("le".into(), le.into()));
    }
    if pairs.is_empty() {
        return String::new();
    }
    let mut s = String::from("{");
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let v = v
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(s, "{k}=\"{v}\"");
    }
    s.push('}');
    s
}

fn value_text(v: &Value) -> String {
    v.as_str().into_owned()
}

/// A metric or label name: `[a-zA-Z_:][a-zA-Z0-9_:]*`, runs of anything
/// else as one `_`.
fn sanitize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        let c = if c.is_ascii_alphanumeric() || c == ':' {
            c
        } else {
            '_'
        };
        if c == '_' && out.ends_with('_') {
            continue;
        }
        out.push(c);
    }
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// Scrapers connected at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 32;

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, reader: PrometheusReader, shutdown: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin.
                tracing::warn!(error = %e, "metrics endpoint cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let reader = reader.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| {
                let reader = reader.clone();
                async move { Ok::<_, Infallible>(respond(&reader, &request)) }
            });
            // A client that sends no request in time is dropped.
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

fn respond<B>(reader: &PrometheusReader, request: &http::Request<B>) -> http::Response<String> {
    let status_only = |status: http::StatusCode, text: &str| {
        let mut response = http::Response::new(text.to_owned());
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/metrics" {
        return status_only(http::StatusCode::NOT_FOUND, "not found: try /metrics\n");
    }
    if request.method() != http::Method::GET && request.method() != http::Method::HEAD {
        return status_only(http::StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match reader.render() {
        Ok(text) => {
            let mut response = http::Response::new(text);
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        Err(e) => status_only(
            http::StatusCode::SERVICE_UNAVAILABLE,
            &format!("metrics unavailable: {e}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::metrics::MeterProvider;
    use opentelemetry_sdk::metrics::SdkMeterProvider;

    use super::*;

    #[test]
    fn names_follow_the_opentelemetry_conversion() {
        let reader = PrometheusReader::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(reader.clone())
            .build();
        let meter = provider.meter("test");
        let h = meter
            .f64_histogram("rpc.server.call.duration")
            .with_unit("s")
            .with_boundaries(vec![0.1, 1.0])
            .build();
        h.record(0.05, &[KeyValue::new("rpc.method", "a.B/C")]);
        h.record(0.5, &[KeyValue::new("rpc.method", "a.B/C")]);
        h.record(5.0, &[KeyValue::new("rpc.method", "a.B/C")]);
        let c = meter
            .u64_counter("tend.events")
            .with_unit("{event}")
            .build();
        c.add(3, &[KeyValue::new("tend.outcome", "say \"hi\"\n")]);
        let g = meter.i64_up_down_counter("tend.open").build();
        g.add(2, &[]);
        g.add(-1, &[]);
        let text = reader.render().expect("collects");
        for expected in [
            "# TYPE rpc_server_call_duration_seconds histogram",
            "rpc_server_call_duration_seconds_bucket{rpc_method=\"a.B/C\",le=\"0.1\"} 1",
            "rpc_server_call_duration_seconds_bucket{rpc_method=\"a.B/C\",le=\"1\"} 2",
            "rpc_server_call_duration_seconds_bucket{rpc_method=\"a.B/C\",le=\"+Inf\"} 3",
            "rpc_server_call_duration_seconds_sum{rpc_method=\"a.B/C\"} 5.55",
            "rpc_server_call_duration_seconds_count{rpc_method=\"a.B/C\"} 3",
            "# TYPE tend_events_total counter",
            "tend_events_total{tend_outcome=\"say \\\"hi\\\"\\n\"} 3",
            "# TYPE tend_open gauge",
            "tend_open 1",
        ] {
            assert!(text.contains(expected), "{expected:?} missing in:\n{text}");
        }
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(
            sanitize("db.client.connection.count"),
            "db_client_connection_count"
        );
        assert_eq!(sanitize("a..b-c"), "a_b_c");
        assert_eq!(sanitize("9x"), "_9x");
    }
}
