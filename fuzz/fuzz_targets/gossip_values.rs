//! What peers announce over gossip: arbitrary members with arbitrary key-values, through the
//! agent's grouping and validation ([`weft_agent::peers::collect`]), against a node with
//! underlays and pods of both families (`node_ip`, `node_ip6`, `pod_cidr`, `pod_cidr6`).
//!
//! Input, one item a line: `@<name> <generation> <liveness 0-4>` starts a member, and
//! `<key>=<value>` lines give it keys.
#![no_main]

use std::collections::BTreeMap;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use weft_agent::gossip::keys::Facts;
use weft_agent::membership::{Liveness, Member, View};
use weft_agent::peers::collect;
use weft_agent::settings;
use weft_agent::validate::{Pool, Rules, check_node_name, check_pod_cidr, validate};
use weft_overlay::underlay::{Family, check_node_ip};

const ME: &str = "me";
const MY_GENERATION: u64 = 5;

fuzz_target!(|data: &[u8]| {
    let pools = vec![
        Pool { cluster_cidr: "10.244.0.0/16".parse().expect("literal"), node_prefix: 24 },
        Pool { cluster_cidr: "fd00:10:244::/56".parse().expect("literal"), node_prefix: 64 },
    ];
    let rules = Rules {
        settings: settings::encode(&pools, Duration::from_millis(100)),
        pools,
        vni: 1,
        vxlan_port: 8472,
        local_node_ips: "192.0.2.1,2001:db8:1::1".parse().expect("literal"),
    };
    let view = View { members: members(&String::from_utf8_lossy(data)), ..View::default() };
    let peers = collect(&view, ME, MY_GENERATION, &rules);

    let mut names: Vec<&str> = peers.peers.iter().map(|p| p.name.as_str()).collect();
    assert!(!names.contains(&ME), "this node is never its own peer");
    let count = names.len();
    names.dedup();
    assert_eq!(names.len(), count, "one peer per node, sorted by name");
    assert!(names.is_sorted());
    let pool_of = |cidr: &ipnet::IpNet| rules.pool(Family::of_net(cidr)).expect("a pool of its family");
    for previous in &peers.previous_self {
        check_pod_cidr(previous.cidr, pool_of(&previous.cidr)).expect("a usable previous claim");
    }

    for peer in &peers.peers {
        let member = view
            .members
            .iter()
            .find(|m| m.name == peer.name && m.generation == peer.generation)
            .expect("a peer is one of the view's members");
        let Ok(a) = &peer.announcement else { continue };
        check_node_name(&peer.name).expect("accepted name is valid");
        assert!(!a.node_ips.is_empty());
        for ip in a.node_ips.iter() {
            assert!(check_node_ip(ip).is_ok() && !rules.local_node_ips.contains(ip));
        }
        assert!(a.vtep_mac.is_unicast());
        for claim in &a.claims {
            check_pod_cidr(claim.cidr, pool_of(&claim.cidr)).expect("accepted claim fits");
        }
        // What we accept, re-announced in our own encoding, is accepted as the same thing.
        let facts = Facts {
            node_ips: a.node_ips,
            vtep_mac: a.vtep_mac,
            vni: rules.vni,
            vxlan_port: rules.vxlan_port,
            settings: rules.settings.clone(),
        };
        let reencoded: BTreeMap<String, String> = facts.key_values(&a.claims).into_iter().collect();
        assert_eq!(validate(&peer.name, &reencoded, &rules).as_ref(), Ok(a));
        assert_eq!(validate(&member.name, &member.keys, &rules).as_ref(), Ok(a), "validation is deterministic");
    }
});

fn members(text: &str) -> Vec<Member> {
    let mut members: Vec<Member> = Vec::new();
    for line in text.lines() {
        if let Some(header) = line.strip_prefix('@') {
            let mut fields = header.split(' ');
            let name = fields.next().unwrap_or_default().to_string();
            let generation = fields.next().and_then(|g| g.parse().ok()).unwrap_or(1);
            let liveness = match fields.next().and_then(|l| l.parse::<u8>().ok()).unwrap_or(0) % 5 {
                0 => Liveness::Alive,
                1 => Liveness::Joining,
                2 => Liveness::Leaving,
                3 => Liveness::Left,
                _ => Liveness::Dead,
            };
            members.push(Member { name, generation, liveness, keys: BTreeMap::new() });
        } else if let (Some(member), Some((key, value))) = (members.last_mut(), line.split_once('=')) {
            member.keys.insert(key.to_string(), value.to_string());
        }
    }
    // Gossip holds one entry per (name, generation): a repeated header is a duplicate, dropped.
    let mut seen = std::collections::HashSet::new();
    members.retain(|m| seen.insert((m.name.clone(), m.generation)));
    members
}
