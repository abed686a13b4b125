//! Dataplane probes: every programmed peer is probed continuously through the path pods'
//! packets take, so that what weft reports is what pods experience. Per peer and round:
//!
//! - a small echo through that path — to the peer's VTEP address on `vxlan0` for a VXLAN
//!   peer (only the overlay reaches it: an answer proves encapsulation, the underlay both
//!   ways and the peer's decapsulation), to its bridge gateway for a direct-path peer;
//! - an echo of the pod MTU with don't-fragment set on the same path (MTU black holes), and
//!   while that fails, one step of a search for the largest size that passes;
//! - a small echo to the peer's node IP outside the tunnel, to tell a blocked tunnel from a
//!   node that is gone.
//!
//! The probes of a round are spread over the interval, never sent in a burst.

pub mod icmp;
pub mod summary;
pub mod verdict;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::logging::RateLimit;
use icmp::Pinger;
use verdict::{Dataplane, History, PathState, Round, SMALL_PROBE};

/// How long a probe waits for its answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The most the probes send per second (bytes of IP packets); a large cluster probes each peer
/// less often rather than send more: at 100 peers a round takes 3 s, at 1000 peers 30 s.
pub const BUDGET: u64 = 50_000;

/// The period of a round over `targets`: the configured one, or longer when the budget needs it.
pub fn round_interval(configured: Duration, targets: &[Target]) -> Duration {
    let bytes: u64 = targets.iter().map(|t| u64::from(2 * SMALL_PROBE + t.full_size)).sum();
    configured.max(Duration::from_millis(bytes * 1000 / BUDGET))
}

/// One peer to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub peer: String,
    /// An address of the peer reached only along the pods' path.
    pub tunnel: Ipv4Addr,
    /// The peer's node (underlay) address, of the family its tunnel uses.
    pub underlay: IpAddr,
    /// Where the peer's own probes of this node come from (its end of the same path).
    pub peer_source: Ipv4Addr,
    /// The pod MTU: the packet size that must pass.
    pub full_size: u16,
}

/// The latest verdict per peer name.
pub type Results = BTreeMap<String, Dataplane>;

/// Starts probing whatever `targets` holds, every `interval`; the results are published after
/// every round.
pub fn spawn(
    pinger: Arc<dyn Pinger>,
    mut targets: watch::Receiver<Vec<Target>>,
    interval: Duration,
    cancel: CancellationToken,
) -> (watch::Receiver<Results>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(Results::new());
    let task = tokio::spawn(async move {
        let mut histories: BTreeMap<String, (Target, History)> = BTreeMap::new();
        let mut log_limit = RateLimit::default();
        loop {
            let start = Instant::now();
            let current = targets.borrow_and_update().clone();
            // A peer whose addresses or MTU changed starts a fresh history.
            histories.retain(|name, (t, _)| current.iter().any(|c| c.peer == *name && c == t));
            for t in &current {
                histories
                    .entry(t.peer.clone())
                    .or_insert_with(|| (t.clone(), History::new(t.full_size, SystemTime::now())));
            }
            let interval = round_interval(interval, &current);
            let rounds = tokio::select! {
                _ = cancel.cancelled() => return,
                rounds = probe_round(&pinger, &histories, interval) => rounds,
            };
            for (name, round) in rounds {
                let Some((target, history)) = histories.get_mut(&name) else { continue };
                if let Some(previous) = history.record(round, SystemTime::now()) {
                    log_transition(&mut log_limit, target, previous, history.state());
                }
            }
            tx.send_replace(histories.iter().map(|(name, (t, h))| (name.clone(), report(t, h))).collect());
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = sleep_until(start + interval) => {}
            }
        }
    });
    (rx, task)
}

/// Probes every peer once, spreading the peers' probes evenly over `interval`.
async fn probe_round(
    pinger: &Arc<dyn Pinger>,
    histories: &BTreeMap<String, (Target, History)>,
    interval: Duration,
) -> Vec<(String, Round)> {
    let spacing = interval / u32::try_from(histories.len().max(1)).unwrap_or(u32::MAX);
    let mut probes = JoinSet::new();
    for (i, (name, (target, history))) in histories.iter().enumerate() {
        let (pinger, target, name) = (pinger.clone(), target.clone(), name.clone());
        let search = history.search_size();
        let offset = spacing * u32::try_from(i).unwrap_or(u32::MAX);
        probes.spawn(async move {
            sleep(offset).await;
            (name, probe_peer(pinger.as_ref(), &target, search, interval).await)
        });
    }
    probes.join_all().await
}

async fn probe_peer(pinger: &dyn Pinger, t: &Target, search: Option<u16>, interval: Duration) -> Round {
    let maybe_search = async {
        match search {
            Some(size) => Some((size, pinger.ping(t.tunnel, size, PROBE_TIMEOUT).await.is_some())),
            None => None,
        }
    };
    let (tunnel, full, underlay, search) = tokio::join!(
        pinger.ping(t.tunnel, SMALL_PROBE, PROBE_TIMEOUT),
        pinger.ping(t.tunnel, t.full_size, PROBE_TIMEOUT),
        ping_underlay(pinger, t.underlay),
        maybe_search,
    );
    // The peer probes every interval too (if its settings match ours): allow two of them.
    let fresh = interval * 2 + PROBE_TIMEOUT;
    let inbound = pinger.heard_from(t.peer_source).is_some_and(|at| at.elapsed() < fresh);
    Round { tunnel, full, underlay, search, inbound }
}

/// The prober speaks ICMP over IPv4 only: a peer reached over an IPv6 underlay is probed through
/// its tunnel alone, so a tunnel blocked on the way reads as unreachable, not tunnel-blocked.
async fn ping_underlay(pinger: &dyn Pinger, underlay: IpAddr) -> Option<Duration> {
    match underlay {
        IpAddr::V4(ip) => pinger.ping(ip, SMALL_PROBE, PROBE_TIMEOUT).await,
        IpAddr::V6(_) => None,
    }
}

fn report(t: &Target, h: &History) -> Dataplane {
    let mut report = h.report();
    report.cause = cause(report.state, t, report.largest_size);
    report
}

/// What a state means for this peer, in plain words.
pub fn cause(state: PathState, t: &Target, largest: Option<u16>) -> Option<String> {
    match state {
        PathState::Unknown | PathState::Ok => None,
        PathState::TunnelBlocked => Some(format!(
            "the node answers at {} but nothing passes the tunnel to {}: the VXLAN port (UDP) is dropped on the path",
            t.underlay, t.tunnel
        )),
        PathState::Mtu => Some(format!(
            "packets of the pod MTU ({} bytes) do not pass, the largest that does is {} bytes: the path's MTU is \
             too small for VXLAN (lower --mtu or raise the underlay MTU)",
            t.full_size,
            largest.map_or_else(|| "not yet measured".to_string(), |s| s.to_string())
        )),
        PathState::Unreachable => Some(format!("neither the node at {} nor its tunnel answers", t.underlay)),
        PathState::OneWay => Some(format!(
            "the peer's probes reach this node through the tunnel, but this node's get no answer: one direction \
             of the VXLAN port (UDP) between this node and {} is dropped on the path",
            t.underlay
        )),
    }
}

fn log_transition(limit: &mut RateLimit<String>, t: &Target, from: PathState, to: PathState) {
    let Some(held_back) = limit.admit(t.peer.clone(), std::time::Instant::now()) else { return };
    let why = cause(to, t, None).unwrap_or_default();
    if to == PathState::Ok {
        tracing::info!(peer = %t.peer, from = from.as_str(), held_back, "dataplane to peer works");
    } else {
        tracing::warn!(peer = %t.peer, from = from.as_str(), to = to.as_str(), held_back, cause = %why, "dataplane to peer broken");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;

    /// Answers every echo except to the addresses it is told to drop.
    #[derive(Default)]
    struct FakePath {
        dropped: Mutex<HashSet<Ipv4Addr>>,
        sent: Mutex<Vec<(Ipv4Addr, u16, Instant)>>,
    }

    #[async_trait]
    impl Pinger for FakePath {
        async fn ping(&self, dst: Ipv4Addr, size: u16, timeout: Duration) -> Option<Duration> {
            self.sent.lock().unwrap().push((dst, size, Instant::now()));
            if self.dropped.lock().unwrap().contains(&dst) {
                sleep(timeout).await;
                return None;
            }
            Some(Duration::from_micros(300))
        }

        fn heard_from(&self, _: Ipv4Addr) -> Option<Instant> {
            None
        }
    }

    fn target(peer: &str, n: u8) -> Target {
        Target {
            peer: peer.into(),
            tunnel: Ipv4Addr::new(10, 244, n, 0),
            underlay: Ipv4Addr::new(192, 0, 2, n).into(),
            peer_source: Ipv4Addr::new(10, 244, n, 0),
            full_size: 1450,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_blocked_tunnel_is_reported_after_three_rounds_and_its_repair_after_one() {
        let path = Arc::new(FakePath::default());
        let targets = vec![target("a", 1), target("b", 2)];
        let (_tx, rx) = watch::channel(targets.clone());
        let cancel = CancellationToken::new();
        let (mut results, task) = spawn(path.clone(), rx, Duration::from_secs(2), cancel.clone());
        let state = |r: &watch::Receiver<Results>, peer: &str| r.borrow()[peer].state;
        results.changed().await.unwrap();
        assert_eq!(state(&results, "a"), PathState::Ok);
        path.dropped.lock().unwrap().insert(targets[0].tunnel);
        let blocked_at = Instant::now();
        while state(&results, "a") != PathState::TunnelBlocked {
            results.changed().await.unwrap();
        }
        assert!(blocked_at.elapsed() <= Duration::from_secs(10), "{:?}", blocked_at.elapsed());
        assert_eq!(state(&results, "b"), PathState::Ok, "the other peer is unaffected");
        path.dropped.lock().unwrap().clear();
        let healed_at = Instant::now();
        while state(&results, "a") != PathState::Ok {
            results.changed().await.unwrap();
        }
        assert!(healed_at.elapsed() <= Duration::from_secs(10));
        cancel.cancel();
        task.await.unwrap();
    }

    #[test]
    fn large_clusters_probe_each_peer_less_often_to_stay_within_the_budget() {
        let targets = |n: u8| -> Vec<Target> { (0..n).map(|i| target("p", i)).collect() };
        let two = Duration::from_secs(2);
        assert_eq!(round_interval(two, &targets(10)), two);
        let at = |n: usize| -> Duration {
            let many: Vec<Target> = targets(250).into_iter().cycle().take(n).collect();
            round_interval(two, &many)
        };
        assert_eq!(at(100), Duration::from_millis(3012));
        assert_eq!(at(1000), Duration::from_millis(30120));
        // Whatever N, one round sends at most the budget's worth per second of its duration.
        for n in [100, 1000, 5000] {
            let bytes = n as u64 * u64::from(2 * SMALL_PROBE + 1450);
            assert!(bytes * 1000 / at(n).as_millis() as u64 <= BUDGET);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_probes_of_a_round_are_spread_over_the_interval() {
        let path = Arc::new(FakePath::default());
        let targets: Vec<Target> = (1..=10).map(|n| target(&format!("p{n}"), n)).collect();
        let (_tx, rx) = watch::channel(targets);
        let cancel = CancellationToken::new();
        let (mut results, task) = spawn(path.clone(), rx, Duration::from_secs(2), cancel.clone());
        results.changed().await.unwrap();
        cancel.cancel();
        task.await.unwrap();
        let sent = path.sent.lock().unwrap();
        let first = sent.iter().map(|(_, _, at)| *at).min().unwrap();
        let mut offsets: Vec<Duration> = sent.iter().map(|(_, _, at)| *at - first).collect();
        offsets.sort();
        offsets.dedup();
        assert_eq!(offsets.len(), 10, "one instant per peer: {offsets:?}");
        assert_eq!(offsets[1], Duration::from_millis(200));
    }
}
