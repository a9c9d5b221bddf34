//! The Prometheus scrape endpoint: the meter provider's metrics read on
//! demand by `opentelemetry-prometheus` and written in the Prometheus text
//! format (0.0.4), names converted the way OpenTelemetry specifies
//! (`rpc.server.call.duration` in seconds becomes
//! `rpc_server_call_duration_seconds`, counters end in `_total`).
//!
//! Scope labels and `target_info` are left out, so the series are exactly
//! those the dashboard and alert rules query. The exporter appends the unit
//! suffix and `_total` without looking at the name, so no instrument name
//! may end in one already (`tend.x.duration` in `s`, not
//! `tend.x.duration_seconds`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_prometheus::PrometheusExporter;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The endpoint's handle on the metrics; cheap to clone.
#[derive(Debug, Clone)]
pub struct PrometheusReader {
    registry: Registry,
}

impl PrometheusReader {
    /// The handle, and the reader to give the meter provider.
    pub fn new() -> Result<(Self, PrometheusExporter), String> {
        let registry = Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .scope_info_enabled(false)
            .without_target_info()
            .build()
            .map_err(|e| e.to_string())?;
        Ok((Self { registry }, exporter))
    }

    /// Every metric now, in the text format.
    pub fn render(&self) -> Result<String, String> {
        let families = self.registry.gather();
        // The server always has observed gauges (the pool, the head), so
        // nothing at all means the collection failed (the exporter logs
        // why): the scrape should fail too, not look healthy and empty.
        if families.is_empty() {
            return Err("the metrics collection returned nothing".into());
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut out)
            .map_err(|e| e.to_string())?;
        String::from_utf8(out).map_err(|e| e.to_string())
    }
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
    use opentelemetry::KeyValue;
    use opentelemetry::metrics::MeterProvider;
    use opentelemetry_sdk::metrics::SdkMeterProvider;

    use super::*;

    #[test]
    fn names_follow_the_opentelemetry_conversion() {
        let (reader, exporter) = PrometheusReader::new().unwrap();
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
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
}
