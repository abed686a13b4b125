//! Apply latency of the overlay dataplane at scale. Runs in a namespace of its own with a veth
//! as underlay; the peers are synthetic, all on the VXLAN path (neighbour + FDB entry + route each,
//! the most kernel objects per peer, plus the peer's node IP in the VXLAN allow-list), with node
//! IPs that need no reachability.
//!
//! Four figures, median and p95 over repeats: an apply of N peers on an empty namespace, an
//! apply changing one peer (alternately adding and removing it) in full (reading the kernel
//! back) and incrementally (writing the change alone, as the agent does between resyncs), and an
//! apply with nothing to change (which must also write nothing). Then the bench process's peak
//! resident memory (VmHWM), a proxy for what the dataplane costs the agent. With `--dual-stack` the same again, in the same run,
//! with an IPv6 pod block beside the IPv4 one on the node and every peer (two routes and two
//! neighbours per peer, one FDB entry: the peers stay on the IPv4 underlay).

use std::collections::HashSet;
use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use ipnet::{IpNet, Ipv4Net};
use weft_overlay::desired::{
    DEFAULT_VNI, DEFAULT_VXLAN_PORT, Desired, LocalNode, Peer, PeerPath, UnderlayAddr, vtep_of,
};
use weft_overlay::rules::DEFAULT_BRIDGE;
use weft_overlay::underlay::Family;
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
    /// Also measure the node and every peer with an IPv4 and an IPv6 pod block (the applies
    /// from empty of the two shapes alternate; the other cases run back to back).
    #[arg(long)]
    pub dual_stack: bool,
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
    let figures = within(&ns.path(), || measure(&args, &ns))??;
    Ok(figures)
}

/// The pod families of one measured shape of the cluster, its name and its desired states.
struct Shape {
    name: &'static str,
    /// Kernel objects a peer needs: its FDB entry, and a neighbour and a route per pod block.
    per_peer: usize,
    full: Desired,
    less: Desired,
}

impl Shape {
    fn new(name: &'static str, families: &[Family], peers: usize) -> Shape {
        let full = desired(peers, families);
        let mut less = full.clone();
        less.peers.pop();
        Shape { name, per_peer: 1 + 2 * families.len(), full, less }
    }
}

fn measure(args: &Args, ns: &Netns) -> Result<String> {
    let mut shapes = vec![Shape::new("IPv4", &[Family::Ipv4], args.peers)];
    if args.dual_stack {
        shapes.push(Shape::new("IPv4+IPv6", &Family::ALL, args.peers));
    }
    runtime()?.block_on(async {
        let dp = Dataplane::new().map_err(LabError::other)?;
        let mut from_empty = vec![Vec::with_capacity(args.repeats_empty); shapes.len()];
        for _ in 0..args.repeats_empty {
            for (shape, samples) in shapes.iter().zip(&mut from_empty) {
                samples.push(apply_from_empty(&dp, shape).await?);
            }
        }
        let mut rows = Vec::new();
        for (shape, from_empty) in shapes.iter().zip(from_empty) {
            let (one_peer, noop) = changes(&dp, ns, shape, args.repeats).await?;
            let incremental = incremental_changes(&dp, shape, args.repeats).await?;
            rows.push((shape.name, from_empty, one_peer, incremental, noop));
        }
        dp.cleanup(&CleanupOptions::default()).await.map_err(LabError::other)?;

        let mut out = format!(
            "dataplane apply, {} peers over an IPv4 underlay (VXLAN path: FDB entry + allow-list element, \
             neighbour + route per pod block each), {} cores, kernel {}\n",
            args.peers,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel_release(),
        );
        let _ =
            writeln!(out, "{:<10} {:<28} {:>6} {:>10} {:>10} {:>8}", "pods", "case", "runs", "median", "p95", "target");
        for (pods, from_empty, one_peer, incremental, noop) in &rows {
            for (name, samples, target) in [
                ("apply from empty", from_empty, "1 s"),
                ("one-peer change, full", one_peer, "5 ms"),
                ("one-peer change, incremental", incremental, "5 ms"),
                ("nothing to change (0 writes)", noop, "20 ms"),
            ] {
                let s = Summary::of(samples);
                let _ = writeln!(
                    out,
                    "{pods:<10} {name:<28} {:>6} {:>7.2} ms {:>7.2} ms {target:>8}",
                    s.n, s.median_ms, s.p95_ms
                );
            }
        }
        let _ = writeln!(out, "bench process peak RSS (VmHWM): {}", peak_rss());
        Ok(out)
    })
}

/// An untimed cleanup, then the shape's full state applied and checked: how long it took.
async fn apply_from_empty(dp: &Dataplane, shape: &Shape) -> Result<Duration> {
    dp.cleanup(&CleanupOptions::default()).await.map_err(LabError::other)?;
    let (took, report) = timed(dp, &shape.full).await?;
    check(&report, |r| r.created >= shape.per_peer * shape.full.peers.len(), "a full apply")?;
    Ok(took)
}

/// The one-peer changes and the no-op applies of one shape, from its full state.
async fn changes(dp: &Dataplane, ns: &Netns, shape: &Shape, repeats: usize) -> Result<(Vec<Duration>, Vec<Duration>)> {
    // Whichever shape applied last, start from this one's full state.
    apply_from_empty(dp, shape).await?;
    check_kernel(ns, &shape.full)?;
    let mut one_peer = Vec::with_capacity(repeats);
    for i in 0..repeats {
        let d = if i % 2 == 0 { &shape.less } else { &shape.full };
        pause_as_the_agent_does().await;
        let (took, report) = timed(dp, d).await?;
        // The peer's objects and its element in the VXLAN allow-list.
        check(&report, |r| r.writes() == shape.per_peer + 1, "a one-peer change")?;
        one_peer.push(took);
    }
    let mut noop = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        pause_as_the_agent_does().await;
        let (took, report) = timed(dp, &shape.full).await?;
        check(&report, |r| r.writes() == 0, "a no-op apply")?;
        noop.push(took);
    }
    Ok((one_peer, noop))
}

/// The one-peer changes of one shape through the incremental path, from its full state (the
/// full apply that sets it up is what the incremental ones start from).
async fn incremental_changes(dp: &Dataplane, shape: &Shape, repeats: usize) -> Result<Vec<Duration>> {
    let (_, report) = timed(dp, &shape.full).await?;
    check(&report, |r| r.writes() == 0, "the full apply before the incremental ones")?;
    let mut samples = Vec::with_capacity(repeats);
    for i in 0..repeats {
        let d = if i % 2 == 0 { &shape.less } else { &shape.full };
        pause_as_the_agent_does().await;
        let start = Instant::now();
        let report = dp.apply_incremental(d).await.map_err(LabError::other)?;
        let took = start.elapsed();
        let report = report.ok_or_else(|| LabError::Other("no incremental apply for a one-peer change".into()))?;
        check(&report, |r| r.writes() == shape.per_peer + 1, "an incremental one-peer change")?;
        samples.push(took);
    }
    Ok(samples)
}

/// This process's peak resident set size as /proc reports it.
fn peak_rss() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"));
    line.map_or_else(|| "?".into(), |v| v.trim().to_string())
}

/// Each family's cluster range and block size; peer k (the node: 0) gets the k-th block,
/// 10.(k/256).(k%256).0/24 and fd00:10:244:k::/64 (k in hex). Both ranges are wider than the
/// labs' 10.244.0.0/16 and fd00:10:244::/56 (256 blocks each): thousands of peers need more
/// blocks of the sizes clusters use, and nothing leaves this namespace.
fn blocks(family: Family) -> (IpNet, u8) {
    match family {
        Family::Ipv4 => ("10.0.0.0/8".parse().expect("valid CIDR"), 24),
        Family::Ipv6 => ("fd00:10:244::/48".parse().expect("valid CIDR"), 64),
    }
}

/// The synthetic node and its peers, with a pod block of each of `families`.
fn desired(peers: usize, families: &[Family]) -> Desired {
    let ranges: Vec<(IpNet, Vec<IpNet>)> = families
        .iter()
        .map(|f| {
            let (cluster, len) = blocks(*f);
            (cluster, cluster.subnets(len).expect("a longer prefix").take(peers + 1).collect())
        })
        .collect();
    let pod_cidrs = |k: usize| ranges.iter().map(|(_, blocks)| blocks[k]).collect();
    let node_ip: Ipv4Net = NODE_IP.parse().expect("valid address");
    Desired {
        local: LocalNode {
            name: "bench".into(),
            underlays: vec![UnderlayAddr { ip: node_ip.addr().into(), iface: "eth0".into() }],
            pod_cidrs: pod_cidrs(0),
            cluster_cidrs: ranges.iter().map(|(cluster, _)| *cluster).collect(),
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
                pod_cidrs: pod_cidrs(k),
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
    // A rejected peer is left out whole: the apply would be cheaper than the figure claims.
    if report.failures.is_empty() && report.rejected.is_empty() && ok(report) {
        Ok(())
    } else {
        Err(LabError::Other(format!("unexpected report for {what}: {report:?}")))
    }
}

/// Reads back from the kernel that every peer block has its route and its neighbour (the
/// block's VTEP address) on the VXLAN device of the peer's underlay family: the figures are for
/// the objects the bench says it programs, whatever the planner made of the desired state.
fn check_kernel(ns: &Netns, d: &Desired) -> Result<()> {
    for family in d.local.cluster_cidrs.iter().map(Family::of_net) {
        let flag = crate::topology::ip_flag(family);
        let routes = ns.ip(&["-j", flag, "route", "show"])?;
        let neighbours = ns.ip(&["-j", flag, "neigh", "show"])?;
        let (want_routes, want_neighbours) = expected_objects(d, family);
        for (what, listing, want) in [("routes", &routes, &want_routes), ("neighbours", &neighbours, &want_neighbours)]
        {
            let found = present(listing, want)?;
            if found != want.len() {
                return Err(LabError::Other(format!("{found} of {} {family} peer {what} in the kernel", want.len())));
            }
        }
    }
    Ok(())
}

/// A peer object as `ip -j` lists it: its destination and its device.
type Object = (IpNet, String);

/// The routes and the neighbours of `family`'s peer blocks: one each per block, on the VXLAN
/// device of the family of the peer's node IP.
fn expected_objects(d: &Desired, family: Family) -> (HashSet<Object>, HashSet<Object>) {
    let blocks = d.peers.iter().flat_map(|p| {
        let dev = Family::of(p.node_ip).vxlan_device().to_string();
        p.pod_cidrs.iter().filter(move |b| Family::of_net(b) == family).map(move |b| (*b, dev.clone()))
    });
    blocks.map(|(b, dev)| ((b, dev.clone()), (IpNet::from(vtep_of(&b)), dev))).unzip()
}

/// How many of `want` an `ip -j route|neigh show` listing holds.
fn present(listing: &str, want: &HashSet<Object>) -> Result<usize> {
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(listing).map_err(|e| LabError::Other(format!("ip -j: {e}: {listing}")))?;
    let object = |e: &serde_json::Value| -> Option<Object> {
        let dst = e["dst"].as_str()?;
        let dst = dst.parse().ok().or_else(|| dst.parse::<IpAddr>().ok().map(IpNet::from))?;
        Some((dst, e["dev"].as_str()?.to_string()))
    };
    Ok(entries.iter().filter_map(object).filter(|o| want.contains(o)).count())
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_overlay::validate::validate;

    #[test]
    fn every_dual_stack_peer_has_a_valid_block_of_each_family() {
        let d = desired(1000, &Family::ALL);
        let ok = validate(&d).expect("a valid local node");
        assert!(ok.rejected.is_empty(), "{:?}", ok.rejected.first());
        assert_eq!(ok.peers.len(), 1000);
        assert_eq!(d.local.pod_cidrs, ["10.0.0.0/24".parse::<IpNet>().unwrap(), "fd00:10:244::/64".parse().unwrap()]);
        let last = &d.peers[999].pod_cidrs;
        assert_eq!(last, &["10.3.232.0/24".parse::<IpNet>().unwrap(), "fd00:10:244:3e8::/64".parse().unwrap()]);
        assert!(d.peers.iter().all(|p| Family::ALL.iter().zip(&p.pod_cidrs).all(|(f, b)| Family::of_net(b) == *f)));
    }

    #[test]
    fn ipv4_only_peers_have_one_block() {
        let d = desired(300, &[Family::Ipv4]);
        assert_eq!(d.local.cluster_cidrs, ["10.0.0.0/8".parse::<IpNet>().unwrap()]);
        assert_eq!(d.peers[299].pod_cidrs, ["10.1.44.0/24".parse::<IpNet>().unwrap()]);
        assert!(d.peers.iter().all(|p| p.pod_cidrs.len() == 1));
    }

    #[test]
    fn the_kernel_check_wants_a_route_and_a_neighbour_per_block_of_the_family_on_vxlan0() {
        let d = desired(2, &Family::ALL);
        let (routes, neighbours) = expected_objects(&d, Family::Ipv6);
        let on_vxlan0 = |nets: &[&str]| -> HashSet<Object> {
            nets.iter().map(|n| (n.parse().unwrap(), "vxlan0".to_string())).collect()
        };
        assert_eq!(routes, on_vxlan0(&["fd00:10:244:1::/64", "fd00:10:244:2::/64"]));
        assert_eq!(neighbours, on_vxlan0(&["fd00:10:244:1::/128", "fd00:10:244:2::/128"]));
        assert_eq!(expected_objects(&desired(2, &[Family::Ipv4]), Family::Ipv6).0, HashSet::new());
    }

    #[test]
    fn the_kernel_check_counts_only_the_wanted_objects_of_a_listing() {
        let d = desired(2, &Family::ALL);
        let (routes, neighbours) = expected_objects(&d, Family::Ipv6);
        // As `ip -j -6 route show` and `ip -j -6 neigh show` print them; one route on another device.
        let route_listing = r#"[{"dst":"fd00:10:244:1::/64","gateway":"fd00:10:244:1::","dev":"vxlan0","flags":["onlink"]},
            {"dst":"fd00:10:244:2::/64","dev":"eth0","flags":[]},{"dst":"fe80::/64","dev":"eth0"}]"#;
        let neigh_listing = r#"[{"dst":"fd00:10:244:1::","dev":"vxlan0","lladdr":"02:00:00:00:00:01","state":["PERMANENT"]},
            {"dst":"fd00:10:244:2::","dev":"vxlan0","lladdr":"02:00:00:00:00:02","state":["PERMANENT"]}]"#;
        assert_eq!(present(route_listing, &routes).unwrap(), 1);
        assert_eq!(present(neigh_listing, &neighbours).unwrap(), 2);
        assert!(present("not json", &routes).is_err());
    }
}
