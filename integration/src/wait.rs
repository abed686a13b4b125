//! Bounded waiting: every wait has a deadline and a poll interval.

use std::time::{Duration, Instant};

use crate::cmd::{LabError, Result};

/// Polls `check` every `every` until it returns `Some`, for at most `limit`.
pub fn until<T>(what: &str, limit: Duration, every: Duration, mut check: impl FnMut() -> Option<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if start.elapsed() >= limit {
            return Err(LabError::Timeout { what: what.to_string(), secs: limit.as_secs_f64() });
        }
        std::thread::sleep(every);
    }
}
