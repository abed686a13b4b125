//! Driving weft-overlay's `Dataplane` inside lab namespaces: the desired state of a lab node,
//! and a helper subcommand (`weft-lab dataplane apply|cleanup`, hidden) that tests run with
//! `ip netns exec`, so netlink, nft and /proc/sys all act on the node's namespace.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Stdio;

use clap::Subcommand;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use weft_overlay::desired::{DEFAULT_VNI, DEFAULT_VXLAN_PORT, Desired, LocalNode, Peer, PeerPath, UnderlayAddr};
use weft_overlay::rules::DEFAULT_BRIDGE;
use weft_overlay::underlay::Family;
use weft_overlay::{ApplyReport, CleanupOptions, CleanupReport, Dataplane, Mac};

use crate::cmd::{LabError, Result};
use crate::netns::Netns;
use crate::topology::Lab;
use crate::{bins, cni};

pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
pub const CLUSTER_CIDR6: &str = "fd00:10:244::/56";
/// The lab's underlay MTU (veths).
pub const UNDERLAY_MTU: u32 = 1500;

/// Node `i` (0-based) gets 10.244.(i+1).0/24.
pub fn pod_cidr(i: usize) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 244, (i + 1) as u8, 0), 24).expect("valid /24")
}

/// Node `i`'s block of a pod family: 10.244.(i+1).0/24 or fd00:10:244:(i+1)::/64.
pub fn pod_block(family: Family, i: usize) -> IpNet {
    match family {
        Family::Ipv4 => pod_cidr(i).into(),
        Family::Ipv6 => {
            let addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, (i + 1) as u16, 0, 0, 0, 0);
            Ipv6Net::new(addr, 64).expect("valid /64").into()
        }
    }
}

fn cluster_cidr(family: Family) -> IpNet {
    match family {
        Family::Ipv4 => CLUSTER_CIDR,
        Family::Ipv6 => CLUSTER_CIDR6,
    }
    .parse()
    .expect("valid CIDR")
}

/// Which peers are reached natively instead of through VXLAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encap {
    Always,
    /// Peers on the node's own underlay subnet are routed directly.
    CrossSubnet,
}

/// The desired state of lab node `i` with every other node as a peer, IPv4 pods only.
pub fn desired_for(lab: &Lab, i: usize, encap: Encap) -> Desired {
    desired_with_pods(lab, i, encap, &[Family::Ipv4])
}

/// The desired state of lab node `i` with every other node as a peer, with pods of `families`.
pub fn desired_with_pods(lab: &Lab, i: usize, encap: Encap, families: &[Family]) -> Desired {
    let blocks = |j: usize| families.iter().map(|f| pod_block(*f, j)).collect::<Vec<_>>();
    let me = &lab.nodes[i];
    let peers = lab
        .nodes
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(j, n)| Peer {
            name: n.name.clone(),
            node_ip: n.ip,
            pod_cidrs: blocks(j),
            vtep_mac: Mac::derived(&n.name),
            path: if encap == Encap::CrossSubnet && n.subnet == me.subnet { PeerPath::Direct } else { PeerPath::Vxlan },
        })
        .collect();
    Desired {
        local: LocalNode {
            name: me.name.clone(),
            underlays: vec![UnderlayAddr { ip: me.ip, iface: me.iface.clone() }],
            pod_cidrs: blocks(i),
            cluster_cidrs: families.iter().map(|f| cluster_cidr(*f)).collect(),
            vni: DEFAULT_VNI,
            vxlan_port: DEFAULT_VXLAN_PORT,
            mtu: UNDERLAY_MTU - Family::of(me.ip).vxlan_overhead(),
            vtep_mac: Mac::derived(&me.name),
            bridge: DEFAULT_BRIDGE.to_string(),
        },
        peers,
    }
}

/// Applies `desired` inside `ns` through the helper subcommand.
pub fn apply_in(ns: &Netns, desired: &Desired) -> Result<ApplyReport> {
    let input = serde_json::to_vec(desired).map_err(LabError::other)?;
    helper(ns, &["apply"], &input)
}

/// Runs the dataplane's cleanup inside `ns` through the helper subcommand.
pub fn cleanup_in(ns: &Netns, opts: &CleanupOptions) -> Result<CleanupReport> {
    let mut args = vec!["cleanup", "--bridge", &opts.bridge];
    if opts.force {
        args.push("--force");
    }
    helper(ns, &args, b"")
}

fn helper<T: serde::de::DeserializeOwned>(ns: &Netns, args: &[&str], input: &[u8]) -> Result<T> {
    let bin = bins::path("weft-lab")?;
    let mut cmd = ns.command(&bin.to_string_lossy());
    cmd.arg("dataplane").args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let reply = cni::exec_with_stdin(&mut cmd, input)?;
    if !reply.ok {
        return Err(LabError::Other(format!(
            "weft-lab dataplane {} in {} failed: {}",
            args.join(" "),
            ns.name(),
            reply.stderr.trim()
        )));
    }
    serde_json::from_str(&reply.stdout)
        .map_err(|e| LabError::Other(format!("unexpected helper output {:?}: {e}", reply.stdout)))
}

/// `weft-lab dataplane …`: the dataplane in the current namespace, JSON in and out.
#[derive(Debug, Clone, Subcommand)]
pub enum Helper {
    /// Reads a desired state (JSON) on stdin, applies it, prints the ApplyReport as JSON.
    Apply,
    /// Removes everything weft owns, prints the CleanupReport as JSON.
    Cleanup {
        #[arg(long, default_value = DEFAULT_BRIDGE)]
        bridge: String,
        /// Also remove the bridge while ports are attached.
        #[arg(long)]
        force: bool,
    },
}

impl Helper {
    /// Runs the command; its JSON output on success.
    pub fn run(self) -> Result<String> {
        runtime()?.block_on(async {
            let dp = Dataplane::new().map_err(LabError::other)?;
            let json = match self {
                Helper::Apply => {
                    let desired: Desired = serde_json::from_reader(std::io::stdin())
                        .map_err(|e| LabError::Other(format!("desired state on stdin: {e}")))?;
                    let report = dp.apply(&desired).await;
                    serde_json::to_string(&report.map_err(LabError::other)?)
                }
                Helper::Cleanup { bridge, force } => {
                    let report = dp.cleanup(&CleanupOptions { bridge, force }).await;
                    serde_json::to_string(&report.map_err(LabError::other)?)
                }
            };
            json.map_err(LabError::other)
        })
    }
}

/// The runtime `Dataplane` runs on: one thread, with IO (netlink) enabled.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LabError::Other(format!("tokio runtime: {e}")))
}
