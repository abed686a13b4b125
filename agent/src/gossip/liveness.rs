//! The monitor task: every gossip round it reads who announces the monitors protocol and whom
//! each suspects out of chitchat and judges them (`monitors::Verdict`); every [`PING_INTERVAL`]
//! it pings the members this node monitors (`ping.rs`) and publishes whom it suspects as its
//! `suspects` key.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chitchat::{Chitchat, ChitchatId};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{Mutex, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::keys;
use super::monitors::{self, Judgement, MemberId, Pings, Verdict};
use super::ping::{Answer, Probe};
use crate::logging::RateLimit;

/// P: how often a monitor pings each of its subjects. With [`monitors::MISSES`] misses to
/// suspect, a crash is suspected 1.5–2 s after it.
pub const PING_INTERVAL: Duration = Duration::from_millis(500);

/// The members judged by monitors, as chitchat holds them: those announcing the protocol, with
/// their gossip addresses and suspicions.
#[derive(Debug, Default)]
struct Roster {
    members: BTreeMap<MemberId, SocketAddr>,
    /// Those of them chitchat's detector no longer hears (their suspicions cannot arrive).
    unheard: BTreeSet<MemberId>,
    /// Those of them announcing `leaving`.
    leaving: BTreeSet<MemberId>,
    suspicions: BTreeMap<MemberId, BTreeSet<MemberId>>,
    /// Members whose `suspects` value does not parse (counted as suspecting nobody), and why.
    malformed: BTreeSet<(MemberId, String)>,
}

fn read(chitchat: &Chitchat) -> Roster {
    let mut roster = Roster::default();
    let unheard: HashSet<&ChitchatId> = chitchat.dead_nodes().collect();
    for (id, state) in chitchat.node_states() {
        if state.get(keys::GOSSIP_PROTOCOL) != Some(keys::PROTOCOL_MONITORS) {
            continue;
        }
        let member = MemberId::new(&id.node_id, id.generation_id);
        if state.get(keys::STATUS) == Some(keys::STATUS_LEAVING) {
            roster.leaving.insert(member.clone());
        }
        match monitors::decode_suspects(state.get(keys::SUSPECTS).unwrap_or_default()) {
            Ok(suspects) => {
                roster.suspicions.insert(member.clone(), suspects);
            }
            Err(e) => {
                roster.malformed.insert((member.clone(), e));
            }
        }
        if unheard.contains(id) {
            roster.unheard.insert(member.clone());
        }
        roster.members.insert(member, id.gossip_advertise_addr);
    }
    roster
}

/// Runs the monitors of `me` until `cancel`: judgements go out on the returned channel (after
/// every gossip round), pings into `outbox`, acks come from `answers`.
pub(super) fn spawn(
    chitchat: Arc<Mutex<Chitchat>>,
    me: MemberId,
    interval: Duration,
    outbox: mpsc::Sender<(SocketAddr, Probe)>,
    mut answers: mpsc::Receiver<Answer>,
    malformed_count: Counter,
    cancel: CancellationToken,
) -> watch::Receiver<Judgement> {
    let (tx, rx) = watch::channel(Judgement::default());
    tokio::spawn(async move {
        let mut judge = tokio::time::interval(interval);
        // At a random phase: nodes started together (a cluster's first boot, the simulator)
        // would otherwise ping in lockstep, and every crash would be found at the same delay.
        let phase = PING_INTERVAL.mul_f64(rand::random::<f64>());
        let mut ping = tokio::time::interval_at(Instant::now() + phase, PING_INTERVAL);
        judge.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let (mut verdict, mut pings, mut roster) = (Verdict::default(), Pings::default(), Roster::default());
        let mut published = BTreeSet::new();
        let mut warned = RateLimit::default();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = judge.tick() => {
                    let before = std::mem::replace(&mut roster, read(&*chitchat.lock().await));
                    // Each malformed value is counted once, in the round it shows up.
                    malformed_count.inc_by(roster.malformed.difference(&before.malformed).count() as u64);
                    for (member, why) in &roster.malformed {
                        if let Some(suppressed) = warned.admit(member.name.clone(), std::time::Instant::now()) {
                            tracing::warn!(peer = %member.name, generation = member.generation, reason = %why, suppressed, "ignoring a member's malformed suspicions");
                        }
                    }
                    let members = roster.members.keys().cloned().collect();
                    let judgement = verdict.judge(&members, &roster.unheard, &roster.leaving, &roster.suspicions, Instant::now().into_std());
                    tx.send_if_modified(|before| {
                        log_hold(before.suspected_partition, judgement.suspected_partition);
                        let changed = *before != judgement;
                        *before = judgement;
                        changed
                    });
                }
                _ = ping.tick() => {
                    let members = roster.members.keys().cloned().collect();
                    for (subject, seq) in pings.round(&verdict.subjects(&members, &me)) {
                        let to = roster.members[&subject];
                        // Full only if the socket stopped reading: the ping is lost, as on a wire.
                        let _ = outbox.try_send((to, Probe::Ping { seq, subject }));
                    }
                }
                Some((subject, seq)) = answers.recv() => pings.answered(&subject, seq),
            }
            let suspected = pings.suspected();
            if suspected != published {
                log_suspicions(&published, &suspected);
                chitchat.lock().await.self_node_state().set(keys::SUSPECTS, monitors::encode_suspects(&suspected));
                published = suspected;
            }
        }
    });
    rx
}

fn log_suspicions(before: &BTreeSet<MemberId>, after: &BTreeSet<MemberId>) {
    for m in after.difference(before) {
        tracing::info!(peer = %m.name, generation = m.generation, misses = monitors::MISSES, "monitor suspects a member: pings unanswered");
    }
    for m in before.difference(after) {
        tracing::info!(peer = %m.name, generation = m.generation, "monitor no longer suspects a member");
    }
}

fn log_hold(before: Option<usize>, after: Option<usize>) {
    match (before, after) {
        (None, Some(suspected)) => tracing::warn!(
            suspected,
            limit_s = monitors::HOLD_LIMIT.as_secs(),
            "suspected partition: many members suspected at once; no member is withdrawn until the suspicions clear or the limit passes"
        ),
        (Some(_), None) => tracing::info!("suspected partition over"),
        _ => {}
    }
}
