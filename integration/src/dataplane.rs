//! Driving weft-overlay's `Dataplane` inside lab namespaces: the desired state of a lab node,
//! and a helper subcommand (`weft-lab dataplane apply|cleanup`, hidden) that tests run with
//! `ip netns exec`, so netlink, nft and /proc/sys all act on the node's namespace.

use std::net::Ipv4Addr;
use std::process::Stdio;

use clap::Subcommand;
use ipnet::Ipv4Net;
use weft_overlay::desired::{DEFAULT_VNI, DEFAULT_VXLAN_PORT, Desired, LocalNode, Peer, PeerPath, UnderlayAddr};
use weft_overlay::rules::DEFAULT_BRIDGE;
use weft_overlay::underlay::Family;
use weft_overlay::{ApplyReport, CleanupOptions, CleanupReport, Dataplane, Mac};

use crate::cmd::{LabError, Result};
use crate::netns::Netns;
use crate::topology::Lab;
use crate::{bins, cni};

pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The lab's underlay MTU (veths).
pub const UNDERLAY_MTU: u32 = 1500;

/// Node `i` (0-based) gets 10.244.(i+1).0/24.
pub fn pod_cidr(i: usize) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 244, (i + 1) as u8, 0), 24).expect("valid /24")
}

/// Which peers are reached natively instead of through VXLAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encap {
    Always,
    /// Peers on the node's own underlay subnet are routed directly.
    CrossSubnet,
}

/// The desired state of lab node `i` with every other node as a peer.
pub fn desired_for(lab: &Lab, i: usize, encap: Encap) -> Desired {
    let me = &lab.nodes[i];
    let peers = lab
        .nodes
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(j, n)| Peer {
            name: n.name.clone(),
            node_ip: n.ip,
            pod_cidrs: vec![pod_cidr(j).into()],
            vtep_mac: Mac::derived(&n.name),
            path: if encap == Encap::CrossSubnet && n.subnet == me.subnet { PeerPath::Direct } else { PeerPath::Vxlan },
        })
        .collect();
    Desired {
        local: LocalNode {
            name: me.name.clone(),
            underlays: vec![UnderlayAddr { ip: me.ip, iface: me.iface.clone() }],
            pod_cidrs: vec![pod_cidr(i).into()],
            cluster_cidrs: vec![CLUSTER_CIDR.parse().expect("valid CIDR")],
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
