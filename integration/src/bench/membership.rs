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
//! without a word (a crash: until every other node's detector has declared it dead); and every
//! node's traffic is counted over a window of converged gossip.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
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
}

pub fn run(args: &Args) -> Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .map_err(|e| LabError::Other(format!("runtime: {e}")))?;
    let results = args.nodes.iter().map(|&n| runtime.block_on(simulate(n, args))).collect::<Result<Vec<_>>>()?;
    if args.json {
        return Ok(serde_json::to_string_pretty(&results).expect("serializable"));
    }
    Ok(table(args, &results))
}

/// One simulated node.
struct Node {
    name: String,
    gossip: Gossip,
    view: watch::Receiver<View>,
    counters: GossipCounters,
    cancel: CancellationToken,
}

/// A simulated cluster on one in-memory network.
struct Sim {
    transport: Arc<ChannelTransport>,
    interval: Duration,
    nodes: Vec<Node>,
    /// Names handed out so far (a joining or restarted node gets a new one).
    started: usize,
}

impl Sim {
    /// Starts one more node; its index in `nodes`.
    async fn start(&mut self) -> Result<usize> {
        let k = self.started;
        self.started += 1;
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
        let gossip =
            Gossip::start(&settings, &name, 1, facts.key_values(&[claim]), self.transport.clone(), counters.clone())
                .await
                .map_err(|e| LabError::Other(e.to_string()))?;
        let cancel = CancellationToken::new();
        let (view, _observer) = gossip.observe(cancel.clone());
        self.nodes.push(Node { name, gossip, view, counters, cancel });
        Ok(self.nodes.len() - 1)
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

fn liveness(view: &View, name: &str) -> Option<Liveness> {
    view.members.iter().filter(|m| m.name == name).map(|m| m.liveness).max_by_key(|l| *l == Liveness::Alive)
}

/// How long each of `nodes` takes, from now, until `done` holds for its view (virtual time).
async fn each_sees(
    nodes: &[Node],
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
    let mut times = Vec::with_capacity(nodes.len());
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
    };
    let t0 = Instant::now();
    for _ in 0..n {
        sim.start().await?;
    }
    let names: Vec<String> = sim.nodes.iter().map(|node| node.name.clone()).collect();
    let all_alive = move |v: &View| {
        v.members.iter().filter(|m| m.liveness == Liveness::Alive && names.contains(&m.name)).count() + 1 >= names.len()
    };
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

        // A node well inside the cluster crashes (not a seed).
        let name = sim.crash(SEEDS + 1).await;
        let times =
            each_sees(&sim.nodes, move |v| matches!(liveness(v, &name), Some(Liveness::Dead | Liveness::Left) | None))
                .await?;
        withdrawal_everywhere.push(times.iter().copied().max().unwrap_or_default());
        withdrawal_per_node.extend(times);
    }
    for node in sim.nodes.drain(..) {
        node.cancel.cancel();
        node.gossip.abort().await;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
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
    })
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
            "| {} | {:.1} s | {:.2} / {:.2} s | {:.2} / {:.2} s | {:.2} / {:.2} s | {:.2} / {:.2} s | {:.1} ({:.1}) | {:.1} ({:.1}) |",
            r.nodes,
            r.converged_s,
            r.join_per_node.median_ms / 1000.0,
            r.join_per_node.p99_ms / 1000.0,
            r.join_everywhere.median_ms / 1000.0,
            r.join_everywhere.max_ms / 1000.0,
            r.withdrawal_per_node.median_ms / 1000.0,
            r.withdrawal_per_node.p99_ms / 1000.0,
            r.withdrawal_everywhere.median_ms / 1000.0,
            r.withdrawal_everywhere.max_ms / 1000.0,
            r.bytes_out_per_s_mean / 1000.0,
            r.bytes_out_per_s_max / 1000.0,
            r.bytes_in_per_s_mean / 1000.0,
            r.bytes_in_per_s_max / 1000.0,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_cluster_converges_and_every_join_and_crash_is_seen_by_every_node() {
        let args = Args { nodes: vec![6], interval_ms: 100, repeats: 2, window: 1, json: true };
        let results: Vec<serde_json::Value> = serde_json::from_str(&run(&args).unwrap()).unwrap();
        let r = &results[0];
        // Two joins seen by the 6 nodes present each time; two crashes seen by the 6 left each time.
        assert_eq!(r["join_per_node"]["n"], 12, "{r}");
        assert_eq!(r["withdrawal_per_node"]["n"], 12, "{r}");
        // A crash is declared only after some heartbeats were missed; gossip flowed both ways.
        assert!(r["withdrawal_per_node"]["min_ms"].as_f64().unwrap() >= 100.0, "{r}");
        assert!(r["bytes_out_per_s_mean"].as_f64().unwrap() > 0.0 && r["bytes_in_per_s_mean"].as_f64().unwrap() > 0.0);
    }
}
