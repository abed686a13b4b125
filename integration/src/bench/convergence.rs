//! `weft-lab bench convergence`: how long real agents in a lab take to program a joining node on
//! every peer, and to withdraw it after SIGKILL and after SIGTERM. The proof is the kernel route
//! for the node's PodCIDR in every other node's namespace (`ip route show proto 87`).
//!
//! A joining node is routed by its peers as soon as they hear its claim; it confirms the claim
//! (and only then writes its CNI config, so that pods can start) after the confirmation window.
//! Both times are reported: "routed on every peer" is what the target is about, "confirmed" is
//! when the node's first pod can start.
//!
//! Per cluster size N: agents run on N − 1 nodes until converged; each repeat then starts the last
//! node's agent with empty state (no lease, so it allocates: the join of a new node), kills it with
//! SIGKILL, starts it again keeping its state (a restart holding its lease) and stops it with
//! SIGTERM, each time unplugging the node as well (a stopped agent whose node still answers keeps
//! its routes: that is not a node going away). Every event waits for the previous one to be
//! complete on every node.
//!
//! Gossip's own part is timed too, from the agents' logs (`member liveness changed`): from the
//! joining agent's start until every peer's gossip saw it alive, and from SIGKILL until every
//! peer's failure detector declared it dead. The same figures from the simulator (`bench
//! membership`) at the same size are put beside them: this is how the simulator is validated
//! against real agents.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::time::{Duration, Instant, SystemTime};

use clap::Args as ClapArgs;
use nix::sys::signal::Signal;
use serde::Serialize;

use super::agent_log;
use super::membership;
use super::stats::Summary;
use crate::cluster::{AgentOptions, Cluster};
use crate::cmd::{LabError, Result};
use crate::topology::{Family, Lab, LabSpec};
use crate::wait;

/// Longest wait for any one event; far beyond the expected seconds, only to never hang.
const LIMIT: Duration = Duration::from_secs(30);
/// Pause between two polling rounds over the peers (each round runs `ip` once per peer).
const POLL: Duration = Duration::from_millis(2);
/// The target: a joining node programmed on every peer within 1 s (p99) at 10 nodes.
const JOIN_TARGET_MS: f64 = 1000.0;
/// The agents' gossip interval, which the simulator is run with.
const GOSSIP_INTERVAL_MS: u64 = 100;
/// How far the simulator's median may be from the real agents' for the same event: two gossip
/// rounds (the simulator's clock moves in whole rounds, a real agent's rounds start at any
/// phase) or a quarter of the real median, whichever is larger.
const TOLERANCE_ROUNDS: f64 = 2.0;
const TOLERANCE_FRACTION: f64 = 0.25;
/// What an agent logs when its gossip view changes a member's liveness.
const LIVENESS_CHANGED: &str = "member liveness changed";

#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// Cluster sizes, each measured in its own lab (at least 2), e.g. `--nodes 3,10,20`.
    #[arg(long, value_delimiter = ',', default_values_t = [3usize, 10])]
    pub nodes: Vec<usize>,
    /// Join/SIGKILL/join/SIGTERM cycles per cluster size.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct SizeResult {
    pub nodes: usize,
    pub repeats: usize,
    /// Agent started (empty state) until every other node has a kernel route for its PodCIDR.
    pub join: Summary,
    /// Agent started (empty state) until it reports its PodCIDR confirmed (pods can start).
    pub join_confirmed: Summary,
    /// The same after its routes were withdrawn, restarting with its lease (state dir kept).
    pub restart_with_lease: Summary,
    /// SIGKILL sent until no other node has the route any more.
    pub sigkill_withdrawn: Summary,
    /// SIGTERM sent until no other node has the route any more.
    pub sigterm_withdrawn: Summary,
    /// Gossip alone, from the agents' logs: a new node's agent started until the last peer saw
    /// it alive.
    pub gossip_join_everywhere: Summary,
    /// SIGKILL sent until the last peer's failure detector declared the node dead.
    pub gossip_sigkill_everywhere: Summary,
    /// The simulator's figures for the same events at the same size.
    pub simulated_join_everywhere: Summary,
    pub simulated_crash_everywhere: Summary,
    pub join_ms: Vec<f64>,
    pub join_confirmed_ms: Vec<f64>,
    pub restart_with_lease_ms: Vec<f64>,
    pub sigkill_withdrawn_ms: Vec<f64>,
    pub sigterm_withdrawn_ms: Vec<f64>,
    pub gossip_join_everywhere_ms: Vec<f64>,
    pub gossip_sigkill_everywhere_ms: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct Convergence {
    pub sizes: Vec<SizeResult>,
    pub join_target_p99_ms: f64,
}

pub fn run(args: &Args) -> Result<String> {
    crate::require_root();
    if args.repeats == 0 || args.nodes.iter().any(|&n| n < 2) {
        return Err(LabError::Other("--nodes must all be at least 2 and --repeats at least 1".into()));
    }
    let sizes = args.nodes.iter().map(|&n| measure(n, args.repeats)).collect::<Result<Vec<_>>>()?;
    let c = Convergence { sizes, join_target_p99_ms: JOIN_TARGET_MS };
    if args.json {
        return Ok(serde_json::to_string_pretty(&c).expect("serializable"));
    }
    Ok(table(&c))
}

fn ms(samples: &[Duration]) -> Vec<f64> {
    samples.iter().map(|d| (d.as_secs_f64() * 1e6).round() / 1e3).collect()
}

/// One lab of `n` nodes, `repeats` cycles of the last node.
pub fn measure(n: usize, repeats: usize) -> Result<SizeResult> {
    let lab = Lab::build(&crate::unique_prefix(), LabSpec { nodes: n, subnets: 2, gro: true, underlay: Family::Ipv4 })?;
    let mut c = Cluster::start_some(lab, AgentOptions::default(), n - 1)?;
    c.wait_converged(Duration::from_secs(60))?;
    let last = n - 1;
    let (mut join, mut confirmed, mut restart, mut killed, mut termed) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut gossip_join, mut gossip_killed) = (vec![], vec![]);
    for _ in 0..repeats {
        for signal in [Signal::SIGKILL, Signal::SIGTERM] {
            let fresh = signal == Signal::SIGKILL;
            let joined = join_once(&mut c, last, fresh)?;
            let cidr = joined.cidr;
            if fresh {
                join.push(joined.routed);
                confirmed.push(joined.confirmed);
                gossip_join.push(gossip_saw(&c, last, joined.started, &joined.generation, "alive")?);
            } else {
                restart.push(joined.routed)
            }
            // The whole cluster settles (every node programs every other) before the next event.
            c.wait_converged(LIMIT)?;
            // The node dies with its agent: a stopped agent alone keeps its routes while its
            // tunnel answers.
            let agent = c.agent(last).expect("just started");
            let start = Instant::now();
            let sent = SystemTime::now();
            agent.signal(signal)?;
            c.lab.set_cable(last, false)?;
            routes_on_peers(&c, last, &cidr, false)?;
            let elapsed = start.elapsed();
            c.lab.set_cable(last, true)?;
            match signal {
                Signal::SIGKILL => {
                    killed.push(elapsed);
                    gossip_killed.push(gossip_saw(&c, last, sent, &joined.generation, "dead")?);
                }
                _ => termed.push(elapsed),
            }
            let agent = c.agent(last).expect("still tracked");
            wait::until("the stopped agent to exit", LIMIT, Duration::from_millis(10), || {
                (!agent.running()).then_some(())
            })?;
            c.agents[last] = None;
        }
    }
    drop(c);
    let simulated = membership::simulate_sizes(&membership::Args {
        nodes: vec![n],
        interval_ms: GOSSIP_INTERVAL_MS,
        repeats,
        window: 1,
        partition_secs: 0,
        rolling_restart: false,
        json: false,
    })?
    .pop()
    .expect("one size simulated");
    Ok(SizeResult {
        nodes: n,
        repeats,
        join: Summary::of(&join),
        join_confirmed: Summary::of(&confirmed),
        restart_with_lease: Summary::of(&restart),
        sigkill_withdrawn: Summary::of(&killed),
        sigterm_withdrawn: Summary::of(&termed),
        gossip_join_everywhere: Summary::of(&gossip_join),
        gossip_sigkill_everywhere: Summary::of(&gossip_killed),
        simulated_join_everywhere: simulated.join_everywhere,
        simulated_crash_everywhere: simulated.withdrawal_everywhere,
        join_ms: ms(&join),
        join_confirmed_ms: ms(&confirmed),
        restart_with_lease_ms: ms(&restart),
        sigkill_withdrawn_ms: ms(&killed),
        sigterm_withdrawn_ms: ms(&termed),
        gossip_join_everywhere_ms: ms(&gossip_join),
        gossip_sigkill_everywhere_ms: ms(&gossip_killed),
    })
}

struct Joined {
    cidr: String,
    /// When the agent logged its start (gossip is running by then), and its generation.
    started: SystemTime,
    generation: String,
    /// Until every peer routes the PodCIDR the node ends up with.
    routed: Duration,
    /// Until the node reports that PodCIDR as its own.
    confirmed: Duration,
}

/// Starts node `i`'s agent (with empty state if `fresh`) and times the join.
fn join_once(c: &mut Cluster, i: usize, fresh: bool) -> Result<Joined> {
    let node = &c.lab.nodes[i];
    for dir in ["run", "net.d", "ipam"].into_iter().filter(|_| fresh) {
        let path = node.path(dir);
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|e| LabError::Other(format!("remove {}: {e}", path.display())))?;
        }
    }
    let peers: Vec<usize> = (0..c.lab.nodes.len()).filter(|&k| k != i).collect();
    let before = peers.iter().map(|&k| weft_routes(c, k)).collect::<Result<Vec<_>>>()?;
    let start = Instant::now();
    let launched = SystemTime::now();
    c.start_agent(i)?;
    // The CIDR is not known until the node has picked it: wait for a route every peer gained.
    let tentative = wait::until("a new PodCIDR routed on every peer", LIMIT, POLL, || {
        let mut common: Option<BTreeSet<String>> = None;
        for (k, old) in peers.iter().zip(&before) {
            let new: BTreeSet<String> = weft_routes(c, *k).ok()?.difference(old).cloned().collect();
            common = Some(match common {
                None => new,
                Some(c) => c.intersection(&new).cloned().collect(),
            });
        }
        common.and_then(|c| c.into_iter().next())
    })?;
    let mut routed = start.elapsed();
    let what = format!("{} to report its PodCIDR", c.lab.nodes[i].name);
    let cidr = wait::until(&what, LIMIT, POLL, || c.pod_cidr(i).ok())?;
    let confirmed = start.elapsed();
    if cidr != tentative {
        // The first claim lost a conflict: the join is complete when the final block is routed.
        routes_on_peers(c, i, &cidr, true)?;
        routed = start.elapsed();
    }
    let log = agent_log_of(c, i)?;
    let name = c.lab.nodes[i].name.as_str();
    let start_line = agent_log::line_at_or_after(&log, launched, "agent started", &[("node", name)]);
    let Some((started, Some(generation))) = start_line.map(|(at, line)| (at, agent_log::field(line, "generation")))
    else {
        return Err(LabError::Other(format!("{name}'s agent log has no start line since it was started")));
    };
    Ok(Joined { cidr, started, generation: generation.to_string(), routed, confirmed })
}

fn agent_log_of(c: &Cluster, k: usize) -> Result<String> {
    let path = c.lab.nodes[k].path("agent.log");
    std::fs::read_to_string(&path).map_err(|e| LabError::Other(format!("read {}: {e}", path.display())))
}

/// How long after `since` the last peer of node `i` logged generation `generation` of it as
/// `liveness` (waiting briefly for a line still being written).
fn gossip_saw(c: &Cluster, i: usize, since: SystemTime, generation: &str, liveness: &str) -> Result<Duration> {
    let name = c.lab.nodes[i].name.as_str();
    let fields = [("peer", name), ("generation", generation), ("liveness", liveness)];
    let mut latest = since;
    for k in (0..c.lab.nodes.len()).filter(|&k| k != i) {
        let what = format!("{}'s log to say {name} (generation {generation}) is {liveness}", c.lab.nodes[k].name);
        let seen = wait::until(&what, Duration::from_secs(2), Duration::from_millis(20), || {
            agent_log::line_at_or_after(&agent_log_of(c, k).ok()?, since, LIVENESS_CHANGED, &fields).map(|(at, _)| at)
        })?;
        latest = latest.max(seen);
    }
    Ok(latest.duration_since(since).unwrap_or_default())
}

/// The destinations of the routes weft installed on node `k`.
fn weft_routes(c: &Cluster, k: usize) -> Result<BTreeSet<String>> {
    let out = c.lab.nodes[k].ns.ip(&["route", "show", "proto", "87"])?;
    Ok(out.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect())
}

/// Waits until every node except `i` has (`present`) or lacks a kernel route for `cidr`.
fn routes_on_peers(c: &Cluster, i: usize, cidr: &str, present: bool) -> Result<()> {
    let mut pending: Vec<usize> = (0..c.lab.nodes.len()).filter(|&k| k != i).collect();
    let what = format!("{cidr} to be {} on every peer", if present { "routed" } else { "withdrawn" });
    wait::until(&what, LIMIT, POLL, || {
        pending.retain(|&k| {
            let routed =
                c.lab.nodes[k].ns.ip(&["route", "show", "exact", cidr]).is_ok_and(|out| !out.trim().is_empty());
            routed != present
        });
        pending.is_empty().then_some(())
    })
}

fn table(c: &Convergence) -> String {
    let mut out = String::from(
        "Convergence with real agents (2 subnets, 100 ms gossip rounds): kernel route for the PodCIDR on every peer\n",
    );
    let _ =
        writeln!(out, "{:>5}  {:<28} {:>3} {:>9} {:>9} {:>9} {:>9}", "nodes", "event", "n", "p50", "p99", "min", "max");
    for s in &c.sizes {
        for (name, sum) in [
            ("join: routed on every peer", &s.join),
            ("join: PodCIDR confirmed", &s.join_confirmed),
            ("SIGKILL -> withdrawn", &s.sigkill_withdrawn),
            ("restart with lease", &s.restart_with_lease),
            ("SIGTERM -> withdrawn", &s.sigterm_withdrawn),
        ] {
            let _ = writeln!(
                out,
                "{:>5}  {name:<28} {:>3} {:>7.0}ms {:>7.0}ms {:>7.0}ms {:>7.0}ms",
                s.nodes, sum.n, sum.median_ms, sum.p99_ms, sum.min_ms, sum.max_ms
            );
        }
    }
    let _ = writeln!(
        out,
        "\nGossip alone, real agents (their logs) against the simulator (bench membership, {GOSSIP_INTERVAL_MS} ms, \
         same size); tolerance: {TOLERANCE_ROUNDS} rounds or {:.0} % of the real median, whichever is larger",
        TOLERANCE_FRACTION * 100.0
    );
    let _ = writeln!(
        out,
        "{:>5}  {:<34} {:>16} {:>16} {:>9}  verdict",
        "nodes", "event (last peer)", "real p50 (max)", "sim p50 (max)", "sim-real"
    );
    for s in &c.sizes {
        for (name, real, sim) in [
            ("join: seen alive everywhere", &s.gossip_join_everywhere, &s.simulated_join_everywhere),
            ("SIGKILL: declared dead everywhere", &s.gossip_sigkill_everywhere, &s.simulated_crash_everywhere),
        ] {
            let difference = sim.median_ms - real.median_ms;
            let tolerance = (TOLERANCE_ROUNDS * GOSSIP_INTERVAL_MS as f64).max(TOLERANCE_FRACTION * real.median_ms);
            let verdict = if difference.abs() <= tolerance { "within" } else { "OUTSIDE" };
            let _ = writeln!(
                out,
                "{:>5}  {name:<34} {:>7.0} ({:>5.0}) ms {:>7.0} ({:>5.0}) ms {:>+7.0}ms  {verdict}",
                s.nodes, real.median_ms, real.max_ms, sim.median_ms, sim.max_ms, difference
            );
        }
    }
    for s in c.sizes.iter().filter(|s| s.nodes == 10) {
        let verdict = if s.join.p99_ms <= c.join_target_p99_ms { "met" } else { "MISSED" };
        let _ = writeln!(
            out,
            "target: join p99 <= {:.0} ms at 10 nodes: {:.0} ms, {verdict}",
            c.join_target_p99_ms, s.join.p99_ms
        );
    }
    out
}
