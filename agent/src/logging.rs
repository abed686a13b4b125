//! Logging to stderr, as text or JSON lines.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("invalid --log-level {0:?}: {1}")]
    Filter(String, String),
    #[error("cannot install the logger: {0}")]
    Install(String),
}

pub fn init(format: LogFormat, level: &str) -> Result<(), LoggingError> {
    let filter = EnvFilter::try_new(level).map_err(|e| LoggingError::Filter(level.to_string(), e.to_string()))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|e| LoggingError::Install(e.to_string()))
}
