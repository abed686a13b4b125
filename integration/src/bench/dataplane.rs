//! Apply latency of the overlay dataplane at scale. Runs in a namespace of its own with a veth
//! as underlay; the peers are synthetic, all on the VXLAN path (neighbour + FDB entry + route each,
//! the most kernel objects per peer, plus the peer's node IP in the VXLAN allow-list), with node
//! IPs that need no reachability.
//!
//! Three figures, median and p95 over repeats: an apply of N peers on an empty namespace, an
//! apply changing one peer (alternately adding and removing it), and an apply with nothing to
//! change (which must also write nothing).

use std::fmt::Write;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use ipnet::Ipv4Net;
use weft_overlay::desired::{DEFAULT_VNI, DEFAULT_VXLAN_PORT, Desired, LocalNode, Peer, PeerPath, UnderlayAddr};
use weft_overlay::rules::DEFAULT_BRIDGE;
use weft_overlay::{ApplyReport, CleanupOptions, Dataplane, Mac};

use super::stats::Summary;
use crate::cmd::{LabError, Result};
use crate::dataplane::runtime;
use crate::netns::Netns;
use crate::netns::within;

#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// Number of peers.
    #[arg(long, default_value_t = 1000)]
    pub peers: usize,
    /// Repeats of the apply from empty (each preceded by an untimed cleanup).
    #[arg(long, default_value_t = 10)]
    pub repeats_empty: usize,
    /// Repeats of the one-peer change and of the no-op apply.
    #[arg(long, default_value_t = 200)]
    pub repeats: usize,
}

const NODE_IP: &str = "192.0.2.10/24";

pub fn run(args: &Args) -> Result<String> {
    crate::require_root();
    if args.peers == 0 || args.peers > 60_000 || args.repeats == 0 || args.repeats_empty == 0 {
        return Err(LabError::Other("peers must be 1..=60000 and repeats at least 1".into()));
    }
    let ns = Netns::create(&format!("{}-bench", crate::unique_prefix()))?;
    // The underlay: one end of a veth pair (this kernel has no dummy driver).
    ns.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer"])?;
    ns.ip(&["addr", "add", NODE_IP, "dev", "eth0"])?;
    ns.ip(&["link", "set", "eth0-peer", "up"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    let args = args.clone();
    let figures = within(&ns.path(), move || measure(&args))??;
    Ok(figures)
}

fn measure(args: &Args) -> Result<String> {
    runtime()?.block_on(async {
        let dp = Dataplane::new().map_err(LabError::other)?;
        let full = desired(args.peers);
        let mut less = full.clone();
        less.peers.pop();

        let mut from_empty = Vec::with_capacity(args.repeats_empty);
        for _ in 0..args.repeats_empty {
            dp.cleanup(&CleanupOptions::default()).await.map_err(LabError::other)?;
            let (took, report) = timed(&dp, &full).await?;
            check(&report, |r| r.created >= 3 * args.peers, "a full apply")?;
            from_empty.push(took);
        }
        let mut one_peer = Vec::with_capacity(args.repeats);
        for i in 0..args.repeats {
            let d = if i % 2 == 0 { &less } else { &full };
            pause_as_the_agent_does().await;
            let (took, report) = timed(&dp, d).await?;
            // Neighbour, FDB entry, route and the peer's element in the VXLAN allow-list.
            check(&report, |r| r.writes() == 4, "a one-peer change")?;
            one_peer.push(took);
        }
        let mut noop = Vec::with_capacity(args.repeats);
        for _ in 0..args.repeats {
            pause_as_the_agent_does().await;
            let (took, report) = timed(&dp, &full).await?;
            check(&report, |r| r.writes() == 0, "a no-op apply")?;
            noop.push(took);
        }
        dp.cleanup(&CleanupOptions::default()).await.map_err(LabError::other)?;

        let mut out = format!(
            "dataplane apply, {} peers (VXLAN path: neighbour + FDB + route + allow-list element each), {} cores, kernel {}\n",
            args.peers,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel_release(),
        );
        let _ = writeln!(out, "{:<28} {:>6} {:>10} {:>10} {:>8}", "case", "runs", "median", "p95", "target");
        for (name, samples, target) in [
            ("apply from empty", &from_empty, "1 s"),
            ("one-peer change", &one_peer, "5 ms"),
            ("nothing to change (0 writes)", &noop, "20 ms"),
        ] {
            let s = Summary::of(samples);
            let _ = writeln!(out, "{name:<28} {:>6} {:>7.2} ms {:>7.2} ms {target:>8}", s.n, s.median_ms, s.p95_ms);
        }
        Ok(out)
    })
}

/// The synthetic node and its peers: cluster 10.0.0.0/8, peer k gets 10.(k/256).(k%256).0/24.
fn desired(peers: usize) -> Desired {
    let cluster: Ipv4Net = "10.0.0.0/8".parse().expect("valid CIDR");
    let subnet =
        |k: usize| Ipv4Net::new(Ipv4Addr::new(10, (k >> 8) as u8, (k & 0xff) as u8, 0), 24).expect("valid /24");
    let node_ip: Ipv4Net = NODE_IP.parse().expect("valid address");
    Desired {
        local: LocalNode {
            name: "bench".into(),
            underlays: vec![UnderlayAddr { ip: node_ip.addr().into(), iface: "eth0".into() }],
            pod_cidrs: vec![subnet(0).into()],
            cluster_cidrs: vec![cluster.into()],
            vni: DEFAULT_VNI,
            vxlan_port: DEFAULT_VXLAN_PORT,
            mtu: 1450,
            vtep_mac: Mac::derived("bench"),
            bridge: DEFAULT_BRIDGE.into(),
        },
        peers: (1..=peers)
            .map(|k| Peer {
                name: format!("peer-{k}"),
                node_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + k as u32).into(),
                pod_cidrs: vec![subnet(k).into()],
                vtep_mac: Mac::derived(&format!("peer-{k}")),
                path: PeerPath::Vxlan,
            })
            .collect(),
    }
}

/// The agent applies at most once per debounce window, so the kernel has finished releasing
/// the previous nftables transaction (after an RCU grace period) when the next apply starts.
/// Back to back, every apply after an allow-list change waits for that release instead: a
/// cost the agent never pays, measured at +3–4 ms per apply on this machine.
async fn pause_as_the_agent_does() {
    tokio::time::sleep(weft_agent::reconcile::DEBOUNCE).await;
}

async fn timed(dp: &Dataplane, d: &Desired) -> Result<(Duration, ApplyReport)> {
    let start = Instant::now();
    let report = dp.apply(d).await.map_err(LabError::other)?;
    Ok((start.elapsed(), report))
}

fn check(report: &ApplyReport, ok: impl Fn(&ApplyReport) -> bool, what: &str) -> Result<()> {
    if report.failures.is_empty() && ok(report) {
        Ok(())
    } else {
        Err(LabError::Other(format!("unexpected report for {what}: {report:?}")))
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_else(|_| "?".into())
}
