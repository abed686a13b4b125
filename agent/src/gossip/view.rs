//! The one reader of chitchat's state: turns it into the agent's [`View`] after every gossip
//! round, so that nothing else in the agent locks chitchat to read membership.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chitchat::{Chitchat, ChitchatId};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::gossip::keys;
use crate::membership::{Liveness, Member, View, classify, liveness_changes};

/// Reads the members out of chitchat (under its lock: keep it short).
fn read(chitchat: &Chitchat) -> Vec<(Member, u64)> {
    let me = chitchat.self_chitchat_id();
    let live: HashSet<&ChitchatId> = chitchat.live_nodes().collect();
    let dead: HashSet<&ChitchatId> = chitchat.dead_nodes().collect();
    chitchat
        .node_states()
        .iter()
        .filter(|(id, _)| *id != me)
        .map(|(id, state)| {
            let member = Member {
                name: id.node_id.to_string(),
                generation: id.generation_id,
                liveness: classify(state.get(keys::STATUS), live.contains(id), dead.contains(id)),
                keys: state.key_values().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            };
            (member, u64::from(state.heartbeat()))
        })
        .collect()
}

/// Publishes the view after every gossip round (chitchat's live-nodes watcher fires at the end
/// of a round that changed liveness or keys; the tick catches deaths, forgetting and heartbeats).
pub(super) fn spawn_observer(
    chitchat: Arc<Mutex<Chitchat>>,
    interval: Duration,
    cancel: CancellationToken,
) -> (watch::Receiver<View>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(View::default());
    let task = tokio::spawn(async move {
        let mut changes = chitchat.lock().await.live_nodes_watcher();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeats: HashMap<(String, u64), u64> = HashMap::new();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
                changed = changes.changed() => if changed.is_err() { return },
            }
            let read = read(&*chitchat.lock().await);
            let now = SystemTime::now();
            let mut last_seen = tx.borrow().last_seen.clone();
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
            tx.send_if_modified(|view| {
                view.last_seen = last_seen;
                if view.members == members {
                    return false;
                }
                log_changes(&view.members, &members);
                view.members = members;
                true
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
