//! From probe rounds to a verdict per peer: does its path carry pods' packets, and if not, why.
//! Pure: the prober feeds rounds in, status reads reports out.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use weft_overlay::underlay::Family;

use super::icmp::min_probe;

/// Rounds kept for loss and round-trip figures.
pub const WINDOW: usize = 10;
/// Consecutive failed rounds before a failure is reported (one passing round reports repair).
pub const CONFIRM: usize = 3;
/// The MTU search stops when it has the largest passing size to within this many bytes.
const SEARCH_PRECISION: u16 = 8;

/// What a peer's path does for pods' packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathState {
    /// Not probed yet, or not for long enough to say.
    Unknown,
    /// Full-size packets pass through the path pods use.
    Ok,
    /// The node answers outside the tunnel, but nothing passes through it.
    TunnelBlocked,
    /// Small packets pass through the tunnel, packets of the pod MTU do not.
    Mtu,
    /// Neither the tunnel nor the node itself answers.
    Unreachable,
    /// The peer's own probes reach this node through the tunnel, ours get no answer: one
    /// direction of the path is blocked.
    OneWay,
}

impl PathState {
    pub const ALL: [PathState; 6] = [
        PathState::Unknown,
        PathState::Ok,
        PathState::TunnelBlocked,
        PathState::Mtu,
        PathState::Unreachable,
        PathState::OneWay,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PathState::Unknown => "unknown",
            PathState::Ok => "ok",
            PathState::TunnelBlocked => "tunnel-blocked",
            PathState::Mtu => "mtu",
            PathState::Unreachable => "unreachable",
            PathState::OneWay => "one-way",
        }
    }
}

/// One probe round of one peer: each probe's round trip, `None` when it got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Round {
    /// A small packet through the pods' path.
    pub tunnel: Option<Duration>,
    /// A packet of the pod MTU, don't-fragment, through the pods' path.
    pub full: Option<Duration>,
    /// A small packet to the node's underlay address, outside the tunnel.
    pub underlay: Option<Duration>,
    /// The MTU search's probe this round: (size, passed).
    pub search: Option<(u16, bool)>,
    /// The peer's own probes arrived here through the tunnel lately.
    pub inbound: bool,
}

/// What a history keeps of a round: what its verdicts and figures read, in 12 bytes where a
/// `Round` takes 56 (each path of every peer keeps [`WINDOW`] of them).
#[derive(Debug, Clone, Copy)]
struct Kept {
    /// The small tunnel probe's round trip in nanoseconds: a probe times out long before
    /// `u32::MAX` (4.3 s).
    tunnel_ns: Option<u32>,
    full: bool,
    underlay: bool,
    inbound: bool,
}

impl Kept {
    fn of(round: &Round) -> Kept {
        let ns = |rtt: Duration| u32::try_from(rtt.as_nanos()).unwrap_or(u32::MAX);
        Kept {
            tunnel_ns: round.tunnel.map(ns),
            full: round.full.is_some(),
            underlay: round.underlay.is_some(),
            inbound: round.inbound,
        }
    }

    fn tunnel(&self) -> bool {
        self.tunnel_ns.is_some()
    }
}

/// What `/status` shows of a peer's path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dataplane {
    pub state: PathState,
    /// What the state means for this peer, in plain words; `null` when it is `ok` or unknown.
    pub cause: Option<String>,
    /// The latest probe through the pods' path was answered (whatever the verdict says, which
    /// waits for three failed rounds).
    #[serde(default)]
    pub answering: bool,
    /// Since when the state holds (RFC 3339); `null` while unknown.
    pub since: Option<String>,
    pub rtt_p50_ms: Option<f64>,
    pub rtt_p99_ms: Option<f64>,
    /// Share of the small tunnel probes of the last rounds that got no answer (0 to 1).
    pub loss: Option<f64>,
    /// The largest packet known to pass the tunnel with don't-fragment set.
    pub largest_size: Option<u16>,
    /// The size that must pass: the pod MTU.
    pub needed_size: Option<u16>,
    /// Per pod family the cluster has, its own path's verdict (the fields above are the
    /// peer's: those of its broken family, if any); absent from a family's own entry. Boxed:
    /// a map's node has room for 11 entries, 1.6 kB of them inline, where a peer has one or
    /// two families, and every peer's verdict is held several times (the prober's, its
    /// results, the status).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub families: BTreeMap<Family, Box<Dataplane>>,
}

impl Dataplane {
    pub fn unknown() -> Dataplane {
        Dataplane {
            state: PathState::Unknown,
            cause: None,
            answering: false,
            since: None,
            rtt_p50_ms: None,
            rtt_p99_ms: None,
            loss: None,
            largest_size: None,
            needed_size: None,
            families: BTreeMap::new(),
        }
    }

    /// The peer's verdict from its families' (with their causes): `ok` only when every
    /// family's path carries full-size packets; otherwise the first broken family's state and
    /// figures, or `unknown` while one is not judged yet. `answering` when any family's tunnel
    /// answered: the peer's node and datapath are alive (what the agent-down grace asks).
    pub fn of_families(families: BTreeMap<Family, Dataplane>) -> Dataplane {
        let broken = |d: &&Dataplane| !matches!(d.state, PathState::Ok | PathState::Unknown);
        let unknown = |d: &&Dataplane| d.state == PathState::Unknown;
        let shown = families.values().find(broken).or_else(|| families.values().find(unknown));
        let Some(first) = shown.or_else(|| families.values().next()) else { return Dataplane::unknown() };
        let mut peer = first.clone();
        if shown.is_none() {
            // Every family ok: since the last of them became so.
            peer.since = families.values().filter_map(|d| d.since.clone()).max();
        }
        peer.answering = families.values().any(|d| d.answering);
        peer.families = families.into_iter().map(|(family, d)| (family, Box::new(d))).collect();
        peer
    }
}

/// One peer's recent rounds and the verdict they support.
#[derive(Debug, Clone)]
pub struct History {
    rounds: VecDeque<Kept>,
    state: PathState,
    since: SystemTime,
    /// The smallest probe of the path's family: where the MTU search starts.
    small: u16,
    /// The pod MTU: what must pass.
    full: u16,
    /// The MTU search's bounds: the largest size seen passing, the smallest seen failing.
    passed: u16,
    failed: u16,
}

impl History {
    /// The history of one pod family's path (`family`) that must pass `full` bytes.
    pub fn new(family: Family, full: u16, now: SystemTime) -> History {
        let small = min_probe(family);
        History {
            rounds: VecDeque::with_capacity(WINDOW),
            state: PathState::Unknown,
            since: now,
            small,
            full,
            passed: small,
            failed: full,
        }
    }

    pub fn state(&self) -> PathState {
        self.state
    }

    /// The size to probe this round to narrow down the largest passing packet, while full-size
    /// packets fail and small ones pass.
    pub fn search_size(&self) -> Option<u16> {
        let searching = self.rounds.back().is_some_and(|r| r.tunnel() && !r.full);
        (searching && self.failed > self.passed + SEARCH_PRECISION)
            .then(|| self.passed + (self.failed - self.passed) / 2)
    }

    /// Adds a round; returns the previous state when the verdict changed.
    pub fn record(&mut self, round: Round, now: SystemTime) -> Option<PathState> {
        if round.full.is_some() {
            (self.passed, self.failed) = (self.full, self.full);
        } else if self.failed == self.full && self.passed == self.full {
            // Full size stopped passing: search again from the bottom.
            (self.passed, self.failed) = (self.small, self.full);
        }
        if let Some((size, passed)) = round.search {
            if passed {
                self.passed = self.passed.max(size);
            } else {
                self.failed = self.failed.min(size);
                if self.failed <= self.passed {
                    self.passed = self.small;
                }
            }
        }
        if self.rounds.len() == WINDOW {
            self.rounds.pop_front();
        }
        self.rounds.push_back(Kept::of(&round));
        let next = judge(&self.rounds, self.state);
        if next == self.state {
            return None;
        }
        let previous = std::mem::replace(&mut self.state, next);
        self.since = now;
        Some(previous)
    }

    pub fn report(&self) -> Dataplane {
        let mut rtts: Vec<Duration> =
            self.rounds.iter().filter_map(|r| r.tunnel_ns).map(|ns| Duration::from_nanos(ns.into())).collect();
        rtts.sort();
        let quantile = |q: f64| -> Option<f64> {
            let i = ((rtts.len() as f64 - 1.0) * q).round() as usize;
            rtts.get(i).map(|d| d.as_secs_f64() * 1000.0)
        };
        let lost = self.rounds.iter().filter(|r| !r.tunnel()).count();
        let known = self.state != PathState::Unknown;
        Dataplane {
            state: self.state,
            cause: None,
            answering: self.rounds.back().is_some_and(Kept::tunnel),
            since: known.then(|| crate::http::status::timestamp(self.since)),
            rtt_p50_ms: quantile(0.5),
            rtt_p99_ms: quantile(0.99),
            loss: (!self.rounds.is_empty()).then(|| lost as f64 / self.rounds.len() as f64),
            largest_size: match self.state {
                PathState::Ok => Some(self.full),
                PathState::Mtu => Some(self.passed),
                _ => None,
            },
            needed_size: Some(self.full),
            families: BTreeMap::new(),
        }
    }
}

/// The verdict on the latest rounds. One round with full-size packets passing is enough to say
/// the path works; a failure must hold for [`CONFIRM`] rounds (one lost probe is not an outage);
/// anything in between keeps the previous verdict.
fn judge(rounds: &VecDeque<Kept>, previous: PathState) -> PathState {
    let Some(last) = rounds.back() else { return previous };
    if last.tunnel() && last.full {
        return PathState::Ok;
    }
    if rounds.len() < CONFIRM {
        return previous;
    }
    let recent: Vec<&Kept> = rounds.iter().rev().take(CONFIRM).collect();
    if recent.iter().all(|r| !r.tunnel()) {
        return if recent.iter().all(|r| r.inbound) {
            PathState::OneWay
        } else if recent.iter().any(|r| r.underlay) {
            PathState::TunnelBlocked
        } else {
            PathState::Unreachable
        };
    }
    if recent.iter().all(|r| r.tunnel() && !r.full) {
        return PathState::Mtu;
    }
    previous
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Option<Duration> = Some(Duration::from_millis(1));
    const FULL: u16 = 1450;

    fn round(tunnel: bool, full: bool, underlay: bool) -> Round {
        let on = |b: bool| if b { MS } else { None };
        Round { tunnel: on(tunnel), full: on(full), underlay: on(underlay), search: None, inbound: false }
    }

    fn feed(h: &mut History, rounds: &[Round]) -> Vec<PathState> {
        rounds
            .iter()
            .map(|r| {
                h.record(*r, SystemTime::now());
                h.state()
            })
            .collect()
    }

    #[test]
    fn one_good_round_says_ok_and_a_failure_needs_three_rounds() {
        use PathState::*;
        let mut h = History::new(Family::Ipv4, FULL, SystemTime::now());
        assert_eq!(h.report().state, Unknown);
        let ok = round(true, true, true);
        let blocked = round(false, false, true);
        assert_eq!(feed(&mut h, &[ok, blocked, blocked, blocked, ok]), [Ok, Ok, Ok, TunnelBlocked, Ok]);
        let report = h.report();
        assert_eq!(report.loss, Some(0.6));
        assert_eq!((report.largest_size, report.needed_size), (Some(FULL), Some(FULL)));
        assert!(report.since.is_some() && report.rtt_p50_ms.is_some());
    }

    #[test]
    fn causes_are_told_apart_by_the_underlay_and_full_size_probes() {
        use PathState::*;
        let mut h = History::new(Family::Ipv4, FULL, SystemTime::now());
        assert_eq!(feed(&mut h, &[round(false, false, false); 3]), [Unknown, Unknown, Unreachable]);
        let mut h = History::new(Family::Ipv4, FULL, SystemTime::now());
        assert_eq!(feed(&mut h, &[round(true, false, true); 3]), [Unknown, Unknown, Mtu]);
        // Our probes die, the peer's reach us: one direction is blocked.
        let mut h = History::new(Family::Ipv4, FULL, SystemTime::now());
        let one_way = Round { inbound: true, ..round(false, false, true) };
        assert_eq!(feed(&mut h, &[one_way; 3]), [Unknown, Unknown, OneWay]);
        // A lost probe among good ones changes nothing.
        let mut h = History::new(Family::Ipv4, FULL, SystemTime::now());
        assert_eq!(
            feed(&mut h, &[round(true, true, true), round(false, false, false), round(true, true, true)]),
            [Ok, Ok, Ok]
        );
    }

    #[test]
    fn a_peer_is_ok_only_when_every_family_is_and_otherwise_shows_its_broken_family() {
        use PathState::*;
        let family = |state: PathState, since: &str, answering: bool| Dataplane {
            state,
            since: Some(since.into()),
            answering,
            cause: (state != Ok).then(|| format!("{} cause", state.as_str())),
            ..Dataplane::unknown()
        };
        let peer = |v4: Dataplane, v6: Dataplane| {
            Dataplane::of_families([(Family::Ipv4, v4), (Family::Ipv6, v6)].into_iter().collect())
        };
        let both_ok = peer(family(Ok, "2026-01-01T00:00:02Z", true), family(Ok, "2026-01-01T00:00:01Z", true));
        assert_eq!((both_ok.state, both_ok.cause.as_deref()), (Ok, None));
        assert_eq!(both_ok.since.as_deref(), Some("2026-01-01T00:00:02Z"), "since the last family became ok");
        assert_eq!(both_ok.families.len(), 2);
        let v6_broken = peer(family(Ok, "t1", true), family(TunnelBlocked, "t2", false));
        assert_eq!((v6_broken.state, v6_broken.cause.as_deref()), (TunnelBlocked, Some("tunnel-blocked cause")));
        assert!(v6_broken.answering, "IPv4 answers: the node's datapath lives");
        assert_eq!(v6_broken.families[&Family::Ipv4].state, Ok);
        // Both broken: IPv4's is shown; one not judged yet: unknown, never ok.
        let both = peer(family(Mtu, "t1", true), family(Unreachable, "t2", false));
        assert_eq!(both.state, Mtu);
        let judging = peer(family(Ok, "t1", true), Dataplane::unknown());
        assert_eq!(judging.state, Unknown);
        let silent = peer(family(Unreachable, "t1", false), family(Unreachable, "t1", false));
        assert!(!silent.answering);
        assert_eq!(Dataplane::of_families(BTreeMap::new()), Dataplane::unknown());
    }

    #[test]
    fn a_previous_release_peers_dataplane_without_families_still_reads() {
        let old = r#"{"state":"ok","cause":null,"answering":true,"since":null,"rttP50Ms":0.2,"rttP99Ms":0.3,
            "loss":0.0,"largestSize":1450,"neededSize":1450}"#;
        let read: Dataplane = serde_json::from_str(old).unwrap();
        assert!(read.families.is_empty() && read.state == PathState::Ok);
        let json = serde_json::to_value(Dataplane::unknown()).unwrap();
        assert!(json.get("families").is_none(), "no families key for a single verdict: {json}");
    }

    #[test]
    fn a_history_keeps_the_round_trips_to_the_nanosecond_in_a_small_round() {
        assert!(size_of::<Kept>() <= 12);
        let mut h = History::new(Family::Ipv4, FULL, SystemTime::now());
        let rtt = |ns: u64| Round { tunnel: Some(Duration::from_nanos(ns)), ..round(true, true, true) };
        for ns in [1_234_567, 7_654_321, 999_999_999] {
            h.record(rtt(ns), SystemTime::now());
        }
        h.record(round(false, false, true), SystemTime::now());
        let report = h.report();
        assert_eq!((report.rtt_p50_ms, report.rtt_p99_ms), (Some(7.654321), Some(999.999999)));
        assert_eq!(report.loss, Some(0.25));
        assert!(!report.answering);
    }

    #[test]
    fn the_mtu_search_narrows_down_the_largest_passing_size() {
        let mut h = History::new(Family::Ipv4, FULL, SystemTime::now());
        let path_mtu = 1400; // what passes, don't-fragment
        for _ in 0..20 {
            let search = h.search_size().map(|size| (size, size <= path_mtu));
            h.record(Round { search, ..round(true, false, true) }, SystemTime::now());
        }
        let report = h.report();
        assert_eq!(report.state, PathState::Mtu);
        let largest = report.largest_size.unwrap();
        assert!(largest <= path_mtu && path_mtu - largest <= SEARCH_PRECISION, "{largest}");
        assert_eq!(h.search_size(), None, "the search stops once precise enough");
        // Full size passes again: repaired, the search forgotten.
        h.record(round(true, true, true), SystemTime::now());
        assert_eq!((h.state(), h.report().largest_size), (PathState::Ok, Some(FULL)));
    }
}
