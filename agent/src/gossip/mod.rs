//! Membership by gossip: chitchat over UDP (or any transport), configured for weft, with
//! liveness from monitors (`monitors.rs`) for the members that announce them and from
//! chitchat's failure detector for the others.

pub mod keyfile;
pub mod keys;
mod liveness;
pub mod monitors;
pub mod ping;
pub mod seal;
pub mod transport;
mod view;

use std::sync::Arc;
use std::time::Duration;

use chitchat::transport::Transport;
use chitchat::{
    Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion, spawn_chitchat,
};
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::GossipSettings;
use crate::membership::View;
use monitors::{Judgement, MemberId};
use ping::Pinging;
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
    judgement: watch::Receiver<Judgement>,
    /// Stops the monitor task with the gossip.
    _monitors: DropGuard,
}

/// Pings and acks queued between the monitor task and the socket: a round's pings to the ~8
/// subjects, with room for a socket that falls a few rounds behind.
const PROBE_QUEUE: usize = 64;

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
    /// Starts gossiping as generation `generation` of `node`, announcing `key_values` and the
    /// monitors protocol, and starts monitoring.
    pub async fn start(
        settings: &GossipSettings,
        node: &str,
        generation: u64,
        mut key_values: Vec<(String, String)>,
        transport: Arc<dyn Transport>,
        counters: GossipCounters,
    ) -> Result<Gossip, GossipError> {
        let config = chitchat_config(settings, node, generation);
        let me = MemberId::new(node, generation);
        let (outbox_tx, outbox_rx) = mpsc::channel(PROBE_QUEUE);
        let (answers_tx, answers_rx) = mpsc::channel(PROBE_QUEUE);
        let malformed_suspicions = counters.malformed_suspicions.clone();
        let transport = Pinging::new(Counting::new(transport, counters), me.clone(), outbox_rx, answers_tx);
        key_values.extend([
            (keys::GOSSIP_PROTOCOL.to_string(), keys::PROTOCOL_MONITORS.to_string()),
            (keys::SUSPECTS.to_string(), String::new()),
        ]);
        let handle = spawn_chitchat(config, key_values, &transport)
            .await
            .map_err(|e| GossipError { addr: settings.listen, reason: format!("{e:#}") })?;
        let cancel = CancellationToken::new();
        let judgement = liveness::spawn(
            handle.chitchat(),
            me,
            settings.interval,
            outbox_tx,
            answers_rx,
            malformed_suspicions,
            cancel.clone(),
        );
        Ok(Gossip { handle, interval: settings.interval, judgement, _monitors: cancel.drop_guard() })
    }

    /// The writer of this node's own keys.
    pub fn publisher(&self) -> Publisher {
        Publisher(self.handle.chitchat())
    }

    /// The membership view, published after every gossip round until `cancel`.
    pub fn observe(&self, cancel: CancellationToken) -> (watch::Receiver<Arc<View>>, JoinHandle<()>) {
        view::spawn_observer(self.handle.chitchat(), self.judgement.clone(), self.interval, cancel)
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

#[cfg(test)]
mod tests {
    use chitchat::transport::ChannelTransport;

    use super::*;
    use crate::membership::Liveness;

    fn settings(i: u8) -> GossipSettings {
        let addr = |i: u8| std::net::SocketAddr::from(([192, 0, 2, i], 8473));
        GossipSettings {
            cluster_id: "weft".into(),
            listen: addr(i),
            seeds: vec![addr(1).to_string()],
            interval: Duration::from_millis(100),
            phi_threshold: crate::cli::DEFAULT_PHI_THRESHOLD,
            dead_node_grace_period: Duration::from_secs(3600),
        }
    }

    fn up() -> Vec<(String, String)> {
        vec![(keys::STATUS.to_string(), keys::STATUS_UP.to_string())]
    }

    /// Waits (virtual time) until `view` shows `name` as `liveness`.
    async fn until(view: &mut watch::Receiver<Arc<View>>, name: &str, liveness: Liveness) {
        let seen = |v: &Arc<View>| v.members.iter().any(|m| m.name == name && m.liveness == liveness);
        tokio::time::timeout(Duration::from_secs(60), view.wait_for(seen))
            .await
            .unwrap_or_else(|_| panic!("{name} not {} within 60 s", liveness.as_str()))
            .unwrap();
    }

    /// A rolling upgrade: three nodes of this release and one of the previous (chitchat
    /// without monitors). This release's nodes judge each other by monitors, the old node by
    /// its heartbeats; the old node judges everyone by heartbeats; a crash of either kind is
    /// seen by all.
    #[tokio::test(start_paused = true)]
    async fn a_mixed_cluster_judges_each_node_by_what_it_announces() {
        let network: Arc<dyn Transport> = Arc::new(ChannelTransport::default());
        let counters = GossipCounters::default();
        let mut nodes = Vec::new();
        for (i, name) in [(1, "a"), (2, "b"), (3, "c")] {
            let gossip = Gossip::start(&settings(i), name, 1, up(), network.clone(), counters.clone()).await.unwrap();
            let (view, _) = gossip.observe(CancellationToken::new());
            nodes.push((gossip, view));
        }
        let old = spawn_chitchat(chitchat_config(&settings(4), "old", 1), up(), &*network).await.unwrap();
        // The previous release had no monitors: its view never hears a judgement.
        let (_no_monitors, none) = watch::channel(Judgement::default());
        let (mut old_view, _) =
            view::spawn_observer(old.chitchat(), none, Duration::from_millis(100), CancellationToken::new());
        for (me, (_, view)) in ["a", "b", "c"].into_iter().zip(&mut nodes) {
            for name in ["a", "b", "c", "old"].into_iter().filter(|n| *n != me) {
                until(view, name, Liveness::Alive).await;
            }
        }
        for name in ["a", "b", "c"] {
            until(&mut old_view, name, Liveness::Alive).await;
        }
        let a_judges = |nodes: &[(Gossip, watch::Receiver<Arc<View>>)]| nodes[0].0.judgement.borrow().judged.clone();
        let judged: Vec<String> = a_judges(&nodes).into_iter().map(|m| m.name).collect();
        assert_eq!(judged, ["a", "b", "c"], "the old node is not judged by monitors");

        // c crashes: a and b declare it dead by its monitors, the old node by its detector.
        let (c, _) = nodes.pop().unwrap();
        c.abort().await;
        for (_, view) in &mut nodes {
            until(view, "c", Liveness::Dead).await;
        }
        until(&mut old_view, "c", Liveness::Dead).await;
        assert!(a_judges(&nodes).iter().any(|m| m.name == "c"), "c was judged by its monitors");

        // The old node crashes: the others' detectors declare it dead.
        old.shutdown().await.unwrap();
        for (_, view) in &mut nodes {
            until(view, "old", Liveness::Dead).await;
        }
    }
}
