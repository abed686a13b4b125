//! Properties of the planner over generated peer sets and kernels: a kernel that starts from an
//! earlier converged state plus stale weft entries and foreign ones converges in one plan, the
//! plan touches only what weft owns, and it does not depend on the kernel's dump order. A node
//! restarted with another configuration (PodCIDR, VNI, port, MTU, VTEP MAC) converges in one plan
//! too, although the plan's own device changes make the kernel drop objects by itself.
//!
//! The kernel is a model: what each operation writes, plus what Linux drops on its own when a
//! device goes, loses its last IPv4 address, goes down or changes MAC address. A plan that counts
//! on an object one of its own steps destroys leaves work for the next plan, which fails here.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use proptest::prelude::*;

use crate::desired::vtep_of;
use crate::desired::{Desired, LocalNode, Peer, PeerPath};
use crate::firewall;
use crate::incremental::{Applied, Devices, plan_incremental};
use crate::mac::Mac;
use crate::objects::{FdbEntry, Link, LinkChange, MAIN_TABLE, Neighbour, Route, VxlanSpec, WEFT_ROUTE_PROTOCOL};
use crate::plan::tests::{CNI0, ETH0, VXLAN, converged, fdb_of, link, neighbour_of};
use crate::plan::{Dev, Op, Plan, plan};
use crate::snapshot::Kernel;
use crate::sysctl;
use crate::underlay::Family;
use crate::validate::tests::{dual_local, local, peer, v6_block};
use crate::validate::validate;

/// The protocol of the routes the kernel adds for an address's prefix.
const RTPROT_KERNEL: u8 = 2;

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
    /// Another PodCIDR of the cluster, which no other peer has.
    Block,
}

fn twist() -> impl Strategy<Value = Twist> {
    prop_oneof![
        6 => Just(Twist::None),
        1 => Just(Twist::NodeIp),
        1 => Just(Twist::Mac),
        1 => Just(Twist::SharedMac),
        1 => Just(Twist::OutsideCluster),
        1 => Just(Twist::Block),
    ]
}

fn path() -> impl Strategy<Value = PeerPath> {
    prop_oneof![Just(PeerPath::Vxlan), Just(PeerPath::Direct)]
}

fn twisted(mut p: Peer, twist: Twist) -> Peer {
    let n = p.name[1..].parse::<u8>().expect("named n<number>");
    match twist {
        Twist::None => {}
        Twist::NodeIp => p.node_ip = Ipv4Addr::new(203, 0, 113, n).into(),
        Twist::Mac => p.vtep_mac = Mac::derived(&format!("moved-{n}")),
        Twist::SharedMac => p.vtep_mac = Mac::derived("n2"),
        Twist::OutsideCluster => p.pod_cidrs[0] = Ipv4Net::new(Ipv4Addr::new(10, 99, n, 0), 24).unwrap().into(),
        Twist::Block => p.pod_cidrs[0] = cidr(n + 100),
    }
    p
}

/// Which pod families a peer has blocks of.
#[derive(Debug, Clone, Copy)]
enum Blocks {
    V4,
    V6,
    Both,
}

fn blocks() -> impl Strategy<Value = Blocks> {
    prop_oneof![Just(Blocks::V4), Just(Blocks::V6), Just(Blocks::Both)]
}

/// `peer(n, path)` with blocks of the families `blocks` names (the IPv6 one fd00:10:244:n::/64).
fn peer_with(n: u8, path: PeerPath, blocks: Blocks) -> Peer {
    let mut p = peer(n, path);
    match blocks {
        Blocks::V4 => {}
        Blocks::V6 => p.pod_cidrs = vec![v6_block(n)],
        Blocks::Both => p.pod_cidrs.push(v6_block(n)),
    }
    p
}

/// Entries a kernel may hold besides a converged state: left over by weft, or someone else's.
#[derive(Debug, Clone)]
enum Extra {
    /// A weft route to a /24 (or with `v6`, a /64) of the cluster, through vxlan0 or the
    /// underlay, metric 0 or not.
    WeftRoute { block: u8, v6: bool, via_vxlan: bool, metric: Option<u32> },
    /// Someone else's route: another protocol, or weft's protocol in another table.
    ForeignRoute { block: u8, other_table: bool },
    /// A neighbour on vxlan0 (of an IPv4 or IPv6 block's VTEP): weft's when permanent, the
    /// kernel's own otherwise.
    VxlanNeighbour { block: u8, v6: bool, permanent: bool },
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
        (block.clone(), any::<bool>(), any::<bool>(), prop::option::of(1u32..4))
            .prop_map(|(block, v6, via_vxlan, metric)| Extra::WeftRoute { block, v6, via_vxlan, metric }),
        (block.clone(), any::<bool>()).prop_map(|(block, other_table)| Extra::ForeignRoute { block, other_table }),
        (block.clone(), any::<bool>(), any::<bool>()).prop_map(|(block, v6, permanent)| Extra::VxlanNeighbour {
            block,
            v6,
            permanent
        }),
        block.clone().prop_map(|block| Extra::UnderlayNeighbour { block }),
        (block.clone(), any::<u8>()).prop_map(|(n, dst)| Extra::VxlanFdb { n, dst }),
        block.prop_map(|n| Extra::ForeignFdb { n }),
    ]
}

fn cidr(block: u8) -> IpNet {
    Ipv4Net::new(Ipv4Addr::new(10, 244, block, 0), 24).unwrap().into()
}

fn cidr_of(block: u8, v6: bool) -> IpNet {
    if v6 { v6_block(block) } else { cidr(block) }
}

/// Adds an extra entry unless the kernel already has one with the same key (it cannot hold two).
fn add_extra(k: &mut Kernel, extra: &Extra) {
    let route = |dst, gateway, oif, protocol, table, priority| Route {
        dst,
        gateway: Some(gateway),
        oif: Some(oif),
        onlink: oif == VXLAN,
        protocol,
        table,
        priority,
    };
    let add_route = |k: &mut Kernel, r: Route| {
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
        Extra::WeftRoute { block, v6, via_vxlan, metric } => {
            let dst = cidr_of(block, v6);
            let (oif, gateway) = if via_vxlan || v6 { (VXLAN, vtep_of(&dst)) } else { (ETH0, node_ip(block)) };
            add_route(k, route(dst, gateway, oif, WEFT_ROUTE_PROTOCOL, MAIN_TABLE, metric));
        }
        Extra::ForeignRoute { block, other_table } => {
            let (protocol, table) = if other_table { (WEFT_ROUTE_PROTOCOL, 100) } else { (4, MAIN_TABLE) };
            // Metric 200: a foreign metric-0 route to a peer's block would make weft's add fail,
            // which is the intended outcome but not a converging one.
            add_route(k, route(cidr(block), node_ip(block), ETH0, protocol, table, Some(200)));
        }
        Extra::VxlanNeighbour { block, v6, permanent } => {
            let mac = Mac::derived(&format!("stale-{block}"));
            add_neighbour(k, Neighbour { ifindex: VXLAN, ip: vtep_of(&cidr_of(block, v6)), mac, permanent });
        }
        Extra::UnderlayNeighbour { block } => {
            add_neighbour(k, Neighbour { ifindex: ETH0, ..neighbour_of(&peer(block, PeerPath::Vxlan)) });
        }
        Extra::VxlanFdb { n, dst } => {
            let e = FdbEntry { dst: Some(Ipv4Addr::new(203, 0, 113, dst).into()), ..fdb_of(&peer(n, PeerPath::Vxlan)) };
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

fn node_ip(block: u8) -> IpAddr {
    peer(block, PeerPath::Direct).node_ip
}

/// In which order the steps of one stage run. The executor runs them concurrently, as they are
/// independent, so every order must leave the same kernel.
#[derive(Debug, Clone, Copy)]
enum InStage {
    AsPlanned,
    Reversed,
}

/// What a kernel does with a plan, including what it drops by itself as a side effect.
fn apply(plan: &Plan, kernel: &Kernel, desired: &Desired, order: InStage) -> Kernel {
    let mut k = kernel.clone();
    for stage in &plan.stages {
        let mut steps: Vec<&Op> = stage.iter().map(|s| &s.op).collect();
        if let InStage::Reversed = order {
            steps.reverse();
        }
        for op in steps {
            apply_op(&mut k, op, desired);
        }
    }
    k
}

fn apply_op(k: &mut Kernel, op: &Op, desired: &Desired) {
    match op {
        Op::DeleteLink { index, .. } => delete_link(k, *index),
        Op::CreateVxlan(family, spec) => create_vxlan(k, *family, spec),
        Op::FixVxlan(family, change) => fix_vxlan(k, *family, change),
        Op::VxlanLearningOff(f) => vxlan_mut(k, *f).vxlan.as_mut().expect("vxlan attributes").learning = false,
        Op::EnsureBridge { name, mtu, gateways } => ensure_bridge(k, name, *mtu, gateways),
        Op::AddAddress(family, a) => add_address(k, vxlan(k, *family).index, *a),
        Op::DeleteAddress { index, address, .. } => delete_address(k, *index, *address),
        Op::Sysctl { key, value } => set_sysctl(k, key, value),
        Op::Nft { script, .. } => write_table(k, script, desired),
        Op::Neighbour { family, ip, mac } => {
            let vxlan = vxlan(k, *family).index;
            k.neighbours.retain(|n| (n.ifindex, n.ip) != (vxlan, *ip));
            k.neighbours.push(Neighbour { ifindex: vxlan, ip: *ip, mac: *mac, permanent: true });
        }
        Op::DeleteNeighbour(_, n) => remove(&mut k.neighbours, n),
        Op::Fdb { mac, dst } => {
            let vxlan = vxlan(k, Family::of(*dst)).index;
            let on_mac = |e: &FdbEntry| e.ifindex == vxlan && e.mac == *mac;
            let same_dst = k.fdb.iter().position(|e| on_mac(e) && e.dst == Some(*dst));
            match same_dst.or_else(|| k.fdb.iter().position(on_mac)) {
                Some(i) => k.fdb[i] = FdbEntry { ifindex: vxlan, mac: *mac, dst: Some(*dst), permanent: true },
                None => k.fdb.push(FdbEntry { ifindex: vxlan, mac: *mac, dst: Some(*dst), permanent: true }),
            }
        }
        Op::DeleteFdb(_, e) => remove(&mut k.fdb, e),
        Op::Route { route, replace } => {
            let oif = match route.dev {
                Dev::Vxlan(family) => {
                    // An on-link route through a device that is down fails (ENETDOWN).
                    assert!(vxlan(k, family).up, "route {route:?} through {family} VXLAN while it is down");
                    vxlan(k, family).index
                }
                Dev::Index(i) => i,
            };
            let key = |r: &Route| (r.table, r.dst, r.priority) == (MAIN_TABLE, route.dst, None);
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
    }
}

// The kernel's side effects, as Linux 6.x has them (checked in a namespace): what goes with a
// device, with its last IPv4 address (its IPv4 routes and neighbours), when it goes down (routes
// and neighbours of both families, and its IPv6 addresses: keep_addr_on_down is 0), and with its
// MAC address. FDB entries go only with the device.

fn delete_link(k: &mut Kernel, index: u32) {
    for family in Family::ALL {
        if k.links.iter().any(|l| l.index == index && l.name == family.vxlan_device()) {
            k.vxlan_rp_filter.remove(&family);
        }
    }
    k.links.retain(|l| l.index != index);
    k.addresses.retain(|(i, _)| *i != index);
    k.fdb.retain(|e| e.ifindex != index);
    flush(k, index, Family::ALL);
}

/// A family disabled on a device (its last IPv4 address removed, or the device down): every
/// route of the family through it and every neighbour of it on it are flushed, permanent
/// ones too.
fn flush(k: &mut Kernel, index: u32, families: impl IntoIterator<Item = Family> + Clone) {
    let of = |ip: IpAddr| families.clone().into_iter().any(|f| f == Family::of(ip));
    k.routes.retain(|r| r.oif != Some(index) || !of(r.dst.addr()));
    k.neighbours.retain(|n| n.ifindex != index || !of(n.ip));
}

/// A device's neighbours, permanent ones too, go when its MAC address changes (NETDEV_CHANGEADDR).
fn flush_neighbours(k: &mut Kernel, index: u32) {
    k.neighbours.retain(|n| n.ifindex != index);
}

fn set_up(k: &mut Kernel, index: u32, up: bool) {
    link_mut(k, index).up = up;
    if !up {
        flush(k, index, Family::ALL);
        k.addresses.retain(|(i, a)| *i != index || a.addr().is_ipv4());
    }
}

/// An address with a prefix shorter than the host's brings its connected route along.
fn connected_route(index: u32, address: IpNet) -> Option<Route> {
    (address.prefix_len() < address.max_prefix_len()).then(|| Route {
        dst: address.trunc(),
        gateway: None,
        oif: Some(index),
        onlink: false,
        protocol: RTPROT_KERNEL,
        table: MAIN_TABLE,
        priority: None,
    })
}

fn add_address(k: &mut Kernel, index: u32, address: IpNet) {
    if !k.addresses.contains(&(index, address)) {
        k.addresses.push((index, address));
        k.routes.extend(connected_route(index, address));
    }
}

fn delete_address(k: &mut Kernel, index: u32, address: IpNet) {
    remove(&mut k.addresses, &(index, address));
    if let Some(route) = connected_route(index, address) {
        remove(&mut k.routes, &route);
    }
    if address.addr().is_ipv4() && !k.addresses_of(index).any(|a| a.addr().is_ipv4()) {
        flush(k, index, [Family::Ipv4]);
    }
}

fn next_index(k: &Kernel) -> u32 {
    k.links.iter().map(|l| l.index).max().unwrap_or(0) + 1
}

fn create_vxlan(k: &mut Kernel, family: Family, spec: &VxlanSpec) {
    assert!(k.link(&spec.name).is_none(), "creating {}, which exists", spec.name);
    let mut vxlan = link(next_index(k), &spec.name, Some("vxlan"));
    vxlan.mtu = spec.mtu;
    vxlan.mac = Some(spec.mac);
    vxlan.vxlan = Some(spec.attrs.clone());
    k.links.push(vxlan);
    // A new device starts from the namespace's default.
    k.vxlan_rp_filter.insert(family, "0".into());
}

fn fix_vxlan(k: &mut Kernel, family: Family, change: &LinkChange) {
    let index = vxlan(k, family).index;
    if let Some(mtu) = change.mtu {
        link_mut(k, index).mtu = mtu;
    }
    if let Some(mac) = change.mac {
        link_mut(k, index).mac = Some(mac);
        flush_neighbours(k, index);
    }
    if let Some(up) = change.up {
        set_up(k, index, up);
    }
}

/// As `bridge::ensure_bridge` does it: created when missing, up, with the MTU and the gateways.
fn ensure_bridge(k: &mut Kernel, name: &str, mtu: u32, gateways: &[IpNet]) {
    let index = match k.link(name) {
        Some(l) => l.index,
        None => {
            let bridge = link(next_index(k), name, Some("bridge"));
            let index = bridge.index;
            k.links.push(bridge);
            index
        }
    };
    let bridge = link_mut(k, index);
    (bridge.mtu, bridge.up) = (mtu, true);
    for gateway in gateways {
        add_address(k, index, *gateway);
    }
}

fn set_sysctl(k: &mut Kernel, key: &str, value: &str) {
    if let Some(f) = Family::ALL.into_iter().find(|f| key == sysctl::forwarding_key(*f)) {
        k.forwarding.insert(f, value.into());
    } else if let Some(f) = Family::ALL.into_iter().find(|f| key == sysctl::dev_key("rp_filter", f.vxlan_device())) {
        k.vxlan_rp_filter.insert(f, value.into());
    } else {
        panic!("sysctl {key} is not weft's");
    }
}

/// The only script a plan may write here is weft's whole table, with every valid peer allowed.
fn write_table(k: &mut Kernel, script: &str, desired: &Desired) {
    let valid = validate(desired).expect("valid local node");
    let table = firewall::weft_table(&desired.local, valid.peers.iter().map(|p| p.node_ip));
    assert_eq!(script, table.render_replace());
    let listing = k.nft.as_mut().expect("the ruleset was listed");
    listing.table = Some(table.shape());
    listing.elements = table.sets.iter().map(|s| (s.name.to_string(), s.elements.clone())).collect();
}

fn vxlan(k: &Kernel, family: Family) -> &Link {
    k.link(family.vxlan_device()).expect("the VXLAN device exists")
}

fn vxlan_mut(k: &mut Kernel, family: Family) -> &mut Link {
    let index = vxlan(k, family).index;
    link_mut(k, index)
}

fn link_mut(k: &mut Kernel, index: u32) -> &mut Link {
    k.links.iter_mut().find(|l| l.index == index).expect("the link exists")
}

fn remove<T: PartialEq + std::fmt::Debug>(items: &mut Vec<T>, item: &T) {
    let i = items.iter().position(|x| x == item).unwrap_or_else(|| panic!("deleting {item:?}, which is not there"));
    items.remove(i);
}

/// Whether an operation acts on the local node's devices, sysctls or table rather than on peers.
fn is_local(op: &Op) -> bool {
    !matches!(
        op,
        Op::Neighbour { .. }
            | Op::DeleteNeighbour(..)
            | Op::Fdb { .. }
            | Op::DeleteFdb(..)
            | Op::Route { .. }
            | Op::DeleteRoute(_)
            | Op::SetElements { .. }
    )
}

/// One plan brings the kernel to `desired` whatever order each stage's steps run in: after
/// it, the next plan is empty.
fn converges_in_one_plan(desired: &Desired, kernel: &Kernel) -> Result<Plan, TestCaseError> {
    let first = plan(desired, kernel).unwrap();
    for order in [InStage::AsPlanned, InStage::Reversed] {
        let after = apply(&first, kernel, desired, order);
        let second = plan(desired, &after).unwrap();
        prop_assert!(second.stages.is_empty(), "{:?}: left over: {:#?}", order, second.stages);
        prop_assert_eq!(&second.rejected, &first.rejected);
    }
    Ok(first)
}

/// Routes, neighbours and FDB entries weft does not own: nothing may change them.
fn foreign(k: &Kernel) -> (Vec<Route>, Vec<Neighbour>, Vec<FdbEntry>) {
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
        dual in any::<bool>(),
        before in prop::collection::btree_map(2u8..40, (path(), blocks()), 0..12),
        after in prop::collection::btree_map(2u8..40, (path(), twist(), blocks()), 0..12),
        extras in prop::collection::vec(extra(), 0..16),
    ) -> (Desired, Kernel) {
        // A dual-stack node, or an IPv4-only one (to which IPv6 blocks are not routed).
        let local = if dual { dual_local() } else { local() };
        let old_peers = before.into_iter().map(|(n, (path, blocks))| peer_with(n, path, blocks)).collect();
        let old = Desired { local: local.clone(), peers: old_peers };
        let mut kernel = converged(&Desired { peers: valid_peers(&old), ..old });
        for e in &extras {
            add_extra(&mut kernel, e);
        }
        let peers = after
            .into_iter()
            .map(|(n, (path, twist, blocks))| twisted(peer_with(n, path, blocks), twist))
            .collect();
        (Desired { local, peers }, kernel)
    }
}

/// What differs when the node restarts: its own configuration, and what its kernel went through
/// while no agent ran.
#[derive(Debug, Clone)]
struct Restart {
    /// A new PodCIDR (a block no peer uses); with `true`, a peer has taken the old one over.
    pod_block: Option<(u8, bool)>,
    vni: bool,
    port: bool,
    mtu: bool,
    mac: bool,
    /// vxlan0 found with learning on.
    learning: bool,
    /// vxlan0 found down (which flushed its routes and neighbours).
    down: bool,
}

fn restart() -> impl Strategy<Value = Restart> {
    (prop::option::of((41u8..60, any::<bool>())), prop::array::uniform6(any::<bool>())).prop_map(
        |(pod_block, [vni, port, mtu, mac, learning, down])| Restart { pod_block, vni, port, mtu, mac, learning, down },
    )
}

/// The valid peers of `d`, as routed: what a converged kernel has entries for.
fn valid_peers(d: &Desired) -> Vec<Peer> {
    let valid = validate(d).expect("valid local node");
    valid.peers.iter().map(|p| Peer { pod_cidrs: d.local.routed(p).collect(), ..(*p).clone() }).collect()
}

fn restarted(local: &LocalNode, r: &Restart) -> LocalNode {
    let mut l = local.clone();
    if let Some((block, _)) = r.pod_block {
        for own in &mut l.pod_cidrs {
            *own = cidr_of(block, own.addr().is_ipv6());
        }
    }
    if r.vni {
        l.vni = 42;
    }
    if r.port {
        l.vxlan_port = 4789;
    }
    if r.mtu {
        l.mtu = 1400;
    }
    if r.mac {
        l.vtep_mac = Mac::derived("n1-renamed");
    }
    l
}

/// The peer that took the local node's old PodCIDR over.
fn taker(old: &LocalNode, path: PeerPath) -> Peer {
    Peer { pod_cidrs: old.pod_cidrs.clone(), node_ip: Ipv4Addr::new(198, 51, 100, 250).into(), ..peer(99, path) }
}

prop_compose! {
    /// A node restarted with another configuration, and its kernel as the earlier one left it.
    fn restart_scenario()(
        (desired, mut kernel) in scenario(),
        restart in restart(),
        taker_path in path(),
    ) -> (Desired, Kernel) {
        let old = desired.local.clone();
        let mut desired = desired;
        desired.local = restarted(&old, &restart);
        if let Some((_, true)) = restart.pod_block {
            desired.peers.push(taker(&old, taker_path));
        }
        if restart.learning {
            vxlan_mut(&mut kernel, Family::Ipv4).vxlan.as_mut().expect("vxlan attributes").learning = true;
        }
        if restart.down {
            set_up(&mut kernel, VXLAN, false);
        }
        (desired, kernel)
    }
}

proptest! {
    #[test]
    fn one_plan_converges_and_the_next_is_empty((desired, kernel) in scenario()) {
        let first = converges_in_one_plan(&desired, &kernel)?;
        // The local node is unchanged: nothing but peers' entries is written.
        prop_assert!(first.steps().all(|s| !is_local(&s.op)), "{:#?}", first.stages);
    }

    #[test]
    fn a_restarted_node_converges_in_one_plan_whatever_the_kernel_drops((desired, kernel) in restart_scenario()) {
        converges_in_one_plan(&desired, &kernel)?;
    }

    #[test]
    fn plans_touch_only_what_weft_owns((desired, kernel) in scenario()) {
        let p = plan(&desired, &kernel).unwrap();
        for step in p.steps() {
            match &step.op {
                Op::DeleteRoute(r) => prop_assert!(r.protocol == WEFT_ROUTE_PROTOCOL && r.table == MAIN_TABLE),
                Op::DeleteNeighbour(_, n) => prop_assert!(n.ifindex == VXLAN && n.permanent),
                Op::DeleteFdb(_, e) => prop_assert_eq!(e.ifindex, VXLAN),
                _ => {}
            }
        }
        prop_assert_eq!(foreign(&apply(&p, &kernel, &desired, InStage::AsPlanned)), foreign(&kernel));
        // The kernel's own (non-permanent) vxlan0 neighbours go only when a peer needs the address.
        let wanted: HashSet<IpAddr> = desired.peers.iter().flat_map(|p| p.pod_cidrs.iter().map(vtep_of)).collect();
        let after = apply(&p, &kernel, &desired, InStage::AsPlanned);
        for n in kernel.neighbours.iter().filter(|n| n.ifindex == VXLAN && !n.permanent && !wanted.contains(&n.ip)) {
            prop_assert!(after.neighbours.contains(n), "{:?} was removed", n);
        }
    }

    #[test]
    fn rejected_peers_are_never_programmed((desired, kernel) in scenario()) {
        let p = plan(&desired, &kernel).unwrap();
        let rejected: HashSet<&str> = p.rejected.iter().filter_map(|f| f.peer.as_deref()).collect();
        prop_assert!(p.steps().all(|s| s.peer.as_deref().is_none_or(|n| !rejected.contains(n))));
        let after = apply(&p, &kernel, &desired, InStage::AsPlanned);
        for peer in desired.peers.iter().filter(|p| rejected.contains(p.name.as_str())) {
            let weft_route =
                |r: &Route| peer.pod_cidrs.contains(&r.dst) && (r.protocol, r.table) == (WEFT_ROUTE_PROTOCOL, MAIN_TABLE);
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

prop_compose! {
    /// Two desired states of an unchanged node: its peers before and after a change. Either
    /// may hold peers that validation rejects.
    fn change()(
        dual in any::<bool>(),
        before in prop::collection::btree_map(2u8..40, (path(), twist(), blocks()), 0..12),
        after in prop::collection::btree_map(2u8..40, (path(), twist(), blocks()), 0..12),
    ) -> (Desired, Desired) {
        let local = if dual { dual_local() } else { local() };
        let peers = |m: std::collections::BTreeMap<u8, (PeerPath, Twist, Blocks)>| {
            m.into_iter().map(|(n, (path, twist, blocks))| twisted(peer_with(n, path, blocks), twist)).collect()
        };
        (Desired { local: local.clone(), peers: peers(before) }, Desired { local, peers: peers(after) })
    }
}

proptest! {
    #[test]
    fn an_incremental_plan_leaves_the_kernel_a_full_apply_would((prev, next) in change()) {
        let kernel = converged(&Desired { peers: valid_peers(&prev), ..prev.clone() });
        let devices = Devices { vxlan: [(Family::Ipv4, VXLAN)].into(), underlay: [(Family::Ipv4, ETH0)].into() };
        let applied = Applied::new(&prev, devices).expect("a valid local node");
        let (partial, change) = plan_incremental(&applied, &next).expect("only peers changed, and few");
        let mut now = applied.clone();
        now.update(change);
        let full = Applied::new(&next, applied.devices.clone());
        prop_assert_eq!(Some(&now), full.as_ref());
        // And back: the applied state kept through two updates (slots freed and reused) is the
        // one a full apply of `prev` keeps.
        let (_, back) = plan_incremental(&now, &prev).expect("only peers changed, and few");
        now.update(back);
        prop_assert_eq!(&now, &applied);
        prop_assert_eq!(&partial.rejected, &plan(&next, &kernel).unwrap().rejected);
        for order in [InStage::AsPlanned, InStage::Reversed] {
            let after = apply(&partial, &kernel, &next, order);
            let full = plan(&next, &after).unwrap();
            prop_assert!(full.stages.is_empty(), "{:?}: a full apply still writes {:#?}", order, full.stages);
        }
    }
}
