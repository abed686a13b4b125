//! IPv4 pods over an IPv6-only underlay: nodes on 2001:db8:1::/64 and 2001:db8:2::/64 behind a
//! router that forwards IPv6 and knows no pod route, real agents and the real plugin. The
//! tunnel must really be IPv6 (vxlan-v6, IPv6 FDB destinations, no vxlan0), the allow-list must
//! hold for IPv6 senders, and restart, death and cleanup must behave as over IPv4. Needs root.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use weft_lab::cluster::{AgentOptions, Cluster, programmed_peers};
use weft_lab::probe::{self, tcp_source_seen};
use weft_lab::topology::{Family, Lab, LabSpec};
use weft_lab::wait;

const CONVERGE: Duration = Duration::from_secs(30);
const VXLAN_PORT: u16 = 8472;

/// Three nodes: n1 and n3 on 2001:db8:1::/64, n2 on 2001:db8:2::/64, one pod each.
fn cluster() -> Cluster {
    weft_lab::require_root();
    let spec = LabSpec { nodes: 3, subnets: 2, underlay: Family::Ipv6, ..LabSpec::default() };
    let lab = Lab::build(&weft_lab::unique_prefix(), spec).expect("build lab");
    let mut c = Cluster::start(lab, AgentOptions::default()).expect("start agents");
    c.wait_converged(CONVERGE).unwrap_or_else(|e| panic!("{e}: {:?}", (0..3).map(|i| c.status(i)).collect::<Vec<_>>()));
    for i in 0..3 {
        c.add_pod(i, &format!("p{}", i + 1)).expect("pod");
    }
    c
}

fn peer<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["peers"].as_array().expect("peers").iter().find(|p| p["name"] == name).expect("peer listed")
}

#[test]
fn ipv4_pods_cross_an_ipv6_only_underlay_inside_ipv6_vxlan() {
    let c = cluster();
    for from in &c.pods {
        for to in &c.pods {
            assert!(from.ping(to.ip), "{} on n{} cannot reach {} on n{}", from.ip, from.node + 1, to.ip, to.node + 1);
        }
    }
    // Across the router and within a subnet, the pod's own address arrives.
    let (p1, p2, p3) = (&c.pods[0], &c.pods[1], &c.pods[2]);
    assert_eq!(tcp_source_seen(&p2.ns, p2.ip, 7001, &p1.ns).unwrap(), p1.ip);
    assert_eq!(tcp_source_seen(&p3.ns, p3.ip, 7002, &p1.ns).unwrap(), p1.ip);

    // The tunnel is IPv6: vxlan-v6 on n1's IPv6 address, no vxlan0, FDB to the peers' IPv6
    // addresses, and the pod MTU leaves the 70 bytes an IPv6 outer header needs.
    let n1 = &c.lab.nodes[0];
    let link = n1.ns.ip(&["-d", "link", "show", "vxlan-v6"]).expect("vxlan-v6 exists");
    assert!(link.contains(&format!("local {}", n1.ip)) && link.contains("mtu 1430"), "{link}");
    assert!(n1.ns.ip(&["link", "show", "vxlan0"]).is_err(), "no IPv4 tunnel without an IPv4 underlay");
    let fdb = n1.ns.run("bridge", &["fdb", "show", "dev", "vxlan-v6"]).unwrap();
    for other in &c.lab.nodes[1..] {
        assert!(fdb.contains(&format!("dst {}", other.ip)), "no FDB entry to {}: {fdb}", other.ip);
    }
    // The pods' packets really cross the router as IPv6 UDP to the VXLAN port.
    let capture = capture_vxlan6(&c, 0, c.lab.nodes[1].ip, || assert!(p1.ping(p2.ip)));
    assert!(capture.contains(&c.lab.nodes[1].ip.to_string()), "no IPv6 VXLAN to n2 on n1's eth0: {capture}");

    // /status names the family per peer and the node's IPv6 address.
    let status = c.status(0).unwrap();
    assert_eq!(status["node"]["nodeIP6"], n1.ip.to_string());
    assert_eq!(peer(&status, "n2")["underlayFamily"], "ipv6");
    assert_eq!(peer(&status, "n2")["nodeIP6"], c.lab.nodes[1].ip.to_string());

    // The allow-list holds the peers' IPv6 addresses, and VXLAN from anyone else is dropped.
    let set = n1.ns.run("nft", &["list", "set", "inet", "weft", "vxlan_peers6"]).unwrap();
    assert!(c.lab.nodes[1..].iter().all(|n| set.contains(&n.ip.to_string())), "{set}");
    let before = ipv6_vxlan_drops(n1);
    let ext = &c.lab.external;
    for _ in 0..3 {
        probe::send_udp(&ext.ns, ext.ip, SocketAddr::new(n1.ip, VXLAN_PORT), &[0x08, 0, 0, 0, 0, 0, 1, 0]).unwrap();
    }
    wait::until("the forged VXLAN to be dropped", Duration::from_secs(5), Duration::from_millis(50), || {
        (ipv6_vxlan_drops(n1) >= before + 3).then_some(())
    })
    .unwrap();
    // The peers' own tunnel traffic is not dropped.
    let peers_before = ipv6_vxlan_drops(n1);
    assert!(p2.ping(p1.ip) && p3.ping(p1.ip));
    assert_eq!(ipv6_vxlan_drops(n1), peers_before, "a peer's VXLAN was dropped");
}

/// Packets the IPv6 VXLAN drop rule of node `n` has counted, from its nftables rule.
fn ipv6_vxlan_drops(n: &weft_lab::topology::Node) -> u64 {
    let chain = n.ns.run("nft", &["list", "chain", "inet", "weft", "vxlan_ingress"]).expect("weft's chain");
    let rule = chain.lines().find(|l| l.contains("ip6 daddr")).unwrap_or_else(|| panic!("no IPv6 drop rule: {chain}"));
    let words: Vec<&str> = rule.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "packets").expect("a counter");
    words[at + 1].parse().expect("a count")
}

#[test]
fn over_ipv6_a_restart_loses_no_ping_a_dead_node_is_withdrawn_and_cleanup_removes_all() {
    let mut c = cluster();
    // 10 ms pings for 4 s from n1's pod to n2's while n2's agent stops and starts again.
    let cidr = c.pod_cidr(1).unwrap();
    let text = c.ping_across_restart("p1", "p2", Family::Ipv4, 1, 400).unwrap();
    assert!(text.contains("400 received"), "pings were lost across the restart: {text}");
    assert_eq!(c.pod_cidr(1).unwrap(), cidr, "a restart keeps the PodCIDR");

    // n3 dies, agent and network: the others withdraw it.
    let dead = c.pod_cidr(2).unwrap();
    assert!(c.has_route(0, &dead) && c.has_route(1, &dead));
    let took = c.kill_node_until_withdrawn(2, &dead, Duration::from_secs(30)).unwrap();
    eprintln!("dead node withdrawn after {took:?}");
    assert_eq!(programmed_peers(&c.status(0).unwrap()), 1);

    // Cleanup on n1 removes the IPv6 tunnel, its routes and the allow-list.
    c.agent(0).unwrap().stop(Signal::SIGTERM, Duration::from_secs(10)).unwrap();
    let n1 = &c.lab.nodes[0];
    let (ok, said) = c.cleanup(0, &["--force"]).unwrap();
    assert!(ok, "{said}");
    assert!(n1.ns.ip(&["link", "show", "vxlan-v6"]).is_err(), "vxlan-v6 stayed");
    assert!(n1.ns.run("nft", &["list", "table", "inet", "weft"]).is_err(), "the allow-list stayed");
    assert_eq!(n1.ns.ip(&["route", "show", "proto", "87"]).unwrap().trim(), "", "weft's routes stayed");
}

/// IPv6 UDP to the VXLAN port between node `i` and `peer`, on node `i`'s eth0 while `traffic`
/// runs (tcpdump's lines).
fn capture_vxlan6(c: &Cluster, i: usize, peer: std::net::IpAddr, traffic: impl FnOnce()) -> String {
    let filter = format!("ip6 and udp port {VXLAN_PORT} and host {peer}");
    let dump = c.lab.nodes[i]
        .ns
        .command("timeout")
        .args(["5", "tcpdump", "-ni", "eth0", "-c", "2", "-l", &filter])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tcpdump");
    // tcpdump needs a moment to start listening.
    std::thread::sleep(Duration::from_millis(700));
    traffic();
    let out = dump.wait_with_output().expect("tcpdump output");
    let lines = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!lines.is_empty(), "tcpdump saw nothing: {}", String::from_utf8_lossy(&out.stderr));
    lines
}
