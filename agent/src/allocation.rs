//! PodCIDR allocation through gossip, as pure functions and one small state machine.
//!
//! A node announces a *claim* on a block of the cluster CIDR. Claims on the same block are
//! ranked by [`rank`]; the best one owns the block, every other claimant is a loser. Every node
//! ranks with the same published data, so every node reaches the same verdict. An automatic
//! claim is confirmed after it has been announced for a while without losing; a loser re-picks.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::IpNet;
use tokio::time::Instant;

/// How strongly a claim holds its block; the declaration order is the priority order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClaimKind {
    /// Configured by the operator (`--pod-cidr`): never re-picked.
    Static,
    /// Held long enough to be in use (pods may have addresses from it).
    Confirmed,
    /// Announced, not yet confirmed.
    Claiming,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Claim {
    pub cidr: IpNet,
    pub kind: ClaimKind,
    /// Wall-clock time of the original claim (ms since the Unix epoch); kept across restarts.
    pub since_ms: u64,
}

/// A node's claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimant {
    pub node: String,
    pub claim: Claim,
}

/// The ordering key of a claim: lower wins. Static beats confirmed beats claiming (a newcomer
/// can never displace a block in use, whatever its clock says); then the earliest claim; then
/// the node name, so the order is total.
pub fn rank(c: &Claimant) -> (ClaimKind, u64, &str) {
    (c.claim.kind, c.claim.since_ms, c.node.as_str())
}

/// Claimants of one block: who owns it and who must give it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub cidr: IpNet,
    pub winner: String,
    pub losers: Vec<String>,
}

/// Groups the claims by block and ranks every block claimed more than once. Validation admits
/// only blocks of the node prefix, so two claims overlap exactly when they are equal.
pub fn conflicts(claimants: &[Claimant]) -> Vec<Conflict> {
    let mut by_block: BTreeMap<IpNet, Vec<&Claimant>> = BTreeMap::new();
    for c in claimants {
        by_block.entry(c.claim.cidr).or_default().push(c);
    }
    by_block
        .into_iter()
        .filter(|(_, group)| group.len() > 1)
        .map(|(cidr, mut group)| {
            group.sort_by(|a, b| rank(a).cmp(&rank(b)));
            Conflict {
                cidr,
                winner: group[0].node.clone(),
                losers: group[1..].iter().map(|c| c.node.clone()).collect(),
            }
        })
        .collect()
}

/// The claimant that beats `ours` on its block, if any.
pub fn beaten_by<'a>(ours: &Claimant, others: &'a [Claimant]) -> Option<&'a Claimant> {
    others
        .iter()
        .filter(|o| o.claim.cidr == ours.claim.cidr && rank(o) < rank(ours))
        .min_by(|a, b| rank(a).cmp(&rank(b)))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocationError {
    #[error(
        "PodCIDR pool {pool} is exhausted: all {blocks} /{prefix} blocks are claimed by live or \
         recently dead nodes"
    )]
    Exhausted { pool: IpNet, prefix: u8, blocks: u128 },
}

/// The number of `prefix` blocks in `pool`, in either family (saturating at u128::MAX, which
/// no pool that can be configured reaches: an IPv6 block is /64 at most).
pub fn block_count(pool: IpNet, prefix: u8) -> u128 {
    1u128.checked_shl(u32::from(prefix - pool.prefix_len())).unwrap_or(u128::MAX)
}

/// The `index`-th `prefix` block of `pool`: address arithmetic over u128 for both families.
fn block(pool: IpNet, prefix: u8, index: u128) -> IpNet {
    let host_bits = u32::from(pool.max_prefix_len() - prefix);
    let offset = index << host_bits;
    let addr: IpAddr = match pool.network() {
        IpAddr::V4(v4) => {
            let offset = u32::try_from(offset).expect("block lies inside the pool");
            Ipv4Addr::from(u32::from(v4) + offset).into()
        }
        IpAddr::V6(v6) => Ipv6Addr::from(u128::from(v6) + offset).into(),
    };
    IpNet::new(addr, prefix).expect("prefix checked by the caller")
}

/// The first block of `pool`, scanning from block `start` (mod the block count) and wrapping,
/// that overlaps none of `taken`. A random `start` makes simultaneous joins rarely collide.
/// Blocks of another family are never in the way. Only blocks that overlap a taken one are
/// skipped, so the scan ends after at most as many blocks as the taken ones cover, plus one,
/// however large the pool (an IPv6 /48 holds 65536 /64s).
pub fn pick_free_block(pool: IpNet, prefix: u8, taken: &[IpNet], start: u64) -> Result<IpNet, AllocationError> {
    let count = block_count(pool, prefix);
    let start = u128::from(start) % count;
    let covered = taken
        .iter()
        .map(|t| 1u128.checked_shl(u32::from(prefix.saturating_sub(t.prefix_len()))).unwrap_or(u128::MAX))
        .fold(1u128, u128::saturating_add);
    let limit = count.min(covered);
    (0..limit)
        .map(|i| block(pool, prefix, (start + i) % count))
        .find(|b| !taken.iter().any(|t| t.contains(&b.network()) || b.contains(&t.network())))
        .ok_or(AllocationError::Exhausted { pool, prefix, blocks: count })
}

/// What the node is doing about its own PodCIDR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Membership has not settled: the free blocks are not known yet.
    Waiting,
    /// Announced; confirmed at `confirm_at` (once membership has settled) unless it loses first.
    Claiming { claim: Claim, confirm_at: Instant },
    /// Static or confirmed: the node uses it.
    Held { claim: Claim },
    /// The static PodCIDR is owned by a better claim: announced, never used, taken up again as
    /// soon as the owner's claim is gone.
    Blocked { claim: Claim, winner: String },
    /// No free block; retried on every step.
    Exhausted(AllocationError),
}

/// Inputs of one allocation step.
#[derive(Debug, Clone)]
pub struct StepInput<'a> {
    pub now: Instant,
    pub now_ms: u64,
    /// Membership has settled (see `membership::Settle`).
    pub settled: bool,
    /// Claims of every other node known to gossip, live or recently dead.
    pub others: &'a [Claimant],
    /// The claim this node's previous generation announced, if peers still remember it.
    pub previous: Option<Claim>,
    /// Random number choosing where the free-block scan starts.
    pub random: u64,
}

/// What a step changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    /// A new claim to announce.
    Announced(Claim),
    /// The claim became the node's lease: persist it and publish the node's files.
    Confirmed(Claim),
    /// The held or claimed block is owned by a better claim. An automatic claim moves on (see
    /// the phase: a new claim, or the pool is exhausted); a static one is blocked.
    Lost {
        cidr: IpNet,
        winner: String,
    },
    Exhausted(AllocationError),
}

/// The node's side of the allocation protocol.
///
/// Every claim starts as `claiming`, also a static PodCIDR and a lease kept from an earlier run:
/// a claiming claim loses to any held (static or confirmed) one, so a node coming back from
/// maintenance, or started with a stale lease, can never take a block that another node holds
/// and has pods in. Only a claim that stayed uncontested through the confirmation window, with
/// membership settled, is held.
#[derive(Debug, Clone)]
pub struct Allocator {
    node: String,
    pool: IpNet,
    prefix: u8,
    confirm_after: Duration,
    /// The operator's `--pod-cidr` (as a claim, with its time): the only block it may hold.
    fixed: Option<Claim>,
    phase: Phase,
}

impl Allocator {
    /// `start` is a static PodCIDR or a lease persisted by an earlier run: claimed at once
    /// (so that peers keep routing a restarting node's block), held only once confirmed.
    pub fn new(
        node: &str,
        pool: IpNet,
        prefix: u8,
        confirm_after: Duration,
        start: Option<Claim>,
        now: Instant,
    ) -> Allocator {
        Allocator {
            node: node.to_string(),
            pool,
            prefix,
            confirm_after,
            fixed: start.filter(|c| c.kind == ClaimKind::Static).map(claiming),
            phase: match start {
                Some(claim) => Phase::Claiming { claim: claiming(claim), confirm_at: now + confirm_after },
                None => Phase::Waiting,
            },
        }
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The range it allocates from.
    pub fn pool(&self) -> IpNet {
        self.pool
    }

    /// The claim to announce, if any.
    pub fn claim(&self) -> Option<Claim> {
        match &self.phase {
            Phase::Claiming { claim, .. } | Phase::Held { claim } | Phase::Blocked { claim, .. } => Some(*claim),
            Phase::Waiting | Phase::Exhausted(_) => None,
        }
    }

    /// The PodCIDR the node uses: only a held (static or confirmed) claim.
    pub fn held(&self) -> Option<Claim> {
        match &self.phase {
            Phase::Held { claim } => Some(*claim),
            _ => None,
        }
    }

    /// Gives up the claim (the node may not use its name): back to waiting, announcing nothing.
    pub fn withdraw(&mut self) {
        self.phase = Phase::Waiting;
    }

    pub fn step(&mut self, input: &StepInput<'_>) -> Outcome {
        match self.phase.clone() {
            Phase::Waiting | Phase::Exhausted(_) if input.settled => self.choose(input, None),
            Phase::Waiting | Phase::Exhausted(_) => Outcome::Unchanged,
            Phase::Claiming { claim, confirm_at } => {
                if let Some(winner) = self.beaten(claim, input.others) {
                    tracing::info!(cidr = %claim.cidr, %winner, "claim lost");
                    return self.lose(input, claim, winner);
                }
                if !input.settled || input.now < confirm_at {
                    return Outcome::Unchanged;
                }
                let kind = if self.fixed.is_some() { ClaimKind::Static } else { ClaimKind::Confirmed };
                let claim = Claim { kind, ..claim };
                self.phase = Phase::Held { claim };
                Outcome::Confirmed(claim)
            }
            Phase::Held { claim } => match self.beaten(claim, input.others) {
                None => Outcome::Unchanged,
                Some(winner) => self.lose(input, claiming(claim), winner),
            },
            Phase::Blocked { claim, .. } => match self.beaten(claim, input.others) {
                None => {
                    self.phase = Phase::Claiming { claim, confirm_at: input.now + self.confirm_after };
                    Outcome::Announced(claim)
                }
                Some(winner) => {
                    self.phase = Phase::Blocked { claim, winner };
                    Outcome::Unchanged
                }
            },
        }
    }

    fn beaten(&self, claim: Claim, others: &[Claimant]) -> Option<String> {
        let ours = Claimant { node: self.node.clone(), claim };
        beaten_by(&ours, others).map(|w| w.node.clone())
    }

    /// `claim` is owned by `winner`: a static claim stays blocked on it, an automatic one moves
    /// to another block (or waits for membership to settle to know which are free).
    fn lose(&mut self, input: &StepInput<'_>, claim: Claim, winner: String) -> Outcome {
        if self.fixed.is_some() {
            self.phase = Phase::Blocked { claim: claiming(claim), winner: winner.clone() };
        } else if input.settled {
            let _ = self.choose(input, Some(claim.cidr));
        } else {
            self.phase = Phase::Waiting;
        }
        Outcome::Lost { cidr: claim.cidr, winner }
    }

    /// Claims a block: the static one, else the previous generation's if nobody beats it, else
    /// a free one.
    fn choose(&mut self, input: &StepInput<'_>, avoid: Option<IpNet>) -> Outcome {
        let reclaim = self.fixed.or_else(|| {
            input.previous.map(claiming).filter(|p| Some(p.cidr) != avoid && self.beaten(*p, input.others).is_none())
        });
        let claim = match reclaim {
            Some(claim) => claim,
            None => {
                let taken: Vec<IpNet> = input.others.iter().map(|o| o.claim.cidr).chain(avoid).collect();
                match pick_free_block(self.pool, self.prefix, &taken, input.random) {
                    Ok(cidr) => Claim { cidr, kind: ClaimKind::Claiming, since_ms: input.now_ms },
                    Err(e) => {
                        let changed = self.phase != Phase::Exhausted(e.clone());
                        self.phase = Phase::Exhausted(e.clone());
                        return if changed { Outcome::Exhausted(e) } else { Outcome::Unchanged };
                    }
                }
            }
        };
        self.phase = Phase::Claiming { claim, confirm_at: input.now + self.confirm_after };
        Outcome::Announced(claim)
    }
}

/// The same claim, announced as not held yet (keeping its original time, its rank).
pub fn claiming(claim: Claim) -> Claim {
    Claim { kind: ClaimKind::Claiming, ..claim }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn claimant(node: &str, cidr: &str, kind: ClaimKind, since_ms: u64) -> Claimant {
        Claimant { node: node.into(), claim: Claim { cidr: net(cidr), kind, since_ms } }
    }

    const POOL: &str = "10.244.0.0/16";

    #[test]
    fn ipv6_blocks_are_found_the_same_way_and_other_families_are_never_in_the_way() {
        let pool = net("fd00:10:244::/56");
        assert_eq!(block_count(pool, 64), 256);
        assert_eq!(pick_free_block(pool, 64, &[], 3).unwrap(), net("fd00:10:244:3::/64"));
        let taken = [net("fd00:10:244:3::/64"), net("10.244.4.0/24"), net("fd00:10:244:4::/64")];
        assert_eq!(pick_free_block(pool, 64, &taken, 3).unwrap(), net("fd00:10:244:5::/64"));
        assert_eq!(pick_free_block(pool, 64, &[], 256 + 255).unwrap(), net("fd00:10:244:ff::/64"));
        // A pool of 2^32 blocks: nothing grows with its size.
        let huge = net("fd00::/32");
        assert_eq!(block_count(huge, 64), 1 << 32);
        let taken = [net("fd00:0:0:7::/64")];
        assert_eq!(pick_free_block(huge, 64, &taken, 7).unwrap(), net("fd00:0:0:8::/64"));
        let full = [net("fd00:10:244::/64"), net("fd00:10:244:1::/64")];
        let err = pick_free_block(net("fd00:10:244::/63"), 64, &full, 0).unwrap_err();
        assert_eq!(err, AllocationError::Exhausted { pool: net("fd00:10:244::/63"), prefix: 64, blocks: 2 });
    }

    #[test]
    fn free_block_search_starts_at_the_random_index_and_skips_taken_blocks() {
        let pool = net(POOL);
        assert_eq!(pick_free_block(pool, 24, &[], 3).unwrap(), net("10.244.3.0/24"));
        let taken = [net("10.244.3.0/24"), net("10.244.4.0/24")];
        assert_eq!(pick_free_block(pool, 24, &taken, 3).unwrap(), net("10.244.5.0/24"));
        // The start wraps modulo the block count, and so does the scan.
        assert_eq!(pick_free_block(pool, 24, &[], 256 + 7).unwrap(), net("10.244.7.0/24"));
        let taken = [net("10.244.255.0/24")];
        assert_eq!(pick_free_block(pool, 24, &taken, 255).unwrap(), net("10.244.0.0/24"));
    }

    #[test]
    fn free_block_search_treats_any_overlap_as_taken() {
        let pool = net("10.0.0.0/22");
        let taken = [net("10.0.0.128/25"), net("10.0.2.0/23")];
        assert_eq!(pick_free_block(pool, 24, &taken, 2).unwrap(), net("10.0.1.0/24"));
    }

    #[test]
    fn a_full_pool_is_exhausted() {
        let pool = net("10.244.0.0/23");
        let taken = [net("10.244.0.0/24"), net("10.244.1.0/24")];
        let err = pick_free_block(pool, 24, &taken, 0).unwrap_err();
        assert_eq!(err, AllocationError::Exhausted { pool, prefix: 24, blocks: 2 });
        assert!(err.to_string().contains("exhausted"));
    }

    #[test]
    fn static_beats_confirmed_beats_claiming_then_earliest_then_name() {
        use ClaimKind::*;
        let ranked = |a: &Claimant, b: &Claimant| conflicts(&[a.clone(), b.clone()])[0].winner.clone();
        let c = "10.244.1.0/24";
        assert_eq!(ranked(&claimant("a", c, Claiming, 1), &claimant("b", c, Confirmed, 9)), "b");
        assert_eq!(ranked(&claimant("a", c, Confirmed, 1), &claimant("b", c, Static, 9)), "b");
        assert_eq!(ranked(&claimant("a", c, Claiming, 5), &claimant("b", c, Claiming, 4)), "b");
        assert_eq!(ranked(&claimant("b", c, Claiming, 4), &claimant("a", c, Claiming, 4)), "a");
    }

    #[test]
    fn conflicts_list_each_contested_block_once_with_all_losers() {
        use ClaimKind::*;
        let all = [
            claimant("c", "10.244.1.0/24", Claiming, 3),
            claimant("a", "10.244.1.0/24", Claiming, 2),
            claimant("b", "10.244.1.0/24", Claiming, 2),
            claimant("d", "10.244.2.0/24", Confirmed, 1),
        ];
        assert_eq!(
            conflicts(&all),
            vec![Conflict { cidr: net("10.244.1.0/24"), winner: "a".into(), losers: vec!["b".into(), "c".into()] }]
        );
    }

    fn input<'a>(now: Instant, settled: bool, others: &'a [Claimant], random: u64) -> StepInput<'a> {
        StepInput { now, now_ms: 1_000, settled, others, previous: None, random }
    }

    fn allocator(start: Option<Claim>, now: Instant) -> Allocator {
        Allocator::new("me", net(POOL), 24, Duration::from_secs(1), start, now)
    }

    const WINDOW: Duration = Duration::from_secs(1);

    #[test]
    fn waits_for_settled_membership_then_claims_and_confirms_after_the_window() {
        let t0 = Instant::now();
        let mut a = allocator(None, t0);
        assert_eq!(a.step(&input(t0, false, &[], 5)), Outcome::Unchanged);
        assert_eq!(a.claim(), None);
        let Outcome::Announced(claim) = a.step(&input(t0, true, &[], 5)) else {
            panic!("expected a claim");
        };
        assert_eq!(claim.cidr, net("10.244.5.0/24"));
        assert_eq!(claim.kind, ClaimKind::Claiming);
        assert_eq!(a.held(), None);
        let later = t0 + Duration::from_millis(999);
        assert_eq!(a.step(&input(later, true, &[], 0)), Outcome::Unchanged);
        let done = t0 + WINDOW;
        let Outcome::Confirmed(held) = a.step(&input(done, true, &[], 0)) else {
            panic!("expected confirmation");
        };
        assert_eq!(held.kind, ClaimKind::Confirmed);
        assert_eq!(held.since_ms, claim.since_ms);
        assert_eq!(a.held(), Some(held));
    }

    #[test]
    fn blocks_of_other_nodes_are_never_chosen() {
        let t0 = Instant::now();
        let others = [claimant("x", "10.244.5.0/24", ClaimKind::Confirmed, 1)];
        let mut a = allocator(None, t0);
        let Outcome::Announced(claim) = a.step(&input(t0, true, &others, 5)) else {
            panic!();
        };
        assert_eq!(claim.cidr, net("10.244.6.0/24"));
    }

    #[test]
    fn a_claim_that_loses_re_picks_and_a_winning_one_stays() {
        let t0 = Instant::now();
        let mut a = allocator(None, t0);
        let Outcome::Announced(ours) = a.step(&input(t0, true, &[], 5)) else {
            panic!();
        };
        let later_rival = [claimant("zz", "10.244.5.0/24", ClaimKind::Claiming, ours.since_ms + 1)];
        assert_eq!(a.step(&input(t0, true, &later_rival, 0)), Outcome::Unchanged);
        let earlier_rival = [claimant("zz", "10.244.5.0/24", ClaimKind::Claiming, ours.since_ms - 1)];
        assert_eq!(a.step(&input(t0, true, &earlier_rival, 5)), Outcome::Lost { cidr: ours.cidr, winner: "zz".into() });
        assert_ne!(a.claim().unwrap().cidr, ours.cidr);
    }

    #[test]
    fn a_lease_is_announced_at_once_but_held_only_after_settling_and_the_window() {
        let t0 = Instant::now();
        let lease = Claim { cidr: net("10.244.9.0/24"), kind: ClaimKind::Confirmed, since_ms: 500 };
        let mut a = allocator(Some(lease), t0);
        // Peers keep routing a restarting node's block: the claim is out before anything settles.
        assert_eq!(a.claim(), Some(Claim { kind: ClaimKind::Claiming, ..lease }));
        assert_eq!(a.held(), None);
        assert_eq!(a.step(&input(t0 + WINDOW, false, &[], 0)), Outcome::Unchanged, "not before settling");
        assert_eq!(a.step(&input(t0 + WINDOW, true, &[], 0)), Outcome::Confirmed(lease));
        // Held: a newcomer's claim, whatever its time, never displaces it; an older held one does.
        let newcomer = [claimant("n", "10.244.9.0/24", ClaimKind::Claiming, 1)];
        assert_eq!(a.step(&input(t0, true, &newcomer, 0)), Outcome::Unchanged);
        let older = [claimant("o", "10.244.9.0/24", ClaimKind::Confirmed, 100)];
        assert_eq!(a.step(&input(t0, true, &older, 9)), Outcome::Lost { cidr: lease.cidr, winner: "o".into() });
        assert_eq!(a.held(), None);
        assert_eq!(a.claim().unwrap().cidr, net("10.244.10.0/24"));
    }

    #[test]
    fn a_node_back_from_maintenance_never_takes_its_old_block_from_the_node_now_holding_it() {
        let t0 = Instant::now();
        // Its lease is older than the current owner's claim: that does not matter, the owner
        // holds the block (and has pods in it); the returning node only claims it.
        let lease = Claim { cidr: net("10.245.0.0/24"), kind: ClaimKind::Confirmed, since_ms: 100 };
        let mut a = Allocator::new("b", net("10.245.0.0/23"), 24, WINDOW, Some(lease), t0);
        let owner = [claimant("c", "10.245.0.0/24", ClaimKind::Confirmed, 9_000)];
        assert_eq!(a.step(&input(t0, true, &owner, 0)), Outcome::Lost { cidr: lease.cidr, winner: "c".into() });
        assert_eq!(a.claim().unwrap().cidr, net("10.245.1.0/24"));
        assert_eq!(a.held(), None);
    }

    #[test]
    fn an_automatic_claim_beaten_before_membership_settles_waits_to_choose() {
        let t0 = Instant::now();
        let lease = Claim { cidr: net("10.244.9.0/24"), kind: ClaimKind::Confirmed, since_ms: 500 };
        let mut a = allocator(Some(lease), t0);
        let owner = [claimant("o", "10.244.9.0/24", ClaimKind::Confirmed, 600)];
        assert_eq!(a.step(&input(t0, false, &owner, 0)), Outcome::Lost { cidr: lease.cidr, winner: "o".into() });
        assert_eq!(a.phase(), &Phase::Waiting);
        assert_eq!(a.claim(), None);
    }

    #[test]
    fn a_static_claim_that_loses_is_blocked_and_taken_up_once_the_owner_is_gone() {
        let t0 = Instant::now();
        let ours = Claim { cidr: net("10.244.77.0/24"), kind: ClaimKind::Static, since_ms: 500 };
        let mut a = allocator(Some(ours), t0);
        let owner = [claimant("o", "10.244.77.0/24", ClaimKind::Static, 900)];
        assert_eq!(a.step(&input(t0, true, &owner, 0)), Outcome::Lost { cidr: ours.cidr, winner: "o".into() });
        assert_eq!(
            a.phase(),
            &Phase::Blocked { claim: Claim { kind: ClaimKind::Claiming, ..ours }, winner: "o".into() }
        );
        assert_eq!(a.held(), None);
        // Still announced (every node sees the conflict), never moved.
        assert_eq!(a.claim().map(|c| c.cidr), Some(ours.cidr));
        assert_eq!(a.step(&input(t0, true, &owner, 0)), Outcome::Unchanged);
        // The owner is forgotten: claimed again, held after the window.
        let t1 = t0 + WINDOW;
        assert!(matches!(a.step(&input(t1, true, &[], 0)), Outcome::Announced(c) if c.cidr == ours.cidr));
        assert_eq!(a.step(&input(t1 + WINDOW, true, &[], 0)), Outcome::Confirmed(ours));
    }

    #[test]
    fn a_held_static_claim_beaten_by_an_older_static_one_is_blocked() {
        let t0 = Instant::now();
        let ours = Claim { cidr: net("10.244.77.0/24"), kind: ClaimKind::Static, since_ms: 500 };
        let mut a = allocator(Some(ours), t0);
        assert_eq!(a.step(&input(t0 + WINDOW, true, &[], 0)), Outcome::Confirmed(ours));
        let confirmed_rival = [claimant("o", "10.244.77.0/24", ClaimKind::Confirmed, 1)];
        assert_eq!(a.step(&input(t0, true, &confirmed_rival, 0)), Outcome::Unchanged, "static beats confirmed");
        let older_static = [claimant("o", "10.244.77.0/24", ClaimKind::Static, 1)];
        assert_eq!(a.step(&input(t0, true, &older_static, 0)), Outcome::Lost { cidr: ours.cidr, winner: "o".into() });
        assert!(matches!(a.phase(), Phase::Blocked { .. }));
    }

    #[test]
    fn the_previous_generations_block_is_reclaimed_with_its_original_time() {
        let t0 = Instant::now();
        let previous = Claim { cidr: net("10.244.42.0/24"), kind: ClaimKind::Confirmed, since_ms: 7 };
        let mut a = allocator(None, t0);
        let step = StepInput { previous: Some(previous), ..input(t0, true, &[], 0) };
        assert_eq!(a.step(&step), Outcome::Announced(Claim { kind: ClaimKind::Claiming, ..previous }));
    }

    #[test]
    fn exhaustion_is_reported_once_and_cleared_when_a_block_frees_up() {
        let t0 = Instant::now();
        let mut a = Allocator::new("me", net("10.244.0.0/24"), 24, WINDOW, None, t0);
        let full = [claimant("x", "10.244.0.0/24", ClaimKind::Confirmed, 1)];
        assert!(matches!(a.step(&input(t0, true, &full, 0)), Outcome::Exhausted(_)));
        assert_eq!(a.step(&input(t0, true, &full, 0)), Outcome::Unchanged);
        assert!(matches!(a.phase(), Phase::Exhausted(_)));
        assert!(matches!(a.step(&input(t0, true, &[], 0)), Outcome::Announced(_)));
    }
}
