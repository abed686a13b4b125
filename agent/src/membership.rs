//! Who is in the cluster, as gossip sees it: a [`View`] of every other node (including this
//! node's own earlier generations), refreshed every gossip round, and the [`Settle`] tracker
//! that says when the view is complete enough to act on.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::gossip::keys;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Liveness {
    /// Its monitors hear it (`gossip::monitors`), or for a node of the previous release, the
    /// failure detector has heard from it recently.
    Alive,
    /// Known, but the failure detector has no verdict yet (just heard of, or restarted).
    Joining,
    /// Announced that it is stopping, and the failure detector, which had it alive, has not
    /// declared it dead yet. An agent restart looks exactly like this, so its routes stay (see [`Liveness::programmable`]).
    Leaving,
    /// Announced that it was stopping, and the failure detector has since declared it dead.
    Left,
    /// Its monitors (for a node of the previous release, the failure detector) declared it dead;
    /// kept until gossip forgets it.
    Dead,
}

/// Liveness from what gossip says: a node's own `leaving` announcement wins over the detector's
/// "alive", until the detector confirms the node is gone. Without a verdict a node is joining,
/// even one announcing `leaving`: a node that has just restarted hears of a peer's previous run
/// (leaving) before its detector judges it; taken for `Leaving`, that run was programmable for a
/// round, until the verdict (dead, on a single heartbeat) took it away while the peer's new
/// generation was not alive yet, and the peer dropped out for a round or two (issue 14).
pub fn classify(status: Option<&str>, live: bool, dead: bool) -> Liveness {
    if !live && !dead {
        Liveness::Joining
    } else if status == Some(keys::STATUS_LEAVING) {
        if dead { Liveness::Left } else { Liveness::Leaving }
    } else if live {
        Liveness::Alive
    } else {
        Liveness::Dead
    }
}

impl Liveness {
    pub const ALL: [Liveness; 5] =
        [Liveness::Alive, Liveness::Joining, Liveness::Leaving, Liveness::Left, Liveness::Dead];

    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Alive => "alive",
            Liveness::Joining => "joining",
            Liveness::Leaving => "leaving",
            Liveness::Left => "left",
            Liveness::Dead => "dead",
        }
    }

    /// Whether a node in this state gets its routes. A node that is leaving keeps them until the
    /// detector confirms it is gone: a restarting agent announces leaving too, and its new
    /// generation is heard within that time, so a restart never costs its pods a packet. For a
    /// node that really left the delay costs nothing: its pods are gone with it.
    pub fn programmable(self) -> bool {
        matches!(self, Liveness::Alive | Liveness::Leaving)
    }
}

/// One generation of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub generation: u64,
    pub liveness: Liveness,
    pub keys: BTreeMap<String, String>,
}

/// The members of `after` whose liveness differs from what `before` had for the same generation
/// (or who are new to it), each with what it was. The agent logs these, so that the log says when
/// gossip saw a node come, go or restart.
pub fn liveness_changes<'a>(before: &[Member], after: &'a [Member]) -> Vec<(&'a Member, Option<Liveness>)> {
    let was: HashMap<(&str, u64), Liveness> =
        before.iter().map(|m| ((m.name.as_str(), m.generation), m.liveness)).collect();
    after
        .iter()
        .filter_map(|m| {
            let was = was.get(&(m.name.as_str(), m.generation)).copied();
            (was != Some(m.liveness)).then_some((m, was))
        })
        .collect()
}

/// Every other node gossip knows about, sorted by (name, generation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub members: Vec<Member>,
    /// When each (name, generation) last showed a new heartbeat. Not part of what decisions
    /// depend on, so updating it does not wake the reconciler.
    pub last_seen: BTreeMap<(String, u64), SystemTime>,
    /// Members suspected by their monitors while the partition hold is on (nobody is withdrawn
    /// meanwhile: `gossip::monitors`); `None` without a hold.
    pub suspected_partition: Option<usize>,
}

impl View {
    pub fn last_seen(&self, name: &str, generation: u64) -> Option<SystemTime> {
        self.last_seen.get(&(name.to_string(), generation)).copied()
    }
}

/// Decides when membership has settled: when this node has heard from the cluster and the set
/// of members and their liveness has not changed for a window, or when the startup grace is
/// over, whichever comes first. Until then a restarted node would see only part of the
/// cluster, and acting on that would withdraw peers it simply has not heard from yet.
#[derive(Debug, Clone)]
pub struct Settle {
    deadline: Instant,
    window: Duration,
    /// Seeds other than this node are configured: wait to hear from someone.
    expects_peers: bool,
    /// The members and their liveness as last observed; a node starts knowing nobody.
    last: BTreeSet<(String, u64, Liveness)>,
    stable_since: Instant,
    settled: bool,
}

impl Settle {
    pub fn new(now: Instant, grace: Duration, window: Duration, expects_peers: bool) -> Settle {
        Settle {
            deadline: now + grace,
            window,
            expects_peers,
            last: BTreeSet::new(),
            stable_since: now,
            settled: false,
        }
    }

    /// Feeds the current view; returns whether membership has settled (it stays settled).
    pub fn observe(&mut self, view: &View, now: Instant) -> bool {
        if self.settled {
            return true;
        }
        let shape: BTreeSet<_> = view.members.iter().map(|m| (m.name.clone(), m.generation, m.liveness)).collect();
        if self.last != shape {
            self.stable_since = now;
            self.last = shape;
        }
        let heard = !view.members.is_empty() || !self.expects_peers;
        self.settled = now >= self.deadline || (heard && now.duration_since(self.stable_since) >= self.window);
        if self.settled {
            // Never compared again: a name per member held for nothing.
            self.last = BTreeSet::new();
        }
        self.settled
    }

    pub fn is_settled(&self) -> bool {
        self.settled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, liveness: Liveness) -> Member {
        Member { name: name.into(), generation: 1, liveness, keys: BTreeMap::new() }
    }

    fn view(members: Vec<Member>) -> View {
        View { members, ..View::default() }
    }

    #[test]
    fn liveness_changes_name_new_members_and_changed_ones_only() {
        let restarted = Member { generation: 2, ..member("c", Liveness::Joining) };
        let before = [member("a", Liveness::Alive), member("b", Liveness::Alive), member("c", Liveness::Alive)];
        let after = [
            member("a", Liveness::Alive),
            member("b", Liveness::Dead),
            member("c", Liveness::Leaving),
            restarted.clone(),
            member("d", Liveness::Joining),
        ];
        let changes: Vec<(String, u64, Liveness, Option<Liveness>)> = liveness_changes(&before, &after)
            .into_iter()
            .map(|(m, was)| (m.name.clone(), m.generation, m.liveness, was))
            .collect();
        assert_eq!(
            changes,
            [
                ("b".into(), 1, Liveness::Dead, Some(Liveness::Alive)),
                ("c".into(), 1, Liveness::Leaving, Some(Liveness::Alive)),
                ("c".into(), 2, Liveness::Joining, None),
                ("d".into(), 1, Liveness::Joining, None),
            ]
        );
        assert!(liveness_changes(&after, &after).is_empty());
    }

    #[test]
    fn leaving_wins_over_the_detector() {
        assert_eq!(classify(Some("leaving"), true, false), Liveness::Leaving);
        assert_eq!(classify(Some("leaving"), false, true), Liveness::Left);
        assert_eq!(classify(Some("up"), true, false), Liveness::Alive);
        assert_eq!(classify(None, false, true), Liveness::Dead);
        assert_eq!(classify(Some("up"), false, false), Liveness::Joining);
    }

    #[test]
    fn a_leaving_node_without_a_verdict_is_not_programmable() {
        // A restarted node's first view of a peer's previous run, heard of from others.
        assert_eq!(classify(Some("leaving"), false, false), Liveness::Joining);
        assert!(!classify(Some("leaving"), false, false).programmable());
        assert_eq!(classify(None, false, false), Liveness::Joining);
    }

    #[test]
    fn settles_once_the_view_is_stable_after_hearing_from_peers() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = Settle::new(t0, ms(5000), ms(300), true);
        // Nothing heard: not settled however long it is stable.
        assert!(!s.observe(&view(vec![]), t0 + ms(1000)));
        let joining = view(vec![member("a", Liveness::Joining)]);
        assert!(!s.observe(&joining, t0 + ms(1100)));
        let alive = view(vec![member("a", Liveness::Alive)]);
        assert!(!s.observe(&alive, t0 + ms(1200)));
        assert!(!s.observe(&alive, t0 + ms(1499)));
        assert!(s.observe(&alive, t0 + ms(1500)));
        assert!(s.last.is_empty(), "the shape is not kept once settled");
        // Latched.
        assert!(s.observe(&view(vec![]), t0 + ms(1600)));
        assert!(s.is_settled());
    }

    #[test]
    fn without_seeds_an_empty_stable_view_settles() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = Settle::new(t0, ms(5000), ms(300), false);
        assert!(!s.observe(&view(vec![]), t0 + ms(100)));
        assert!(s.observe(&view(vec![]), t0 + ms(300)));
    }

    #[test]
    fn the_startup_grace_bounds_the_wait() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = Settle::new(t0, ms(5000), ms(300), true);
        assert!(!s.observe(&view(vec![]), t0 + ms(4999)));
        assert!(s.observe(&view(vec![]), t0 + ms(5000)));
    }
}
