//! Plugin logging: stderr or the configured `logFile`, never stdout (stdout is the CNI result).

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

use tracing::level_filters::LevelFilter;

use crate::fsutil::open_regular;

/// Installs the subscriber. Logging must never make the plugin fail (nor hang it), so a log file
/// that cannot be opened, or is no regular file (a FIFO, /dev/stdout: the result's channel),
/// falls back to stderr.
pub fn init(log_file: Option<&Path>, level: Option<&str>) {
    let level = level.and_then(|l| l.parse::<LevelFilter>().ok()).unwrap_or(LevelFilter::WARN);
    let builder = tracing_subscriber::fmt().with_max_level(level).with_target(false).with_ansi(false);
    let file = log_file.and_then(|p| open_regular(p, OpenOptions::new().create(true).append(true)).ok());
    let _ = match file {
        Some(file) => builder.with_writer(Mutex::new(file)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}
