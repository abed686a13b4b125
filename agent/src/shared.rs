//! What the agent's loops publish for the HTTP endpoints: the status document, the metrics, and
//! the liveness of the loops themselves.

use std::sync::{Mutex, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::http::metrics::Metrics;
use crate::http::status::Status;

/// The reconcile loop wakes at least every second; this much silence means it is stuck.
pub const STALL_LIMIT: Duration = Duration::from_secs(60);

pub struct Shared {
    pub metrics: Metrics,
    status: RwLock<Option<Status>>,
    last_beat: Mutex<Instant>,
    gossip_stopped: Mutex<Option<String>>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            metrics: Metrics::new(),
            status: RwLock::new(None),
            last_beat: Mutex::new(Instant::now()),
            gossip_stopped: Mutex::new(None),
        }
    }
}

impl Shared {
    /// The latest status; `None` before the first reconcile step.
    pub fn status(&self) -> Option<Status> {
        self.status.read().expect("status lock").clone()
    }

    pub fn set_status(&self, status: Status) {
        *self.status.write().expect("status lock") = Some(status);
    }

    /// The reconcile loop is alive.
    pub fn beat(&self) {
        *self.last_beat.lock().expect("beat lock") = Instant::now();
    }

    pub fn gossip_stopped(&self, reason: String) {
        *self.gossip_stopped.lock().expect("gossip lock") = Some(reason);
    }

    /// Healthy while gossip runs and the reconcile loop keeps turning.
    pub fn health(&self) -> Result<(), String> {
        if let Some(reason) = self.gossip_stopped.lock().expect("gossip lock").clone() {
            return Err(reason);
        }
        let silent = self.last_beat.lock().expect("beat lock").elapsed();
        if silent > STALL_LIMIT {
            return Err(format!(
                "reconcile loop stalled for {}",
                humantime::format_duration(Duration::from_secs(silent.as_secs()))
            ));
        }
        Ok(())
    }

    pub fn readiness(&self) -> Result<(), String> {
        match self.status() {
            None => Err("starting".into()),
            Some(s) if s.node.ready => Ok(()),
            Some(s) => Err(s.node.not_ready_reason.unwrap_or_else(|| "not ready".into())),
        }
    }
}
