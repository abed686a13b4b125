//! Plugin logging: stderr or the configured `logFile`, never stdout (stdout is the CNI result).

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

use tracing::level_filters::LevelFilter;

/// Installs the subscriber. Logging must never make the plugin fail, so a log file that cannot be
/// opened falls back to stderr.
pub fn init(log_file: Option<&Path>, level: Option<&str>) {
    let level = level.and_then(|l| l.parse::<LevelFilter>().ok()).unwrap_or(LevelFilter::WARN);
    let builder = tracing_subscriber::fmt().with_max_level(level).with_target(false).with_ansi(false);
    let file = log_file.and_then(|p| OpenOptions::new().create(true).append(true).open(p).ok());
    let _ = match file {
        Some(file) => builder.with_writer(Mutex::new(file)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}
