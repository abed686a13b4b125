//! Properties of the agent's path from a gossip view to the datapath's desired state
//! (`peers::collect`, `peers::decide`, `desired::build`) over generated, partly hostile views.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use ipnet::IpNet;
use proptest::prelude::*;
use weft_agent::allocation::{Claim, ClaimKind};
use weft_agent::config::Encap;
use weft_agent::desired::{build, path};
use weft_agent::gossip::keys;
use weft_agent::membership::{Liveness, Member, View};
use weft_agent::peers::{collect, decide};
use weft_agent::settings;
use weft_agent::validate::{Pool, Rules, check_pod_cidr};
use weft_overlay::Mac;
use weft_overlay::desired::{LocalNode, UnderlayAddr};
use weft_overlay::underlay::{Family, NodeIps};
use weft_overlay::validate::{InvalidPeer, validate};

const ME: &str = "me";
const MY_GENERATION: u64 = 3;

/// This node's underlays: IPv4 only (as before IPv6 underlays), IPv6 only, or both.
const LOCAL_UNDERLAYS: [&str; 3] = ["192.0.2.1", "2001:db8:1::1", "192.0.2.1,2001:db8:1::1"];

fn rules_for(local: &str) -> Rules {
    // A dual-stack cluster: peers announce IPv4, IPv6 or both blocks (or, as a previous
    // release, only `pod_cidr`).
    let pools = vec![
        Pool { cluster_cidr: "10.244.0.0/16".parse().unwrap(), node_prefix: 24 },
        Pool { cluster_cidr: "fd00:10:244::/56".parse().unwrap(), node_prefix: 64 },
    ];
    Rules {
        settings: settings::encode(&pools, Duration::from_millis(100)),
        pools,
        vni: 1,
        vxlan_port: 8472,
        local_node_ips: local.parse().unwrap(),
    }
}

fn rules() -> Rules {
    rules_for(LOCAL_UNDERLAYS[0])
}

fn own_claims() -> [Claim; 2] {
    let claim = |cidr: &str| Claim { cidr: cidr.parse().unwrap(), kind: ClaimKind::Confirmed, since_ms: 50 };
    [claim("10.244.1.0/24"), claim("fd00:10:244:1::/64")]
}

fn local(rules: &Rules) -> LocalNode {
    LocalNode {
        name: ME.into(),
        underlays: rules.local_node_ips.iter().map(|ip| UnderlayAddr { ip, iface: "eth0".into() }).collect(),
        pod_cidrs: own_claims().iter().map(|c| c.cidr).collect(),
        cluster_cidrs: rules.pools.iter().map(|p| p.cluster_cidr).collect(),
        vni: rules.vni,
        vxlan_port: rules.vxlan_port,
        mtu: 1450,
        vtep_mac: Mac::derived(ME),
        bridge: "cni0".into(),
    }
}

fn liveness() -> impl Strategy<Value = Liveness> {
    prop_oneof![
        Just(Liveness::Alive),
        Just(Liveness::Joining),
        Just(Liveness::Leaving),
        Just(Liveness::Left),
        Just(Liveness::Dead),
    ]
}

/// A value drawn mostly from plausible ones, sometimes from hostile ones.
fn one_of(values: &'static [&'static str]) -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        8 => prop::sample::select(values).prop_map(|v| Some(v.to_string())),
        1 => Just(None),
        1 => ".{0,12}".prop_map(Some),
    ]
}

prop_compose! {
    fn member()(
        name in prop::sample::select(&["a", "b", "c", "d", ME, "-bad"][..]),
        generation in 1u64..6,
        liveness in liveness(),
        node_ip in one_of(&["198.51.100.1", "198.51.100.2", "192.0.2.7", "192.0.2.1", "127.0.0.1", "240.0.0.1"]),
        // IPv6 underlays: none (a previous release), ours, link-local, multicast, of the wrong family.
        node_ip6 in prop_oneof![
            2 => Just(None),
            3 => one_of(&["2001:db8:2::1", "2001:db8:1::7", "2001:db8:1::1", "fe80::1", "ff02::1", "192.0.2.9"]),
        ],
        // Two MACs shared on purpose: peers announcing the same MAC, and one announcing ours.
        vtep_mac in one_of(&["0a:00:00:00:00:01", "0a:00:00:00:00:02", "0a:00:00:00:00:03", "01:00:5e:00:00:01"]),
        vni in one_of(&["1", "1", "2"]),
        pod_cidr in one_of(&[
            "10.244.1.0/24;confirmed;1", "10.244.2.0/24;confirmed;5", "10.244.2.0/24;claiming;9",
            "10.244.3.0/24;static;2", "10.244.4.0/24;claiming;4", "10.244.5.0/25;confirmed;1",
            "10.245.0.0/24;confirmed;1", "10.244.6.1/24;confirmed;1",
        ]),
        // IPv6 claims: none, ours, contested, too small, outside, of the wrong family.
        pod_cidr6 in prop_oneof![
            2 => Just(None),
            3 => one_of(&[
                "fd00:10:244:1::/64;confirmed;1", "fd00:10:244:2::/64;confirmed;5", "fd00:10:244:2::/64;claiming;9",
                "fd00:10:244:3::/64;static;2", "fd00:10:244:4::/80;confirmed;1", "fd00:10:245::/64;confirmed;1",
                "10.244.7.0/24;confirmed;1",
            ]),
        ],
    ) -> Member {
        let mut keys: BTreeMap<String, String> = [
            (keys::NODE_IP, node_ip),
            (keys::NODE_IP6, node_ip6),
            (keys::VTEP_MAC, vtep_mac),
            (keys::VNI, vni),
            (keys::VXLAN_PORT, Some("8472".to_string())),
            (keys::POD_CIDR, pod_cidr),
            (keys::POD_CIDR6, pod_cidr6),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_string(), v?)))
        .collect();
        if name == ME {
            keys.insert(keys::VTEP_MAC.into(), Mac::derived(ME).to_string());
        }
        Member { name: name.to_string(), generation, liveness, keys }
    }
}

fn view() -> impl Strategy<Value = View> {
    prop::collection::vec(member(), 0..12).prop_map(|mut members| {
        // Gossip has one entry per (name, generation).
        members.sort_by(|a, b| (&a.name, a.generation).cmp(&(&b.name, b.generation)));
        members.dedup_by(|a, b| (&a.name, a.generation) == (&b.name, b.generation));
        View { members, ..View::default() }
    })
}

proptest! {
    #[test]
    fn the_desired_state_only_holds_valid_unique_peers(
        view in view(),
        encap in prop_oneof![Just(Encap::Always), Just(Encap::CrossSubnet)],
        underlays in prop::sample::select(&LOCAL_UNDERLAYS[..]),
    ) {
        let rules = rules_for(underlays);
        let peers = collect(&view, ME, MY_GENERATION, &rules);
        let subnets: Vec<IpNet> = vec!["192.0.2.0/24".parse().unwrap(), "2001:db8:1::/64".parse().unwrap()];
        let mine = rules.local_node_ips;
        let path_of = |ips: &NodeIps| path(encap, &mine, &subnets, &Family::ALL, ips);
        let decided = decide(&peers, ME, &own_claims(), path_of, &Default::default());
        prop_assert_eq!(decided.peers.len(), peers.peers.len());
        for d in decided.peers.iter().filter(|d| d.verdict.is_ok()) {
            prop_assert!(d.peer.announcement.is_ok() && d.path.is_some(), "a programmed peer passed validation");
            let shared = d.path.expect("checked").family;
            prop_assert!(mine.get(shared).is_some(), "a programmed peer shares an underlay family with us");
        }
        let desired = build(local(&rules), decided.programmable());

        let mut cidrs = HashSet::new();
        let mut names = HashSet::new();
        for p in &desired.peers {
            prop_assert!(p.name != ME, "this node is never its own peer");
            prop_assert!(names.insert(p.name.clone()), "{} twice", p.name);
            prop_assert!(!p.pod_cidrs.is_empty() && p.pod_cidrs.len() <= 2);
            let families: Vec<Family> = p.pod_cidrs.iter().map(Family::of_net).collect();
            prop_assert!(families.windows(2).all(|w| w[0] < w[1]), "IPv4 first, one per family");
            for pod_cidr in &p.pod_cidrs {
                prop_assert!(cidrs.insert(*pod_cidr), "two routes for {}", pod_cidr);
                prop_assert!(own_claims().iter().all(|o| o.cidr != *pod_cidr), "our own block routed to {}", p.name);
                let pool = rules.pool(Family::of_net(pod_cidr)).expect("a pool of its family");
                prop_assert!(check_pod_cidr(*pod_cidr, pool).is_ok());
            }
            prop_assert!(!mine.contains(p.node_ip));
            // IPv4 is used whenever both have it.
            let announced = decided.peers.iter().find(|d| d.peer.name == p.name).and_then(|d| d.peer.announcement.as_ref().ok());
            let theirs = announced.expect("a programmed peer's announcement").node_ips;
            if mine.get(Family::Ipv4).is_some() && theirs.get(Family::Ipv4).is_some() {
                prop_assert!(p.node_ip.is_ipv4());
            }
            let generation = peers.peers.iter().find(|q| q.name == p.name).expect("a collected peer").generation;
            let member = view.members.iter().find(|m| (&m.name, m.generation) == (&p.name, generation)).unwrap();
            prop_assert!(member.keys.get(keys::VNI).is_some_and(|v| v == "1"), "a VNI mismatch is never programmed");
        }
        prop_assert!(desired.peers.is_sorted_by(|a, b| a.name < b.name));

        // What the agent lets through, the datapath accepts, except what only it can see:
        // MACs shared between peers, or with this node.
        let checked = validate(&desired).expect("the local node is valid");
        for (peer, why) in &checked.rejected {
            prop_assert!(
                matches!(why, InvalidPeer::DuplicateMac(_) | InvalidPeer::LocalMac(_)),
                "{} passed the agent but not the datapath: {}", peer.name, why
            );
        }
    }

    #[test]
    fn collecting_peers_is_deterministic_and_order_free(view in view()) {
        let mut reversed = view.clone();
        reversed.members.reverse();
        prop_assert_eq!(collect(&view, ME, MY_GENERATION, &rules()), collect(&reversed, ME, MY_GENERATION, &rules()));
    }
}
