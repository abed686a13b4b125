//! Membership by gossip: chitchat over UDP (or any transport), configured for weft.

pub mod keyfile;
pub mod keys;
pub mod monitors;
pub mod seal;
pub mod transport;
mod view;

use std::sync::Arc;
use std::time::Duration;

use chitchat::transport::Transport;
use chitchat::{
    Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion, spawn_chitchat,
};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::GossipSettings;
use crate::membership::View;
use transport::{Counting, GossipCounters};

/// Gossip rounds a leaving node keeps gossiping its `leaving` status before it stops, so that
/// peers hear it from the node itself rather than from the failure detector.
pub const LEAVE_ROUNDS: u32 = 5;

#[derive(Debug, thiserror::Error)]
#[error("cannot start gossip on {addr}: {reason}")]
pub struct GossipError {
    pub addr: std::net::SocketAddr,
    pub reason: String,
}

pub struct Gossip {
    handle: ChitchatHandle,
    interval: Duration,
}

/// Heartbeat intervals the failure detector keeps per member. Each member's window is
/// allocated whole (8 bytes an interval): chitchat's default of 1000 costs 8 kB per member,
/// 40 MB at 5000 members, and remembers ~50 s of heartbeats at 100 ms rounds where a few seconds
/// give the same mean. 100 intervals are 0.8 kB per member and 5–10 s of history.
const SAMPLING_WINDOW: usize = 100;

/// chitchat's configuration for weft: the detector's prior is one gossip round (chitchat's 5 s
/// default would make the first detections take seconds longer), its window is
/// [`SAMPLING_WINDOW`], and a node announcing `leaving` drops out of the live set at once, as
/// chitchat has no leave message of its own.
fn chitchat_config(settings: &GossipSettings, node: &str, generation: u64) -> ChitchatConfig {
    ChitchatConfig {
        chitchat_id: ChitchatId::new(node.to_string(), generation, settings.listen),
        cluster_id: settings.cluster_id.clone(),
        gossip_interval: settings.interval,
        listen_addr: settings.listen,
        seed_nodes: settings.seeds.clone(),
        failure_detector_config: FailureDetectorConfig {
            phi_threshold: settings.phi_threshold,
            sampling_window_size: SAMPLING_WINDOW,
            initial_interval: settings.interval,
            dead_node_grace_period: settings.dead_node_grace_period,
            ..FailureDetectorConfig::default()
        },
        marked_for_deletion_grace_period: settings.dead_node_grace_period,
        catchup_callback: None,
        extra_liveness_predicate: Some(Box::new(|state| state.get(keys::STATUS) != Some(keys::STATUS_LEAVING))),
        protocol_version: ProtocolVersion::V0,
    }
}

impl Gossip {
    /// Starts gossiping as generation `generation` of `node`, announcing `key_values`.
    pub async fn start(
        settings: &GossipSettings,
        node: &str,
        generation: u64,
        key_values: Vec<(String, String)>,
        transport: Arc<dyn Transport>,
        counters: GossipCounters,
    ) -> Result<Gossip, GossipError> {
        let config = chitchat_config(settings, node, generation);
        let transport = Counting::new(transport, counters);
        let handle = spawn_chitchat(config, key_values, &transport)
            .await
            .map_err(|e| GossipError { addr: settings.listen, reason: format!("{e:#}") })?;
        Ok(Gossip { handle, interval: settings.interval })
    }

    /// The writer of this node's own keys.
    pub fn publisher(&self) -> Publisher {
        Publisher(self.handle.chitchat())
    }

    /// The membership view, published after every gossip round until `cancel`.
    pub fn observe(&self, cancel: CancellationToken) -> (watch::Receiver<View>, JoinHandle<()>) {
        view::spawn_observer(self.handle.chitchat(), self.interval, cancel)
    }

    /// Resolves when the gossip server stops on its own (a broken socket), with the reason.
    pub fn stopped(&self) -> impl Future<Output = String> + Send + use<> {
        let done = self.handle.termination_watcher();
        async move {
            match done.await {
                Ok(()) => "gossip server stopped".to_string(),
                Err(e) => format!("gossip server failed: {e:#}"),
            }
        }
    }

    /// Announces `leaving`, lets a few rounds carry it, then stops.
    pub async fn leave(self) {
        self.handle.with_chitchat(|c| c.self_node_state().set(keys::STATUS, keys::STATUS_LEAVING)).await;
        tokio::time::sleep(self.interval * LEAVE_ROUNDS).await;
        if let Err(e) = self.handle.shutdown().await {
            tracing::warn!(error = %format!("{e:#}"), "gossip did not stop cleanly");
        }
    }

    /// Stops at once, telling nobody: peers find out through the failure detector. (chitchat's
    /// shutdown sends nothing; awaiting it means the socket is closed when this returns.)
    pub async fn abort(self) {
        if let Err(e) = self.handle.shutdown().await {
            tracing::warn!(error = %format!("{e:#}"), "gossip did not stop cleanly");
        }
    }
}

/// This node's own announcements: the only way the rest of the agent writes to gossip.
#[derive(Clone)]
pub struct Publisher(Arc<Mutex<Chitchat>>);

impl Publisher {
    /// Sets one of this node's own keys.
    pub async fn publish(&self, key: &str, value: &str) {
        self.0.lock().await.self_node_state().set(key, value);
    }

    /// Deletes one of this node's own keys (peers see it gone).
    pub async fn withdraw(&self, key: &str) {
        self.0.lock().await.self_node_state().delete(key);
    }
}
