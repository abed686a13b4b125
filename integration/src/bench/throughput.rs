//! `weft-lab bench throughput`: iperf3 TCP pod→pod through weft, against the same topology routed
//! natively (static pod routes on the router, no encapsulation, pod MTU 1500) as the 100 % line,
//! and against a hand-built flannel-style VXLAN datapath ([`flannel`]) as the bar to meet.
//! One lab runs agents in `--encap cross-subnet` mode, so n1→n2 crosses the router in VXLAN and
//! n1→n3 (same subnet) is routed directly; the baseline labs have the same nodes and pods.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::time::Duration;

use clap::Args as ClapArgs;
use serde::Serialize;

use ipnet::{IpNet, Ipv4Net};

use super::flannel;
use crate::cluster::{AgentOptions, Cluster};
use crate::cmd::{LabError, Result};
use crate::netns::Netns;
use crate::pod::{self, PodSpec};
use crate::process::Process;
use crate::topology::{Family, Lab, LabSpec};
use crate::wait;

#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 5)]
    pub seconds: u32,
    /// Runs of every case; the cases take turns, so load changes hit them alike.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One path's runs, Gbit/s of a single TCP stream.
#[derive(Debug, Serialize)]
pub struct Case {
    pub median: f64,
    pub samples: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct Throughput {
    pub seconds: u32,
    pub repeats: usize,
    /// 1-minute load average before and after the runs (the machine may be shared).
    pub load_before: f64,
    pub load_after: f64,
    pub routed_cross_subnet: Case,
    pub flannel_vxlan_cross_subnet: Case,
    pub weft_vxlan_cross_subnet: Case,
    /// IPv4 pods over an IPv6-only underlay (vxlan-v6, pod MTU 1430).
    pub weft_vxlan6_cross_subnet: Case,
    pub routed_same_subnet: Case,
    pub weft_direct_same_subnet: Case,
    /// Ratios of medians.
    pub weft_vs_flannel: f64,
    pub flannel_ratio: f64,
    pub vxlan_ratio: f64,
    pub direct_ratio: f64,
    /// weft over an IPv6 underlay against weft over an IPv4 underlay.
    pub vxlan6_vs_vxlan4: f64,
}

/// The cluster CIDR of all four labs (weft's default).
const CLUSTER: &str = "10.244.0.0/16";

pub fn run(args: &Args) -> Result<String> {
    crate::require_root();
    if args.repeats == 0 || args.seconds == 0 {
        return Err(LabError::Other("--seconds and --repeats must be at least 1".into()));
    }
    let spec = LabSpec { nodes: 3, subnets: 2, gro: true, underlay: Family::Ipv4 };
    // All four labs stay up, so that their runs can be interleaved.
    let routed_lab = Lab::build(&crate::unique_prefix(), spec)?;
    let routed = routed_pods(&routed_lab)?;
    let flannel_lab = Lab::build(&crate::unique_prefix(), spec)?;
    let flannel = flannel::build(&flannel_lab, CLUSTER.parse().expect("valid CIDR"))?;
    let lab = Lab::build(&crate::unique_prefix(), spec)?;
    let mut c = Cluster::start(lab, AgentOptions { cross_subnet: true, ..AgentOptions::default() })?;
    c.wait_converged(Duration::from_secs(60))?;
    for node in 0..3 {
        c.add_pod(node, "perf")?;
    }
    let lab6 = Lab::build(&crate::unique_prefix(), LabSpec { underlay: Family::Ipv6, ..spec })?;
    let mut c6 = Cluster::start(lab6, AgentOptions::default())?;
    c6.wait_converged(Duration::from_secs(60))?;
    for node in 0..2 {
        c6.add_pod(node, "perf")?;
    }
    let weft: Vec<(&Netns, Ipv4Addr)> = c.pods.iter().map(|p| (&p.ns, p.ip)).collect();
    let weft6: Vec<(&Netns, Ipv4Addr)> = c6.pods.iter().map(|p| (&p.ns, p.ip)).collect();
    let routed: Vec<(&Netns, Ipv4Addr)> = routed.iter().map(|p| (&p.ns, p.ip)).collect();
    let flannel: Vec<(&Netns, Ipv4Addr)> = flannel.iter().map(|p| (&p.ns, p.ip)).collect();
    // n1 → n2 crosses the router, n1 → n3 stays on the subnet.
    let cases = [(&routed, 1), (&flannel, 1), (&weft, 1), (&weft6, 1), (&routed, 2), (&weft, 2)];
    let load_before = load_average();
    let mut samples = vec![Vec::with_capacity(args.repeats); cases.len()];
    for _ in 0..args.repeats {
        for (k, (pods, to)) in cases.iter().enumerate() {
            samples[k].push(iperf(pods[0].0, pods[*to].0, pods[*to].1, args.seconds)?);
        }
    }
    let mut cases = samples.into_iter().map(|samples| Case { median: median(&samples), samples });
    let mut next = || cases.next().expect("one per case");
    let (routed_cross, flannel, vxlan, vxlan6, routed_same, direct) = (next(), next(), next(), next(), next(), next());
    let t = Throughput {
        seconds: args.seconds,
        repeats: args.repeats,
        load_before,
        load_after: load_average(),
        weft_vs_flannel: vxlan.median / flannel.median,
        flannel_ratio: flannel.median / routed_cross.median,
        vxlan_ratio: vxlan.median / routed_cross.median,
        direct_ratio: direct.median / routed_same.median,
        vxlan6_vs_vxlan4: vxlan6.median / vxlan.median,
        routed_cross_subnet: routed_cross,
        flannel_vxlan_cross_subnet: flannel,
        weft_vxlan_cross_subnet: vxlan,
        weft_vxlan6_cross_subnet: vxlan6,
        routed_same_subnet: routed_same,
        weft_direct_same_subnet: direct,
    };
    if args.json {
        return Ok(serde_json::to_string_pretty(&t).expect("serializable"));
    }
    Ok(table(&t))
}

fn table(t: &Throughput) -> String {
    let mut out = format!(
        "iperf3, one TCP stream, {} s per run, median of {} interleaved runs, underlay veths with GRO \
         (the router sends MTU-sized frames), load {:.2} → {:.2}\n",
        t.seconds, t.repeats, t.load_before, t.load_after
    );
    let _ = writeln!(out, "{:<50} {:>7} {:>9} {:>10}  runs", "path", "Gbit/s", "of routed", "of flannel");
    let rows = [
        ("routed, across the router (pod MTU 1500)", &t.routed_cross_subnet, 1.0, None),
        ("flannel-style VXLAN, across the router (MTU 1450)", &t.flannel_vxlan_cross_subnet, t.flannel_ratio, None),
        (
            "weft VXLAN, across the router (MTU 1450)",
            &t.weft_vxlan_cross_subnet,
            t.vxlan_ratio,
            Some(t.weft_vs_flannel),
        ),
        (
            "weft VXLAN over IPv6, across the router (MTU 1430)",
            &t.weft_vxlan6_cross_subnet,
            t.weft_vxlan6_cross_subnet.median / t.routed_cross_subnet.median,
            None,
        ),
        ("routed, same subnet (pod MTU 1500)", &t.routed_same_subnet, 1.0, None),
        ("weft direct (cross-subnet mode), same subnet", &t.weft_direct_same_subnet, t.direct_ratio, None),
    ];
    for (name, case, of_routed, of_flannel) in rows {
        let of_flannel = of_flannel.map_or(String::new(), |r| format!("{:.2}×", r));
        let runs: Vec<String> = case.samples.iter().map(|s| format!("{s:.2}")).collect();
        let _ = writeln!(
            out,
            "{name:<50} {:>7.2} {:>7.0} % {of_flannel:>10}  {}",
            case.median,
            of_routed * 100.0,
            runs.join(" ")
        );
    }
    let _ = writeln!(out, "weft over an IPv6 underlay / over an IPv4 underlay: {:.2}×", t.vxlan6_vs_vxlan4);
    out
}

fn median(samples: &[f64]) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let mid = s.len() / 2;
    if s.len() % 2 == 1 { s[mid] } else { (s[mid - 1] + s[mid]) / 2.0 }
}

/// The 1-minute load average (NaN when unreadable).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|l| l.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// One pod per node of `lab` on a plain bridge, node `i` with PodCIDR 10.244.(100 + i).0/24, and
/// forwarding on: the pods of the hand-built baselines. The PodCIDRs, in node order, too.
pub fn perf_pods(lab: &Lab, bridge: &str, mtu: u32) -> Result<(Vec<pod::Pod>, Vec<Ipv4Net>)> {
    let mut pods = Vec::new();
    let mut cidrs = Vec::new();
    for (i, node) in lab.nodes.iter().enumerate() {
        let cidr = Ipv4Net::new(Ipv4Addr::new(10, 244, 100 + i as u8, 0), 24).expect("valid CIDR");
        let gateway = Ipv4Addr::from(u32::from(cidr.network()) + 1);
        let address = Ipv4Net::new(Ipv4Addr::from(u32::from(cidr.network()) + 2), 24).expect("valid");
        node.ns.sysctl("net.ipv4.ip_forward", "1")?;
        let name = format!("{}-{}-perf", lab.prefix, node.name);
        pods.push(pod::attach(&node.ns, &PodSpec { name: &name, host_veth: "perf0", bridge, address, gateway, mtu })?);
        cidrs.push(cidr);
    }
    Ok((pods, cidrs))
}

/// The baseline: pods on plain bridges, routed by the router (across subnets) or node to node
/// (same subnet), no encapsulation, no NAT.
fn routed_pods(lab: &Lab) -> Result<Vec<pod::Pod>> {
    let (pods, cidrs) = perf_pods(lab, "br0", 1500)?;
    let routes: Vec<(IpNet, IpAddr)> = cidrs.into_iter().map(IpNet::from).zip(lab.nodes.iter().map(|n| n.ip)).collect();
    lab.route_pod_cidrs_on_router(&routes)?;
    // Same-subnet nodes reach each other's pods directly, as weft's direct path does.
    for (i, node) in lab.nodes.iter().enumerate() {
        for (j, (cidr, via)) in routes.iter().enumerate() {
            if i != j && lab.nodes[j].subnet == node.subnet {
                node.ns.ip(&["route", "add", &cidr.to_string(), "via", &via.to_string()])?;
            }
        }
    }
    Ok(pods)
}

/// Gbit/s of one TCP stream from `client` to an iperf3 server in `server` at `ip`.
fn iperf(client: &Netns, server: &Netns, ip: Ipv4Addr, seconds: u32) -> Result<f64> {
    let mut cmd = server.command("iperf3");
    cmd.args(["-s", "-1", "-p", "5201"]).stdout(Stdio::null()).stderr(Stdio::null());
    let _server = Process::spawn("iperf3 server", &mut cmd)?;
    let ip = ip.to_string();
    // Until the server listens the client fails (with an error in its JSON): retry, bounded.
    wait::until("an iperf3 run", Duration::from_secs(5 + u64::from(seconds) * 2), Duration::from_millis(100), || {
        let out = client.run("iperf3", &["-c", &ip, "-p", "5201", "-t", &seconds.to_string(), "-J"]).ok()?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        v["end"]["sum_received"]["bits_per_second"].as_f64().map(|bps| bps / 1e9)
    })
}
