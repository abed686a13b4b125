//! The `/status` document: its model (shared with the `status` command), how it is built from
//! the reconciler's decisions, and how the command renders it as a table.

use std::fmt::Write;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use weft_overlay::Mac;
use weft_overlay::desired::PeerPath;
use weft_overlay::underlay::Family;

use crate::allocation::{Claim, Conflict, Phase};
use crate::identity::Namesake;
use crate::membership::Liveness;
use crate::peers::{Decision, Skip};
use crate::probe::summary::Summary;
use crate::probe::verdict::Dataplane;
use crate::settings::Refusal;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub node: NodeStatus,
    pub peers: Vec<PeerStatus>,
    pub conflicts: Vec<ConflictStatus>,
    pub last_reconcile: Option<ReconcileStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub name: String,
    /// The IPv4 underlay address, or on an IPv6-only node its IPv6 one.
    #[serde(rename = "nodeIP")]
    pub node_ip: IpAddr,
    /// The IPv6 underlay address; `null` without one.
    #[serde(rename = "nodeIP6", default)]
    pub node_ip6: Option<IpAddr>,
    /// The PodCIDR the node holds: its IPv4 block, or on a node without IPv4 pods its IPv6 one
    /// (as `nodeIP`); `null` while it is still being allocated.
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Option<IpNet>,
    /// The IPv6 PodCIDR it holds; `null` without one.
    #[serde(rename = "podCIDR6", default)]
    pub pod_cidr6: Option<IpNet>,
    #[serde(rename = "vtepMAC")]
    pub vtep_mac: Mac,
    pub mtu: u32,
    pub ready: bool,
    /// Why the node is not ready; `null` when it is.
    pub not_ready_reason: Option<String>,
    /// Other live agents announcing this node's name from another address (cloned VMs): the
    /// one holding the name keeps it, the others refuse to serve.
    #[serde(default)]
    pub name_in_use_by: Vec<NamesakeStatus>,
    /// Pods on this node whose addresses are outside the PodCIDR it serves (its block moved to
    /// another node, or it serves none): they cannot reach pods on other nodes.
    #[serde(default)]
    pub stranded_pods: Option<StrandedPods>,
    /// Set when this node heard from other nodes before and hears from none now: why.
    #[serde(default)]
    pub isolated: Option<String>,
    /// Members suspected by their monitors while the partition hold is on: so many at once
    /// that nobody is withdrawn until the suspicions clear or the hold's limit passes.
    #[serde(default)]
    pub suspected_partition: Option<usize>,
    /// This node's probe results as it publishes them (see `peers[].report` for the others').
    #[serde(default)]
    pub dataplane: Summary,
    /// How much of its PodCIDR of each family of the cluster the plugin has handed out
    /// (`total` 0 while the node serves no block of that family).
    #[serde(default)]
    pub ipam: Vec<IpamUse>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamUse {
    pub family: Family,
    pub in_use: u64,
    /// Saturates at u64::MAX (an IPv6 /64 holds 2^64 addresses).
    pub total: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamesakeStatus {
    #[serde(rename = "nodeIP")]
    pub node_ip: IpAddr,
    pub generation: u64,
    /// `true` when this agent yields the name to that one (and so serves nothing).
    pub holds_the_name: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StrandedPods {
    /// Their addresses (at most [`STRANDED_SHOWN`] listed; `count` has them all).
    pub addresses: Vec<IpAddr>,
    pub count: usize,
    pub reason: String,
}

/// How many stranded addresses `/status` lists.
pub const STRANDED_SHOWN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    Alive,
    Dead,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    pub name: String,
    /// Its IPv4 underlay address, or for an IPv6-only peer its IPv6 one; `null` when the
    /// peer's announcement was rejected before this field could be read.
    #[serde(rename = "nodeIP")]
    pub node_ip: Option<IpAddr>,
    /// Its IPv6 underlay address; `null` without one.
    #[serde(rename = "nodeIP6", default)]
    pub node_ip6: Option<IpAddr>,
    /// The underlay family its tunnel (or direct route) uses; `null` when none is shared
    /// (`note` says so) or its announcement was rejected.
    #[serde(default)]
    pub underlay_family: Option<Family>,
    /// Its IPv4 block, or without one its IPv6 block (as `nodeIP`).
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Option<IpNet>,
    /// Its IPv6 block; `null` without one.
    #[serde(rename = "podCIDR6", default)]
    pub pod_cidr6: Option<IpNet>,
    #[serde(rename = "vtepMAC")]
    pub vtep_mac: Option<Mac>,
    /// `alive` only when the failure detector hears the node and it has not announced leaving.
    pub state: PeerState,
    pub path: Option<PeerPath>,
    /// In the last successfully applied datapath state.
    pub programmed: bool,
    /// Last time a fresh heartbeat of the node arrived (RFC 3339).
    pub last_seen: Option<String>,
    /// Why the peer is not programmed (rejection, conflict, liveness); `null` otherwise.
    pub note: Option<String>,
    /// What the probes through the pods' path say (`unknown` for a peer not programmed): the
    /// prober's verdict itself, shared, not a copy.
    pub dataplane: Arc<Dataplane>,
    /// What this peer's own probes say of its peers, as it publishes them in gossip.
    #[serde(default)]
    pub report: Option<Summary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConflictStatus {
    #[serde(rename = "podCIDR")]
    pub pod_cidr: IpNet,
    pub winner: String,
    pub losers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileStatus {
    /// When the apply started (RFC 3339).
    pub at: String,
    pub duration_ms: u64,
    pub error: Option<String>,
}

pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// One row of the peer table, from what was decided about the peer.
pub fn peer_status(
    d: &Decision<'_>,
    programmed: bool,
    last_seen: Option<SystemTime>,
    dataplane: Arc<Dataplane>,
) -> PeerStatus {
    let peer = d.peer;
    let announcement = peer.announcement.as_ref().ok();
    let path = announcement.and(d.path);
    PeerStatus {
        name: peer.name.clone(),
        node_ip: announcement.and_then(|a| a.node_ips.primary()),
        node_ip6: announcement.and_then(|a| a.node_ips.get(Family::Ipv6)),
        underlay_family: path.map(|p| p.family),
        pod_cidr: blocks(peer.claims()).0,
        pod_cidr6: blocks(peer.claims()).1,
        vtep_mac: announcement.map(|a| a.vtep_mac),
        state: match peer.liveness {
            Liveness::Alive | Liveness::Leaving => PeerState::Alive,
            Liveness::Joining | Liveness::Left | Liveness::Dead => PeerState::Dead,
        },
        path: path.map(|p| p.path),
        programmed,
        last_seen: last_seen.map(timestamp),
        note: note(d),
        dataplane,
        report: peer.report.clone(),
    }
}

/// Why the peer is not programmed, or what is special about how it is; then every block of it
/// left unrouted (a programmed peer is routed the others).
fn note(d: &Decision<'_>) -> Option<String> {
    let unrouted: Vec<&Skip> = d.unrouted.iter().map(|(_, why)| why).collect();
    let first = match &d.verdict {
        // It holds none of its blocks: the list below says why for each.
        Err(skip) if unrouted.contains(&skip) => None,
        Err(skip) => Some(skip.to_string()),
        Ok(()) if d.peer.liveness == Liveness::Leaving => {
            Some("leaving: routes kept until it is confirmed gone".into())
        }
        Ok(()) if !d.peer.liveness.programmable() => {
            Some("its agent is not heard, but its tunnel answers: routes kept (an agent restart or upgrade)".into())
        }
        Ok(()) => None,
    };
    let notes: Vec<String> = first.into_iter().chain(unrouted.iter().map(ToString::to_string)).collect();
    (!notes.is_empty()).then(|| notes.join("; "))
}

/// Claims (IPv4 first) as status shows them: the first block, and the IPv6 one.
pub fn blocks(claims: &[Claim]) -> (Option<IpNet>, Option<IpNet>) {
    let v6 = claims.iter().map(|c| c.cidr).find(|c| c.addr().is_ipv6());
    (claims.first().map(|c| c.cidr), v6)
}

pub fn conflict_status(c: &Conflict) -> ConflictStatus {
    ConflictStatus { pod_cidr: c.cidr, winner: c.winner.clone(), losers: c.losers.clone() }
}

/// Whether the node may serve pods from its PodCIDR: it holds the block uncontested under a name
/// no other live agent holds. Otherwise why not: the reason the plugin gives for refusing ADDs.
#[derive(Debug, Clone, Copy)]
pub struct ServingInput<'a> {
    pub node: &'a str,
    pub phase: &'a Phase,
    pub conflicts: &'a [Conflict],
    /// The agent this one yields its name to.
    pub name_in_use_by: Option<&'a Namesake>,
    /// Why this agent's settings keep it from serving.
    pub settings_refusal: Option<&'a Refusal>,
}

pub fn serving(i: &ServingInput<'_>) -> Result<Claim, String> {
    if let Some(other) = i.name_in_use_by {
        return Err(format!(
            "node name {} is in use by the agent at {} (generation {}); give this agent another --node-name",
            i.node, other.node_ip, other.generation
        ));
    }
    if let Some(refusal) = i.settings_refusal {
        return Err(refusal.to_string());
    }
    let held = match i.phase {
        Phase::Waiting => {
            return Err("waiting for gossip membership to settle before choosing a PodCIDR".into());
        }
        Phase::Claiming { claim, .. } => {
            return Err(format!("claiming PodCIDR {} until it has propagated without a better claim", claim.cidr));
        }
        Phase::Blocked { claim, winner } => {
            return Err(format!(
                "PodCIDR {} (--pod-cidr) is held by node {winner}, whose claim wins; set another --pod-cidr",
                claim.cidr
            ));
        }
        Phase::Exhausted(e) => return Err(e.to_string()),
        Phase::Held { claim } => *claim,
    };
    if let Some(c) = i.conflicts.iter().find(|c| c.cidr == held.cidr && c.winner != i.node) {
        return Err(format!(
            "PodCIDR {} is also claimed by {}, whose claim wins; set another --pod-cidr",
            c.cidr, c.winner
        ));
    }
    Ok(held)
}

/// The node serves pods only when it serves a block of every family of the cluster (a pod
/// gets an address of each); else the first family's reason.
pub fn serving_all<'a>(inputs: impl IntoIterator<Item = ServingInput<'a>>) -> Result<Vec<Claim>, String> {
    inputs.into_iter().map(|i| serving(&i)).collect()
}

/// What readiness depends on, in the order it is checked.
#[derive(Debug, Clone, Copy)]
pub struct ReadinessInput<'a> {
    pub serving: &'a Result<Vec<Claim>, String>,
    /// The last failure writing the node's files, if the last attempt failed.
    pub files_error: Option<&'a str>,
    pub files_written: bool,
    pub membership_settled: bool,
    pub last_reconcile: Option<&'a ReconcileStatus>,
}

/// Ready: the node serves its PodCIDR, its files are written, and the last reconcile
/// succeeded. Otherwise the first reason that applies.
pub fn readiness(i: &ReadinessInput<'_>) -> Result<(), String> {
    i.serving.as_ref().map_err(Clone::clone)?;
    if let Some(e) = i.files_error {
        return Err(format!("cannot write the node's files: {e}"));
    }
    if !i.files_written {
        return Err("node state file not written yet".into());
    }
    if !i.membership_settled {
        return Err("waiting for gossip membership to settle before programming peers".into());
    }
    match i.last_reconcile {
        None => Err("datapath not reconciled yet".into()),
        Some(ReconcileStatus { error: Some(e), .. }) => Err(format!("last reconcile failed: {e}")),
        Some(_) => Ok(()),
    }
}

/// Up to this many nodes `status --cluster` draws a matrix; beyond, only the failing pairs.
pub const MATRIX_NODES: usize = 16;

/// The whole cluster's paths as every node reports them (`weft-agent status --cluster`): a
/// matrix for small clusters, then every failing pair with its state.
pub fn render_cluster(s: &Status) -> String {
    let mut reports: Vec<(&str, Option<&Summary>)> = vec![(s.node.name.as_str(), Some(&s.node.dataplane))];
    reports.extend(s.peers.iter().map(|p| (p.name.as_str(), p.report.as_ref())));
    let names: Vec<&str> = reports.iter().map(|(n, _)| *n).collect();
    let mut out = String::new();
    if names.len() <= MATRIX_NODES {
        let width = names.iter().map(|n| n.len()).chain([14]).max().unwrap_or(14);
        let _ = writeln!(
            out,
            "{:<width$}  {}",
            "FROM \\ TO",
            names.iter().map(|n| format!("{n:<width$}")).collect::<String>().trim_end()
        );
        for (from, report) in &reports {
            let cells: String = names
                .iter()
                .map(|to| {
                    let cell = match report {
                        _ if to == from => "·",
                        None => "?",
                        Some(r) => r.failing.iter().find(|(p, _)| p == to).map_or("ok", |(_, st)| st.as_str()),
                    };
                    format!("{cell:<width$}")
                })
                .collect();
            let _ = writeln!(out, "{from:<width$}  {}", cells.trim_end());
        }
        let _ = writeln!(out, "(ok: not reported failing; ?: no results published by that node)");
    }
    let mut failing = 0;
    for (from, report) in &reports {
        match report {
            None => {
                let _ = writeln!(out, "{from}: publishes no probe results (an older agent, or just started)");
            }
            Some(r) => {
                for (to, state) in &r.failing {
                    let _ = writeln!(out, "{from} -> {to}: {}", state.as_str());
                }
                let unlisted = r.failing_count as usize - r.failing.len();
                if unlisted > 0 {
                    let _ = writeln!(out, "{from} -> {unlisted} more peer(s) failing, not named (summary size bound)");
                }
                failing += r.failing_count as usize;
            }
        }
    }
    let _ = writeln!(out, "{} node(s), {failing} failing path(s)", names.len());
    out
}

fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// Underlay addresses for a table cell: the IPv4 (or only) one and the IPv6 one, deduplicated.
/// An address or block with its IPv6 counterpart, when that is another one: `a,b`.
fn ips<T: std::fmt::Display + PartialEq>(primary: Option<T>, v6: Option<T>) -> String {
    match (primary, v6) {
        (Some(p), Some(v6)) if p != v6 => format!("{p},{v6}"),
        (Some(p), _) => p.to_string(),
        (None, _) => "-".to_string(),
    }
}

/// The human rendering printed by `weft-agent status`.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let n = &s.node;
    let _ = writeln!(
        out,
        "node {}  ip {}  podCIDR {}  vtep {}  mtu {}  {}",
        n.name,
        ips(Some(n.node_ip), n.node_ip6),
        ips(n.pod_cidr, n.pod_cidr6),
        n.vtep_mac,
        n.mtu,
        if n.ready { "ready" } else { "NOT READY" }
    );
    if let Some(reason) = &n.not_ready_reason {
        let _ = writeln!(out, "  not ready: {reason}");
    }
    for other in &n.name_in_use_by {
        let role =
            if other.holds_the_name { "holds it; this agent serves nothing" } else { "refused; this agent keeps it" };
        let _ = writeln!(out, "  node name also used by the agent at {}: {role}", other.node_ip);
    }
    for ipam in n.ipam.iter().filter(|i| i.total > 0) {
        let _ = writeln!(out, "  ipam: {} of {} {} pod addresses in use", ipam.in_use, ipam.total, ipam.family);
    }
    if let Some(why) = &n.isolated {
        let _ = writeln!(out, "  ISOLATED: {why}");
    }
    if let Some(suspected) = n.suspected_partition {
        let _ = writeln!(
            out,
            "  SUSPECTED PARTITION: {suspected} member(s) suspected by their monitors at once; nobody is withdrawn until \
             the suspicions clear or {} s pass",
            crate::gossip::monitors::HOLD_LIMIT.as_secs()
        );
    }
    if let Some(s) = &n.stranded_pods {
        let _ = writeln!(out, "  {} pod address(es) stranded: {}", s.count, s.reason);
    }
    let header =
        ["PEER", "NODE IP", "POD CIDR", "VTEP MAC", "STATE", "PATH", "PROGRAMMED", "DATAPLANE", "LAST SEEN", "NOTE"];
    let rows: Vec<[String; 10]> = s
        .peers
        .iter()
        .map(|p| {
            [
                p.name.clone(),
                ips(p.node_ip, p.node_ip6),
                ips(p.pod_cidr, p.pod_cidr6),
                or_dash(p.vtep_mac),
                match p.state {
                    PeerState::Alive => "alive".into(),
                    PeerState::Dead => "dead".into(),
                },
                or_dash(p.path.map(|path| {
                    let how = match path {
                        PeerPath::Vxlan => "vxlan",
                        PeerPath::Direct => "direct",
                    };
                    // IPv4 is the default, so tables of IPv4 clusters read as before.
                    match p.underlay_family {
                        Some(Family::Ipv6) => format!("{how}/IPv6"),
                        _ => how.to_string(),
                    }
                })),
                if p.programmed { "yes" } else { "no" }.into(),
                p.dataplane.state.as_str().into(),
                or_dash(p.last_seen.as_deref()),
                p.note.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut line = |cells: &[String]| {
        let text: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    if rows.is_empty() {
        line(&["no peers".to_string()]);
    } else {
        line(&header.map(String::from));
        for row in &rows {
            line(row);
        }
    }
    for p in &s.peers {
        if let Some(cause) = &p.dataplane.cause {
            let _ = writeln!(out, "dataplane to {}: {}: {cause}", p.name, p.dataplane.state.as_str());
        }
    }
    for c in &s.conflicts {
        let _ = writeln!(out, "conflict: {} won by {} over {}", c.pod_cidr, c.winner, c.losers.join(", "));
    }
    match &s.last_reconcile {
        None => {
            let _ = writeln!(out, "last reconcile: none yet");
        }
        Some(r) => {
            let _ = writeln!(
                out,
                "last reconcile: {} ({} ms): {}",
                r.at,
                r.duration_ms,
                r.error.as_deref().unwrap_or("ok")
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::allocation::{AllocationError, Claim, ClaimKind};
    use crate::peers::Peer;
    use crate::probe::verdict::PathState;
    use crate::validate::{Announcement, Rejection};
    use weft_overlay::underlay::PathChoice;

    /// A peer's row when it claims no block another node's claim beats.
    fn row_of(
        peer: &Peer,
        verdict: &Result<(), Skip>,
        path: Option<PathChoice>,
        programmed: bool,
        last_seen: Option<SystemTime>,
        dataplane: Dataplane,
    ) -> PeerStatus {
        let d = Decision { peer, path, verdict: verdict.clone(), unrouted: vec![] };
        peer_status(&d, programmed, last_seen, Arc::new(dataplane))
    }

    fn claim(cidr: &str, kind: ClaimKind) -> Claim {
        Claim { cidr: cidr.parse().unwrap(), kind, since_ms: 1 }
    }

    fn sample_node() -> NodeStatus {
        NodeStatus {
            name: "a".into(),
            node_ip: "192.0.2.1".parse().unwrap(),
            node_ip6: None,
            pod_cidr: None,
            pod_cidr6: None,
            vtep_mac: Mac::derived("a"),
            mtu: 1450,
            ready: true,
            not_ready_reason: None,
            name_in_use_by: vec![],
            stranded_pods: None,
            isolated: None,
            suspected_partition: None,
            dataplane: Summary::default(),
            ipam: Vec::new(),
        }
    }

    fn ok_reconcile() -> ReconcileStatus {
        ReconcileStatus { at: "2024-01-01T00:00:00.000Z".into(), duration_ms: 3, error: None }
    }

    #[test]
    fn serving_needs_a_held_uncontested_block_under_a_name_nobody_else_holds() {
        let held_claim = claim("10.244.1.0/24", ClaimKind::Confirmed);
        let held = Phase::Held { claim: held_claim };
        let base =
            ServingInput { node: "me", phase: &held, conflicts: &[], name_in_use_by: None, settings_refusal: None };
        assert_eq!(serving(&base), Ok(held_claim));
        let waiting = Phase::Waiting;
        let claiming = Phase::Claiming {
            claim: claim("10.244.1.0/24", ClaimKind::Claiming),
            confirm_at: tokio::time::Instant::now(),
        };
        let blocked = Phase::Blocked { claim: claim("10.244.77.0/24", ClaimKind::Claiming), winner: "n2".into() };
        let exhausted = Phase::Exhausted(AllocationError::Exhausted {
            pool: "10.244.0.0/24".parse().unwrap(),
            prefix: 24,
            blocks: 1,
        });
        let lost =
            [Conflict { cidr: "10.244.1.0/24".parse().unwrap(), winner: "other".into(), losers: vec!["me".into()] }];
        let namesake = Namesake {
            node_ip: "198.51.100.7".parse().unwrap(),
            generation: 9,
            liveness: Liveness::Alive,
            established: true,
            refused: false,
        };
        let refusal = Refusal {
            node: "n1".into(),
            generation: 3,
            rejection: Rejection::VxlanPortMismatch { ours: 8472, theirs: 4789 },
        };
        let cases: Vec<(ServingInput<'_>, &str)> = vec![
            (ServingInput { phase: &waiting, ..base }, "settle"),
            (ServingInput { phase: &claiming, ..base }, "claiming PodCIDR 10.244.1.0/24"),
            (ServingInput { phase: &blocked, ..base }, "PodCIDR 10.244.77.0/24 (--pod-cidr) is held by node n2"),
            (ServingInput { phase: &exhausted, ..base }, "exhausted"),
            (ServingInput { conflicts: &lost, ..base }, "also claimed by other"),
            (
                ServingInput { name_in_use_by: Some(&namesake), ..base },
                "node name me is in use by the agent at 198.51.100.7",
            ),
            (
                ServingInput { settings_refusal: Some(&refusal), ..base },
                "settings are not the cluster's (as node n1, the earliest running, announces them): \
                 VXLAN port 4789 differs from ours (8472)",
            ),
        ];
        for (input, expected) in cases {
            let reason = serving(&input).unwrap_err();
            assert!(reason.contains(expected), "{reason:?} lacks {expected:?}");
        }
    }

    #[test]
    fn readiness_names_the_first_thing_missing() {
        let ok = ok_reconcile();
        let failed = ReconcileStatus { error: Some("boom".into()), ..ok_reconcile() };
        let serves = Ok(vec![claim("10.244.1.0/24", ClaimKind::Confirmed)]);
        let base = ReadinessInput {
            serving: &serves,
            files_error: None,
            files_written: true,
            membership_settled: true,
            last_reconcile: Some(&ok),
        };
        assert_eq!(readiness(&base), Ok(()));
        let refused = Err("name in use".to_string());
        let cases: Vec<(ReadinessInput<'_>, &str)> = vec![
            (ReadinessInput { serving: &refused, ..base }, "name in use"),
            (ReadinessInput { files_error: Some("EROFS"), ..base }, "EROFS"),
            (ReadinessInput { files_written: false, ..base }, "not written"),
            (ReadinessInput { membership_settled: false, ..base }, "programming peers"),
            (ReadinessInput { last_reconcile: None, ..base }, "not reconciled"),
            (ReadinessInput { last_reconcile: Some(&failed), ..base }, "failed: boom"),
        ];
        for (input, expected) in cases {
            let reason = readiness(&input).unwrap_err();
            assert!(reason.contains(expected), "{reason:?} lacks {expected:?}");
        }
    }

    fn vxlan4() -> PathChoice {
        PathChoice { family: Family::Ipv4, endpoint: "192.0.2.2".parse().unwrap(), path: PeerPath::Vxlan }
    }

    #[test]
    fn a_peer_over_an_ipv6_underlay_or_sharing_none_shows_it() {
        let a = Announcement {
            node_ips: "2001:db8:2::2".parse().unwrap(),
            vtep_mac: Mac::derived("b"),
            claims: vec![claim("10.244.2.0/24", ClaimKind::Confirmed)],
        };
        let v6 = PathChoice { family: Family::Ipv6, endpoint: "2001:db8:2::2".parse().unwrap(), path: PeerPath::Vxlan };
        let row =
            row_of(&peer("b", Liveness::Alive, Ok(a.clone())), &Ok(()), Some(v6), true, None, Dataplane::unknown());
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!((json["nodeIP"].as_str(), json["nodeIP6"].as_str()), (Some("2001:db8:2::2"), Some("2001:db8:2::2")));
        assert_eq!(json["underlayFamily"], "ipv6");
        let none = weft_overlay::underlay::NoSharedFamily { local: "192.0.2.1".parse().unwrap(), peer: a.node_ips };
        let row = row_of(
            &peer("b", Liveness::Alive, Ok(a)),
            &Err(Skip::NoSharedFamily(none)),
            None,
            false,
            None,
            Dataplane::unknown(),
        );
        assert_eq!(row.note.as_deref(), Some("no shared underlay family (this node: IPv4; peer: IPv6)"));
        assert_eq!((row.path, row.underlay_family), (None, None));
        let status = Status {
            node: NodeStatus { node_ip: "192.0.2.1".parse().unwrap(), node_ip6: None, ..sample_node() },
            peers: vec![
                row,
                PeerStatus {
                    name: "c".into(),
                    underlay_family: Some(Family::Ipv6),
                    path: Some(PeerPath::Vxlan),
                    ..row_of(
                        &peer("c", Liveness::Alive, Err(Rejection::NotAnnounced("x"))),
                        &Ok(()),
                        None,
                        true,
                        None,
                        Dataplane::unknown(),
                    )
                },
            ],
            conflicts: vec![],
            last_reconcile: None,
        };
        let table = render(&status);
        assert!(table.contains("no shared underlay family (this node: IPv4; peer: IPv6)"), "{table}");
        assert!(table.contains("vxlan/IPv6"), "{table}");
    }

    fn peer(name: &str, liveness: Liveness, announcement: Result<Announcement, Rejection>) -> Peer {
        Peer { name: name.into(), generation: 1, liveness, established: true, announcement, report: None }
    }

    #[test]
    fn a_peer_row_names_each_lost_block_and_its_winner() {
        let a = Announcement {
            node_ips: "192.0.2.2".parse().unwrap(),
            vtep_mac: Mac::derived("b"),
            claims: vec![
                claim("10.244.2.0/24", ClaimKind::Confirmed),
                claim("fd00:10:244:1::/64", ClaimKind::Claiming),
            ],
        };
        let b = peer("b", Liveness::Alive, Ok(a));
        let lost = |cidr: &str| {
            let cidr: IpNet = cidr.parse().unwrap();
            (cidr, Skip::LostConflict { cidr, winner: "a".into() })
        };
        let v6_lost =
            Decision { peer: &b, path: Some(vxlan4()), verdict: Ok(()), unrouted: vec![lost("fd00:10:244:1::/64")] };
        let row = peer_status(&v6_lost, true, None, Arc::new(Dataplane::unknown()));
        assert!(row.programmed);
        assert_eq!(row.note.as_deref(), Some("lost its PodCIDR claim fd00:10:244:1::/64 to a"));
        let status = Status { node: sample_node(), peers: vec![row], conflicts: vec![], last_reconcile: None };
        let line = render(&status).lines().find(|l| l.starts_with("b ")).unwrap().to_string();
        for cell in ["10.244.2.0/24,fd00:10:244:1::/64", "yes", "lost its PodCIDR claim fd00:10:244:1::/64 to a"] {
            assert!(line.contains(cell), "{line}");
        }
        // Both lost: skipped with the first, each named once.
        let unrouted = vec![lost("10.244.2.0/24"), lost("fd00:10:244:1::/64")];
        let both = Decision { verdict: Err(unrouted[0].1.clone()), unrouted, ..v6_lost.clone() };
        assert_eq!(
            peer_status(&both, false, None, Arc::new(Dataplane::unknown())).note.as_deref(),
            Some("lost its PodCIDR claim 10.244.2.0/24 to a; lost its PodCIDR claim fd00:10:244:1::/64 to a")
        );
        // Another reason comes first.
        let dead = Decision { verdict: Err(Skip::NotAlive(Liveness::Dead)), ..v6_lost };
        let note = peer_status(&dead, false, None, Arc::new(Dataplane::unknown())).note.unwrap();
        assert_eq!(
            note,
            "declared dead by its monitors (or the failure detector, for a node of the previous release); lost its PodCIDR claim fd00:10:244:1::/64 to a"
        );
    }

    #[test]
    fn peer_rows_carry_the_spec_fields_and_a_note_when_not_programmed() {
        let a = Announcement {
            node_ips: "192.0.2.2".parse().unwrap(),
            vtep_mac: Mac::derived("b"),
            claims: vec![claim("10.244.2.0/24", ClaimKind::Confirmed)],
        };
        let seen = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let up = Dataplane {
            state: PathState::Ok,
            since: Some("2023-11-14T22:13:20.000Z".into()),
            rtt_p50_ms: Some(0.25),
            largest_size: Some(1450),
            needed_size: Some(1450),
            loss: Some(0.0),
            ..Dataplane::unknown()
        };
        let row = row_of(&peer("b", Liveness::Alive, Ok(a.clone())), &Ok(()), Some(vxlan4()), true, Some(seen), up);
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "name": "b", "nodeIP": "192.0.2.2", "nodeIP6": null, "underlayFamily": "ipv4", "podCIDR": "10.244.2.0/24", "podCIDR6": null,
                "vtepMAC": Mac::derived("b").to_string(), "state": "alive", "path": "vxlan",
                "programmed": true, "lastSeen": "2023-11-14T22:13:20.000Z", "note": null,
                "dataplane": {
                    "state": "ok", "cause": null, "answering": false, "since": "2023-11-14T22:13:20.000Z", "rttP50Ms": 0.25,
                    "rttP99Ms": null, "loss": 0.0, "largestSize": 1450, "neededSize": 1450
                },
                "report": null
            })
        );
        let rejected = row_of(
            &peer("x", Liveness::Alive, Err(Rejection::VniMismatch { ours: 1, theirs: 2 })),
            &Err(Skip::Rejected(Rejection::VniMismatch { ours: 1, theirs: 2 })),
            Some(vxlan4()),
            false,
            None,
            Dataplane::unknown(),
        );
        assert_eq!(rejected.node_ip, None);
        assert_eq!(rejected.path, None);
        assert_eq!(rejected.note.as_deref(), Some("rejected: VNI 2 differs from ours (1)"));
        let leaving = row_of(
            &peer("l", Liveness::Leaving, Ok(a.clone())),
            &Ok(()),
            Some(vxlan4()),
            true,
            None,
            Dataplane::unknown(),
        );
        assert_eq!(leaving.state, PeerState::Alive);
        assert_eq!(leaving.note.as_deref(), Some("leaving: routes kept until it is confirmed gone"));
        let left = row_of(
            &peer("l", Liveness::Left, Ok(a)),
            &Err(Skip::NotAlive(Liveness::Left)),
            Some(vxlan4()),
            false,
            None,
            Dataplane::unknown(),
        );
        assert_eq!(left.state, PeerState::Dead);
        assert_eq!(left.note.as_deref(), Some("left the cluster"));
    }

    #[test]
    fn the_document_uses_the_spec_field_names_and_renders_as_a_table() {
        let status = Status {
            node: NodeStatus {
                name: "a".into(),
                node_ip: "192.0.2.1".parse().unwrap(),
                node_ip6: Some("2001:db8:1::1".parse().unwrap()),
                pod_cidr: Some("10.244.1.0/24".parse().unwrap()),
                pod_cidr6: None,
                vtep_mac: Mac::derived("a"),
                mtu: 1450,
                ready: false,
                not_ready_reason: Some("last reconcile failed: x".into()),
                name_in_use_by: vec![NamesakeStatus {
                    node_ip: "198.51.100.7".parse().unwrap(),
                    generation: 4,
                    holds_the_name: false,
                }],
                stranded_pods: Some(StrandedPods {
                    addresses: vec!["10.244.9.2".parse().unwrap()],
                    count: 1,
                    reason: "10.244.9.0/24 is held by n2".into(),
                }),
                isolated: Some("no other node heard".into()),
                suspected_partition: Some(12),
                dataplane: Summary::default(),
                ipam: vec![IpamUse { family: Family::Ipv4, in_use: 3, total: 253 }],
            },
            peers: vec![PeerStatus {
                name: "b".into(),
                node_ip: Some("192.0.2.2".parse().unwrap()),
                node_ip6: None,
                underlay_family: Some(Family::Ipv4),
                pod_cidr: Some("10.244.2.0/24".parse().unwrap()),
                pod_cidr6: None,
                vtep_mac: Some(Mac::derived("b")),
                state: PeerState::Alive,
                path: Some(PeerPath::Direct),
                programmed: false,
                last_seen: None,
                note: None,
                dataplane: Arc::new(Dataplane {
                    state: PathState::TunnelBlocked,
                    cause: Some("UDP dropped".into()),
                    ..Dataplane::unknown()
                }),
                report: None,
            }],
            conflicts: vec![ConflictStatus {
                pod_cidr: "10.244.3.0/24".parse().unwrap(),
                winner: "c".into(),
                losers: vec!["d".into()],
            }],
            last_reconcile: Some(ReconcileStatus { error: Some("x".into()), ..ok_reconcile() }),
        };
        let json = serde_json::to_value(&status).unwrap();
        for key in ["name", "nodeIP", "podCIDR", "vtepMAC", "mtu", "ready"] {
            assert!(json["node"].get(key).is_some(), "node.{key}");
        }
        assert_eq!(json["lastReconcile"]["durationMs"], 3);
        assert_eq!(json["conflicts"][0]["podCIDR"], "10.244.3.0/24");
        let back: Status = serde_json::from_value(json).unwrap();
        assert_eq!(back, status);

        let table = render(&status);
        assert!(table.starts_with("node a  ip 192.0.2.1,2001:db8:1::1  podCIDR 10.244.1.0/24"), "{table}");
        assert!(table.contains("NOT READY"));
        assert!(table.contains("not ready: last reconcile failed: x"));
        assert!(table.contains("node name also used by the agent at 198.51.100.7: refused; this agent keeps it"));
        assert!(table.contains("1 pod address(es) stranded: 10.244.9.0/24 is held by n2"));
        assert!(table.contains("ISOLATED: no other node heard"));
        assert!(table.contains("SUSPECTED PARTITION: 12 member(s) suspected"), "{table}");
        assert!(table.contains("ipam: 3 of 253 IPv4 pod addresses in use"));
        let row = table.lines().find(|l| l.starts_with("b ")).unwrap();
        for cell in ["192.0.2.2", "10.244.2.0/24", "alive", "direct", "no", "tunnel-blocked"] {
            assert!(row.contains(cell), "{row}");
        }
        assert!(table.contains("conflict: 10.244.3.0/24 won by c over d"));
        assert!(table.contains("dataplane to b: tunnel-blocked: UDP dropped"), "{table}");

        let mut cluster = status.clone();
        cluster.node.dataplane = Summary::of([("b", PathState::TunnelBlocked)]);
        let view = render_cluster(&cluster);
        assert!(view.contains("a -> b: tunnel-blocked"), "{view}");
        assert!(view.contains("b: publishes no probe results"), "{view}");
        assert!(view.ends_with("2 node(s), 1 failing path(s)\n"), "{view}");
        let row = view.lines().find(|l| l.starts_with("a ")).unwrap();
        assert!(row.contains("tunnel-blocked") && row.contains('·'), "{row}");
        let many: Vec<PeerStatus> = (0..MATRIX_NODES)
            .map(|i| PeerStatus { name: format!("p{i}"), report: Some(Summary::default()), ..cluster.peers[0].clone() })
            .collect();
        let large = Status { peers: many, ..cluster };
        let view = render_cluster(&large);
        assert!(!view.contains("FROM"), "no matrix beyond {MATRIX_NODES} nodes: {view}");
        assert!(view.contains("a -> b: tunnel-blocked"));
        assert!(table.contains("last reconcile: 2024-01-01T00:00:00.000Z (3 ms): x"));

        // Dual-stack: both blocks of the node and of each peer, and in the JSON document.
        let mut dual = status.clone();
        dual.node.pod_cidr6 = Some("fd00:10:244:1::/64".parse().unwrap());
        dual.peers[0].pod_cidr6 = Some("fd00:10:244:2::/64".parse().unwrap());
        let table = render(&dual);
        assert!(table.contains("podCIDR 10.244.1.0/24,fd00:10:244:1::/64"), "{table}");
        let row = table.lines().find(|l| l.starts_with("b ")).unwrap();
        assert!(row.contains("10.244.2.0/24,fd00:10:244:2::/64"), "{row}");
        let json = serde_json::to_value(&dual).unwrap();
        assert_eq!(json["node"]["podCIDR6"], "fd00:10:244:1::/64");
        assert_eq!(json["peers"][0]["podCIDR6"], "fd00:10:244:2::/64");
    }
}
