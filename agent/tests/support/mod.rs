//! A cluster of real agents in one process: gossip over chitchat's in-memory transport, each
//! agent programming a recording datapath instead of the kernel.

#![allow(dead_code)] // each test binary uses part of the harness

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chitchat::transport::ChannelTransport;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion};
use ipnet::{IpNet, Ipv4Net};
use tokio::time::Instant;
use weft_agent::agent::Agent;
use weft_agent::config::Config;
use weft_agent::datapath::{CleanupSummary, Datapath, DatapathError};
use weft_agent::detect::Underlay;
use weft_agent::files::Paths;
use weft_agent::http::status::{PeerStatus, Status};
use weft_agent::probe::icmp::Pinger;
use weft_overlay::ApplyReport;
use weft_overlay::desired::{Desired, Peer, vtep_of};
use weft_overlay::underlay::Family;

pub const GOSSIP_INTERVAL: Duration = Duration::from_millis(100);

/// Records every desired state it is given; can be told to fail the next applies. Applies
/// incrementally only once told to, and then only after an apply that succeeded, as the kernel
/// dataplane does.
#[derive(Default)]
pub struct FakeDatapath {
    applied: Mutex<Vec<(Instant, Desired)>>,
    fail_next: AtomicUsize,
    fail_next_incremental: AtomicUsize,
    attempts: AtomicUsize,
    incremental: AtomicBool,
    /// Whether the last apply succeeded.
    known: AtomicBool,
    /// Every attempt: "full" or "incremental", and whether it failed.
    kinds: Mutex<Vec<(&'static str, bool)>>,
}

#[async_trait]
impl Datapath for FakeDatapath {
    async fn apply(&self, desired: &Desired) -> Result<ApplyReport, DatapathError> {
        self.attempt("full", desired)
    }

    async fn apply_incremental(&self, desired: &Desired) -> Result<Option<ApplyReport>, DatapathError> {
        if !self.incremental.load(Ordering::SeqCst) || !self.known.load(Ordering::SeqCst) {
            return Ok(None);
        }
        self.attempt("incremental", desired).map(Some)
    }

    async fn cleanup(&self, _force: bool) -> Result<CleanupSummary, DatapathError> {
        Ok(CleanupSummary::default())
    }
}

impl FakeDatapath {
    fn attempt(&self, kind: &'static str, desired: &Desired) -> Result<ApplyReport, DatapathError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let take = |n: &AtomicUsize| n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        let failed = take(&self.fail_next) || (kind == "incremental" && take(&self.fail_next_incremental));
        self.known.store(!failed, Ordering::SeqCst);
        self.kinds.lock().unwrap().push((kind, failed));
        if failed {
            return Err(DatapathError::Kernel("injected failure".into()));
        }
        self.applied.lock().unwrap().push((Instant::now(), desired.clone()));
        Ok(ApplyReport { created: desired.peers.len(), ..ApplyReport::default() })
    }

    /// From now on, applies incrementally when it can.
    pub fn allow_incremental(&self) {
        self.incremental.store(true, Ordering::SeqCst);
    }

    /// Every apply attempted so far: its kind and whether it failed.
    pub fn kinds(&self) -> Vec<(&'static str, bool)> {
        self.kinds.lock().unwrap().clone()
    }

    /// Fails the next `n` incremental applies only.
    pub fn fail_next_incremental(&self, n: usize) {
        self.fail_next_incremental.store(n, Ordering::SeqCst);
    }

    pub fn fail_next(&self, n: usize) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    pub fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }

    pub fn history(&self) -> Vec<(Instant, Desired)> {
        self.applied.lock().unwrap().clone()
    }

    pub fn last(&self) -> Option<Desired> {
        self.applied.lock().unwrap().last().map(|(_, d)| d.clone())
    }

    /// Peer name → first PodCIDR in the last applied state.
    pub fn programmed(&self) -> BTreeMap<String, Ipv4Net> {
        let first = |p: &Peer| match p.pod_cidrs.first() {
            Some(IpNet::V4(v4)) => *v4,
            other => panic!("{} has no IPv4 block first: {other:?}", p.name),
        };
        self.last().map(|d| d.peers.iter().map(|p| (p.name.clone(), first(p))).collect()).unwrap_or_default()
    }

    /// When a state first programmed `peer` at `cidr`, at or after `since`.
    pub fn first_programmed(&self, peer: &str, cidr: Ipv4Net, since: Instant) -> Option<Instant> {
        self.history()
            .into_iter()
            .filter(|(at, _)| *at >= since)
            .find(|(_, d)| d.peers.iter().any(|p| p.name == peer && p.pod_cidrs.contains(&cidr.into())))
            .map(|(at, _)| at)
    }

    /// When a state first lacked `peer`, at or after `since`.
    pub fn first_without(&self, peer: &str, since: Instant) -> Option<Instant> {
        self.history()
            .into_iter()
            .filter(|(at, _)| *at >= since)
            .find(|(_, d)| !d.peers.iter().any(|p| p.name == peer))
            .map(|(at, _)| at)
    }
}

/// The in-process cluster's network: every address answers probes except those of nodes the
/// harness took down (a stopped or killed node is gone, kernel and all, unless only its agent
/// was stopped: [`Cluster::stop_agent_only`]).
#[derive(Clone, Default)]
pub struct FakeNetwork {
    down: Arc<Mutex<HashSet<IpAddr>>>,
}

#[async_trait]
impl Pinger for FakeNetwork {
    async fn ping(&self, dst: IpAddr, _: u16, timeout: Duration) -> Option<Duration> {
        if self.down.lock().unwrap().contains(&dst) {
            tokio::time::sleep(timeout).await;
            return None;
        }
        Some(Duration::from_micros(100))
    }

    fn heard_from(&self, _: IpAddr) -> Option<Instant> {
        None
    }
}

pub struct Node {
    /// Addresses of the node taken down with it (they answer again when it starts).
    pub down: Vec<IpAddr>,
    pub config: Config,
    pub datapath: Arc<FakeDatapath>,
    pub agent: Option<Agent>,
}

pub struct Cluster {
    pub transport: ChannelTransport,
    pub network: FakeNetwork,
    root: tempfile::TempDir,
    pub nodes: BTreeMap<String, Node>,
    pub cluster_cidr: Ipv4Net,
    pub prefix: u8,
    next_ip: u8,
}

pub fn node_ip(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 10 + index)
}

pub fn gossip_addr(ip: Ipv4Addr) -> SocketAddr {
    SocketAddr::new(ip.into(), 8473)
}

/// The first node's gossip address: every node's seed.
pub fn seed() -> String {
    gossip_addr(node_ip(0)).to_string()
}

impl Cluster {
    pub fn new() -> Cluster {
        Cluster::with_pool("10.244.0.0/16", 24)
    }

    pub fn with_pool(cluster_cidr: &str, prefix: u8) -> Cluster {
        Cluster {
            transport: ChannelTransport::with_mtu(65_507),
            network: FakeNetwork::default(),
            root: tempfile::tempdir().unwrap(),
            nodes: BTreeMap::new(),
            cluster_cidr: cluster_cidr.parse().unwrap(),
            prefix,
            next_ip: 0,
        }
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// Adds a node (not started); tweak `nodes[name].config` before starting it.
    pub fn add(&mut self, name: &str) -> &mut Config {
        let ip = node_ip(self.next_ip);
        self.next_ip += 1;
        let dir = self.dir(name);
        let underlay = Underlay::single(ip.into(), "eth0", Ipv4Net::new(ip, 24).unwrap().trunc().into(), 1500);
        let paths = Paths { state_dir: dir.join("run"), cni_conf_dir: dir.join("net.d"), ipam_dir: dir.join("ipam") };
        let mut config = Config::with_defaults(name, underlay, vec![seed()], paths);
        config.cluster_cidrs = vec![self.cluster_cidr.into()];
        config.node_cidr_prefix = self.prefix;
        config.gossip.interval = GOSSIP_INTERVAL;
        config.startup_grace = Duration::from_secs(5);
        config.probe_interval = Duration::from_millis(500);
        self.nodes.insert(
            name.to_string(),
            Node { down: Vec::new(), config, datapath: Arc::new(FakeDatapath::default()), agent: None },
        );
        &mut self.nodes.get_mut(name).unwrap().config
    }

    /// Adds a second agent under `name`'s node name on another machine (a cloned VM), known
    /// to the harness as `key`.
    pub fn add_clone(&mut self, key: &str, name: &str) -> &mut Config {
        self.add(key).node_name = name.to_string();
        &mut self.nodes.get_mut(key).unwrap().config
    }

    /// Starts (or restarts) a node with a fresh recording datapath.
    pub async fn start(&mut self, name: &str) {
        let node = self.nodes.get_mut(name).unwrap();
        self.network.down.lock().unwrap().retain(|a| !node.down.contains(a));
        node.down.clear();
        assert!(node.agent.is_none(), "{name} is running");
        node.datapath = Arc::new(FakeDatapath::default());
        let agent = Agent::start(
            node.config.clone(),
            |_| Arc::new(self.transport.clone()),
            node.datapath.clone(),
            Some(Arc::new(self.network.clone())),
        )
        .await
        .unwrap();
        node.agent = Some(agent);
    }

    pub async fn add_and_start(&mut self, names: &[&str]) {
        for name in names {
            self.add(name);
        }
        for name in names {
            self.start(name).await;
        }
    }

    /// The node's addresses that probes reach: its underlay IP and its VTEP address of each
    /// family it has a block of.
    fn addresses(&self, name: &str) -> Vec<IpAddr> {
        let config = &self.nodes[name].config;
        let vteps = Family::ALL.into_iter().filter_map(|family| {
            let lease = weft_agent::files::read_lease(&config.paths.lease(family)).ok().flatten()?;
            Some(vtep_of(&lease.pod_cidr))
        });
        std::iter::once(config.underlay.primary().ip).chain(vteps).collect()
    }

    /// The node's kernel stops answering probes (until it starts again).
    pub fn take_node_down(&mut self, name: &str) {
        let addresses = self.addresses(name);
        self.network.down.lock().unwrap().extend(&addresses);
        self.nodes.get_mut(name).unwrap().down = addresses;
    }

    /// The node shuts down: its agent announces leaving and stops, and the node is gone.
    pub async fn stop(&mut self, name: &str) {
        self.take_node_down(name);
        self.stop_agent_only(name).await;
    }

    /// Only the agent stops (SIGTERM, an upgrade): the node and its pods keep working.
    pub async fn stop_agent_only(&mut self, name: &str) {
        let agent = self.nodes.get_mut(name).unwrap().agent.take().unwrap();
        agent.stop().await;
    }

    /// The node crashes: its agent stops without telling anybody, and the node is gone.
    pub async fn kill(&mut self, name: &str) {
        self.take_node_down(name);
        let agent = self.nodes.get_mut(name).unwrap().agent.take().unwrap();
        agent.kill().await;
    }

    pub fn running(&self) -> Vec<&str> {
        self.nodes.iter().filter(|(_, n)| n.agent.is_some()).map(|(name, _)| name.as_str()).collect()
    }

    pub fn datapath(&self, name: &str) -> Arc<FakeDatapath> {
        self.nodes[name].datapath.clone()
    }

    pub fn status(&self, name: &str) -> Option<Status> {
        self.nodes[name].agent.as_ref()?.shared().status()
    }

    /// `peer`'s row in `node`'s status once it is `what` (`cond`). A reconcile pass publishes its
    /// status just after the apply, so a test that saw the datapath change waits for it here.
    pub async fn peer_row(&self, node: &str, peer: &str, what: &str, cond: impl Fn(&PeerStatus) -> bool) -> PeerStatus {
        let row = || self.status(node)?.peers.into_iter().find(|p| p.name == peer && cond(p));
        wait_until(Duration::from_secs(2), &format!("{node}'s status to show {peer} {what}"), || row().is_some()).await;
        row().unwrap()
    }

    pub fn metrics(&self, name: &str) -> String {
        self.nodes[name].agent.as_ref().unwrap().shared().metrics.encode()
    }

    pub fn generation(&self, name: &str) -> u64 {
        self.nodes[name].agent.as_ref().unwrap().generation()
    }

    /// The PodCIDR a running node holds.
    pub fn pod_cidr(&self, name: &str) -> Option<Ipv4Net> {
        match self.status(name)?.node.pod_cidr? {
            IpNet::V4(block) => Some(block),
            IpNet::V6(block) => panic!("the in-memory cluster is IPv4, not {block}"),
        }
    }

    pub fn ready(&self, name: &str) -> bool {
        self.status(name).is_some_and(|s| s.node.ready)
    }

    /// Every running node is ready and programs exactly every other running node at the
    /// PodCIDR that node holds (foreign chitchat nodes from [`Cluster::rogue`] aside).
    pub fn converged(&self) -> bool {
        let running = self.running();
        let held: Option<BTreeMap<&str, Ipv4Net>> = running.iter().map(|n| Some((*n, self.pod_cidr(n)?))).collect();
        let Some(held) = held else { return false };
        running.iter().all(|me| {
            let expected: BTreeMap<String, Ipv4Net> =
                held.iter().filter(|(n, _)| *n != me).map(|(n, c)| (n.to_string(), *c)).collect();
            let mut programmed = self.datapath(me).programmed();
            programmed.retain(|name, _| self.nodes.contains_key(name));
            self.ready(me) && programmed == expected
        })
    }

    /// A raw chitchat node announcing `key_values` (a misbehaving or foreign node).
    pub async fn rogue(&mut self, name: &str, key_values: &[(&str, &str)]) -> ChitchatHandle {
        let ip = node_ip(self.next_ip);
        self.next_ip += 1;
        let addr = gossip_addr(ip);
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(name.to_string(), 1, addr),
            cluster_id: "weft".into(),
            gossip_interval: GOSSIP_INTERVAL,
            listen_addr: addr,
            seed_nodes: vec![seed()],
            failure_detector_config: FailureDetectorConfig {
                initial_interval: GOSSIP_INTERVAL,
                ..FailureDetectorConfig::default()
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V0,
        };
        let kvs = key_values.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        chitchat::spawn_chitchat(config, kvs, &self.transport).await.unwrap()
    }

    pub async fn shutdown(mut self) {
        for name in self.running().iter().map(|n| n.to_string()).collect::<Vec<_>>() {
            self.kill(&name).await;
        }
    }
}

/// Polls `cond` every 10 ms; panics after `timeout`. Returns how long it took.
pub async fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn ms(d: Duration) -> u128 {
    d.as_millis()
}
