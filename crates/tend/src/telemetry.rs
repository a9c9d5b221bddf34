//! Process-wide OpenTelemetry set-up from the standard `OTEL_*`
//! environment variables. Off unless asked for: with none of them set, no
//! provider is installed and every instrument and span is a no-op.
//!
//! - Traces go over OTLP/gRPC when `OTEL_TRACES_EXPORTER=otlp`, or when it
//!   is unset and an OTLP endpoint is (`OTEL_EXPORTER_OTLP_ENDPOINT`,
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`).
//! - Metrics go over OTLP/gRPC and/or to a Prometheus scrape endpoint by
//!   `OTEL_METRICS_EXPORTER` (`otlp`, `prometheus`, both comma-separated),
//!   or over OTLP when it is unset and an endpoint is. The scrape endpoint
//!   listens on `OTEL_EXPORTER_PROMETHEUS_HOST`:`OTEL_EXPORTER_PROMETHEUS_PORT`
//!   (default `localhost:9464`).
//! - The exporters themselves read the rest: endpoints, headers, timeouts,
//!   `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, `OTEL_METRIC_EXPORT_INTERVAL`,
//!   `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`.

use std::net::SocketAddr;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tend_telemetry::prometheus::PrometheusReader;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// What the environment asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Settings {
    pub traces: bool,
    pub metrics_otlp: bool,
    /// Where to serve `/metrics`, if anywhere.
    pub prometheus: Option<String>,
}

impl Settings {
    /// Reads the settings from `var` (the environment, or a test's map).
    pub(crate) fn from(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let set = |name: &str| var(name).is_some_and(|v| !v.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(Self::default());
        }
        for name in [
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        ] {
            if let Some(p) = var(name).filter(|p| !p.trim().is_empty() && p.trim() != "grpc") {
                return Err(format!(
                    "{name}={p:?}: Tend exports OTLP over gRPC only; set it to \"grpc\" \
                     (collectors take gRPC on port 4317)"
                )
                .into());
            }
        }
        let endpoint = set("OTEL_EXPORTER_OTLP_ENDPOINT");
        let exporters = |name: &str, allowed: &[&str]| -> Result<Option<Vec<String>>> {
            let Some(value) = var(name).filter(|v| !v.trim().is_empty()) else {
                return Ok(None);
            };
            let list: Vec<String> = value
                .split(',')
                .map(|v| v.trim().to_ascii_lowercase())
                .filter(|v| !v.is_empty())
                .collect();
            for v in &list {
                if !allowed.contains(&v.as_str()) {
                    return Err(format!(
                        "{name}: {v:?} is not supported; use {}",
                        allowed.join(", ")
                    )
                    .into());
                }
            }
            Ok(Some(list))
        };
        let traces = match exporters("OTEL_TRACES_EXPORTER", &["otlp", "none"])? {
            Some(list) => list.iter().any(|v| v == "otlp"),
            None => endpoint || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        };
        let (metrics_otlp, prometheus) =
            match exporters("OTEL_METRICS_EXPORTER", &["otlp", "prometheus", "none"])? {
                Some(list) => (
                    list.iter().any(|v| v == "otlp"),
                    list.iter().any(|v| v == "prometheus"),
                ),
                None => (
                    endpoint || set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"),
                    false,
                ),
            };
        let prometheus = prometheus.then(|| {
            let host = var("OTEL_EXPORTER_PROMETHEUS_HOST")
                .filter(|h| !h.trim().is_empty())
                .unwrap_or_else(|| "localhost".into());
            let port = var("OTEL_EXPORTER_PROMETHEUS_PORT")
                .filter(|p| !p.trim().is_empty())
                .unwrap_or_else(|| "9464".into());
            if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            }
        });
        Ok(Self {
            traces,
            metrics_otlp,
            prometheus,
        })
    }
}

/// The installed providers; [`Telemetry::shutdown`] flushes what is
/// buffered.
#[derive(Debug, Default)]
pub(crate) struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
    /// The scrape endpoint's reader, when one was asked for.
    pub prometheus: Option<(String, PrometheusReader)>,
}

impl Telemetry {
    /// Installs the providers the settings ask for. Must run inside the
    /// Tokio runtime (the gRPC exporters live on it) and before anything
    /// records.
    pub(crate) fn install(settings: &Settings) -> Result<(Self, Option<SdkTracer>)> {
        let mut telemetry = Self::default();
        if !settings.traces && !settings.metrics_otlp && settings.prometheus.is_none() {
            return Ok((telemetry, None));
        }
        let resource = resource();
        let mut tracer = None;
        if settings.traces {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()
                .map_err(|e| format!("cannot set up the OTLP trace exporter: {e}"))?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource.clone())
                .build();
            tracer = Some(provider.tracer("tend"));
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            opentelemetry::global::set_tracer_provider(provider.clone());
            tend_telemetry::enable_tracing();
            telemetry.tracer_provider = Some(provider);
        }
        if settings.metrics_otlp || settings.prometheus.is_some() {
            let mut builder = SdkMeterProvider::builder().with_resource(resource);
            if settings.metrics_otlp {
                let exporter = opentelemetry_otlp::MetricExporter::builder()
                    .with_tonic()
                    .build()
                    .map_err(|e| format!("cannot set up the OTLP metric exporter: {e}"))?;
                builder = builder.with_periodic_exporter(exporter);
            }
            if let Some(addr) = &settings.prometheus {
                let (reader, exporter) = PrometheusReader::new()
                    .map_err(|e| format!("cannot set up the Prometheus endpoint: {e}"))?;
                builder = builder.with_reader(exporter);
                telemetry.prometheus = Some((addr.clone(), reader));
            }
            let provider = builder.build();
            opentelemetry::global::set_meter_provider(provider.clone());
            telemetry.meter_provider = Some(provider);
        }
        Ok((telemetry, tracer))
    }

    pub(crate) fn metrics_enabled(&self) -> bool {
        self.meter_provider.is_some()
    }

    /// Exports what is buffered and stops the exporters, waiting at most
    /// a few seconds each for an unreachable collector.
    pub(crate) fn shutdown(self) {
        if let Some(provider) = self.tracer_provider
            && let Err(e) = provider.shutdown_with_timeout(EXPORT_AT_EXIT)
        {
            tracing::warn!(error = %e, "traces not all exported at shutdown");
        }
        if let Some(provider) = self.meter_provider
            && let Err(e) = provider.shutdown_with_timeout(EXPORT_AT_EXIT)
        {
            tracing::warn!(error = %e, "metrics not all exported at shutdown");
        }
    }
}

/// How long the last export at exit may take, per signal.
const EXPORT_AT_EXIT: std::time::Duration = std::time::Duration::from_secs(3);

fn resource() -> Resource {
    let mut builder = Resource::builder().with_attributes([
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        // Tells replicas apart in traces and metrics.
        KeyValue::new("service.instance.id", uuid::Uuid::new_v4().to_string()),
    ]);
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    if !named {
        builder = builder.with_service_name("tend");
    }
    builder.build()
}

/// Resolves the scrape endpoint's address (a host name such as `localhost`
/// included).
pub(crate) async fn prometheus_addr(spec: &str) -> Result<SocketAddr> {
    tokio::net::lookup_host(spec)
        .await
        .map_err(|e| format!("OTEL_EXPORTER_PROMETHEUS_HOST/PORT {spec:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("OTEL_EXPORTER_PROMETHEUS_HOST/PORT {spec:?}: no address").into())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from(|k| map.get(k).cloned())
    }

    #[test]
    fn off_unless_asked_for() {
        assert_eq!(settings(&[]).unwrap(), Settings::default());
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")]).unwrap();
        assert!(s.traces && s.metrics_otlp && s.prometheus.is_none());
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_SDK_DISABLED", "true"),
        ])
        .unwrap();
        assert_eq!(s, Settings::default());
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_METRICS_EXPORTER", "prometheus"),
            ("OTEL_EXPORTER_PROMETHEUS_HOST", "0.0.0.0"),
        ])
        .unwrap();
        assert!(!s.traces && !s.metrics_otlp);
        assert_eq!(s.prometheus.as_deref(), Some("0.0.0.0:9464"));
        let s = settings(&[("OTEL_METRICS_EXPORTER", "otlp, prometheus")]).unwrap();
        assert!(s.metrics_otlp && s.prometheus.as_deref() == Some("localhost:9464"));
        let s = settings(&[
            ("OTEL_METRICS_EXPORTER", "prometheus"),
            ("OTEL_EXPORTER_PROMETHEUS_HOST", "::1"),
            ("OTEL_EXPORTER_PROMETHEUS_PORT", "9000"),
        ])
        .unwrap();
        assert_eq!(s.prometheus.as_deref(), Some("[::1]:9000"));
    }

    #[test]
    fn what_is_not_built_in_is_refused_by_name() {
        let e = settings(&[("OTEL_TRACES_EXPORTER", "zipkin")]).unwrap_err();
        assert!(e.to_string().contains("OTEL_TRACES_EXPORTER"), "{e}");
        let e = settings(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]).unwrap_err();
        assert!(e.to_string().contains("gRPC only"), "{e}");
        assert!(settings(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).is_ok());
    }
}
