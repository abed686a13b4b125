//! Liveness by monitors (issue 14, docs/architecture.md): every member is watched by the K
//! members that follow it on a ring, each pinging it directly, and is dead when at least H of
//! them suspect it. Everything here is pure: the pings themselves are sent by `liveness.rs`.
//!
//! - The ring orders members by a stable hash of (name, generation), so every observer that
//!   holds the same members computes the same monitors.
//! - K = min(8, members other than the subject); H = ⌈5K/8⌉ (5 of 8, 1 of 1); L = min(2, H).
//! - A monitor suspects a subject after [`MISSES`] unanswered pings in a row and stops as soon
//!   as it answers.
//! - The partition hold: while more than 10 % of the members, and more than one, are freshly
//!   suspected by at least L monitors, none of them is declared dead, each for at most
//!   [`HOLD_LIMIT`] from its suspicion: a cut makes many nodes suspect at once, a crash one.
//!   (More than one, so that a single crash in a cluster of under ten nodes, which is already
//!   10 %, is still withdrawn; fresh, see [`Verdict`].)

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Monitors per member in clusters large enough.
pub const MAX_MONITORS: usize = 8;
/// Unanswered pings in a row before a monitor suspects its subject.
pub const MISSES: u32 = 3;
/// The longest a partition hold lasts: a cut longer than this, or a crash of more than 10 % of
/// the nodes at once, is then withdrawn (routes across a lasting cut carry nothing anyway).
pub const HOLD_LIMIT: Duration = Duration::from_secs(30);

/// One generation of one node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberId {
    pub name: String,
    pub generation: u64,
}

impl MemberId {
    pub fn new(name: &str, generation: u64) -> MemberId {
        MemberId { name: name.to_string(), generation }
    }
}

/// FNV-1a (64 bits) of the name, a zero byte and the generation: the same on every node and
/// every release, unlike std's randomly keyed hasher.
fn ring_position(id: &MemberId) -> u64 {
    let bytes = id.name.bytes().chain([0]).chain(id.generation.to_be_bytes());
    bytes.fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The members in ring order.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    order: Vec<(u64, MemberId)>,
}

impl Ring {
    pub fn new<'a>(members: impl IntoIterator<Item = &'a MemberId>) -> Ring {
        let mut order: Vec<(u64, MemberId)> = members.into_iter().map(|m| (ring_position(m), m.clone())).collect();
        order.sort_unstable();
        order.dedup();
        Ring { order }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The monitors of `subject`, a ring member or not: the K members that follow its position,
    /// itself left out.
    pub fn monitors(&self, subject: &MemberId) -> Vec<&MemberId> {
        let at = (ring_position(subject), subject.clone());
        let start = self.order.partition_point(|entry| *entry <= at);
        let others = self.order.len() - usize::from(self.order.binary_search(&at).is_ok());
        (0..self.order.len())
            .map(|i| &self.order[(start + i) % self.order.len()].1)
            .filter(|m| *m != subject)
            .take(others.min(MAX_MONITORS))
            .collect()
    }
}

/// H: the suspicions that make a member dead, of its `k` monitors.
pub fn quorum(k: usize) -> usize {
    (5 * k).div_ceil(MAX_MONITORS)
}

/// L: the suspicions that count a member as suspected for the partition hold, and that keep a
/// member declared dead dead (so that a monitor replaced on the ring does not revive it).
pub fn hold_quorum(k: usize) -> usize {
    quorum(k).min(2)
}

/// The suspicions among a member's `k` monitors that declare it dead, and that keep it dead once
/// declared: H and L for a member that may still be alive. A member that announced it is
/// `leaving` stops answering when its gossip stops, so the first monitor to miss it confirms it
/// gone (a monitor with a broken link can only withdraw a node that is going anyway), 1.5–2 s
/// after it stops: time enough for a restarted agent's next generation to be heard first, so
/// that a restart costs no route; and it never comes back (a restart is a new generation), so
/// it stays dead even when that monitor leaves the ring.
fn needed(k: usize, leaving: bool) -> (usize, usize) {
    match leaving {
        true => (1, 0),
        false => (quorum(k), hold_quorum(k)),
    }
}

/// This observer's verdicts, carried from one judgement to the next.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    dead: BTreeSet<MemberId>,
    /// The ring of the last judgement: who monitors whom.
    ring: Ring,
    /// Each monitor's suspicions as last judged.
    witnessed: BTreeMap<MemberId, BTreeSet<MemberId>>,
    /// Members this observer saw a monitor start suspecting, and when it first did: only such
    /// fresh suspicions count toward the partition hold. Suspicions already there when this
    /// observer first heard of the monitor are old news (a node that starts learns of every
    /// member that died before it, all at once, which is no partition).
    fresh: BTreeMap<MemberId, Instant>,
}

/// What the monitors say about the members they judge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Judgement {
    /// The members judged by their monitors.
    pub judged: BTreeSet<MemberId>,
    /// Those of them declared dead.
    pub dead: BTreeSet<MemberId>,
    /// Members freshly suspected by at least L monitors while the partition hold is on.
    pub suspected_partition: Option<usize>,
}

impl Verdict {
    /// Judges `members` (every member monitoring and monitored, this node included) from each
    /// monitor's suspicions. The ring leaves out members declared dead and members this node's
    /// gossip no longer hears (`unheard`: their suspicions cannot reach it), so that their
    /// subjects get monitors whose word arrives: otherwise two of three nodes crashing at once
    /// would each wait forever for the other's vote, and each side of a cut would count the
    /// silent other side's stale suspicions. The hold spares a member for at most
    /// [`HOLD_LIMIT`] from its fresh suspicion, and does not apply when the ring holds this
    /// node alone: cut off from all others, it has no side whose routes a hold would keep.
    /// A member announcing `leaving` is going anyway: one suspicion confirms it gone (see
    /// [`needed`]) and it never counts toward the hold.
    pub fn judge(
        &mut self,
        members: &BTreeSet<MemberId>,
        unheard: &BTreeSet<MemberId>,
        leaving: &BTreeSet<MemberId>,
        suspicions: &BTreeMap<MemberId, BTreeSet<MemberId>>,
        now: Instant,
    ) -> Judgement {
        for (monitor, suspects) in suspicions {
            if let Some(before) = self.witnessed.get(monitor) {
                for started in suspects.difference(before) {
                    self.fresh.entry(started.clone()).or_insert(now);
                }
            }
        }
        self.witnessed = suspicions.clone();
        let suspected_at_all: BTreeSet<&MemberId> = suspicions.values().flatten().collect();
        self.fresh.retain(|m, _| members.contains(m) && suspected_at_all.contains(m));
        self.dead.retain(|m| members.contains(m));
        let recent = |m: &MemberId| self.fresh.get(m).is_some_and(|since| now.duration_since(*since) < HOLD_LIMIT);

        self.ring = self.ring_of(members, unheard);
        let counts: Vec<(&MemberId, usize, usize)> = members
            .iter()
            .map(|m| {
                let monitors = self.ring.monitors(m);
                let suspecting =
                    monitors.iter().filter(|monitor| suspicions.get(**monitor).is_some_and(|s| s.contains(m))).count();
                (m, monitors.len(), suspecting)
            })
            .collect();
        let live = members.len() - self.dead.len();
        let suspected = counts
            .iter()
            .filter(|(m, k, n)| {
                !self.dead.contains(*m) && !leaving.contains(*m) && *k > 0 && *n >= hold_quorum(*k) && recent(m)
            })
            .count();
        let held = suspected > 1 && suspected * 10 > live && self.ring.len() > 1;
        let dead = counts
            .iter()
            .filter(|(m, k, n)| {
                let (to_die, to_stay_dead) = needed(*k, leaving.contains(*m));
                match self.dead.contains(*m) {
                    true => *n >= to_stay_dead,
                    false => *k > 0 && *n >= to_die && !(held && recent(m) && !leaving.contains(*m)),
                }
            })
            .map(|(m, _, _)| (*m).clone())
            .collect();
        self.dead = dead;
        // Who monitors whom from now on: without the members just declared dead.
        self.ring = self.ring_of(members, unheard);
        Judgement { judged: members.clone(), dead: self.dead.clone(), suspected_partition: held.then_some(suspected) }
    }

    /// The ring: the members neither declared dead nor unheard.
    fn ring_of(&self, members: &BTreeSet<MemberId>, unheard: &BTreeSet<MemberId>) -> Ring {
        Ring::new(members.iter().filter(|m| !self.dead.contains(m) && !unheard.contains(m)))
    }

    /// The members `me` monitors on the ring of the last judgement: dead and unheard members
    /// included, so that they come back if they answer again.
    pub fn subjects(&self, members: &BTreeSet<MemberId>, me: &MemberId) -> BTreeSet<MemberId> {
        members.iter().filter(|m| *m != me && self.ring.monitors(m).contains(&me)).cloned().collect()
    }
}

/// One monitor's pings: the outstanding ping to each subject and the misses in a row.
#[derive(Debug, Clone, Default)]
pub struct Pings {
    seq: u64,
    subjects: BTreeMap<MemberId, Probe>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Probe {
    sent: u64,
    answered: u64,
    misses: u32,
}

impl Pings {
    /// A ping round: subjects no longer monitored are forgotten, an unanswered ping counts as a
    /// miss; returns the pings to send now, with their sequence numbers.
    pub fn round(&mut self, subjects: &BTreeSet<MemberId>) -> Vec<(MemberId, u64)> {
        self.subjects.retain(|s, _| subjects.contains(s));
        subjects
            .iter()
            .map(|s| {
                let probe = self.subjects.entry(s.clone()).or_default();
                if probe.sent > probe.answered {
                    probe.misses += 1;
                }
                self.seq += 1;
                probe.sent = self.seq;
                (s.clone(), self.seq)
            })
            .collect()
    }

    /// `subject` answered ping `seq`: it is not suspected any more.
    pub fn answered(&mut self, subject: &MemberId, seq: u64) {
        if let Some(probe) = self.subjects.get_mut(subject).filter(|p| seq <= p.sent) {
            probe.answered = probe.answered.max(seq);
            probe.misses = 0;
        }
    }

    /// The subjects that missed [`MISSES`] pings in a row.
    pub fn suspected(&self) -> BTreeSet<MemberId> {
        self.subjects.iter().filter(|(_, p)| p.misses >= MISSES).map(|(s, _)| s.clone()).collect()
    }
}

/// The `suspects` key's value: `<name>:<generation>` of each suspect, comma-separated, sorted.
pub fn encode_suspects(suspects: &BTreeSet<MemberId>) -> String {
    let entries: Vec<String> = suspects.iter().map(|s| format!("{}:{}", s.name, s.generation)).collect();
    entries.join(",")
}

/// Parses the `suspects` key; the error names the first malformed entry.
pub fn decode_suspects(value: &str) -> Result<BTreeSet<MemberId>, String> {
    value
        .split(',')
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (name, generation) =
                entry.rsplit_once(':').ok_or_else(|| format!("{entry:?}: expected <name>:<generation>"))?;
            let generation =
                generation.parse().map_err(|_| format!("{entry:?}: {generation:?} is not a generation"))?;
            if name.is_empty() {
                return Err(format!("{entry:?}: empty name"));
            }
            Ok(MemberId::new(name, generation))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ids(n: usize) -> Vec<MemberId> {
        (0..n).map(|i| MemberId::new(&format!("node-{i}"), 1)).collect()
    }

    fn set(ids: &[MemberId]) -> BTreeSet<MemberId> {
        ids.iter().cloned().collect()
    }

    /// Every monitor of `subject` (per `members`' ring) suspecting it, for the first `n` of them.
    fn suspected_by(
        members: &BTreeSet<MemberId>,
        subject: &MemberId,
        n: usize,
        into: &mut BTreeMap<MemberId, BTreeSet<MemberId>>,
    ) {
        for monitor in Ring::new(members).monitors(subject).into_iter().take(n) {
            into.entry(monitor.clone()).or_default().insert(subject.clone());
        }
    }

    #[test]
    fn the_ring_position_is_fixed_across_releases() {
        // FNV-1a of "a\0" and generation 1 big-endian, as an independent FNV-1a computes it: a
        // changed hash would give the nodes of a mixed cluster different monitors.
        assert_eq!(ring_position(&MemberId::new("a", 1)), 0x65d2_0839_07ab_1817);
        assert_ne!(ring_position(&MemberId::new("a", 1)), ring_position(&MemberId::new("a", 2)));
    }

    #[test]
    fn quorums_scale_with_the_monitors() {
        let h: Vec<usize> = (1..=8).map(quorum).collect();
        assert_eq!(h, [1, 2, 2, 3, 4, 4, 5, 5]);
        let l: Vec<usize> = (1..=8).map(hold_quorum).collect();
        assert_eq!(l, [1, 2, 2, 2, 2, 2, 2, 2]);
    }

    #[test]
    fn a_member_has_min_8_n_minus_1_monitors_never_itself() {
        for n in [1, 2, 3, 9, 10, 50] {
            let members = ids(n);
            let ring = Ring::new(&members);
            for m in &members {
                let monitors = ring.monitors(m);
                assert_eq!(monitors.len(), (n - 1).min(MAX_MONITORS), "n = {n}");
                assert!(!monitors.contains(&m));
                assert_eq!(set(&monitors.into_iter().cloned().collect::<Vec<_>>()).len(), (n - 1).min(MAX_MONITORS));
            }
        }
        // A member outside the ring (declared dead) has monitors among all the others.
        let ring = Ring::new(&ids(5));
        assert_eq!(ring.monitors(&MemberId::new("gone", 1)).len(), 5);
    }

    #[test]
    fn each_member_monitors_as_many_as_monitor_it() {
        let members = ids(40);
        let ring = Ring::new(&members);
        let mut load: BTreeMap<&MemberId, usize> = BTreeMap::new();
        for m in &members {
            for monitor in ring.monitors(m) {
                *load.entry(monitor).or_default() += 1;
            }
        }
        assert!(load.values().all(|&subjects| subjects == MAX_MONITORS), "{load:?}");
    }

    proptest! {
        /// Observers holding the same members in any order compute the same monitors.
        #[test]
        fn monitors_are_the_same_for_every_observer_of_the_same_members(
            names in proptest::collection::btree_set("[a-z][a-z0-9-]{0,12}", 1..40),
            generation in 1u64..1_000_000,
            rotate in 0usize..40,
        ) {
            let members: Vec<MemberId> = names.iter().map(|n| MemberId::new(n, generation)).collect();
            let mut shuffled = members.clone();
            shuffled.rotate_left(rotate % members.len());
            shuffled.reverse();
            let (a, b) = (Ring::new(&members), Ring::new(&shuffled));
            for m in &members {
                prop_assert_eq!(a.monitors(m), b.monitors(m));
            }
        }
    }

    #[test]
    fn a_member_is_dead_when_h_of_its_k_monitors_suspect_it() {
        let now = Instant::now();
        let members = set(&ids(20));
        let subject = MemberId::new("node-7", 1);
        for (n, dead) in [(4, false), (5, true)] {
            let mut suspicions = BTreeMap::new();
            suspected_by(&members, &subject, n, &mut suspicions);
            let judgement = Verdict::default().judge(&members, &BTreeSet::new(), &BTreeSet::new(), &suspicions, now);
            assert_eq!(judgement.dead.contains(&subject), dead, "{n} of 8");
            assert_eq!(judgement.dead.len(), usize::from(dead));
            assert_eq!(judgement.suspected_partition, None);
        }
        // Suspicions from members that are not its monitors do not count.
        let ring = Ring::new(&members);
        let monitors = ring.monitors(&subject);
        let strangers: BTreeMap<MemberId, BTreeSet<MemberId>> = members
            .iter()
            .filter(|m| !monitors.contains(m))
            .map(|m| (m.clone(), set(std::slice::from_ref(&subject))))
            .collect();
        assert!(
            Verdict::default().judge(&members, &BTreeSet::new(), &BTreeSet::new(), &strangers, now).dead.is_empty()
        );
    }

    #[test]
    fn in_a_cluster_of_two_the_other_decides() {
        let members = set(&ids(2));
        let subject = MemberId::new("node-1", 1);
        let mut suspicions = BTreeMap::new();
        suspected_by(&members, &subject, 1, &mut suspicions);
        assert_eq!(
            Verdict::default().judge(&members, &BTreeSet::new(), &BTreeSet::new(), &suspicions, Instant::now()).dead,
            set(&[subject])
        );
    }

    #[test]
    fn a_leaving_member_is_gone_on_one_suspicion_and_never_held() {
        let now = Instant::now();
        let members = set(&ids(20));
        let (mut verdict, mut suspicions) = running(&members, now);
        let leaving: BTreeSet<MemberId> = members.iter().take(3).cloned().collect();
        let one = |s: &mut BTreeMap<MemberId, BTreeSet<MemberId>>, m: &MemberId| suspected_by(&members, m, 1, s);
        let judge = |v: &mut Verdict, s: &BTreeMap<MemberId, BTreeSet<MemberId>>| {
            v.judge(&members, &BTreeSet::new(), &leaving, s, now)
        };
        // Announcing leaving but still answering: alive.
        assert!(judge(&mut verdict, &suspicions).dead.is_empty());
        // Three leaving members stop at once (15 % of the members): each is gone on its first
        // monitor's word, with no partition hold.
        leaving.iter().for_each(|m| one(&mut suspicions, m));
        let judgement = judge(&mut verdict, &suspicions);
        assert_eq!((judgement.dead, judgement.suspected_partition), (leaving.clone(), None));
        // They stay gone although the ring changed under them (each may have been another's
        // one suspecting monitor) and even without any suspicion.
        assert_eq!(judge(&mut verdict, &suspicions).dead, leaving);
        assert_eq!(judge(&mut verdict, &BTreeMap::new()).dead, leaving);
        // One suspicion of a member that is not leaving is no verdict.
        let staying = members.iter().nth(5).unwrap();
        one(&mut suspicions, staying);
        assert!(!judge(&mut verdict, &suspicions).dead.contains(staying));
        // Nor is a leaving member's word about itself: no suspicion, no verdict.
        assert!(judge(&mut Verdict::default(), &BTreeMap::new()).dead.is_empty());
    }

    /// A verdict that declared `subject` dead on five suspicions, and those suspicions.
    fn declared_dead(
        members: &BTreeSet<MemberId>,
        subject: &MemberId,
        now: Instant,
    ) -> (Verdict, BTreeMap<MemberId, BTreeSet<MemberId>>) {
        let mut verdict = Verdict::default();
        let mut suspicions = BTreeMap::new();
        suspected_by(members, subject, 5, &mut suspicions);
        assert!(verdict.judge(members, &BTreeSet::new(), &BTreeSet::new(), &suspicions, now).dead.contains(subject));
        (verdict, suspicions)
    }

    #[test]
    fn a_dead_member_stays_dead_while_l_monitors_suspect_it_and_revives_when_it_answers() {
        let now = Instant::now();
        let members = set(&ids(20));
        let subject = MemberId::new("node-3", 1);
        let (mut verdict, _) = declared_dead(&members, &subject, now);
        // Three monitors withdraw (say, they were replaced on the ring): two still hold it dead.
        let mut two = BTreeMap::new();
        suspected_by(&members, &subject, 2, &mut two);
        assert!(verdict.judge(&members, &BTreeSet::new(), &BTreeSet::new(), &two, now).dead.contains(&subject));
        // It answers everyone again.
        assert!(verdict.judge(&members, &BTreeSet::new(), &BTreeSet::new(), &BTreeMap::new(), now).dead.is_empty());
    }

    #[test]
    fn a_dead_member_leaves_the_ring_so_its_subjects_keep_live_monitors() {
        let now = Instant::now();
        let members = set(&ids(20));
        let dead = MemberId::new("node-0", 1);
        let (mut verdict, mut suspicions) = declared_dead(&members, &dead, now);
        // A member it monitored crashes next: its monitors are now all live members, and the
        // five of them that suspect it are enough.
        let ring = Ring::new(&members);
        let subject = members.iter().find(|m| ring.monitors(m).contains(&&dead)).unwrap().clone();
        let live: BTreeSet<MemberId> = members.iter().filter(|m| **m != dead).cloned().collect();
        suspected_by(&live, &subject, 5, &mut suspicions);
        let judgement = verdict.judge(&members, &BTreeSet::new(), &BTreeSet::new(), &suspicions, now);
        assert_eq!(judgement.dead, set(&[dead, subject]));
    }

    #[test]
    fn a_node_pings_exactly_the_members_it_monitors_dead_ones_included() {
        let members = set(&ids(12));
        let (verdict, _) = running(&members, Instant::now());
        let ring = Ring::new(&members);
        for me in &members {
            let expected: BTreeSet<MemberId> =
                members.iter().filter(|m| ring.monitors(m).contains(&me)).cloned().collect();
            assert_eq!(verdict.subjects(&members, me), expected);
        }
        let dead = MemberId::new("node-4", 1);
        let (verdict, _) = declared_dead(&members, &dead, Instant::now());
        let pinging_the_dead = members.iter().filter(|me| verdict.subjects(&members, me).contains(&dead)).count();
        assert_eq!(pinging_the_dead, MAX_MONITORS);
        assert!(verdict.subjects(&members, &dead).is_empty(), "a dead member monitors nobody");
    }

    /// A verdict that has heard every member suspect nobody, as a running node has.
    fn running(members: &BTreeSet<MemberId>, now: Instant) -> (Verdict, BTreeMap<MemberId, BTreeSet<MemberId>>) {
        let quiet: BTreeMap<MemberId, BTreeSet<MemberId>> =
            members.iter().map(|m| (m.clone(), BTreeSet::new())).collect();
        let mut verdict = Verdict::default();
        verdict.judge(members, &BTreeSet::new(), &BTreeSet::new(), &quiet, now);
        (verdict, quiet)
    }

    #[test]
    fn a_partition_holds_every_verdict_until_it_heals_or_the_hold_runs_out() {
        let t0 = Instant::now();
        let members = set(&ids(20));
        let across: Vec<MemberId> = ids(20).into_iter().skip(10).collect();
        let (mut verdict, mut suspicions) = running(&members, t0);
        // Each side hears only its own side's monitors, all of which suspect every member across.
        let this_side: BTreeSet<MemberId> = ids(10).into_iter().collect();
        for subject in &across {
            suspected_by(&this_side, subject, MAX_MONITORS, &mut suspicions);
        }
        let unheard = set(&across);
        let held = verdict.judge(&members, &unheard, &BTreeSet::new(), &suspicions, t0);
        assert!(held.dead.is_empty());
        assert_eq!(held.suspected_partition, Some(10));
        let later = verdict.judge(
            &members,
            &unheard,
            &BTreeSet::new(),
            &suspicions,
            t0 + HOLD_LIMIT - Duration::from_millis(1),
        );
        assert!(later.dead.is_empty());
        // The heal: each side hears the other again, and its suspicions of this side, made
        // during the cut, arrive before their withdrawal. Still held: nobody is withdrawn.
        let mut both_ways = suspicions.clone();
        for subject in ids(10) {
            suspected_by(&set(&across), &subject, MAX_MONITORS, &mut both_ways);
        }
        let healing = verdict.clone().judge(
            &members,
            &BTreeSet::new(),
            &BTreeSet::new(),
            &both_ways,
            t0 + Duration::from_secs(10),
        );
        assert!(healing.dead.is_empty(), "{healing:?}");
        assert!(healing.suspected_partition.is_some());
        // Healed: nobody was withdrawn, and the hold is off.
        let healed = verdict.clone().judge(
            &members,
            &BTreeSet::new(),
            &BTreeSet::new(),
            &BTreeMap::new(),
            t0 + Duration::from_secs(10),
        );
        assert_eq!(healed, Judgement { judged: members.clone(), ..Judgement::default() });
        // Not healed within the limit: every suspect is withdrawn.
        let expired = verdict.judge(&members, &unheard, &BTreeSet::new(), &suspicions, t0 + HOLD_LIMIT);
        assert_eq!(expired.dead, set(&across));
        assert_eq!(expired.suspected_partition, None);
    }

    #[test]
    fn the_hold_needs_more_than_a_tenth_and_more_than_one() {
        let now = Instant::now();
        let suspects = |n: usize, of: usize| {
            let members = set(&ids(of));
            let (mut verdict, mut suspicions) = running(&members, now);
            for subject in ids(n) {
                suspected_by(&members, &subject, 2, &mut suspicions);
            }
            verdict.judge(&members, &BTreeSet::new(), &BTreeSet::new(), &suspicions, now).suspected_partition
        };
        assert_eq!(suspects(2, 20), None, "10 % is not more than 10 %");
        assert_eq!(suspects(3, 20), Some(3));
        assert_eq!(suspects(1, 5), None, "one crash in a small cluster is withdrawn");
        assert_eq!(suspects(2, 5), Some(2));
        assert_eq!(suspects(4, 5), Some(4), "every other node, but heard: a cut that is healing");
    }

    #[test]
    fn when_two_of_three_crash_the_third_declares_both_dead() {
        // Each of the two was the other's second monitor: left on the ring, neither could ever
        // have two suspicions.
        let t0 = Instant::now();
        let members = set(&ids(3));
        let (mut verdict, mut suspicions) = running(&members, t0);
        let (survivor, gone) = (MemberId::new("node-0", 1), set(&ids(3)[1..]));
        suspicions.insert(survivor.clone(), gone.clone());
        // Heard until just now: each still waits for the other's vote.
        assert!(verdict.judge(&members, &BTreeSet::new(), &BTreeSet::new(), &suspicions, t0).dead.is_empty());
        // Gossip no longer hears them: the survivor alone monitors both, and holds nothing.
        let judgement = verdict.judge(&members, &gone, &BTreeSet::new(), &suspicions, t0);
        assert_eq!(judgement.dead, gone);
        assert_eq!(judgement.suspected_partition, None);
        assert_eq!(verdict.subjects(&members, &survivor), gone, "it keeps pinging them");
    }

    #[test]
    fn suspicions_older_than_this_observer_are_no_partition() {
        // A node that starts hears of three members that died before it, all at once.
        let now = Instant::now();
        let members = set(&ids(20));
        let mut suspicions: BTreeMap<MemberId, BTreeSet<MemberId>> =
            members.iter().map(|m| (m.clone(), BTreeSet::new())).collect();
        let gone = ids(3);
        for subject in &gone {
            suspected_by(&members, subject, MAX_MONITORS, &mut suspicions);
        }
        let judgement = Verdict::default().judge(&members, &BTreeSet::new(), &BTreeSet::new(), &suspicions, now);
        assert_eq!(judgement.suspected_partition, None);
        assert_eq!(judgement.dead, set(&gone));
    }

    #[test]
    fn a_monitor_suspects_after_three_misses_in_a_row_and_forgives_an_answer() {
        let subject = MemberId::new("b", 1);
        let subjects = set(std::slice::from_ref(&subject));
        let mut pings = Pings::default();
        let mut last = 0;
        for round in 0..=MISSES {
            assert!(pings.suspected().is_empty(), "round {round}");
            let sent = pings.round(&subjects);
            assert_eq!(sent.len(), 1);
            assert!(sent[0].1 > last);
            last = sent[0].1;
        }
        assert_eq!(pings.suspected(), subjects);
        pings.answered(&subject, last);
        assert!(pings.suspected().is_empty());
        // An answer to a ping never sent counts for nothing.
        pings.round(&subjects);
        pings.round(&subjects);
        pings.answered(&subject, last + 100);
        pings.round(&subjects);
        pings.round(&subjects);
        assert_eq!(pings.suspected(), subjects);
        // A subject no longer monitored is forgotten with its suspicion.
        pings.round(&BTreeSet::new());
        assert!(pings.suspected().is_empty());
    }

    #[test]
    fn suspects_round_trip_and_malformed_values_are_errors() {
        let suspects = set(&[MemberId::new("node-a.example", 17), MemberId::new("b", 1)]);
        assert_eq!(encode_suspects(&suspects), "b:1,node-a.example:17");
        assert_eq!(decode_suspects(&encode_suspects(&suspects)), Ok(suspects));
        assert_eq!(decode_suspects(""), Ok(BTreeSet::new()));
        for bad in ["b", "b:x", ":1", "b:1,c", "b:-1"] {
            assert!(decode_suspects(bad).is_err(), "{bad:?}");
        }
    }
}
