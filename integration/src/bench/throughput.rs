//! `weft-lab bench throughput`: iperf3 TCP pod→pod through weft, against the same topology routed
//! natively (static pod routes on the router, no encapsulation, pod MTU 1500) as the 100 % line.
//! One lab runs agents in `--encap cross-subnet` mode, so n1→n2 crosses the router in VXLAN and
//! n1→n3 (same subnet) is routed directly; the baseline lab has the same nodes and pods.

use std::fmt::Write;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use clap::Args as ClapArgs;
use serde::Serialize;

use crate::cluster::{AgentOptions, Cluster};
use crate::cmd::Result;
use crate::netns::Netns;
use crate::pod::{self, PodSpec};
use crate::process::Process;
use crate::topology::{Lab, LabSpec};
use crate::wait;

#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 5)]
    pub seconds: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct Throughput {
    pub seconds: u32,
    /// Gbit/s, single TCP stream.
    pub routed_cross_subnet: f64,
    pub weft_vxlan_cross_subnet: f64,
    pub routed_same_subnet: f64,
    pub weft_direct_same_subnet: f64,
    pub vxlan_ratio: f64,
    pub direct_ratio: f64,
}

pub fn run(args: &Args) -> Result<String> {
    crate::require_root();
    let spec = LabSpec { nodes: 3, subnets: 2, gro: true };
    let (routed_cross, routed_same) = {
        let lab = Lab::build(&crate::unique_prefix(), spec)?;
        let pods = routed_pods(&lab)?;
        (
            iperf(&pods[0].ns, &pods[1].ns, pods[1].ip, args.seconds)?,
            iperf(&pods[0].ns, &pods[2].ns, pods[2].ip, args.seconds)?,
        )
    };
    let (vxlan, direct) = {
        let lab = Lab::build(&crate::unique_prefix(), spec)?;
        let mut c = Cluster::start(lab, AgentOptions { cross_subnet: true, ..AgentOptions::default() })?;
        c.wait_converged(Duration::from_secs(60))?;
        for node in 0..3 {
            c.add_pod(node, "perf")?;
        }
        let (p1, p2, p3) = (&c.pods[0], &c.pods[1], &c.pods[2]);
        (iperf(&p1.ns, &p2.ns, p2.ip, args.seconds)?, iperf(&p1.ns, &p3.ns, p3.ip, args.seconds)?)
    };
    let t = Throughput {
        seconds: args.seconds,
        routed_cross_subnet: routed_cross,
        weft_vxlan_cross_subnet: vxlan,
        routed_same_subnet: routed_same,
        weft_direct_same_subnet: direct,
        vxlan_ratio: vxlan / routed_cross,
        direct_ratio: direct / routed_same,
    };
    if args.json {
        return Ok(serde_json::to_string_pretty(&t).expect("serializable"));
    }
    let mut out = format!("iperf3, one TCP stream, {} s per run, GRO on the underlay veths\n", t.seconds);
    let _ = writeln!(out, "{:<44} {:>10} {:>8}", "path", "Gbit/s", "ratio");
    let _ = writeln!(
        out,
        "{:<44} {:>10.2} {:>8}",
        "routed, across the router (pod MTU 1500)", t.routed_cross_subnet, "100 %"
    );
    let _ = writeln!(
        out,
        "{:<44} {:>10.2} {:>7.0} %",
        "weft VXLAN, across the router (pod MTU 1450)",
        t.weft_vxlan_cross_subnet,
        t.vxlan_ratio * 100.0
    );
    let _ = writeln!(out, "{:<44} {:>10.2} {:>8}", "routed, same subnet (pod MTU 1500)", t.routed_same_subnet, "100 %");
    let _ = writeln!(
        out,
        "{:<44} {:>10.2} {:>7.0} %",
        "weft direct (cross-subnet mode), same subnet",
        t.weft_direct_same_subnet,
        t.direct_ratio * 100.0
    );
    Ok(out)
}

/// The baseline: pods on plain bridges, routed by the router (across subnets) or node to node
/// (same subnet), no encapsulation, no NAT.
fn routed_pods(lab: &Lab) -> Result<Vec<pod::Pod>> {
    let mut pods = Vec::new();
    let mut routes = Vec::new();
    for (i, node) in lab.nodes.iter().enumerate() {
        let cidr: ipnet::Ipv4Net = format!("10.244.{}.0/24", 100 + i).parse().expect("valid CIDR");
        let gateway = Ipv4Addr::from(u32::from(cidr.network()) + 1);
        let address = ipnet::Ipv4Net::new(Ipv4Addr::from(u32::from(cidr.network()) + 2), 24).expect("valid");
        node.ns.sysctl("net.ipv4.ip_forward", "1")?;
        let name = format!("{}-{}-perf", lab.prefix, node.name);
        pods.push(pod::attach(
            &node.ns,
            &PodSpec { name: &name, host_veth: "perf0", bridge: "br0", address, gateway, mtu: 1500 },
        )?);
        routes.push((cidr, node.ip));
    }
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
