//! Dataplane probes: every programmed peer is probed continuously through the path pods'
//! packets take, so that what weft reports is what pods experience. Per peer and round, for
//! each pod family the cluster has (ICMPv4 or ICMPv6 echo):
//!
//! - a small echo through that family's path — to the peer's VTEP address of the family on
//!   the VXLAN device for a VXLAN peer (only the overlay reaches it: an answer proves
//!   encapsulation, the underlay both ways and the peer's decapsulation), to its bridge
//!   gateway of the family for a block routed directly;
//! - an echo of the pod MTU that is not fragmented on the same path (MTU black holes), and
//!   while that fails, one step of a search for the largest size that passes. Per family:
//!   a dual-stack peer in cross-subnet mode has one family routed directly and the other
//!   encapsulated, paths of different MTUs, and a filter may treat the families apart;
//!
//! and once per peer a small echo to the peer's node IP outside the tunnel (of the underlay's
//! family), to tell a blocked tunnel from a node that is gone.
//!
//! The probes of a round are spread over the interval, never sent in a burst.

pub mod icmp;
pub mod recheck;
pub mod summary;
pub mod verdict;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use weft_overlay::underlay::Family;

use crate::logging::RateLimit;
use icmp::{Pinger, min_probe};
use verdict::{Dataplane, History, PathState, Round};

/// How long a probe waits for its answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The most the probes send per second (bytes of IP packets); a large cluster probes each peer
/// less often rather than send more: at 100 IPv4 peers a round takes 3 s, at 1000 30 s; a
/// dual-stack cluster probes two paths per peer, so its rounds take twice as long.
pub const BUDGET: u64 = 50_000;

/// The period of a round that sends `bytes`: the configured one, or longer when the budget
/// needs it.
pub fn round_interval(configured: Duration, bytes: u64) -> Duration {
    configured.max(Duration::from_millis(bytes * 1000 / BUDGET))
}

/// The bytes one round sends to a peer whose paths' MTU searches are at `searches` (one per
/// path): every probe counts, the underlay echo, and per family the small, full-size and
/// search echoes.
pub fn round_bytes(t: &Target, searches: impl IntoIterator<Item = Option<u16>>) -> u64 {
    let paths: u64 = t
        .paths
        .iter()
        .zip(searches)
        .map(|(p, search)| u64::from(min_probe(p.family())) + u64::from(t.full_size) + u64::from(search.unwrap_or(0)))
        .sum();
    u64::from(min_probe(Family::of(t.underlay))) + paths
}

/// One peer to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub peer: String,
    /// The pods' path to the peer, one per pod family the cluster has (IPv4 first).
    pub paths: Vec<PodPath>,
    /// The peer's node (underlay) address, of the family its tunnel uses.
    pub underlay: IpAddr,
    /// The pod MTU: the packet size that must pass.
    pub full_size: u16,
}

/// The path one pod family's packets take to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodPath {
    /// An address of the peer reached only along the pods' path.
    pub tunnel: IpAddr,
    /// Where the peer's own probes of this node come from (its end of the same path).
    pub peer_source: IpAddr,
}

impl PodPath {
    pub fn family(&self) -> Family {
        Family::of(self.tunnel)
    }
}

/// The latest verdict per peer name, shared with the prober's own (not a copy of it).
pub type Results = BTreeMap<String, Arc<Dataplane>>;

/// One peer being probed: its paths' histories (in the order of `target.paths`) and the
/// verdict last published.
struct Probed {
    /// The published target itself, shared, not a copy.
    target: Arc<Target>,
    paths: Vec<History>,
    report: Arc<Dataplane>,
}

impl Probed {
    fn new(target: &Arc<Target>) -> Probed {
        let now = SystemTime::now();
        let paths: Vec<History> =
            target.paths.iter().map(|p| History::new(p.family(), target.full_size, now)).collect();
        Probed { report: Arc::new(report(target, &paths)), target: target.clone(), paths }
    }

    fn searches(&self) -> Vec<Option<u16>> {
        self.paths.iter().map(History::search_size).collect()
    }
}

/// Starts probing whatever `targets` holds, every `interval`; the results are published after
/// every round.
pub fn spawn(
    pinger: Arc<dyn Pinger>,
    mut targets: watch::Receiver<Vec<Arc<Target>>>,
    interval: Duration,
    cancel: CancellationToken,
) -> (watch::Receiver<Arc<Results>>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(Arc::new(Results::new()));
    let task = tokio::spawn(async move {
        let mut probed: BTreeMap<String, Probed> = BTreeMap::new();
        let mut log_limit = RateLimit::default();
        loop {
            let start = Instant::now();
            let current = targets.borrow_and_update().clone();
            // A peer whose addresses or MTU changed starts a fresh history.
            probed.retain(|name, p| current.iter().any(|c| c.peer == *name && *c == p.target));
            for t in &current {
                // The published target, not the equal one kept from an earlier publish: that
                // would be held twice.
                probed.entry(t.peer.clone()).or_insert_with(|| Probed::new(t)).target = t.clone();
            }
            drop(current);
            let bytes = probed.values().map(|p| round_bytes(&p.target, p.searches())).sum();
            let interval = round_interval(interval, bytes);
            let rounds = tokio::select! {
                _ = cancel.cancelled() => return,
                rounds = probe_round(&pinger, &probed, interval) => rounds,
            };
            let now = SystemTime::now();
            for (name, rounds) in rounds {
                let Some(p) = probed.get_mut(&name) else { continue };
                for (history, round) in p.paths.iter_mut().zip(rounds) {
                    history.record(round, now);
                }
                let previous = std::mem::replace(&mut p.report, Arc::new(report(&p.target, &p.paths))).state;
                if previous != p.report.state {
                    log_transition(&mut log_limit, &p.target.peer, previous, &p.report);
                }
            }
            tx.send_replace(Arc::new(probed.iter().map(|(name, p)| (name.clone(), p.report.clone())).collect()));
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = sleep_until(start + interval) => {}
            }
        }
    });
    (rx, task)
}

/// Probes every peer once, spreading the peers' probes evenly over `interval`. Each peer's
/// probe starts at its turn and is collected once done: only the probes awaiting answers are
/// held at a time, not a task per peer (a finished task keeps its memory until joined).
async fn probe_round(
    pinger: &Arc<dyn Pinger>,
    probed: &BTreeMap<String, Probed>,
    interval: Duration,
) -> Vec<(String, Vec<Round>)> {
    let spacing = interval / u32::try_from(probed.len().max(1)).unwrap_or(u32::MAX);
    let start = Instant::now();
    let mut probes = JoinSet::new();
    let mut rounds = Vec::with_capacity(probed.len());
    for (i, (name, p)) in probed.iter().enumerate() {
        sleep_until(start + spacing * u32::try_from(i).unwrap_or(u32::MAX)).await;
        while let Some(done) = probes.try_join_next() {
            rounds.push(joined(done));
        }
        let (pinger, target, name, searches) = (pinger.clone(), p.target.clone(), name.clone(), p.searches());
        probes.spawn(async move { (name, probe_peer(pinger.as_ref(), &target, &searches, interval).await) });
    }
    while let Some(done) = probes.join_next().await {
        rounds.push(joined(done));
    }
    rounds
}

/// A probe task's result; its panic goes on in the caller (no probe task is ever aborted).
fn joined<T>(done: Result<T, tokio::task::JoinError>) -> T {
    done.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// One round of one peer: a round per path (the underlay echo, sent once, shared by all).
async fn probe_peer(pinger: &dyn Pinger, t: &Target, searches: &[Option<u16>], interval: Duration) -> Vec<Round> {
    let paths = t.paths.iter().zip(searches).map(|(path, search)| probe_path(pinger, t.full_size, path, *search));
    let (underlay, paths) = tokio::join!(
        pinger.ping(t.underlay, min_probe(Family::of(t.underlay)), PROBE_TIMEOUT),
        futures::future::join_all(paths),
    );
    // The peer probes every interval too (if its settings match ours): allow two of them.
    let fresh = interval * 2 + PROBE_TIMEOUT;
    t.paths
        .iter()
        .zip(paths)
        .map(|(path, (tunnel, full, search))| {
            let inbound = pinger.heard_from(path.peer_source).is_some_and(|at| at.elapsed() < fresh);
            Round { tunnel, full, underlay, search, inbound }
        })
        .collect()
}

/// One family's echoes of a round, sent together: small, full size, and the search's.
async fn probe_path(
    pinger: &dyn Pinger,
    full_size: u16,
    path: &PodPath,
    search: Option<u16>,
) -> (Option<Duration>, Option<Duration>, Option<(u16, bool)>) {
    let maybe_search = async {
        match search {
            Some(size) => Some((size, pinger.ping(path.tunnel, size, PROBE_TIMEOUT).await.is_some())),
            None => None,
        }
    };
    tokio::join!(
        pinger.ping(path.tunnel, min_probe(path.family()), PROBE_TIMEOUT),
        pinger.ping(path.tunnel, full_size, PROBE_TIMEOUT),
        maybe_search,
    )
}

/// The peer's verdict from its paths' histories, each family's cause in plain words.
fn report(t: &Target, histories: &[History]) -> Dataplane {
    let reports: Vec<Dataplane> = histories.iter().map(History::report).collect();
    let families = t
        .paths
        .iter()
        .zip(&reports)
        .map(|(path, r)| {
            // The other families' tunnels answering tell a dropped family from a dropped tunnel.
            let others_pass: Vec<Family> = t
                .paths
                .iter()
                .zip(&reports)
                .filter(|(p, o)| p.family() != path.family() && o.answering)
                .map(|(p, _)| p.family())
                .collect();
            let cause = cause(r.state, t, path, r.largest_size, &others_pass);
            (path.family(), Dataplane { cause, ..r.clone() })
        })
        .collect();
    Dataplane::of_families(families)
}

/// What a state of one family's path means for this peer, in plain words, naming the family.
pub fn cause(
    state: PathState,
    t: &Target,
    path: &PodPath,
    largest: Option<u16>,
    others_pass: &[Family],
) -> Option<String> {
    let family = path.family();
    let tunnel = path.tunnel;
    // Another family passing the same tunnel clears the VXLAN port and the underlay.
    let others = others_pass.iter().map(Family::to_string).collect::<Vec<_>>().join(" and ");
    let what = match state {
        PathState::Unknown | PathState::Ok => return None,
        PathState::TunnelBlocked if !others.is_empty() => format!(
            "nothing passes the tunnel to {tunnel} while {others} pods' packets do: {family} is dropped or \
             misrouted at one end (a firewall, a route or neighbour), not the VXLAN port"
        ),
        PathState::OneWay if !others.is_empty() => format!(
            "the peer's probes reach this node through the tunnel to {tunnel}, but this node's get no answer, while \
             {others} pods' packets pass both ways: one direction of {family} is dropped or misrouted at one end (a \
             firewall, a route or neighbour)"
        ),
        PathState::TunnelBlocked => format!(
            "the node answers at {} but nothing passes the tunnel to {tunnel}: the VXLAN port (UDP) is dropped on the path",
            t.underlay
        ),
        PathState::Mtu => format!(
            "packets of the pod MTU ({} bytes) do not pass the tunnel to {tunnel}, the largest that does is {} bytes: \
             the path's MTU is too small for VXLAN (lower --mtu or raise the underlay MTU)",
            t.full_size,
            largest.map_or_else(|| "not yet measured".to_string(), |s| s.to_string())
        ),
        PathState::Unreachable => format!("neither the node at {} nor its tunnel at {tunnel} answers", t.underlay),
        PathState::OneWay => format!(
            "the peer's probes reach this node through the tunnel to {tunnel}, but this node's get no answer: one \
             direction of the VXLAN port (UDP) between this node and {} is dropped on the path",
            t.underlay
        ),
    };
    Some(format!("{family} pods: {what}"))
}

fn log_transition(limit: &mut RateLimit<String>, peer: &str, from: PathState, to: &Dataplane) {
    let Some(held_back) = limit.admit(peer.to_string(), std::time::Instant::now()) else { return };
    if to.state == PathState::Ok {
        tracing::info!(peer, from = from.as_str(), held_back, "dataplane to peer works");
    } else {
        let why = to.cause.as_deref().unwrap_or_default();
        tracing::warn!(
            peer,
            from = from.as_str(),
            to = to.state.as_str(),
            held_back,
            cause = why,
            "dataplane to peer broken"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::Mutex;

    use async_trait::async_trait;
    use tokio::time::sleep;

    use super::*;

    /// Answers every echo except to the addresses it is told to drop.
    #[derive(Default)]
    struct FakePath {
        dropped: Mutex<HashSet<IpAddr>>,
        sent: Mutex<Vec<(IpAddr, u16, Instant)>>,
    }

    #[async_trait]
    impl Pinger for FakePath {
        async fn ping(&self, dst: IpAddr, size: u16, timeout: Duration) -> Option<Duration> {
            self.sent.lock().unwrap().push((dst, size, Instant::now()));
            if self.dropped.lock().unwrap().contains(&dst) {
                sleep(timeout).await;
                return None;
            }
            Some(Duration::from_micros(300))
        }

        fn heard_from(&self, _: IpAddr) -> Option<Instant> {
            None
        }
    }

    fn v4_path(n: u8) -> PodPath {
        let vtep = Ipv4Addr::new(10, 244, n, 0).into();
        PodPath { tunnel: vtep, peer_source: vtep }
    }

    fn v6_path(n: u8) -> PodPath {
        let vtep = Ipv6Addr::new(0xfd00, 0x10, 0x244, n.into(), 0, 0, 0, 0).into();
        PodPath { tunnel: vtep, peer_source: vtep }
    }

    /// An IPv4-only peer over an IPv4 underlay.
    fn target(peer: &str, n: u8) -> Target {
        Target {
            peer: peer.into(),
            paths: vec![v4_path(n)],
            underlay: Ipv4Addr::new(192, 0, 2, n).into(),
            full_size: 1450,
        }
    }

    /// A peer over an IPv6 underlay, with a path per family given.
    fn target6(peer: &str, n: u8, paths: Vec<PodPath>) -> Target {
        Target {
            peer: peer.into(),
            paths,
            underlay: Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, n.into()).into(),
            full_size: 1430,
        }
    }

    /// A prober of `targets` every 2 s, with what the test keeps of it: the targets' sender
    /// (held as the agent holds it), the results, the cancel and the task.
    type Started = (watch::Sender<Vec<Arc<Target>>>, watch::Receiver<Arc<Results>>, CancellationToken, JoinHandle<()>);

    fn start(path: &Arc<FakePath>, targets: Vec<Target>) -> Started {
        let (tx, rx) = watch::channel(targets.into_iter().map(Arc::new).collect());
        let cancel = CancellationToken::new();
        let (results, task) = spawn(path.clone(), rx, Duration::from_secs(2), cancel.clone());
        (tx, results, cancel, task)
    }

    async fn wait_for(results: &mut watch::Receiver<Arc<Results>>, peer: &str, state: PathState) -> Dataplane {
        loop {
            if let Some(d) = results.borrow().get(peer).filter(|d| d.state == state) {
                return Dataplane::clone(d);
            }
            results.changed().await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_blocked_tunnel_is_reported_after_three_rounds_and_its_repair_after_one() {
        let path = Arc::new(FakePath::default());
        let (_targets, mut results, cancel, task) = start(&path, vec![target("a", 1), target("b", 2)]);
        let state = |r: &watch::Receiver<Arc<Results>>, peer: &str| r.borrow()[peer].state;
        results.changed().await.unwrap();
        assert_eq!(state(&results, "a"), PathState::Ok);
        path.dropped.lock().unwrap().insert(v4_path(1).tunnel);
        let blocked_at = Instant::now();
        let blocked = wait_for(&mut results, "a", PathState::TunnelBlocked).await;
        assert!(blocked_at.elapsed() <= Duration::from_secs(10), "{:?}", blocked_at.elapsed());
        let cause = blocked.cause.unwrap();
        assert!(cause.starts_with("IPv4 pods: the node answers at 192.0.2.1"), "{cause}");
        assert_eq!(state(&results, "b"), PathState::Ok, "the other peer is unaffected");
        path.dropped.lock().unwrap().clear();
        let healed_at = Instant::now();
        wait_for(&mut results, "a", PathState::Ok).await;
        assert!(healed_at.elapsed() <= Duration::from_secs(10));
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_ipv6_only_peer_is_probed_over_icmpv6_and_its_underlay_tells_a_blocked_tunnel() {
        let path = Arc::new(FakePath::default());
        let peer = target6("a", 1, vec![v6_path(1)]);
        let (_targets, mut results, cancel, task) = start(&path, vec![peer.clone()]);
        let ok = wait_for(&mut results, "a", PathState::Ok).await;
        assert_eq!((ok.largest_size, ok.needed_size), (Some(1430), Some(1430)));
        assert_eq!(ok.families.keys().copied().collect::<Vec<_>>(), [Family::Ipv6]);
        {
            let sent = path.sent.lock().unwrap();
            // IPv6 echoes of 48 bytes (the smallest) and of the pod MTU, and the underlay's.
            assert!(sent.contains(&(v6_path(1).tunnel, 48, sent[0].2)), "{sent:?}");
            assert!(sent.iter().any(|(dst, size, _)| (*dst, *size) == (v6_path(1).tunnel, 1430)));
            assert!(sent.iter().any(|(dst, size, _)| (*dst, *size) == (peer.underlay, 48)));
        }
        // The node answers over the IPv6 underlay, its tunnel does not: blocked, not gone.
        path.dropped.lock().unwrap().insert(v6_path(1).tunnel);
        let blocked = wait_for(&mut results, "a", PathState::TunnelBlocked).await;
        let cause = blocked.cause.unwrap();
        assert!(cause.starts_with("IPv6 pods: the node answers at 2001:db8:1::1"), "{cause}");
        path.dropped.lock().unwrap().insert(peer.underlay);
        wait_for(&mut results, "a", PathState::Unreachable).await;
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_dual_stack_peer_is_ok_only_when_both_families_pass_and_a_broken_family_is_named() {
        let path = Arc::new(FakePath::default());
        let peer = target6("a", 1, vec![v4_path(1), v6_path(1)]);
        let (_targets, mut results, cancel, task) = start(&path, vec![peer]);
        let ok = wait_for(&mut results, "a", PathState::Ok).await;
        assert!(ok.families.values().all(|d| d.state == PathState::Ok) && ok.families.len() == 2, "{ok:?}");
        path.dropped.lock().unwrap().insert(v6_path(1).tunnel);
        let broken = wait_for(&mut results, "a", PathState::TunnelBlocked).await;
        let cause = broken.cause.unwrap();
        assert!(
            cause.starts_with("IPv6 pods: nothing passes the tunnel to fd00:10:244:1:: while IPv4 pods' packets do"),
            "{cause}"
        );
        assert_eq!(broken.families[&Family::Ipv4].state, PathState::Ok, "IPv4 still answers");
        assert_eq!(broken.families[&Family::Ipv6].state, PathState::TunnelBlocked);
        assert!(broken.answering, "the node's datapath lives: the agent-down grace may hold");
        path.dropped.lock().unwrap().clear();
        wait_for(&mut results, "a", PathState::Ok).await;
        cancel.cancel();
        task.await.unwrap();
    }

    #[test]
    fn large_clusters_probe_each_peer_less_often_to_stay_within_the_budget() {
        let two = Duration::from_secs(2);
        let bytes = |targets: &[Target]| -> u64 { targets.iter().map(|t| round_bytes(t, [None, None])).sum() };
        let v4: Vec<Target> = (0..=255).map(|i| target("p", i)).cycle().take(1000).collect();
        assert_eq!(round_interval(two, bytes(&v4[..10])), two);
        assert_eq!(round_interval(two, bytes(&v4[..100])), Duration::from_millis(3012));
        assert_eq!(round_interval(two, bytes(&v4)), Duration::from_millis(30120));
        // Both families count: a dual-stack peer adds an ICMPv6 echo of 48 bytes and one of
        // the pod MTU.
        let dual: Vec<Target> =
            v4.iter().map(|t| Target { paths: vec![t.paths[0], v6_path(1)], ..t.clone() }).collect();
        assert_eq!(round_bytes(&dual[0], [None, None]), round_bytes(&v4[0], [None]) + 48 + 1450);
        assert_eq!(round_interval(two, bytes(&dual)), Duration::from_millis(60080));
        // So does an MTU search's probe, of either family.
        assert_eq!(round_bytes(&dual[0], [None, Some(700)]), round_bytes(&dual[0], [None, None]) + 700);
        // Whatever N, one round sends at most the budget's worth per second of its duration.
        for n in [100, 1000, 5000] {
            let many: Vec<Target> = dual.iter().cycle().take(n).cloned().collect();
            let sent: u64 = many.iter().map(|t| round_bytes(t, [Some(1400), Some(1400)])).sum();
            assert!(sent * 1000 / round_interval(two, sent).as_millis() as u64 <= BUDGET);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_probe_of_a_dual_stack_round_is_counted() {
        let path = Arc::new(FakePath::default());
        let peers: Vec<Target> = (1..=3).map(|n| target6(&format!("p{n}"), n, vec![v4_path(n), v6_path(n)])).collect();
        let expected: u64 = peers.iter().map(|t| round_bytes(t, [None, None])).sum();
        let (_targets, mut results, cancel, task) = start(&path, peers);
        results.changed().await.unwrap();
        cancel.cancel();
        task.await.unwrap();
        let sent: u64 = path.sent.lock().unwrap().iter().map(|(_, size, _)| u64::from(*size)).sum();
        assert_eq!(sent, expected, "the budget counts what a round sends");
    }

    #[tokio::test(start_paused = true)]
    async fn the_probes_of_a_round_are_spread_over_the_interval() {
        let path = Arc::new(FakePath::default());
        let (_targets, mut results, cancel, task) =
            start(&path, (1..=10).map(|n| target(&format!("p{n}"), n)).collect());
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
