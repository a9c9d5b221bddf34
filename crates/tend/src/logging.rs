use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogOptions};

/// Structured logs on standard error: JSON for machines, text for people.
pub fn init(options: &LogOptions) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let filter = EnvFilter::try_new(&options.log)
        .map_err(|e| format!("TEND_LOG {:?} is not a valid filter: {e}", options.log))?;
    let json = match options.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).try_init()?;
    } else {
        builder.try_init()?;
    }
    Ok(())
}
