//! Real agents in node namespaces on two subnets behind a router that has no route for pod
//! addresses: membership by gossip from one seed, PodCIDRs, datapath, and what happens when an
//! agent dies, leaves, restarts or joins late. Needs root.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use weft_agent::membership::Liveness;
use weft_lab::cluster::{AgentOptions, Cluster, programmed_peers};
use weft_lab::probe::tcp_source_seen;
use weft_lab::topology::{Family, Lab, LabSpec};

const CONVERGE: Duration = Duration::from_secs(30);

fn cluster(nodes: usize, started: usize) -> Cluster {
    weft_lab::require_root();
    let lab =
        Lab::build(&weft_lab::unique_prefix(), LabSpec { nodes, subnets: 2, ..LabSpec::default() }).expect("build lab");
    Cluster::start_some(lab, AgentOptions::default(), started).expect("start agents")
}

#[test]
fn three_agents_converge_from_one_seed_and_pods_reach_each_other_without_nat() {
    let mut c = cluster(3, 3);
    c.wait_converged(CONVERGE).unwrap_or_else(|e| panic!("{e}: {:?}", (0..3).map(|i| c.status(i)).collect::<Vec<_>>()));
    let cidrs: Vec<String> = (0..3).map(|i| c.pod_cidr(i).unwrap()).collect();
    assert!(cidrs[0] != cidrs[1] && cidrs[1] != cidrs[2] && cidrs[0] != cidrs[2], "{cidrs:?}");

    for i in 0..3 {
        c.add_pod(i, "a").unwrap();
    }
    for from in &c.pods {
        for to in &c.pods {
            assert!(from.ping(to.ip), "{} on n{} cannot reach {} on n{}", from.ip, from.node + 1, to.ip, to.node + 1);
        }
    }
    // n1 (192.0.2.0/24) to n2 (198.51.100.0/24) crosses the router inside VXLAN: the remote pod
    // sees the client pod's own address.
    let (p1, p2) = (&c.pods[0], &c.pods[1]);
    let seen = tcp_source_seen(&p2.ns, p2.ip, 7001, &p1.ns).unwrap();
    assert_eq!(seen, p1.ip, "pod-to-pod traffic must keep the pod address");
    // Leaving the cluster it is masqueraded to the node's address.
    let ext = &c.lab.external;
    let seen = tcp_source_seen(&ext.ns, ext.ip, 7002, &p1.ns).unwrap();
    assert_eq!(seen, c.lab.nodes[0].ip, "egress must be masqueraded to the node IP");
}

#[test]
fn a_node_that_dies_is_withdrawn_by_the_others() {
    let mut c = cluster(3, 3);
    c.wait_converged(CONVERGE).unwrap();
    let dead_cidr = c.pod_cidr(2).unwrap();
    assert!(c.has_route(0, &dead_cidr) && c.has_route(1, &dead_cidr));
    // The whole node goes: its agent and its network (its tunnel stops answering too).
    let took = c.kill_node_until_withdrawn(2, &dead_cidr, Duration::from_secs(30)).unwrap();
    eprintln!("dead node withdrawn after {took:?}");
    for i in 0..2 {
        let status = c.status(i).unwrap();
        assert_eq!(programmed_peers(&status), 1, "{status}");
    }
}

/// An agent upgrade whose image pull takes a minute: the node and its pods keep working, and so
/// must their routes on every other node.
#[test]
fn a_stopped_agent_costs_its_pods_nothing_while_its_node_works() {
    const PINGS: u32 = 6500; // 65 s at 10 ms
    let mut c = cluster(3, 3);
    c.wait_converged(CONVERGE).unwrap();
    c.add_pod(0, "a").unwrap();
    c.add_pod(2, "c").unwrap();
    let cidr = c.pod_cidr(2).unwrap();
    let (src, dst) = (c.pod("a").unwrap(), c.pod("c").unwrap().ip.to_string());
    let mut ping = src.ns.command("ping");
    ping.args(["-i", "0.01", "-c", &PINGS.to_string(), "-W", "1", &dst]).stdout(std::process::Stdio::piped());
    let pinger = ping.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    c.agent(2).unwrap().stop(Signal::SIGTERM, Duration::from_secs(10)).unwrap();
    let stopped = Instant::now();
    let mut kept_while_away = true;
    while stopped.elapsed() < Duration::from_secs(60) {
        kept_while_away &= c.has_route(0, &cidr) && c.has_route(1, &cidr);
        std::thread::sleep(Duration::from_millis(500));
    }
    let note =
        c.status(0).unwrap()["peers"].as_array().unwrap().iter().find(|p| p["name"] == "n3").unwrap()["note"].clone();
    c.start_agent(2).unwrap();
    c.wait_converged(CONVERGE).unwrap();
    let out = pinger.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(kept_while_away, "a peer withdrew n3 while only its agent was down");
    assert!(note.as_str().is_some_and(|n| n.contains("its tunnel answers")), "{note}");
    assert!(text.contains(&format!("{PINGS} received")), "pings lost while n3's agent was down: {text}");
    // The stopped node's own datapath stayed for its pods.
    assert!(c.lab.nodes[2].ns.ip(&["link", "show", "vxlan0"]).is_ok());
}

#[test]
fn a_restarted_agent_loses_no_ping_and_keeps_its_pod_cidr() {
    let mut c = cluster(3, 3);
    c.wait_converged(CONVERGE).unwrap();
    c.add_pod(0, "a").unwrap();
    c.add_pod(1, "b").unwrap();
    let cidr = c.pod_cidr(1).unwrap();
    assert_eq!(gossip_members(&c, 0), 2.0);
    // 10 ms pings for 4 s while n2's agent stops and starts again.
    let text = c.ping_across_restart("a", "b", Family::Ipv4, 1, 400).unwrap();
    assert!(text.contains("400 received"), "pings were lost across the restart: {text}");
    assert_eq!(c.pod_cidr(1).unwrap(), cidr, "a restart keeps the PodCIDR");
    // The earlier run is forgotten once dead, not after the hour of --dead-node-grace-period:
    // a restart must not leave a second member in every digest.
    weft_lab::wait::until("n1 forgets n2's earlier run", CONVERGE, Duration::from_millis(200), || {
        (gossip_members(&c, 0) == 2.0).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {} members", gossip_members(&c, 0)));
}

/// Every generation of every other node that node `i`'s gossip holds.
fn gossip_members(c: &Cluster, i: usize) -> f64 {
    Liveness::ALL
        .iter()
        .map(|l| c.metric(i, &format!("weft_gossip_members{{state=\"{}\"}}", l.as_str())).unwrap())
        .sum()
}

#[test]
fn a_node_joining_late_is_programmed_everywhere() {
    let mut c = cluster(3, 2);
    c.wait_converged(CONVERGE).unwrap();
    c.add_pod(0, "a").unwrap();
    c.start_agent(2).unwrap();
    c.wait_converged(CONVERGE).unwrap();
    c.add_pod(2, "late").unwrap();
    let (a, late) = (c.pod("a").unwrap(), c.pod("late").unwrap());
    assert!(a.ping(late.ip) && late.ping(a.ip));
}

/// Placeholders in [`DAMAGE`] for a block no node of the cluster holds (chosen once the blocks
/// are allocated: a fixed one collides with a live peer's now and then).
const GONE_CIDR: &str = "<gone-cidr>";
const GONE_VTEP: &str = "<gone-vtep>";

/// What a SIGKILL in the middle of an apply can leave behind: any part of weft's kernel objects
/// missing or half-set, and objects of peers that have gone since. Each is one damage.
const DAMAGE: &[(&str, &[&str])] = &[
    ("routes of peers removed", &["sh", "-c", "ip route show proto 87 | while read r; do ip route del $r; done"]),
    ("neighbours on vxlan0 flushed", &["ip", "neigh", "flush", "dev", "vxlan0"]),
    (
        "FDB entries removed",
        &["sh", "-c", "bridge fdb show dev vxlan0 | grep dst | while read f; do bridge fdb del $f dev vxlan0; done"],
    ),
    ("nftables table removed", &["nft", "delete", "table", "inet", "weft"]),
    (
        "a gone peer still routed",
        &["ip", "route", "add", GONE_CIDR, "via", GONE_VTEP, "dev", "vxlan0", "onlink", "proto", "87"],
    ),
    (
        "a gone peer's FDB entry",
        &["bridge", "fdb", "append", "0a:58:0a:f4:fa:00", "dev", "vxlan0", "dst", "203.0.113.99"],
    ),
    // Last: routes cannot be added through a device that is down.
    ("vxlan0 down with a wrong MTU", &["sh", "-c", "ip link set vxlan0 down && ip link set vxlan0 mtu 1300"]),
];

#[test]
fn an_agent_killed_mid_reconcile_converges_on_the_next_start() {
    let mut c = cluster(3, 3);
    c.wait_converged(CONVERGE).unwrap();
    for i in 0..3 {
        c.add_pod(i, "p").unwrap();
    }
    let seed: u64 = rand::random();
    eprintln!("damage seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    // Every damage alone, then all together, then random mixes.
    let mut rounds: Vec<Vec<usize>> = (0..DAMAGE.len()).map(|d| vec![d]).collect();
    rounds.push((0..DAMAGE.len()).collect());
    for _ in 0..3 {
        rounds.push((0..DAMAGE.len()).filter(|_| rng.random_bool(0.5)).collect());
    }
    let peer_cidrs: Vec<String> = (1..3).map(|i| c.pod_cidr(i).unwrap()).collect();
    let held = [c.pod_cidr(0).unwrap(), peer_cidrs[0].clone(), peer_cidrs[1].clone()];
    let gone_vtep = (240..=250).map(|n| format!("10.244.{n}.0")).find(|v| !held.contains(&format!("{v}/24"))).unwrap();
    let gone_cidr = format!("{gone_vtep}/24");
    for damage in rounds {
        c.agent(0).unwrap().stop(Signal::SIGKILL, Duration::from_secs(5)).unwrap();
        for &d in &damage {
            let (what, cmd) = DAMAGE[d];
            let args: Vec<&str> = cmd[1..]
                .iter()
                .map(|&a| match a {
                    GONE_CIDR => gone_cidr.as_str(),
                    GONE_VTEP => gone_vtep.as_str(),
                    a => a,
                })
                .collect();
            c.lab.nodes[0].ns.run(cmd[0], &args).unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        let names: Vec<&str> = damage.iter().map(|&d| DAMAGE[d].0).collect();
        c.start_agent(0).unwrap();
        c.wait_converged(CONVERGE).unwrap_or_else(|e| panic!("after {names:?}: {e}"));
        let node = &c.lab.nodes[0];
        let routes = node.ns.ip(&["route", "show", "proto", "87"]).unwrap();
        for cidr in &peer_cidrs {
            assert!(routes.contains(cidr.as_str()), "after {names:?}: no route to {cidr}: {routes}");
        }
        assert!(!routes.contains(&gone_cidr), "after {names:?}: the gone peer is still routed");
        let fdb = node.ns.run("bridge", &["fdb", "show", "dev", "vxlan0"]).unwrap();
        assert!(!fdb.contains("203.0.113.99"), "after {names:?}: the gone peer's FDB entry stayed: {fdb}");
        let link = node.ns.ip(&["link", "show", "vxlan0"]).unwrap();
        assert!(link.contains(",UP") && !link.contains("mtu 1300"), "after {names:?}: {link}");
        assert!(node.ns.run("nft", &["list", "table", "inet", "weft"]).is_ok(), "after {names:?}: no nft table");
        let pod = &c.pods[0];
        for other in &c.pods[1..] {
            assert!(pod.ping(other.ip), "after {names:?}: {} cannot reach {}", pod.ip, other.ip);
        }
    }
}
