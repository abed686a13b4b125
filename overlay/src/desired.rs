//! The desired state of one node's datapath: the local node and its live peers. The agent builds
//! it; [`crate::Dataplane::apply`] makes the kernel match it.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::mac::Mac;
use crate::rules::first_host;
pub use crate::underlay::PeerPath;
use crate::underlay::{Family, NodeIps};

pub const DEFAULT_VXLAN_DEVICE: &str = "vxlan0";
pub const DEFAULT_VNI: u32 = 1;
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
/// kube-proxy marks packets it will masquerade itself with this bit.
pub const KUBE_PROXY_MASQ_MARK: u32 = 0x4000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    pub local: LocalNode,
    pub peers: Vec<Peer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalNode {
    pub name: String,
    /// The node's underlay addresses, at most one per family (IPv4 first): the local IP of
    /// that family's VXLAN device and the FDB destination peers use.
    pub underlays: Vec<UnderlayAddr>,
    /// The node's pod blocks, at most one per family (IPv4 first).
    pub pod_cidrs: Vec<IpNet>,
    /// The cluster's pod ranges, at most one per family; every pod block lies in the one of its
    /// family.
    pub cluster_cidrs: Vec<IpNet>,
    pub vni: u32,
    pub vxlan_port: u16,
    /// The pod MTU: of the VXLAN devices and of the bridge.
    pub mtu: u32,
    pub vtep_mac: Mac,
    pub bridge: String,
}

/// One underlay address of the node and the interface carrying it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnderlayAddr {
    pub ip: IpAddr,
    pub iface: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub name: String,
    /// The peer's underlay address of the family chosen for it: which VXLAN device (or, on the
    /// direct path, which underlay) carries its traffic follows from the family.
    pub node_ip: IpAddr,
    /// The peer's pod blocks, at most one per family.
    pub pod_cidrs: Vec<IpNet>,
    pub vtep_mac: Mac,
    /// `Direct` routes natively only the block of the underlay family (`node_ip`'s): a route
    /// cannot have a gateway of another family without RTA_VIA, so other blocks ride VXLAN.
    pub path: PeerPath,
}

impl Peer {
    /// Whether `block` (one of the peer's) is routed natively via its node IP rather than
    /// through the tunnel: on the direct path, only the block of the underlay's family.
    pub fn routes_directly(&self, block: &IpNet) -> bool {
        self.path == PeerPath::Direct && Family::of_net(block) == Family::of(self.node_ip)
    }
}

impl LocalNode {
    /// The underlay address of one family, if the node has one.
    pub fn underlay(&self, family: Family) -> Option<&UnderlayAddr> {
        self.underlays.iter().find(|u| Family::of(u.ip) == family)
    }

    /// The underlay addresses as a set per family (duplicates of a family: the first).
    pub fn node_ips(&self) -> NodeIps {
        NodeIps::new(Family::ALL.into_iter().filter_map(|f| self.underlay(f).map(|u| u.ip))).unwrap_or_default()
    }

    /// The pod block of one family, if the node has one.
    pub fn pod_cidr(&self, family: Family) -> Option<IpNet> {
        of_family(&self.pod_cidrs, family)
    }

    /// The cluster's pod range of one family, if the cluster has that family.
    pub fn cluster_cidr(&self, family: Family) -> Option<IpNet> {
        of_family(&self.cluster_cidrs, family)
    }

    /// The bridge's addresses, one per pod block: its first host with the block's prefix
    /// (10.244.N.1/24, fd00:10:244:N::1/64).
    pub fn gateways(&self) -> Vec<IpNet> {
        self.pod_cidrs.iter().map(|b| IpNet::new(first_host(b), b.prefix_len()).unwrap_or(*b)).collect()
    }

    /// The VTEP addresses on each VXLAN device, one per pod block, as host routes
    /// (10.244.N.0/32, fd00:10:244:N::/128).
    pub fn vtep_addresses(&self) -> Vec<IpNet> {
        self.pod_cidrs.iter().map(|b| IpNet::from(vtep_of(b))).collect()
    }

    /// The peer blocks this node routes: those of the families the cluster has here. A block of
    /// another family (a peer already configured for a family this node is not) has no range to
    /// be checked against and no gateway on this node to be answered from, so it is left out.
    pub fn routed<'p>(&self, peer: &'p Peer) -> impl Iterator<Item = IpNet> + 'p {
        let families: Vec<Family> = self.cluster_cidrs.iter().map(Family::of_net).collect();
        peer.pod_cidrs.iter().copied().filter(move |b| families.contains(&Family::of_net(b)))
    }
}

fn of_family(nets: &[IpNet], family: Family) -> Option<IpNet> {
    nets.iter().copied().find(|n| Family::of_net(n) == family)
}

/// A block's VTEP address, the on-link next hop peers route the block through: its network
/// address (10.244.N.0, fd00:10:244:N::).
pub fn vtep_of(block: &IpNet) -> IpAddr {
    block.network()
}
