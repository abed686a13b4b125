//! The one reader of chitchat's state: turns it into the agent's [`View`] after every gossip
//! round, so that nothing else in the agent locks chitchat to read membership. A member the
//! monitors judge (one announcing their protocol) is alive or dead by their verdict; the others
//! (nodes of an earlier release) by chitchat's failure detector.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chitchat::{Chitchat, ChitchatId};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::gossip::keys;
use crate::gossip::monitors::{Judgement, MemberId};
use crate::membership::{Liveness, Member, View, classify, liveness_changes};

/// The (live, dead) verdict `classify` takes for member `id`: the monitors' for a member they
/// judge, once chitchat has heard it at all (before that it is joining, as with the detector).
fn verdict(judgement: &Judgement, id: &MemberId, live: bool, dead: bool) -> (bool, bool) {
    if !judgement.judged.contains(id) || !(live || dead) {
        return (live, dead);
    }
    let dead = judgement.dead.contains(id);
    (!dead, dead)
}

/// Reads the members out of chitchat (under its lock: keep it short).
fn read(chitchat: &Chitchat, judgement: &Judgement) -> Vec<(Member, u64)> {
    let me = chitchat.self_chitchat_id();
    let live: HashSet<&ChitchatId> = chitchat.live_nodes().collect();
    let dead: HashSet<&ChitchatId> = chitchat.dead_nodes().collect();
    chitchat
        .node_states()
        .iter()
        .filter(|(id, _)| *id != me)
        .map(|(id, state)| {
            let (live, dead) =
                verdict(judgement, &MemberId::new(&id.node_id, id.generation_id), live.contains(id), dead.contains(id));
            let member = Member {
                name: id.node_id.to_string(),
                generation: id.generation_id,
                liveness: classify(state.get(keys::STATUS), live, dead),
                keys: state.key_values().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            };
            (member, u64::from(state.heartbeat()))
        })
        .collect()
}

/// Publishes the view after every gossip round (chitchat's count of live-node changes moves at
/// the end of a round that changed liveness or keys; the tick catches deaths, forgetting and
/// heartbeats; a new judgement of the monitors is read at once). The view is shared: a reader
/// keeps it across awaits without a copy of its own.
pub(super) fn spawn_observer(
    chitchat: Arc<Mutex<Chitchat>>,
    mut judgement: watch::Receiver<Judgement>,
    interval: Duration,
    cancel: CancellationToken,
) -> (watch::Receiver<Arc<View>>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(Arc::new(View::default()));
    let task = tokio::spawn(async move {
        let mut changes = chitchat.lock().await.live_nodes_changes();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeats: HashMap<(String, u64), u64> = HashMap::new();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
                changed = changes.changed() => if changed.is_err() { return },
                // Once the monitors stop (gossip left), the view goes on until `cancel`, as before.
                Ok(()) = judgement.changed() => {}
            }
            let judged = judgement.borrow_and_update().clone();
            let read = read(&*chitchat.lock().await, &judged);
            let now = SystemTime::now();
            let previous = tx.borrow().clone();
            let mut last_seen = previous.last_seen.clone();
            let known: BTreeSet<(String, u64)> = read.iter().map(|(m, _)| (m.name.clone(), m.generation)).collect();
            heartbeats.retain(|id, _| known.contains(id));
            last_seen.retain(|id, _| known.contains(id));
            for (m, heartbeat) in &read {
                let id = (m.name.clone(), m.generation);
                if heartbeats.insert(id.clone(), *heartbeat) != Some(*heartbeat) {
                    last_seen.insert(id, now);
                }
            }
            let mut members: Vec<Member> = read.into_iter().map(|(m, _)| m).collect();
            members.sort_by(|a, b| (&a.name, a.generation).cmp(&(&b.name, b.generation)));
            let changed = previous.members != members || previous.suspected_partition != judged.suspected_partition;
            if changed {
                log_changes(&previous.members, &members);
            }
            drop(previous);
            // A new view, not an edit of the published one: a reconcile turn may still hold it.
            let view = View { members, last_seen, suspected_partition: judged.suspected_partition };
            tx.send_if_modified(|published| {
                *published = Arc::new(view);
                changed
            });
        }
    });
    (rx, task)
}

/// Lines logged per round at most: a node starting in a large cluster sees every member appear
/// at once, and one line says how many more there were.
const CHANGES_LOGGED: usize = 32;

fn log_changes(before: &[Member], after: &[Member]) {
    let changes = liveness_changes(before, after);
    for (m, was) in changes.iter().take(CHANGES_LOGGED) {
        tracing::info!(
            peer = %m.name,
            generation = m.generation,
            liveness = %m.liveness.as_str(),
            was = %was.map_or("unknown", Liveness::as_str),
            "member liveness changed"
        );
    }
    if let Some(more) = changes.len().checked_sub(CHANGES_LOGGED).filter(|&n| n > 0) {
        tracing::info!(more, "member liveness changed for more members this round");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monitors_judge_the_members_they_judge_once_chitchat_has_heard_them() {
        let (a, b) = (MemberId::new("a", 1), MemberId::new("b", 1));
        let judgement =
            Judgement { judged: [a.clone(), b.clone()].into(), dead: [b.clone()].into(), ..Judgement::default() };
        // Alive by the monitors although chitchat's detector has given up (a partition, say).
        assert_eq!(verdict(&judgement, &a, false, true), (true, false));
        assert_eq!(verdict(&judgement, &b, true, false), (false, true));
        // Not heard yet: joining, whatever the monitors say.
        assert_eq!(verdict(&judgement, &b, false, false), (false, false));
        // Not judged by monitors (a node of the previous release): the detector's verdict.
        let old = MemberId::new("old", 1);
        assert_eq!(verdict(&judgement, &old, false, true), (false, true));
        assert_eq!(verdict(&judgement, &old, true, false), (true, false));
    }
}
