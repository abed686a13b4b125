//! Checking a [`Desired`] before anything is planned: a bad local node makes the whole apply
//! impossible, a bad peer is reported and left out (never programmed), so one misconfigured or
//! conflicting node cannot break routing to the others.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::desired::{Desired, LocalNode, Peer};
use crate::mac::Mac;
use crate::rules::{MAX_MTU, MIN_MTU, check_ifname, max_node_prefix, mtu_in_range};
use crate::underlay::{Family, NodeIpError, NodeIps, check_node_ip};

/// Largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = 0x00ff_ffff;

/// Why the local node cannot be programmed at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidLocal {
    #[error("{field} {name:?} is not a valid interface name")]
    BadInterfaceName { field: &'static str, name: String },
    #[error("bridge {0:?} collides with the underlay or the VXLAN device name")]
    BridgeNameClash(String),
    #[error("{field} {net} is not a network address (host bits set)")]
    NotANetwork { field: &'static str, net: IpNet },
    #[error("two {family} {field}s ({0}, {1}): at most one per family", .nets.0, .nets.1)]
    TwoOfOneFamily { field: &'static str, family: Family, nets: (IpNet, IpNet) },
    #[error("no pod CIDR")]
    NoPodCidr,
    #[error("pod CIDR {0} is too small (at most /{max})", max = max_node_prefix(.0))]
    PodCidrTooSmall(IpNet),
    #[error("pod CIDR {0} has no cluster CIDR of its family")]
    NoClusterOfFamily(IpNet),
    #[error("pod CIDR {pod} is not inside the cluster CIDR {cluster}")]
    PodCidrOutsideCluster { pod: IpNet, cluster: IpNet },
    #[error("VNI {0} does not fit in 24 bits")]
    BadVni(u32),
    #[error("VXLAN UDP port must not be 0")]
    ZeroPort,
    #[error("MTU {0} is out of range ({MIN_MTU}..={MAX_MTU})")]
    BadMtu(u32),
    #[error("VTEP MAC {0} is not a unicast address")]
    BadMac(Mac),
    #[error("underlay addresses: {0}")]
    BadNodeIps(NodeIpError),
}

/// Why one peer is left out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPeer {
    #[error("empty peer name")]
    NoName,
    #[error("no pod CIDR of a family this cluster has")]
    NoPodCidr,
    #[error("two {0} pod CIDRs: at most one per family")]
    TwoOfOneFamily(Family),
    #[error("pod CIDR {0} is not a network address (host bits set)")]
    NotANetwork(IpNet),
    #[error("pod CIDR {0} is too small (at most /{max})", max = max_node_prefix(.0))]
    PodCidrTooSmall(IpNet),
    #[error("pod CIDR {pod} is not inside the cluster CIDR {cluster}")]
    OutsideCluster { pod: IpNet, cluster: IpNet },
    #[error("pod CIDR {0} overlaps the local pod CIDR")]
    OverlapsLocal(IpNet),
    #[error("pod CIDR {0} overlaps another peer's")]
    OverlapsPeer(IpNet),
    #[error("node IP {0}: {1}")]
    BadNodeIp(IpAddr, NodeIpError),
    #[error("node IP {0} is the local node's")]
    LocalNodeIp(IpAddr),
    #[error("node IP {0} is of a family ({1}) the local node has no underlay of")]
    NoUnderlayOfFamily(IpAddr, Family),
    #[error("VTEP MAC {0} is not a unicast address")]
    BadMac(Mac),
    #[error("VTEP MAC {0} is the local node's")]
    LocalMac(Mac),
    #[error("VTEP MAC {0} is used by another peer")]
    DuplicateMac(Mac),
    #[error("another peer has the same name")]
    DuplicateName,
}

/// The peers to program, in the order given, and those left out with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated<'a> {
    pub peers: Vec<&'a Peer>,
    pub rejected: Vec<(&'a Peer, InvalidPeer)>,
}

/// Checks the local node, then each peer alone, then the peers against each other. Every peer
/// involved in a conflict is rejected, so the outcome never depends on the order of the list.
pub fn validate(desired: &Desired) -> Result<Validated<'_>, InvalidLocal> {
    validate_local(&desired.local)?;
    Ok(validate_peers(&desired.local, desired.peers.iter().collect()))
}

/// The peer half of [`validate`], for a valid `local`: also what an incremental apply runs on
/// the few peers a change can affect (see [`crate::incremental`]).
pub(crate) fn validate_peers<'a>(local: &LocalNode, peers: Vec<&'a Peer>) -> Validated<'a> {
    let mut verdicts: Vec<Option<InvalidPeer>> = peers.iter().map(|p| check_peer(local, p)).collect();
    let alone_ok: Vec<usize> = (0..peers.len()).filter(|&i| verdicts[i].is_none()).collect();
    for (i, why) in conflicts(&peers, &alone_ok) {
        verdicts[i].get_or_insert(why);
    }
    let mut out = Validated { peers: Vec::with_capacity(peers.len()), rejected: Vec::new() };
    for (peer, verdict) in peers.into_iter().zip(verdicts) {
        match verdict {
            None => out.peers.push(peer),
            Some(why) => out.rejected.push((peer, why)),
        }
    }
    out
}

fn validate_local(l: &LocalNode) -> Result<(), InvalidLocal> {
    let names = l.underlays.iter().map(|u| ("underlay", &u.iface)).chain([("bridge", &l.bridge)]);
    for (field, name) in names {
        if check_ifname(name).is_err() {
            return Err(InvalidLocal::BadInterfaceName { field, name: name.clone() });
        }
    }
    if l.underlays.iter().any(|u| u.iface == l.bridge) || Family::ALL.iter().any(|f| f.vxlan_device() == l.bridge) {
        return Err(InvalidLocal::BridgeNameClash(l.bridge.clone()));
    }
    for (field, nets) in [("pod CIDR", &l.pod_cidrs), ("cluster CIDR", &l.cluster_cidrs)] {
        if let Some(net) = nets.iter().find(|n| n.addr() != n.network()) {
            return Err(InvalidLocal::NotANetwork { field, net: *net });
        }
        if let Some((family, a, b)) = twin_family(nets) {
            return Err(InvalidLocal::TwoOfOneFamily { field, family, nets: (a, b) });
        }
    }
    if l.pod_cidrs.is_empty() {
        return Err(InvalidLocal::NoPodCidr);
    }
    for pod in &l.pod_cidrs {
        if pod.prefix_len() > max_node_prefix(pod) {
            return Err(InvalidLocal::PodCidrTooSmall(*pod));
        }
        match l.cluster_cidr(Family::of_net(pod)) {
            None => return Err(InvalidLocal::NoClusterOfFamily(*pod)),
            Some(cluster) if !cluster.contains(pod) => {
                return Err(InvalidLocal::PodCidrOutsideCluster { pod: *pod, cluster });
            }
            Some(_) => {}
        }
    }
    if l.vni > MAX_VNI {
        return Err(InvalidLocal::BadVni(l.vni));
    }
    if l.vxlan_port == 0 {
        return Err(InvalidLocal::ZeroPort);
    }
    if !mtu_in_range(l.mtu) {
        return Err(InvalidLocal::BadMtu(l.mtu));
    }
    if !l.vtep_mac.is_unicast() {
        return Err(InvalidLocal::BadMac(l.vtep_mac));
    }
    match NodeIps::new(l.underlays.iter().map(|u| u.ip)) {
        Ok(ips) if ips.is_empty() => Err(InvalidLocal::BadNodeIps(NodeIpError::Empty)),
        Ok(_) => Ok(()),
        Err(e) => Err(InvalidLocal::BadNodeIps(e)),
    }
}

/// Two nets of one family in `nets`: the family and the first two.
fn twin_family(nets: &[IpNet]) -> Option<(Family, IpNet, IpNet)> {
    nets.iter().enumerate().find_map(|(i, a)| {
        let b = nets[i + 1..].iter().find(|b| Family::of_net(b) == Family::of_net(a))?;
        Some((Family::of_net(a), *a, *b))
    })
}

/// What is wrong with one block of a peer (one of a family the local cluster has).
fn check_block(local: &LocalNode, block: IpNet) -> Option<InvalidPeer> {
    let cluster = local.cluster_cidr(Family::of_net(&block))?;
    Some(if block.addr() != block.network() {
        InvalidPeer::NotANetwork(block)
    } else if block.prefix_len() > max_node_prefix(&block) {
        InvalidPeer::PodCidrTooSmall(block)
    } else if !cluster.contains(&block) {
        InvalidPeer::OutsideCluster { pod: block, cluster }
    } else if local.pod_cidrs.iter().any(|own| overlaps(&block, own)) {
        InvalidPeer::OverlapsLocal(block)
    } else {
        return None;
    })
}

fn check_peer(local: &LocalNode, p: &Peer) -> Option<InvalidPeer> {
    let blocks: Vec<IpNet> = local.routed(p).collect();
    let why = if p.name.is_empty() {
        InvalidPeer::NoName
    } else if blocks.is_empty() {
        InvalidPeer::NoPodCidr
    } else if let Some((family, ..)) = twin_family(&blocks) {
        InvalidPeer::TwoOfOneFamily(family)
    } else if let Some(why) = blocks.iter().find_map(|b| check_block(local, *b)) {
        why
    } else if let Err(e) = check_node_ip(p.node_ip) {
        InvalidPeer::BadNodeIp(p.node_ip, e)
    } else if local.underlays.iter().any(|u| u.ip == p.node_ip) {
        InvalidPeer::LocalNodeIp(p.node_ip)
    } else if local.underlay(Family::of(p.node_ip)).is_none() {
        InvalidPeer::NoUnderlayOfFamily(p.node_ip, Family::of(p.node_ip))
    } else if !p.vtep_mac.is_unicast() {
        InvalidPeer::BadMac(p.vtep_mac)
    } else if p.vtep_mac == local.vtep_mac {
        InvalidPeer::LocalMac(p.vtep_mac)
    } else {
        return None;
    };
    Some(why)
}

/// Peers (among `candidates`) that clash with another: same name, same VTEP MAC, or pod CIDRs
/// where one contains the other. By sorting, not maps of lists: this runs on every apply.
fn conflicts(peers: &[&Peer], candidates: &[usize]) -> Vec<(usize, InvalidPeer)> {
    let mut out: Vec<(usize, InvalidPeer)> = Vec::new();
    let names = duplicates(candidates, |i| peers[i].name.as_str());
    out.extend(names.into_iter().map(|i| (i, InvalidPeer::DuplicateName)));
    let macs = duplicates(candidates, |i| peers[i].vtep_mac);
    out.extend(macs.into_iter().map(|i| (i, InvalidPeer::DuplicateMac(peers[i].vtep_mac))));
    let blocks: Vec<(usize, IpNet)> =
        candidates.iter().flat_map(|&i| peers[i].pod_cidrs.iter().map(move |b| (i, *b))).collect();
    out.extend(overlapping(&blocks).into_iter().map(|(i, b)| (i, InvalidPeer::OverlapsPeer(b))));
    // Stable: per peer, the first reason found is kept.
    out.sort_by_key(|(i, _)| *i);
    out
}

/// The candidates whose key another candidate shares.
fn duplicates<K: Ord>(candidates: &[usize], key: impl Fn(usize) -> K) -> Vec<usize> {
    let mut order = candidates.to_vec();
    order.sort_by_key(|&i| key(i));
    let mut out: Vec<usize> = order.windows(2).filter(|w| key(w[0]) == key(w[1])).flat_map(|w| [w[0], w[1]]).collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The blocks (peer index, block) that overlap another peer's, in O(n log n): two CIDRs either
/// nest or are disjoint, so after sorting by (family, start, prefix) a CIDR overlaps an earlier one
/// of its family exactly when it starts before the furthest end seen so far, and that
/// furthest-reaching one contains it.
fn overlapping(blocks: &[(usize, IpNet)]) -> Vec<(usize, IpNet)> {
    let mut order: Vec<usize> = (0..blocks.len()).collect();
    order.sort_by_key(|&k| {
        let (family, start, _) = range(&blocks[k].1);
        (family, start, blocks[k].1.prefix_len())
    });
    let mut hits = Vec::new();
    let mut furthest: Option<(Family, u128, usize)> = None;
    for k in order {
        let (family, start, end) = range(&blocks[k].1);
        if let Some((reach_family, reach, holder)) = furthest
            && reach_family == family
        {
            if start <= reach {
                hits.extend([k, holder]);
            }
            if end <= reach {
                continue;
            }
        }
        furthest = Some((family, end, k));
    }
    let mut out: Vec<(usize, IpNet)> = hits.into_iter().map(|k| blocks[k]).collect();
    out.sort_unstable();
    out.dedup_by_key(|(i, _)| *i);
    out
}

/// A CIDR as its family and its first and last address, comparable across sizes.
pub(crate) fn range(net: &IpNet) -> (Family, u128, u128) {
    (Family::of_net(net), as_u128(net.network()), as_u128(net.broadcast()))
}

fn as_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4).into(),
        IpAddr::V6(v6) => v6.into(),
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::desired::PeerPath;
    use crate::desired::{DEFAULT_VNI, DEFAULT_VXLAN_PORT, UnderlayAddr};
    use crate::rules::DEFAULT_BRIDGE;
    use ipnet::Ipv4Net;
    use std::net::Ipv4Addr;

    pub(crate) fn local() -> LocalNode {
        LocalNode {
            name: "n1".into(),
            underlays: vec![UnderlayAddr { ip: "192.0.2.10".parse().unwrap(), iface: "eth0".into() }],
            pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()],
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            vni: DEFAULT_VNI,
            vxlan_port: DEFAULT_VXLAN_PORT,
            mtu: 1450,
            vtep_mac: Mac::derived("n1"),
            bridge: DEFAULT_BRIDGE.into(),
        }
    }

    pub(crate) fn peer(n: u8, path: PeerPath) -> Peer {
        Peer {
            name: format!("n{n}"),
            node_ip: Ipv4Addr::new(198, 51, 100, 10 + n).into(),
            pod_cidrs: vec![Ipv4Net::new(Ipv4Addr::new(10, 244, n, 0), 24).unwrap().into()],
            vtep_mac: Mac::derived(&format!("n{n}")),
            path,
        }
    }

    fn desired(peers: Vec<Peer>) -> Desired {
        Desired { local: local(), peers }
    }

    fn rejected(d: &Desired) -> Vec<(String, InvalidPeer)> {
        validate(d).unwrap().rejected.into_iter().map(|(p, why)| (p.name.clone(), why)).collect()
    }

    #[test]
    fn good_peers_pass_in_order() {
        let d = desired(vec![peer(3, PeerPath::Vxlan), peer(2, PeerPath::Direct)]);
        let v = validate(&d).unwrap();
        assert_eq!(v.peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["n3", "n2"]);
        assert!(v.rejected.is_empty());
    }

    #[test]
    fn peers_outside_the_cluster_or_on_the_local_cidr_are_rejected() {
        let mut outside = peer(2, PeerPath::Vxlan);
        outside.pod_cidrs[0] = "10.245.2.0/24".parse().unwrap();
        let mut local_clash = peer(3, PeerPath::Vxlan);
        local_clash.pod_cidrs[0] = "10.244.1.0/25".parse().unwrap();
        let mut host_bits = peer(4, PeerPath::Vxlan);
        host_bits.pod_cidrs[0] = "10.244.4.7/24".parse().unwrap();
        let d = desired(vec![outside, local_clash, host_bits, peer(5, PeerPath::Vxlan)]);
        let r = rejected(&d);
        assert_eq!(r.len(), 3, "{r:?}");
        assert!(matches!(r[0], (ref n, InvalidPeer::OutsideCluster { .. }) if n == "n2"));
        assert!(matches!(r[1], (ref n, InvalidPeer::OverlapsLocal(_)) if n == "n3"));
        assert!(matches!(r[2], (ref n, InvalidPeer::NotANetwork(_)) if n == "n4"));
    }

    #[test]
    fn both_sides_of_a_conflict_are_rejected() {
        let mut wide = peer(2, PeerPath::Vxlan);
        wide.pod_cidrs[0] = "10.244.2.0/23".parse().unwrap();
        let narrow = peer(3, PeerPath::Vxlan); // 10.244.3.0/24 inside 10.244.2.0/23
        let mut same_mac = peer(4, PeerPath::Vxlan);
        same_mac.vtep_mac = Mac::derived("n5");
        let mac_twin = peer(5, PeerPath::Vxlan);
        let mut name_twin = peer(6, PeerPath::Vxlan);
        name_twin.name = "n7".into();
        let d = desired(vec![
            wide,
            narrow,
            same_mac,
            mac_twin,
            name_twin,
            peer(7, PeerPath::Vxlan),
            peer(8, PeerPath::Vxlan),
        ]);
        let v = validate(&d).unwrap();
        assert_eq!(v.peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["n8"]);
        let why: Vec<_> = v.rejected.iter().map(|(_, w)| w.clone()).collect();
        assert!(matches!(why[0], InvalidPeer::OverlapsPeer(_)));
        assert!(matches!(why[1], InvalidPeer::OverlapsPeer(_)));
        assert!(matches!(why[2], InvalidPeer::DuplicateMac(_)));
        assert!(matches!(why[3], InvalidPeer::DuplicateMac(_)));
        assert_eq!(why[4], InvalidPeer::DuplicateName);
        assert_eq!(why[5], InvalidPeer::DuplicateName);
    }

    #[test]
    fn identical_cidrs_conflict() {
        let mut twin = peer(3, PeerPath::Vxlan);
        twin.pod_cidrs = peer(2, PeerPath::Vxlan).pod_cidrs;
        let d = desired(vec![peer(2, PeerPath::Vxlan), twin]);
        assert_eq!(rejected(&d).len(), 2);
    }

    #[test]
    fn overlap_sweep_agrees_with_comparing_every_pair() {
        // Nested and disjoint CIDRs of many sizes, from a fixed pseudo-random sequence.
        let mut x: u32 = 12345;
        let mut peers = Vec::new();
        for k in 0..120u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let prefix = 22 + (x >> 16) % 9;
            let start = Ipv4Addr::from(0x0af4_0000 | ((x >> 3) & 0xffff));
            let mut p = peer(2, PeerPath::Vxlan);
            p.name = format!("p{k}");
            p.pod_cidrs[0] = Ipv4Net::new(start, prefix as u8).unwrap().trunc().into();
            peers.push(p);
        }
        // The same blocks again in IPv6, of another peer each: families never overlap each other.
        let v6 = |net: &IpNet| -> IpNet {
            let IpAddr::V4(v4) = net.network() else { unreachable!() };
            let addr = std::net::Ipv6Addr::from((0xfd00_0010_0244u128 << 80) | u128::from(u32::from(v4)));
            IpNet::new(addr.into(), net.prefix_len() + 96).unwrap()
        };
        let mut blocks: Vec<(usize, IpNet)> = peers.iter().enumerate().map(|(i, p)| (i, p.pod_cidrs[0])).collect();
        blocks.extend(peers.iter().enumerate().map(|(i, p)| (i + peers.len(), v6(&p.pod_cidrs[0]))));
        let expected: Vec<(usize, IpNet)> =
            blocks.iter().copied().filter(|&(i, a)| blocks.iter().any(|&(j, b)| j != i && overlaps(&a, &b))).collect();
        assert!(!expected.is_empty() && expected.len() < blocks.len());
        assert!(expected.iter().any(|(_, b)| b.addr().is_ipv6()));
        assert_eq!(overlapping(&blocks), expected);
    }

    #[test]
    fn bad_addresses_and_macs_are_rejected() {
        let mut multicast = peer(2, PeerPath::Vxlan);
        multicast.vtep_mac = "01:00:5e:00:00:01".parse().unwrap();
        let mut ours = peer(3, PeerPath::Vxlan);
        ours.vtep_mac = local().vtep_mac;
        let mut zero_ip = peer(4, PeerPath::Vxlan);
        zero_ip.node_ip = Ipv4Addr::UNSPECIFIED.into();
        let mut our_ip = peer(5, PeerPath::Direct);
        our_ip.node_ip = local().underlays[0].ip;
        let mut unnamed = peer(6, PeerPath::Vxlan);
        unnamed.name.clear();
        let mut v6 = peer(7, PeerPath::Vxlan);
        v6.node_ip = "2001:db8:2::7".parse().unwrap();
        let d = desired(vec![multicast, ours, zero_ip, our_ip, unnamed, v6]);
        let why: Vec<_> = rejected(&d).into_iter().map(|(_, w)| w).collect();
        assert!(matches!(why[0], InvalidPeer::BadMac(_)));
        assert!(matches!(why[1], InvalidPeer::LocalMac(_)));
        assert!(matches!(why[2], InvalidPeer::BadNodeIp(..)));
        assert!(matches!(why[3], InvalidPeer::LocalNodeIp(_)));
        assert_eq!(why[4], InvalidPeer::NoName);
        // An IPv6 endpoint needs an IPv6 underlay here.
        assert!(matches!(why[5], InvalidPeer::NoUnderlayOfFamily(_, Family::Ipv6)));
    }

    #[test]
    fn ipv6_endpoints_are_taken_on_an_ipv6_underlay_direct_or_not() {
        let mut d = desired(vec![]);
        d.local.underlays = vec![UnderlayAddr { ip: "2001:db8:1::10".parse().unwrap(), iface: "eth0".into() }];
        let mut tunnel = peer(2, PeerPath::Vxlan);
        tunnel.node_ip = "2001:db8:2::20".parse().unwrap();
        let mut direct = peer(3, PeerPath::Direct);
        direct.node_ip = "2001:db8:1::30".parse().unwrap();
        let mut link_local = peer(4, PeerPath::Vxlan);
        link_local.node_ip = "fe80::4".parse().unwrap();
        d.peers = vec![tunnel, direct, link_local];
        let v = validate(&d).unwrap();
        // A direct peer's IPv4 block rides VXLAN over the IPv6 underlay (the planner's choice).
        assert_eq!(v.peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["n2", "n3"]);
        let why: Vec<_> = v.rejected.iter().map(|(_, w)| w.clone()).collect();
        assert!(matches!(why[..], [InvalidPeer::BadNodeIp(_, NodeIpError::LinkLocal(_))]));
    }

    pub(crate) fn v6_block(n: u8) -> IpNet {
        format!("fd00:10:244:{n:x}::/64").parse().unwrap()
    }

    /// The local node with an IPv6 block too, in a dual-stack cluster.
    pub(crate) fn dual_local() -> LocalNode {
        let mut l = local();
        l.pod_cidrs.push(v6_block(1));
        l.cluster_cidrs.push("fd00:10:244::/56".parse().unwrap());
        l
    }

    #[test]
    fn each_block_of_a_peer_is_checked_against_its_familys_cluster_cidr() {
        let dual = |n: u8| {
            let mut p = peer(n, PeerPath::Vxlan);
            p.pod_cidrs.push(v6_block(n));
            p
        };
        let mut outside = dual(2);
        outside.pod_cidrs[1] = "fd00:10:245:2::/64".parse().unwrap();
        let mut too_small = dual(3);
        too_small.pod_cidrs[1] = "fd00:10:244:3::/80".parse().unwrap();
        let mut on_ours = dual(4);
        on_ours.pod_cidrs[1] = v6_block(1);
        let mut twice = dual(5);
        twice.pod_cidrs.push(v6_block(0x55));
        let mut v6_twin = dual(6);
        v6_twin.pod_cidrs[1] = v6_block(7);
        let v6_only = Peer { pod_cidrs: vec![v6_block(8)], ..peer(8, PeerPath::Vxlan) };
        let peers = vec![outside, too_small, on_ours, twice, v6_twin, dual(7), v6_only, dual(9)];
        let d = Desired { local: dual_local(), peers };
        let v = validate(&d).unwrap();
        assert_eq!(v.peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["n8", "n9"]);
        let why: Vec<_> = v.rejected.iter().map(|(p, w)| (p.name.as_str(), w.clone())).collect();
        assert!(matches!(why[0], ("n2", InvalidPeer::OutsideCluster { .. })), "{why:?}");
        assert!(matches!(why[1], ("n3", InvalidPeer::PodCidrTooSmall(_))), "{why:?}");
        assert!(matches!(why[2], ("n4", InvalidPeer::OverlapsLocal(b)) if b == v6_block(1)), "{why:?}");
        assert!(matches!(why[3], ("n5", InvalidPeer::TwoOfOneFamily(Family::Ipv6))), "{why:?}");
        // Same IPv6 block on two peers: both out, though their IPv4 blocks differ.
        assert!(matches!(why[4], ("n6", InvalidPeer::OverlapsPeer(b)) if b == v6_block(7)), "{why:?}");
        assert!(matches!(why[5], ("n7", InvalidPeer::OverlapsPeer(b)) if b == v6_block(7)), "{why:?}");
    }

    #[test]
    fn blocks_of_a_family_the_cluster_lacks_here_are_not_routed() {
        // An IPv4-only node: a dual-stack peer is routed by its IPv4 block, an IPv6-only one not at all.
        let mut dual = peer(2, PeerPath::Vxlan);
        dual.pod_cidrs.push(v6_block(2));
        let v6_only = Peer { pod_cidrs: vec![v6_block(3)], ..peer(3, PeerPath::Vxlan) };
        let d = desired(vec![dual.clone(), v6_only]);
        assert_eq!(d.local.routed(&dual).collect::<Vec<_>>(), [dual.pod_cidrs[0]]);
        assert_eq!(rejected(&d), [("n3".to_string(), InvalidPeer::NoPodCidr)]);
    }

    #[test]
    fn a_bad_local_node_is_an_error() {
        type Case = (fn(&mut LocalNode), fn(&InvalidLocal) -> bool);
        let cases: Vec<Case> = vec![
            (
                |l| l.pod_cidrs[0] = "10.245.1.0/24".parse().unwrap(),
                |e| matches!(e, InvalidLocal::PodCidrOutsideCluster { .. }),
            ),
            (|l| l.pod_cidrs[0] = "10.244.1.0/31".parse().unwrap(), |e| matches!(e, InvalidLocal::PodCidrTooSmall(_))),
            (
                |l| l.cluster_cidrs[0] = "10.244.0.1/16".parse().unwrap(),
                |e| matches!(e, InvalidLocal::NotANetwork { .. }),
            ),
            (|l| l.pod_cidrs.clear(), |e| *e == InvalidLocal::NoPodCidr),
            (
                |l| l.pod_cidrs.push("10.244.2.0/24".parse().unwrap()),
                |e| matches!(e, InvalidLocal::TwoOfOneFamily { field: "pod CIDR", family: Family::Ipv4, .. }),
            ),
            (
                |l| l.cluster_cidrs.push("10.0.0.0/8".parse().unwrap()),
                |e| matches!(e, InvalidLocal::TwoOfOneFamily { field: "cluster CIDR", .. }),
            ),
            (|l| l.pod_cidrs.push(v6_block(1)), |e| matches!(e, InvalidLocal::NoClusterOfFamily(_))),
            (
                |l| {
                    *l = dual_local();
                    l.pod_cidrs[1] = "fd00:10:244:1::/96".parse().unwrap();
                },
                |e| matches!(e, InvalidLocal::PodCidrTooSmall(b) if b.addr().is_ipv6()),
            ),
            (
                |l| {
                    *l = dual_local();
                    l.pod_cidrs[1] = "fd00:10:245:1::/64".parse().unwrap();
                },
                |e| matches!(e, InvalidLocal::PodCidrOutsideCluster { .. }),
            ),
            (|l| l.vni = 1 << 24, |e| matches!(e, InvalidLocal::BadVni(_))),
            (|l| l.vxlan_port = 0, |e| *e == InvalidLocal::ZeroPort),
            (|l| l.mtu = 20, |e| matches!(e, InvalidLocal::BadMtu(20))),
            (|l| l.vtep_mac = "ff:ff:ff:ff:ff:ff".parse().unwrap(), |e| matches!(e, InvalidLocal::BadMac(_))),
            (|l| l.underlays[0].ip = "127.0.0.1".parse().unwrap(), |e| matches!(e, InvalidLocal::BadNodeIps(_))),
            (|l| l.underlays.clear(), |e| *e == InvalidLocal::BadNodeIps(NodeIpError::Empty)),
            (
                |l| l.underlays.push(UnderlayAddr { ip: "198.51.100.1".parse().unwrap(), iface: "eth1".into() }),
                |e| matches!(e, InvalidLocal::BadNodeIps(NodeIpError::TwoOfOneFamily(..))),
            ),
            (
                |l| l.underlays[0].iface = "a-name-longer-than-15".into(),
                |e| matches!(e, InvalidLocal::BadInterfaceName { .. }),
            ),
            (|l| l.bridge = "vxlan0".into(), |e| matches!(e, InvalidLocal::BridgeNameClash(_))),
            (|l| l.bridge = "vxlan-v6".into(), |e| matches!(e, InvalidLocal::BridgeNameClash(_))),
        ];
        for (break_it, expected) in cases {
            let mut d = desired(vec![]);
            break_it(&mut d.local);
            let err = validate(&d).unwrap_err();
            assert!(expected(&err), "{err}");
        }
    }
}
