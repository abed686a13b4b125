//! End-to-end scenarios (issue 6 item 3): real agents in node namespaces on two subnets behind a
//! router without pod routes, pods attached by the real plugin (and once by podman). n1 and n3
//! share 192.0.2.0/24; n2 is on 198.51.100.0/24. Needs root.

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use weft_lab::cluster::{AgentOptions, Cluster, Pod};
use weft_lab::probe::{tcp_source_seen, udp_source_seen};
use weft_lab::topology::{Lab, LabSpec};
use weft_lab::{Netns, netns, wait};

const CONVERGE: Duration = Duration::from_secs(30);

fn cluster(nodes: usize, options: AgentOptions) -> Cluster {
    weft_lab::require_root();
    let lab =
        Lab::build(&weft_lab::unique_prefix(), LabSpec { nodes, subnets: 2, ..LabSpec::default() }).expect("build lab");
    let c = Cluster::start(lab, options).expect("start agents");
    c.wait_converged(CONVERGE)
        .unwrap_or_else(|e| panic!("{e}: {:?}", (0..nodes).map(|i| c.status(i)).collect::<Vec<_>>()));
    c
}

fn describe(p: &Pod) -> String {
    format!("{} ({}) on n{}", p.name, p.ip, p.node + 1)
}

/// A 10 ms ping of `count` packets from `from`, running in the background.
fn spawn_ping(from: &Pod, to: Ipv4Addr, interval: &str, count: u32) -> Child {
    let mut ping = from.ns.command("ping");
    ping.args(["-i", interval, "-c", &count.to_string(), "-W", "1", &to.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    ping.spawn().expect("spawn ping")
}

fn ping_output(child: Child) -> String {
    String::from_utf8_lossy(&child.wait_with_output().expect("ping output").stdout).into_owned()
}

/// UDP 8472 packets to or from `host` that tcpdump sees on node `ns`'s eth0 within `secs`.
/// Returns the captured lines (empty when nothing was captured).
fn capture_vxlan(ns: &Netns, host: IpAddr, secs: u32) -> String {
    let filter = format!("udp port 8472 and host {host}");
    let out = ns
        .command("timeout")
        .args([&secs.to_string(), "tcpdump", "-ni", "eth0", "-c", "1", "-l", &filter])
        .stdin(Stdio::null())
        .output()
        .expect("run tcpdump");
    // tcpdump exits 0 after one packet, timeout exits 124 when nothing came.
    let code = out.status.code();
    assert!(
        matches!(code, Some(0) | Some(124)),
        "tcpdump failed: {:?}: {}",
        code,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn pods_reach_each_other_across_and_within_subnets_over_icmp_tcp_and_udp_keeping_source_ips() {
    let mut c = cluster(3, AgentOptions::default());
    for (node, name) in [(0, "a"), (0, "a2"), (1, "b"), (2, "c")] {
        c.add_pod(node, name).unwrap();
    }
    // Same node (a–a2), same subnet (n1–n3), across subnets (n1–n2, n3–n2), both directions.
    let mut port = 7100;
    for from in &c.pods {
        for to in c.pods.iter().filter(|p| p.name != from.name) {
            assert!(from.ping(to.ip), "ICMP: {} cannot reach {}", describe(from), describe(to));
            port += 1;
            let seen = tcp_source_seen(&to.ns, to.ip, port, &from.ns)
                .unwrap_or_else(|e| panic!("TCP {} -> {}: {e}", describe(from), describe(to)));
            assert_eq!(seen, from.ip, "TCP {} -> {}: source rewritten", describe(from), describe(to));
            let seen = udp_source_seen(&to.ns, to.ip, port, &from.ns)
                .unwrap_or_else(|e| panic!("UDP {} -> {}: {e}", describe(from), describe(to)));
            assert_eq!(seen, from.ip, "UDP {} -> {}: source rewritten", describe(from), describe(to));
        }
    }
}

#[test]
fn cross_subnet_encap_routes_same_subnet_peers_directly_and_tunnels_only_across_subnets() {
    let mut c = cluster(3, AgentOptions { cross_subnet: true, ..AgentOptions::default() });
    let (n1, n2, n3) = (&c.lab.nodes[0], &c.lab.nodes[1], &c.lab.nodes[2]);
    assert_eq!(n1.subnet, n3.subnet);
    assert_ne!(n1.subnet, n2.subnet);
    let (n2_ip, n3_ip) = (n2.ip, n3.ip);
    let n3_cidr = c.pod_cidr(2).unwrap();
    let n2_cidr = c.pod_cidr(1).unwrap();

    let routes = c.lab.nodes[0].ns.ip(&["route", "show", "proto", "87"]).unwrap();
    let direct = routes.lines().find(|l| l.starts_with(&format!("{n3_cidr} "))).unwrap_or_default();
    assert!(
        direct.contains(&format!("via {n3_ip} ")) && direct.contains("dev eth0"),
        "n1 must route n3's {n3_cidr} via {n3_ip} dev eth0:\n{routes}"
    );
    let tunnelled = routes.lines().find(|l| l.starts_with(&format!("{n2_cidr} "))).unwrap_or_default();
    assert!(tunnelled.contains("dev vxlan0"), "n1 must route n2's {n2_cidr} over vxlan0:\n{routes}");

    c.add_pod(0, "a").unwrap();
    c.add_pod(1, "b").unwrap();
    c.add_pod(2, "c").unwrap();
    let (a, b, cc) = (c.pod("a").unwrap(), c.pod("b").unwrap(), c.pod("c").unwrap());
    for (x, y) in [(a, b), (b, a), (a, cc), (cc, a), (b, cc), (cc, b)] {
        assert!(x.ping(y.ip), "{} cannot reach {}", describe(x), describe(y));
    }

    // Pods ping n1 -> n3 for 3 s while n1's eth0 is watched for 2 s: no VXLAN to or from n3.
    let pinger = spawn_ping(a, cc.ip, "0.1", 30);
    std::thread::sleep(Duration::from_millis(300));
    let captured = capture_vxlan(&c.lab.nodes[0].ns, n3_ip, 2);
    let out = ping_output(pinger);
    assert!(captured.is_empty(), "same-subnet traffic n1 -> n3 was encapsulated: {captured}");
    assert!(out.contains(" 0% packet loss"), "n1 -> n3 pings failed during the capture: {out}");

    // The same from n1 to n2 is VXLAN.
    let pinger = spawn_ping(a, b.ip, "0.1", 30);
    let captured = capture_vxlan(&c.lab.nodes[0].ns, n2_ip, 3);
    let out = ping_output(pinger);
    assert!(captured.contains("VXLAN") || captured.contains("8472"), "no VXLAN between n1 and n2: {captured:?}");
    assert!(out.contains(" 0% packet loss"), "n1 -> n2 pings failed during the capture: {out}");
}

#[test]
fn an_agent_killed_with_sigkill_and_restarted_loses_no_ping_and_keeps_its_pod_cidr() {
    let mut c = cluster(3, AgentOptions::default());
    for (node, name) in [(0, "a"), (1, "b"), (2, "c")] {
        c.add_pod(node, name).unwrap();
    }
    let cidr = c.pod_cidr(2).unwrap();
    let (a, b, cc) = (c.pod("a").unwrap(), c.pod("b").unwrap(), c.pod("c").unwrap());
    // 10 ms pings for 4 s: between the pods of the two other nodes, to and from n3's pod.
    let pingers = [
        ("a -> b", spawn_ping(a, b.ip, "0.01", 400)),
        ("a -> c", spawn_ping(a, cc.ip, "0.01", 400)),
        ("c -> b", spawn_ping(cc, b.ip, "0.01", 400)),
    ];
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    c.agent(2).unwrap().stop(Signal::SIGKILL, Duration::from_secs(5)).unwrap();
    c.start_agent(2).unwrap();
    c.wait_converged(CONVERGE).unwrap();
    eprintln!("n3 killed, restarted and converged in {:?}", start.elapsed());
    for (what, pinger) in pingers {
        let out = ping_output(pinger);
        assert!(out.contains("400 received"), "{what}: pings lost across the kill and restart: {out}");
    }
    assert_eq!(c.pod_cidr(2).unwrap(), cidr, "a restart after SIGKILL keeps the PodCIDR");
}

#[test]
fn simultaneous_joins_into_a_tiny_cluster_cidr_resolve_pod_cidr_conflicts() {
    let options = AgentOptions {
        extra_args: vec!["--cluster-cidr=10.244.0.0/22".into(), "--node-cidr-prefix=24".into()],
        ..AgentOptions::default()
    };
    // Four /24 blocks for four nodes, every agent started at once: collisions are likely and
    // every block ends up used.
    let mut c = cluster(4, options);
    let cidrs: Vec<String> = (0..4).map(|i| c.pod_cidr(i).unwrap()).collect();
    let mut sorted = cidrs.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 4, "PodCIDRs are not distinct: {cidrs:?}");
    let cluster_cidr: ipnet::Ipv4Net = "10.244.0.0/22".parse().unwrap();
    for cidr in &cidrs {
        let net: ipnet::Ipv4Net = cidr.parse().unwrap();
        assert!(cluster_cidr.contains(&net) && net.prefix_len() == 24, "{cidr} outside {cluster_cidr}");
    }
    // Nothing is left unresolved; how many collisions there were (timing decides) is only reported.
    for i in 0..4 {
        let status = c.status(i).unwrap();
        assert!(status["conflicts"].as_array().is_some_and(|a| a.is_empty()), "unresolved conflicts: {status}");
    }
    let seen: Vec<String> = (0..4)
        .map(|i| {
            let (_, metrics) = c.get(i, "/metrics").unwrap();
            metrics.lines().find(|l| l.starts_with("weft_podcidr_conflicts_total")).unwrap_or("none").to_string()
        })
        .collect();
    eprintln!("PodCIDRs {cidrs:?}; conflicts seen per node: {seen:?}");
    for i in 0..4 {
        c.add_pod(i, "p").unwrap();
    }
    for from in &c.pods {
        for to in c.pods.iter().filter(|p| p.node != from.node) {
            assert!(from.ping(to.ip), "{} cannot reach {}", describe(from), describe(to));
        }
    }
}

/// A real runtime (podman 4.3, libcni) reads the conflist the agent wrote: this pins that its
/// cniVersion is one such a runtime can use (1.1.0 results are unreadable for podman 4.3).
#[test]
fn a_podman_container_on_one_node_reaches_a_pod_on_another_through_the_agent_conflist() {
    let mut c = cluster(2, AgentOptions::default());
    let target = c.add_pod(1, "b").unwrap().ip;
    let n1 = &c.lab.nodes[0];
    let path = n1.path("net.d").join(weft_lab::cluster::CONFLIST);
    let conflist: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let network = conflist["name"].as_str().expect("conflist has a name").to_string();
    let plugin_dirs = [weft_lab::bins::dir(), "/usr/lib/cni".into()];
    let podman = weft_lab::podman::Podman::new(&c.lab.dir.join("podman"), &conflist, &plugin_dirs).unwrap();
    let name = format!("{}-c1", c.lab.prefix);
    let script = format!("ip -o -4 addr show eth0; ping -c 3 -W 2 {target}");
    let out = podman.run(&n1.ns.path(), &network, &name, &script).unwrap_or_else(|e| panic!("podman run failed: {e}"));
    let cidr: ipnet::Ipv4Net = c.pod_cidr(0).unwrap().parse().unwrap();
    let addr = out
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse::<Ipv4Addr>().ok())
        .unwrap_or_else(|| panic!("no address in {out}"));
    assert!(cidr.contains(&addr), "container address {addr} is not from n1's PodCIDR {cidr}");
    assert!(out.contains("3 packets received"), "the container cannot reach {target} on n2: {out}");
}

#[test]
fn agent_cleanup_leaves_no_trace_on_the_node() {
    let mut c = cluster(2, AgentOptions::default());
    c.add_pod(1, "b1").unwrap();
    c.add_pod(1, "b2").unwrap();
    c.add_pod(0, "a").unwrap();
    let node = &c.lab.nodes[1];
    // What the agent made is there before cleanup, so the checks below can see it go.
    for dev in ["vxlan0", "cni0"] {
        assert!(node.ns.ip(&["link", "show", dev]).is_ok(), "{dev} missing before cleanup");
    }
    assert!(!node.ns.ip(&["route", "show", "proto", "87"]).unwrap().trim().is_empty());
    assert!(node.ns.run("nft", &["list", "tables"]).unwrap().contains("inet weft"));
    assert!(node.path("net.d").join(weft_lab::cluster::CONFLIST).exists() && node.path("run/node.json").exists());

    c.agent(1).unwrap().stop(Signal::SIGTERM, Duration::from_secs(10)).unwrap();
    c.del_pod("b1").unwrap();
    c.del_pod("b2").unwrap();
    let node = &c.lab.nodes[1];
    let weft_veths = || -> Vec<String> {
        let links = node.ns.link_names().expect("list links");
        links.into_iter().filter(|n| weft_cni::names::is_weft_veth(n)).collect()
    };
    wait::until("DEL to reap n2's veths", Duration::from_secs(10), Duration::from_millis(20), || {
        weft_veths().is_empty().then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", weft_veths()));

    let agent = weft_lab::bins::path("weft-agent").unwrap();
    let mut cleanup = Command::new(agent);
    cleanup
        .arg("cleanup")
        .arg(format!("--state-dir={}", node.path("run").display()))
        .arg(format!("--cni-conf-dir={}", node.path("net.d").display()))
        .arg(format!("--ipam-dir={}", node.path("ipam").display()));
    let status = netns::within(&node.ns.path(), || cleanup.status()).unwrap().unwrap();
    assert!(status.success(), "weft-agent cleanup failed: {status}");

    let links = node.ns.ip(&["-o", "link", "show"]).unwrap();
    for dev in ["vxlan0", "cni0"] {
        assert!(node.ns.ip(&["link", "show", dev]).is_err(), "{dev} left behind:\n{links}");
    }
    assert!(weft_veths().is_empty(), "weft veths left behind: {:?}", weft_veths());
    let routes = node.ns.ip(&["route", "show", "table", "all", "proto", "87"]).unwrap();
    assert!(routes.trim().is_empty(), "weft routes left behind:\n{routes}");
    let tables = node.ns.run("nft", &["list", "tables"]).unwrap();
    assert!(!tables.contains("inet weft"), "nftables table left behind:\n{tables}");
    for file in [node.path("net.d").join(weft_lab::cluster::CONFLIST), node.path("run").join("node.json")] {
        assert!(!file.exists(), "{} left behind", file.display());
    }
    // n1 is untouched by n2's cleanup: its pod still has its node.
    assert!(c.lab.nodes[0].ns.ip(&["link", "show", "vxlan0"]).is_ok());
}
