//! Logging to stderr, as text or JSON lines, and a limit for lines a flood can trigger.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::Hash;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

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

/// How often a line that a flood can trigger is logged at most, per kind.
pub const FLOOD_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Lets a log line through at most once per interval for each key (a reason, a kind of event).
/// For lines that anyone on the network, or any local process, can trigger once per packet or
/// connection: a flood must not flood the log. The lines held back are counted, and the next
/// one let through says how many there were.
#[derive(Debug)]
pub struct RateLimit<K> {
    every: Duration,
    keys: HashMap<K, Held>,
}

#[derive(Debug)]
struct Held {
    last: Instant,
    suppressed: u64,
}

impl<K: Eq + Hash> Default for RateLimit<K> {
    fn default() -> Self {
        RateLimit::new(FLOOD_LOG_INTERVAL)
    }
}

impl<K: Eq + Hash> RateLimit<K> {
    pub fn new(every: Duration) -> RateLimit<K> {
        RateLimit { every, keys: HashMap::new() }
    }

    /// Whether a line for `key` may be logged at `now`: `Some(n)` with the `n` lines of that key
    /// held back since the last one, or `None` to hold this one back too.
    pub fn admit(&mut self, key: K, now: Instant) -> Option<u64> {
        let held = match self.keys.entry(key) {
            Entry::Vacant(first) => {
                first.insert(Held { last: now, suppressed: 0 });
                return Some(0);
            }
            Entry::Occupied(held) => held.into_mut(),
        };
        if now.duration_since(held.last) < self.every {
            held.suppressed += 1;
            return None;
        }
        held.last = now;
        Some(std::mem::take(&mut held.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_and_interval_and_the_next_one_counts_those_held_back() {
        let mut limit = RateLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(limit.admit("forged", at(0)), Some(0));
        assert_eq!(limit.admit("forged", at(0)), None, "the first line opens the interval");
        assert_eq!(limit.admit("forged", at(9)), None);
        assert_eq!(limit.admit("stale", at(9)), Some(0), "another key has its own interval");
        assert_eq!(limit.admit("forged", at(10)), Some(2));
        assert_eq!(limit.admit("forged", at(11)), None);
        assert_eq!(limit.admit("forged", at(30)), Some(1));
        assert_eq!(limit.admit("forged", at(41)), Some(0));
    }
}
