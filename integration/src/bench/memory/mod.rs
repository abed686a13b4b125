//! `weft-lab bench memory`: where the agent's heap goes, component by component, for N peers
//! without a network. The agent's own gossip (`weft_agent::gossip::Gossip`, chitchat configured
//! as the agent configures it) learns N synthetic members over an in-memory transport through
//! the real protocol ([`feed`]); the observer turns that into the agent's membership view; then
//! the reconcile turn's pure steps (peers, verdicts, desired state, status rows, probe targets)
//! and the overlay's kept applied state are built from that view with the agent's own functions,
//! and the prober runs on the targets against a pinger that answers at once. A counting global
//! allocator (weft-lab's, `stats_alloc`) gives the live bytes each step adds and the bytes it
//! allocates on the way (an upper bound of its transient peak).
//!
//! What it leaves out: the kernel datapath's netlink snapshots of a full apply (transient, see
//! `bench dataplane`), the HTTP server and the tokio runtime (not per peer), and the allocator's
//! own overhead and fragmentation, which RSS includes and this does not.

pub mod feed;

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use clap::Args as ClapArgs;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use weft_agent::allocation::{Claim, ClaimKind};
use weft_agent::config::{Encap, GossipSettings};
use weft_agent::gossip::Gossip;
use weft_agent::gossip::keys::Facts;
use weft_agent::gossip::transport::GossipCounters;
use weft_agent::http::status;
use weft_agent::membership::{Liveness, Settle, View};
use weft_agent::probe::icmp::Pinger;
use weft_agent::probe::verdict::Dataplane;
use weft_agent::reconcile::probe_targets;
use weft_agent::validate::{Pool, Rules};
use weft_agent::{desired, peers, probe, settings};
use weft_overlay::Mac;
use weft_overlay::desired::{DEFAULT_VNI, DEFAULT_VXLAN_PORT, LocalNode, UnderlayAddr};
use weft_overlay::incremental::{Applied, Devices};
use weft_overlay::rules::DEFAULT_BRIDGE;
use weft_overlay::underlay::{Family, NodeIps};

use crate::cmd::{LabError, Result};
use feed::{Feed, Members};

/// The agent's `--gossip-interval` here: the view and the prober refresh at this pace.
const INTERVAL: Duration = Duration::from_millis(500);
const LOCAL_NAME: &str = "local";
const MTU: u32 = 1400;
/// The most members whose gossip is measured: past about 1300 the agent's digest alone fills a
/// datagram and chitchat asserts on the first Syn it answers (the limit of issue 14).
const GOSSIP_LIMIT: usize = 1000;
/// Samples of the prober's live bytes through a round.
const ROUND_SAMPLES: u32 = 20;
/// The longest wait for the observer to see every member alive.
const VIEW_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// Peer counts, each measured in a fresh runtime, e.g. `--peers 300,1000,5000`.
    #[arg(long, value_delimiter = ',', default_values_t = [1000usize, 5000])]
    pub peers: Vec<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One component: the live bytes it keeps, and what building it allocated in all (not for
/// gossip, whose figure would be the synthetic members' own work).
#[derive(Debug, Serialize)]
pub struct Part {
    pub name: &'static str,
    /// Held between turns (else a turn's or a round's working set).
    pub kept: bool,
    pub live: i64,
    pub allocated: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct MemoryResult {
    pub peers: usize,
    pub parts: Vec<Part>,
    /// What gossip and the observer allocate in one gossip interval (chitchat's rounds, the
    /// observer's refresh of the view); measured with gossip only.
    pub allocated_per_interval: Option<u64>,
}

/// The allocator's counts: live bytes and bytes allocated so far.
fn counts() -> (i64, u64) {
    let s = stats_alloc::INSTRUMENTED_SYSTEM.stats();
    let live = i64::try_from(s.bytes_allocated).unwrap_or(i64::MAX) - i64::try_from(s.bytes_deallocated).unwrap_or(0);
    (live, s.bytes_allocated as u64)
}

/// What was left live and allocated since the counts were `since`.
fn part(name: &'static str, kept: bool, since: (i64, u64)) -> Part {
    let (live, allocated) = counts();
    Part { name, kept, live: live - since.0, allocated: Some(allocated - since.1) }
}

/// Runs `f` and says what it left live and allocated on the way.
fn measure<T>(name: &'static str, kept: bool, parts: &mut Vec<Part>, f: impl FnOnce() -> T) -> T {
    let since = counts();
    let out = f();
    parts.push(part(name, kept, since));
    out
}

pub fn run(args: &Args) -> Result<String> {
    if counts().1 == 0 {
        return Err(LabError::Other("no allocation counted: run it from the weft-lab binary".into()));
    }
    let results = args.peers.iter().map(|&n| measure_agent(n)).collect::<Result<Vec<_>>>()?;
    if args.json {
        return serde_json::to_string_pretty(&results).map_err(LabError::other);
    }
    Ok(render(&results))
}

fn pool() -> Pool {
    Pool { cluster_cidr: "10.244.0.0/16".parse().expect("a CIDR"), node_prefix: 29 }
}

fn local_ip() -> IpAddr {
    "2001:db8::1".parse().expect("an address")
}

/// The local node's gossip settings: a detector that never declares a member dead (the
/// synthetic members gossip once), the agent's window otherwise.
fn gossip_settings() -> GossipSettings {
    GossipSettings {
        cluster_id: feed::CLUSTER_ID.into(),
        listen: SocketAddr::new(local_ip(), 7946),
        seeds: Vec::new(),
        interval: INTERVAL,
        phi_threshold: 1e9,
        dead_node_grace_period: Duration::from_secs(3600),
    }
}

fn runtime(paused: bool) -> Result<tokio::runtime::Runtime> {
    let built = if paused {
        tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
    };
    built.map_err(|e| LabError::Other(format!("tokio runtime: {e}")))
}

fn measure_agent(n: usize) -> Result<MemoryResult> {
    let members = Members { pool: pool(), gossip_interval: INTERVAL };
    let local_ips = NodeIps::new([local_ip()]).map_err(LabError::other)?;
    let rules = Rules {
        pools: vec![pool()],
        vni: DEFAULT_VNI,
        vxlan_port: DEFAULT_VXLAN_PORT,
        local_node_ips: local_ips,
        settings: settings::encode(&[pool()], INTERVAL),
    };
    let own_block = members.block(0)?;
    let mut parts = Vec::new();
    let facts = Facts {
        node_ips: local_ips,
        vtep_mac: Mac::derived(LOCAL_NAME),
        vni: DEFAULT_VNI,
        vxlan_port: DEFAULT_VXLAN_PORT,
        settings: rules.settings.clone(),
    };
    let own_claim = Claim { cidr: own_block, kind: ClaimKind::Confirmed, since_ms: 1 };
    let cancel = CancellationToken::new();

    let live = runtime(false)?;
    let (gossip, published) = if n <= GOSSIP_LIMIT {
        let (gossip, view_rx, observer) =
            live.block_on(measure_gossip(&members, &facts, own_claim, n, &cancel, &mut parts))?;
        let published = view_rx.borrow().clone();
        if published.members != members.view(n)?.members {
            return Err(LabError::Other("the observer's view is not the synthetic one".into()));
        }
        (Some((gossip, view_rx, observer)), published)
    } else {
        // No gossip at this size: the observer's view stood in for by the synthetic one.
        let view = measure("membership view (synthetic)", true, &mut parts, || members.view(n).map(Arc::new))?;
        (None, view)
    };

    // One reconcile turn, as `Controller::turn` takes it: the view (shared with the observer),
    // the settle tracker's shape, the peers and their verdicts, the desired state, the probe
    // targets.
    let view: Arc<View> = measure("turn: its view (shared)", false, &mut parts, || published.clone());
    drop(published);
    let mut settle = Settle::new(tokio::time::Instant::now(), Duration::ZERO, Duration::ZERO, true);
    measure("settle tracker", true, &mut parts, || settle.observe(&view, tokio::time::Instant::now()));
    let peers = measure("turn: peers (collect)", false, &mut parts, || peers::collect(&view, LOCAL_NAME, 1, &rules));
    let no_answers = BTreeSet::new();
    let decided = measure("turn: verdicts (decide)", false, &mut parts, || {
        peers::decide(
            &peers,
            LOCAL_NAME,
            &[own_claim],
            |ips| desired::path(Encap::Always, &local_ips, &[], &[Family::Ipv4], ips),
            &no_answers,
        )
    });
    let local = LocalNode {
        name: LOCAL_NAME.into(),
        underlays: vec![UnderlayAddr { ip: local_ip(), iface: "eth0".into() }],
        pod_cidrs: vec![own_block],
        cluster_cidrs: vec![pool().cluster_cidr],
        vni: DEFAULT_VNI,
        vxlan_port: DEFAULT_VXLAN_PORT,
        mtu: MTU,
        vtep_mac: Mac::derived(LOCAL_NAME),
        bridge: DEFAULT_BRIDGE.into(),
    };
    let desired = measure("desired state (kept: last attempt)", true, &mut parts, || {
        desired::build(local, decided.programmable())
    });
    if desired.peers.len() != n {
        return Err(LabError::Other(format!("{} of {n} peers to program", desired.peers.len())));
    }
    let programmed: BTreeSet<String> =
        measure("programmed names", true, &mut parts, || desired.peers.iter().map(|p| p.name.clone()).collect());
    let targets = measure("probe targets", true, &mut parts, || {
        probe_targets(&desired, &programmed, MTU).into_iter().map(Arc::new).collect::<Vec<_>>()
    });

    // The prober on a paused clock (a round of N peers takes N × 30 ms): its peak over the first
    // round (the most of samples through it), and once it published the round's verdicts.
    let paused = runtime(true)?;
    let probe_cancel = CancellationToken::new();
    let (targets_tx, results) = paused.block_on(async {
        let start = counts();
        let (targets_tx, targets_rx) = tokio::sync::watch::channel(targets);
        let (mut results, prober) = probe::spawn(Arc::new(Answering), targets_rx, INTERVAL, probe_cancel.clone());
        let round =
            probe::round_interval(INTERVAL, targets_tx.borrow().iter().map(|t| probe::round_bytes(t, [None])).sum());
        let mut peak = Part { name: "prober (its peak during a round)", kept: false, live: 0, allocated: None };
        for _ in 0..ROUND_SAMPLES {
            tokio::time::sleep(round / (ROUND_SAMPLES + 1)).await;
            peak.live = peak.live.max(counts().0 - start.0);
        }
        parts.push(peak);
        let _ = results.changed().await;
        let (live2, _) = counts();
        parts.push(Part {
            name: "prober (between rounds, with its results)",
            kept: true,
            live: live2 - start.0,
            allocated: None,
        });
        probe_cancel.cancel();
        let _ = prober.await;
        (targets_tx, results)
    });
    let probes = measure("turn: its probe results (shared)", false, &mut parts, || results.borrow().clone());
    if probes.len() != n {
        return Err(LabError::Other(format!("{} of {n} peers probed", probes.len())));
    }
    let rows = measure("status rows (kept)", true, &mut parts, || {
        decided
            .peers
            .iter()
            .map(|d| {
                let seen = view.last_seen(&d.peer.name, d.peer.generation);
                let dataplane = probes.get(&d.peer.name).cloned().unwrap_or_else(|| Arc::new(Dataplane::unknown()));
                status::peer_status(d, programmed.contains(&d.peer.name), seen, dataplane)
            })
            .collect::<Vec<_>>()
    });
    drop((probes, decided));
    drop((peers, view));

    // The overlay's applied state, kept for incremental applies.
    let devices = Devices {
        vxlan: [(Family::Ipv6, 10)].into_iter().collect(),
        underlay: [(Family::Ipv6, 2)].into_iter().collect(),
    };
    let applied = measure("dataplane applied state", true, &mut parts, || Applied::new(&desired, devices));
    if applied.is_none() {
        return Err(LabError::Other("the desired state did not validate".into()));
    }

    // Gossip and the observer running: what one interval allocates.
    let allocated_per_interval = gossip.map(|(gossip, _view, observer)| {
        live.block_on(async {
            let (_, before) = counts();
            tokio::time::sleep(INTERVAL).await;
            let allocated = counts().1 - before;
            cancel.cancel();
            let _ = observer.await;
            gossip.abort().await;
            allocated
        })
    });
    drop((results, targets_tx, rows, applied, programmed, desired, settle));
    Ok(MemoryResult { peers: n, parts, allocated_per_interval })
}

/// The agent's gossip hearing members `0..n`, and its observer's view: what each keeps.
async fn measure_gossip(
    members: &Members,
    facts: &Facts,
    own_claim: Claim,
    n: usize,
    cancel: &CancellationToken,
    parts: &mut Vec<Part>,
) -> Result<(Gossip, tokio::sync::watch::Receiver<Arc<View>>, tokio::task::JoinHandle<()>)> {
    let feed = Feed::default();
    let (live0, _) = counts();
    let gossip = Gossip::start(
        &gossip_settings(),
        LOCAL_NAME,
        1,
        facts.key_values(&[own_claim]),
        Arc::new(feed.clone()),
        GossipCounters::default(),
    )
    .await
    .map_err(LabError::other)?;
    feed::fill(&feed, gossip_settings().listen, members, n).await?;
    // A few rounds: the detector's verdicts and chitchat's copy of the live nodes.
    tokio::time::sleep(INTERVAL * 3).await;
    let heard = counts();
    parts.push(Part { name: "gossip (chitchat)", kept: true, live: heard.0 - live0, allocated: None });
    // Of which: one copy of every member's node state (chitchat's cluster state).
    let states = measure("of gossip: one copy of the node states", false, parts, || {
        (0..n)
            .map(|k| {
                let mut state = chitchat::NodeState::for_test();
                for (key, value) in members.key_values(k)? {
                    state.set(key, value);
                }
                Ok(state)
            })
            .collect::<Result<Vec<_>>>()
    })?;
    drop(states);
    let heard = counts();

    let (mut view_rx, observer) = gossip.observe(cancel.clone());
    let deadline = Instant::now() + VIEW_LIMIT;
    loop {
        let alive = view_rx.borrow_and_update().members.iter().filter(|m| m.liveness == Liveness::Alive).count();
        if alive == n {
            break;
        }
        if Instant::now() > deadline {
            let what = format!("{n} members alive in the view ({alive} are)");
            return Err(LabError::Timeout { what, secs: VIEW_LIMIT.as_secs_f64() });
        }
        let _ = tokio::time::timeout(INTERVAL * 2, view_rx.changed()).await;
    }
    tokio::time::sleep(INTERVAL * 2).await;
    parts.push(part("membership view (observer)", true, heard));
    Ok((gossip, view_rx, observer))
}

/// Every echo answered at once, every peer heard from.
struct Answering;

#[async_trait]
impl Pinger for Answering {
    async fn ping(&self, _dst: IpAddr, _size: u16, _timeout: Duration) -> Option<Duration> {
        Some(Duration::from_micros(100))
    }

    fn heard_from(&self, _src: IpAddr) -> Option<tokio::time::Instant> {
        Some(tokio::time::Instant::now())
    }
}

fn mb(bytes: f64) -> String {
    format!("{:.2}", bytes / 1e6)
}

fn render(results: &[MemoryResult]) -> String {
    let mut out = String::new();
    for r in results {
        let n = r.peers as f64;
        let rows: Vec<Vec<String>> = r
            .parts
            .iter()
            .map(|p| {
                vec![
                    p.name.to_string(),
                    if p.kept { "kept" } else { "transient" }.to_string(),
                    mb(p.live as f64),
                    format!("{:.0}", p.live as f64 / n),
                    p.allocated.map_or("-".into(), |a| mb(a as f64)),
                ]
            })
            .collect();
        let kept: i64 = r.parts.iter().filter(|p| p.kept).map(|p| p.live).sum();
        let turn: i64 = r.parts.iter().filter(|p| p.name.starts_with("turn:")).map(|p| p.live).sum();
        let _ = writeln!(out, "{} peers", r.peers);
        let headers = ["component", "held", "live MB", "bytes/peer", "allocated MB"];
        out.push_str(&crate::report::table(&headers, &rows));
        let _ = write!(
            out,
            "kept: {} MB ({:.0} bytes/peer); a turn's working set on top: {} MB",
            mb(kept as f64),
            kept as f64 / n,
            mb(turn as f64)
        );
        if let Some(allocated) = r.allocated_per_interval {
            let _ = write!(out, "; gossip allocates {} MB per {} ms round", mb(allocated as f64), INTERVAL.as_millis());
        }
        out.push_str("\n\n");
    }
    out
}
