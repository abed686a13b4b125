//! Who may use a node name. Cloned VMs share hostnames, and the hostname is the default
//! `--node-name`: two agents on two machines may start under one name. The agent already alive
//! under the name keeps it; the newcomer refuses to serve until the other one is gone (a VM that
//! came back under a new address takes its name over once its old instance is dead).
//!
//! Other generations of this node's name at this node's own address are its own earlier runs
//! (a restart), never a conflict.

use std::net::IpAddr;

use weft_overlay::underlay::Family;

use crate::allocation::ClaimKind;
use crate::gossip::keys;
use crate::membership::{Liveness, Member};

/// Another agent using this node's name from another address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Namesake {
    pub node_ip: IpAddr,
    pub generation: u64,
    pub liveness: Liveness,
    /// Holds a confirmed or static PodCIDR.
    pub established: bool,
    /// Announced that it yields the name to another agent.
    pub refused: bool,
}

/// This agent as the rule sees it.
#[derive(Debug, Clone, Copy)]
pub struct Me {
    pub node_ip: IpAddr,
    pub generation: u64,
    /// Holds a confirmed or static PodCIDR.
    pub established: bool,
    /// Refused the name on an earlier turn.
    pub refused: bool,
}

/// The member's announced underlay address, if it announced a readable one.
fn node_ip(m: &Member) -> Option<IpAddr> {
    m.keys.get(keys::NODE_IP)?.parse().ok()
}

/// Whether the member holds a claim of any family (confirmed or static), as announced.
pub fn established(m: &Member) -> bool {
    Family::ALL.into_iter().any(|family| {
        m.keys
            .get(keys::pod_cidr_key(family))
            .and_then(|v| keys::decode_claim(v).ok())
            .is_some_and(|c| c.kind != ClaimKind::Claiming)
    })
}

/// Whether the member announced that it refused its name.
pub fn refused(m: &Member) -> bool {
    m.keys.get(keys::STATUS).is_some_and(|s| s == keys::STATUS_REFUSED)
}

/// Every other agent that announces `me`'s name from another address. `same_name` are the
/// view's members of this node's name.
pub fn namesakes(me: &Me, same_name: &[&Member]) -> Vec<Namesake> {
    same_name
        .iter()
        .filter(|m| m.generation != me.generation)
        .filter_map(|m| {
            Some(Namesake {
                node_ip: node_ip(m).filter(|ip| *ip != me.node_ip)?,
                generation: m.generation,
                liveness: m.liveness,
                established: established(m),
                refused: refused(m),
            })
        })
        .collect()
}

/// The namesake this agent must yield its name to, if any. A live namesake that holds its
/// block beats one that does not; between equals the older generation (it started first)
/// wins. Once refused, an agent waits until every namesake is gone, so that two refusals
/// cannot alternate.
pub fn yield_to(me: &Me, namesakes: &[Namesake]) -> Option<Namesake> {
    let rank = |established: bool, generation: u64| (!established, generation);
    let mut contenders = namesakes.iter().filter(|n| !n.refused);
    if me.refused {
        return contenders.find(|n| !matches!(n.liveness, Liveness::Dead | Liveness::Left)).copied();
    }
    contenders
        .filter(|n| n.liveness == Liveness::Alive)
        .find(|n| rank(n.established, n.generation) < rank(me.established, me.generation))
        .copied()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const MINE: &str = "192.0.2.10";
    const OTHER: &str = "198.51.100.20";

    fn member(generation: u64, ip: &str, liveness: Liveness, claim: Option<&str>, status: &str) -> Member {
        let mut keys: BTreeMap<String, String> =
            [(keys::NODE_IP, ip), (keys::STATUS, status)].map(|(k, v)| (k.to_string(), v.to_string())).into();
        if let Some(c) = claim {
            keys.insert(keys::POD_CIDR.into(), c.into());
        }
        Member { name: "n1".into(), generation, liveness, keys }
    }

    fn me(generation: u64, established: bool, refused: bool) -> Me {
        Me { node_ip: MINE.parse().unwrap(), generation, established, refused }
    }

    fn decide(me: &Me, members: &[Member]) -> Option<Namesake> {
        let refs: Vec<&Member> = members.iter().collect();
        yield_to(me, &namesakes(me, &refs))
    }

    const HELD: Option<&str> = Some("10.244.1.0/24;confirmed;5");

    #[test]
    fn a_newcomer_yields_to_the_live_agent_holding_the_name() {
        let incumbent = member(100, OTHER, Liveness::Alive, HELD, "up");
        let yielded = decide(&me(200, false, false), &[incumbent]).unwrap();
        assert_eq!(yielded.node_ip, OTHER.parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_agent_holding_the_name_keeps_it() {
        let newcomer = member(200, OTHER, Liveness::Alive, Some("10.244.1.0/24;claiming;5"), "up");
        assert_eq!(decide(&me(100, true, false), &[newcomer]), None);
        // Even when the newcomer's clock makes its generation look older.
        let skewed = member(50, OTHER, Liveness::Alive, None, "up");
        assert_eq!(decide(&me(100, true, false), &[skewed]), None);
    }

    #[test]
    fn between_two_newcomers_the_older_generation_wins() {
        let older = member(100, OTHER, Liveness::Alive, None, "up");
        assert!(decide(&me(200, false, false), &[older]).is_some());
        let younger = member(300, OTHER, Liveness::Alive, None, "up");
        assert_eq!(decide(&me(200, false, false), &[younger]), None);
    }

    #[test]
    fn earlier_runs_at_this_nodes_own_address_are_a_restart_not_a_conflict() {
        let earlier = member(100, MINE, Liveness::Alive, HELD, "up");
        assert_eq!(decide(&me(200, false, false), &[earlier]), None);
    }

    #[test]
    fn a_dead_joining_or_leaving_namesake_does_not_keep_the_name_from_a_newcomer() {
        for liveness in [Liveness::Dead, Liveness::Left, Liveness::Leaving, Liveness::Joining] {
            let old = member(100, OTHER, liveness, HELD, "up");
            assert_eq!(decide(&me(200, false, false), &[old]), None, "{liveness:?}");
        }
    }

    #[test]
    fn a_refused_agent_waits_until_every_namesake_is_gone() {
        let restarting = member(300, OTHER, Liveness::Joining, None, "up");
        assert!(decide(&me(200, false, true), &[restarting]).is_some());
        let dead = member(100, OTHER, Liveness::Dead, HELD, "up");
        assert_eq!(decide(&me(200, false, true), &[dead]), None);
    }

    #[test]
    fn a_namesake_that_refused_the_name_never_keeps_it_from_anyone() {
        let refused = member(100, OTHER, Liveness::Alive, None, keys::STATUS_REFUSED);
        assert_eq!(decide(&me(200, false, false), std::slice::from_ref(&refused)), None);
        assert_eq!(decide(&me(200, false, true), &[refused]), None);
    }
}
