//! `weft-lab bench restart`: what a rolling restart of every agent does to gossip, measured as
//! an operator would see it on one node (n1): its gossip traffic and the generations its gossip
//! holds, before the restart and a while after it. Each restart is a SIGTERM and a start with the
//! same state (an upgrade), the next one only once every node has converged again.

use std::fmt::Write;
use std::thread::sleep;
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use nix::sys::signal::Signal;
use serde::Serialize;
use weft_agent::membership::Liveness;

use crate::cluster::{AgentOptions, Cluster};
use crate::cmd::Result;
use crate::topology::{Lab, LabSpec};

/// Longest wait for the cluster to converge after one restart.
const CONVERGE: Duration = Duration::from_secs(60);
/// Longest wait for an agent to stop after SIGTERM.
const STOP: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// Nodes in the lab (on two subnets behind a router); n1 is the one observed.
    #[arg(long, default_value_t = 24)]
    pub nodes: usize,
    /// Seconds over which n1's gossip traffic is averaged, before and after.
    #[arg(long, default_value_t = 10)]
    pub window: u64,
    /// Seconds to wait after the last restart has converged before measuring again.
    #[arg(long, default_value_t = 15)]
    pub settle: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// n1's gossip over one window. Bytes per message follow the digest's size whatever the load;
/// bytes per second also follow how many rounds a loaded machine manages.
#[derive(Debug, Clone, Serialize)]
pub struct Gossip {
    pub bytes_out_per_s: f64,
    pub bytes_in_per_s: f64,
    pub bytes_out_per_message: f64,
    pub bytes_in_per_message: f64,
    /// Generations of other nodes n1's gossip holds at the end of the window (`None` from an
    /// agent without `weft_gossip_members`, such as an earlier release measured for comparison).
    pub members: Option<f64>,
    /// The same by liveness, the states with any.
    pub members_by_state: Vec<(String, f64)>,
}

#[derive(Debug, Serialize)]
pub struct RestartResult {
    pub nodes: usize,
    pub before: Gossip,
    pub after: Gossip,
    /// Generations n1 held right after the last restart converged.
    pub members_right_after: Option<f64>,
    /// The whole rolling restart, from the first SIGTERM to the last convergence.
    pub rolling_restart_s: f64,
}

pub fn run(args: &Args) -> Result<String> {
    let r = measure(args)?;
    if args.json {
        return Ok(serde_json::to_string_pretty(&r).expect("serializable"));
    }
    Ok(table(&r))
}

fn measure(args: &Args) -> Result<RestartResult> {
    let lab = Lab::build(&crate::unique_prefix(), LabSpec { nodes: args.nodes, ..LabSpec::default() })?;
    let mut c = Cluster::start_some(lab, AgentOptions::default(), args.nodes)?;
    c.wait_converged(CONVERGE)?;
    let window = Duration::from_secs(args.window);
    let before = gossip(&c, window)?;
    let started = Instant::now();
    for i in 1..args.nodes {
        if let Some(agent) = c.agent(i) {
            agent.stop(Signal::SIGTERM, STOP)?;
        }
        c.start_agent(i)?;
        c.wait_converged(CONVERGE)?;
    }
    let rolling_restart_s = started.elapsed().as_secs_f64();
    let members_right_after = members(&members_by_state(&c));
    sleep(Duration::from_secs(args.settle));
    let after = gossip(&c, window)?;
    Ok(RestartResult { nodes: args.nodes, before, after, members_right_after, rolling_restart_s })
}

/// The generations n1's gossip holds, per liveness; empty from an agent without the metric.
fn members_by_state(c: &Cluster) -> Vec<(String, f64)> {
    Liveness::ALL
        .iter()
        .map(|l| l.as_str())
        .filter_map(|s| Some((s.to_string(), c.metric(0, &format!("weft_gossip_members{{state=\"{s}\"}}")).ok()?)))
        .collect()
}

/// Their total, if the agent exports them.
fn members(by_state: &[(String, f64)]) -> Option<f64> {
    (!by_state.is_empty()).then(|| by_state.iter().map(|(_, n)| n).sum())
}

/// n1's gossip counters: bytes out, bytes in, messages out, messages in.
fn counters(c: &Cluster) -> Result<[f64; 4]> {
    let read =
        |what: &str, direction: &str| c.metric(0, &format!("weft_gossip_{what}_total{{direction=\"{direction}\"}}"));
    Ok([read("bytes", "out")?, read("bytes", "in")?, read("messages", "out")?, read("messages", "in")?])
}

fn gossip(c: &Cluster, window: Duration) -> Result<Gossip> {
    let (start, t0) = (counters(c)?, Instant::now());
    sleep(window);
    let (end, secs) = (counters(c)?, t0.elapsed().as_secs_f64());
    let [bytes_out, bytes_in, messages_out, messages_in] = [0, 1, 2, 3].map(|k| end[k] - start[k]);
    let by_state = members_by_state(c);
    Ok(Gossip {
        bytes_out_per_s: bytes_out / secs,
        bytes_in_per_s: bytes_in / secs,
        bytes_out_per_message: bytes_out / messages_out,
        bytes_in_per_message: bytes_in / messages_in,
        members: members(&by_state),
        members_by_state: by_state.into_iter().filter(|(_, n)| *n > 0.0).collect(),
    })
}

fn table(r: &RestartResult) -> String {
    let mut out = format!(
        "rolling restart of {} agents (SIGTERM, start with the same state, one at a time) in {:.0} s\n\n",
        r.nodes - 1,
        r.rolling_restart_s
    );
    let _ = writeln!(out, "| n1 | before | after | after / before |");
    let _ = writeln!(out, "|---|---|---|---|");
    let row = |name: &str, b: f64, a: f64, unit: f64| {
        format!("| {name} | {:.1} | {:.1} | {:.2}× |", b / unit, a / unit, a / b)
    };
    let _ = writeln!(out, "{}", row("gossip out, kB/s", r.before.bytes_out_per_s, r.after.bytes_out_per_s, 1000.0));
    let _ = writeln!(out, "{}", row("gossip in, kB/s", r.before.bytes_in_per_s, r.after.bytes_in_per_s, 1000.0));
    let (b, a) = (&r.before, &r.after);
    let _ = writeln!(out, "{}", row("bytes per message out", b.bytes_out_per_message, a.bytes_out_per_message, 1.0));
    let _ = writeln!(out, "{}", row("bytes per message in", b.bytes_in_per_message, a.bytes_in_per_message, 1.0));
    if let (Some(before), Some(after), Some(right_after)) = (r.before.members, r.after.members, r.members_right_after) {
        let _ = writeln!(out, "{}", row("generations held", before, after, 1.0));
        let _ = writeln!(out, "\ngenerations held right after the last restart converged: {right_after}");
        let _ = writeln!(out, "after, by state: {:?}", r.after.members_by_state);
    }
    out
}
