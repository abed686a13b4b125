//! From the membership view to verdicts: which generation stands for each node, whether its
//! announcement is valid, who owns contested blocks, and which peers to program.

use std::collections::{BTreeMap, BTreeSet};

use crate::allocation::{self, Claim, Claimant, Conflict};
use crate::gossip::keys;
use crate::identity;
use crate::membership::{Liveness, Member, View};
use crate::probe::summary::Summary;
use crate::validate::{self, Announcement, Rejection, Rules};
use ipnet::IpNet;
use weft_overlay::underlay::{Family, NoSharedFamily, NodeIps, PathChoice};

/// One other node, as represented by one of its generations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub generation: u64,
    pub liveness: Liveness,
    /// Holds a block (confirmed or static), as announced.
    pub established: bool,
    pub announcement: Result<Announcement, Rejection>,
    /// What its own probes say of its peers, as it publishes them (malformed: ignored).
    pub report: Option<Summary>,
}

impl Peer {
    /// Its valid claims, IPv4 first (none when its announcement was rejected).
    pub fn claims(&self) -> &[Claim] {
        self.announcement.as_ref().map_or(&[], |a| a.claims.as_slice())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peers {
    /// Sorted by name.
    pub peers: Vec<Peer>,
    /// The claims this node's own previous generation announced (at most one per family of this
    /// cluster), if gossip still has them.
    pub previous_self: Vec<Claim>,
    /// Other generations under this node's own name (earlier runs, or another agent using it),
    /// by generation.
    pub same_name: Vec<Member>,
}

/// The generation that stands for a node: among the programmable ones (alive, or leaving but
/// not yet declared dead) that have not refused the name, the newest one holding its block;
/// else the newest. A restarted node's new generation takes over once the detector has heard
/// it and it has confirmed its block again, so peers keep programming the old one (same name,
/// MAC and PodCIDR) meanwhile instead of flapping; and an agent that starts under a name
/// already in use (a cloned VM) never displaces the one holding it.
fn representative<'a>(generations: &[&'a Member]) -> &'a Member {
    generations
        .iter()
        .max_by_key(|m| (m.liveness.programmable() && !identity::refused(m), identity::established(m), m.generation))
        .expect("a node has at least one generation")
}

/// Groups the view by node, validates each node's representative generation, and picks up this
/// node's own previous claim (earlier generations of `me`).
pub fn collect(view: &View, me: &str, my_generation: u64, rules: &Rules) -> Peers {
    let mut by_name: BTreeMap<&str, Vec<&Member>> = BTreeMap::new();
    for m in &view.members {
        by_name.entry(m.name.as_str()).or_default().push(m);
    }
    let mut same_name: Vec<Member> = by_name.remove(me).unwrap_or_default().into_iter().cloned().collect();
    same_name.sort_by_key(|m| m.generation);
    let previous_self = rules
        .pools
        .iter()
        .filter_map(|pool| {
            let key = keys::pod_cidr_key(Family::of_net(&pool.cluster_cidr));
            same_name
                .iter()
                .filter(|m| m.generation < my_generation && !identity::refused(m))
                .filter_map(|m| Some((m.generation, keys::decode_claim(m.keys.get(key)?).ok()?)))
                .max_by_key(|(generation, _)| *generation)
                .map(|(_, claim)| claim)
                .filter(|c| validate::check_pod_cidr(c.cidr, pool).is_ok())
        })
        .collect();
    let peers = by_name
        .into_values()
        .map(|generations| {
            let m = representative(&generations);
            Peer {
                name: m.name.clone(),
                generation: m.generation,
                liveness: m.liveness,
                established: identity::established(m),
                announcement: validate::validate(&m.name, &m.keys, rules),
                report: m.keys.get(keys::DATAPLANE).and_then(|v| Summary::decode(v)),
            }
        })
        .collect();
    Peers { peers, previous_self, same_name }
}

impl Peers {
    /// The valid claims of every known peer, live or not, of every family: a dead or leaving
    /// node keeps its blocks reserved until gossip forgets it.
    pub fn claimants(&self) -> Vec<Claimant> {
        self.peers
            .iter()
            .flat_map(|p| p.claims().iter().map(|claim| Claimant { node: p.name.clone(), claim: *claim }))
            .collect()
    }
}

/// Why a peer is not programmed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    #[error("rejected: {0}")]
    Rejected(Rejection),
    #[error("has not announced {0} yet")]
    NotAnnounced(&'static str),
    #[error("{}", match .0 {
        Liveness::Joining => "joining: no failure-detector verdict yet",
        Liveness::Leaving => "leaving",
        Liveness::Left => "left the cluster",
        Liveness::Dead => "declared dead by its monitors (or the failure detector, for a node of the previous release)",
        Liveness::Alive => "alive",
    })]
    NotAlive(Liveness),
    #[error("has not claimed a PodCIDR yet")]
    NoPodCidr,
    #[error("lost its PodCIDR claim {cidr} to {winner}")]
    LostConflict { cidr: IpNet, winner: String },
    #[error("its PodCIDR {0} is also this node's own claim")]
    OverlapsOurs(IpNet),
    /// No tunnel can join the two nodes.
    #[error(transparent)]
    NoSharedFamily(NoSharedFamily),
}

/// What was decided about one peer, computed once per turn for the datapath and the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'a> {
    pub peer: &'a Peer,
    /// How its pods are reached; `None` when its announcement was rejected or no underlay
    /// family is shared.
    pub path: Option<PathChoice>,
    /// `Ok` means program it, with the blocks it is routed for ([`Decision::routed`]).
    pub verdict: Result<(), Skip>,
    /// Its blocks never routed to it, each with why: lost to another node's claim, or this
    /// node's own. A peer holding none of its blocks is skipped with the first of these.
    pub unrouted: Vec<(IpNet, Skip)>,
}

impl Decision<'_> {
    /// The peer's blocks that are routed to it when it is programmed: all it claims but the
    /// unrouted ones.
    pub fn routed(&self) -> Vec<IpNet> {
        let unrouted = |b: &IpNet| self.unrouted.iter().any(|(u, _)| u == b);
        self.peer.claims().iter().map(|c| c.cidr).filter(|b| !unrouted(b)).collect()
    }
}

/// One peer to program: its name, announcement, path and the blocks routed to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Programmable<'a> {
    pub name: &'a str,
    pub announcement: &'a Announcement,
    pub path: PathChoice,
    pub blocks: Vec<IpNet>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decided<'a> {
    /// One per peer, in the order of `Peers::peers`.
    pub peers: Vec<Decision<'a>>,
    /// Every contested block, this node's own claim included.
    pub conflicts: Vec<Conflict>,
}

impl Decided<'_> {
    /// The peers to program, each with the blocks it holds.
    pub fn programmable(&self) -> impl Iterator<Item = Programmable<'_>> {
        self.peers.iter().filter(|d| d.verdict.is_ok()).filter_map(|d| {
            Some(Programmable {
                name: d.peer.name.as_str(),
                announcement: d.peer.announcement.as_ref().ok()?,
                path: d.path?,
                blocks: d.routed(),
            })
        })
    }
}

/// Decides which peers to program, given this node's own claims (one per family); `path_of` says how the pods of
/// a node with these underlay addresses are reached, or that no tunnel can join it. `tunnel_answers` are peers whose agent gossip no longer hears but whose
/// tunnel still answers the probes: a stopped agent is not a stopped node, so they stay
/// programmed (the caller bounds how long).
pub fn decide<'a>(
    peers: &'a Peers,
    me: &str,
    own: &[Claim],
    path_of: impl Fn(&NodeIps) -> Result<PathChoice, NoSharedFamily>,
    tunnel_answers: &BTreeSet<String>,
) -> Decided<'a> {
    let mut claimants = peers.claimants();
    claimants.extend(own.iter().map(|claim| Claimant { node: me.to_string(), claim: *claim }));
    let conflicts = allocation::conflicts(&claimants);
    // Each block on its own: one another node's claim beats is never routed to the peer (the
    // winner keeps it), and we cannot route our own block to a peer, winner or not: until we
    // move (an automatic claim re-picks at once; a static one needs the operator) it stays out.
    let unrouted = |p: &Peer| -> Vec<(IpNet, Skip)> {
        p.claims()
            .iter()
            .filter_map(|claim| {
                let c = conflicts.iter().find(|c| c.cidr == claim.cidr)?;
                let why = if c.winner != p.name {
                    Skip::LostConflict { cidr: claim.cidr, winner: c.winner.clone() }
                } else if own.iter().any(|o| o.cidr == claim.cidr) {
                    Skip::OverlapsOurs(claim.cidr)
                } else {
                    return None;
                };
                Some((claim.cidr, why))
            })
            .collect()
    };
    let verdict = |p: &Peer, unrouted: &[(IpNet, Skip)]| {
        let announcement = p.announcement.as_ref().map_err(|r| match r {
            Rejection::NotAnnounced(key) => Skip::NotAnnounced(key),
            r => Skip::Rejected(r.clone()),
        })?;
        if !p.liveness.programmable() && !tunnel_answers.contains(&p.name) {
            return Err(Skip::NotAlive(p.liveness));
        }
        path_of(&announcement.node_ips).map_err(Skip::NoSharedFamily)?;
        if announcement.claims.is_empty() {
            return Err(Skip::NoPodCidr);
        }
        // A peer holding at least one block is programmed with those it holds.
        match unrouted.first() {
            Some((_, why)) if unrouted.len() == announcement.claims.len() => Err(why.clone()),
            _ => Ok(()),
        }
    };
    let decisions = peers
        .peers
        .iter()
        .map(|p| {
            let unrouted = unrouted(p);
            Decision {
                peer: p,
                path: p.announcement.as_ref().ok().and_then(|a| path_of(&a.node_ips).ok()),
                verdict: verdict(p, &unrouted),
                unrouted,
            }
        })
        .collect();
    Decided { peers: decisions, conflicts }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocation::ClaimKind;
    use crate::validate::tests::rules;
    use weft_overlay::Mac;
    use weft_overlay::underlay::{Family, PeerPath, choose_path};

    /// A node with underlays of both families, always tunnelling.
    fn tunnel(ips: &NodeIps) -> Result<PathChoice, NoSharedFamily> {
        choose_path(&"192.0.2.1,2001:db8:1::1".parse().unwrap(), ips, Family::Ipv4, None)
    }

    fn member(name: &str, generation: u64, liveness: Liveness, ip: &str, claim: Option<&str>) -> Member {
        let mac = Mac::derived(name).to_string();
        let mut kvs: BTreeMap<String, String> =
            [(keys::NODE_IP, ip), (keys::VTEP_MAC, mac.as_str()), (keys::VNI, "1"), (keys::VXLAN_PORT, "8472")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        if let Some(c) = claim {
            kvs.insert(keys::POD_CIDR.into(), c.into());
        }
        Member { name: name.into(), generation, liveness, keys: kvs }
    }

    fn view(members: Vec<Member>) -> View {
        View { members, ..View::default() }
    }

    #[test]
    fn the_newest_live_generation_stands_for_a_node() {
        let v = view(vec![
            member("b", 1, Liveness::Alive, "192.0.2.2", Some("10.244.1.0/24;confirmed;1")),
            member("b", 2, Liveness::Joining, "192.0.2.2", Some("10.244.1.0/24;confirmed;1")),
        ]);
        let peers = collect(&v, "me", 5, &rules());
        assert_eq!(peers.peers.len(), 1);
        assert_eq!(peers.peers[0].generation, 1);
        assert_eq!(peers.peers[0].liveness, Liveness::Alive);

        let v = view(vec![
            member("b", 1, Liveness::Dead, "192.0.2.2", None),
            member("b", 2, Liveness::Joining, "192.0.2.2", None),
        ]);
        assert_eq!(collect(&v, "me", 5, &rules()).peers[0].generation, 2);
    }

    #[test]
    fn a_restarting_nodes_leaving_generation_stands_for_it_until_the_new_one_is_heard() {
        let v = view(vec![
            member("b", 1, Liveness::Leaving, "192.0.2.2", Some("10.244.1.0/24;confirmed;1")),
            member("b", 2, Liveness::Joining, "192.0.2.2", Some("10.244.1.0/24;confirmed;1")),
        ]);
        assert_eq!(collect(&v, "me", 5, &rules()).peers[0].generation, 1);
        let v = view(vec![
            member("b", 1, Liveness::Leaving, "192.0.2.2", Some("10.244.1.0/24;confirmed;1")),
            member("b", 2, Liveness::Alive, "192.0.2.2", Some("10.244.1.0/24;confirmed;1")),
        ]);
        assert_eq!(collect(&v, "me", 5, &rules()).peers[0].generation, 2);
    }

    #[test]
    fn our_own_earlier_generation_is_our_previous_claim_not_a_peer() {
        let v = view(vec![
            member("me", 3, Liveness::Dead, "192.0.2.1", Some("10.244.9.0/24;confirmed;77")),
            member("b", 1, Liveness::Alive, "192.0.2.2", None),
        ]);
        let peers = collect(&v, "me", 5, &rules());
        assert_eq!(peers.peers.len(), 1);
        assert_eq!(
            peers.previous_self,
            [Claim { cidr: "10.244.9.0/24".parse().unwrap(), kind: ClaimKind::Confirmed, since_ms: 77 }]
        );
    }

    #[test]
    fn only_live_valid_conflict_winners_are_programmed() {
        let v = view(vec![
            member("a", 1, Liveness::Alive, "192.0.2.10", Some("10.244.1.0/24;confirmed;5")),
            member("b", 1, Liveness::Alive, "192.0.2.11", Some("10.244.1.0/24;claiming;9")),
            member("c", 1, Liveness::Dead, "192.0.2.12", Some("10.244.2.0/24;confirmed;1")),
            member("d", 1, Liveness::Alive, "192.0.2.13", None),
            member("e", 1, Liveness::Alive, "127.0.0.1", Some("10.244.3.0/24;confirmed;1")),
            member("f", 1, Liveness::Left, "192.0.2.15", Some("10.244.4.0/24;confirmed;1")),
            member("g", 1, Liveness::Alive, "192.0.2.16", Some("10.244.5.0/24;confirmed;1")),
            member("h", 1, Liveness::Leaving, "192.0.2.17", Some("10.244.6.0/24;confirmed;1")),
        ]);
        let peers = collect(&v, "me", 5, &rules());
        let own = Claim { cidr: "10.244.9.0/24".parse().unwrap(), kind: ClaimKind::Confirmed, since_ms: 3 };
        let decided = decide(&peers, "me", &[own], tunnel, &BTreeSet::new());
        let by_name: BTreeMap<&str, &Result<(), Skip>> =
            decided.peers.iter().map(|d| (d.peer.name.as_str(), &d.verdict)).collect();
        assert_eq!(by_name["a"], &Ok(()));
        let lost = Skip::LostConflict { cidr: "10.244.1.0/24".parse().unwrap(), winner: "a".into() };
        assert_eq!(by_name["b"], &Err(lost));
        assert_eq!(by_name["c"], &Err(Skip::NotAlive(Liveness::Dead)));
        assert_eq!(by_name["d"], &Err(Skip::NoPodCidr));
        assert!(matches!(by_name["e"], Err(Skip::Rejected(_))));
        assert_eq!(by_name["f"], &Err(Skip::NotAlive(Liveness::Left)));
        assert_eq!(by_name["g"], &Ok(()));
        assert_eq!(by_name["h"], &Ok(()), "leaving, not yet confirmed gone: routes stay");
        assert_eq!(decided.conflicts.len(), 1);
        // Dead and leaving nodes keep their blocks reserved; rejected ones do not count.
        let reserved: Vec<String> = peers.claimants().iter().map(|c| c.node.clone()).collect();
        assert_eq!(reserved, ["a", "b", "c", "f", "g", "h"]);
    }

    #[test]
    fn a_peer_on_our_own_block_is_never_programmed_here() {
        let v = view(vec![member("a", 1, Liveness::Alive, "192.0.2.10", Some("10.244.1.0/24;static;1"))]);
        let peers = collect(&v, "me", 5, &rules());
        let ours = Claim { cidr: "10.244.1.0/24".parse().unwrap(), kind: ClaimKind::Static, since_ms: 9 };
        let decided = decide(&peers, "me", &[ours], tunnel, &BTreeSet::new());
        assert_eq!(decided.peers[0].verdict, Err(Skip::OverlapsOurs("10.244.1.0/24".parse().unwrap())));
        assert_eq!(decided.conflicts[0].winner, "a");
        assert_eq!(decided.conflicts[0].losers, vec!["me".to_string()]);
    }
    fn dual(name: &str, ip: &str, v4: &str, v6: &str) -> Member {
        let mut m = member(name, 1, Liveness::Alive, ip, Some(v4));
        m.keys.insert(keys::POD_CIDR6.into(), v6.into());
        m
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    type Routed = Vec<(String, Vec<IpNet>)>;
    type Unrouted = Vec<(String, Vec<(IpNet, Skip)>)>;

    /// The blocks each programmed peer is routed, and every peer's unrouted blocks with why.
    fn routing(members: Vec<Member>, own: &[Claim]) -> (Routed, Unrouted) {
        let peers = collect(&view(members), "me", 5, &validate::tests::dual_rules());
        let decided = decide(&peers, "me", own, tunnel, &BTreeSet::new());
        let programmed = decided.programmable().map(|p| (p.name.to_string(), p.blocks)).collect();
        let unrouted = decided.peers.iter().map(|d| (d.peer.name.clone(), d.unrouted.clone())).collect();
        (programmed, unrouted)
    }

    fn lost(cidr: &str, winner: &str) -> (IpNet, Skip) {
        (net(cidr), Skip::LostConflict { cidr: net(cidr), winner: winner.into() })
    }

    #[test]
    fn a_dual_stack_peer_that_lost_its_ipv6_block_is_routed_its_ipv4_block_and_the_winner_both() {
        let (programmed, unrouted) = routing(
            vec![
                dual("a", "192.0.2.10", "10.244.1.0/24;confirmed;5", "fd00:10:244:1::/64;confirmed;5"),
                // b's IPv4 block is its own, its IPv6 block is a's (a later claim).
                dual("b", "192.0.2.11", "10.244.2.0/24;confirmed;5", "fd00:10:244:1::/64;claiming;9"),
            ],
            &[],
        );
        let a = vec![net("10.244.1.0/24"), net("fd00:10:244:1::/64")];
        assert_eq!(programmed, [("a".into(), a), ("b".into(), vec![net("10.244.2.0/24")])]);
        assert_eq!(unrouted, [("a".into(), vec![]), ("b".into(), vec![lost("fd00:10:244:1::/64", "a")])]);
    }

    #[test]
    fn a_dual_stack_peer_that_lost_its_ipv4_block_is_routed_its_ipv6_block() {
        let (programmed, unrouted) = routing(
            vec![
                member("a", 1, Liveness::Alive, "192.0.2.10", Some("10.244.1.0/24;confirmed;5")),
                dual("b", "192.0.2.11", "10.244.1.0/24;claiming;9", "fd00:10:244:2::/64;confirmed;5"),
            ],
            &[],
        );
        let b = vec![net("fd00:10:244:2::/64")];
        assert_eq!(programmed, [("a".into(), vec![net("10.244.1.0/24")]), ("b".into(), b)]);
        assert_eq!(unrouted[1].1, [lost("10.244.1.0/24", "a")]);
    }

    #[test]
    fn a_dual_stack_peer_that_lost_both_blocks_is_not_programmed() {
        let members = vec![
            dual("a", "192.0.2.10", "10.244.1.0/24;confirmed;5", "fd00:10:244:1::/64;confirmed;5"),
            dual("b", "192.0.2.11", "10.244.1.0/24;claiming;9", "fd00:10:244:1::/64;claiming;9"),
        ];
        let (programmed, unrouted) = routing(members.clone(), &[]);
        assert_eq!(programmed.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["a"]);
        assert_eq!(unrouted[1].1, [lost("10.244.1.0/24", "a"), lost("fd00:10:244:1::/64", "a")]);
        let peers = collect(&view(members), "me", 5, &validate::tests::dual_rules());
        let decided = decide(&peers, "me", &[], tunnel, &BTreeSet::new());
        assert_eq!(decided.peers[1].verdict, Err(lost("10.244.1.0/24", "a").1), "skipped with the first");
    }

    #[test]
    fn a_previous_release_ipv4_only_peer_is_routed_as_before_in_a_dual_stack_cluster() {
        let (programmed, unrouted) = routing(
            vec![
                dual("a", "192.0.2.10", "10.244.1.0/24;confirmed;5", "fd00:10:244:1::/64;confirmed;5"),
                member("c", 1, Liveness::Alive, "192.0.2.12", Some("10.244.3.0/24;confirmed;1")),
                // d lost its only block: skipped, as before.
                member("d", 1, Liveness::Alive, "192.0.2.13", Some("10.244.3.0/24;claiming;9")),
            ],
            &[],
        );
        assert_eq!(programmed[1], ("c".into(), vec![net("10.244.3.0/24")]));
        assert_eq!(programmed.len(), 2);
        assert_eq!(unrouted[2].1, [lost("10.244.3.0/24", "c")]);
    }

    #[test]
    fn a_dual_stack_peer_on_our_own_block_is_routed_only_its_other_block() {
        let ours = Claim { cidr: net("10.244.1.0/24"), kind: ClaimKind::Claiming, since_ms: 9 };
        let (programmed, unrouted) = routing(
            vec![dual("a", "192.0.2.10", "10.244.1.0/24;confirmed;5", "fd00:10:244:1::/64;confirmed;5")],
            &[ours],
        );
        assert_eq!(programmed, [("a".into(), vec![net("fd00:10:244:1::/64")])]);
        assert_eq!(unrouted[0].1, [(net("10.244.1.0/24"), Skip::OverlapsOurs(net("10.244.1.0/24")))]);
    }

    #[test]
    fn a_restarted_generation_stands_once_it_holds_its_block_again() {
        let v = view(vec![
            member("b", 1, Liveness::Leaving, "192.0.2.2", Some("10.244.1.0/24;confirmed;1")),
            member("b", 2, Liveness::Alive, "192.0.2.2", Some("10.244.1.0/24;claiming;1")),
        ]);
        assert_eq!(collect(&v, "me", 5, &rules()).peers[0].generation, 1);
        let v = view(vec![
            member("b", 1, Liveness::Dead, "192.0.2.2", Some("10.244.1.0/24;confirmed;1")),
            member("b", 2, Liveness::Alive, "192.0.2.2", Some("10.244.1.0/24;claiming;1")),
        ]);
        assert_eq!(collect(&v, "me", 5, &rules()).peers[0].generation, 2, "the old one is gone");
    }

    #[test]
    fn an_agent_started_under_a_name_in_use_never_displaces_the_node_holding_it() {
        let holder = member("b", 1, Liveness::Alive, "192.0.2.2", Some("10.244.1.0/24;confirmed;1"));
        let clone = member("b", 2, Liveness::Alive, "198.51.100.9", Some("10.244.1.0/24;claiming;1"));
        let peers = collect(&view(vec![holder.clone(), clone.clone()]), "me", 5, &rules());
        assert_eq!(peers.peers[0].generation, 1);
        let mut refused = clone;
        refused.keys.insert(keys::STATUS.into(), keys::STATUS_REFUSED.into());
        refused.keys.remove(keys::POD_CIDR);
        let mut dead = holder;
        dead.liveness = Liveness::Dead;
        let peers = collect(&view(vec![dead, refused]), "me", 5, &rules());
        assert_eq!(peers.peers[0].generation, 1, "a refused agent stands for nobody");
    }

    #[test]
    fn our_previous_claim_ignores_agents_that_refused_our_name() {
        let mut refused = member("me", 4, Liveness::Alive, "198.51.100.9", Some("10.244.8.0/24;claiming;1"));
        refused.keys.insert(keys::STATUS.into(), keys::STATUS_REFUSED.into());
        let v = view(vec![member("me", 3, Liveness::Dead, "192.0.2.1", Some("10.244.9.0/24;confirmed;77")), refused]);
        let peers = collect(&v, "me", 5, &rules());
        let previous: Vec<IpNet> = peers.previous_self.iter().map(|c| c.cidr).collect();
        assert_eq!(previous, ["10.244.9.0/24".parse::<IpNet>().unwrap()]);
        assert_eq!(peers.same_name.len(), 2);
    }

    #[test]
    fn a_peer_listed_before_its_keys_arrive_is_pending_not_rejected() {
        let mut bare = member("b", 1, Liveness::Alive, "192.0.2.2", None);
        bare.keys.clear();
        let peers = collect(&view(vec![bare]), "me", 5, &rules());
        assert_eq!(peers.peers[0].announcement, Err(Rejection::NotAnnounced(keys::NODE_IP)));
        let decided = decide(&peers, "me", &[], tunnel, &BTreeSet::new());
        assert_eq!((&decided.peers[0].verdict, decided.peers[0].path), (&Err(Skip::NotAnnounced(keys::NODE_IP)), None));
    }

    #[test]
    fn a_peer_sharing_no_underlay_family_is_not_programmed_and_says_why() {
        let mut v6 = member("b", 1, Liveness::Alive, "192.0.2.2", Some("10.244.1.0/24;confirmed;1"));
        v6.keys.remove(keys::NODE_IP);
        v6.keys.insert(keys::NODE_IP6.into(), "2001:db8:2::2".into());
        let v4 = member("c", 1, Liveness::Alive, "192.0.2.3", Some("10.244.2.0/24;confirmed;1"));
        let peers = collect(&view(vec![v6, v4]), "me", 5, &rules());
        let v4_only = |ips: &NodeIps| choose_path(&"192.0.2.1".parse().unwrap(), ips, Family::Ipv4, None);
        let decided = decide(&peers, "me", &[], v4_only, &BTreeSet::new());
        let why = decided.peers[0].verdict.clone().unwrap_err();
        assert_eq!(why.to_string(), "no shared underlay family (this node: IPv4; peer: IPv6)");
        assert_eq!(decided.peers[0].path, None);
        assert_eq!(decided.peers[1].verdict, Ok(()));
        // A node with an IPv6 underlay reaches it over IPv6.
        let decided = decide(&peers, "me", &[], tunnel, &BTreeSet::new());
        let path = decided.peers[0].path.unwrap();
        assert_eq!((path.family, path.path), (Family::Ipv6, PeerPath::Vxlan));
        assert_eq!(path.endpoint, "2001:db8:2::2".parse::<std::net::IpAddr>().unwrap());
        assert_eq!(decided.programmable().count(), 2);
    }
}
