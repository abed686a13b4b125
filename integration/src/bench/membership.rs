//! `weft-lab bench membership`: gossip membership of N nodes simulated in one process on a
//! virtual clock. Every node runs the agent's own gossip (`weft_agent::gossip::Gossip`: weft's
//! chitchat configuration, its view observer) over chitchat's in-memory transport, on a tokio
//! runtime whose clock is paused: time advances only when every node waits, so the figures are
//! protocol time, not how fast two cores can serialize digests. What it leaves out: packet loss,
//! latency (a datagram arrives at once), sealing (the 128 bytes a sealed datagram adds are not
//! counted) and the reconcile loop (a node counts as "seen" when gossip's view has it alive,
//! which is when a real agent programs it).
//!
//! Per N: the N nodes start together, seeded with the first three, and converge; then one node
//! joins at a time (until every other node sees it alive) and one node is stopped at a time
//! without a word (a crash: until every other node has declared it dead, by its monitors'
//! pings, which run over the same in-memory transport); and every
//! node's traffic is counted over a window of converged gossip. Then, when asked: half the nodes
//! are cut off from the other half for a while and healed (how long until every node sees every
//! other alive again, and how often a node's view of a peer flipped more than the cut and the
//! heal explain: route flaps); and every node is restarted in turn, as a DaemonSet rolling
//! update does (how long until each new generation is alive everywhere, whether any node lost
//! sight of a peer meanwhile, and what the state and the traffic are afterwards).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chitchat::transport::ChannelTransport;
use clap::Args as ClapArgs;
use ipnet::Ipv4Net;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use weft_agent::allocation::{Claim, ClaimKind};
use weft_agent::cli::DEFAULT_PHI_THRESHOLD;
use weft_agent::config::GossipSettings;
use weft_agent::gossip::Gossip;
use weft_agent::gossip::keys::Facts;
use weft_agent::gossip::transport::GossipCounters;
use weft_agent::membership::{Liveness, View};
use weft_agent::settings;
use weft_agent::validate::Pool;
use weft_overlay::desired::{DEFAULT_VNI, DEFAULT_VXLAN_PORT};
use weft_overlay::mac::Mac;
use weft_overlay::underlay::NodeIps;

use super::stats::Summary;
use crate::cmd::{LabError, Result};

/// The largest UDP payload: what chitchat may fill.
const MAX_DATAGRAM: usize = 65_507;
const PORT: u16 = 7946;
const SEEDS: usize = 3;
/// Virtual-time limits: far beyond the expected, only to never hang.
const CONVERGE_LIMIT: Duration = Duration::from_secs(600);
const EVENT_LIMIT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// Cluster sizes, each simulated from scratch, e.g. `--nodes 10,100,1000`.
    #[arg(long, value_delimiter = ',', default_values_t = [10usize, 100])]
    pub nodes: Vec<usize>,
    /// Every node's `--gossip-interval`, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
    /// Joins and crashes measured per size.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Virtual seconds over which converged traffic is counted.
    #[arg(long, default_value_t = 10)]
    pub window: u64,
    /// Cut half the nodes off from the other half for this many virtual seconds, then heal
    /// (0: no partition).
    #[arg(long, default_value_t = 0)]
    pub partition_secs: u64,
    /// Restart every node in turn.
    #[arg(long)]
    pub rolling_restart: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct SizeResult {
    pub nodes: usize,
    /// Virtual seconds from the start of all nodes until each sees every other alive.
    pub converged_s: f64,
    /// A joining node's start until one other node sees it alive, over every (join, node) pair.
    pub join_per_node: Summary,
    /// A joining node's start until the last node sees it alive, one per join.
    pub join_everywhere: Summary,
    /// A crashed node's stop until one other node's detector declares it dead, per (crash, node).
    pub withdrawal_per_node: Summary,
    /// A crashed node's stop until the last node declares it dead, one per crash.
    pub withdrawal_everywhere: Summary,
    /// Bytes per second per node, converged: mean and the busiest node.
    pub bytes_out_per_s_mean: f64,
    pub bytes_out_per_s_max: f64,
    pub bytes_in_per_s_mean: f64,
    pub bytes_in_per_s_max: f64,
    pub partition: Option<PartitionResult>,
    pub rolling_restart: Option<RollingResult>,
}

#[derive(Debug, Serialize)]
pub struct PartitionResult {
    pub cut_s: f64,
    /// From the heal until each node sees every other alive, one per node.
    pub healed: Summary,
    /// (node, peer) pairs whose liveness in the node's view changed more than the cut and the
    /// heal explain (a peer on the same side: any change; across: more than down then up).
    pub flaps: usize,
    /// (node, peer) pairs across the cut that the node declared gone during it.
    pub declared_gone: usize,
}

#[derive(Debug, Serialize)]
pub struct RollingResult {
    /// Per restart: from the old generation leaving until every other node sees the new one alive.
    pub restart_seen_everywhere: Summary,
    /// (node, peer) pairs of present nodes where the node lost sight of the peer (no generation
    /// alive or leaving) at some point of the rolling restart; a node is not its own peer.
    pub lost: usize,
    /// The longest such gap.
    pub longest_gap_ms: f64,
    /// Members each node's view holds a window after the last restart (the most of any node),
    /// and how many of them are earlier generations of a node it also holds (digest growth).
    pub members_held_max: usize,
    pub earlier_generations_held_max: usize,
    /// Mean bytes/s sent per node after the rolling restart over before it.
    pub traffic_after_over_before: f64,
}

pub fn run(args: &Args) -> Result<String> {
    let results = simulate_sizes(args)?;
    if args.json {
        return Ok(serde_json::to_string_pretty(&results).expect("serializable"));
    }
    Ok(table(args, &results))
}

/// Simulates each of `args.nodes`, one after the other, on a paused clock.
pub fn simulate_sizes(args: &Args) -> Result<Vec<SizeResult>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .map_err(|e| LabError::Other(format!("runtime: {e}")))?;
    args.nodes.iter().map(|&n| runtime.block_on(simulate(n, args))).collect()
}

/// One simulated node.
struct Node {
    k: usize,
    name: String,
    generation: u64,
    gossip: Gossip,
    view: watch::Receiver<Arc<View>>,
    counters: GossipCounters,
    cancel: CancellationToken,
}

/// A simulated cluster on one in-memory network.
struct Sim {
    transport: Arc<ChannelTransport>,
    interval: Duration,
    nodes: Vec<Node>,
    /// Names handed out so far (a joining node gets a new one).
    started: usize,
    liveness: LivenessLog,
}

impl Sim {
    /// Starts one more node; its index in `nodes`.
    async fn start(&mut self) -> Result<usize> {
        let k = self.started;
        self.started += 1;
        let node = self.start_as(k, 1).await?;
        self.nodes.push(node);
        Ok(self.nodes.len() - 1)
    }

    /// Node `k`'s generation `generation`, logging its view's liveness changes.
    async fn start_as(&self, k: usize, generation: u64) -> Result<Node> {
        let name = format!("node-{k:05}");
        let ip = address(k);
        let settings = GossipSettings {
            cluster_id: "weft".into(),
            listen: SocketAddr::new(ip, PORT),
            seeds: (0..SEEDS).filter(|&s| s != k).map(|s| SocketAddr::new(address(s), PORT).to_string()).collect(),
            interval: self.interval,
            phi_threshold: DEFAULT_PHI_THRESHOLD,
            dead_node_grace_period: Duration::from_secs(3600),
        };
        let facts = Facts {
            node_ips: NodeIps::new([ip]).map_err(LabError::other)?,
            vtep_mac: Mac::derived(&name),
            vni: DEFAULT_VNI,
            vxlan_port: DEFAULT_VXLAN_PORT,
            // As real agents announce them, for the bytes they add to the state.
            settings: settings::encode(
                &[Pool { cluster_cidr: "10.244.0.0/16".parse().expect("valid CIDR"), node_prefix: 29 }],
                self.interval,
            ),
        };
        let claim = Claim { cidr: block(k).into(), kind: ClaimKind::Confirmed, since_ms: 1 };
        let counters = GossipCounters::default();
        let kvs = facts.key_values(&[claim]);
        let gossip = Gossip::start(&settings, &name, generation, kvs, self.transport.clone(), counters.clone())
            .await
            .map_err(|e| LabError::Other(e.to_string()))?;
        let cancel = CancellationToken::new();
        let (view, _observer) = gossip.observe(cancel.clone());
        self.liveness.follow(&name, view.clone(), cancel.clone());
        Ok(Node { k, name, generation, gossip, view, counters, cancel })
    }

    /// Restarts node `i` as an agent upgrade does: it announces leaving, stops, and starts
    /// again under its name and address with the next generation.
    async fn restart(&mut self, i: usize) -> Result<()> {
        let old = self.nodes.remove(i);
        old.cancel.cancel();
        old.gossip.leave().await;
        let new = self.start_as(old.k, old.generation + 1).await?;
        self.nodes.insert(i, new);
        Ok(())
    }

    /// Stops node `i` without a word (its socket closes; peers hear nothing more).
    async fn crash(&mut self, i: usize) -> String {
        let node = self.nodes.remove(i);
        node.cancel.cancel();
        node.gossip.abort().await;
        node.name
    }
}

/// Node `k`'s underlay address (2001:db8::/32 is documentation space; nothing leaves the process).
fn address(k: usize) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, (k >> 16) as u16, k as u16))
}

/// Node `k`'s PodCIDR: a /29 of 10.244.0.0/16 (8192 of them; only the announcement's size matters).
fn block(k: usize) -> Ipv4Net {
    let base = u32::from(Ipv4Addr::new(10, 244, 0, 0));
    Ipv4Net::new(Ipv4Addr::from(base + 8 * (k as u32 % 8192)), 29).expect("valid prefix")
}

/// Every change in which peers a node's view holds live (a generation alive or leaving: what an
/// agent programs), at its virtual time.
#[derive(Clone, Default)]
struct LivenessLog(Arc<Mutex<Vec<Change>>>);

#[derive(Debug, Clone)]
struct Change {
    at: Instant,
    observer: String,
    peer: String,
    live: bool,
}

impl LivenessLog {
    /// Logs `observer`'s view until `cancel`; its first view counts as peers becoming live.
    fn follow(&self, observer: &str, mut view: watch::Receiver<Arc<View>>, cancel: CancellationToken) {
        let (log, observer) = (self.clone(), observer.to_string());
        tokio::spawn(async move {
            let mut before = BTreeSet::new();
            loop {
                let live = programmable_peers(&observer, &view.borrow_and_update());
                let at = Instant::now();
                log.0.lock().expect("not poisoned").extend(before.symmetric_difference(&live).map(|peer| Change {
                    at,
                    observer: observer.clone(),
                    peer: peer.clone(),
                    live: live.contains(peer),
                }));
                before = live;
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    changed = view.changed() => if changed.is_err() { return },
                }
            }
        });
    }

    /// The changes since `since`, per (observer, peer), in order.
    fn since(&self, since: Instant) -> BTreeMap<(String, String), Vec<(Instant, bool)>> {
        let mut pairs: BTreeMap<(String, String), Vec<(Instant, bool)>> = BTreeMap::new();
        for c in self.0.lock().expect("not poisoned").iter().filter(|c| c.at >= since) {
            pairs.entry((c.observer.clone(), c.peer.clone())).or_default().push((c.at, c.live));
        }
        pairs
    }
}

/// The peers `observer`'s view holds live. Its own earlier generations are not among them: a
/// restarted node's view holds its previous run, leaving and then left, which the agent reads
/// only for its previous claim (`peers::collect`) and never programs; counted as a peer, it made
/// every restarted node that heard of its previous run "lose sight" of itself.
fn programmable_peers(observer: &str, view: &View) -> BTreeSet<String> {
    view.members.iter().filter(|m| m.name != observer && m.liveness.programmable()).map(|m| m.name.clone()).collect()
}

/// A view in which every one of `names` but the viewer itself is alive.
fn sees_all_alive(names: Vec<String>) -> impl Fn(&View) -> bool + Clone + Send + Sync + 'static {
    move |v: &View| {
        v.members.iter().filter(|m| m.liveness == Liveness::Alive && names.contains(&m.name)).count() + 1 >= names.len()
    }
}

fn liveness(view: &View, name: &str) -> Option<Liveness> {
    view.members.iter().filter(|m| m.name == name).map(|m| m.liveness).max_by_key(|l| *l == Liveness::Alive)
}

/// How long each of `nodes` takes, from now, until `done` holds for its view (virtual time).
async fn each_sees<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    done: impl Fn(&View) -> bool + Clone + Send + Sync + 'static,
) -> Result<Vec<Duration>> {
    let start = Instant::now();
    let mut waits = JoinSet::new();
    for node in nodes {
        let (mut view, done) = (node.view.clone(), done.clone());
        waits.spawn(async move {
            tokio::time::timeout(EVENT_LIMIT, view.wait_for(|v| done(v))).await.ok()?.ok()?;
            Some(start.elapsed())
        });
    }
    let mut times = Vec::new();
    while let Some(joined) = waits.join_next().await {
        let t = joined.map_err(LabError::other)?;
        times.push(t.ok_or_else(|| LabError::Other(format!("not seen within {EVENT_LIMIT:?} (virtual)")))?);
    }
    Ok(times)
}

async fn simulate(n: usize, args: &Args) -> Result<SizeResult> {
    let mut sim = Sim {
        transport: Arc::new(ChannelTransport::with_mtu(MAX_DATAGRAM)),
        interval: Duration::from_millis(args.interval_ms),
        nodes: Vec::new(),
        started: 0,
        liveness: LivenessLog::default(),
    };
    let t0 = Instant::now();
    for _ in 0..n {
        sim.start().await?;
    }
    let all_alive = sees_all_alive(sim.nodes.iter().map(|node| node.name.clone()).collect());
    tokio::time::timeout(CONVERGE_LIMIT, async {
        for node in &sim.nodes {
            node.view.clone().wait_for(|v| all_alive(v)).await.map_err(LabError::other)?;
        }
        Ok::<_, LabError>(())
    })
    .await
    .map_err(|_| LabError::Other(format!("{n} nodes did not converge within {CONVERGE_LIMIT:?} (virtual)")))??;
    let converged_s = t0.elapsed().as_secs_f64();

    let (bytes_out, bytes_in) = traffic(&sim, Duration::from_secs(args.window)).await;

    let (mut join_per_node, mut join_everywhere) = (Vec::new(), Vec::new());
    let (mut withdrawal_per_node, mut withdrawal_everywhere) = (Vec::new(), Vec::new());
    for _ in 0..args.repeats {
        let others = sim.nodes.len();
        let i = sim.start().await?;
        let name = sim.nodes[i].name.clone();
        let times = each_sees(&sim.nodes[..others], move |v| liveness(v, &name) == Some(Liveness::Alive)).await?;
        join_everywhere.push(times.iter().copied().max().unwrap_or_default());
        join_per_node.extend(times);

        // A node well inside the cluster crashes (not a seed); in a cluster of a seed or three,
        // the last one (the node that just joined).
        let name = sim.crash((SEEDS + 1).min(sim.nodes.len() - 1)).await;
        let times =
            each_sees(&sim.nodes, move |v| matches!(liveness(v, &name), Some(Liveness::Dead | Liveness::Left) | None))
                .await?;
        withdrawal_everywhere.push(times.iter().copied().max().unwrap_or_default());
        withdrawal_per_node.extend(times);
    }
    let partition = match args.partition_secs {
        0 => None,
        secs => Some(partition(&sim, Duration::from_secs(secs), Duration::from_secs(args.window)).await?),
    };
    let before = mean(&bytes_out);
    let rolling_restart = match args.rolling_restart {
        false => None,
        true => Some(rolling_restart(&mut sim, Duration::from_secs(args.window), before).await?),
    };
    for node in sim.nodes.drain(..) {
        node.cancel.cancel();
        node.gossip.abort().await;
    }
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    Ok(SizeResult {
        nodes: n,
        converged_s,
        join_per_node: Summary::of(&join_per_node),
        join_everywhere: Summary::of(&join_everywhere),
        withdrawal_per_node: Summary::of(&withdrawal_per_node),
        withdrawal_everywhere: Summary::of(&withdrawal_everywhere),
        bytes_out_per_s_mean: mean(&bytes_out),
        bytes_out_per_s_max: max(&bytes_out),
        bytes_in_per_s_mean: mean(&bytes_in),
        bytes_in_per_s_max: max(&bytes_in),
        partition,
        rolling_restart,
    })
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Cuts the first half of the nodes off from the second for `cut`, heals, and watches for
/// `settle` after every node sees every other alive again.
async fn partition(sim: &Sim, cut: Duration, settle: Duration) -> Result<PartitionResult> {
    let half = sim.nodes.len() / 2;
    let addr = |node: &Node| SocketAddr::new(address(node.k), PORT);
    let (left, right) = sim.nodes.split_at(half);
    let start = Instant::now();
    for a in left {
        for b in right {
            sim.transport.remove_link(addr(a), addr(b)).await;
        }
    }
    tokio::time::sleep(cut).await;
    for a in left {
        for b in right {
            sim.transport.add_link(addr(a), addr(b)).await;
        }
    }
    let healed = each_sees(&sim.nodes, sees_all_alive(sim.nodes.iter().map(|n| n.name.clone()).collect())).await?;
    tokio::time::sleep(settle).await;
    let is_left: BTreeMap<&str, bool> =
        sim.nodes.iter().enumerate().map(|(i, n)| (n.name.as_str(), i < half)).collect();
    let (mut flaps, mut declared_gone) = (0, 0);
    for ((observer, peer), changes) in sim.liveness.since(start) {
        // Nodes that crashed earlier are in the log too: only the present ones count.
        let (Some(o), Some(p)) = (is_left.get(observer.as_str()), is_left.get(peer.as_str())) else { continue };
        let across = o != p;
        // Across the cut: gone once, back once. On the same side: nothing.
        let explained = if across { 2 } else { 0 };
        flaps += changes.len().saturating_sub(explained);
        declared_gone += usize::from(across && changes.first().is_some_and(|(_, live)| !live));
    }
    Ok(PartitionResult { cut_s: cut.as_secs_f64(), healed: Summary::of(&healed), flaps, declared_gone })
}

/// Restarts every node in turn, each once every other node sees its new generation alive; then
/// lets `window` pass and counts what the views hold and the traffic over another `window`.
async fn rolling_restart(sim: &mut Sim, window: Duration, out_before: f64) -> Result<RollingResult> {
    let start = Instant::now();
    let mut seen = Vec::new();
    for i in 0..sim.nodes.len() {
        let began = Instant::now();
        sim.restart(i).await?;
        let (name, generation) = (sim.nodes[i].name.clone(), sim.nodes[i].generation);
        let others = sim.nodes.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, n)| n);
        each_sees(others, move |v| {
            v.members.iter().any(|m| m.name == name && m.generation == generation && m.liveness == Liveness::Alive)
        })
        .await?;
        seen.push(began.elapsed());
    }
    tokio::time::sleep(window).await;
    let now = Instant::now();
    let present: BTreeSet<&str> = sim.nodes.iter().map(|n| n.name.as_str()).collect();
    let (lost, longest_gap) = lost_sight(&sim.liveness.since(start), &present, now);
    let held: Vec<(usize, usize)> = sim
        .nodes
        .iter()
        .map(|n| {
            let view = n.view.borrow();
            let names: BTreeSet<&str> = view.members.iter().map(|m| m.name.as_str()).collect();
            (view.members.len(), view.members.len() - names.len())
        })
        .collect();
    let (out_after, _) = traffic(sim, window).await;
    Ok(RollingResult {
        restart_seen_everywhere: Summary::of(&seen),
        lost,
        longest_gap_ms: longest_gap.as_secs_f64() * 1e3,
        members_held_max: held.iter().map(|h| h.0).max().unwrap_or(0),
        earlier_generations_held_max: held.iter().map(|h| h.1).max().unwrap_or(0),
        traffic_after_over_before: mean(&out_after) / out_before,
    })
}

/// How many (observer, peer) pairs of `present` nodes lost sight of the peer, and the longest
/// gap; a gap not closed by `now` counts until `now`. A node that crashed before is left out:
/// its death may be logged at the very instant the measurement starts.
fn lost_sight(
    pairs: &BTreeMap<(String, String), Vec<(Instant, bool)>>,
    present: &BTreeSet<&str>,
    now: Instant,
) -> (usize, Duration) {
    let (mut lost, mut longest) = (0, Duration::ZERO);
    for ((observer, peer), changes) in pairs {
        if !present.contains(observer.as_str()) || !present.contains(peer.as_str()) {
            continue;
        }
        let gaps: Vec<Duration> = changes
            .iter()
            .enumerate()
            .filter(|(_, (_, live))| !live)
            .map(|(j, (at, _))| changes.get(j + 1).map_or(now, |(back, _)| *back).duration_since(*at))
            .collect();
        lost += usize::from(!gaps.is_empty());
        longest = gaps.into_iter().fold(longest, Duration::max);
    }
    (lost, longest)
}

/// Every node's bytes per second out and in over `window` of virtual time.
async fn traffic(sim: &Sim, window: Duration) -> (Vec<f64>, Vec<f64>) {
    let read = |sim: &Sim| -> Vec<(u64, u64)> {
        sim.nodes.iter().map(|n| (n.counters.bytes_out.get(), n.counters.bytes_in.get())).collect()
    };
    let before = read(sim);
    tokio::time::sleep(window).await;
    let secs = window.as_secs_f64();
    read(sim).iter().zip(&before).map(|((o1, i1), (o0, i0))| ((o1 - o0) as f64 / secs, (i1 - i0) as f64 / secs)).unzip()
}

/// A table cell: the median and another figure of `s` (in ms), in seconds.
fn p50_and(s: &Summary, other_ms: f64) -> String {
    format!("{:.2} / {:.2} s", s.median_ms / 1000.0, other_ms / 1000.0)
}

fn table(args: &Args, results: &[SizeResult]) -> String {
    let mut out = format!(
        "gossip membership on a virtual clock, every node at {} ms, {} joins and {} crashes per size\n\n",
        args.interval_ms, args.repeats, args.repeats
    );
    let _ = writeln!(
        out,
        "| nodes | converged | join: per node p50 / p99 | join: everywhere p50 / max | crash: per node p50 / p99 | \
         crash: everywhere p50 / max | out kB/s mean (max) | in kB/s mean (max) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for r in results {
        let _ = writeln!(
            out,
            "| {} | {:.1} s | {} | {} | {} | {} | {:.1} ({:.1}) | {:.1} ({:.1}) |",
            r.nodes,
            r.converged_s,
            p50_and(&r.join_per_node, r.join_per_node.p99_ms),
            p50_and(&r.join_everywhere, r.join_everywhere.max_ms),
            p50_and(&r.withdrawal_per_node, r.withdrawal_per_node.p99_ms),
            p50_and(&r.withdrawal_everywhere, r.withdrawal_everywhere.max_ms),
            r.bytes_out_per_s_mean / 1000.0,
            r.bytes_out_per_s_max / 1000.0,
            r.bytes_in_per_s_mean / 1000.0,
            r.bytes_in_per_s_max / 1000.0,
        );
    }
    let partitions: Vec<(usize, &PartitionResult)> =
        results.iter().filter_map(|r| Some((r.nodes, r.partition.as_ref()?))).collect();
    if !partitions.is_empty() {
        let _ = writeln!(
            out,
            "\nhalf the nodes cut off from the other half, then healed\n\n\
             | nodes | cut | healed: per node p50 / max | pairs declared gone across the cut | flaps |\n|---|---|---|---|---|"
        );
        for (n, p) in partitions {
            let _ = writeln!(
                out,
                "| {n} | {:.0} s | {} | {} | {} |",
                p.cut_s,
                p50_and(&p.healed, p.healed.max_ms),
                p.declared_gone,
                p.flaps
            );
        }
    }
    let rolling: Vec<(usize, &RollingResult)> =
        results.iter().filter_map(|r| Some((r.nodes, r.rolling_restart.as_ref()?))).collect();
    if !rolling.is_empty() {
        let _ = writeln!(
            out,
            "\nevery node restarted in turn (leave, start with the next generation)\n\n\
             | nodes | new generation alive everywhere p50 / max | pairs that lost sight (longest gap) | \
             members held after, most (earlier generations among them) | traffic after / before |\n|---|---|---|---|---|"
        );
        for (n, r) in rolling {
            let _ = writeln!(
                out,
                "| {n} | {} | {} ({:.0} ms) | {} ({}) | {:.2}× |",
                p50_and(&r.restart_seen_everywhere, r.restart_seen_everywhere.max_ms),
                r.lost,
                r.longest_gap_ms,
                r.members_held_max,
                r.earlier_generations_held_max,
                r.traffic_after_over_before
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_cluster_converges_and_every_join_and_crash_is_seen_by_every_node() {
        let args = Args {
            nodes: vec![6],
            interval_ms: 100,
            repeats: 2,
            window: 1,
            partition_secs: 0,
            rolling_restart: false,
            json: true,
        };
        let results: Vec<serde_json::Value> = serde_json::from_str(&run(&args).unwrap()).unwrap();
        let r = &results[0];
        // Two joins seen by the 6 nodes present each time; two crashes seen by the 6 left each time.
        assert_eq!(r["join_per_node"]["n"], 12, "{r}");
        assert_eq!(r["withdrawal_per_node"]["n"], 12, "{r}");
        // A crash is declared by the monitors, after three pings 500 ms apart went unanswered;
        // gossip flowed both ways.
        assert!(r["withdrawal_per_node"]["min_ms"].as_f64().unwrap() >= 1000.0, "{r}");
        assert!(r["bytes_out_per_s_mean"].as_f64().unwrap() > 0.0 && r["bytes_in_per_s_mean"].as_f64().unwrap() > 0.0);
    }

    fn member(name: &str, generation: u64, liveness: Liveness) -> weft_agent::membership::Member {
        weft_agent::membership::Member { name: name.into(), generation, liveness, keys: BTreeMap::new() }
    }

    #[test]
    fn clusters_of_no_more_nodes_than_seeds_are_simulated_too() {
        // `bench convergence` runs the simulator at its lab's size, 3 by default.
        let args = Args {
            nodes: vec![2, 3],
            interval_ms: 100,
            repeats: 1,
            window: 1,
            partition_secs: 0,
            rolling_restart: false,
            json: false,
        };
        let results = simulate_sizes(&args).unwrap();
        // One join seen by the n nodes present, one crash seen by the n left.
        assert_eq!(
            results.iter().map(|r| (r.join_per_node.n, r.withdrawal_per_node.n)).collect::<Vec<_>>(),
            [(2, 2), (3, 3)]
        );
    }

    #[test]
    fn a_restarted_node_is_not_its_own_peer() {
        // node-a's second run: its first run is leaving, then left (what the sim logged as node-a
        // losing sight of node-a for the rest of the run).
        let mut view = View {
            members: vec![
                member("node-a", 1, Liveness::Leaving),
                member("node-b", 1, Liveness::Alive),
                member("node-c", 1, Liveness::Leaving),
                member("node-d", 1, Liveness::Dead),
            ],
            ..View::default()
        };
        assert_eq!(programmable_peers("node-a", &view), BTreeSet::from(["node-b".into(), "node-c".into()]));
        view.members[0].liveness = Liveness::Left;
        assert_eq!(programmable_peers("node-a", &view), BTreeSet::from(["node-b".into(), "node-c".into()]));
    }

    #[test]
    fn sight_is_lost_only_between_present_nodes_and_an_open_gap_lasts_until_now() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let pair = |o: &str, p: &str| (o.to_string(), p.to_string());
        let pairs = BTreeMap::from([
            // Back after 2 s.
            (pair("a", "b"), vec![(t0, true), (t0 + s(1), false), (t0 + s(3), true)]),
            // Gone at 4 s and not back by 10 s.
            (pair("b", "a"), vec![(t0 + s(4), false)]),
            // A node that crashed before, declared dead as the measurement starts: not a loss.
            (pair("a", "x"), vec![(t0, false)]),
            (pair("x", "a"), vec![(t0, false)]),
            // Only ever seen: no loss.
            (pair("a", "c"), vec![(t0, true)]),
        ]);
        let present = BTreeSet::from(["a", "b", "c"]);
        assert_eq!(lost_sight(&pairs, &present, t0 + s(10)), (2, s(6)));
    }

    #[test]
    fn a_partition_heals_with_no_route_withdrawn_and_a_rolling_restart_keeps_the_membership() {
        let args = Args {
            nodes: vec![6],
            interval_ms: 100,
            repeats: 1,
            window: 5,
            partition_secs: 10,
            rolling_restart: true,
            json: true,
        };
        let results: Vec<serde_json::Value> = serde_json::from_str(&run(&args).unwrap()).unwrap();
        let p = &results[0]["partition"];
        // 6 nodes, 3 on each side: each side's monitors suspect the 3 across the cut, which is
        // a suspected partition, so nobody declares anyone gone (chitchat's detector alone
        // declared all 18 pairs gone within the 10 s).
        assert_eq!(p["declared_gone"], 0, "{p}");
        assert_eq!(p["healed"]["n"], 6, "{p}");
        assert_eq!(p["flaps"], 0, "{p}");
        let r = &results[0]["rolling_restart"];
        assert_eq!(r["restart_seen_everywhere"]["n"], 6, "{r}");
        assert_eq!(r["lost"], 0, "a node lost sight of a restarting peer: {r}");
        // The earlier generations are gone from every view: the digest did not grow.
        assert_eq!(r["earlier_generations_held_max"], 0, "{r}");
    }
}
