//! The desired state of one node's datapath: the local node and its live peers. The agent builds
//! it; [`crate::Dataplane::apply`] makes the kernel match it.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::mac::Mac;
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
    pub pod_cidr: Ipv4Net,
    pub cluster_cidr: Ipv4Net,
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
    pub pod_cidr: Ipv4Net,
    pub vtep_mac: Mac,
    pub path: PeerPath,
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

    /// The bridge's address: the first host of the PodCIDR (10.244.N.1).
    pub fn gateway(&self) -> Ipv4Addr {
        gateway_of(&self.pod_cidr)
    }

    /// The bridge's address with the PodCIDR's prefix (10.244.N.1/24).
    pub fn gateway_net(&self) -> Ipv4Net {
        // The prefix comes from a valid Ipv4Net, so the fallback is never taken.
        Ipv4Net::new(self.gateway(), self.pod_cidr.prefix_len()).unwrap_or_else(|_| Ipv4Net::from(self.gateway()))
    }

    /// The VTEP address on `vxlan0`: the PodCIDR's network address (10.244.N.0).
    pub fn vtep_ip(&self) -> Ipv4Addr {
        self.pod_cidr.network()
    }
}

impl Peer {
    /// The peer's VTEP address, the on-link next hop for its PodCIDR.
    pub fn vtep_ip(&self) -> Ipv4Addr {
        self.pod_cidr.network()
    }
}

/// The conventional gateway of a pod subnet: its first host address.
pub fn gateway_of(net: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + 1)
}
