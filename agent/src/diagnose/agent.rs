//! Findings from what the agent reports: its `/status` document and its `/metrics` text.

use std::net::{IpAddr, SocketAddr};

use super::{Finding, VxlanPort, or_passed};
use crate::http::status::{NodeStatus, PeerState, PeerStatus, Status};
use crate::probe::verdict::PathState;

/// The metric series counting gossip datagrams sealed with a key this node does not hold.
pub const UNKNOWN_KEY_SERIES: &str = "weft_gossip_datagrams_dropped_total{reason=\"unknown_key\"}";
pub const STALE_SERIES: &str = "weft_gossip_datagrams_dropped_total{reason=\"stale\"}";

/// The agent did not answer: every other agent finding is out of reach.
pub fn unreachable(addr: SocketAddr, error: &str) -> Finding {
    Finding::error(
        "agent",
        format!("the agent does not answer at {addr}: {error}"),
        "is weft-agent running on this node (systemctl status weft-agent)? If it listens elsewhere, pass its \
         --status-addr (or WEFT_STATUS_ADDR). The kernel checks ran without it.",
    )
}

/// Everything `/status` tells; `port` is what a blocked tunnel is reported with.
pub fn status_findings(s: &Status, port: &VxlanPort) -> Vec<Finding> {
    let mut out = vec![readiness(&s.node), isolation(&s.node), stranded(&s.node)];
    out.extend(refused_namesakes(&s.node));
    out.extend(conflicts(s));
    out.extend(unprogrammed(&s.peers));
    out.extend(dataplane(s.node.node_ip, &s.peers, port));
    out.extend(seen_by_peers(s));
    out.extend(last_reconcile(s));
    out
}

/// How the other nodes see this one, from the probe summaries they publish in gossip: a path
/// that only they find broken (ours to them works) points at the direction towards this node.
fn seen_by_peers(s: &Status) -> Vec<Finding> {
    let me = s.node.name.as_str();
    let found: Vec<Finding> = s
        .peers
        .iter()
        .filter_map(|p| {
            let (_, state) = p.report.as_ref()?.failing.iter().find(|(to, _)| to == me)?;
            Some(Finding::error(
                "seen-by-peers",
                format!("peer {} reports its path to this node as {}", p.name, state.as_str()),
                format!(
                    "run `weft-agent diagnose` on {} for its view; a firewall on this node or in front of it may drop \
                     UDP traffic to it",
                    p.name
                ),
            ))
        })
        .collect();
    let reporting = s.peers.iter().filter(|p| p.report.is_some()).count();
    or_passed(found, "seen-by-peers", format!("{reporting} peer(s) report their path to this node working"))
}

fn readiness(node: &NodeStatus) -> Finding {
    if node.ready {
        return Finding::passed("ready", format!("node {} is ready", node.name));
    }
    let reason = node.not_ready_reason.as_deref().unwrap_or("no reason given");
    // The agent's reasons put what to do after "; " when it knows.
    let fix = reason.split_once("; ").map_or(
        "if it stays, see the agent log and docs/operations.md, \"What to do when…\" (\"The node stays not ready\")",
        |(_, fix)| fix,
    );
    Finding::error("ready", format!("node {} is not ready: {reason}", node.name), fix)
}

fn isolation(node: &NodeStatus) -> Finding {
    match &node.isolated {
        None => Finding::passed("isolated", "other nodes are heard"),
        Some(why) => Finding::error(
            "isolated",
            format!("this node is isolated: {why}"),
            "allow gossip (the agent's --gossip-port, default UDP 8473) both ways between the node IPs; check \
             that the other nodes run",
        ),
    }
}

fn stranded(node: &NodeStatus) -> Finding {
    match &node.stranded_pods {
        None => Finding::passed("stranded-pods", "every pod address is inside this node's PodCIDR"),
        Some(s) => {
            let shown: Vec<String> = s.addresses.iter().map(ToString::to_string).collect();
            Finding::error(
                "stranded-pods",
                format!(
                    "{} pod address(es) outside this node's PodCIDR cannot reach other nodes ({}): {}",
                    s.count,
                    shown.join(", "),
                    s.reason
                ),
                "recreate those pods: they get an address of this node's current PodCIDR",
            )
        }
    }
}

/// Other agents announcing this node's name that this one refused: they serve nothing. (One that
/// holds the name makes this node not ready, which [`readiness`] reports.)
fn refused_namesakes(node: &NodeStatus) -> Vec<Finding> {
    node.name_in_use_by
        .iter()
        .filter(|other| !other.holds_the_name)
        .map(|other| {
            Finding::warning(
                "node-name",
                format!(
                    "the agent at {} also announces the name {}; this node keeps it, that one serves nothing",
                    other.node_ip, node.name
                ),
                format!("give the agent at {} another --node-name (a cloned machine?)", other.node_ip),
            )
        })
        .collect()
}

/// A conflict that makes this node lose its block also makes it not ready; this names the nodes.
fn conflicts(s: &Status) -> Vec<Finding> {
    let found = s
        .conflicts
        .iter()
        .map(|c| {
            Finding::warning(
                "conflicts",
                format!(
                    "PodCIDR {} is claimed by {} and {}; {} keeps it",
                    c.pod_cidr,
                    c.winner,
                    c.losers.join(", "),
                    c.winner
                ),
                format!(
                    "give {} another --pod-cidr (or none, to allocate one); every node needs the same --cluster-cidr \
                     and --node-cidr-prefix",
                    c.losers.join(", ")
                ),
            )
        })
        .collect();
    or_passed(found, "conflicts", "no PodCIDR conflicts")
}

fn unprogrammed(peers: &[PeerStatus]) -> Vec<Finding> {
    let alive = peers.iter().filter(|p| p.state == PeerState::Alive);
    let found = alive
        .clone()
        .filter(|p| !p.programmed)
        .map(|p| {
            Finding::error(
                "peers",
                format!(
                    "peer {} ({}) is alive but not programmed: {}",
                    p.name,
                    or_unknown(p.node_ip),
                    p.note.as_deref().unwrap_or("no reason given")
                ),
                "a rejected peer usually runs with another --vni, --vxlan-port, --cluster-cidr or \
                 --node-cidr-prefix, or announces a wrong --node-ip: align that node's settings with this one's \
                 (docs/troubleshooting.md, \"Peer rejected\"); other notes clear within seconds",
            )
        })
        .collect();
    or_passed(found, "peers", format!("all {} alive peer(s) are programmed", alive.count()))
}

fn or_unknown(ip: Option<IpAddr>) -> String {
    ip.map_or_else(|| "address unknown".into(), |ip| ip.to_string())
}

/// Each peer whose path does not carry pods' packets, with the cause turned into what to do.
fn dataplane(node_ip: IpAddr, peers: &[PeerStatus], port: &VxlanPort) -> Vec<Finding> {
    let found: Vec<Finding> = peers.iter().filter_map(|p| broken_path(node_ip, p, port)).collect();
    let count = |state: PathState| peers.iter().filter(|p| p.dataplane.state == state).count();
    let passed = match (count(PathState::Ok), count(PathState::Unknown)) {
        (0, 0) => "no peers to probe".to_string(),
        (ok, 0) => format!("the paths to {ok} peer(s) carry full-size packets"),
        (ok, unknown) => format!(
            "the paths to {ok} peer(s) carry full-size packets; {unknown} not judged yet (probed too briefly, or not \
             programmed)"
        ),
    };
    or_passed(found, "dataplane", passed)
}

fn broken_path(node_ip: IpAddr, p: &PeerStatus, port: &VxlanPort) -> Option<Finding> {
    let peer_ip = or_unknown(p.node_ip);
    let (message, fix) = match (p.dataplane.state, family_only(p)) {
        (PathState::Ok | PathState::Unknown, _) => return None,
        (PathState::TunnelBlocked | PathState::OneWay, Some((broken, working))) => (
            format!(
                "peer {}: {broken} pods' packets do not pass the tunnel while {working} pods' do: the VXLAN port is \
                     open, {broken} is dropped or misrouted at one end ({})",
                p.name,
                p.dataplane.cause.as_deref().unwrap_or("no cause given")
            ),
            format!(
                "check {broken} on this node and on {}: weft's routes and neighbours to the pod blocks (`ip route \
                     show proto 87`, `ip neigh`) and any firewall rule for {broken}",
                p.name
            ),
        ),
        (PathState::TunnelBlocked, _) => {
            let udp = format!("UDP {} from {node_ip} to {peer_ip}", port.port);
            (
                format!(
                    "peer {}: {udp} is dropped on the path: the node answers outside the tunnel, nothing passes \
                     through it ({} is {})",
                    p.name, port.port, port.from
                ),
                format!("allow {udp}, and back, in the firewall or security group"),
            )
        }
        (PathState::Mtu, _) => {
            let dp = &p.dataplane;
            let largest = dp.largest_size.map_or_else(|| "not measured yet".into(), |s| format!("{s} bytes"));
            let needed = dp.needed_size.map_or_else(|| "the pod MTU".into(), |s| format!("{s} bytes"));
            let fix = match dp.largest_size {
                Some(size) => format!(
                    "set --mtu to at most {size} on every node (pods take it when recreated), or raise the MTU of the \
                     underlay path"
                ),
                None => "lower --mtu on every node to the largest size that passes (diagnose names it once \
                         measured, within seconds), or raise the MTU of the underlay path"
                    .into(),
            };
            (
                format!(
                    "peer {}: packets of {needed} do not pass the tunnel to {peer_ip}; the largest that does is \
                     {largest}",
                    p.name
                ),
                fix,
            )
        }
        (PathState::OneWay, _) => {
            let udp = format!("UDP {} from {node_ip} to {peer_ip}", port.port);
            (
                format!(
                    "peer {}: {udp} is dropped on the path, while the other direction passes: the peer's probes \
                     reach this node, this node's get no answer ({} is {})",
                    p.name, port.port, port.from
                ),
                format!("allow {udp} in the firewall or security group"),
            )
        }
        (PathState::Unreachable, _) => (
            format!("peer {}: neither its node at {peer_ip} nor its tunnel answers", p.name),
            format!(
                "check that {} is up and that the underlay routes {node_ip} to {peer_ip} (ICMP filtered on the path \
                 looks the same)",
                p.name
            ),
        ),
    };
    Some(Finding::error("dataplane", message, fix))
}

/// A peer whose tunnel carries one pod family and not another: (the broken family, the working
/// ones), as words.
fn family_only(p: &PeerStatus) -> Option<(String, String)> {
    let families = &p.dataplane.families;
    let named = |ok: bool| -> Vec<String> {
        families.iter().filter(|(_, d)| (d.state == PathState::Ok) == ok).map(|(f, _)| f.to_string()).collect()
    };
    let (broken, working) = (named(false), named(true));
    (!broken.is_empty() && !working.is_empty()).then(|| (broken.join(" and "), working.join(" and ")))
}

/// A failed last reconcile, unless it is already the reason the node is not ready.
fn last_reconcile(s: &Status) -> Option<Finding> {
    let reconcile = s.last_reconcile.as_ref()?;
    let Some(error) = &reconcile.error else {
        return Some(Finding::passed("reconcile", format!("last reconcile succeeded at {}", reconcile.at)));
    };
    let message = format!("last reconcile failed: {error}");
    (s.node.not_ready_reason.as_deref() != Some(&message)).then(|| {
        Finding::error(
            "reconcile",
            format!("{message} (at {})", reconcile.at),
            "the error names the kernel object; the agent retries with backoff — see its log for details",
        )
    })
}

/// Gossip datagrams refused because they were sealed with a key this node does not hold, from
/// the agent's `/metrics` text (or why it could not be read).
pub fn gossip_keys(metrics: Result<&str, &str>) -> Finding {
    let text = match metrics {
        Ok(text) => text,
        Err(e) => {
            return Finding::warning(
                "gossip-keys",
                format!("cannot read the agent's /metrics: {e}"),
                "run diagnose again; if it persists, look at the agent log",
            );
        }
    };
    match counter(text, UNKNOWN_KEY_SERIES) {
        None => Finding::warning(
            "gossip-keys",
            format!("the agent's /metrics has no {UNKNOWN_KEY_SERIES}"),
            "run the diagnose of the same version as the agent",
        ),
        Some(0) => Finding::passed("gossip-keys", "no gossip datagram refused for an unknown key"),
        // A count since the agent started: it cannot tell a key missing now from one missing
        // during a finished rotation, so it warns and does not fail.
        Some(n) => Finding::warning(
            "gossip-keys",
            format!(
                "{n} gossip datagram(s) refused since the agent started: sealed with a cluster key this node does not \
                 hold"
            ),
            "if the count still grows, another node seals with a key missing from this node's --cluster-key-file \
             (a rotation step missed, or another cluster): compare weft_gossip_keys on both nodes and add the key \
             to every node's key file (SIGHUP reloads it)",
        ),
    }
}

/// The value of one series in a metrics text.
fn counter(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse::<u64>().ok())
}

/// Clock skew beyond the gossip replay window: every sealed datagram of a node whose clock is
/// that far off is refused as stale, so the count names it (a warning: it runs since start).
pub fn clock_skew(metrics: Result<&str, &str>) -> Finding {
    let Ok(text) = metrics else {
        return Finding::warning("clock", "cannot read the agent's /metrics", "run diagnose again");
    };
    match counter(text, STALE_SERIES) {
        None | Some(0) => {
            Finding::passed("clock", "no gossip datagram refused as stale (no clock skew beyond the replay window)")
        }
        Some(n) => Finding::warning(
            "clock",
            format!(
                "{n} gossip datagram(s) refused as stale since the agent started: a node's clock differs from this \
                 one's by more than --gossip-replay-window (60 s by default), or old datagrams were replayed"
            ),
            "if the count still grows, check time synchronisation on every node (`timedatectl`, chrony or \
             systemd-timesyncd): a node whose clock is that far off cannot take part in sealed gossip",
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use weft_overlay::Mac;
    use weft_overlay::desired::PeerPath;

    use super::*;
    use crate::diagnose::Severity;
    use crate::http::status::{ConflictStatus, NamesakeStatus, ReconcileStatus, StrandedPods};
    use crate::probe::verdict::Dataplane;

    const PORT: VxlanPort = VxlanPort { port: 8472, from: "vxlan0's port" };

    fn peer(name: &str, ip: &str, state: PathState) -> PeerStatus {
        PeerStatus {
            name: name.into(),
            node_ip: Some(ip.parse().unwrap()),
            node_ip6: None,
            underlay_family: Some(weft_overlay::underlay::Family::Ipv4),
            pod_cidr: Some("10.244.2.0/24".parse().unwrap()),
            pod_cidr6: None,
            vtep_mac: Some(Mac::derived(name)),
            state: PeerState::Alive,
            path: Some(PeerPath::Vxlan),
            programmed: true,
            last_seen: None,
            note: None,
            dataplane: Arc::new(Dataplane { state, ..Dataplane::unknown() }),
            report: None,
        }
    }

    fn healthy() -> Status {
        Status {
            node: NodeStatus {
                name: "n1".into(),
                node_ip: "192.0.2.10".parse().unwrap(),
                node_ip6: None,
                pod_cidr: Some("10.244.1.0/24".parse().unwrap()),
                pod_cidr6: None,
                vtep_mac: Mac::derived("n1"),
                mtu: 1450,
                ready: true,
                not_ready_reason: None,
                name_in_use_by: Vec::new(),
                stranded_pods: None,
                isolated: None,
                suspected_partition: None,
                dataplane: Default::default(),
                ipam: Vec::new(),
            },
            peers: vec![peer("n2", "198.51.100.10", PathState::Ok), peer("n3", "192.0.2.11", PathState::Ok)],
            conflicts: Vec::new(),
            last_reconcile: Some(ReconcileStatus {
                at: "2024-01-01T00:00:00.000Z".into(),
                duration_ms: 3,
                error: None,
            }),
        }
    }

    /// The findings of `check` that are not passed.
    fn problems(s: &Status, check: &str) -> Vec<Finding> {
        status_findings(s, &PORT).into_iter().filter(|f| f.check == check && !f.ok).collect()
    }

    fn only(s: &Status, check: &str) -> Finding {
        let mut found = problems(s, check);
        assert_eq!(found.len(), 1, "{found:?}");
        found.remove(0)
    }

    #[test]
    fn a_healthy_node_passes_every_check() {
        let findings = status_findings(&healthy(), &PORT);
        assert!(findings.iter().all(|f| f.ok && f.fix.is_none()), "{findings:?}");
        let checks: Vec<&str> = findings.iter().map(|f| f.check).collect();
        for check in ["ready", "isolated", "stranded-pods", "conflicts", "peers", "dataplane", "reconcile"] {
            assert!(checks.contains(&check), "{check} in {checks:?}");
        }
    }

    #[test]
    fn not_ready_gives_the_reason_and_the_agents_own_fix_when_it_has_one() {
        let mut s = healthy();
        s.node.ready = false;
        s.node.not_ready_reason =
            Some("PodCIDR 10.244.1.0/24 is also claimed by n9, whose claim wins; set another --pod-cidr".into());
        let f = only(&s, "ready");
        assert_eq!(f.severity, Severity::Error);
        assert_eq!(
            f.message,
            "node n1 is not ready: PodCIDR 10.244.1.0/24 is also claimed by n9, whose claim wins; set another --pod-cidr"
        );
        assert_eq!(f.fix.as_deref(), Some("set another --pod-cidr"));
        s.node.not_ready_reason = Some("waiting for gossip membership to settle before choosing a PodCIDR".into());
        assert!(only(&s, "ready").fix.unwrap().contains("What to do when"));
    }

    #[test]
    fn an_isolated_node_is_told_to_open_gossip() {
        let mut s = healthy();
        s.node.isolated = Some("no other node is heard any more".into());
        let f = only(&s, "isolated");
        assert_eq!(f.message, "this node is isolated: no other node is heard any more");
        assert!(f.fix.unwrap().contains("UDP 8473"));
    }

    #[test]
    fn a_refused_namesake_is_a_warning_naming_its_address() {
        let mut s = healthy();
        let other =
            |holds| NamesakeStatus { node_ip: "198.51.100.7".parse().unwrap(), generation: 2, holds_the_name: holds };
        s.node.name_in_use_by = vec![other(false)];
        let f = only(&s, "node-name");
        assert_eq!(f.severity, Severity::Warning);
        assert!(f.message.contains("198.51.100.7") && f.fix.unwrap().contains("--node-name"));
        // One that holds the name makes this node not ready: readiness says it, not this check.
        s.node.name_in_use_by = vec![other(true)];
        assert!(problems(&s, "node-name").is_empty());
    }

    #[test]
    fn stranded_pods_are_counted_and_listed() {
        let mut s = healthy();
        s.node.stranded_pods = Some(StrandedPods {
            addresses: vec!["10.244.9.2".parse().unwrap(), "10.244.9.3".parse().unwrap()],
            count: 2,
            reason: "10.244.9.0/24 is held by n2".into(),
        });
        let f = only(&s, "stranded-pods");
        assert_eq!(
            f.message,
            "2 pod address(es) outside this node's PodCIDR cannot reach other nodes (10.244.9.2, 10.244.9.3): 10.244.9.0/24 is held by n2"
        );
        assert!(f.fix.unwrap().contains("recreate"));
    }

    #[test]
    fn a_conflict_names_who_keeps_the_block_and_who_must_move() {
        let mut s = healthy();
        s.conflicts = vec![ConflictStatus {
            pod_cidr: "10.244.3.0/24".parse().unwrap(),
            winner: "n2".into(),
            losers: vec!["n3".into()],
        }];
        let f = only(&s, "conflicts");
        assert_eq!(f.severity, Severity::Warning);
        assert_eq!(f.message, "PodCIDR 10.244.3.0/24 is claimed by n2 and n3; n2 keeps it");
        assert!(f.fix.unwrap().starts_with("give n3 another --pod-cidr"));
    }

    #[test]
    fn an_alive_peer_not_programmed_is_reported_with_its_note_and_a_dead_one_is_not() {
        let mut s = healthy();
        s.peers[0].programmed = false;
        s.peers[0].note = Some("rejected: VNI 2 differs from ours (1)".into());
        s.peers[1].programmed = false;
        s.peers[1].state = PeerState::Dead;
        let f = only(&s, "peers");
        assert_eq!(
            f.message,
            "peer n2 (198.51.100.10) is alive but not programmed: rejected: VNI 2 differs from ours (1)"
        );
        assert!(f.fix.unwrap().contains("--vni"));
    }

    #[test]
    fn one_family_blocked_while_the_other_passes_points_at_that_family_not_the_port() {
        use weft_overlay::underlay::Family;
        let mut s = healthy();
        let family = |state| Box::new(Dataplane { state, ..Dataplane::unknown() });
        s.peers[0].dataplane = Arc::new(Dataplane {
            state: PathState::TunnelBlocked,
            cause: Some("IPv6 pods: nothing passes the tunnel to fd00:10:244:2::".into()),
            families: [(Family::Ipv4, family(PathState::Ok)), (Family::Ipv6, family(PathState::TunnelBlocked))].into(),
            ..Dataplane::unknown()
        });
        let f = only(&s, "dataplane");
        assert!(
            f.message.starts_with("peer n2: IPv6 pods' packets do not pass the tunnel while IPv4 pods' do"),
            "{}",
            f.message
        );
        assert!(f.message.contains("fd00:10:244:2::") && !f.message.contains("UDP 8472"), "{}", f.message);
        assert!(f.fix.unwrap().starts_with("check IPv6 on this node and on n2"));
    }

    #[test]
    fn a_blocked_tunnel_names_the_port_both_addresses_and_where_the_port_came_from() {
        let mut s = healthy();
        Arc::make_mut(&mut s.peers[0].dataplane).state = PathState::TunnelBlocked;
        let f = only(&s, "dataplane");
        assert_eq!(f.severity, Severity::Error);
        assert!(
            f.message.starts_with("peer n2: UDP 8472 from 192.0.2.10 to 198.51.100.10 is dropped on the path"),
            "{}",
            f.message
        );
        assert!(f.message.contains("8472 is vxlan0's port"));
        assert_eq!(
            f.fix.as_deref(),
            Some("allow UDP 8472 from 192.0.2.10 to 198.51.100.10, and back, in the firewall or security group")
        );
        let default = VxlanPort { port: 4789, from: "the --vxlan-port given" };
        let findings = status_findings(&s, &default);
        let f = findings.iter().find(|f| f.check == "dataplane").unwrap();
        assert!(f.message.contains("UDP 4789 from") && f.message.contains("4789 is the --vxlan-port given"));
    }

    #[test]
    fn a_peer_that_finds_its_path_to_this_node_broken_is_named() {
        use crate::probe::summary::Summary;
        let mut s = healthy();
        s.peers[0].report = Some(Summary::of([("n1", PathState::TunnelBlocked), ("n3", PathState::Ok)]));
        s.peers[1].report = Some(Summary::of([("n1", PathState::Ok)]));
        let f = only(&s, "seen-by-peers");
        assert_eq!(f.message, "peer n2 reports its path to this node as tunnel-blocked");
        s.peers[0].report = Some(Summary::default());
        let passed: Vec<Finding> =
            status_findings(&s, &PORT).into_iter().filter(|f| f.check == "seen-by-peers").collect();
        assert!(passed.len() == 1 && passed[0].ok, "{passed:?}");
    }

    #[test]
    fn a_one_way_block_names_the_direction_that_is_dropped() {
        let mut s = healthy();
        Arc::make_mut(&mut s.peers[0].dataplane).state = PathState::OneWay;
        let f = only(&s, "dataplane");
        assert!(f.message.contains("UDP 8472 from 192.0.2.10 to 198.51.100.10 is dropped"), "{}", f.message);
        assert!(f.message.contains("the other direction passes"));
        assert_eq!(
            f.fix.as_deref(),
            Some("allow UDP 8472 from 192.0.2.10 to 198.51.100.10 in the firewall or security group")
        );
    }

    #[test]
    fn an_mtu_black_hole_says_which_mtu_to_set() {
        let mut s = healthy();
        s.peers[1].dataplane = Arc::new(Dataplane {
            state: PathState::Mtu,
            largest_size: Some(1342),
            needed_size: Some(1450),
            ..Dataplane::unknown()
        });
        let f = only(&s, "dataplane");
        assert_eq!(
            f.message,
            "peer n3: packets of 1450 bytes do not pass the tunnel to 192.0.2.11; the largest that does is 1342 bytes"
        );
        assert!(f.fix.unwrap().starts_with("set --mtu to at most 1342 on every node"));
        Arc::make_mut(&mut s.peers[1].dataplane).largest_size = None;
        assert!(only(&s, "dataplane").message.ends_with("the largest that does is not measured yet"));
    }

    #[test]
    fn an_unreachable_peer_and_the_count_of_good_paths() {
        let mut s = healthy();
        Arc::make_mut(&mut s.peers[0].dataplane).state = PathState::Unreachable;
        let f = only(&s, "dataplane");
        assert_eq!(f.message, "peer n2: neither its node at 198.51.100.10 nor its tunnel answers");
        assert!(f.fix.unwrap().contains("routes 192.0.2.10 to 198.51.100.10"));
        Arc::make_mut(&mut s.peers[0].dataplane).state = PathState::Unknown;
        let passed = status_findings(&s, &PORT).into_iter().find(|f| f.check == "dataplane").unwrap();
        assert!(passed.ok);
        assert!(
            passed.message.starts_with("the paths to 1 peer(s) carry full-size packets; 1 not judged"),
            "{}",
            passed.message
        );
    }

    #[test]
    fn a_failed_reconcile_is_reported_once() {
        let mut s = healthy();
        s.last_reconcile.as_mut().unwrap().error = Some("cannot add route 10.244.2.0/24".into());
        let f = only(&s, "reconcile");
        assert!(f.message.starts_with("last reconcile failed: cannot add route 10.244.2.0/24 (at 2024-"));
        // When it is why the node is not ready, readiness says it and this check stays quiet.
        s.node.ready = false;
        s.node.not_ready_reason = Some("last reconcile failed: cannot add route 10.244.2.0/24".into());
        assert!(problems(&s, "reconcile").is_empty());
        assert_eq!(problems(&s, "ready").len(), 1);
    }

    #[test]
    fn the_agent_not_answering_says_where_it_was_asked() {
        let f = unreachable("127.0.0.1:9473".parse().unwrap(), "connection refused");
        assert_eq!(f.severity, Severity::Error);
        assert_eq!(f.message, "the agent does not answer at 127.0.0.1:9473: connection refused");
        assert!(f.fix.unwrap().contains("--status-addr"));
    }

    #[test]
    fn gossip_refused_for_an_unknown_key_is_read_from_the_metrics() {
        let text = |n: u32| {
            format!("weft_gossip_datagrams_dropped_total{{reason=\"unsealed\"}} 5\n{UNKNOWN_KEY_SERIES} {n}\n# EOF\n")
        };
        assert!(gossip_keys(Ok(&text(0))).ok);
        let f = gossip_keys(Ok(&text(3)));
        assert_eq!(f.severity, Severity::Warning);
        assert!(f.message.starts_with("3 gossip datagram(s) refused"));
        assert!(f.fix.unwrap().contains("--cluster-key-file"));
        assert_eq!(gossip_keys(Ok("# EOF\n")).severity, Severity::Warning);
        assert!(gossip_keys(Err("timed out")).message.contains("timed out"));
    }

    #[test]
    fn clock_skew_beyond_the_replay_window_is_read_from_the_stale_count() {
        assert!(clock_skew(Ok(&format!("{STALE_SERIES} 0\n"))).ok);
        let f = clock_skew(Ok(&format!("{UNKNOWN_KEY_SERIES} 9\n{STALE_SERIES} 12\n")));
        assert_eq!(f.severity, Severity::Warning);
        assert!(f.message.starts_with("12 gossip datagram(s) refused as stale"), "{}", f.message);
        assert!(f.fix.unwrap().contains("timedatectl"));
    }
}
