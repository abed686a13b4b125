//! The dataplane's incremental applies against a real kernel, in a namespace of their own with a
//! veth as a dual-stack underlay: each peer change written without reading the kernel leaves it
//! as a full apply would (which then has nothing to write), the whole chain of them the same as
//! one full apply from empty; what is deleted behind weft's back stays missing through
//! incremental applies and the next full one (the agent's resync) repairs it; a failed
//! incremental apply leaves only full applies until one succeeds. Needs root.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use weft_lab::dataplane::runtime;
use weft_lab::netns::{Netns, within};
use weft_overlay::desired::{DEFAULT_VNI, DEFAULT_VXLAN_PORT, Desired, LocalNode, Peer, PeerPath, UnderlayAddr};
use weft_overlay::netlink::Netlink;
use weft_overlay::nft::NftSocket;
use weft_overlay::objects::WEFT_ROUTE_PROTOCOL;
use weft_overlay::rules::DEFAULT_BRIDGE;
use weft_overlay::snapshot::{self, Kernel};
use weft_overlay::{ApplyReport, CleanupOptions, Dataplane, Mac};

fn net(s: &str) -> IpNet {
    s.parse().expect("valid CIDR")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("valid address")
}

/// Peer k: node IP 198.51.100.k, blocks 10.244.k.0/24 and fd00:10:244:k::/64, over VXLAN.
fn peer(k: u8) -> Peer {
    Peer {
        name: format!("n{k}"),
        node_ip: ip(&format!("198.51.100.{k}")),
        pod_cidrs: vec![net(&format!("10.244.{k}.0/24")), net(&format!("fd00:10:244:{k:x}::/64"))],
        vtep_mac: Mac::derived(&format!("n{k}")),
        path: PeerPath::Vxlan,
    }
}

/// A dual-stack node on both underlay families of eth0, with peers 2..=9.
fn desired() -> Desired {
    Desired {
        local: LocalNode {
            name: "n1".into(),
            underlays: vec![
                UnderlayAddr { ip: ip("192.0.2.10"), iface: "eth0".into() },
                UnderlayAddr { ip: ip("2001:db8:1::10"), iface: "eth0".into() },
            ],
            pod_cidrs: vec![net("10.244.1.0/24"), net("fd00:10:244:1::/64")],
            cluster_cidrs: vec![net("10.244.0.0/16"), net("fd00:10:244::/56")],
            vni: DEFAULT_VNI,
            vxlan_port: DEFAULT_VXLAN_PORT,
            mtu: 1400,
            vtep_mac: Mac::derived("n1"),
            bridge: DEFAULT_BRIDGE.into(),
        },
        peers: (2..=9).map(peer).collect(),
    }
}

fn find<'d>(d: &'d mut Desired, name: &str) -> &'d mut Peer {
    d.peers.iter_mut().find(|p| p.name == name).expect("a peer of that name")
}

/// One change of each kind, as a sequence of desired states.
fn changes() -> Vec<(&'static str, Desired)> {
    let mut d = desired();
    let mut out = Vec::new();
    let mut step = |what, change: &dyn Fn(&mut Desired)| {
        change(&mut d);
        out.push((what, d.clone()));
    };
    step("a peer added", &|d| d.peers.push(peer(10)));
    step("a peer removed", &|d| d.peers.retain(|p| p.name != "n3"));
    step("a new VTEP MAC", &|d| find(d, "n4").vtep_mac = Mac::derived("n4-new"));
    step("a new node IP", &|d| find(d, "n5").node_ip = ip("198.51.100.55"));
    step("new blocks", &|d| find(d, "n6").pod_cidrs = vec![net("10.244.66.0/24"), net("fd00:10:244:66::/64")]);
    step("the direct path", &|d| {
        let p = find(d, "n7");
        (p.node_ip, p.path) = (ip("192.0.2.7"), PeerPath::Direct);
    });
    // With a new IPv6 block too: Linux refuses to replace an on-link IPv6 route onto another
    // device while the gateway itself is routed through the old one (the route being replaced),
    // and the full planner writes the same replace (see the report of this change).
    step("onto the IPv6 underlay", &|d| {
        let p = find(d, "n8");
        (p.node_ip, p.pod_cidrs[1]) = (ip("2001:db8:1::8"), net("fd00:10:244:88::/64"));
    });
    step("back to VXLAN", &|d| find(d, "n7").path = PeerPath::Vxlan);
    step("a block taken over", &|d| {
        let moved = find(d, "n9").pod_cidrs.clone();
        d.peers.retain(|p| p.name != "n9");
        d.peers.push(Peer { pod_cidrs: moved, ..peer(11) });
    });
    out
}

/// A node namespace with eth0 (a veth) carrying both underlay addresses.
fn node() -> Netns {
    weft_lab::require_root();
    let ns = Netns::create(&format!("{}-incr", weft_lab::unique_prefix())).expect("namespace");
    for args in [
        &["link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer"][..],
        &["addr", "add", "192.0.2.10/24", "dev", "eth0"],
        &["addr", "add", "2001:db8:1::10/64", "dev", "eth0", "nodad"],
        &["link", "set", "eth0-peer", "up"],
        &["link", "set", "eth0", "up"],
    ] {
        ns.ip(args).expect("underlay set up");
    }
    ns
}

/// The peer objects of a snapshot with devices by name (indexes differ once a device is made
/// again): weft's routes, the permanent neighbours and FDB entries of the VXLAN devices, the
/// allow-list elements.
fn peer_state(k: &Kernel) -> (Vec<String>, BTreeMap<String, Vec<IpAddr>>) {
    let name = |index: Option<u32>| {
        let link = k.links.iter().find(|l| Some(l.index) == index);
        link.map_or_else(|| format!("#{index:?}"), |l| l.name.clone())
    };
    let on_vxlan = |index: u32| name(Some(index)).starts_with("vxlan");
    let mut objects: Vec<String> = k
        .routes
        .iter()
        .filter(|r| r.protocol == WEFT_ROUTE_PROTOCOL)
        .map(|r| format!("route {} via {:?} dev {} onlink {}", r.dst, r.gateway, name(r.oif), r.onlink))
        .chain(
            k.neighbours
                .iter()
                .filter(|n| n.permanent && on_vxlan(n.ifindex))
                .map(|n| format!("neighbour {} {} dev {}", n.ip, n.mac, name(Some(n.ifindex)))),
        )
        .chain(
            k.fdb
                .iter()
                .filter(|e| on_vxlan(e.ifindex))
                .map(|e| format!("fdb {} dst {:?} dev {}", e.mac, e.dst, name(Some(e.ifindex)))),
        )
        .collect();
    objects.sort();
    let listing = k.nft.as_ref().expect("nftables listed");
    let elements = listing.elements.iter().map(|(set, ips)| (set.clone(), ips.iter().copied().collect())).collect();
    (objects, elements)
}

async fn read(nl: &Netlink, nft: &NftSocket) -> Kernel {
    snapshot::read(nl, nft).await.expect("kernel read")
}

async fn full(dp: &Dataplane, d: &Desired) -> ApplyReport {
    let report = dp.apply(d).await.expect("full apply");
    assert!(report.failures.is_empty() && report.rejected.is_empty(), "{report:?}");
    report
}

async fn incremental(dp: &Dataplane, d: &Desired, what: &str) -> ApplyReport {
    let report = dp.apply_incremental(d).await.expect("incremental apply").unwrap_or_else(|| panic!("{what}: none"));
    assert!(report.failures.is_empty() && report.rejected.is_empty(), "{what}: {report:?}");
    report
}

#[test]
fn incremental_applies_leave_the_kernel_a_full_apply_would() {
    let ns = node();
    within(&ns.path(), || {
        runtime().expect("runtime").block_on(async {
            let dp = Dataplane::new().expect("dataplane");
            let (nl, nft) = (Netlink::connect().expect("netlink"), NftSocket::open().expect("nfnetlink"));
            full(&dp, &desired()).await;
            let mut last = None;
            for (what, d) in changes() {
                let report = incremental(&dp, &d, what).await;
                assert!(report.writes() > 0, "{what}: nothing written");
                let after = peer_state(&read(&nl, &nft).await);
                // The full apply reads the kernel back and finds nothing to write.
                let check = full(&dp, &d).await;
                assert_eq!(check.writes(), 0, "{what}: the incremental apply left {check:?}");
                assert_eq!(peer_state(&read(&nl, &nft).await), after, "{what}");
                last = Some((d, after));
            }
            // The chain of changes ends where one full apply from empty does.
            let (d, after) = last.expect("changes");
            dp.cleanup(&CleanupOptions::default()).await.expect("cleanup");
            let from_empty = full(&dp, &d).await;
            assert!(from_empty.created > 0);
            assert_eq!(peer_state(&read(&nl, &nft).await), after);
        })
    })
    .expect("inside the namespace");
}

#[test]
fn the_full_apply_repairs_what_incremental_ones_do_not_see() {
    let ns = node();
    let listed = |args: &[&str]| ns.ip(args).expect("ip");
    within(&ns.path(), || {
        runtime().expect("runtime").block_on(async {
            let dp = Dataplane::new().expect("dataplane");
            let steps = changes();
            full(&dp, &desired()).await;
            incremental(&dp, &steps[0].1, steps[0].0).await;
            // Behind weft's back: peer n2's IPv4 route and neighbour.
            listed(&["route", "del", "10.244.2.0/24"]);
            listed(&["neigh", "del", "10.244.2.0", "dev", "vxlan0"]);
            incremental(&dp, &steps[1].1, steps[1].0).await;
            assert_eq!(listed(&["route", "show", "10.244.2.0/24"]), "", "an incremental apply reads nothing back");
            let repair = full(&dp, &steps[1].1).await;
            assert_eq!((repair.created, repair.changed, repair.removed), (2, 0, 0), "{repair:?}");
            assert!(listed(&["route", "show", "10.244.2.0/24"]).contains("dev vxlan0"));
            assert!(listed(&["neigh", "show", "10.244.2.0", "dev", "vxlan0"]).contains("PERMANENT"));
            // And incremental applies go on from there.
            incremental(&dp, &steps[2].1, steps[2].0).await;
        })
    })
    .expect("inside the namespace");
}

#[test]
fn after_a_failed_incremental_apply_only_a_full_one_is_possible() {
    let ns = node();
    within(&ns.path(), || {
        runtime().expect("runtime").block_on(async {
            let dp = Dataplane::new().expect("dataplane");
            let steps = changes();
            assert!(dp.apply_incremental(&desired()).await.expect("no error").is_none(), "nothing applied yet");
            full(&dp, &desired()).await;
            // Behind weft's back vxlan0 goes: the added peer's entries have no device.
            ns.ip(&["link", "del", "vxlan0"]).expect("ip");
            let report = dp.apply_incremental(&steps[0].1).await.expect("no error").expect("an incremental apply");
            assert!(!report.failures.is_empty(), "{report:?}");
            assert!(dp.apply_incremental(&steps[1].1).await.expect("no error").is_none());
            full(&dp, &steps[1].1).await;
            incremental(&dp, &steps[2].1, steps[2].0).await;
        })
    })
    .expect("inside the namespace");
}
