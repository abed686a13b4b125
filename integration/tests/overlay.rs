//! The overlay dataplane end to end: three node namespaces on two underlay subnets behind a
//! router that has no route for any pod CIDR, pods made by hand on each node's cni0, and
//! `Dataplane::apply` run inside each node (through `weft-lab dataplane apply`). Needs root.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ipnet::Ipv4Net;
use serde_json::Value;
use weft_lab::dataplane::{Encap, apply_in, cleanup_in, desired_for, pod_cidr};
use weft_lab::netns::{Netns, within};
use weft_lab::pod::{self, Pod, PodSpec};
use weft_lab::probe::{self, Listener};
use weft_lab::process::Process;
use weft_lab::topology::{Lab, LabSpec};
use weft_lab::wait;
use weft_overlay::desired::{Desired, Peer, PeerPath};
use weft_overlay::rules::first_host;
use weft_overlay::{ApplyReport, CleanupOptions, Mac};

const LIMIT: Duration = Duration::from_secs(10);

/// The bridge's address in an IPv4 block.
fn gateway(cidr: Ipv4Net) -> Ipv4Addr {
    let IpAddr::V4(gateway) = first_host(&cidr.into()) else { unreachable!("an IPv4 block's first host") };
    gateway
}
const EVERY: Duration = Duration::from_millis(100);

/// A lab of three nodes (n1 and n3 on 192.0.2.0/24, n2 on 198.51.100.0/24) with one pod each.
struct Cluster {
    // Pods go before the lab: their namespaces are deleted first.
    pods: Vec<Pod>,
    lab: Lab,
}

fn cluster() -> Cluster {
    weft_lab::require_root();
    let lab = Lab::build(&weft_lab::unique_prefix(), LabSpec::default()).expect("lab");
    let mut pods = Vec::new();
    for (i, node) in lab.nodes.iter().enumerate() {
        // No IPv6: its timers (DAD, router solicitations) would put events into the monitors.
        for key in ["all", "default"] {
            node.ns.sysctl(&format!("net.ipv6.conf.{key}.disable_ipv6"), "1").expect("sysctl");
        }
        let cidr = pod_cidr(i);
        let address = Ipv4Net::new(Ipv4Addr::from(u32::from(cidr.network()) + 10), 24).unwrap();
        let spec = PodSpec {
            name: &format!("{}-{}-pod", lab.prefix, node.name),
            host_veth: "vpod0",
            bridge: "cni0",
            address,
            gateway: gateway(cidr),
            mtu: 1450,
        };
        pods.push(pod::attach(&node.ns, &spec).expect("pod"));
    }
    Cluster { pods, lab }
}

impl Cluster {
    fn ns(&self, i: usize) -> &Netns {
        &self.lab.nodes[i].ns
    }

    fn desired(&self, i: usize, encap: Encap) -> Desired {
        desired_for(&self.lab, i, encap)
    }

    fn apply(&self, i: usize, d: &Desired) -> ApplyReport {
        let report = apply_in(self.ns(i), d).expect("apply");
        assert!(report.failures.is_empty(), "{report:#?}");
        assert!(report.rejected.is_empty(), "{report:#?}");
        report
    }

    fn apply_all(&self, encap: Encap) -> Vec<ApplyReport> {
        (0..self.lab.nodes.len()).map(|i| self.apply(i, &self.desired(i, encap))).collect()
    }

    /// Waits until pod `from` gets a ping reply from pod `to`.
    fn reaches(&self, from: usize, to: usize) {
        reaches(&self.pods[from], &self.pods[to]);
    }

    /// Attaches a second pod to node `i`'s cni0, in `cidr` (the node's PodCIDR by now).
    fn second_pod(&self, i: usize, cidr: Ipv4Net) -> Pod {
        let spec = PodSpec {
            name: &format!("{}-{}-pod2", self.lab.prefix, self.lab.nodes[i].name),
            host_veth: "vpod1",
            bridge: "cni0",
            address: Ipv4Net::new(Ipv4Addr::from(u32::from(cidr.network()) + 10), cidr.prefix_len()).unwrap(),
            gateway: gateway(cidr),
            mtu: 1450,
        };
        pod::attach(self.ns(i), &spec).expect("pod")
    }

    /// Applies every other node's desired state with node `i` as `changed` says it now is.
    fn peers_learn(&self, i: usize, encap: Encap, changed: impl Fn(&mut Peer)) {
        for j in (0..self.lab.nodes.len()).filter(|&j| j != i) {
            let mut d = self.desired(j, encap);
            d.peers.iter_mut().filter(|p| p.name == self.lab.nodes[i].name).for_each(&changed);
            self.apply(j, &d);
        }
    }

    fn text(&self, i: usize, program: &str, args: &[&str]) -> String {
        self.ns(i).run(program, args).expect(program)
    }
}

/// Waits until pod `from` gets a ping reply from pod `to`.
fn reaches(from: &Pod, to: &Pod) {
    wait::until(&format!("{} to reach {}", from.ns.name(), to.ns.name()), LIMIT, EVERY, || {
        from.ping_once(to.ip).then_some(())
    })
    .expect("ping");
}

/// What a node has programmed for its peers: weft's routes, vxlan0's permanent neighbours and
/// its FDB entries.
fn peer_entries(ns: &Netns) -> [String; 3] {
    [
        weft_routes(ns),
        ns.ip(&["neigh", "show", "dev", "vxlan0", "nud", "permanent"]).expect("neighbours"),
        ns.run("bridge", &["fdb", "show", "dev", "vxlan0"]).expect("fdb"),
    ]
}

/// Node `i`'s peer entries are still `before`, right after the apply and a second later (where
/// the agent saw them vanish), and the next apply has nothing to repair.
fn keeps_peer_entries(c: &Cluster, i: usize, d: &Desired, before: &[String; 3]) {
    assert_eq!(&peer_entries(c.ns(i)), before, "right after the apply");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(&peer_entries(c.ns(i)), before, "a second after the apply");
    let again = c.apply(i, d);
    assert_eq!(again.writes(), 0, "{again:#?}");
}

fn ip_json(ns: &Netns, args: &[&str]) -> Value {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    serde_json::from_str(&ns.ip(&full).expect("ip -j")).expect("JSON")
}

fn ifindex(ns: &Netns, dev: &str) -> u64 {
    ip_json(ns, &["link", "show", dev])[0]["ifindex"].as_u64().expect("ifindex")
}

fn vxlan_tx_packets(ns: &Netns) -> u64 {
    ip_json(ns, &["-s", "link", "show", "vxlan0"])[0]["stats64"]["tx"]["packets"].as_u64().expect("tx packets")
}

fn weft_routes(ns: &Netns) -> String {
    ns.ip(&["route", "show", "proto", "87"]).expect("routes")
}

fn nft(ns: &Netns, args: &[&str]) -> String {
    ns.run("nft", args).expect("nft")
}

#[test]
fn pods_reach_remote_pods_across_subnets_only_after_apply() {
    let c = cluster();
    assert!(!c.pods[0].ping_once(c.pods[1].ip), "pods must not reach each other before the overlay exists");
    for report in c.apply_all(Encap::Always) {
        assert!(report.created > 0, "{report:#?}");
    }
    for from in 0..3 {
        for to in (0..3).filter(|&to| to != from) {
            c.reaches(from, to);
        }
    }

    // vxlan0 as specified: VNI, port, local IP, underlay, no learning, no outer UDP checksum, MTU, MAC.
    let n1 = c.ns(0);
    let link = &ip_json(n1, &["-d", "link", "show", "vxlan0"])[0];
    let info = &link["linkinfo"]["info_data"];
    assert_eq!(info["id"], 1);
    assert_eq!(info["port"], 8472);
    assert_eq!(info["local"], "192.0.2.10");
    assert_eq!(info["link"], "eth0");
    assert_eq!(info["learning"], false);
    assert_eq!(info["udp_csum"], false);
    assert_eq!(link["mtu"], 1450);
    assert_eq!(link["address"], Mac::derived("n1").to_string());
    let addrs = &ip_json(n1, &["-4", "addr", "show", "dev", "vxlan0"])[0]["addr_info"];
    assert_eq!(addrs.as_array().map(Vec::len), Some(1));
    assert_eq!((&addrs[0]["local"], &addrs[0]["prefixlen"]), (&"10.244.1.0".into(), &32.into()));
    assert_eq!(c.text(0, "sysctl", &["-n", "net.ipv4.conf.vxlan0.rp_filter"]).trim(), "2");
    assert_eq!(c.text(0, "sysctl", &["-n", "net.ipv4.ip_forward"]).trim(), "1");

    // A host process reaching a remote pod: the source is vxlan0's address, replies come back.
    let listener = Listener::start(&c.pods[1].ns, 7001, LIMIT).expect("listen");
    probe::connect(n1, SocketAddrV4::new(c.pods[1].ip, 7001), LIMIT).expect("connect");
    let seen = listener.peer().expect("peer");
    assert_eq!(seen.ip().to_string(), "10.244.1.0");
}

#[test]
fn second_apply_writes_nothing_and_the_kernel_sees_no_change() {
    let c = cluster();
    let d = c.desired(0, Encap::CrossSubnet);
    c.apply(0, &d);
    let n1 = c.ns(0);
    // Carrier changes reach netlink with a delay (linkwatch): let the pod's links settle first.
    for dev in ["cni0", "vpod0"] {
        wait::until(&format!("{dev} to be up"), LIMIT, EVERY, || {
            let link = &ip_json(n1, &["link", "show", dev])[0];
            (link["operstate"] == "UP").then_some(())
        })
        .expect("link up");
    }
    let dir = tempdir(&c.lab, "monitors");
    let ip_log = dir.join("ip-monitor.log");
    let nft_log = dir.join("nft-monitor.log");
    let _ip_monitor = spawn_logged(Command::new("ip").args(["-o", "-n", n1.name(), "monitor", "all"]), &ip_log);
    let _nft_monitor = spawn_logged(n1.command("nft").arg("monitor"), &nft_log);
    // Canaries before and after the apply prove each monitor was listening throughout and has
    // caught up: an address on lo, and a table. Only canary events may appear between them.
    let ip_canary = |addr: &str, verb: &str| {
        n1.ip(&["addr", verb, &format!("{addr}/8"), "dev", "lo"]).unwrap();
    };
    let nft_canary = |table: &str, verb: &str| {
        nft(n1, &[verb, "table", "inet", table]);
    };
    until_listening(&ip_log, "127.0.0.2", || ip_canary("127.0.0.2", "add"), || ip_canary("127.0.0.2", "del"));
    until_listening(
        &nft_log,
        "add table inet canary",
        || nft_canary("canary", "add"),
        || nft_canary("canary", "delete"),
    );

    let report = c.apply(0, &d);
    assert_eq!(report.writes(), 0, "{report:#?}");
    assert!(report.unchanged > 0);

    ip_canary("127.0.0.3", "add");
    nft_canary("canary_after", "add");
    let window = |log: &Path, first: &str, last: &str| {
        let lines = wait_for(log, |l| l.iter().any(|l| l.contains(last)));
        let from = lines.iter().position(|l| l.contains(first)).unwrap();
        let to = lines.iter().rposition(|l| l.contains(last)).unwrap();
        lines[from..=to].to_vec()
    };
    let events = window(&ip_log, "127.0.0.2", "127.0.0.3");
    let strays: Vec<&String> = events.iter().filter(|l| !l.contains("127.0.0.2") && !l.contains("127.0.0.3")).collect();
    assert!(strays.is_empty(), "netlink events during the second apply: {strays:#?}");
    let events = window(&nft_log, "add table inet canary", "add table inet canary_after");
    let strays: Vec<&String> =
        events.iter().filter(|l| !l.contains("table inet canary") && !l.starts_with("# new generation")).collect();
    assert!(strays.is_empty(), "nftables events during the second apply: {strays:#?}");
}

#[test]
fn removed_peer_loses_route_fdb_and_neighbour() {
    let c = cluster();
    let full = c.desired(0, Encap::Always);
    c.apply(0, &full);
    let mut less = full.clone();
    less.peers.retain(|p| p.name != "n3");
    let report = c.apply(0, &less);
    // Route, FDB entry, neighbour, and its node IP from the VXLAN allow-list.
    assert_eq!((report.created, report.changed, report.removed), (0, 0, 4));
    let allowed = nft(c.ns(0), &["list", "set", "inet", "weft", "vxlan_peers"]);
    assert!(allowed.contains("198.51.100.10") && !allowed.contains("192.0.2.11"), "{allowed}");

    let routes = weft_routes(c.ns(0));
    assert!(routes.contains("10.244.2.0/24 via 10.244.2.0 dev vxlan0 onlink"), "{routes}");
    assert!(!routes.contains("10.244.3.0"), "{routes}");
    let neigh = c.text(0, "ip", &["neigh", "show", "dev", "vxlan0", "nud", "permanent"]);
    assert!(neigh.contains("10.244.2.0") && !neigh.contains("10.244.3.0"), "{neigh}");
    let fdb = c.text(0, "bridge", &["fdb", "show", "dev", "vxlan0"]);
    assert!(fdb.contains(&format!("{} dst 198.51.100.10", Mac::derived("n2"))), "{fdb}");
    assert!(!fdb.contains(&Mac::derived("n3").to_string()), "{fdb}");
}

#[test]
fn vni_change_recreates_vxlan_and_restores_connectivity() {
    let c = cluster();
    c.apply_all(Encap::Always);
    c.reaches(0, 1);
    let before = ifindex(c.ns(0), "vxlan0");
    for i in 0..3 {
        let mut d = c.desired(i, Encap::Always);
        d.local.vni = 7;
        let report = c.apply(i, &d);
        // vxlan0 gone and back; its address, neighbours, FDB entries and routes re-added.
        assert_eq!(report.removed, 1, "{report:#?}");
        assert_eq!(report.created, 1 + 1 + 2 * 3, "{report:#?}");
    }
    assert_ne!(ifindex(c.ns(0), "vxlan0"), before);
    let link = &ip_json(c.ns(0), &["-d", "link", "show", "vxlan0"])[0];
    assert_eq!(link["linkinfo"]["info_data"]["id"], 7);
    c.reaches(0, 1);
    c.reaches(1, 2);
}

#[test]
fn a_pod_cidr_change_keeps_every_peer_entry_and_pods_reach_across_the_overlay() {
    let c = cluster();
    // n1 reaches n2 through vxlan0 and n3 directly: both kinds of route must survive.
    c.apply_all(Encap::CrossSubnet);
    let before = peer_entries(c.ns(0));
    let moved: Ipv4Net = "10.244.11.0/24".parse().unwrap();
    let mut d = c.desired(0, Encap::CrossSubnet);
    d.local.pod_cidrs = vec![moved.into()];
    let report = c.apply(0, &d);
    // vxlan0's and cni0's addresses swapped, the table rewritten for the new PodCIDR.
    assert_eq!((report.created, report.changed, report.removed), (2, 1, 2), "{report:#?}");
    keeps_peer_entries(&c, 0, &d, &before);
    let addrs = c.ns(0).ip(&["-4", "-o", "addr", "show"]).unwrap();
    assert!(addrs.contains("10.244.11.0/32") && addrs.contains("10.244.11.1/24"), "{addrs}");
    assert!(!addrs.contains("10.244.1."), "{addrs}");

    c.peers_learn(0, Encap::CrossSubnet, |p| p.pod_cidrs = vec![moved.into()]);
    let pod = c.second_pod(0, moved);
    reaches(&pod, &c.pods[1]);
    reaches(&pod, &c.pods[2]);
    reaches(&c.pods[1], &pod);
}

#[test]
fn a_vtep_mac_change_keeps_every_peer_neighbour() {
    let c = cluster();
    c.apply_all(Encap::Always);
    let before = peer_entries(c.ns(0));
    let renamed = Mac::derived("n1-renamed");
    let mut d = c.desired(0, Encap::Always);
    d.local.vtep_mac = renamed;
    let report = c.apply(0, &d);
    // The kernel drops vxlan0's neighbours with its old MAC: both are written again.
    assert_eq!((report.created, report.changed, report.removed), (2, 1, 0), "{report:#?}");
    keeps_peer_entries(&c, 0, &d, &before);

    c.peers_learn(0, Encap::Always, |p| p.vtep_mac = renamed);
    c.reaches(0, 1);
    c.reaches(2, 0);
}

#[test]
fn stale_entries_are_removed_and_foreign_ones_kept() {
    let c = cluster();
    let d = c.desired(0, Encap::Always);
    c.apply(0, &d);
    let n1 = c.ns(0);
    let stale_mac = "02:00:00:00:09:09";
    let planted: [&[&str]; 9] = [
        // Stale, owned: weft's protocol, or permanent entries on vxlan0.
        &["route", "add", "10.244.9.0/24", "via", "10.244.9.0", "dev", "vxlan0", "onlink", "proto", "87"],
        &["neigh", "add", "10.244.9.0", "lladdr", stale_mac, "dev", "vxlan0", "nud", "permanent"],
        &["addr", "add", "10.244.1.99/32", "dev", "vxlan0"],
        // A previous PodCIDR's gateway: its connected route would still claim that block.
        &["addr", "add", "10.244.77.1/24", "dev", "cni0"],
        // Foreign: another protocol, another device, another table.
        &["route", "add", "10.244.8.0/24", "via", "10.244.8.0", "dev", "vxlan0", "onlink", "proto", "static"],
        &["route", "add", "172.16.5.0/24", "via", "192.0.2.1", "dev", "eth0"],
        &["route", "add", "10.244.7.0/24", "via", "192.0.2.1", "dev", "eth0", "proto", "87", "table", "100"],
        &["neigh", "add", "192.0.2.77", "lladdr", "02:00:00:00:07:07", "dev", "eth0", "nud", "permanent"],
        &["neigh", "add", "10.244.6.0", "lladdr", "02:00:00:00:06:06", "dev", "vxlan0", "nud", "reachable"],
    ];
    for args in planted {
        n1.ip(args).expect("plant");
    }
    c.text(0, "bridge", &["fdb", "add", stale_mac, "dev", "vxlan0", "dst", "192.0.2.99", "self", "permanent"]);

    let report = c.apply(0, &d);
    assert_eq!((report.created, report.changed, report.removed), (0, 0, 5), "{report:#?}");

    let main = n1.ip(&["route", "show"]).unwrap();
    assert!(!main.contains("10.244.9.0"), "{main}");
    assert!(!main.contains("10.244.77.0/24"), "{main}");
    assert!(main.contains("10.244.8.0/24 via 10.244.8.0 dev vxlan0 proto static onlink"), "{main}");
    assert!(main.contains("172.16.5.0/24 via 192.0.2.1 dev eth0"), "{main}");
    let table100 = n1.ip(&["route", "show", "table", "100"]).unwrap();
    assert!(table100.contains("10.244.7.0/24"), "{table100}");
    let neigh = n1.ip(&["neigh", "show"]).unwrap();
    assert!(!neigh.contains("10.244.9.0"), "{neigh}");
    assert!(neigh.contains("192.0.2.77 dev eth0 lladdr 02:00:00:00:07:07 PERMANENT"), "{neigh}");
    assert!(neigh.contains("10.244.6.0 dev vxlan0"), "{neigh}");
    let fdb = c.text(0, "bridge", &["fdb", "show", "dev", "vxlan0"]);
    assert!(!fdb.contains(stale_mac), "{fdb}");
    let addrs = n1.ip(&["-4", "addr", "show", "dev", "vxlan0"]).unwrap();
    assert!(!addrs.contains("10.244.1.99"), "{addrs}");
    let bridge = n1.ip(&["-4", "addr", "show", "dev", "cni0"]).unwrap();
    assert!(!bridge.contains("10.244.77.1") && bridge.contains(&d.local.gateways()[0].to_string()), "{bridge}");
    assert_eq!(c.apply(0, &d).writes(), 0);
}

#[test]
fn invalid_peers_are_reported_and_never_programmed() {
    let c = cluster();
    let mut d = c.desired(0, Encap::Always);
    let mut clash = d.peers[0].clone();
    clash.name = "n9".into();
    clash.node_ip = "198.51.100.99".parse().unwrap();
    clash.vtep_mac = Mac::derived("n9");
    clash.pod_cidrs = vec!["10.244.1.128/25".parse().unwrap()]; // inside n1's own PodCIDR
    d.peers.push(clash);
    let report = apply_in(c.ns(0), &d).expect("apply");
    assert!(report.failures.is_empty(), "{report:#?}");
    assert_eq!(report.rejected.len(), 1, "{report:#?}");
    assert_eq!(report.rejected[0].peer.as_deref(), Some("n9"));
    let routes = weft_routes(c.ns(0));
    assert!(!routes.contains("10.244.1.128"), "{routes}");
    let fdb = c.text(0, "bridge", &["fdb", "show", "dev", "vxlan0"]);
    assert!(!fdb.contains(&Mac::derived("n9").to_string()), "{fdb}");
    // The valid peers are programmed all the same.
    c.apply_all(Encap::Always);
    c.reaches(0, 1);
}

#[test]
fn pod_egress_is_masqueraded_but_pod_to_pod_keeps_the_pod_ip() {
    let c = cluster();
    c.apply_all(Encap::Always);
    c.reaches(0, 1);
    let external = &c.lab.external;
    let outside = Listener::start(&external.ns, 7002, LIMIT).expect("listen");
    probe::connect(&c.pods[0].ns, SocketAddr::new(external.ip, 7002), LIMIT).expect("connect");
    assert_eq!(ip_of(outside.peer().expect("peer")), c.lab.nodes[0].ip);

    let remote_pod = Listener::start(&c.pods[1].ns, 7003, LIMIT).expect("listen");
    probe::connect(&c.pods[0].ns, SocketAddrV4::new(c.pods[1].ip, 7003), LIMIT).expect("connect");
    assert_eq!(ip_of(remote_pod.peer().expect("peer")), c.pods[0].ip);
}

#[test]
fn external_clients_keep_their_ip_to_local_pods_and_reach_remote_pods_via_the_node() {
    let c = cluster();
    c.apply_all(Encap::Always);
    // The router sends the whole cluster CIDR to n1, like an ingress node.
    let n1 = &c.lab.nodes[0];
    let cluster_cidr = "10.244.0.0/16".parse().unwrap();
    c.lab.route_pod_cidrs_on_router(&[(cluster_cidr, n1.ip)]).expect("router route");
    let external = &c.lab.external;

    let local_pod = Listener::start(&c.pods[0].ns, 7004, LIMIT).expect("listen");
    probe::connect(&external.ns, SocketAddrV4::new(c.pods[0].ip, 7004), LIMIT).expect("connect");
    assert_eq!(ip_of(local_pod.peer().expect("peer")), external.ip);

    // To a pod on n2 through n1: masqueraded to n1's vxlan0 address, so n2's reply returns
    // through n1 (without it, n2 would answer directly and the client would drop the reply).
    let remote_pod = Listener::start(&c.pods[1].ns, 7005, LIMIT).expect("listen");
    probe::connect(&external.ns, SocketAddrV4::new(c.pods[1].ip, 7005), LIMIT).expect("connect");
    assert_eq!(ip_of(remote_pod.peer().expect("peer")).to_string(), "10.244.1.0");
}

#[test]
fn direct_peers_are_routed_via_the_node_ip_without_encapsulation() {
    let c = cluster();
    c.apply_all(Encap::CrossSubnet);
    let n1 = c.ns(0);
    let route = &ip_json(n1, &["route", "show", "10.244.3.0/24"])[0];
    assert_eq!(route["gateway"], "192.0.2.11");
    assert_eq!(route["dev"], "eth0");
    assert_eq!(route["protocol"], "87");
    let neigh = n1.ip(&["neigh", "show", "dev", "vxlan0"]).unwrap();
    assert!(!neigh.contains("10.244.3.0"), "{neigh}");
    let fdb = c.text(0, "bridge", &["fdb", "show", "dev", "vxlan0"]);
    assert!(!fdb.contains(&Mac::derived("n3").to_string()), "{fdb}");

    let before = vxlan_tx_packets(n1);
    c.reaches(0, 2);
    assert_eq!(vxlan_tx_packets(n1), before, "same-subnet traffic went through vxlan0");
    c.reaches(0, 1);
    assert!(vxlan_tx_packets(n1) > before, "cross-subnet traffic must be encapsulated");
}

/// The intruder's VTEP MAC and the pod address it forges as inner source (one of n2's pods,
/// so that n1's loose reverse-path filter passes it whoever sent it).
const INTRUDER_MAC: &str = "02:00:00:00:0a:0a";
const FORGED_SOURCE: &str = "10.244.2.77";
const FORGED_PORT: u16 = 7010;

/// The off-cluster host turned intruder: its own vxlan device with the cluster's VNI and port,
/// n1's VTEP MAC pointed at n1's node IP, and n1's pod behind it, as a peer would have them.
fn build_intruder(c: &Cluster) {
    let ext = &c.lab.external;
    let victim = &c.lab.nodes[0];
    let (pod, victim_mac) = (c.pods[0].ip.to_string(), Mac::derived(&victim.name).to_string());
    let ext_ip = ext.ip.to_string();
    let steps: [&[&str]; 5] = [
        &[
            "link",
            "add",
            "vxatk",
            "type",
            "vxlan",
            "id",
            "1",
            "dstport",
            "8472",
            "local",
            &ext_ip,
            "dev",
            "eth0",
            "nolearning",
        ],
        &["link", "set", "vxatk", "address", INTRUDER_MAC, "mtu", "1450", "up"],
        &["addr", "add", &format!("{FORGED_SOURCE}/32"), "dev", "vxatk"],
        &["neigh", "add", &pod, "lladdr", &victim_mac, "dev", "vxatk", "nud", "permanent"],
        &["route", "add", &format!("{pod}/32"), "dev", "vxatk", "src", FORGED_SOURCE],
    ];
    for args in steps {
        ext.ns.ip(args).expect("intruder");
    }
    let dst = victim.ip.to_string();
    ext.ns.run("bridge", &["fdb", "add", &victim_mac, "dev", "vxatk", "dst", &dst, "self", "permanent"]).expect("fdb");
}

/// The intruder as n1 would know it, were it a member.
fn intruder_peer(c: &Cluster) -> Peer {
    Peer {
        name: "intruder".into(),
        node_ip: c.lab.external.ip,
        pod_cidrs: vec!["10.244.9.0/24".parse().unwrap()],
        vtep_mac: INTRUDER_MAC.parse().unwrap(),
        path: PeerPath::Vxlan,
    }
}

/// Sends three datagrams from the intruder to n1's pod: whether the pod received one.
fn forged_udp_arrives(c: &Cluster) -> bool {
    let to = SocketAddrV4::new(c.pods[0].ip, FORGED_PORT);
    let socket = within(&c.pods[0].ns.path(), || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, FORGED_PORT)).expect("bind");
        s.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
        s
    })
    .expect("setns");
    within(&c.lab.external.ns.path(), || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
        for _ in 0..3 {
            s.send_to(b"forged", to).expect("send");
        }
    })
    .expect("setns");
    socket.recv_from(&mut [0u8; 16]).is_ok_and(|(_, from)| ip_of(from).to_string() == FORGED_SOURCE)
}

fn dropped_packets(report: &ApplyReport) -> u64 {
    report.vxlan_dropped.expect("the drop rule's counter").packets
}

#[test]
fn vxlan_from_a_non_peer_reaches_no_pod_and_is_counted() {
    let c = cluster();
    build_intruder(&c);
    // Control: while the intruder is a peer, its forged traffic does reach the pod. It joins
    // after the table exists, so its node IP is added as an element.
    let members = c.desired(0, Encap::Always);
    c.apply(0, &members);
    let mut with_intruder = members.clone();
    with_intruder.peers.push(intruder_peer(&c));
    assert_eq!(c.apply(0, &with_intruder).created, 4);
    wait::until("forged VXLAN from a peer to reach the pod", LIMIT, EVERY, || forged_udp_arrives(&c).then_some(()))
        .expect("the forged path works");

    // Removed from the peers, the same traffic is dropped before vxlan0 sees it, and counted.
    let before = dropped_packets(&c.apply(0, &members));
    for _ in 0..3 {
        assert!(!forged_udp_arrives(&c), "VXLAN from a non-peer reached the pod");
    }
    let after = dropped_packets(&c.apply(0, &members));
    assert!(after >= before + 9, "dropped before {before}, after {after}");

    // The rule is what stops it: without it the traffic arrives; the next apply restores it.
    nft(c.ns(0), &["flush", "chain", "inet", "weft", "vxlan_ingress"]);
    wait::until("forged VXLAN to arrive without the rule", LIMIT, EVERY, || forged_udp_arrives(&c).then_some(()))
        .expect("unprotected");
    assert_eq!(c.apply(0, &members).changed, 1);
    assert!(!forged_udp_arrives(&c), "VXLAN from a non-peer reached the pod after the repair");
}

const DOCKER_FORWARD: &str = "table ip filter {
    chain FORWARD {
        type filter hook forward priority 0; policy drop;
        counter comment \"docker-own\"
    }
}
";

#[test]
fn docker_forward_drop_does_not_block_pods_and_cleanup_spares_it() {
    let c = cluster();
    for i in 0..2 {
        let mut load = c.ns(i).command("nft");
        load.args(["-f", "-"]);
        load.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let reply = weft_lab::cni::exec_with_stdin(&mut load, DOCKER_FORWARD.as_bytes()).unwrap();
        assert!(reply.ok, "{}", reply.stderr);
    }
    let reports = c.apply_all(Encap::Always);
    // Table (1) and two accepts in FORWARD, on each node that has the chain.
    assert!(reports[0].created >= 3);
    c.reaches(0, 1);

    let n1 = c.ns(0);
    let chain = nft(n1, &["-a", "list", "chain", "ip", "filter", "FORWARD"]);
    assert!(chain.contains("policy drop;"), "{chain}");
    assert!(chain.contains("comment \"docker-own\""), "{chain}");
    let weft_handles: Vec<String> = chain
        .lines()
        .filter(|l| l.contains("comment \"weft:"))
        .filter_map(|l| l.rsplit("# handle ").next().map(str::to_string))
        .collect();
    assert_eq!(weft_handles.len(), 2, "{chain}");

    // Without weft's accepts Docker's policy drops the pods' traffic; the next apply repairs it.
    for handle in &weft_handles {
        nft(n1, &["delete", "rule", "ip", "filter", "FORWARD", "handle", handle.trim()]);
    }
    assert!(!c.pods[0].ping_once(c.pods[1].ip), "the drop policy should block pods");
    let report = c.apply(0, &c.desired(0, Encap::Always));
    assert_eq!((report.created, report.removed), (2, 0), "{report:#?}");
    c.reaches(0, 1);

    let cleanup = cleanup_in(n1, &CleanupOptions::default()).expect("cleanup");
    assert!(cleanup.failures.is_empty(), "{cleanup:#?}");
    let ruleset = nft(n1, &["list", "ruleset"]);
    assert!(!ruleset.contains("weft"), "{ruleset}");
    assert!(ruleset.contains("policy drop;") && ruleset.contains("docker-own"), "{ruleset}");
}

#[test]
fn cleanup_removes_everything_weft_owns() {
    let c = cluster();
    c.apply(0, &c.desired(0, Encap::CrossSubnet));
    let n1 = c.ns(0);
    let report = cleanup_in(n1, &CleanupOptions::default()).expect("cleanup");
    assert!(report.failures.is_empty(), "{report:#?}");
    assert!(report.removed.contains(&"link vxlan0".to_string()), "{report:#?}");
    // The pod is still attached to cni0: kept without force.
    assert_eq!(report.kept.len(), 1, "{report:#?}");
    assert!(n1.ip(&["link", "show", "vxlan0"]).is_err());
    assert_eq!(weft_routes(n1).trim(), "");
    assert_eq!(nft(n1, &["list", "tables"]).trim(), "");
    assert!(n1.ip(&["link", "show", "cni0"]).is_ok());

    let forced = CleanupOptions { force: true, ..CleanupOptions::default() };
    let report = cleanup_in(n1, &forced).expect("cleanup");
    assert_eq!(report.removed, ["link cni0"], "{report:#?}");
    assert!(n1.ip(&["link", "show", "cni0"]).is_err());
    let again = cleanup_in(n1, &forced).expect("cleanup");
    assert!(again.removed.is_empty() && again.kept.is_empty(), "{again:#?}");
}

fn ip_of(addr: SocketAddr) -> Ipv4Addr {
    match addr {
        SocketAddr::V4(a) => *a.ip(),
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().expect("IPv4"),
    }
}

fn tempdir(lab: &Lab, name: &str) -> std::path::PathBuf {
    let dir = lab.dir.join(name);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

fn spawn_logged(cmd: &mut Command, log: &Path) -> Process {
    let out = File::create(log).expect("log");
    cmd.stdout(out).stderr(Stdio::null());
    Process::spawn(&log.display().to_string(), cmd).expect("spawn")
}

/// Triggers an event until the monitor writing `log` shows it: then the monitor is listening.
fn until_listening(log: &Path, needle: &str, on: impl Fn(), off: impl Fn()) {
    wait::until(&format!("{} to listen", log.display()), LIMIT, EVERY, || {
        on();
        std::thread::sleep(EVERY);
        let seen = std::fs::read_to_string(log).is_ok_and(|t| t.contains(needle));
        if !seen {
            off();
        }
        seen.then_some(())
    })
    .expect("monitor listening");
}

/// The log's lines once `done` holds for them.
fn wait_for(log: &Path, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    wait::until(&format!("events in {}", log.display()), LIMIT, EVERY, || {
        let text = std::fs::read_to_string(log).ok()?;
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        done(&lines).then_some(lines)
    })
    .unwrap_or_else(|e| {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        panic!("{e}; {} has:\n{text}", log.display())
    })
}
