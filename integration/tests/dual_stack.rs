//! Pods of both families on the overlay dataplane, end to end in the kernel: three node
//! namespaces on two underlay subnets behind a router that knows no pod route, `Dataplane::apply`
//! run inside each node (through `weft-lab dataplane apply`) with a dual-stack desired state,
//! and pods made by hand with an address of each family. Per family: the ping matrix across
//! subnets, the pod's own source address between pods, egress masqueraded to the node's address
//! of the family, and cleanup leaving nothing. Over an IPv4 and over an IPv6 underlay. Needs root.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use nix::sys::signal::Signal;
use serde_json::Value;
use weft_lab::cluster::{AgentOptions, Cluster as AgentCluster, programmed_peers};
use weft_lab::dataplane::{Encap, apply_in, cleanup_in, desired_with_pods, pod_block};
use weft_lab::pod::{self, Pod, PodSpec};
use weft_lab::probe::tcp_source_seen;
use weft_lab::topology::{Family, Lab, LabSpec};
use weft_lab::wait;
use weft_overlay::CleanupOptions;
use weft_overlay::desired::vtep_of;
use weft_overlay::rules::{first_host, nth_address};

const LIMIT: Duration = Duration::from_secs(10);
const EVERY: Duration = Duration::from_millis(100);
const BOTH: [Family; 2] = [Family::Ipv4, Family::Ipv6];

/// Three nodes (n1 and n3 on the first subnet, n2 on the second) in cross-subnet mode, each with
/// one pod holding host .10 (::10) of the node's block of each family.
struct Cluster {
    // Pods go before the lab: their namespaces are deleted first.
    pods: Vec<Pod>,
    lab: Lab,
}

fn host(block: IpNet, n: u32) -> IpNet {
    IpNet::new(nth_address(&block, n), block.prefix_len()).expect("the block's prefix")
}

fn cluster(underlay: Family) -> Cluster {
    weft_lab::require_root();
    let spec = LabSpec { nodes: 3, subnets: 2, underlay, ..LabSpec::default() };
    let lab = Lab::build(&weft_lab::unique_prefix(), spec).expect("build lab");
    // The datapath first: it makes cni0 with both gateways.
    let mut mtus = Vec::new();
    for (i, node) in lab.nodes.iter().enumerate() {
        let desired = desired_with_pods(&lab, i, Encap::CrossSubnet, &BOTH);
        let report = apply_in(&node.ns, &desired).expect("apply");
        assert!(report.failures.is_empty() && report.rejected.is_empty(), "{report:#?}");
        mtus.push(desired.local.mtu);
    }
    let mut pods = Vec::new();
    for (i, node) in lab.nodes.iter().enumerate() {
        let IpNet::V4(v4) = host(pod_block(Family::Ipv4, i), 10) else { unreachable!("an IPv4 block") };
        let IpAddr::V4(gateway) = first_host(&pod_block(Family::Ipv4, i)) else { unreachable!("an IPv4 block") };
        let spec = PodSpec {
            name: &format!("{}-{}-pod", lab.prefix, node.name),
            host_veth: "vpod0",
            bridge: "cni0",
            address: v4,
            gateway,
            mtu: mtus[i],
        };
        let pod = pod::attach(&node.ns, &spec).expect("pod");
        let v6 = pod_block(Family::Ipv6, i);
        pod.add_address(host(v6, 10), first_host(&v6)).expect("the pod's IPv6 address");
        pods.push(pod);
    }
    Cluster { pods, lab }
}

impl Cluster {
    /// Pod `i`'s address of `family`.
    fn ip(&self, i: usize, family: Family) -> IpAddr {
        host(pod_block(family, i), 10).addr()
    }

    /// Waits until pod `from` gets a ping reply from pod `to` over `family`.
    fn reaches(&self, from: usize, to: usize, family: Family) {
        let ip = self.ip(to, family);
        wait::until(&format!("pod {from} to reach {ip}"), LIMIT, EVERY, || self.pods[from].ping_once(ip).then_some(()))
            .expect("ping");
    }

    fn ping_matrix(&self) {
        for family in BOTH {
            for from in 0..3 {
                for to in (0..3).filter(|to| *to != from) {
                    self.reaches(from, to, family);
                }
            }
        }
    }

    /// The source address pod `to` sees on a TCP connection from pod `from` over `family`.
    fn source_seen(&self, from: usize, to: usize, family: Family, port: u16) -> IpAddr {
        tcp_source_seen(&self.pods[to].ns, self.ip(to, family), port, &self.pods[from].ns).expect("tcp")
    }

    fn routes(&self, i: usize, family: &str) -> String {
        self.lab.nodes[i].ns.ip(&[family, "route", "show", "proto", "87"]).expect("routes")
    }
}

#[test]
fn over_an_ipv4_underlay_pods_of_both_families_reach_each_other_with_their_own_source() {
    let c = cluster(Family::Ipv4);
    // A converged node needs nothing: the IPv6 routes the kernel reports with its default
    // metric are the ones weft added (they were once deleted and re-added on every apply).
    let again = apply_in(&c.lab.nodes[0].ns, &desired_with_pods(&c.lab, 0, Encap::CrossSubnet, &BOTH)).unwrap();
    assert_eq!(again.writes(), 0, "{again:#?}");
    c.ping_matrix();
    for family in BOTH {
        // Across the router (n1 → n2) and on one subnet (n1 → n3: IPv4 routed directly, IPv6
        // through the tunnel), the pod's own address arrives.
        assert_eq!(c.source_seen(0, 1, family, 7001), c.ip(0, family), "{family} across the router");
        assert_eq!(c.source_seen(0, 2, family, 7002), c.ip(0, family), "{family} within a subnet");
    }
    // The IPv6 blocks ride vxlan0 via their VTEPs; n3's IPv4 block goes directly.
    let n3 = &c.lab.nodes[2];
    let v4 = c.routes(0, "-4");
    assert!(v4.contains(&format!("10.244.3.0/24 via {} dev eth0", n3.ip)), "{v4}");
    assert!(v4.contains("10.244.2.0/24 via 10.244.2.0 dev vxlan0"), "{v4}");
    let v6 = c.routes(0, "-6");
    for n in [2, 3] {
        assert!(v6.contains(&format!("fd00:10:244:{n}::/64 via fd00:10:244:{n}:: dev vxlan0")), "{v6}");
    }
    let n1 = &c.lab.nodes[0].ns;
    let vxlan0 = n1.ip(&["addr", "show", "dev", "vxlan0"]).expect("vxlan0");
    assert!(vxlan0.contains("10.244.1.0/32") && vxlan0.contains("fd00:10:244:1::/128"), "{vxlan0}");
    assert_eq!(n1.run("sysctl", &["-n", "net.ipv6.conf.all.forwarding"]).expect("sysctl").trim(), "1");

    // Leaving the cluster, IPv4 is masqueraded to the node's address.
    let ext = &c.lab.external;
    assert_eq!(tcp_source_seen(&ext.ns, ext.ip, 7003, &c.pods[0].ns).unwrap(), c.lab.nodes[0].ip);
}

#[test]
fn over_an_ipv6_underlay_ipv6_egress_is_masqueraded_to_the_nodes_ipv6_address() {
    let c = cluster(Family::Ipv6);
    c.ping_matrix();
    for family in BOTH {
        assert_eq!(c.source_seen(1, 0, family, 7001), c.ip(1, family), "{family} across the router");
        assert_eq!(c.source_seen(2, 0, family, 7002), c.ip(2, family), "{family} within a subnet");
    }
    // Now IPv6 is the family routed directly on one subnet, IPv4 rides vxlan-v6.
    let n3 = &c.lab.nodes[2];
    let v6 = c.routes(0, "-6");
    assert!(v6.contains(&format!("fd00:10:244:3::/64 via {} dev eth0", n3.ip)), "{v6}");
    assert!(v6.contains("fd00:10:244:2::/64 via fd00:10:244:2:: dev vxlan-v6"), "{v6}");
    let v4 = c.routes(0, "-4");
    assert!(v4.contains("10.244.3.0/24 via 10.244.3.0 dev vxlan-v6"), "{v4}");

    let ext = &c.lab.external;
    assert_eq!(tcp_source_seen(&ext.ns, ext.ip, 7003, &c.pods[0].ns).unwrap(), c.lab.nodes[0].ip);
}

#[test]
fn cleanup_leaves_nothing_of_either_family() {
    let c = cluster(Family::Ipv4);
    c.reaches(0, 1, Family::Ipv6);
    let n1 = &c.lab.nodes[0].ns;
    let report = cleanup_in(n1, &CleanupOptions { force: true, ..CleanupOptions::default() }).expect("cleanup");
    assert!(report.failures.is_empty(), "{report:#?}");
    for family in ["-4", "-6"] {
        assert_eq!(c.routes(0, family).trim(), "", "{family} routes stayed");
        // The lab's own static neighbours on eth0 are not weft's.
        let neigh = n1.ip(&[family, "neigh", "show", "nud", "permanent"]).expect("neighbours");
        assert!(!neigh.contains("10.244.") && !neigh.contains("fd00:10:244"), "{neigh}");
    }
    for link in ["vxlan0", "vxlan-v6", "cni0"] {
        assert!(n1.ip(&["link", "show", link]).is_err(), "{link} stayed");
    }
    assert!(n1.run("nft", &["list", "table", "inet", "weft"]).is_err(), "the table stayed");
    let addrs = n1.ip(&["-6", "addr", "show"]).expect("addresses");
    assert!(!addrs.contains("fd00:10:244"), "{addrs}");
}

/// Real agents and the real plugin on a dual-stack cluster (`--cluster-cidr
/// 10.244.0.0/16,fd00:10:244::/56`, `--node-cidr-prefix-v6 64`) over the IPv4 underlay: every
/// node gets a block of each family through gossip, every pod an address of each, and both
/// families reach across the router with the pod's own source.
/// Three nodes (two subnets) with real agents on a dual-stack cluster and one pod each (p1-p3).
fn dual_agents() -> AgentCluster {
    weft_lab::require_root();
    let lab = Lab::build(&weft_lab::unique_prefix(), LabSpec::default()).expect("build lab");
    let extra_args =
        vec!["--cluster-cidr=10.244.0.0/16,fd00:10:244::/56".to_string(), "--node-cidr-prefix-v6=64".to_string()];
    let mut c = AgentCluster::start(lab, AgentOptions { extra_args, ..AgentOptions::default() }).expect("start agents");
    c.wait_converged(Duration::from_secs(30)).expect("converged");
    for i in 0..3 {
        c.add_pod(i, &format!("p{}", i + 1)).expect("pod");
    }
    c
}

/// How long the probes may take to judge every path (a failure needs three 2 s rounds), with
/// room for a loaded machine.
const PROBED: Duration = Duration::from_secs(30);

/// Node `i`'s peers' dataplane as its /status reports them, by peer name.
fn dataplanes(c: &AgentCluster, i: usize) -> Vec<(String, Value)> {
    let status = c.status(i).unwrap_or(Value::Null);
    let peers = status["peers"].as_array().cloned().unwrap_or_default();
    peers.into_iter().map(|p| (p["name"].as_str().unwrap_or("").to_string(), p["dataplane"].clone())).collect()
}

/// A peer's dataplane as (its state, each family's state), e.g. ("ok", [("ipv4", "ok")]).
fn states(dataplane: &Value) -> (String, Vec<(String, String)>) {
    let state = |d: &Value| d["state"].as_str().unwrap_or("").to_string();
    let families = dataplane["families"].as_object().map(|m| m.iter().map(|(f, d)| (f.clone(), state(d))).collect());
    (state(dataplane), families.unwrap_or_default())
}

/// Waits until every node reports, for each peer, what `expected(node, peer)` says.
fn wait_dataplanes(c: &AgentCluster, what: &str, expected: impl Fn(usize, &str) -> (String, Vec<(String, String)>)) {
    let nodes = c.lab.nodes.len();
    let all_as_expected = || {
        (0..nodes).all(|i| {
            let peers = dataplanes(c, i);
            peers.len() == nodes - 1 && peers.iter().all(|(name, d)| states(d) == expected(i, name))
        })
    };
    wait::until(what, PROBED, EVERY, || all_as_expected().then_some(()))
        .unwrap_or_else(|e| panic!("{e}: {:?}", (0..nodes).map(|i| dataplanes(c, i)).collect::<Vec<_>>()));
}

/// Every peer's path `ok` on every node, in each of the cluster's pod `families`.
fn all_ok(families: &[&str]) -> impl Fn(usize, &str) -> (String, Vec<(String, String)>) {
    let families: Vec<(String, String)> = families.iter().map(|f| (f.to_string(), "ok".to_string())).collect();
    move |_, _| ("ok".to_string(), families.clone())
}

#[test]
fn agents_allocate_a_block_per_family_and_pods_of_both_families_reach_each_other() {
    let c = dual_agents();
    let cluster6: IpNet = "fd00:10:244::/56".parse().unwrap();
    let mut blocks6 = Vec::new();
    for i in 0..3 {
        let status = c.status(i).expect("status");
        let block6: IpNet = status["node"]["podCIDR6"].as_str().expect("an IPv6 block").parse().unwrap();
        assert!(cluster6.contains(&block6) && block6.prefix_len() == 64, "{block6}");
        for peer in status["peers"].as_array().expect("peers") {
            assert!(peer["podCIDR6"].as_str().is_some(), "{peer}");
        }
        let pod = &c.pods[i];
        let v6 = pod.ip_of(Family::Ipv6).expect("an IPv6 address");
        assert!(block6.contains(&v6), "{v6} outside {block6}");
        blocks6.push(block6);
    }
    let distinct: std::collections::BTreeSet<&IpNet> = blocks6.iter().collect();
    assert_eq!(distinct.len(), 3, "distinct IPv6 blocks: {blocks6:?}");
    // The first IPv6 packet to a new node's pods is answered at once: the bridge's link-local
    // address is not held back by duplicate address detection (it was, for 1-2 s, and the
    // node could not resolve its pods' addresses meanwhile).
    let n2 = &c.lab.nodes[1].ns;
    assert_eq!(n2.run("sysctl", &["-n", "net.ipv6.conf.cni0.accept_dad"]).unwrap().trim(), "0");
    let first = c.pods[1].ip_of(Family::Ipv6).unwrap();
    assert!(c.pods[0].ping(first), "the first IPv6 ping to {first} went unanswered");
    for family in BOTH {
        for from in &c.pods {
            for to in &c.pods {
                let ip = to.ip_of(family).unwrap();
                let reached =
                    wait::until(&format!("{} to reach {ip}", from.name), LIMIT, EVERY, || from.ping(ip).then_some(()));
                assert!(reached.is_ok(), "{} cannot reach {ip}", from.name);
            }
        }
        // Across the router, the pod's own address arrives.
        let (p1, p2) = (&c.pods[0], &c.pods[1]);
        let seen = tcp_source_seen(&p2.ns, p2.ip_of(family).unwrap(), 7010, &p1.ns).unwrap();
        assert_eq!(seen, p1.ip_of(family).unwrap(), "{family}");
    }
    // IPv6 routes to the peers' blocks ride vxlan0 (the IPv4 underlay's device).
    let routes = c.lab.nodes[0].ns.ip(&["-6", "route", "show", "proto", "87"]).unwrap();
    for block in &blocks6[1..] {
        assert!(routes.contains(&format!("{block} via {} dev vxlan0", vtep_of(block))), "{routes}");
    }
    // The probes agree, per family: n1 and n3 share a subnet, so IPv4 goes directly between
    // them and IPv6 through the tunnel.
    wait_dataplanes(&c, "every path ok in both families", all_ok(&["ipv4", "ipv6"]));
}

/// In n2, drops IPv6 to and from its pod block (`table ip6` in n2's namespace, which the agent
/// does not own and so does not repair); dropped with the lab.
fn drop_ipv6_of_block(c: &AgentCluster, node: usize, block: &str) {
    let ns = &c.lab.nodes[node].ns;
    ns.run("nft", &["add", "table", "ip6", "wl_fault"]).expect("table");
    for (chain, hook, field) in [("in", "prerouting", "daddr"), ("out", "output", "saddr")] {
        let spec = format!("{{ type filter hook {hook} priority -300 ; }}");
        ns.run("nft", &["add", "chain", "ip6", "wl_fault", chain, &spec]).expect("chain");
        ns.run("nft", &["add", "rule", "ip6", "wl_fault", chain, "ip6", field, block, "drop"]).expect("rule");
    }
}

#[test]
fn ipv6_dropped_at_one_peer_is_reported_for_that_family_while_ipv4_passes_and_so_is_the_repair() {
    let c = dual_agents();
    wait_dataplanes(&c, "every path ok in both families", all_ok(&["ipv4", "ipv6"]));
    let n2_block6 = c.status(1).unwrap()["node"]["podCIDR6"].as_str().expect("n2's IPv6 block").to_string();
    let n2_vtep6 = vtep_of(&n2_block6.parse::<IpNet>().unwrap());
    drop_ipv6_of_block(&c, 1, &n2_block6);
    // n2's IPv6 is broken both ways, for every peer of n2 and for n2; IPv4 works everywhere.
    let broken = |f: &[(&str, &str)]| {
        ("tunnel-blocked".to_string(), f.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect())
    };
    let ok = all_ok(&["ipv4", "ipv6"]);
    wait_dataplanes(&c, "n2's IPv6 path reported broken", |i, peer| {
        if i == 1 || peer == "n2" { broken(&[("ipv4", "ok"), ("ipv6", "tunnel-blocked")]) } else { ok(i, peer) }
    });
    let (_, n1_to_n2) = dataplanes(&c, 0).into_iter().find(|(name, _)| name == "n2").unwrap();
    let cause = n1_to_n2["cause"].as_str().unwrap_or_default();
    assert!(
        cause.starts_with(&format!("IPv6 pods: nothing passes the tunnel to {n2_vtep6} while IPv4 pods' packets do")),
        "{cause}"
    );
    // What pods experience agrees.
    let (p1, p2) = (&c.pods[0], &c.pods[1]);
    assert!(!p1.ping(p2.ip_of(Family::Ipv6).unwrap()), "IPv6 to n2's pod must be lost, as reported");
    assert!(p1.ping(p2.ip_of(Family::Ipv4).unwrap()), "IPv4 to n2's pod passes, as reported");

    c.lab.nodes[1].ns.run("nft", &["delete", "table", "ip6", "wl_fault"]).expect("delete the table");
    wait_dataplanes(&c, "the repair reported", all_ok(&["ipv4", "ipv6"]));
    assert!(p1.ping(p2.ip_of(Family::Ipv6).unwrap()));
}

#[test]
fn dual_stack_agents_restart_without_loss_withdraw_a_dead_node_and_clean_up_both_families() {
    let mut c = dual_agents();
    // 10 ms pings for 3 s from n1's pod to n2's, per family, while n2's agent restarts.
    for family in BOTH {
        let text = c.ping_across_restart("p1", "p2", family, 1, 300).unwrap();
        assert!(text.contains("300 received"), "{family} pings were lost across the restart: {text}");
    }
    // n3 dies, agent and network: the others withdraw both its blocks.
    let dead4 = c.pod_cidr(2).unwrap();
    let status = c.status(2).unwrap();
    let dead6 = status["node"]["podCIDR6"].as_str().unwrap().to_string();
    assert!(c.has_route(0, &dead6) && c.has_route(1, &dead6));
    c.kill_node_until_withdrawn(2, &dead4, Duration::from_secs(30)).unwrap();
    wait::until("n3's IPv6 block to be withdrawn", LIMIT, EVERY, || {
        (!c.has_route(0, &dead6) && !c.has_route(1, &dead6)).then_some(())
    })
    .unwrap();
    assert_eq!(programmed_peers(&c.status(0).unwrap()), 1);

    // Cleanup on n1 removes both families' routes, the devices, the table and both leases.
    c.agent(0).unwrap().stop(Signal::SIGTERM, Duration::from_secs(10)).unwrap();
    let n1 = &c.lab.nodes[0];
    let (ok, said) = c.cleanup(0, &["--force"]).unwrap();
    assert!(ok, "{said}");
    assert!(said.contains("lease-v6.json"), "the IPv6 lease is removed: {said}");
    for family in ["-4", "-6"] {
        let routes = n1.ns.ip(&[family, "route", "show", "proto", "87"]).unwrap();
        assert_eq!(routes.trim(), "", "{family} routes stayed");
    }
    assert!(n1.ns.ip(&["link", "show", "vxlan0"]).is_err(), "vxlan0 stayed");
    assert!(n1.ns.run("nft", &["list", "table", "inet", "weft"]).is_err(), "the table stayed");
}

/// An IPv6-only cluster (`--cluster-cidr fd00:10:244::/56`) over an IPv6-only underlay
/// (2001:db8:1::/64 and 2001:db8:2::/64, the off-cluster host on 2001:db8:3::/64): IPv6 pods
/// only, nothing of IPv4 programmed for pods, egress masqueraded to the node's IPv6 address.
#[test]
fn an_ipv6_only_cluster_over_an_ipv6_underlay() {
    weft_lab::require_root();
    let spec = LabSpec { underlay: Family::Ipv6, ..LabSpec::default() };
    let lab = Lab::build(&weft_lab::unique_prefix(), spec).expect("build lab");
    let extra_args = vec!["--cluster-cidr=fd00:10:244::/56".to_string()];
    let mut c = AgentCluster::start(lab, AgentOptions { extra_args, ..AgentOptions::default() }).expect("agents");
    c.wait_converged(Duration::from_secs(30)).expect("converged");
    for i in 0..3 {
        c.add_pod(i, &format!("p{}", i + 1)).expect("pod");
    }
    for pod in &c.pods {
        assert!(pod.ips.len() == 1 && pod.ips[0].is_ipv6(), "IPv6 only: {:?}", pod.ips);
    }
    for from in &c.pods {
        for to in &c.pods {
            let ip = to.ips[0];
            let reached =
                wait::until(&format!("{} to reach {ip}", from.name), LIMIT, EVERY, || from.ping(ip).then_some(()));
            assert!(reached.is_ok(), "{} cannot reach {ip}", from.name);
        }
    }
    let (p1, p2) = (&c.pods[0], &c.pods[1]);
    assert_eq!(tcp_source_seen(&p2.ns, p2.ips[0], 7020, &p1.ns).unwrap(), p1.ips[0]);
    let (n1, ext) = (&c.lab.nodes[0], &c.lab.external);
    assert_eq!(tcp_source_seen(&ext.ns, ext.ip, 7021, &p1.ns).unwrap(), n1.ip, "masqueraded to the node");
    // /status names the IPv6 block as podCIDR (as nodeIP names the IPv6 address) and podCIDR6.
    let status = c.status(0).unwrap();
    assert_eq!(status["node"]["podCIDR"], status["node"]["podCIDR6"]);
    // Nothing of IPv4 for pods: no vxlan0, no IPv4 routes or rules, IPv4 forwarding left alone.
    assert!(n1.ns.ip(&["link", "show", "vxlan0"]).is_err());
    assert_eq!(n1.ns.ip(&["-4", "route", "show", "proto", "87"]).unwrap().trim(), "");
    let table = n1.ns.run("nft", &["list", "table", "inet", "weft"]).unwrap();
    assert!(!table.contains("ip saddr") && table.contains("ip6 saddr fd00:10:244::/56"), "{table}");
    assert_eq!(n1.ns.run("sysctl", &["-n", "net.ipv4.ip_forward"]).unwrap().trim(), "0");
    // The probes speak ICMPv6 over every path (n1 and n3 share a subnet: routed directly).
    wait_dataplanes(&c, "every path ok over IPv6", all_ok(&["ipv6"]));
    // VXLAN dropped between the subnets: the echo to the node over the IPv6 underlay still
    // answers, so n2 is reported tunnel-blocked, not unreachable (and n1-n3 stays ok).
    c.lab.block_between_subnets(8472).unwrap();
    let across = |i: usize, peer: &str| (i == 1) != (peer == "n2");
    wait_dataplanes(&c, "the tunnel between the subnets reported blocked", |i, peer| {
        let state = if across(i, peer) { "tunnel-blocked" } else { "ok" };
        (state.to_string(), vec![("ipv6".to_string(), state.to_string())])
    });
    let (_, n1_to_n2) = dataplanes(&c, 0).into_iter().find(|(name, _)| name == "n2").unwrap();
    let cause = n1_to_n2["cause"].as_str().unwrap_or_default();
    let n2_ip = c.lab.nodes[1].ip;
    assert!(cause.starts_with(&format!("IPv6 pods: the node answers at {n2_ip}")), "{cause}");
    c.lab.router_firewall(&[]).unwrap();
    wait_dataplanes(&c, "the repair reported", all_ok(&["ipv6"]));
}
