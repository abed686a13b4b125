//! `weft-lab bench scale`: one real node in a cluster of N simulated peers. The real node is the
//! `weft-agent` binary in a lab node namespace with its kernel datapath, sealed gossip over UDP,
//! as in production; its figures come from outside the process (`/proc/<pid>`, its `/metrics`,
//! its kernel routes). The peers are simulated (`crate::swarm`): the agent's own gossip with valid
//! weft announcements, sealed with the lab's key, all sharing one namespace on the other underlay
//! subnet, behind the router. They may gossip more slowly than the real node, so that N of them
//! fit on this machine; the report gives the message rate the real node actually sees.
//!
//! Per (N, interval): the peers start and converge among themselves; then the real agent starts
//! (the node joins a cluster of N) and is timed until it has a kernel route for every peer; a
//! steady-state window measures its gossip traffic, CPU and memory; then one more peer (gossiping
//! at the real node's interval) joins and leaves, each timed to the route appearing / going, with
//! the reconciles they caused.

use std::fmt::Write;
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use ipnet::Ipv4Net;
use serde::Serialize;

use weft_agent::http::metrics::ApplyKind;

use crate::cluster::{AgentOptions, Cluster, KEY_FILE};
use crate::cmd::{LabError, Result};
use crate::swarm::{Swarm, SwarmSpec};
use crate::topology::{Family, Lab, LabSpec};
use crate::wait;

/// /26 blocks of the default cluster CIDR: 1024, room for the real node and 1022 peers.
const CLUSTER_CIDR: &str = "10.244.0.0/16";
const NODE_PREFIX: u8 = 26;
/// How often routes and counters are polled while waiting.
const POLL: Duration = Duration::from_millis(100);
/// The longest wait for one peer joining or leaving.
const EVENT_LIMIT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// Simulated peer counts, each in a fresh lab, e.g. `--peers 100,1000`.
    #[arg(long, value_delimiter = ',', default_values_t = [100usize, 1000])]
    pub peers: Vec<usize>,
    /// The real node's `--gossip-interval` in ms, each measured per peer count, e.g. `100,500,1000`.
    #[arg(long, value_delimiter = ',', default_values_t = [100u64])]
    pub gossip_interval_ms: Vec<u64>,
    /// Gossip interval of the simulated peers, in ms.
    #[arg(long, default_value_t = 1000)]
    pub peer_interval_ms: u64,
    /// Seconds of steady state measured once the real node routes every peer.
    #[arg(long, default_value_t = 20)]
    pub window: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct ScaleResult {
    pub peers: usize,
    /// The real node's gossip interval, and the simulated peers'.
    pub gossip_interval_ms: u64,
    pub peer_interval_ms: u64,
    /// `/proc/loadavg` when this measurement started.
    pub loadavg: String,
    /// Start of the peers until each one sees all the others alive.
    pub peers_converged_s: f64,
    /// Start of the real agent until it has a kernel route for every peer.
    pub programmed_s: f64,
    /// Reconciles the real node ran until then, and their summed and longest-bucket duration.
    pub initial_reconciles: u64,
    pub initial_reconcile_s: f64,
    pub window_s: f64,
    /// The real node's routes to peers at the end of the window (N unless peers flapped).
    pub routes_after_window: usize,
    /// Gossip payload of the real node (sealed datagrams, no UDP/IP headers).
    pub bytes_in_per_s: f64,
    pub bytes_out_per_s: f64,
    pub messages_in_per_s: f64,
    pub messages_out_per_s: f64,
    /// UDP datagrams the real node's namespace dropped for a full receive buffer, in the window.
    pub udp_rcvbuf_errors: u64,
    /// The real agent's CPU (cores) over the window and its resident memory after it.
    pub cpu_cores: f64,
    pub rss_mib: f64,
    /// The simulation's own CPU (this process) over the window, to judge contention.
    pub simulation_cpu_cores: f64,
    /// One more peer joining: until the real node routes it, and the reconciles meanwhile.
    pub join_s: f64,
    pub join_reconciles: u64,
    pub join_reconcile_ms: f64,
    /// That peer leaving (announced, as on SIGTERM): until the route is gone.
    pub leave_s: f64,
    pub leave_reconciles: u64,
    pub leave_reconcile_ms: f64,
}

/// The real node's counters at one moment.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    bytes_in: f64,
    bytes_out: f64,
    messages_in: f64,
    messages_out: f64,
    reconciles: f64,
    reconcile_s: f64,
    cpu_s: f64,
    simulation_cpu_s: f64,
    rcvbuf_errors: f64,
}

fn sample(c: &Cluster, pid: u32) -> Result<Sample> {
    // Every reconcile, whether its datapath apply was full or incremental.
    let reconcile = |series: &str| -> Result<f64> {
        ApplyKind::ALL
            .iter()
            .map(|kind| c.metric(0, &format!("weft_reconcile_duration_seconds_{series}{{kind=\"{}\"}}", kind.as_str())))
            .sum()
    };
    Ok(Sample {
        at: Instant::now(),
        bytes_in: c.metric(0, "weft_gossip_bytes_total{direction=\"in\"}")?,
        bytes_out: c.metric(0, "weft_gossip_bytes_total{direction=\"out\"}")?,
        messages_in: c.metric(0, "weft_gossip_messages_total{direction=\"in\"}")?,
        messages_out: c.metric(0, "weft_gossip_messages_total{direction=\"out\"}")?,
        reconciles: reconcile("count")?,
        reconcile_s: reconcile("sum")?,
        cpu_s: cpu_seconds(pid)?,
        simulation_cpu_s: cpu_seconds(std::process::id())?,
        rcvbuf_errors: udp_rcvbuf_errors(c)?,
    })
}

/// Reconciles between two samples, and their mean duration in ms.
fn reconciles(a: &Sample, b: &Sample) -> (u64, f64) {
    let n = b.reconciles - a.reconciles;
    (n as u64, if n > 0.0 { (b.reconcile_s - a.reconcile_s) / n * 1e3 } else { 0.0 })
}

fn proc_file(pid: u32, name: &str) -> Result<String> {
    let path = format!("/proc/{pid}/{name}");
    std::fs::read_to_string(&path).map_err(|e| LabError::Other(format!("read {path}: {e}")))
}

/// utime + stime of process `pid`, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = proc_file(pid, "stat")?;
    // After the command name (in parentheses) come the fields from 3 (state) on: utime is 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    let (Some(utime), Some(stime)) = (ticks(11), ticks(12)) else {
        return Err(LabError::Other(format!("no utime/stime in /proc/{pid}/stat")));
    };
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    Ok((utime + stime) / hz)
}

fn rss_kib(pid: u32) -> Result<f64> {
    proc_file(pid, "status")?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| LabError::Other(format!("no VmRSS in /proc/{pid}/status")))
}

/// `Udp: … RcvbufErrors` of the real node's namespace (/proc/net/snmp: a header line, then values).
fn udp_rcvbuf_errors(c: &Cluster) -> Result<f64> {
    let snmp = c.lab.nodes[0].ns.run("cat", &["/proc/net/snmp"])?;
    let udp: Vec<Vec<&str>> =
        snmp.lines().filter_map(|l| l.strip_prefix("Udp:")).map(|l| l.split_whitespace().collect()).collect();
    let found = match udp.as_slice() {
        [names, values, ..] => names.iter().position(|n| *n == "RcvbufErrors").and_then(|i| values.get(i)),
        _ => None,
    };
    found.and_then(|v| v.parse().ok()).ok_or_else(|| LabError::Other("no Udp RcvbufErrors in /proc/net/snmp".into()))
}

/// Destinations of the routes weft installed on the real node.
fn routes(c: &Cluster) -> Result<Vec<String>> {
    let out = c.lab.nodes[0].ns.ip(&["route", "show", "proto", "87"])?;
    Ok(out.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect())
}

/// Waits until the real node has (`present`) or lacks a route for `block`; how long it took.
fn wait_route(c: &Cluster, block: Ipv4Net, present: bool) -> Result<Duration> {
    let start = Instant::now();
    let what = format!("the real node to {} {block}", if present { "route" } else { "withdraw" });
    let block = block.to_string();
    wait::until(&what, EVENT_LIMIT, POLL, || (routes(c).is_ok_and(|r| r.contains(&block)) == present).then_some(()))?;
    Ok(start.elapsed())
}

fn cluster_cidr() -> Ipv4Net {
    CLUSTER_CIDR.parse().expect("valid CIDR")
}

fn measure(peers: usize, interval_ms: u64, args: &Args) -> Result<ScaleResult> {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string();
    let lab = Lab::build(&crate::unique_prefix(), LabSpec { nodes: 2, subnets: 2, gro: true, underlay: Family::Ipv4 })?;
    let cluster_cidr = cluster_cidr();
    let spec = SwarmSpec {
        netns: lab.nodes[1].ns.path(),
        ip: lab.nodes[1].ip,
        key_file: lab.nodes[1].path(KEY_FILE),
        cluster_cidr,
        prefix: NODE_PREFIX,
        gossip_interval: Duration::from_millis(interval_ms),
    };
    let real_block = cluster_cidr.subnets(NODE_PREFIX).ok().and_then(|mut b| b.next()).expect("a first block");
    // The real node is node 0; node 1 only hosts the swarm. Agents get the lab's cluster key.
    let mut c = Cluster::start_some(lab, AgentOptions::default(), 0)?;
    // Declared after the cluster, so dropped before it: its threads sit in a lab namespace.
    let mut swarm = Swarm::new(spec)?;
    c.options.extra_args = vec![
        format!("--gossip-interval={interval_ms}ms"),
        format!("--cluster-cidr={CLUSTER_CIDR}"),
        format!("--node-cidr-prefix={NODE_PREFIX}"),
        format!("--pod-cidr={real_block}"),
        format!("--peers={}", swarm.seed()),
    ];

    let start = Instant::now();
    for _ in 0..peers {
        swarm.add(Duration::from_millis(args.peer_interval_ms))?;
    }
    // Bounds for the simulation converging and for the real node programming every peer: far
    // beyond what was measured, only to never hang (the simulation needs 2–4 min for 1000).
    let limit = Duration::from_secs(60 + peers as u64 / 2);
    let mut seen = 0;
    wait::until(&format!("{peers} simulated peers to see each other"), limit, Duration::from_millis(500), || {
        seen = swarm.min_live();
        (seen >= peers).then_some(())
    })
    .map_err(|e| LabError::Other(format!("{e} (the worst-informed one saw {seen} alive)")))?;
    let peers_converged = start.elapsed();

    let start = Instant::now();
    c.start_agent(0)?;
    let pid = c.agents[0].as_ref().expect("just started").pid();
    let mut routed = 0;
    wait::until(&format!("the real node to route {peers} peers"), limit, POLL, || {
        routed = routes(&c).map_or(0, |r| r.len());
        (routed >= peers).then_some(())
    })
    .map_err(|e| LabError::Other(format!("{e} (it routed {routed})")))?;
    let programmed = start.elapsed();
    let (initial_reconciles, initial_reconcile_s) = {
        let s = sample(&c, pid)?;
        (s.reconciles as u64, s.reconcile_s)
    };

    let s0 = sample(&c, pid)?;
    std::thread::sleep(Duration::from_secs(args.window));
    let s1 = sample(&c, pid)?;
    let rss = rss_kib(pid)?;
    let routes_after_window = routes(&c)?.len();
    let secs = s1.at.duration_since(s0.at).as_secs_f64();
    let rate = |f: fn(&Sample) -> f64| (f(&s1) - f(&s0)) / secs;

    // The peer that joins and leaves gossips as often as the real node, like an agent would.
    let joiner = swarm.add_agent_like(Duration::from_millis(interval_ms))?;
    let block = swarm.block(joiner)?;
    let j0 = sample(&c, pid)?;
    let join = wait_route(&c, block, true)?;
    let j1 = sample(&c, pid)?;
    swarm.leave(joiner);
    let leave = wait_route(&c, block, false)?;
    let l1 = sample(&c, pid)?;
    let (join_reconciles, join_reconcile_ms) = reconciles(&j0, &j1);
    let (leave_reconciles, leave_reconcile_ms) = reconciles(&j1, &l1);

    Ok(ScaleResult {
        peers,
        gossip_interval_ms: interval_ms,
        peer_interval_ms: args.peer_interval_ms,
        loadavg,
        peers_converged_s: peers_converged.as_secs_f64(),
        programmed_s: programmed.as_secs_f64(),
        initial_reconciles,
        initial_reconcile_s,
        window_s: secs,
        routes_after_window,
        bytes_in_per_s: rate(|s| s.bytes_in),
        bytes_out_per_s: rate(|s| s.bytes_out),
        messages_in_per_s: rate(|s| s.messages_in),
        messages_out_per_s: rate(|s| s.messages_out),
        udp_rcvbuf_errors: (s1.rcvbuf_errors - s0.rcvbuf_errors) as u64,
        cpu_cores: rate(|s| s.cpu_s),
        rss_mib: rss / 1024.0,
        simulation_cpu_cores: rate(|s| s.simulation_cpu_s),
        join_s: join.as_secs_f64(),
        join_reconciles,
        join_reconcile_ms,
        leave_s: leave.as_secs_f64(),
        leave_reconciles,
        leave_reconcile_ms,
    })
}

pub fn run(args: &Args) -> Result<String> {
    // One block for the real node and one for the peer that joins at N.
    let max = (1usize << (NODE_PREFIX - cluster_cidr().prefix_len())) - 2;
    if args.peers.iter().any(|&p| p == 0 || p > max) {
        return Err(LabError::Other(format!("--peers must all be 1..={max}")));
    }
    let mut results = Vec::new();
    for &peers in &args.peers {
        for &interval in &args.gossip_interval_ms {
            results.push(measure(peers, interval, args)?);
        }
    }
    if args.json {
        return Ok(serde_json::to_string_pretty(&results).expect("serializable"));
    }
    Ok(table(&results))
}

fn table(results: &[ScaleResult]) -> String {
    let mut out = String::from(
        "One real weft-agent (kernel datapath, sealed UDP gossip) among N simulated peers\n\
         (programmed: agent start to a route for every peer; traffic: sealed payload, no UDP/IP headers)\n",
    );
    let _ = writeln!(
        out,
        "{:>5} {:>6} {:>6} {:>10} {:>11} {:>10} {:>10} {:>8} {:>8} {:>6} {:>6} {:>5} {:>14} {:>14}",
        "peers",
        "gossip",
        "peers@",
        "programmed",
        "reconciles",
        "in kB/s",
        "out kB/s",
        "in msg/s",
        "out m/s",
        "CPU",
        "RSS",
        "drops",
        "join (rec ms)",
        "leave (rec ms)"
    );
    for r in results {
        let _ = writeln!(
            out,
            "{:>5} {:>4}ms {:>4}ms {:>9.1}s {:>4} {:>5.2}s {:>10.1} {:>10.1} {:>8.1} {:>8.1} {:>6.2} {:>5.0}M {:>5} {:>6.2}s ({:>4.0}) {:>6.2}s ({:>4.0})",
            r.peers,
            r.gossip_interval_ms,
            r.peer_interval_ms,
            r.programmed_s,
            r.initial_reconciles,
            r.initial_reconcile_s,
            r.bytes_in_per_s / 1e3,
            r.bytes_out_per_s / 1e3,
            r.messages_in_per_s,
            r.messages_out_per_s,
            r.cpu_cores,
            r.rss_mib,
            r.udp_rcvbuf_errors,
            r.join_s,
            r.join_reconcile_ms,
            r.leave_s,
            r.leave_reconcile_ms
        );
    }
    for r in results {
        let _ = writeln!(
            out,
            "N={} @{}ms: peers converged in {:.1}s; {} of {} routes after the window; simulation used {:.2} cores; load {}",
            r.peers,
            r.gossip_interval_ms,
            r.peers_converged_s,
            r.routes_after_window,
            r.peers,
            r.simulation_cpu_cores,
            r.loadavg
        );
    }
    out
}
