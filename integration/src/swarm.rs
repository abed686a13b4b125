//! Simulated weft nodes for scale benchmarks: they gossip with the agents' chitchat, sealed with
//! the cluster key over UDP, and announce a node's facts and a static PodCIDR as an agent does;
//! there is no reconcile loop and no datapath behind them. All of them run on one tokio runtime
//! whose threads live in one lab namespace, one UDP port each on that namespace's address
//! (chitchat tells nodes apart by name, generation and address, so one IP is enough).
//!
//! Most are plain chitchat instances with a short failure-detector window, because chitchat's
//! default window (1000 samples per known node) costs 8 KB per node per node: 8 GB for 1000
//! nodes in one process. One can be started as an agent's gossip exactly (`weft_agent::gossip`),
//! to join and leave as an agent does.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState, ProtocolVersion, spawn_chitchat,
};
use ipnet::Ipv4Net;
use tokio::runtime::Runtime;
use tokio::sync::watch;
use weft_agent::allocation::{Claim, ClaimKind};
use weft_agent::cli::DEFAULT_PHI_THRESHOLD;
use weft_agent::clock::unix_ms;
use weft_agent::config::GossipSettings;
use weft_agent::gossip::keyfile;
use weft_agent::gossip::keys::Facts;
use weft_agent::gossip::transport::{GossipCounters, GossipUdp, Sealing};
use weft_agent::gossip::{Gossip, GossipError};
use weft_agent::settings;
use weft_agent::validate::Pool;
use weft_overlay::Mac;
use weft_overlay::desired::{DEFAULT_VNI, DEFAULT_VXLAN_PORT};
use weft_overlay::underlay::NodeIps;

use crate::cmd::{LabError, Result};
use crate::netns;

/// The agent's default replay window (`--gossip-replay-window`).
const REPLAY_WINDOW: Duration = Duration::from_secs(60);
/// As the agent's default `--dead-node-grace-period`.
const DEAD_NODE_GRACE: Duration = Duration::from_secs(3600);
/// Heartbeat intervals a plain simulated node keeps per known node (chitchat's default: 1000).
const DETECTOR_WINDOW: usize = 16;
/// Simulated node `k` listens on this port + k.
const FIRST_PORT: u16 = 20_000;

/// Where the simulated nodes gossip and what they announce.
#[derive(Debug, Clone)]
pub struct SwarmSpec {
    /// The namespace whose address they all share.
    pub netns: PathBuf,
    pub ip: IpAddr,
    /// The cluster key file (the lab's, so that the real agents accept them).
    pub key_file: PathBuf,
    /// Simulated node `k` announces block `k + 1` of this CIDR split at `prefix`; block 0 is left
    /// for a real node.
    pub cluster_cidr: Ipv4Net,
    pub prefix: u8,
    /// The real nodes' `--gossip-interval`: the simulated nodes announce the real nodes'
    /// settings (the agents refuse nodes of other settings), whatever rhythm they gossip at.
    pub gossip_interval: Duration,
}

/// A node about to start: index, name, gossip address, seed, generation, announcement.
struct Next {
    k: usize,
    name: String,
    listen: SocketAddr,
    seed: String,
    generation: u64,
    kvs: Vec<(String, String)>,
}

enum Peer {
    Plain(ChitchatHandle),
    Agent(Gossip),
}

pub struct Swarm {
    spec: SwarmSpec,
    sealing: Sealing,
    counters: GossipCounters,
    nodes: Vec<Option<Peer>>,
    /// Each plain node's view of the live nodes (itself included), read without its lock.
    live: Vec<watch::Receiver<BTreeMap<ChitchatId, NodeState>>>,
    // Last, so it drops after the nodes it drives; its threads hold the namespace.
    runtime: Runtime,
}

impl Swarm {
    /// A swarm with no nodes yet; its runtime's threads are created inside `spec.netns`, so
    /// every socket the nodes open is there.
    pub fn new(spec: SwarmSpec) -> Result<Swarm> {
        let runtime = netns::within(&spec.netns, || tokio::runtime::Builder::new_multi_thread().enable_all().build())?
            .map_err(|e| LabError::Other(format!("tokio runtime for simulated nodes: {e}")))?;
        let text = std::fs::read_to_string(&spec.key_file)
            .map_err(|e| LabError::Other(format!("read {}: {e}", spec.key_file.display())))?;
        let ring = keyfile::parse(&spec.key_file, &text).map_err(LabError::other)?;
        // The keys never change here: the sender can go, receivers keep the last value.
        let (_, keys) = watch::channel(Arc::new(ring));
        let sealing = Sealing { keys, replay_window: REPLAY_WINDOW };
        Ok(Swarm { spec, sealing, counters: GossipCounters::default(), nodes: Vec::new(), live: Vec::new(), runtime })
    }

    /// The gossip address of node `k`.
    fn addr(&self, k: usize) -> Result<SocketAddr> {
        let port = u16::try_from(k)
            .ok()
            .and_then(|k| FIRST_PORT.checked_add(k))
            .ok_or_else(|| LabError::Other(format!("no port for simulated node {k}")))?;
        Ok(SocketAddr::new(self.spec.ip, port))
    }

    /// Node 0, the seed for nodes outside the swarm.
    pub fn seed(&self) -> SocketAddr {
        SocketAddr::new(self.spec.ip, FIRST_PORT)
    }

    /// Node `k` joins through node (k − 1) / 2. With one seed for all, every newcomer that knows
    /// no one else asks that seed each round, and one chitchat task could not answer them: 1000
    /// peers had not converged after 260 s.
    fn seed_of(&self, k: usize) -> Result<String> {
        Ok(self.addr(k.saturating_sub(1) / 2)?.to_string())
    }

    /// The PodCIDR simulated node `k` announces.
    pub fn block(&self, k: usize) -> Result<Ipv4Net> {
        let (cidr, prefix) = (self.spec.cluster_cidr, self.spec.prefix);
        cidr.subnets(prefix)
            .ok()
            .and_then(|mut blocks| blocks.nth(k + 1))
            .ok_or_else(|| LabError::Other(format!("no block {} of {cidr} at /{prefix}", k + 1)))
    }

    /// Starts the next node as plain chitchat gossiping every `interval`; its index.
    pub fn add(&mut self, interval: Duration) -> Result<usize> {
        let Next { k, name, listen, seed, generation, kvs } = self.next()?;
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(name, generation, listen),
            cluster_id: "weft".into(),
            gossip_interval: interval,
            listen_addr: listen,
            seed_nodes: vec![seed],
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: DEFAULT_PHI_THRESHOLD,
                sampling_window_size: DETECTOR_WINDOW,
                initial_interval: interval,
                dead_node_grace_period: DEAD_NODE_GRACE,
                ..FailureDetectorConfig::default()
            },
            marked_for_deletion_grace_period: DEAD_NODE_GRACE,
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V0,
        };
        let transport = GossipUdp::new("weft", Some(self.sealing.clone()), &self.counters);
        let started = self.runtime.spawn(async move {
            let handle = spawn_chitchat(config, kvs, &transport).await.map_err(|e| format!("{e:#}"))?;
            let live = handle.chitchat().lock().await.live_nodes_watcher();
            Ok::<_, String>((handle, live))
        });
        let (handle, live) =
            self.started(k, started)?.map_err(|e| LabError::Other(format!("simulated node {k}: {e}")))?;
        self.nodes.push(Some(Peer::Plain(handle)));
        self.live.push(live);
        Ok(k)
    }

    /// Starts the next node with an agent's own gossip (`weft_agent::gossip::Gossip`), gossiping
    /// every `interval`; its index.
    pub fn add_agent_like(&mut self, interval: Duration) -> Result<usize> {
        let Next { k, name, listen, seed, generation, kvs } = self.next()?;
        let settings = GossipSettings {
            cluster_id: "weft".into(),
            listen,
            seeds: vec![seed],
            interval,
            phi_threshold: DEFAULT_PHI_THRESHOLD,
            dead_node_grace_period: DEAD_NODE_GRACE,
        };
        let transport = Arc::new(GossipUdp::new("weft", Some(self.sealing.clone()), &self.counters));
        let counters = self.counters.clone();
        let started = self
            .runtime
            .spawn(async move { Gossip::start(&settings, &name, generation, kvs, transport, counters).await });
        let gossip = self.started(k, started)?.map_err(|e: GossipError| LabError::Other(e.to_string()))?;
        self.nodes.push(Some(Peer::Agent(gossip)));
        Ok(k)
    }

    /// Who the next node is.
    fn next(&self) -> Result<Next> {
        let k = self.nodes.len();
        let name = format!("sim{k}");
        let now = unix_ms(SystemTime::now());
        let facts = Facts {
            node_ips: NodeIps::new([self.spec.ip]).map_err(LabError::other)?,
            vtep_mac: Mac::derived(&name),
            vni: DEFAULT_VNI,
            vxlan_port: DEFAULT_VXLAN_PORT,
            settings: settings::encode(
                &[Pool { cluster_cidr: self.spec.cluster_cidr.into(), node_prefix: self.spec.prefix }],
                self.spec.gossip_interval,
            ),
        };
        let claim = Claim { cidr: self.block(k)?.into(), kind: ClaimKind::Static, since_ms: now };
        Ok(Next {
            k,
            name,
            listen: self.addr(k)?,
            seed: self.seed_of(k)?,
            generation: now,
            kvs: facts.key_values(&[claim]),
        })
    }

    /// Waits for a node's start, which runs on the runtime (not on this thread, which is not in
    /// the namespace).
    fn started<T>(&self, k: usize, task: tokio::task::JoinHandle<T>) -> Result<T> {
        self.runtime.block_on(task).map_err(|e| LabError::Other(format!("simulated node {k} panicked: {e}")))
    }

    /// The fewest live nodes (itself included) any running plain node sees.
    pub fn min_live(&self) -> usize {
        self.live.iter().map(|l| l.borrow().len()).min().unwrap_or(0)
    }

    /// Node `k` leaves in the background: an agent-like one as an agent stopping on SIGTERM does
    /// (announces `leaving`, gossips a few more rounds, stops), a plain one silently.
    pub fn leave(&mut self, k: usize) {
        match self.nodes.get_mut(k).and_then(Option::take) {
            Some(Peer::Agent(gossip)) => drop(self.runtime.spawn(gossip.leave())),
            Some(Peer::Plain(handle)) => drop(self.runtime.spawn(handle.shutdown())),
            None => {}
        }
    }
}
