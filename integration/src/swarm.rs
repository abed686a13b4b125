//! Simulated weft nodes for scale benchmarks. Each one is only the agent's gossip
//! (`weft_agent::gossip::Gossip`: weft's chitchat configuration over sealed UDP with the cluster
//! key) announcing a node's facts and a static PodCIDR, exactly as an agent does; there is no
//! reconcile loop and no datapath behind it. All of them run on one tokio runtime whose threads
//! live in one lab namespace, one UDP port each on that namespace's address (chitchat tells
//! nodes apart by name, generation and address, so one IP is enough).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::Ipv4Net;
use tokio::runtime::Runtime;
use tokio::sync::watch;
use weft_agent::allocation::{Claim, ClaimKind};
use weft_agent::cli::DEFAULT_PHI_THRESHOLD;
use weft_agent::config::GossipSettings;
use weft_agent::gossip::keyfile;
use weft_agent::gossip::keys::Facts;
use weft_agent::gossip::transport::{GossipCounters, SealedUdp};
use weft_agent::gossip::{Gossip, GossipError};
use weft_agent::reconcile::unix_ms;
use weft_overlay::Mac;
use weft_overlay::desired::{DEFAULT_VNI, DEFAULT_VXLAN_PORT};

use crate::cmd::{LabError, Result};
use crate::netns;

/// The agent's default replay window (`--gossip-replay-window`).
const REPLAY_WINDOW: Duration = Duration::from_secs(60);
/// As the agent's default `--dead-node-grace-period`.
const DEAD_NODE_GRACE: Duration = Duration::from_secs(3600);
/// Simulated node `k` listens on this port + k.
const FIRST_PORT: u16 = 20_000;

/// Where and how the simulated nodes gossip.
#[derive(Debug, Clone)]
pub struct SwarmSpec {
    /// The namespace whose address they all share.
    pub netns: PathBuf,
    pub ip: Ipv4Addr,
    /// The cluster key file (the lab's, so that the real agents accept them).
    pub key_file: PathBuf,
    /// Simulated node `k` announces block `k + 1` of this CIDR split at `prefix`; block 0 is left
    /// for a real node.
    pub cluster_cidr: Ipv4Net,
    pub prefix: u8,
}

pub struct Swarm {
    spec: SwarmSpec,
    keys: watch::Receiver<Arc<weft_agent::gossip::seal::Keyring>>,
    counters: GossipCounters,
    nodes: Vec<Option<Gossip>>,
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
        Ok(Swarm { spec, keys, counters: GossipCounters::default(), nodes: Vec::new(), runtime })
    }

    /// The seed every simulated node joins through (node 0).
    pub fn seed(&self) -> SocketAddr {
        SocketAddr::new(self.spec.ip.into(), FIRST_PORT)
    }

    /// The PodCIDR simulated node `k` announces.
    pub fn block(&self, k: usize) -> Result<Ipv4Net> {
        self.spec.cluster_cidr.subnets(self.spec.prefix).ok().and_then(|mut blocks| blocks.nth(k + 1)).ok_or_else(
            || LabError::Other(format!("no block {} of {} at /{}", k + 1, self.spec.cluster_cidr, self.spec.prefix)),
        )
    }

    /// Starts the next simulated node, gossiping every `interval`; its index.
    pub fn add(&mut self, interval: Duration) -> Result<usize> {
        let k = self.nodes.len();
        let port = u16::try_from(k)
            .ok()
            .and_then(|k| FIRST_PORT.checked_add(k))
            .ok_or_else(|| LabError::Other(format!("no port for simulated node {k}")))?;
        let settings = GossipSettings {
            cluster_id: "weft".into(),
            listen: SocketAddr::new(self.spec.ip.into(), port),
            seeds: vec![self.seed().to_string()],
            interval,
            phi_threshold: DEFAULT_PHI_THRESHOLD,
            dead_node_grace_period: DEAD_NODE_GRACE,
        };
        let name = format!("sim{k}");
        let now = unix_ms(SystemTime::now());
        let facts = Facts {
            node_ip: self.spec.ip,
            vtep_mac: Mac::derived(&name),
            vni: DEFAULT_VNI,
            vxlan_port: DEFAULT_VXLAN_PORT,
        };
        let claim = Claim { cidr: self.block(k)?, kind: ClaimKind::Static, since_ms: now };
        let transport = Arc::new(SealedUdp::new(self.keys.clone(), REPLAY_WINDOW, &self.counters));
        let counters = self.counters.clone();
        // Spawned, not run by `block_on` on this thread: only the runtime's threads are in the namespace.
        let started = self.runtime.spawn(async move {
            Gossip::start(&settings, &name, now, facts.key_values(Some(claim)), transport, counters).await
        });
        let gossip = self
            .runtime
            .block_on(started)
            .map_err(|e| LabError::Other(format!("simulated node {k} panicked: {e}")))?
            .map_err(|e: GossipError| LabError::Other(e.to_string()))?;
        self.nodes.push(Some(gossip));
        Ok(k)
    }

    /// The fewest live nodes (itself included) any running simulated node sees.
    pub fn min_live(&self) -> usize {
        let chitchats: Vec<_> = self.nodes.iter().flatten().map(Gossip::chitchat).collect();
        self.runtime.block_on(async {
            let mut min = usize::MAX;
            for c in chitchats {
                min = min.min(c.lock().await.live_nodes().count());
            }
            min
        })
    }

    /// Simulated node `k` leaves as an agent stopping with SIGTERM does (announces `leaving`,
    /// gossips a few more rounds, stops), in the background.
    pub fn leave(&mut self, k: usize) {
        if let Some(gossip) = self.nodes.get_mut(k).and_then(Option::take) {
            self.runtime.spawn(gossip.leave());
        }
    }
}
