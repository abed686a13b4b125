//! `weft-lab bench throughput`: iperf3 TCP pod→pod through weft, against the same topology routed
//! natively (static pod routes on the router, no encapsulation, pod MTU 1500) as the 100 % line,
//! and against a hand-built flannel-style VXLAN datapath ([`flannel`]) as the bar to meet.
//! One lab runs agents in `--encap cross-subnet` mode, so n1→n2 crosses the router in VXLAN and
//! n1→n3 (same subnet) is routed directly; the baseline labs have the same nodes and pods.
//! A last lab runs a dual-stack cluster over an IPv6-only underlay: its IPv4 pods and its IPv6
//! pods, each against weft's IPv4 pods over the IPv4 underlay.

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
    /// The router ports' TSO in each round: `off` (the router sends MTU-sized frames, as a wire
    /// carries them, and the nodes' GRO aggregates them), `on` (the kernel's default offloads:
    /// GSO packets cross the router unsegmented), or both, taking turns.
    #[arg(long, value_delimiter = ',', default_value = "off,on")]
    pub router_tso: Vec<Tso>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Tso {
    Off,
    On,
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
    /// One per `--router-tso` setting, their runs interleaved.
    pub variants: Vec<Variant>,
}

/// Every path with the router ports' TSO set one way.
#[derive(Debug, Serialize)]
pub struct Variant {
    pub router_tso: Tso,
    pub routed_cross_subnet: Case,
    /// flannel-style VXLAN without any firewall rules: no conntrack in the path.
    pub flannel_bare_cross_subnet: Case,
    /// The same with flanneld's `--ip-masq` rules, as kube-flannel.yml deploys it.
    pub flannel_vxlan_cross_subnet: Case,
    pub weft_vxlan_cross_subnet: Case,
    /// IPv4 pods of a dual-stack cluster over an IPv6-only underlay (vxlan-v6, pod MTU 1430).
    pub weft_vxlan6_cross_subnet: Case,
    /// IPv6 pods over the same IPv6-only underlay.
    pub weft_pods6_vxlan6_cross_subnet: Case,
    pub routed_same_subnet: Case,
    pub weft_direct_same_subnet: Case,
    /// Ratios of medians: weft against flannel as deployed, and against bare flannel-style.
    pub weft_vs_flannel: f64,
    pub weft_vs_flannel_bare: f64,
    pub flannel_ratio: f64,
    pub vxlan_ratio: f64,
    pub direct_ratio: f64,
    /// weft's IPv4 pods over an IPv6 underlay against weft over an IPv4 underlay.
    pub vxlan6_vs_vxlan4: f64,
    /// weft's IPv6 pods over an IPv6 underlay against IPv4 pods over an IPv4 underlay.
    pub pods6_vxlan6_vs_vxlan4: f64,
}

/// The cluster CIDR of all labs (weft's default).
const CLUSTER: &str = crate::dataplane::CLUSTER_CIDR;

pub fn run(args: &Args) -> Result<String> {
    crate::require_root();
    if args.repeats == 0 || args.seconds == 0 {
        return Err(LabError::Other("--seconds and --repeats must be at least 1".into()));
    }
    let spec = LabSpec { nodes: 3, subnets: 2, gro: true, underlay: Family::Ipv4 };
    let cluster: Ipv4Net = CLUSTER.parse().expect("valid CIDR");
    // All labs stay up, so that their runs can be interleaved.
    let routed_lab = Lab::build(&crate::unique_prefix(), spec)?;
    let routed = routed_pods(&routed_lab)?;
    let bare_lab = Lab::build(&crate::unique_prefix(), spec)?;
    let bare = flannel::build(&bare_lab, cluster, false)?;
    let flannel_lab = Lab::build(&crate::unique_prefix(), spec)?;
    let flannel = flannel::build(&flannel_lab, cluster, true)?;
    let lab = Lab::build(&crate::unique_prefix(), spec)?;
    let mut c = Cluster::start(lab, AgentOptions { cross_subnet: true, ..AgentOptions::default() })?;
    c.wait_converged(Duration::from_secs(60))?;
    for node in 0..3 {
        c.add_pod(node, "perf")?;
    }
    let lab6 = Lab::build(&crate::unique_prefix(), LabSpec { underlay: Family::Ipv6, ..spec })?;
    // Dual-stack pods, a /64 of fd00:10:244::/56 per node (the default block size).
    let extra_args = vec![format!("--cluster-cidr={CLUSTER},{}", crate::dataplane::CLUSTER_CIDR6)];
    let mut c6 = Cluster::start(lab6, AgentOptions { extra_args, ..AgentOptions::default() })?;
    c6.wait_converged(Duration::from_secs(60))?;
    for node in 0..2 {
        c6.add_pod(node, "perf")?;
    }
    let labs = [&routed_lab, &bare_lab, &flannel_lab, &c.lab, &c6.lab];
    let v4 = |ns, ip: Ipv4Addr| (ns, IpAddr::from(ip));
    let weft: Vec<(&Netns, IpAddr)> = c.pods.iter().map(|p| v4(&p.ns, p.ip)).collect();
    let weft6: Vec<(&Netns, IpAddr)> = c6.pods.iter().map(|p| v4(&p.ns, p.ip)).collect();
    let weft6_pods6: Vec<(&Netns, IpAddr)> = c6.pods.iter().map(|p| Ok((&p.ns, ipv6_of(p)?))).collect::<Result<_>>()?;
    let routed: Vec<(&Netns, IpAddr)> = routed.iter().map(|p| v4(&p.ns, p.ip)).collect();
    let bare: Vec<(&Netns, IpAddr)> = bare.iter().map(|p| v4(&p.ns, p.ip)).collect();
    let flannel: Vec<(&Netns, IpAddr)> = flannel.iter().map(|p| v4(&p.ns, p.ip)).collect();
    // What the weft rows claim: n1's route to n2's pod of each family leaves on the VXLAN
    // device of the lab's underlay family.
    for (cluster, pods) in [(&c, &weft), (&c6, &weft6), (&c6, &weft6_pods6)] {
        check_tunnel(&cluster.lab, pods[1].1)?;
    }
    // n1 → n2 crosses the router, n1 → n3 stays on the subnet.
    let cases =
        [(&routed, 1), (&bare, 1), (&flannel, 1), (&weft, 1), (&weft6, 1), (&weft6_pods6, 1), (&routed, 2), (&weft, 2)];
    let load_before = load_average();
    let mut samples = vec![vec![Vec::with_capacity(args.repeats); cases.len()]; args.router_tso.len()];
    for _ in 0..args.repeats {
        for (v, tso) in args.router_tso.iter().enumerate() {
            for lab in labs {
                set_router_tso(lab, *tso)?;
            }
            for (k, (pods, to)) in cases.iter().enumerate() {
                samples[v][k].push(iperf(pods[0].0, pods[*to].0, pods[*to].1, args.seconds)?);
            }
        }
    }
    let variants = args.router_tso.iter().zip(samples).map(|(tso, samples)| variant(*tso, samples)).collect();
    let t =
        Throughput { seconds: args.seconds, repeats: args.repeats, load_before, load_after: load_average(), variants };
    if args.json {
        return Ok(serde_json::to_string_pretty(&t).expect("serializable"));
    }
    Ok(table(&t))
}

/// The router's ports are named after the nodes they lead to.
fn set_router_tso(lab: &Lab, tso: Tso) -> Result<()> {
    let on = match tso {
        Tso::Off => "off",
        Tso::On => "on",
    };
    for node in &lab.nodes {
        lab.router.run("ethtool", &["-K", &node.name, "tso", on])?;
    }
    Ok(())
}

/// One variant's cases, in the order of `cases` in [`run`].
fn variant(router_tso: Tso, samples: Vec<Vec<f64>>) -> Variant {
    let mut cases = samples.into_iter().map(|samples| Case { median: median(&samples), samples });
    let mut next = || cases.next().expect("one per case");
    let (routed_cross, bare, flannel, vxlan, vxlan6, pods6, routed_same, direct) =
        (next(), next(), next(), next(), next(), next(), next(), next());
    Variant {
        router_tso,
        weft_vs_flannel: vxlan.median / flannel.median,
        weft_vs_flannel_bare: vxlan.median / bare.median,
        flannel_ratio: flannel.median / routed_cross.median,
        vxlan_ratio: vxlan.median / routed_cross.median,
        direct_ratio: direct.median / routed_same.median,
        vxlan6_vs_vxlan4: vxlan6.median / vxlan.median,
        pods6_vxlan6_vs_vxlan4: pods6.median / vxlan.median,
        routed_cross_subnet: routed_cross,
        flannel_bare_cross_subnet: bare,
        flannel_vxlan_cross_subnet: flannel,
        weft_vxlan_cross_subnet: vxlan,
        weft_vxlan6_cross_subnet: vxlan6,
        weft_pods6_vxlan6_cross_subnet: pods6,
        routed_same_subnet: routed_same,
        weft_direct_same_subnet: direct,
    }
}

fn table(t: &Throughput) -> String {
    let mut out = format!(
        "iperf3, one TCP stream, {} s per run, median of {} interleaved runs, underlay veths with GRO, \
         load {:.2} → {:.2}\n",
        t.seconds, t.repeats, t.load_before, t.load_after
    );
    for v in &t.variants {
        let tso = match v.router_tso {
            Tso::Off => "off (the router sends MTU-sized frames)",
            Tso::On => "on (the kernel's default offloads)",
        };
        let _ = writeln!(out, "\nrouter ports' TSO {tso}");
        let _ = writeln!(out, "{:<50} {:>7} {:>9} {:>10}  runs", "path", "Gbit/s", "of routed", "of flannel");
        let rows = [
            ("routed, across the router (pod MTU 1500)", &v.routed_cross_subnet, 1.0, None),
            (
                "flannel-style VXLAN, no rules (MTU 1450)",
                &v.flannel_bare_cross_subnet,
                v.flannel_bare_cross_subnet.median / v.routed_cross_subnet.median,
                None,
            ),
            ("flannel-style VXLAN, --ip-masq rules (MTU 1450)", &v.flannel_vxlan_cross_subnet, v.flannel_ratio, None),
            (
                "weft VXLAN, across the router (MTU 1450)",
                &v.weft_vxlan_cross_subnet,
                v.vxlan_ratio,
                Some(v.weft_vs_flannel),
            ),
            (
                "weft VXLAN over IPv6, IPv4 pods (MTU 1430)",
                &v.weft_vxlan6_cross_subnet,
                v.weft_vxlan6_cross_subnet.median / v.routed_cross_subnet.median,
                None,
            ),
            (
                "weft VXLAN over IPv6, IPv6 pods (MTU 1430)",
                &v.weft_pods6_vxlan6_cross_subnet,
                v.weft_pods6_vxlan6_cross_subnet.median / v.routed_cross_subnet.median,
                None,
            ),
            ("routed, same subnet (pod MTU 1500)", &v.routed_same_subnet, 1.0, None),
            ("weft direct (cross-subnet mode), same subnet", &v.weft_direct_same_subnet, v.direct_ratio, None),
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
        let _ = writeln!(
            out,
            "weft / flannel as deployed: {:.2}×, weft / bare flannel-style: {:.2}×, \
             weft over an IPv6 underlay / over an IPv4 underlay: {:.2}×, \
             IPv6 pods over IPv6 / IPv4 pods over IPv4: {:.2}×",
            v.weft_vs_flannel, v.weft_vs_flannel_bare, v.vxlan6_vs_vxlan4, v.pods6_vxlan6_vs_vxlan4
        );
    }
    out
}

fn median(samples: &[f64]) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let mid = s.len() / 2;
    if s.len() % 2 == 1 { s[mid] } else { (s[mid - 1] + s[mid]) / 2.0 }
}

/// The IPv6 address the plugin gave a pod of a dual-stack cluster.
fn ipv6_of(pod: &crate::cluster::Pod) -> Result<IpAddr> {
    let ip = pod.ips.iter().find(|ip| ip.is_ipv6());
    ip.copied().ok_or_else(|| LabError::Other(format!("pod {} got no IPv6 address: {:?}", pod.name, pod.ips)))
}

/// Fails unless the first node of `lab` routes `to` through the VXLAN device of the lab's
/// underlay family (`ip route get`).
fn check_tunnel(lab: &Lab, to: IpAddr) -> Result<()> {
    let want = lab.underlay.vxlan_device();
    let out = lab.nodes[0].ns.ip(&["-j", "route", "get", &to.to_string()])?;
    let route: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| LabError::Other(format!("ip -j route get: {e}: {out}")))?;
    match route[0]["dev"].as_str() {
        Some(dev) if dev == want => Ok(()),
        dev => Err(LabError::Other(format!("{} routes {to} via {dev:?}, not {want}", lab.nodes[0].name))),
    }
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
fn iperf(client: &Netns, server: &Netns, ip: IpAddr, seconds: u32) -> Result<f64> {
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
