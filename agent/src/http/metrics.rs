//! The agent's Prometheus metrics (served at `/metrics` in the OpenMetrics text format).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use weft_overlay::ApplyReport;
use weft_overlay::nft::Counter as KernelCounter;

use crate::gossip::seal::Keyring;
use crate::gossip::transport::{DropReason, GossipCounters, ReasonLabel};
use crate::http::status::IpamUse;
use crate::membership::Liveness;
use crate::probe::verdict::PathState;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FamilyLabel {
    family: &'static str,
}

/// A gauge of values past i64 (an IPv6 /64 holds 2^64 addresses).
type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// How a datapath apply went about it (see [`crate::datapath::Datapath`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyKind {
    /// Read the kernel back and wrote the difference.
    Full,
    /// Wrote only what changed since the last apply.
    Incremental,
}

impl ApplyKind {
    pub const ALL: [ApplyKind; 2] = [ApplyKind::Full, ApplyKind::Incremental];

    pub fn as_str(self) -> &'static str {
        match self {
            ApplyKind::Full => "full",
            ApplyKind::Incremental => "incremental",
        }
    }
}

/// One histogram per label value, all with the apply-duration buckets.
type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabel {
    key_id: String,
    role: &'static str,
}

pub struct Metrics {
    registry: Registry,
    peers: Family<StateLabel, Gauge>,
    peers_programmed: Gauge,
    reconcile_duration: Histograms<KindLabel>,
    reconcile_errors: Counter,
    kernel_writes: Family<OpLabel, Counter>,
    kernel_write_failures: Counter,
    kernel_objects: Gauge,
    gossip: GossipCounters,
    gossip_keys: Family<KeyLabel, Gauge>,
    key_reload_errors: Counter,
    rejected: Family<ReasonLabel, Counter>,
    conflicts_seen: Counter,
    conflicts: Gauge,
    ready: Gauge,
    name_in_use: Gauge,
    isolated: Gauge,
    suspected_partition: Gauge,
    ipam_in_use: Family<FamilyLabel, FloatGauge>,
    ipam_total: Family<FamilyLabel, FloatGauge>,
    peers_dataplane: Family<StateLabel, Gauge>,
    gossip_members: Family<StateLabel, Gauge>,
    stranded: Gauge,
    vxlan_dropped_packets: Counter,
    vxlan_dropped_bytes: Counter,
    /// The kernel counter at the last apply, to export what it gained since.
    vxlan_dropped_seen: Mutex<KernelCounter>,
    http_connections: Gauge,
    http_rejected: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("weft");
        let peers = Family::<StateLabel, Gauge>::default();
        registry.register("peers", "Peers known to gossip, by state", peers.clone());
        let peers_programmed = Gauge::default();
        registry.register(
            "peers_programmed",
            "Peers in the last successfully applied datapath state",
            peers_programmed.clone(),
        );
        // From 100 µs: an incremental apply of one peer takes about a millisecond.
        let reconcile_duration: Histograms<KindLabel> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 20)));
        for kind in ApplyKind::ALL {
            drop(reconcile_duration.get_or_create(&KindLabel { kind: kind.as_str() }));
        }
        registry.register(
            "reconcile_duration_seconds",
            "Time taken by datapath applies, by kind (full: kernel read back; incremental: changes only)",
            reconcile_duration.clone(),
        );
        let reconcile_errors = Counter::default();
        registry.register(
            "reconcile_errors",
            "Datapath applies that failed in whole or in part",
            reconcile_errors.clone(),
        );
        let kernel_writes = Family::<OpLabel, Counter>::default();
        registry.register(
            "kernel_writes",
            "Kernel objects created, changed or removed by applies",
            kernel_writes.clone(),
        );
        let kernel_write_failures = Counter::default();
        registry.register("kernel_write_failures", "Kernel writes that failed", kernel_write_failures.clone());
        let kernel_objects = Gauge::default();
        registry.register("kernel_objects", "Kernel objects programmed after the last apply", kernel_objects.clone());
        let messages = Family::<DirectionLabel, Counter>::default();
        let bytes = Family::<DirectionLabel, Counter>::default();
        // The transport counts into the families' own counters, without a lookup per datagram.
        // (One statement each: a family's lookup guard must be dropped before the next lookup.)
        let counter = |family: &Family<DirectionLabel, Counter>, direction| {
            family.get_or_create(&DirectionLabel { direction }).clone()
        };
        let messages_in = counter(&messages, "in");
        let messages_out = counter(&messages, "out");
        let bytes_in = counter(&bytes, "in");
        let bytes_out = counter(&bytes, "out");
        let dropped = Family::<ReasonLabel, Counter>::default();
        // Every reason shows from the start, at 0: an alert can then watch a rate, not a gap.
        for why in DropReason::ALL {
            drop(dropped.get_or_create(&ReasonLabel { reason: why.as_str() }));
        }
        registry.register(
            "gossip_datagrams_dropped",
            "Gossip datagrams dropped before chitchat saw them: unsealed, unknown key, forged, stale, replayed, malformed or of another cluster",
            dropped.clone(),
        );
        let malformed_suspicions = Counter::default();
        registry.register(
            "gossip_malformed_suspicions",
            "Members' `suspects` announcements ignored because they do not parse (each value once): the member's monitor votes count as none",
            malformed_suspicions.clone(),
        );
        let gossip = GossipCounters { messages_in, messages_out, bytes_in, bytes_out, dropped, malformed_suspicions };
        registry.register("gossip_messages", "Gossip datagrams", messages);
        registry.register("gossip_bytes", "Gossip bytes", bytes);
        let gossip_keys = Family::<KeyLabel, Gauge>::default();
        registry.register(
            "gossip_keys",
            "Cluster keys in use, by key id (a hash, not the key) and role: primary seals, accepted opens",
            gossip_keys.clone(),
        );
        let key_reload_errors = Counter::default();
        registry.register(
            "gossip_key_reload_errors",
            "Times the cluster key file could not be used (the previous keys stay in use)",
            key_reload_errors.clone(),
        );
        let rejected = Family::<ReasonLabel, Counter>::default();
        for reason in crate::validate::COUNTED_LABELS {
            drop(rejected.get_or_create(&ReasonLabel { reason }));
        }
        registry.register("gossip_rejected", "Peer announcements rejected by validation, by reason", rejected.clone());
        let conflicts_seen = Counter::default();
        registry.register(
            "podcidr_conflicts",
            "PodCIDR conflicts seen (two nodes claiming one block)",
            conflicts_seen.clone(),
        );
        let conflicts = Gauge::default();
        registry.register("podcidr_conflicts_current", "PodCIDR conflicts not resolved yet", conflicts.clone());
        let ready = Gauge::default();
        registry.register("ready", "1 when the node is ready", ready.clone());
        let peers_dataplane = Family::<StateLabel, Gauge>::default();
        registry.register(
            "peers_dataplane",
            "Peers by what the probes through the pods' path say: ok, tunnel-blocked, mtu, unreachable, unknown",
            peers_dataplane.clone(),
        );
        let gossip_members = Family::<StateLabel, Gauge>::default();
        registry.register(
            "gossip_members",
            "Generations of other nodes that gossip holds, by liveness (a restarted node's earlier run \
             counts until gossip forgets it; each is a digest entry in every gossip message)",
            gossip_members.clone(),
        );
        let ipam_in_use = Family::<FamilyLabel, FloatGauge>::default();
        registry.register(
            "ipam_addresses_in_use",
            "Pod addresses handed out of this node's PodCIDR of each family",
            ipam_in_use.clone(),
        );
        let ipam_total = Family::<FamilyLabel, FloatGauge>::default();
        registry.register(
            "ipam_addresses_total",
            "Pod addresses this node's PodCIDR of each family can hand out (0 while it serves none)",
            ipam_total.clone(),
        );
        let isolated = Gauge::default();
        registry.register(
            "isolated",
            "1 when this node heard other nodes before and hears none now (gossip blocked, or all others down)",
            isolated.clone(),
        );
        let suspected_partition = Gauge::default();
        registry.register(
            "gossip_suspected_partition",
            "Members freshly suspected by their monitors while the partition hold is on, so that none of them is withdrawn (0 without a hold)",
            suspected_partition.clone(),
        );
        let name_in_use = Gauge::default();
        registry.register(
            "node_name_in_use",
            "1 while another live agent holds this node's name, so this one serves nothing",
            name_in_use.clone(),
        );
        let stranded = Gauge::default();
        registry.register(
            "stranded_pod_addresses",
            "Pod addresses on this node outside the PodCIDR it serves (its block moved or is lost)",
            stranded.clone(),
        );
        let vxlan_dropped_packets = Counter::default();
        registry.register(
            "vxlan_dropped_packets",
            "VXLAN datagrams from non-peers dropped (as of the last apply)",
            vxlan_dropped_packets.clone(),
        );
        let vxlan_dropped_bytes = Counter::default();
        registry.register(
            "vxlan_dropped_bytes",
            "Bytes of VXLAN datagrams from non-peers dropped (as of the last apply)",
            vxlan_dropped_bytes.clone(),
        );
        let http_connections = Gauge::default();
        registry.register("http_connections", "Open connections to the status server", http_connections.clone());
        let http_rejected = Counter::default();
        registry.register(
            "http_connections_rejected",
            "Status connections closed unserved: the server was at --status-max-connections",
            http_rejected.clone(),
        );
        Metrics {
            registry,
            peers,
            peers_programmed,
            reconcile_duration,
            reconcile_errors,
            kernel_writes,
            kernel_write_failures,
            kernel_objects,
            gossip,
            gossip_keys,
            key_reload_errors,
            rejected,
            conflicts_seen,
            conflicts,
            ready,
            name_in_use,
            isolated,
            suspected_partition,
            ipam_in_use,
            ipam_total,
            peers_dataplane,
            gossip_members,
            stranded,
            vxlan_dropped_packets,
            vxlan_dropped_bytes,
            vxlan_dropped_seen: Mutex::default(),
            http_connections,
            http_rejected,
        }
    }

    pub fn gossip_counters(&self) -> GossipCounters {
        self.gossip.clone()
    }

    /// Records the keyring in use; `loaded` is false when a reload failed and it stayed.
    pub fn set_gossip_keys(&self, ring: &Keyring, loaded: bool) {
        if !loaded {
            self.key_reload_errors.inc();
        }
        self.gossip_keys.clear();
        for (i, id) in ring.ids().into_iter().enumerate() {
            let role = if i == 0 { "primary" } else { "accepted" };
            self.gossip_keys.get_or_create(&KeyLabel { key_id: id.to_string(), role }).set(1);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    pub fn set_peers(&self, alive: usize, dead: usize, programmed: usize) {
        let set = |g: &Gauge, n: usize| g.set(i64::try_from(n).unwrap_or(i64::MAX));
        set(&self.peers.get_or_create(&StateLabel { state: "alive" }), alive);
        set(&self.peers.get_or_create(&StateLabel { state: "dead" }), dead);
        set(&self.peers_programmed, programmed);
    }

    /// Records one apply: its duration, and what it did when it got as far as a report. A full
    /// apply counts every object in place; an incremental one only what it changed.
    pub fn observe_apply(&self, kind: ApplyKind, took: Duration, report: Option<&ApplyReport>, failed: bool) {
        self.reconcile_duration.get_or_create(&KindLabel { kind: kind.as_str() }).observe(took.as_secs_f64());
        if failed {
            self.reconcile_errors.inc();
        }
        if let Some(r) = report {
            for (op, n) in [("created", r.created), ("changed", r.changed), ("removed", r.removed)] {
                self.kernel_writes.get_or_create(&OpLabel { op }).inc_by(n as u64);
            }
            self.kernel_write_failures.inc_by(r.failures.len() as u64);
            let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            match kind {
                ApplyKind::Full => self.kernel_objects.set(count(r.created + r.changed + r.unchanged)),
                ApplyKind::Incremental => self.kernel_objects.inc_by(count(r.created) - count(r.removed)),
            };
            if let Some(now) = r.vxlan_dropped {
                let mut seen = self.vxlan_dropped_seen.lock().unwrap_or_else(|e| e.into_inner());
                self.vxlan_dropped_packets.inc_by(gained(seen.packets, now.packets));
                self.vxlan_dropped_bytes.inc_by(gained(seen.bytes, now.bytes));
                *seen = now;
            }
        }
    }

    pub fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn conflict_seen(&self) {
        self.conflicts_seen.inc();
    }

    pub fn set_conflicts(&self, n: usize) {
        self.conflicts.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Peers by what their dataplane probes say (every state always present).
    pub fn set_dataplane(&self, states: impl Iterator<Item = PathState>) {
        set_counts(&self.peers_dataplane, PathState::ALL.map(PathState::as_str), states.map(PathState::as_str));
    }

    /// Gossip's members (every generation of every other node) by liveness, every state present.
    pub fn set_gossip_members(&self, members: impl Iterator<Item = Liveness>) {
        set_counts(&self.gossip_members, Liveness::ALL.map(Liveness::as_str), members.map(Liveness::as_str));
    }

    /// Per family: pod addresses handed out of the node's block, and how many it has.
    pub fn set_ipam(&self, ipam: &[IpamUse]) {
        for use_ in ipam {
            let label = FamilyLabel { family: use_.family.as_str() };
            self.ipam_in_use.get_or_create(&label).set(use_.in_use as f64);
            self.ipam_total.get_or_create(&label).set(use_.total as f64);
        }
    }

    pub fn set_isolated(&self, isolated: bool) {
        self.isolated.set(i64::from(isolated));
    }

    /// The members held back by the partition hold (`None`: no hold).
    pub fn set_suspected_partition(&self, suspected: Option<usize>) {
        self.suspected_partition.set(suspected.map_or(0, |n| i64::try_from(n).unwrap_or(i64::MAX)));
    }

    pub fn set_name_in_use(&self, in_use: bool) {
        self.name_in_use.set(i64::from(in_use));
    }

    pub fn set_stranded(&self, n: usize) {
        self.stranded.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn http_connection_opened(&self) {
        self.http_connections.inc();
    }

    pub fn http_connection_closed(&self) {
        self.http_connections.dec();
    }

    pub fn http_connection_rejected(&self) {
        self.http_rejected.inc();
    }
}

/// Sets one gauge per state to how many `items` are in it; states without items read 0.
fn set_counts<const N: usize>(
    family: &Family<StateLabel, Gauge>,
    states: [&'static str; N],
    items: impl Iterator<Item = &'static str>,
) {
    let mut counts: BTreeMap<&'static str, i64> = states.into_iter().map(|s| (s, 0)).collect();
    for state in items {
        *counts.entry(state).or_default() += 1;
    }
    for (state, n) in counts {
        family.get_or_create(&StateLabel { state }).set(n);
    }
}

/// What a kernel counter gained since it read `last`. The kernel's counter restarts from zero
/// when weft's table is rewritten; the exported counter must never go down, so a smaller value
/// is all new.
fn gained(last: u64, now: u64) -> u64 {
    if now >= last { now - last } else { now }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_every_family_under_the_weft_prefix() {
        let m = Metrics::new();
        m.set_peers(3, 1, 2);
        m.set_gossip_members([Liveness::Alive, Liveness::Left, Liveness::Alive].into_iter());
        m.observe_apply(
            ApplyKind::Full,
            Duration::from_millis(3),
            Some(&ApplyReport { created: 4, unchanged: 2, ..ApplyReport::default() }),
            false,
        );
        m.observe_apply(
            ApplyKind::Incremental,
            Duration::from_millis(1),
            Some(&ApplyReport { created: 3, removed: 1, ..ApplyReport::default() }),
            false,
        );
        m.rejected("vni_mismatch");
        m.set_suspected_partition(Some(4));
        m.conflict_seen();
        m.gossip_counters().messages_in.inc();
        m.gossip_counters().bytes_out.inc_by(100);
        m.gossip_counters().dropped.get_or_create(&ReasonLabel { reason: "forged" }).inc();
        let ring = Keyring::new(&[[1; 32], [2; 32]]).unwrap();
        m.set_gossip_keys(&Keyring::new(&[[3; 32]]).unwrap(), true);
        m.set_gossip_keys(&ring, false);
        let text = m.encode();
        let (primary, accepted) = (ring.ids()[0], ring.ids()[1]);
        for line in [
            "weft_peers{state=\"alive\"} 3",
            "weft_peers{state=\"dead\"} 1",
            "weft_peers_programmed 2",
            "weft_gossip_members{state=\"alive\"} 2",
            "weft_gossip_members{state=\"left\"} 1",
            "weft_gossip_members{state=\"dead\"} 0",
            "weft_reconcile_duration_seconds_count{kind=\"full\"} 1",
            "weft_reconcile_duration_seconds_count{kind=\"incremental\"} 1",
            "weft_reconcile_errors_total 0",
            "weft_kernel_writes_total{op=\"created\"} 7",
            "weft_kernel_objects 8",
            "weft_gossip_messages_total{direction=\"in\"} 1",
            "weft_gossip_bytes_total{direction=\"out\"} 100",
            "weft_gossip_rejected_total{reason=\"vni_mismatch\"} 1",
            "weft_gossip_rejected_total{reason=\"malformed\"} 0",
            "weft_podcidr_conflicts_total 1",
            "weft_podcidr_conflicts_current 0",
            "weft_ready 0",
            "weft_gossip_datagrams_dropped_total{reason=\"forged\"} 1",
            "weft_gossip_datagrams_dropped_total{reason=\"replayed\"} 0",
            "weft_gossip_datagrams_dropped_total{reason=\"malformed\"} 0",
            "weft_gossip_datagrams_dropped_total{reason=\"foreign_cluster\"} 0",
            &format!("weft_gossip_keys{{key_id=\"{primary}\",role=\"primary\"}} 1"),
            &format!("weft_gossip_keys{{key_id=\"{accepted}\",role=\"accepted\"}} 1"),
            "weft_gossip_key_reload_errors_total 1",
            "weft_vxlan_dropped_packets_total 0",
            "weft_vxlan_dropped_bytes_total 0",
            "weft_http_connections 0",
            "weft_http_connections_rejected_total 0",
            "weft_gossip_suspected_partition 4",
            "weft_gossip_malformed_suspicions_total 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert_eq!(text.matches("weft_gossip_keys{").count(), 2, "a replaced keyring's ids linger:\n{text}");
    }

    #[test]
    fn vxlan_drops_follow_the_kernel_counter_across_table_rewrites() {
        let m = Metrics::new();
        let apply = |packets, bytes| {
            let vxlan_dropped = Some(KernelCounter { packets, bytes });
            m.observe_apply(
                ApplyKind::Full,
                Duration::ZERO,
                Some(&ApplyReport { vxlan_dropped, ..ApplyReport::default() }),
                false,
            );
        };
        apply(3, 300);
        apply(5, 500);
        // The table was rewritten: its counter restarted.
        apply(1, 100);
        // No table (or no rule) at this apply: nothing to add.
        m.observe_apply(ApplyKind::Full, Duration::ZERO, Some(&ApplyReport::default()), false);
        let text = m.encode();
        assert!(text.contains("weft_vxlan_dropped_packets_total 6"), "{text}");
        assert!(text.contains("weft_vxlan_dropped_bytes_total 600"), "{text}");
        assert_eq!((gained(5, 7), gained(5, 2), gained(0, 0)), (2, 2, 0));
    }
}
