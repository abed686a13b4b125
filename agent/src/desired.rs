//! The desired datapath state, computed from the local node and the peers to program.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use weft_overlay::desired::{Desired, LocalNode, Peer, PeerPath};

use crate::config::Encap;
use crate::validate::Announcement;

/// How to reach a peer's pods: natively inside our own underlay subnet in cross-subnet mode
/// (the peer is a direct L2 neighbour), else through VXLAN.
pub fn path(encap: Encap, underlay_subnet: Ipv4Net, peer_ip: Ipv4Addr) -> PeerPath {
    match encap {
        Encap::CrossSubnet if underlay_subnet.contains(&peer_ip) => PeerPath::Direct,
        Encap::Always | Encap::CrossSubnet => PeerPath::Vxlan,
    }
}

/// The datapath's desired state. `peers` are the programmable peers (name, announcement, path);
/// only those with a PodCIDR are included, sorted by name so equal inputs give equal outputs.
pub fn build<'a>(local: LocalNode, peers: impl IntoIterator<Item = (&'a str, &'a Announcement, PeerPath)>) -> Desired {
    let mut peers: Vec<Peer> = peers
        .into_iter()
        .filter_map(|(name, a, path)| {
            Some(Peer {
                name: name.to_string(),
                node_ip: a.node_ip,
                pod_cidr: a.claim?.cidr,
                vtep_mac: a.vtep_mac,
                path,
            })
        })
        .collect();
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    Desired { local, peers }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocation::{Claim, ClaimKind};
    use weft_overlay::Mac;

    fn subnet() -> Ipv4Net {
        "192.0.2.0/24".parse().unwrap()
    }

    #[test]
    fn cross_subnet_goes_direct_only_inside_the_underlay_subnet() {
        let near = "192.0.2.77".parse().unwrap();
        let far = "198.51.100.7".parse().unwrap();
        assert_eq!(path(Encap::CrossSubnet, subnet(), near), PeerPath::Direct);
        assert_eq!(path(Encap::CrossSubnet, subnet(), far), PeerPath::Vxlan);
        assert_eq!(path(Encap::Always, subnet(), near), PeerPath::Vxlan);
    }

    fn local() -> LocalNode {
        LocalNode {
            name: "a".into(),
            node_ip: "192.0.2.10".parse().unwrap(),
            underlay: "eth0".into(),
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            vni: 1,
            vxlan_port: 8472,
            mtu: 1450,
            vtep_mac: Mac::derived("a"),
            bridge: "cni0".into(),
        }
    }

    fn announcement(ip: &str, cidr: Option<&str>) -> Announcement {
        Announcement {
            node_ip: ip.parse().unwrap(),
            vtep_mac: Mac::derived(ip),
            claim: cidr.map(|c| Claim { cidr: c.parse().unwrap(), kind: ClaimKind::Confirmed, since_ms: 1 }),
        }
    }

    #[test]
    fn desired_lists_peers_with_a_podcidr_sorted_by_name() {
        let c = announcement("198.51.100.3", Some("10.244.3.0/24"));
        let b = announcement("192.0.2.2", Some("10.244.2.0/24"));
        let d = announcement("192.0.2.4", None);
        let path = |a: &Announcement| path(Encap::CrossSubnet, subnet(), a.node_ip);
        let desired = build(local(), [("c", &c, path(&c)), ("b", &b, path(&b)), ("d", &d, path(&d))]);
        assert_eq!(desired.local, local());
        let names: Vec<&str> = desired.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(desired.peers[0].path, PeerPath::Direct);
        assert_eq!(desired.peers[0].pod_cidr, "10.244.2.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(desired.peers[0].vtep_mac, b.vtep_mac);
        assert_eq!(desired.peers[1].path, PeerPath::Vxlan);
    }
}
