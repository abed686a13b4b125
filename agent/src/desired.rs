//! The desired datapath state, computed from the local node and the peers to program.

use ipnet::IpNet;
use weft_overlay::desired::{Desired, LocalNode, Peer, PeerPath};
use weft_overlay::underlay::{Family, NoSharedFamily, NodeIps, PathChoice, choose_path};

use crate::config::Encap;
use crate::peers::Programmable;

/// How to reach the pods of a peer with underlay addresses `peer` (see
/// [`weft_overlay::underlay::choose_path`]): natively inside one of our own underlay subnets in
/// cross-subnet mode (the peer is a direct L2 neighbour), else through VXLAN. Direct when the
/// pods of any family of the cluster (`pods`, not empty) can go directly: the datapath then
/// routes only the block of the underlay's family natively.
pub fn path(
    encap: Encap,
    local: &NodeIps,
    subnets: &[IpNet],
    pods: &[Family],
    peer: &NodeIps,
) -> Result<PathChoice, NoSharedFamily> {
    let on_link = match encap {
        Encap::CrossSubnet => Some(subnets),
        Encap::Always => None,
    };
    let choices = pods.iter().map(|f| choose_path(local, peer, *f, on_link)).collect::<Result<Vec<_>, _>>()?;
    let first = *choices.first().ok_or(NoSharedFamily { local: *local, peer: *peer })?;
    Ok(choices.into_iter().find(|c| c.path == PeerPath::Direct).unwrap_or(first))
}

/// The datapath's desired state. `peers` are the peers to program, each with the blocks routed
/// to it; only those with a block are included, sorted by name so equal inputs give equal
/// outputs.
pub fn build<'a>(local: LocalNode, peers: impl IntoIterator<Item = Programmable<'a>>) -> Desired {
    let mut peers: Vec<Peer> = peers
        .into_iter()
        .filter(|p| !p.blocks.is_empty())
        .map(|p| Peer {
            name: p.name.to_string(),
            node_ip: p.path.endpoint,
            pod_cidrs: p.blocks,
            vtep_mac: p.announcement.vtep_mac,
            path: p.path.path,
        })
        .collect();
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    Desired { local, peers }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocation::{Claim, ClaimKind};
    use crate::validate::Announcement;
    use weft_overlay::Mac;
    use weft_overlay::desired::UnderlayAddr;

    fn subnets() -> Vec<IpNet> {
        vec!["192.0.2.0/24".parse().unwrap()]
    }

    fn me() -> NodeIps {
        "192.0.2.10".parse().unwrap()
    }

    #[test]
    fn cross_subnet_goes_direct_only_inside_the_underlay_subnet() {
        let near = "192.0.2.77".parse().unwrap();
        let far = "198.51.100.7".parse().unwrap();
        let path = |encap, peer| path(encap, &me(), &subnets(), &[Family::Ipv4], peer).unwrap().path;
        assert_eq!(path(Encap::CrossSubnet, &near), PeerPath::Direct);
        assert_eq!(path(Encap::CrossSubnet, &far), PeerPath::Vxlan);
        assert_eq!(path(Encap::Always, &near), PeerPath::Vxlan);
    }

    fn local() -> LocalNode {
        LocalNode {
            name: "a".into(),
            underlays: vec![UnderlayAddr { ip: "192.0.2.10".parse().unwrap(), iface: "eth0".into() }],
            pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()],
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            vni: 1,
            vxlan_port: 8472,
            mtu: 1450,
            vtep_mac: Mac::derived("a"),
            bridge: "cni0".into(),
        }
    }

    fn announcement(ips: &str, cidrs: &[&str]) -> Announcement {
        Announcement {
            node_ips: ips.parse().unwrap(),
            vtep_mac: Mac::derived(ips),
            claims: cidrs
                .iter()
                .map(|c| Claim { cidr: c.parse().unwrap(), kind: ClaimKind::Confirmed, since_ms: 1 })
                .collect(),
        }
    }

    #[test]
    fn desired_lists_peers_with_a_routed_block_sorted_by_name() {
        let c = announcement("198.51.100.3", &["10.244.3.0/24"]);
        // b lost its IPv6 block: it is routed the IPv4 one only.
        let b = announcement("192.0.2.2,2001:db8:1::2", &["10.244.2.0/24", "fd00:10:244:2::/64"]);
        let d = announcement("192.0.2.4", &[]);
        fn peer<'a>(name: &'a str, a: &'a Announcement, blocks: usize) -> Programmable<'a> {
            Programmable {
                name,
                announcement: a,
                path: path(Encap::CrossSubnet, &me(), &subnets(), &[Family::Ipv4], &a.node_ips).unwrap(),
                blocks: a.claims.iter().take(blocks).map(|c| c.cidr).collect(),
            }
        }
        let desired = build(local(), [peer("c", &c, 1), peer("b", &b, 1), peer("d", &d, 0)]);
        assert_eq!(desired.local, local());
        let names: Vec<&str> = desired.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(desired.peers[0].path, PeerPath::Direct);
        // The endpoint is the address of the family both share.
        assert_eq!(desired.peers[0].node_ip, "192.0.2.2".parse::<std::net::IpAddr>().unwrap());
        assert_eq!(desired.peers[0].pod_cidrs, ["10.244.2.0/24".parse::<IpNet>().unwrap()]);
        assert_eq!(desired.peers[0].vtep_mac, b.vtep_mac);
        assert_eq!(desired.peers[1].path, PeerPath::Vxlan);
    }
}
