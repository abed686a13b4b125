//! Properties of the planner over generated peer sets and kernels: a kernel that starts from an
//! earlier converged state plus stale weft entries and foreign ones converges in one plan, the
//! plan touches only what weft owns, and it does not depend on the kernel's dump order.
//!
//! The kernel is modelled only as far as peers are concerned (neighbours, FDB, routes, the VXLAN
//! allow-list's elements): the local node never changes here, so a device-level operation in a
//! plan is itself a failure.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use proptest::prelude::*;

use crate::desired::{Desired, Peer, PeerPath};
use crate::mac::Mac;
use crate::netlink::{FdbEntry, MAIN_TABLE, Neighbour, Route4, WEFT_ROUTE_PROTOCOL};
use crate::plan::tests::{CNI0, ETH0, VXLAN, converged, desired_with, fdb_of, neighbour_of};
use crate::plan::{Dev, Op, Plan, plan};
use crate::snapshot::Kernel;
use crate::validate::tests::peer;

/// How one desired peer differs from the plain `peer(n, path)`.
#[derive(Debug, Clone, Copy)]
enum Twist {
    None,
    /// Moved to another underlay address.
    NodeIp,
    /// Announces another VTEP MAC.
    Mac,
    /// Announces the MAC of peer `n2` (a conflict: both are rejected when both are valid).
    SharedMac,
    /// A PodCIDR outside the cluster: rejected.
    OutsideCluster,
}

fn twist() -> impl Strategy<Value = Twist> {
    prop_oneof![
        6 => Just(Twist::None),
        1 => Just(Twist::NodeIp),
        1 => Just(Twist::Mac),
        1 => Just(Twist::SharedMac),
        1 => Just(Twist::OutsideCluster),
    ]
}

fn path() -> impl Strategy<Value = PeerPath> {
    prop_oneof![Just(PeerPath::Vxlan), Just(PeerPath::Direct)]
}

fn twisted(n: u8, path: PeerPath, twist: Twist) -> Peer {
    let mut p = peer(n, path);
    match twist {
        Twist::None => {}
        Twist::NodeIp => p.node_ip = Ipv4Addr::new(203, 0, 113, n),
        Twist::Mac => p.vtep_mac = Mac::derived(&format!("moved-{n}")),
        Twist::SharedMac => p.vtep_mac = Mac::derived("n2"),
        Twist::OutsideCluster => p.pod_cidr = Ipv4Net::new(Ipv4Addr::new(10, 99, n, 0), 24).unwrap(),
    }
    p
}

/// Entries a kernel may hold besides a converged state: left over by weft, or someone else's.
#[derive(Debug, Clone)]
enum Extra {
    /// A weft route to a /24 of the cluster, through vxlan0 or the underlay, metric 0 or not.
    WeftRoute { block: u8, via_vxlan: bool, metric: Option<u32> },
    /// Someone else's route: another protocol, or weft's protocol in another table.
    ForeignRoute { block: u8, other_table: bool },
    /// A neighbour on vxlan0: weft's when permanent, the kernel's own otherwise.
    VxlanNeighbour { block: u8, permanent: bool },
    /// A neighbour on the underlay: never weft's.
    UnderlayNeighbour { block: u8 },
    /// An FDB remote on vxlan0 for the MAC of node `n` (an extra remote when `n` is a peer).
    VxlanFdb { n: u8, dst: u8 },
    /// An FDB entry on another device: never weft's.
    ForeignFdb { n: u8 },
}

fn extra() -> impl Strategy<Value = Extra> {
    let block = 2u8..40;
    prop_oneof![
        (block.clone(), any::<bool>(), prop::option::of(1u32..4))
            .prop_map(|(block, via_vxlan, metric)| Extra::WeftRoute { block, via_vxlan, metric }),
        (block.clone(), any::<bool>()).prop_map(|(block, other_table)| Extra::ForeignRoute { block, other_table }),
        (block.clone(), any::<bool>()).prop_map(|(block, permanent)| Extra::VxlanNeighbour { block, permanent }),
        block.clone().prop_map(|block| Extra::UnderlayNeighbour { block }),
        (block.clone(), any::<u8>()).prop_map(|(n, dst)| Extra::VxlanFdb { n, dst }),
        block.prop_map(|n| Extra::ForeignFdb { n }),
    ]
}

fn cidr(block: u8) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 244, block, 0), 24).unwrap()
}

/// Adds an extra entry unless the kernel already has one with the same key (it cannot hold two).
fn add_extra(k: &mut Kernel, extra: &Extra) {
    let route = |dst, gateway, oif, protocol, table, priority| Route4 {
        dst,
        gateway: Some(gateway),
        oif: Some(oif),
        onlink: oif == VXLAN,
        protocol,
        table,
        priority,
    };
    let add_route = |k: &mut Kernel, r: Route4| {
        if !k.routes.iter().any(|o| (o.table, o.dst, o.priority) == (r.table, r.dst, r.priority)) {
            k.routes.push(r);
        }
    };
    let add_neighbour = |k: &mut Kernel, n: Neighbour| {
        if !k.neighbours.iter().any(|o| (o.ifindex, o.ip) == (n.ifindex, n.ip)) {
            k.neighbours.push(n);
        }
    };
    match *extra {
        Extra::WeftRoute { block, via_vxlan, metric } => {
            let (oif, gateway) = if via_vxlan { (VXLAN, cidr(block).network()) } else { (ETH0, node_ip(block)) };
            add_route(k, route(cidr(block), gateway, oif, WEFT_ROUTE_PROTOCOL, MAIN_TABLE, metric));
        }
        Extra::ForeignRoute { block, other_table } => {
            let (protocol, table) = if other_table { (WEFT_ROUTE_PROTOCOL, 100) } else { (4, MAIN_TABLE) };
            // Metric 200: a foreign metric-0 route to a peer's block would make weft's add fail,
            // which is the intended outcome but not a converging one.
            add_route(k, route(cidr(block), node_ip(block), ETH0, protocol, table, Some(200)));
        }
        Extra::VxlanNeighbour { block, permanent } => {
            let mac = Mac::derived(&format!("stale-{block}"));
            add_neighbour(k, Neighbour { ifindex: VXLAN, ip: cidr(block).network(), mac, permanent });
        }
        Extra::UnderlayNeighbour { block } => {
            add_neighbour(k, Neighbour { ifindex: ETH0, ..neighbour_of(&peer(block, PeerPath::Vxlan)) });
        }
        Extra::VxlanFdb { n, dst } => {
            let e = FdbEntry { dst: Some(Ipv4Addr::new(203, 0, 113, dst)), ..fdb_of(&peer(n, PeerPath::Vxlan)) };
            if !k.fdb.contains(&e) {
                k.fdb.push(e);
            }
        }
        Extra::ForeignFdb { n } => {
            let e = FdbEntry { ifindex: CNI0, ..fdb_of(&peer(n, PeerPath::Vxlan)) };
            if !k.fdb.contains(&e) {
                k.fdb.push(e);
            }
        }
    }
}

fn node_ip(block: u8) -> Ipv4Addr {
    peer(block, PeerPath::Direct).node_ip
}

/// What a kernel does with the plan's peer operations, as netlink documents them.
fn apply(plan: &Plan, kernel: &Kernel) -> Kernel {
    let mut k = kernel.clone();
    let vxlan = plan.vxlan_index.expect("vxlan0 is adopted");
    for step in plan.steps() {
        match &step.op {
            Op::Neighbour { ip, mac } => {
                k.neighbours.retain(|n| (n.ifindex, n.ip) != (vxlan, *ip));
                k.neighbours.push(Neighbour { ifindex: vxlan, ip: *ip, mac: *mac, permanent: true });
            }
            Op::DeleteNeighbour(n) => remove(&mut k.neighbours, n),
            Op::Fdb { mac, dst } => {
                let on_mac = |e: &FdbEntry| e.ifindex == vxlan && e.mac == *mac;
                let same_dst = k.fdb.iter().position(|e| on_mac(e) && e.dst == Some(*dst));
                match same_dst.or_else(|| k.fdb.iter().position(on_mac)) {
                    Some(i) => k.fdb[i] = FdbEntry { ifindex: vxlan, mac: *mac, dst: Some(*dst), permanent: true },
                    None => k.fdb.push(FdbEntry { ifindex: vxlan, mac: *mac, dst: Some(*dst), permanent: true }),
                }
            }
            Op::DeleteFdb(e) => remove(&mut k.fdb, e),
            Op::Route { route, replace } => {
                let oif = match route.dev {
                    Dev::Vxlan => vxlan,
                    Dev::Index(i) => i,
                };
                let key = |r: &Route4| (r.table, r.dst, r.priority) == (MAIN_TABLE, route.dst, None);
                let existing = k.routes.iter().position(key);
                match (existing, replace) {
                    (Some(i), true) => k.routes[i] = route.to_route(oif),
                    (None, false) => k.routes.push(route.to_route(oif)),
                    (existing, replace) => panic!("route add {route:?} (replace: {replace}) fails: {existing:?}"),
                }
            }
            Op::DeleteRoute(r) => remove(&mut k.routes, r),
            // The VXLAN allow-list follows the peers (an element update, not a table change).
            Op::SetElements { set, changes } => {
                let listing = k.nft.as_mut().expect("the table was listed");
                let elements = listing.elements.entry((*set).to_string()).or_default();
                for ip in &changes.removed {
                    assert!(elements.remove(ip), "deleting element {ip}, which is not there");
                }
                for ip in &changes.added {
                    assert!(elements.insert(*ip), "adding element {ip}, which is there");
                }
            }
            other => panic!("the local node is unchanged, yet the plan has {other:?}"),
        }
    }
    k
}

fn remove<T: PartialEq + std::fmt::Debug>(items: &mut Vec<T>, item: &T) {
    let i = items.iter().position(|x| x == item).unwrap_or_else(|| panic!("deleting {item:?}, which is not there"));
    items.remove(i);
}

/// Routes, neighbours and FDB entries weft does not own: nothing may change them.
fn foreign(k: &Kernel) -> (Vec<Route4>, Vec<Neighbour>, Vec<FdbEntry>) {
    (
        k.routes.iter().filter(|r| r.protocol != WEFT_ROUTE_PROTOCOL || r.table != MAIN_TABLE).cloned().collect(),
        k.neighbours.iter().filter(|n| n.ifindex != VXLAN).copied().collect(),
        k.fdb.iter().filter(|e| e.ifindex != VXLAN).copied().collect(),
    )
}

fn sorted_ops(p: &Plan) -> Vec<String> {
    let mut ops: Vec<String> = p.steps().map(|s| format!("{:?}", s.op)).collect();
    ops.sort();
    ops
}

prop_compose! {
    /// A node's desired state and a kernel converged to an earlier one, plus extra entries.
    fn scenario()(
        before in prop::collection::btree_map(2u8..40, path(), 0..12),
        after in prop::collection::btree_map(2u8..40, (path(), twist()), 0..12),
        extras in prop::collection::vec(extra(), 0..16),
    ) -> (Desired, Kernel) {
        let mut old = desired_with(&[]);
        old.peers = before.into_iter().map(|(n, path)| peer(n, path)).collect();
        let mut kernel = converged(&old);
        for e in &extras {
            add_extra(&mut kernel, e);
        }
        let mut desired = desired_with(&[]);
        desired.peers = after.into_iter().map(|(n, (path, twist))| twisted(n, path, twist)).collect();
        (desired, kernel)
    }
}

proptest! {
    #[test]
    fn one_plan_converges_and_the_next_is_empty((desired, kernel) in scenario()) {
        let first = plan(&desired, &kernel).unwrap();
        let after = apply(&first, &kernel);
        let second = plan(&desired, &after).unwrap();
        prop_assert!(second.stages.is_empty(), "left over: {:#?}", second.stages);
        prop_assert_eq!(second.rejected, first.rejected);
    }

    #[test]
    fn plans_touch_only_what_weft_owns((desired, kernel) in scenario()) {
        let p = plan(&desired, &kernel).unwrap();
        for step in p.steps() {
            match &step.op {
                Op::DeleteRoute(r) => prop_assert!(r.protocol == WEFT_ROUTE_PROTOCOL && r.table == MAIN_TABLE),
                Op::DeleteNeighbour(n) => prop_assert!(n.ifindex == VXLAN && n.permanent),
                Op::DeleteFdb(e) => prop_assert_eq!(e.ifindex, VXLAN),
                _ => {}
            }
        }
        prop_assert_eq!(foreign(&apply(&p, &kernel)), foreign(&kernel));
        // The kernel's own (non-permanent) vxlan0 neighbours go only when a peer needs the address.
        let wanted: HashSet<Ipv4Addr> = desired.peers.iter().map(Peer::vtep_ip).collect();
        let after = apply(&p, &kernel);
        for n in kernel.neighbours.iter().filter(|n| n.ifindex == VXLAN && !n.permanent && !wanted.contains(&n.ip)) {
            prop_assert!(after.neighbours.contains(n), "{:?} was removed", n);
        }
    }

    #[test]
    fn rejected_peers_are_never_programmed((desired, kernel) in scenario()) {
        let p = plan(&desired, &kernel).unwrap();
        let rejected: HashSet<&str> = p.rejected.iter().filter_map(|f| f.peer.as_deref()).collect();
        prop_assert!(p.steps().all(|s| s.peer.as_deref().is_none_or(|n| !rejected.contains(n))));
        let after = apply(&p, &kernel);
        for peer in desired.peers.iter().filter(|p| rejected.contains(p.name.as_str())) {
            let weft_route = |r: &Route4| (r.dst, r.protocol, r.table) == (peer.pod_cidr, WEFT_ROUTE_PROTOCOL, MAIN_TABLE);
            prop_assert!(!after.routes.iter().any(weft_route), "{} is still routed", peer.name);
        }
    }

    #[test]
    fn the_plan_does_not_depend_on_dump_order((desired, kernel) in scenario()) {
        // FDB order is not permuted: the kernel's remote-list order decides which remote a
        // replace rewrites, so the planner rightly follows it.
        let mut shuffled = kernel.clone();
        shuffled.routes.reverse();
        shuffled.neighbours.reverse();
        let (a, b) = (plan(&desired, &kernel).unwrap(), plan(&desired, &shuffled).unwrap());
        prop_assert_eq!(sorted_ops(&a), sorted_ops(&b));
        prop_assert_eq!(a.unchanged, b.unchanged);
        prop_assert_eq!(a.rejected, b.rejected);
    }
}
