//! `weft-lab bench scale`: gossip traffic and agent cost with many members. Real agents (the
//! `weft-agent` library, allocation and reconcile loop included) run in this one process over
//! chitchat's in-memory transport, each with a datapath that only counts the peers it is given.
//! So the figures are the gossip protocol's bytes per node and the agents' CPU and memory summed
//! over all members on this machine — not a kernel dataplane (see `bench dataplane` for that).

use std::fmt::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chitchat::transport::ChannelTransport;
use clap::Args as ClapArgs;
use ipnet::Ipv4Net;
use serde::Serialize;
use weft_agent::agent::Agent;
use weft_agent::config::Config;
use weft_agent::datapath::{CleanupSummary, Datapath, DatapathError};
use weft_agent::detect::Underlay;
use weft_agent::files::Paths;
use weft_overlay::ApplyReport;
use weft_overlay::desired::Desired;

use crate::cmd::{LabError, Result};

#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// Member counts, each measured in a fresh set of agents, e.g. `--members 100,300`.
    #[arg(long, value_delimiter = ',', default_values_t = [100usize])]
    pub members: Vec<usize>,
    /// Seconds of steady state measured once every member programs every other.
    #[arg(long, default_value_t = 10)]
    pub window: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct ScaleResult {
    pub members: usize,
    /// Start of all agents until every one programs all the others.
    pub converged_s: f64,
    pub window_s: f64,
    /// Gossip bytes sent per member per second in steady state (payloads, no UDP/IP headers).
    pub gossip_bytes_per_member_per_s: f64,
    pub gossip_messages_per_member_per_s: f64,
    /// CPU seconds per second of the whole process (all members), and per member.
    pub cpu_cores_total: f64,
    pub cpu_ms_per_member_per_s: f64,
    /// Resident memory of the process after the window, and growth per member over the baseline.
    pub rss_mib: f64,
    pub rss_kib_per_member: f64,
}

/// Counts the peers of the last state it was given.
#[derive(Default)]
struct CountingDatapath {
    peers: AtomicUsize,
}

#[async_trait]
impl Datapath for CountingDatapath {
    async fn apply(&self, desired: &Desired) -> std::result::Result<ApplyReport, DatapathError> {
        self.peers.store(desired.peers.len(), Ordering::SeqCst);
        Ok(ApplyReport::default())
    }

    async fn cleanup(&self) -> std::result::Result<CleanupSummary, DatapathError> {
        Ok(CleanupSummary::default())
    }
}

fn node_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 10)) + k as u32)
}

fn config(k: usize, dir: &std::path::Path) -> Config {
    let ip = node_ip(k);
    let name = format!("m{k}");
    let node_dir = dir.join(&name);
    let underlay =
        Underlay { node_ip: ip, iface: "eth0".into(), subnet: "172.16.0.0/16".parse().expect("valid"), mtu: 1500 };
    let paths = Paths {
        state_dir: node_dir.join("run"),
        cni_conf_dir: node_dir.join("net.d"),
        ipam_dir: node_dir.join("ipam"),
    };
    let seed = SocketAddr::new(node_ip(0).into(), 8473).to_string();
    let mut config = Config::with_defaults(&name, underlay, vec![seed], paths);
    config.cluster_cidr = "10.0.0.0/8".parse::<Ipv4Net>().expect("valid");
    config
}

/// (utime + stime) of this process, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    (ticks(11) + ticks(12)) / hz
}

fn rss_kib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn measure(members: usize, window: Duration) -> Result<ScaleResult> {
    let dir = crate::topology::lab_dir(&format!("{}-scale", crate::unique_prefix()));
    let rss_before = rss_kib();
    let transport = ChannelTransport::with_mtu(65_507);
    let mut agents = Vec::with_capacity(members);
    let mut datapaths = Vec::with_capacity(members);
    let start = Instant::now();
    let result = async {
        for k in 0..members {
            let dp = Arc::new(CountingDatapath::default());
            let agent = Agent::start(config(k, &dir), |_| Arc::new(transport.clone()), dp.clone())
                .await
                .map_err(|e| LabError::Other(format!("start member {k}: {e}")))?;
            agents.push(agent);
            datapaths.push(dp);
        }
        let limit = Duration::from_secs(120 + members as u64 / 5);
        while !datapaths.iter().all(|d| d.peers.load(Ordering::SeqCst) == members - 1) {
            if start.elapsed() > limit {
                let done = datapaths.iter().filter(|d| d.peers.load(Ordering::SeqCst) == members - 1).count();
                return Err(LabError::Timeout {
                    what: format!("{members} members to converge ({done} programmed all peers)"),
                    secs: limit.as_secs_f64(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let converged = start.elapsed();
        let (s0, c0, t0) = (transport.statistics(), cpu_seconds(), Instant::now());
        tokio::time::sleep(window).await;
        let (s1, c1, secs) = (transport.statistics(), cpu_seconds(), t0.elapsed().as_secs_f64());
        let rss = rss_kib();
        let per = |x: f64| x / members as f64 / secs;
        Ok(ScaleResult {
            members,
            converged_s: converged.as_secs_f64(),
            window_s: secs,
            gossip_bytes_per_member_per_s: per((s1.num_bytes_total - s0.num_bytes_total) as f64),
            gossip_messages_per_member_per_s: per((s1.num_messages_total - s0.num_messages_total) as f64),
            cpu_cores_total: (c1 - c0) / secs,
            cpu_ms_per_member_per_s: per((c1 - c0) * 1e3),
            rss_mib: rss / 1024.0,
            rss_kib_per_member: (rss - rss_before) / members as f64,
        })
    }
    .await;
    for agent in agents {
        agent.kill().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

pub fn run(args: &Args) -> Result<String> {
    if args.members.iter().any(|&m| m < 2) {
        return Err(LabError::Other("--members must all be at least 2".into()));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| LabError::Other(format!("tokio runtime: {e}")))?;
    let window = Duration::from_secs(args.window);
    let results =
        args.members.iter().map(|&m| rt.block_on(measure(m, window))).collect::<Result<Vec<ScaleResult>>>()?;
    if args.json {
        return Ok(serde_json::to_string_pretty(&results).expect("serializable"));
    }
    let mut out =
        String::from("Gossip and agent cost, all members in this process (in-memory transport, 100 ms rounds)\n");
    let _ = writeln!(
        out,
        "{:>7} {:>10} {:>14} {:>10} {:>10} {:>14} {:>9} {:>12}",
        "members", "converged", "bytes/s/member", "msgs/s/m", "CPU cores", "CPU ms/s/m", "RSS MiB", "RSS KiB/m"
    );
    for r in &results {
        let _ = writeln!(
            out,
            "{:>7} {:>9.1}s {:>14.0} {:>10.1} {:>10.2} {:>14.2} {:>9.1} {:>12.0}",
            r.members,
            r.converged_s,
            r.gossip_bytes_per_member_per_s,
            r.gossip_messages_per_member_per_s,
            r.cpu_cores_total,
            r.cpu_ms_per_member_per_s,
            r.rss_mib,
            r.rss_kib_per_member
        );
    }
    Ok(out)
}
