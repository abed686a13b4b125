//! Membership and allocation across many real agents in one process (in-memory gossip,
//! recording datapaths). Timings are printed; run with `--nocapture` to see them.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use tokio::time::Instant;
use weft_agent::files;
use weft_agent::http::status::PeerState;
use weft_agent::probe::verdict::PathState;
use weft_cni::state::NodeState;
use weft_overlay::Mac;
use weft_overlay::rules::{first_host, nth_address};
use weft_overlay::underlay::Family;

use support::{Cluster, ms, wait_until};

const CONVERGE: Duration = Duration::from_secs(20);

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:02}")).collect()
}

fn refs(names: &[String]) -> Vec<&str> {
    names.iter().map(String::as_str).collect()
}

/// Valid announcement keys of a foreign node at `ip`, claiming `claim`.
fn valid_keys(name: &str, ip: &str, claim: &str) -> Vec<(&'static str, String)> {
    vec![
        ("node_ip", ip.to_string()),
        ("vtep_mac", Mac::derived(name).to_string()),
        ("vni", "1".into()),
        ("vxlan_port", "8472".into()),
        ("status", "up".into()),
        ("pod_cidr", claim.to_string()),
    ]
}

fn as_pairs<'a>(kvs: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    kvs.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

async fn converged(c: &Cluster, what: &str) -> Duration {
    wait_until(CONVERGE, what, || c.converged()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_nodes_join_and_program_each_other_with_distinct_podcidrs() {
    let mut c = Cluster::new();
    let nodes = names("n", 10);
    c.add_and_start(&refs(&nodes)).await;
    let took = converged(&c, "10 nodes converged").await;
    println!("10 nodes started together converged in {} ms", ms(took));
    let cidrs: BTreeSet<Ipv4Net> = nodes.iter().map(|n| c.pod_cidr(n).unwrap()).collect();
    assert_eq!(cidrs.len(), 10, "PodCIDRs must be distinct: {cidrs:?}");
    for n in &nodes {
        let paths = &c.nodes[n].config.paths;
        let state = NodeState::read(&paths.state_file()).unwrap();
        assert_eq!(Some(state.pools[0].pod_cidr), c.pod_cidr(n).map(Into::into));
        assert_eq!(state.mtu, 1450);
        assert!(paths.conflist().exists());
        let lease = files::read_lease(&paths.lease(Family::Ipv4)).unwrap().unwrap();
        assert_eq!(Some(lease.pod_cidr), c.pod_cidr(n).map(Into::into));
        // A healthy start rejects nothing: a peer listed before its keys arrive is only pending.
        let metrics = c.metrics(n);
        let rejected: Vec<&str> = metrics.lines().filter(|l| l.starts_with("weft_gossip_rejected_total{")).collect();
        assert!(!rejected.is_empty() && rejected.iter().all(|l| l.ends_with(" 0")), "{n}: {rejected:?}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_is_programmed_everywhere_quickly() {
    let mut c = Cluster::new();
    let nodes = names("n", 10);
    c.add_and_start(&refs(&nodes)).await;
    converged(&c, "10 nodes converged").await;
    let mut latencies = Vec::new();
    for (i, fixed) in [false, false, false, true, true, true].into_iter().enumerate() {
        let name = format!("j{i}");
        // A static PodCIDR never takes a block in use: give it one no running node holds.
        let held: BTreeSet<Ipv4Net> = c.running().iter().filter_map(|n| c.pod_cidr(n)).collect();
        let free = (200..=255u8).map(|b| format!("10.244.{b}.0/24").parse().unwrap()).find(|b| !held.contains(b));
        c.add(&name).pod_cidrs = if fixed { free.into_iter().map(Into::into).collect() } else { Vec::new() };
        let start = Instant::now();
        c.start(&name).await;
        converged(&c, &format!("{name} programmed everywhere")).await;
        let cidr = c.pod_cidr(&name).unwrap();
        let everywhere = nodes
            .iter()
            .map(|n| c.datapath(n).first_programmed(&name, cidr, start).unwrap().duration_since(start))
            .max()
            .unwrap();
        let kind = if fixed { "static" } else { "allocated" };
        println!("join of {name} ({kind} PodCIDR) programmed on all 10 peers after {} ms", ms(everywhere));
        latencies.push((kind, everywhere));
    }
    for (kind, took) in &latencies {
        // Generous bound for loaded CI machines; typical values are printed above.
        let bound = if *kind == "static" { 2_000 } else { 3_000 };
        assert!(ms(*took) < bound, "{kind} join took {} ms", ms(*took));
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_leave_shows_at_once_and_is_withdrawn_when_a_monitor_confirms_it() {
    let mut c = Cluster::new();
    let nodes = names("n", 6);
    c.add_and_start(&refs(&nodes)).await;
    converged(&c, "6 nodes converged").await;
    let start = Instant::now();
    c.stop("n05").await;
    let others = &nodes[..5];
    wait_until(Duration::from_secs(5), "n05 withdrawn everywhere", || {
        others.iter().all(|n| !c.datapath(n).programmed().contains_key("n05"))
    })
    .await;
    let withdrawn =
        others.iter().map(|n| c.datapath(n).first_without("n05", start).unwrap().duration_since(start)).max().unwrap();
    println!("clean leave withdrawn on all peers after {} ms", ms(withdrawn));
    // Routes stay until the failure detector confirms the node is gone (so a restart, which also
    // announces leaving, costs nothing): a few gossip rounds of leaving plus the detector's verdict.
    assert!(ms(withdrawn) < 4_000, "{} ms", ms(withdrawn));
    let row = c.peer_row("n00", "n05", "withdrawn", |p| !p.programmed).await;
    assert_eq!(row.state, PeerState::Dead);
    assert_eq!(row.note.as_deref(), Some("left the cluster"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_withdrawn_after_the_failure_detectors_verdict() {
    let mut c = Cluster::new();
    let nodes = names("n", 6);
    c.add_and_start(&refs(&nodes)).await;
    converged(&c, "6 nodes converged").await;
    // Let the detector learn the heartbeat rhythm, as in a running cluster.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start = Instant::now();
    c.kill("n05").await;
    let others = &nodes[..5];
    wait_until(Duration::from_secs(15), "n05 withdrawn everywhere", || {
        others.iter().all(|n| !c.datapath(n).programmed().contains_key("n05"))
    })
    .await;
    let times: Vec<Duration> =
        others.iter().map(|n| c.datapath(n).first_without("n05", start).unwrap().duration_since(start)).collect();
    let (first, last) = (times.iter().min().unwrap(), times.iter().max().unwrap());
    println!("crashed node withdrawn after {}..{} ms (first..last peer)", ms(*first), ms(*last));
    // Not before the detector could have decided, and not much later than it should.
    assert!(ms(*first) >= 400, "withdrawn too early: {} ms", ms(*first));
    assert!(ms(*last) < 6_000, "withdrawn too late: {} ms", ms(*last));
    let row = c.peer_row("n00", "n05", "withdrawn", |p| !p.programmed).await;
    assert_eq!(row.state, PeerState::Dead);
    assert_eq!(
        row.note.as_deref(),
        Some("declared dead by its monitors (or the failure detector, for a node of the previous release)")
    );
    assert!(row.last_seen.is_some());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_gone_with_its_agent_is_withdrawn_without_waiting_for_the_next_probe_round() {
    // Probe rounds of 6 s: a0 (first by name, so probed at the start of every round) is probed
    // once, then dies with its agent. Its routes stay only while its tunnel answers, and the
    // next round would find it silent 6 s later: a recheck sent at gossip's verdict finds it
    // within the probe timeout instead.
    const ROUND: Duration = Duration::from_secs(6);
    let mut c = Cluster::new();
    let nodes = ["a0", "n01", "n02", "n03"];
    for n in nodes {
        c.add(n).probe_interval = ROUND;
    }
    for n in nodes {
        c.start(n).await;
    }
    converged(&c, "4 nodes converged").await;
    let others = &nodes[1..];
    for n in others {
        c.peer_row(n, "a0", "answering", |p| p.programmed).await;
        wait_until(ROUND * 2, &format!("{n}'s probe of a0 answered"), || {
            c.status(n).is_some_and(|s| s.peers.iter().any(|p| p.name == "a0" && p.dataplane.answering))
        })
        .await;
    }
    let start = Instant::now();
    c.kill("a0").await;
    wait_until(ROUND * 2, "a0 withdrawn everywhere", || {
        others.iter().all(|n| !c.datapath(n).programmed().contains_key("a0"))
    })
    .await;
    let last = others.iter().map(|n| c.datapath(n).first_without("a0", start).unwrap().duration_since(start)).max();
    let last = last.unwrap();
    println!("node gone with its agent withdrawn after {} ms", ms(last));
    // Gossip's verdict (≈ 2 s) plus at most the recheck's timeout, where the next round would
    // have come 5–6 s after the kill.
    assert!(last < Duration::from_millis(4_500), "withdrawn after {} ms", ms(last));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_joins_into_a_tight_pool_end_with_distinct_podcidrs() {
    // Eight nodes, eight blocks, all starting at once: initial picks almost surely collide.
    let mut c = Cluster::with_pool("10.244.0.0/21", 24);
    let nodes = names("n", 8);
    c.add_and_start(&refs(&nodes)).await;
    let took = converged(&c, "8 nodes in 8 blocks converged").await;
    let cidrs: BTreeSet<Ipv4Net> = nodes.iter().map(|n| c.pod_cidr(n).unwrap()).collect();
    assert_eq!(cidrs.len(), 8, "{cidrs:?}");
    let conflicts: u64 = nodes.iter().map(|n| metric(&c.metrics(n), "weft_podcidr_conflicts_total")).sum();
    println!("8 simultaneous joins into 8 blocks converged in {} ms ({conflicts} conflict observations)", ms(took));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_claim_wins_the_block_and_the_later_claimant_moves() {
    let mut c = Cluster::new();
    c.add_and_start(&["a", "b", "c"]).await;
    converged(&c, "3 nodes converged").await;
    let taken = c.pod_cidr("b").unwrap();
    let lease = files::read_lease(&c.nodes["b"].config.paths.lease(Family::Ipv4)).unwrap().unwrap();
    let claim = format!("{taken};confirmed;{}", lease.since - 1);
    let keys = valid_keys("early", "192.0.2.200", &claim);
    let _early = c.rogue("early", &as_pairs(&keys)).await;
    wait_until(CONVERGE, "b moved off the contested block", || {
        c.pod_cidr("b").is_some_and(|p| p != taken)
            && c.converged()
            && ["a", "c"].iter().all(|n| c.datapath(n).programmed().get("early") == Some(&taken))
    })
    .await;
    let moved = c.pod_cidr("b").unwrap();
    let state = NodeState::read(&c.nodes["b"].config.paths.state_file()).unwrap();
    assert_eq!(state.pools[0].pod_cidr, moved.into());

    // A later claim on a's block loses: nobody programs it and a keeps its block.
    let a_block = c.pod_cidr("a").unwrap();
    let claim = format!("{a_block};claiming;{}", u64::MAX / 2);
    let keys = valid_keys("late", "192.0.2.201", &claim);
    let _late = c.rogue("late", &as_pairs(&keys)).await;
    wait_until(CONVERGE, "the late claim is seen and refused", || {
        let note = format!("lost its PodCIDR claim {a_block} to a");
        c.status("c").is_some_and(|s| {
            s.peers.iter().any(|p| p.name == "late" && p.note.as_deref() == Some(note.as_str()))
                && s.conflicts.iter().any(|x| x.winner == "a" && x.losers == ["late"])
        })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.pod_cidr("a"), Some(a_block));
    for n in ["a", "b", "c"] {
        let dp = c.datapath(n);
        assert!(dp.history().iter().all(|(_, d)| d.peers.iter().all(|p| p.name != "late")));
    }
    assert!(metric(&c.metrics("c"), "weft_podcidr_conflicts_total") >= 1);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_podcidr_never_takes_a_block_in_use() {
    let mut c = Cluster::new();
    c.add_and_start(&["a", "b"]).await;
    converged(&c, "2 nodes converged").await;
    let taken = c.pod_cidr("a").unwrap();
    c.add("s").pod_cidrs = vec![taken.into()];
    c.start("s").await;
    wait_until(CONVERGE, "s refuses the block a holds, and says so", || {
        c.status("s").is_some_and(|st| {
            !st.node.ready
                && st
                    .node
                    .not_ready_reason
                    .is_some_and(|r| r.contains(&format!("PodCIDR {taken} (--pod-cidr) is held by node a")))
        })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.pod_cidr("a"), Some(taken), "a keeps its block");
    assert!(c.ready("a"));
    assert_eq!(c.datapath("b").programmed().get("a"), Some(&taken));
    assert!(c.datapath("b").history().iter().all(|(_, d)| d.peers.iter().all(|p| p.name != "s")));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_from_maintenance_never_takes_its_old_block_from_the_node_now_holding_it() {
    // The reported case: two /24 blocks; b holds one, goes away long enough to be forgotten, c
    // gets b's block and runs a pod in it, then b comes back with its state dir.
    let mut c = Cluster::with_pool("10.245.0.0/23", 24);
    for n in ["a", "b", "c"] {
        c.add(n).gossip.dead_node_grace_period = Duration::from_secs(2);
    }
    c.start("a").await;
    c.start("b").await;
    converged(&c, "a and b converged").await;
    let block = c.pod_cidr("b").unwrap();
    pod_address(&c, "b", &format!("{}", nth_address(&block.into(), 5)));
    c.stop("b").await;
    wait_until(CONVERGE, "b forgotten by a", || c.status("a").unwrap().peers.iter().all(|p| p.name != "b")).await;
    c.start("c").await;
    converged(&c, "c joined").await;
    assert_eq!(c.pod_cidr("c"), Some(block), "c got the forgotten block");
    let c_lease = files::read_lease(&c.nodes["c"].config.paths.lease(Family::Ipv4)).unwrap().unwrap();
    let b_lease = files::read_lease(&c.nodes["b"].config.paths.lease(Family::Ipv4)).unwrap().unwrap();
    assert!(b_lease.since < c_lease.since, "b's claim is the older one: that alone must not win");

    let back = Instant::now();
    c.start("b").await;
    wait_until(CONVERGE, "b reports that its block is gone and its old pod stranded", || {
        c.status("b").is_some_and(|s| {
            s.node.not_ready_reason.as_deref().is_some_and(|r| r.contains("exhausted"))
                && s.node.stranded_pods.as_ref().is_some_and(|p| p.count == 1)
        })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // c never lost its block, its files or its routes on a.
    assert_eq!(c.pod_cidr("c"), Some(block));
    assert!(c.ready("c"));
    let state = NodeState::read(&c.nodes["c"].config.paths.state_file()).unwrap();
    assert_eq!((state.pools[0].pod_cidr, state.unavailable), (block.into(), None));
    for (_, d) in c.datapath("a").history().iter().filter(|(at, _)| *at >= back) {
        let owner: Vec<&str> =
            d.peers.iter().filter(|p| p.pod_cidrs.contains(&block.into())).map(|p| p.name.as_str()).collect();
        assert_eq!(owner, ["c"], "a routed c's block elsewhere");
    }
    assert!(c.datapath("c").history().iter().all(|(_, d)| d.local.pod_cidrs == [block.into()]));
    // b hands out nothing from the block: its state file says why.
    let b_state = NodeState::read(&c.nodes["b"].config.paths.state_file()).unwrap();
    assert!(b_state.unavailable.is_some_and(|r| r.contains("exhausted")), "b must not serve {block}");
    assert!(metric(&c.metrics("b"), "weft_stranded_pod_addresses") == 1);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_naming_a_live_nodes_block_is_claimed_elsewhere() {
    let mut c = Cluster::new();
    c.add_and_start(&["a", "b"]).await;
    converged(&c, "2 nodes converged").await;
    let taken = c.pod_cidr("a").unwrap();
    c.add("n");
    // A stale lease, older than a's claim (a copied state dir, a restored backup).
    let lease = files::Lease { pod_cidr: taken.into(), since: 1, cluster_cidr: c.cluster_cidr.into() };
    files::write_lease(&c.nodes["n"].config.paths.lease(Family::Ipv4), &lease).unwrap();
    c.start("n").await;
    converged(&c, "n joined on another block").await;
    assert_ne!(c.pod_cidr("n"), Some(taken));
    assert_eq!(c.pod_cidr("a"), Some(taken));
    assert!(
        c.datapath("b")
            .history()
            .iter()
            .all(|(_, d)| d.peers.iter().all(|p| p.name != "n" || !p.pod_cidrs.contains(&taken.into())))
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_started_under_a_live_nodes_name_refuses_and_takes_it_over_only_once_it_is_dead() {
    let mut c = Cluster::new();
    c.add_and_start(&["n1", "b", "c"]).await;
    converged(&c, "3 nodes converged").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let block = c.pod_cidr("n1").unwrap();
    let holder_ip = c.nodes["n1"].config.underlay.primary().ip;
    c.add_clone("clone", "n1");
    let clone_ip = c.nodes["clone"].config.underlay.primary().ip;
    let started = Instant::now();
    c.start("clone").await;
    wait_until(CONVERGE, "the clone refuses the name, naming the holder", || {
        c.status("clone").is_some_and(|s| {
            !s.node.ready
                && s.node
                    .not_ready_reason
                    .is_some_and(|r| r.contains(&format!("node name n1 is in use by the agent at {holder_ip}")))
        }) && metric(&c.metrics("clone"), "weft_node_name_in_use") == 1
    })
    .await;
    wait_until(CONVERGE, "the holder shows the clone", || {
        c.status("n1").is_some_and(|s| s.node.name_in_use_by.iter().any(|n| n.node_ip == clone_ip && !n.holds_the_name))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(c.ready("n1"));
    assert_eq!(c.pod_cidr("n1"), Some(block));
    assert_eq!(c.pod_cidr("clone"), None);
    for peer in ["b", "c"] {
        for (_, d) in c.datapath(peer).history().iter().filter(|(at, _)| *at >= started) {
            let n1 = d.peers.iter().find(|p| p.name == "n1").expect("n1 stays programmed");
            assert_eq!(n1.node_ip, holder_ip, "{peer} sent n1's block to the clone");
        }
    }
    assert!(c.datapath("clone").history().is_empty(), "the clone programs nothing");

    // The holder dies: the name (and its block) pass to the agent at the new address, as for a
    // VM that came back under another IP.
    c.kill("n1").await;
    wait_until(CONVERGE, "the clone took the name over and is routed", || {
        c.ready("clone")
            && ["b", "c"].iter().all(|p| {
                c.datapath(p).last().is_some_and(|d| d.peers.iter().any(|x| x.name == "n1" && x.node_ip == clone_ip))
            })
    })
    .await;
    assert_eq!(c.pod_cidr("clone"), Some(block));
    assert_eq!(metric(&c.metrics("clone"), "weft_node_name_in_use"), 0);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_started_with_another_clusters_settings_refuses_and_the_cluster_keeps_serving() {
    let mut c = Cluster::new();
    c.add_and_start(&["a", "b"]).await;
    converged(&c, "2 nodes converged").await;
    let held: Vec<Ipv4Net> = ["a", "b"].iter().map(|n| c.pod_cidr(n).unwrap()).collect();
    // Two operator mistakes: another --gossip-interval, and another cluster's --cluster-cidr.
    c.add("slow").gossip.interval = Duration::from_millis(200);
    c.add("other").cluster_cidrs = vec!["10.245.0.0/16".parse().unwrap()];
    c.start("slow").await;
    c.start("other").await;
    let reason = |n: &str| c.status(n).and_then(|s| s.node.not_ready_reason).unwrap_or_default();
    wait_until(CONVERGE, "both newcomers refuse, naming the setting", || {
        reason("slow").contains("settings are not the cluster's")
            && reason("slow").contains("(--gossip-interval)")
            && reason("other").contains("ipv4-pool is 10.244.0.0/16+24 there and 10.245.0.0/16+24 here")
    })
    .await;
    for (n, peer) in [("a", "b"), ("b", "a")] {
        for newcomer in ["slow", "other"] {
            let row = c.peer_row(n, newcomer, "rejected", |p| !p.programmed).await;
            assert!(
                row.note.as_deref().is_some_and(|t| t.starts_with("rejected: cluster settings differ: ")),
                "{row:?}"
            );
        }
        assert!(c.ready(n));
        assert_eq!(c.datapath(n).programmed(), BTreeMap::from([(peer.to_string(), c.pod_cidr(peer).unwrap())]));
        assert!(metric(&c.metrics(n), "weft_gossip_rejected_total{reason=\"settings_differ\"}") >= 1);
    }
    // The refused agents claim nothing and program nothing; the cluster kept its blocks.
    for n in ["slow", "other"] {
        assert!(!c.ready(n) && c.status(n).unwrap().node.pod_cidr.is_none());
        assert_eq!(c.datapath(n).attempts(), 0, "{n} programmed its datapath");
    }
    assert_eq!(["a", "b"].map(|n| c.pod_cidr(n).unwrap()).to_vec(), held);

    // Started again with the cluster's settings, it joins.
    c.stop("other").await;
    c.stop_agent_only("slow").await;
    c.nodes.get_mut("slow").unwrap().config.gossip.interval = support::GOSSIP_INTERVAL;
    c.start("slow").await;
    converged(&c, "slow joined with the cluster's settings").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loser_of_a_static_podcidr_conflict_serves_nothing_and_reports_its_pods() {
    let mut c = Cluster::new();
    let block: Ipv4Net = "10.244.77.0/24".parse().unwrap();
    c.add("w").pod_cidrs = vec![block.into()];
    c.start("w").await;
    wait_until(CONVERGE, "w holds its static block", || c.ready("w")).await;
    c.add("l").pod_cidrs = vec![block.into()];
    pod_address(&c, "l", "10.244.77.2");
    c.start("l").await;
    wait_until(CONVERGE, "l refuses to serve and says why", || {
        c.status("l").is_some_and(|s| {
            !s.node.ready
                && s.node.pod_cidr.is_none()
                && s.node
                    .stranded_pods
                    .as_ref()
                    .is_some_and(|p| p.addresses == ["10.244.77.2".parse::<IpAddr>().unwrap()])
        })
    })
    .await;
    let state = NodeState::read(&c.nodes["l"].config.paths.state_file()).unwrap();
    let reason = state.unavailable.expect("the plugin must refuse ADDs on l");
    assert!(reason.contains("10.244.77.0/24 (--pod-cidr) is held by node w"), "{reason}");
    assert!(c.ready("w"));
    assert!(c.datapath("l").history().is_empty());
    assert!(metric(&c.metrics("l"), "weft_podcidr_conflicts_current") >= 1);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_hears_no_other_node_any_more_says_it_is_isolated() {
    let mut c = Cluster::new();
    c.add_and_start(&["a", "b", "c"]).await;
    converged(&c, "3 nodes converged").await;
    assert_eq!(c.status("a").unwrap().node.isolated, None);
    c.kill("b").await;
    c.kill("c").await;
    wait_until(CONVERGE, "a says it is isolated", || {
        c.status("a").unwrap().node.isolated.is_some_and(|why| why.contains("no other node is heard any more"))
            && metric(&c.metrics("a"), "weft_isolated") == 1
    })
    .await;
    c.start("b").await;
    wait_until(CONVERGE, "a hears b again", || c.status("a").unwrap().node.isolated.is_none()).await;
    assert_eq!(metric(&c.metrics("a"), "weft_isolated"), 0);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_agent_keeps_its_nodes_routes_while_its_tunnel_answers_and_loses_them_when_it_stops() {
    let mut c = Cluster::new();
    let nodes = names("n", 4);
    c.add_and_start(&refs(&nodes)).await;
    converged(&c, "4 nodes converged").await;
    let block = c.pod_cidr("n03").unwrap();
    let stopped = Instant::now();
    c.stop_agent_only("n03").await;
    // Well past the failure detector's verdict: an upgrade's slow image pull.
    wait_until(CONVERGE, "n03 seen gone by gossip", || {
        c.status("n00").unwrap().peers.iter().any(|p| p.name == "n03" && p.state == PeerState::Dead)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let others = ["n00", "n01", "n02"];
    for n in others {
        assert_eq!(c.datapath(n).programmed().get("n03"), Some(&block), "{n} withdrew a node whose tunnel answers");
        assert_eq!(c.datapath(n).first_without("n03", stopped), None);
    }
    let row = c.status("n00").unwrap().peers.into_iter().find(|p| p.name == "n03").unwrap();
    assert!(row.programmed && row.note.as_deref().is_some_and(|n| n.contains("its tunnel answers")), "{row:?}");

    // Now the node itself goes: withdrawn as soon as its tunnel stops answering.
    c.take_node_down("n03");
    let gone = Instant::now();
    wait_until(CONVERGE, "n03 withdrawn everywhere", || {
        others.iter().all(|n| !c.datapath(n).programmed().contains_key("n03"))
    })
    .await;
    println!("node gone after its agent: withdrawn after {} ms", ms(gone.elapsed()));
    assert!(gone.elapsed() < Duration::from_secs(5), "{:?}", gone.elapsed());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_agent_keeps_its_routes_only_for_the_agent_down_grace() {
    let mut c = Cluster::new();
    for n in ["a", "b", "c"] {
        c.add(n).agent_down_grace = Duration::from_secs(3);
    }
    c.start("a").await;
    c.start("b").await;
    c.start("c").await;
    converged(&c, "3 nodes converged").await;
    let stopped = Instant::now();
    c.stop_agent_only("c").await;
    wait_until(CONVERGE, "c withdrawn once the grace is over", || {
        ["a", "b"].iter().all(|n| !c.datapath(n).programmed().contains_key("c"))
    })
    .await;
    let withdrawn = ["a", "b"].iter().map(|n| c.datapath(n).first_without("c", stopped).unwrap()).min().unwrap();
    // The grace runs from the last heartbeat heard, at most a few gossip rounds before the stop.
    let after = withdrawn.duration_since(stopped);
    assert!(after >= Duration::from_millis(2500), "withdrawn {after:?} after the stop: before the 3 s grace ended");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipam_use_of_each_family_is_reported() {
    let mut c = Cluster::new();
    c.add("a").cluster_cidrs.push("fd00:10:244::/56".parse().unwrap());
    c.start("a").await;
    wait_until(CONVERGE, "a ready", || c.ready("a")).await;
    let block = c.pod_cidr("a").unwrap();
    let block6 = c.status("a").unwrap().node.pod_cidr6.expect("an IPv6 block");
    for n in [2, 3] {
        pod_address(&c, "a", &nth_address(&block.into(), n).to_string());
    }
    pod_address(&c, "a", &nth_address(&block6, 5).to_string());
    // Each family on its own: the /64's 2^64 addresses do not swamp the /24's count.
    let expected = [(Family::Ipv4, 2, 253), (Family::Ipv6, 1, u64::MAX - 2)];
    wait_until(CONVERGE, "a reports 2 of 253 IPv4 and 1 IPv6 address in use", || {
        let ipam = c.status("a").unwrap().node.ipam;
        let metrics = c.metrics("a");
        ipam.iter().map(|i| (i.family, i.in_use, i.total)).eq(expected)
            && metric(&metrics, "weft_ipam_addresses_in_use{family=\"ipv4\"}") == 2
            && metric(&metrics, "weft_ipam_addresses_total{family=\"ipv4\"}") == 253
            && metric(&metrics, "weft_ipam_addresses_in_use{family=\"ipv6\"}") == 1
            && metric(&metrics, "weft_ipam_addresses_total{family=\"ipv6\"}") > 1 << 63
    })
    .await;
    c.shutdown().await;
}

fn pod_address(c: &Cluster, node: &str, ip: &str) {
    let dir = c.nodes[node].config.paths.ipam_dir.join(files::NETWORK_NAME);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{ip}@0123456789abcdef")), "pod\neth0\n").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_gossip_values_are_rejected_counted_and_never_programmed() {
    let mut c = Cluster::new();
    c.add_and_start(&["a", "b", "c"]).await;
    converged(&c, "3 nodes converged").await;
    let cases = [
        ("bad-vni", "vni", "2", "vni_mismatch"),
        ("bad-cidr", "pod_cidr", "10.99.0.0/24;confirmed;1", "pod_cidr_outside_cluster"),
        ("bad-prefix", "pod_cidr", "10.244.77.0/25;confirmed;1", "pod_cidr_wrong_prefix"),
        ("bad-mac", "vtep_mac", "01:00:5e:00:00:01", "mac_not_unicast"),
        ("bad-ip", "node_ip", "127.0.0.1", "node_ip_not_unicast"),
        ("bad-claim", "pod_cidr", "garbage", "malformed"),
    ];
    let mut rogues = Vec::new();
    for (i, (name, key, value, _)) in cases.iter().enumerate() {
        let ip = format!("192.0.2.{}", 210 + i);
        let block = format!("10.244.{}.0/24;confirmed;1", 210 + i);
        let mut keys = valid_keys(name, &ip, &block);
        keys.retain(|(k, _)| k != key);
        keys.push((key, value.to_string()));
        rogues.push(c.rogue(name, &as_pairs(&keys)).await);
    }
    wait_until(CONVERGE, "every rogue rejected and counted on every node", || {
        ["a", "b", "c"].iter().all(|n| {
            let text = c.metrics(n);
            let status = c.status(n).unwrap();
            cases.iter().all(|(name, _, _, reason)| {
                metric(&text, &format!("weft_gossip_rejected_total{{reason=\"{reason}\"}}")) >= 1
                    && status.peers.iter().any(|p| {
                        p.name == *name
                            && !p.programmed
                            && p.note.as_deref().is_some_and(|n| n.starts_with("rejected: "))
                    })
            })
        })
    })
    .await;
    assert!(c.converged(), "real nodes keep programming each other");
    for n in ["a", "b", "c"] {
        for (_, desired) in c.datapath(n).history() {
            assert!(desired.peers.iter().all(|p| !p.name.starts_with("bad-")));
        }
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_suspicions_are_ignored_and_counted_once() {
    let mut c = Cluster::new();
    c.add_and_start(&["a", "b", "c"]).await;
    converged(&c, "3 nodes converged").await;
    // A member of the monitors protocol whose `suspects` names no member: its votes count as none.
    let mut keys = valid_keys("garbled", "192.0.2.230", "10.244.230.0/24;confirmed;1");
    keys.push(("gossip-protocol", "monitors-1".into()));
    keys.push(("suspects", "a,b:not-a-generation".into()));
    let _garbled = c.rogue("garbled", &as_pairs(&keys)).await;
    let counted = |n: &str| metric(&c.metrics(n), "weft_gossip_malformed_suspicions_total");
    wait_until(CONVERGE, "the malformed suspicions counted on every node", || {
        ["a", "b", "c"].iter().all(|n| counted(n) >= 1)
    })
    .await;
    // Read again every round, counted once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in ["a", "b", "c"] {
        assert_eq!(counted(n), 1, "{n}");
    }
    assert!(c.converged(), "the real nodes keep programming each other");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_copying_a_live_nodes_vtep_mac_is_refused_and_the_owner_stays_programmed() {
    let mut c = Cluster::new();
    c.add_and_start(&["a", "b", "c"]).await;
    converged(&c, "3 nodes converged").await;
    // Valid in every other way (own IP, free block), but with b's MAC: programming it would cost
    // b its FDB entry (the datapath refuses both holders of a MAC).
    let mut keys = valid_keys("thief", "192.0.2.220", "10.244.220.0/24;confirmed;1");
    keys.retain(|(k, _)| *k != "vtep_mac");
    keys.push(("vtep_mac", Mac::derived("b").to_string()));
    let _thief = c.rogue("thief", &as_pairs(&keys)).await;
    wait_until(CONVERGE, "the copy refused and counted on a and c", || {
        ["a", "c"].iter().all(|n| {
            c.status(n).is_some_and(|s| s.peers.iter().any(|p| p.name == "thief" && !p.programmed))
                && metric(&c.metrics(n), "weft_gossip_rejected_total{reason=\"mac_not_of_name\"}") >= 1
        })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(c.converged(), "b must stay programmed everywhere");
    for n in ["a", "c"] {
        assert!(c.datapath(n).history().iter().all(|(_, d)| d.peers.iter().all(|p| p.name != "thief")));
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_its_identity_and_podcidr_without_flapping_peers() {
    let mut c = Cluster::new();
    let nodes = names("n", 5);
    c.add_and_start(&refs(&nodes)).await;
    converged(&c, "5 nodes converged").await;
    let before = c.status("n03").unwrap().node;
    let generation = c.generation("n03");

    // Graceful restart: peers withdraw it while it is away, then program it again.
    c.stop("n03").await;
    c.start("n03").await;
    converged(&c, "n03 back after a graceful restart").await;
    let after = c.status("n03").unwrap().node;
    assert_eq!(after.pod_cidr, before.pod_cidr);
    assert_eq!(after.vtep_mac, before.vtep_mac);
    assert!(c.generation("n03") > generation);

    // Crash and immediate restart: peers keep programming it throughout.
    let generation = c.generation("n03");
    let crash = Instant::now();
    c.kill("n03").await;
    c.start("n03").await;
    converged(&c, "n03 back after a crash").await;
    assert_eq!(c.status("n03").unwrap().node.pod_cidr, before.pod_cidr);
    assert!(c.generation("n03") > generation);
    for n in nodes.iter().filter(|n| *n != "n03") {
        assert_eq!(c.datapath(n).first_without("n03", crash), None, "{n} withdrew n03 during its restart");
    }
    // The restarted agent's first apply already lists every peer: it waited for membership.
    let first = c.datapath("n03").history().first().unwrap().1.clone();
    assert_eq!(first.peers.len(), 4, "{:?}", first.peers);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_lease_reclaims_its_block_from_gossip() {
    let mut c = Cluster::new();
    c.add_and_start(&["a", "b", "c"]).await;
    converged(&c, "3 nodes converged").await;
    let before = c.pod_cidr("c").unwrap();
    c.kill("c").await;
    let paths = c.nodes["c"].config.paths.clone();
    std::fs::remove_file(paths.lease(Family::Ipv4)).unwrap();
    std::fs::remove_file(paths.state_file()).unwrap();
    c.start("c").await;
    converged(&c, "c back without its lease").await;
    assert_eq!(c.pod_cidr("c"), Some(before));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_is_a_clear_error_and_the_node_is_not_programmed() {
    let mut c = Cluster::with_pool("10.244.0.0/24", 24);
    c.add_and_start(&["a"]).await;
    wait_until(CONVERGE, "a holds the only block", || c.ready("a")).await;
    c.add_and_start(&["b"]).await;
    wait_until(CONVERGE, "b reports exhaustion", || {
        c.status("b").is_some_and(|s| {
            s.node.not_ready_reason.is_some_and(|r| r.contains("PodCIDR pool 10.244.0.0/24 is exhausted"))
        })
    })
    .await;
    wait_until(CONVERGE, "a lists b as unprogrammed", || {
        c.status("a")
            .unwrap()
            .peers
            .iter()
            .any(|p| p.name == "b" && p.note.as_deref() == Some("has not claimed a PodCIDR yet"))
    })
    .await;
    assert!(c.datapath("a").programmed().is_empty());
    assert_eq!(c.pod_cidr("b"), None);
    assert!(!c.nodes["b"].config.paths.state_file().exists());
    c.shutdown().await;
}

/// The value of an unlabelled metric in a text exposition.
/// A sample's value (gauges of floats included, truncated), 0 when absent.
fn metric(text: &str, name: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok()).unwrap_or(0.0) as u64
}

/// Dual-stack nodes a and b (IPv6 pods from fd00:10:244::/56), converged; and that range.
async fn dual_stack_pair() -> (Cluster, IpNet) {
    let mut c = Cluster::new();
    let v6_range: IpNet = "fd00:10:244::/56".parse().unwrap();
    for n in ["a", "b"] {
        c.add(n).cluster_cidrs.push(v6_range);
    }
    c.start("a").await;
    c.start("b").await;
    converged(&c, "2 dual-stack nodes converged").await;
    (c, v6_range)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_cluster_allocates_a_block_per_family_and_routes_a_previous_release_node() {
    let (mut c, v6_range) = dual_stack_pair().await;
    let mut blocks = BTreeMap::new();
    for n in ["a", "b"] {
        let status = c.status(n).unwrap();
        let v6 = status.node.pod_cidr6.expect("an IPv6 block");
        assert!(v6_range.contains(&v6) && v6.prefix_len() == 64, "{v6}");
        let v4: IpNet = c.pod_cidr(n).unwrap().into();
        // The plugin gets both families; each block has its lease.
        let paths = &c.nodes[n].config.paths;
        let state = NodeState::read(&paths.state_file()).unwrap();
        let pools: Vec<(IpNet, IpAddr)> = state.pools.iter().map(|p| (p.pod_cidr, p.gateway)).collect();
        assert_eq!(pools, [(v4, first_host(&v4)), (v6, first_host(&v6))]);
        assert_eq!(state.pools[1].cluster_cidr, v6_range);
        assert_eq!(files::read_lease(&paths.lease(Family::Ipv6)).unwrap().unwrap().pod_cidr, v6);
        blocks.insert(n, vec![v4, v6]);
    }
    assert_ne!(blocks["a"][1], blocks["b"][1], "distinct IPv6 blocks");
    wait_until(CONVERGE, "a programs both of b's blocks", || {
        c.datapath("a").last().is_some_and(|d| d.peers.iter().any(|p| p.name == "b" && p.pod_cidrs == blocks["b"]))
    })
    .await;

    // A node of the previous release announces `pod_cidr` only: routed by its IPv4 block.
    let keys = valid_keys("old", "192.0.2.210", "10.244.200.0/24;confirmed;1");
    let _old = c.rogue("old", &as_pairs(&keys)).await;
    let old_block: IpNet = "10.244.200.0/24".parse().unwrap();
    wait_until(CONVERGE, "the previous-release node is routed by its IPv4 block", || {
        c.datapath("a").last().is_some_and(|d| d.peers.iter().any(|p| p.name == "old" && p.pod_cidrs == [old_block]))
    })
    .await;
    let old = c.peer_row("a", "old", "programmed", |p| p.programmed).await;
    assert_eq!((old.pod_cidr, old.pod_cidr6, old.note.as_deref()), (Some(old_block), None, None));
    assert_eq!(metric(&c.metrics("a"), "weft_gossip_rejected_total{reason=\"malformed\"}"), 0);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_node_that_lost_its_ipv6_block_keeps_its_ipv4_block_routed() {
    let (mut c, _) = dual_stack_pair().await;
    let a_blocks: Vec<IpNet> = {
        let node = c.status("a").unwrap().node;
        [node.pod_cidr, node.pod_cidr6].into_iter().map(Option::unwrap).collect()
    };
    let contested = a_blocks[1];

    // A dual-stack node whose IPv4 block is its own and whose IPv6 block is a's, claimed later.
    let own: IpNet = "10.244.200.0/24".parse().unwrap();
    let mut keys = valid_keys("rogue", "192.0.2.230", &format!("{own};confirmed;1"));
    keys.push(("pod_cidr6", format!("{contested};claiming;{}", u64::MAX / 2)));
    let _rogue = c.rogue("rogue", &as_pairs(&keys)).await;
    let routed = |node: &str, peer: &str, blocks: &[IpNet]| {
        c.datapath(node).last().is_some_and(|d| d.peers.iter().any(|p| p.name == peer && p.pod_cidrs == blocks))
    };
    wait_until(CONVERGE, "every node routes the rogue's IPv4 block, and b both of a's", || {
        ["a", "b"].iter().all(|n| routed(n, "rogue", &[own])) && routed("b", "a", &a_blocks)
    })
    .await;
    let note = format!("lost its PodCIDR claim {contested} to a");
    for n in ["a", "b"] {
        let row = c.peer_row(n, "rogue", "programmed with its lost block named", |p| p.programmed).await;
        assert_eq!(
            (row.pod_cidr, row.pod_cidr6, row.note.as_deref()),
            (Some(own), Some(contested), Some(note.as_str()))
        );
        let status = c.status(n).unwrap();
        assert!(status.conflicts.iter().any(|x| x.pod_cidr == contested && x.winner == "a" && x.losers == ["rogue"]));
        let table = weft_agent::http::status::render(&status);
        let line = table.lines().find(|l| l.starts_with("rogue ")).unwrap();
        assert!(line.contains(&note) && line.contains("yes"), "{table}");
        // The contested block was never routed to the rogue, only ever to a.
        for (_, d) in c.datapath(n).history() {
            for p in d.peers.iter().filter(|p| p.pod_cidrs.contains(&contested)) {
                assert_eq!(p.name, "a", "{n} routed {contested} to {}", p.name);
            }
        }
    }
    assert_eq!(c.status("a").unwrap().node.pod_cidr6, Some(contested), "a keeps its IPv6 block");
    assert!(c.ready("a"));

    // The rogue's probes go to its IPv4 block only: a's node going down (its IPv6 VTEP address
    // with it, where a probe of the lost block would go) leaves the rogue's verdict ok.
    let rogue_ok = |p: &weft_agent::http::status::PeerStatus| p.dataplane.state == PathState::Ok;
    wait_until(CONVERGE, "b's probes of the rogue ok", || {
        c.status("b").is_some_and(|s| s.peers.iter().any(|p| p.name == "rogue" && rogue_ok(p)))
    })
    .await;
    c.take_node_down("a");
    wait_until(CONVERGE, "b's probes see a down", || {
        c.status("b")
            .is_some_and(|s| s.peers.iter().any(|p| p.name == "a" && p.dataplane.state == PathState::Unreachable))
    })
    .await;
    let row = c.peer_row("b", "rogue", "probed ok", rogue_ok).await;
    assert_eq!(row.dataplane.families.keys().copied().collect::<Vec<_>>(), [Family::Ipv4]);
    c.shutdown().await;
}
