//! Underlay families: a node has at most one underlay address per family and one VXLAN device
//! per family it has (a VXLAN device without metadata mode opens a socket of one family only);
//! per peer one family carries the tunnel. Plain data and pure rules, shared by the agent (flags,
//! gossip, path choice) and the planner (devices, validation).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::desired::DEFAULT_VXLAN_DEVICE;
use crate::rules::is_unicast;

/// The VXLAN device of an IPv6 underlay.
pub const VXLAN6_DEVICE: &str = "vxlan-v6";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    /// In order of preference: IPv4 wins where one must be chosen, so existing clusters keep
    /// their behaviour.
    pub const ALL: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }

    pub fn of_net(net: &IpNet) -> Family {
        Family::of(net.addr())
    }

    /// Its name in JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }

    /// The VXLAN device carrying this family's tunnels: vxlan0 stays the IPv4 one.
    pub fn vxlan_device(self) -> &'static str {
        match self {
            Family::Ipv4 => DEFAULT_VXLAN_DEVICE,
            Family::Ipv6 => VXLAN6_DEVICE,
        }
    }

    /// Outer IP header (20 or 40) + UDP (8) + VXLAN (8) + inner Ethernet (14).
    pub fn vxlan_overhead(self) -> u32 {
        match self {
            Family::Ipv4 => 50,
            Family::Ipv6 => 70,
        }
    }

    /// nft's type of a set of this family's addresses.
    pub fn nft_addr_type(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4_addr",
            Family::Ipv6 => "ipv6_addr",
        }
    }

    /// nft's match keyword for this family's header (`ip`, `ip6`).
    pub fn nft_proto(self) -> &'static str {
        match self {
            Family::Ipv4 => "ip",
            Family::Ipv6 => "ip6",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        })
    }
}

/// Why an underlay address (list) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeIpError {
    #[error("no address given")]
    Empty,
    #[error("{0:?} is not an IP address")]
    NotAnAddress(String),
    #[error("two {0} addresses ({1}, {2}): at most one per family")]
    TwoOfOneFamily(Family, IpAddr, IpAddr),
    #[error("{0} is not a unicast address")]
    NotUnicast(IpAddr),
    #[error("{0} is link-local: a VXLAN endpoint needs an address routed between nodes")]
    LinkLocal(IpAddr),
}

/// What an underlay address may be: unicast, and for IPv6 not link-local (it would need a
/// scope, and peers on other links could not reach it).
pub fn check_node_ip(ip: IpAddr) -> Result<(), NodeIpError> {
    if !is_unicast(ip) {
        return Err(NodeIpError::NotUnicast(ip));
    }
    if let IpAddr::V6(v6) = ip
        && v6.is_unicast_link_local()
    {
        return Err(NodeIpError::LinkLocal(ip));
    }
    Ok(())
}

/// A node's underlay addresses: at most one per family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct NodeIps([Option<IpAddr>; 2]);

impl NodeIps {
    /// Checks every address and that no family comes twice.
    pub fn new(ips: impl IntoIterator<Item = IpAddr>) -> Result<NodeIps, NodeIpError> {
        let mut out = NodeIps::default();
        for ip in ips {
            check_node_ip(ip)?;
            let slot = &mut out.0[Family::of(ip).index()];
            if let Some(first) = *slot {
                return Err(NodeIpError::TwoOfOneFamily(Family::of(ip), first, ip));
            }
            *slot = Some(ip);
        }
        Ok(out)
    }

    pub fn get(&self, family: Family) -> Option<IpAddr> {
        self.0[family.index()]
    }

    /// IPv4 first.
    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.0.iter().flatten().copied()
    }

    pub fn families(&self) -> impl Iterator<Item = Family> + '_ {
        self.iter().map(Family::of)
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.get(Family::of(ip)) == Some(ip)
    }

    /// The address standing for the node where one must be named (gossip, status): IPv4 wins.
    pub fn primary(&self) -> Option<IpAddr> {
        self.iter().next()
    }
}

impl fmt::Display for NodeIps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ips: Vec<String> = self.iter().map(|ip| ip.to_string()).collect();
        f.write_str(&ips.join(","))
    }
}

/// A comma-separated list, e.g. `192.0.2.10,2001:db8:1::10`.
impl FromStr for NodeIps {
    type Err = NodeIpError;

    fn from_str(s: &str) -> Result<NodeIps, NodeIpError> {
        let ips = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| p.parse::<IpAddr>().map_err(|_| NodeIpError::NotAnAddress(p.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        if ips.is_empty() {
            return Err(NodeIpError::Empty);
        }
        NodeIps::new(ips)
    }
}

/// Two nodes whose underlays have no family in common: no tunnel can join them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no shared underlay family (this node: {}; peer: {})", families(.local), families(.peer))]
pub struct NoSharedFamily {
    pub local: NodeIps,
    pub peer: NodeIps,
}

fn families(ips: &NodeIps) -> String {
    let names: Vec<String> = ips.families().map(|f| f.to_string()).collect();
    if names.is_empty() { "none".into() } else { names.join(" and ") }
}

/// How traffic to a peer's pods travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerPath {
    /// Encapsulated in VXLAN to the peer's node IP.
    Vxlan,
    /// Routed natively via the peer's node IP (same underlay subnet).
    Direct,
}

/// The path to one peer: the underlay family and address its traffic goes to, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathChoice {
    pub family: Family,
    /// The peer's underlay address of `family`.
    pub endpoint: IpAddr,
    pub path: PeerPath,
}

/// The one place a peer's path is chosen. Family: IPv4 when both nodes have an IPv4 underlay,
/// else IPv6 when both have one. Direct (in cross-subnet mode, `local_subnets` given) only when
/// the peer's address is on this node's on-link subnet of that family and the pods are of the
/// same family: an IPv4 pod route cannot have an IPv6 gateway without RTA_VIA, so pods of the
/// other family are encapsulated.
pub fn choose_path(
    local: &NodeIps,
    peer: &NodeIps,
    pod_family: Family,
    local_subnets: Option<&[IpNet]>,
) -> Result<PathChoice, NoSharedFamily> {
    let (family, endpoint) = Family::ALL
        .into_iter()
        .find_map(|f| Some((f, local.get(f).and(peer.get(f))?)))
        .ok_or(NoSharedFamily { local: *local, peer: *peer })?;
    let same_subnet = local_subnets.is_some_and(|nets| nets.iter().any(|n| n.contains(&endpoint)));
    let path = if same_subnet && family == pod_family { PeerPath::Direct } else { PeerPath::Vxlan };
    Ok(PathChoice { family, endpoint, path })
}

/// The pod MTU that fits the tunnels of every family the node has: (family, underlay MTU) in,
/// the smallest of MTU − overhead out (pods may use either path). `None` when an underlay MTU
/// leaves no room, or there is none.
pub fn pod_mtu(underlays: impl IntoIterator<Item = (Family, u32)>) -> Option<u32> {
    let mut min: Option<u32> = None;
    for (family, mtu) in underlays {
        let room = mtu.checked_sub(family.vxlan_overhead())?;
        min = Some(min.map_or(room, |m| m.min(room)));
    }
    min
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(s: &str) -> NodeIps {
        s.parse().unwrap()
    }

    #[test]
    fn node_ip_lists_take_one_address_per_family() {
        let both = ips("192.0.2.10, 2001:db8:1::10");
        assert_eq!(both.get(Family::Ipv4), Some("192.0.2.10".parse().unwrap()));
        assert_eq!(both.get(Family::Ipv6), Some("2001:db8:1::10".parse().unwrap()));
        assert_eq!(both.to_string(), "192.0.2.10,2001:db8:1::10");
        // The order given does not matter; IPv4 stands for the node.
        assert_eq!(ips("2001:db8:1::10,192.0.2.10"), both);
        assert_eq!(both.primary(), Some("192.0.2.10".parse().unwrap()));
        assert_eq!(ips("2001:db8:1::10").primary(), Some("2001:db8:1::10".parse().unwrap()));
        assert!(both.contains("2001:db8:1::10".parse().unwrap()));
        assert!(!both.contains("2001:db8:1::11".parse().unwrap()));
    }

    #[test]
    fn bad_node_ip_lists_say_why() {
        assert_eq!("".parse::<NodeIps>(), Err(NodeIpError::Empty));
        assert!(matches!("192.0.2.1,x".parse::<NodeIps>(), Err(NodeIpError::NotAnAddress(a)) if a == "x"));
        assert!(matches!(
            "192.0.2.1,198.51.100.1".parse::<NodeIps>(),
            Err(NodeIpError::TwoOfOneFamily(Family::Ipv4, ..))
        ));
        assert!(matches!(
            "2001:db8::1,2001:db8::2".parse::<NodeIps>(),
            Err(NodeIpError::TwoOfOneFamily(Family::Ipv6, ..))
        ));
        assert!(matches!("::1".parse::<NodeIps>(), Err(NodeIpError::NotUnicast(_))));
        assert!(matches!("224.0.0.1".parse::<NodeIps>(), Err(NodeIpError::NotUnicast(_))));
        assert!(matches!("fe80::1".parse::<NodeIps>(), Err(NodeIpError::LinkLocal(_))));
        let text = "fe80::1".parse::<NodeIps>().unwrap_err().to_string();
        assert!(text.contains("link-local"), "{text}");
    }

    #[test]
    fn the_path_family_is_ipv4_when_shared_else_ipv6_else_none() {
        let v4 = ips("192.0.2.10");
        let v6 = ips("2001:db8:1::10");
        let dual = ips("192.0.2.11,2001:db8:1::11");
        let pods = Family::Ipv4;
        let family = |a: &NodeIps, b: &NodeIps| choose_path(a, b, pods, None).map(|c| c.family);
        assert_eq!(family(&dual, &dual), Ok(Family::Ipv4));
        assert_eq!(family(&v4, &dual), Ok(Family::Ipv4));
        assert_eq!(family(&v6, &dual), Ok(Family::Ipv6));
        assert_eq!(family(&dual, &v6), Ok(Family::Ipv6));
        assert_eq!(family(&v6, &v6), Ok(Family::Ipv6));
        let none = choose_path(&v6, &v4, pods, None).unwrap_err();
        assert_eq!(none.to_string(), "no shared underlay family (this node: IPv6; peer: IPv4)");
        let none = choose_path(&dual, &NodeIps::default(), pods, None).unwrap_err();
        assert_eq!(none.to_string(), "no shared underlay family (this node: IPv4 and IPv6; peer: none)");
        // The endpoint is the peer's address of the chosen family.
        assert_eq!(choose_path(&v6, &dual, pods, None).unwrap().endpoint, "2001:db8:1::11".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn direct_only_on_the_same_on_link_prefix_and_for_pods_of_the_underlay_family() {
        let subnets: Vec<IpNet> = vec!["192.0.2.0/24".parse().unwrap(), "2001:db8:1::/64".parse().unwrap()];
        let near6 = ips("2001:db8:1::20");
        let far6 = ips("2001:db8:2::20");
        let me = ips("2001:db8:1::10");
        let path = |peer: &NodeIps, pods, nets: Option<&[IpNet]>| choose_path(&me, peer, pods, nets).unwrap().path;
        assert_eq!(path(&near6, Family::Ipv6, Some(&subnets)), PeerPath::Direct);
        assert_eq!(path(&far6, Family::Ipv6, Some(&subnets)), PeerPath::Vxlan);
        // IPv4 pods over an IPv6 underlay are always encapsulated.
        assert_eq!(path(&near6, Family::Ipv4, Some(&subnets)), PeerPath::Vxlan);
        // `encap always`: no subnets given.
        assert_eq!(path(&near6, Family::Ipv6, None), PeerPath::Vxlan);
        let me4 = ips("192.0.2.10");
        let near4 = ips("192.0.2.20");
        assert_eq!(choose_path(&me4, &near4, Family::Ipv4, Some(&subnets)).unwrap().path, PeerPath::Direct);
    }

    #[test]
    fn the_pod_mtu_fits_the_tunnels_of_every_family() {
        assert_eq!(pod_mtu([(Family::Ipv4, 1500)]), Some(1450));
        assert_eq!(pod_mtu([(Family::Ipv6, 1500)]), Some(1430));
        assert_eq!(pod_mtu([(Family::Ipv4, 1500), (Family::Ipv6, 1500)]), Some(1430));
        assert_eq!(pod_mtu([(Family::Ipv4, 1400), (Family::Ipv6, 9000)]), Some(1350));
        assert_eq!(pod_mtu([(Family::Ipv6, 60)]), None);
        assert_eq!(pod_mtu([]), None);
    }

    #[test]
    fn devices_per_family() {
        assert_eq!(Family::Ipv4.vxlan_device(), "vxlan0");
        assert_eq!(Family::Ipv6.vxlan_device(), "vxlan-v6");
        assert_eq!(Family::of("2001:db8::1".parse().unwrap()), Family::Ipv6);
    }
}
