//! A flannel-style VXLAN datapath built by hand, as flannel's `vxlan` backend and its iptables
//! traffic manager program a node: the baseline weft's VXLAN path is measured against.
//!
//! Per node: `flannel.1` (VNI 1, `local <node IP> dev <underlay>`, `nolearning`, port 8472, MTU
//! underlay − 50, the kernel's default outer UDP checksum: flannel sets none, which for IPv4 means
//! none), its PodCIDR network address /32 on it, pods on a plain bridge with MTU 1450. Per peer:
//! a permanent neighbour for the peer's VTEP address, a permanent FDB entry to its node IP and an
//! onlink route via the VTEP address. Then, as deployed, flannel's `FLANNEL-POSTRTG` masquerade
//! rules and `FLANNEL-FWD` accepts through iptables-nft, so conntrack is in the path as on a real
//! node; or, as the bare baseline, no rules at all.

use ipnet::Ipv4Net;
use weft_overlay::Mac;

use super::throughput::perf_pods;
use crate::cmd::Result;
use crate::netns::Netns;
use crate::pod::Pod;
use crate::topology::{Lab, Node};

const DEVICE: &str = "flannel.1";
/// The lab's underlay veths have MTU 1500; flannel gives `flannel.1` and pods 50 bytes less.
const MTU: u32 = 1450;
/// kube-proxy's masquerade mark, which flannel leaves alone.
const KUBE_PROXY_MARK: &str = "0x4000/0x4000";

/// Builds the datapath on every node of `lab`; one pod per node, in node order. `ip_masq` adds
/// flanneld's `--ip-masq` rules (as kube-flannel.yml runs it); without them no firewall rule,
/// and so no conntrack, is in the path.
pub fn build(lab: &Lab, cluster: Ipv4Net, ip_masq: bool) -> Result<Vec<Pod>> {
    let (pods, cidrs) = perf_pods(lab, "cni0", MTU)?;
    for (i, node) in lab.nodes.iter().enumerate() {
        let vtep = cidrs[i].network();
        node.ns.ip(&[
            "link",
            "add",
            DEVICE,
            "address",
            &vtep_mac(node).to_string(),
            "mtu",
            &MTU.to_string(),
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            &node.ip.to_string(),
            "dev",
            &node.iface,
            "nolearning",
            "dstport",
            "8472",
        ])?;
        node.ns.ip(&["addr", "add", &format!("{vtep}/32"), "dev", DEVICE])?;
        node.ns.ip(&["link", "set", DEVICE, "up"])?;
        if ip_masq {
            masquerade(&node.ns, cluster, cidrs[i])?;
        }
    }
    for (i, node) in lab.nodes.iter().enumerate() {
        for (j, peer) in lab.nodes.iter().enumerate().filter(|(j, _)| *j != i) {
            add_peer(&node.ns, peer, cidrs[j])?;
        }
    }
    Ok(pods)
}

fn vtep_mac(node: &Node) -> Mac {
    Mac::derived(&format!("flannel-{}", node.name))
}

/// What flannel's `vxlan_network` programs when a peer's lease appears: ARP, FDB, then route.
fn add_peer(ns: &Netns, peer: &Node, cidr: Ipv4Net) -> Result<()> {
    let (vtep, mac) = (cidr.network().to_string(), vtep_mac(peer).to_string());
    ns.ip(&["neigh", "add", &vtep, "lladdr", &mac, "dev", DEVICE, "nud", "permanent"])?;
    ns.run("bridge", &["fdb", "add", &mac, "dev", DEVICE, "dst", &peer.ip.to_string(), "self", "permanent"])?;
    ns.ip(&["route", "add", &cidr.to_string(), "via", &vtep, "dev", DEVICE, "onlink"])?;
    Ok(())
}

/// flannel's `masqRules` and `forwardRules` (iptables mode, `--random-fully` supported).
fn masquerade(ns: &Netns, cluster: Ipv4Net, pods: Ipv4Net) -> Result<()> {
    let (cluster, pods) = (cluster.to_string(), pods.to_string());
    let rules: [&[&str]; 12] = [
        &["-t", "nat", "-N", "FLANNEL-POSTRTG"],
        &["-t", "nat", "-A", "POSTROUTING", "-j", "FLANNEL-POSTRTG"],
        &["-t", "nat", "-A", "FLANNEL-POSTRTG", "-m", "mark", "--mark", KUBE_PROXY_MARK, "-j", "RETURN"],
        &["-t", "nat", "-A", "FLANNEL-POSTRTG", "-s", &pods, "-d", &cluster, "-j", "RETURN"],
        &["-t", "nat", "-A", "FLANNEL-POSTRTG", "-s", &cluster, "-d", &pods, "-j", "RETURN"],
        &["-t", "nat", "-A", "FLANNEL-POSTRTG", "!", "-s", &cluster, "-d", &pods, "-j", "RETURN"],
        &[
            "-t",
            "nat",
            "-A",
            "FLANNEL-POSTRTG",
            "-s",
            &cluster,
            "!",
            "-d",
            "224.0.0.0/4",
            "-j",
            "MASQUERADE",
            "--random-fully",
        ],
        &[
            "-t",
            "nat",
            "-A",
            "FLANNEL-POSTRTG",
            "!",
            "-s",
            &cluster,
            "-d",
            &cluster,
            "-j",
            "MASQUERADE",
            "--random-fully",
        ],
        &["-t", "filter", "-N", "FLANNEL-FWD"],
        &["-t", "filter", "-A", "FORWARD", "-j", "FLANNEL-FWD"],
        &["-t", "filter", "-A", "FLANNEL-FWD", "-s", &cluster, "-j", "ACCEPT"],
        &["-t", "filter", "-A", "FLANNEL-FWD", "-d", &cluster, "-j", "ACCEPT"],
    ];
    for rule in rules {
        ns.run("iptables-nft", rule)?;
    }
    Ok(())
}
