use std::io::IsTerminal;

use opentelemetry_sdk::trace::SdkTracer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, LogOptions};

/// Structured logs on standard error: JSON for machines, text for people.
/// With a tracer, Tend's own spans (never log events) also go to
/// OpenTelemetry, whatever the log level: the two are filtered apart.
pub(crate) fn init(
    options: &LogOptions,
    tracer: Option<SdkTracer>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let filter = EnvFilter::try_new(&options.log)
        .map_err(|e| format!("TEND_LOG {:?} is not a valid filter: {e}", options.log))?;
    let json = match options.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if json {
        logs.json().flatten_event(true).with_filter(filter).boxed()
    } else {
        logs.with_filter(filter).boxed()
    };
    let traces = tracer.map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            // Source locations and thread names say nothing an operator
            // needs and cost bytes per span.
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_level(false)
            // Tend's spans only: libraries' (h2, tonic, sqlx) would bury
            // them, and log events never go (they may name a tenant, and
            // a trace id in an event would join them to a participant).
            .with_filter(filter_fn(|m| {
                m.is_span() && m.target().starts_with("tend") && *m.level() <= tracing::Level::INFO
            }))
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()?;
    Ok(())
}
