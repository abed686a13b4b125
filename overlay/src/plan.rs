//! Deciding: desired state + kernel snapshot in, an ordered list of operations out. Pure, so
//! every decision (adopt, fix in place, recreate, replace, remove) is unit-tested without a
//! kernel. The executor only carries the plan out.
//!
//! Ownership (what may be removed): routes of protocol [`WEFT_ROUTE_PROTOCOL`] in the main
//! table, permanent neighbours and NTF_SELF FDB entries on the VXLAN devices (vxlan0, vxlan-v6),
//! the `inet weft` table and weft-commented rules in other tables. Nothing else is ever changed
//! or deleted.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::desired::{Desired, LocalNode, Peer, UnderlayAddr, vtep_of};
use crate::firewall;
use crate::mac::Mac;
use crate::nft::elements::ElementChanges;
use crate::nft::{self, Listing};
use crate::objects::{
    FdbEntry, Link, LinkChange, MAIN_TABLE, Neighbour, Route, VxlanAttrs, VxlanSpec, WEFT_ROUTE_PROTOCOL,
};
use crate::report::Failure;
use crate::snapshot::{Kernel, RP_FILTER_LOOSE};
use crate::sysctl;
use crate::underlay::Family;
use crate::validate::{InvalidLocal, InvalidPeer, validate};

/// A device an operation acts on. A VXLAN device's index is unknown until it exists, so
/// operations on it name it by family and the executor fills the index in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dev {
    Vxlan(Family),
    Index(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: IpNet,
    pub gateway: IpAddr,
    pub dev: Dev,
    pub onlink: bool,
}

impl RouteSpec {
    /// The kernel route, once the device's index is known.
    pub fn to_route(&self, oif: u32) -> Route {
        Route {
            dst: self.dst,
            gateway: Some(self.gateway),
            oif: Some(oif),
            onlink: self.onlink,
            protocol: WEFT_ROUTE_PROTOCOL,
            table: MAIN_TABLE,
            priority: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    DeleteLink {
        index: u32,
        name: String,
    },
    CreateVxlan(Family, VxlanSpec),
    /// MTU, MAC and up/down: the attributes a VXLAN device takes in place.
    FixVxlan(Family, LinkChange),
    VxlanLearningOff(Family),
    /// cni0 with one gateway per pod block.
    EnsureBridge {
        name: String,
        mtu: u32,
        gateways: Vec<IpNet>,
    },
    /// On a VXLAN device (which may be created in the same apply, so its index is not known yet).
    AddAddress(Family, IpNet),
    /// From an existing link: a VXLAN device, or cni0 keeping a previous PodCIDR's gateway.
    DeleteAddress {
        link: String,
        index: u32,
        address: IpNet,
    },
    Sysctl {
        key: String,
        value: &'static str,
    },
    /// Permanent neighbour on the VXLAN device of `family`, created or replaced in place.
    Neighbour {
        family: Family,
        ip: IpAddr,
        mac: Mac,
    },
    DeleteNeighbour(Family, Neighbour),
    /// Permanent FDB entry on the VXLAN device of `dst`'s family, created or replaced in place.
    Fdb {
        mac: Mac,
        dst: IpAddr,
    },
    DeleteFdb(Family, FdbEntry),
    /// `replace` changes weft's existing route to the destination in place; without it the
    /// add fails rather than overwrite someone else's route.
    Route {
        route: RouteSpec,
        replace: bool,
    },
    DeleteRoute(Route),
    /// One `nft -f -` transaction; `object` names what it writes, for reports.
    Nft {
        object: &'static str,
        script: String,
    },
    /// Elements added to and removed from a set of weft's table, in one transaction.
    SetElements {
        set: &'static str,
        changes: ElementChanges,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let vx = |family: &Family| family.vxlan_device();
        match self {
            Op::DeleteLink { name, .. } => write!(f, "link {name}"),
            Op::CreateVxlan(fam, _) | Op::FixVxlan(fam, _) | Op::VxlanLearningOff(fam) => write!(f, "link {}", vx(fam)),
            Op::EnsureBridge { name, .. } => write!(f, "bridge {name}"),
            Op::AddAddress(fam, a) => write!(f, "address {a} on {}", vx(fam)),
            Op::DeleteAddress { link, address, .. } => write!(f, "address {address} on {link}"),
            Op::Sysctl { key, value } => write!(f, "sysctl {key}={value}"),
            Op::Neighbour { family, ip, .. } => write!(f, "neighbour {ip} on {}", vx(family)),
            Op::DeleteNeighbour(family, n) => write!(f, "neighbour {} on {}", n.ip, vx(family)),
            Op::Fdb { mac, dst } => write!(f, "fdb {mac} on {}", vx(&Family::of(*dst))),
            Op::DeleteFdb(family, e) => write!(f, "fdb {} on {}", e.mac, vx(family)),
            Op::Route { route, .. } => write!(f, "route {}", route.dst),
            Op::DeleteRoute(r) => write!(f, "route {}", r.dst),
            Op::Nft { object, .. } => write!(f, "{object}"),
            Op::SetElements { set, .. } => write!(f, "nftables set {} {} {set}", firewall::FAMILY, firewall::TABLE),
        }
    }
}

/// Counts of objects by what happened to them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub created: usize,
    pub changed: usize,
    pub removed: usize,
    pub unchanged: usize,
}

impl Tally {
    pub const CREATE: Tally = Tally::of(1, 0, 0);
    pub const CHANGE: Tally = Tally::of(0, 1, 0);
    pub const REMOVE: Tally = Tally::of(0, 0, 1);

    pub const fn of(created: usize, changed: usize, removed: usize) -> Tally {
        Tally { created, changed, removed, unchanged: 0 }
    }

    pub fn add(&mut self, other: Tally) {
        self.created += other.created;
        self.changed += other.changed;
        self.removed += other.removed;
        self.unchanged += other.unchanged;
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub op: Op,
    /// What the operation does to the kernel when it succeeds.
    pub tally: Tally,
    /// The peer the object serves, for failure reports.
    pub peer: Option<String>,
    /// A failure aborts the run (a VXLAN device cannot be set up: nothing after it can work).
    pub critical: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Run in order; the steps of one stage are independent and may run concurrently.
    pub stages: Vec<Vec<Step>>,
    /// The index of each VXLAN device that is adopted; one the plan creates is not in it.
    pub vxlan_index: BTreeMap<Family, u32>,
    /// The index of each underlay family's link (direct routes go out on it).
    pub underlay_index: BTreeMap<Family, u32>,
    /// Desired objects the kernel already has right.
    pub unchanged: usize,
    /// Peers left out as invalid.
    pub rejected: Vec<Failure>,
    /// What is known to fail before anything runs (e.g. an unreadable nftables ruleset).
    pub failures: Vec<Failure>,
}

impl Plan {
    pub fn steps(&self) -> impl Iterator<Item = &Step> {
        self.stages.iter().flatten()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("invalid local node: {0}")]
    Invalid(#[from] InvalidLocal),
    #[error("underlay interface {0} does not exist")]
    NoUnderlay(String),
}

/// The stages, in the order they run. Adds come before removals so that a changed peer is
/// never without a path; per peer the route comes last on the way in and first on the way
/// out, so no route ever points at a tunnel endpoint that is not (or no longer) programmed.
/// A step never destroys what a later one relies on or what the plan counts unchanged: the
/// kernel's own flushes (see `plan_vxlan`) are either avoided by the order or planned for.
#[derive(Clone, Copy)]
pub(crate) enum Stage {
    /// Deleting a vxlan0 that must be recreated.
    DeviceDelete,
    /// vxlan0 itself, cni0, forwarding, weft's table.
    Device,
    /// What needs vxlan0 to exist: its address and sysctl; then rules in other tables (a
    /// second nft run, kept apart from the first so two transactions never race).
    DeviceConfig,
    /// Addresses no longer wanted, once the wanted one is on: removing a device's last IPv4
    /// address makes the kernel flush every route and neighbour through it. Before any peer
    /// entry, since a peer may have taken over a removed address's block.
    StaleAddresses,
    NeighboursAndFdb,
    Routes,
    RouteRemovals,
    FdbRemovals,
    NeighbourRemovals,
}

const STAGES: usize = Stage::NeighbourRemovals as usize + 1;

pub(crate) struct Builder {
    stages: [Vec<Step>; STAGES],
    pub(crate) unchanged: usize,
}

impl Builder {
    pub(crate) fn new() -> Builder {
        Builder { stages: Default::default(), unchanged: 0 }
    }

    /// The non-empty stages, in order.
    pub(crate) fn stages(self) -> Vec<Vec<Step>> {
        self.stages.into_iter().filter(|s| !s.is_empty()).collect()
    }

    pub(crate) fn push(&mut self, stage: Stage, op: Op, tally: Tally, peer: Option<&str>) {
        self.stages[stage as usize].push(Step { op, tally, peer: peer.map(str::to_string), critical: false });
    }

    fn critical(&mut self, stage: Stage, op: Op, tally: Tally) {
        self.stages[stage as usize].push(Step { op, tally, peer: None, critical: true });
    }

    pub(crate) fn removal(&mut self, stage: Stage, op: Op) {
        self.push(stage, op, Tally::REMOVE, None);
    }
}

/// The kernel's weft-relevant state around one VXLAN device, as the plan sees it after deciding
/// about the device: empty when it is (re)created or removed, since its entries go with it;
/// without neighbours when its MAC changes, since the kernel flushes them then.
struct OnVxlan<'k> {
    index: Option<u32>,
    neighbours: Grouped<'k, IpAddr, Neighbour>,
    /// By MAC; a MAC's entries in dump order (which is the kernel's remote list order).
    fdb: Grouped<'k, Mac, FdbEntry>,
}

/// Kernel objects grouped by a key: sorted once (stably, so dump order survives within a
/// group) and found by binary search, which is cheaper per apply than a map of vectors and
/// makes the plan's order deterministic.
struct Grouped<'k, K, T> {
    items: Vec<&'k T>,
    key: fn(&T) -> K,
}

impl<'k, K: Ord, T> Grouped<'k, K, T> {
    fn new(items: impl Iterator<Item = &'k T>, key: fn(&T) -> K) -> Self {
        let mut items: Vec<&T> = items.collect();
        items.sort_by_key(|t| key(t));
        Grouped { items, key }
    }

    fn get(&self, k: &K) -> &[&'k T] {
        let start = self.items.partition_point(|t| (self.key)(t) < *k);
        let len = self.items[start..].partition_point(|t| (self.key)(t) == *k);
        &self.items[start..start + len]
    }

    fn groups(&self) -> impl Iterator<Item = &[&'k T]> {
        self.items.chunk_by(|a, b| (self.key)(a) == (self.key)(b))
    }
}

impl OnVxlan<'_> {
    fn empty() -> Self {
        OnVxlan {
            index: None,
            neighbours: Grouped::new(std::iter::empty(), |n| n.ip),
            fdb: Grouped::new(std::iter::empty(), |e| e.mac),
        }
    }
}

pub fn plan(desired: &Desired, kernel: &Kernel) -> Result<Plan, PlanError> {
    let valid = validate(desired)?;
    let local = &desired.local;
    let mut underlays = BTreeMap::new();
    for u in &local.underlays {
        let link = kernel.link(&u.iface).ok_or_else(|| PlanError::NoUnderlay(u.iface.clone()))?;
        underlays.insert(Family::of(u.ip), link.index);
    }
    let mut b = Builder::new();
    let mut failures = Vec::new();

    // One device per underlay family the node has; one of a family it no longer has goes.
    let mut on_vxlan = BTreeMap::new();
    let mut dying = Vec::new();
    for family in Family::ALL {
        let existing = kernel.link(family.vxlan_device());
        let on = match local.underlay(family) {
            Some(u) => plan_vxlan(&mut b, local, u, underlays[&family], existing, kernel),
            None => {
                if let Some(link) = existing {
                    b.removal(Stage::DeviceDelete, Op::DeleteLink { index: link.index, name: link.name.clone() });
                }
                OnVxlan::empty()
            }
        };
        // Routes of a removed or replaced device vanish with it.
        dying.extend(existing.filter(|_| on.index.is_none()).map(|l| l.index));
        on_vxlan.insert(family, on);
    }
    plan_bridge(&mut b, local, kernel);
    plan_sysctls(&mut b, kernel, local, &on_vxlan);
    plan_nft(&mut b, local, valid.peers.iter().map(|p| p.node_ip), kernel, &mut failures);

    let owned_routes = Grouped::new(
        kernel.routes.iter().filter(|r| {
            r.protocol == WEFT_ROUTE_PROTOCOL && r.table == MAIN_TABLE && r.oif.is_none_or(|oif| !dying.contains(&oif))
        }),
        |r| r.dst,
    );
    let n = valid.peers.len();
    let mut wanted_neighbours = HashSet::with_capacity(n);
    let mut wanted_macs = HashSet::with_capacity(n);
    let mut wanted_routes = HashSet::with_capacity(n);
    for peer in &valid.peers {
        let name = Some(peer.name.as_str());
        // Validation guarantees an underlay (so a device) of the peer's family.
        let family = Family::of(peer.node_ip);
        let on = &on_vxlan[&family];
        let objects = PeerObjects::of(local, peer, underlays[&family]);
        for vtep in &objects.neighbours {
            wanted_neighbours.insert((family, *vtep));
            plan_neighbour(&mut b, on, family, *vtep, peer.vtep_mac, name);
        }
        let tunnelled = objects.tunnelled();
        for route in objects.routes {
            wanted_routes.insert(route.dst);
            let existing = owned_routes.get(&route.dst);
            plan_route(&mut b, route, on.index, existing, name);
        }
        if tunnelled {
            wanted_macs.insert((family, peer.vtep_mac));
            plan_fdb(&mut b, on, peer.vtep_mac, peer.node_ip, name);
        }
    }

    // Whatever weft owns and nothing wants any more.
    for routes in owned_routes.groups() {
        if !wanted_routes.contains(&routes[0].dst) {
            for r in routes {
                b.removal(Stage::RouteRemovals, Op::DeleteRoute((*r).clone()));
            }
        }
    }
    for (family, on) in &on_vxlan {
        for entries in on.fdb.groups() {
            if !wanted_macs.contains(&(*family, entries[0].mac)) {
                for e in entries {
                    b.removal(Stage::FdbRemovals, Op::DeleteFdb(*family, **e));
                }
            }
        }
        for n in on.neighbours.groups().flatten() {
            if n.permanent && !wanted_neighbours.contains(&(*family, n.ip)) {
                b.removal(Stage::NeighbourRemovals, Op::DeleteNeighbour(*family, **n));
            }
        }
    }

    Ok(Plan {
        unchanged: b.unchanged,
        stages: b.stages(),
        vxlan_index: on_vxlan.iter().filter_map(|(f, on)| Some((*f, on.index?))).collect(),
        underlay_index: underlays,
        rejected: rejected(&valid.rejected),
        failures,
    })
}

/// The peers validation left out, as reported.
pub(crate) fn rejected(rejected: &[(&Peer, InvalidPeer)]) -> Vec<Failure> {
    let failure = |(peer, why): &(&Peer, _)| Failure {
        object: format!("peer {}", peer.name),
        peer: Some(peer.name.clone()),
        error: format!("{why}"),
    };
    rejected.iter().map(failure).collect()
}

/// What one peer needs in the kernel: a route per block this node routes and, for each block
/// that rides the tunnel, the neighbour of its VTEP address (on the VXLAN device of the peer's
/// underlay family, with the peer's VTEP MAC); the peer's FDB entry when any block does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerObjects {
    pub(crate) routes: Vec<RouteSpec>,
    pub(crate) neighbours: Vec<IpAddr>,
}

impl PeerObjects {
    /// `underlay`: the index of the link carrying the underlay of the peer's family, which a
    /// direct route goes out on.
    pub(crate) fn of(local: &LocalNode, peer: &Peer, underlay: u32) -> PeerObjects {
        let family = Family::of(peer.node_ip);
        let mut objects = PeerObjects { routes: Vec::new(), neighbours: Vec::new() };
        for block in local.routed(peer) {
            // Direct only for the block of the underlay's family: a gateway of the other family
            // would need RTA_VIA.
            let route = if peer.routes_directly(&block) {
                RouteSpec { dst: block, gateway: peer.node_ip, dev: Dev::Index(underlay), onlink: false }
            } else {
                let vtep = vtep_of(&block);
                objects.neighbours.push(vtep);
                RouteSpec { dst: block, gateway: vtep, dev: Dev::Vxlan(family), onlink: true }
            };
            objects.routes.push(route);
        }
        objects
    }

    /// Whether any block rides the tunnel, so the peer needs its FDB entry.
    pub(crate) fn tunnelled(&self) -> bool {
        !self.neighbours.is_empty()
    }
}

/// The VXLAN device weft wants for the underlay address `underlay` (on link `index`).
pub fn vxlan_spec(local: &LocalNode, underlay: &UnderlayAddr, index: u32) -> VxlanSpec {
    VxlanSpec {
        name: Family::of(underlay.ip).vxlan_device().to_string(),
        attrs: VxlanAttrs {
            vni: local.vni,
            port: local.vxlan_port,
            local: Some(underlay.ip),
            underlay: Some(index),
            learning: false,
            // Zero outer UDP checksum (RFC 7348's SHOULD for IPv4, the kernel's and flannel's
            // default; over IPv6 the kernel computes it anyway): a non-zero one must be computed wherever the tunnel's packets are
            // segmented in software (a NIC without tx-udp_tnl-csum-segmentation, a bridge on
            // the path), and one the receiver cannot validate blocks its tunnel GRO; the inner
            // TCP checksum still protects the payload. Measured ~10 % faster in the lab.
            udp_csum: false,
        },
        mtu: local.mtu,
        mac: local.vtep_mac,
    }
}

/// Whether an existing link can serve as the VXLAN device: the tunnel's identity (VNI, port, local IP,
/// underlay) and the UDP checksum setting cannot change without recreating the device.
fn compatible(link: &Link, want: &VxlanAttrs) -> bool {
    link.kind.as_deref() == Some("vxlan")
        && link.vxlan.as_ref().is_some_and(|a| {
            a.vni == want.vni
                && a.port == want.port
                && a.local == want.local
                && a.underlay == want.underlay
                && a.udp_csum == want.udp_csum
        })
}

/// The VXLAN device of `underlay`'s family. Each device carries the VTEP address, so that
/// traffic the node itself sends through either tunnel has a source in its own PodCIDR.
fn plan_vxlan<'k>(
    b: &mut Builder,
    local: &LocalNode,
    underlay: &UnderlayAddr,
    index: u32,
    existing: Option<&'k Link>,
    kernel: &'k Kernel,
) -> OnVxlan<'k> {
    let family = Family::of(underlay.ip);
    let spec = vxlan_spec(local, underlay, index);
    let want_addrs = local.vtep_addresses();
    let adopted = match existing {
        Some(link) if compatible(link, &spec.attrs) => Some(link),
        Some(link) => {
            let op = Op::DeleteLink { index: link.index, name: link.name.clone() };
            b.critical(Stage::DeviceDelete, op, Tally::REMOVE);
            None
        }
        None => None,
    };
    let Some(link) = adopted else {
        b.critical(Stage::Device, Op::CreateVxlan(family, spec), Tally::CREATE);
        for addr in want_addrs {
            b.push(Stage::DeviceConfig, Op::AddAddress(family, addr), Tally::CREATE, None);
        }
        return OnVxlan::empty();
    };

    let change = LinkChange {
        mtu: (link.mtu != spec.mtu).then_some(spec.mtu),
        mac: (link.mac != Some(spec.mac)).then_some(spec.mac),
        up: (!link.up).then_some(true),
        ..LinkChange::default()
    };
    // A new MAC (NETDEV_CHANGEADDR) makes the kernel drop every neighbour on the device,
    // permanent ones too: they are written again after the change, not counted unchanged.
    let neighbours_kept = change.mac.is_none();
    if change == LinkChange::default() {
        b.unchanged += 1;
    } else {
        b.push(Stage::Device, Op::FixVxlan(family, change), Tally::CHANGE, None);
    }
    if link.vxlan.as_ref().is_some_and(|a| a.learning) {
        b.push(Stage::Device, Op::VxlanLearningOff(family), Tally::CHANGE, None);
    }

    // The kernel's own link-local address is not weft's to remove.
    let addresses: Vec<IpNet> = kernel.addresses_of(link.index).filter(|a| !is_link_local(a)).collect();
    for addr in &addresses {
        if want_addrs.contains(addr) {
            b.unchanged += 1;
        } else {
            let op = Op::DeleteAddress { link: link.name.clone(), index: link.index, address: *addr };
            b.removal(Stage::StaleAddresses, op);
        }
    }
    for addr in want_addrs.into_iter().filter(|a| !addresses.contains(a)) {
        b.push(Stage::DeviceConfig, Op::AddAddress(family, addr), Tally::CREATE, None);
    }

    let on_link = |ifindex: u32| ifindex == link.index;
    OnVxlan {
        index: Some(link.index),
        neighbours: Grouped::new(kernel.neighbours.iter().filter(|n| neighbours_kept && on_link(n.ifindex)), |n| n.ip),
        fdb: Grouped::new(kernel.fdb.iter().filter(|e| on_link(e.ifindex)), |e| e.mac),
    }
}

/// cni0 is handed to `bridge::ensure_bridge` only when the snapshot shows it is not right. Any
/// other address of a gateway's family on it is a previous PodCIDR's gateway: left there, its
/// connected route would keep that block on this node after the block has moved to another.
/// Addresses of a family the node has no block of, and link-local ones, are not its to remove.
fn plan_bridge(b: &mut Builder, local: &LocalNode, kernel: &Kernel) {
    let gateways = local.gateways();
    let bridge = kernel.link(&local.bridge).filter(|l| l.kind.as_deref() == Some("bridge"));
    let right = bridge.is_some_and(|l| {
        l.up && l.mtu == local.mtu && gateways.iter().all(|g| kernel.addresses_of(l.index).any(|a| a == *g))
    });
    if right {
        b.unchanged += 1;
    } else {
        let op = Op::EnsureBridge { name: local.bridge.clone(), mtu: local.mtu, gateways: gateways.clone() };
        // The executor counts what ensure_bridge reports it did.
        b.push(Stage::Device, op, Tally::default(), None);
    }
    if let Some(link) = bridge {
        let managed = |a: &IpNet| local.pod_cidr(Family::of_net(a)).is_some() && !is_link_local(a);
        let stale = |a: &IpNet| managed(a) && !gateways.contains(a);
        for address in kernel.addresses_of(link.index).filter(stale) {
            let op = Op::DeleteAddress { link: link.name.clone(), index: link.index, address };
            b.removal(Stage::StaleAddresses, op);
        }
    }
}

/// An IPv6 link-local address (fe80::/10), which the kernel gives every device itself.
fn is_link_local(net: &IpNet) -> bool {
    matches!(net, IpNet::V6(v6) if v6.addr().is_unicast_link_local())
}

/// `on_vxlan`: the VXLAN devices by family (with their index when adopted).
fn plan_sysctls(b: &mut Builder, kernel: &Kernel, local: &LocalNode, on_vxlan: &BTreeMap<Family, OnVxlan<'_>>) {
    // Forwarding for each family the node has pods of.
    for family in local.pod_cidrs.iter().map(Family::of_net) {
        if kernel.forwarding.get(&family).map(String::as_str) == Some("1") {
            b.unchanged += 1;
        } else {
            let op = Op::Sysctl { key: sysctl::forwarding_key(family).to_string(), value: "1" };
            b.push(Stage::Device, op, Tally::CHANGE, None);
        }
    }
    // A new device starts from the namespace default: set it after creating the device.
    for family in local.node_ips().families() {
        let is_loose = kernel.vxlan_rp_filter.get(&family).map(String::as_str) == Some(RP_FILTER_LOOSE);
        if on_vxlan[&family].index.is_some() && is_loose {
            b.unchanged += 1;
        } else {
            let key = sysctl::dev_key("rp_filter", family.vxlan_device());
            let op = Op::Sysctl { key, value: RP_FILTER_LOOSE };
            b.push(Stage::DeviceConfig, op, Tally::CHANGE, None);
        }
    }
}

/// `peers`: the node IPs allowed to send VXLAN. Every valid peer's, whatever its path: a direct
/// peer switching to VXLAN (or still sending VXLAN while the two nodes disagree about the path)
/// must not be dropped, and one set for all peers keeps the decision simple.
fn plan_nft(
    b: &mut Builder,
    local: &LocalNode,
    peers: impl Iterator<Item = IpAddr>,
    kernel: &Kernel,
    failures: &mut Vec<Failure>,
) {
    let listing = match &kernel.nft {
        Ok(listing) => listing,
        Err(e) => {
            failures.push(Failure {
                object: "nftables".into(),
                peer: None,
                error: format!("cannot read the ruleset, left alone: {e}"),
            });
            return;
        }
    };
    let table = firewall::weft_table(local, peers);
    match &listing.table {
        Some(shape) if *shape == table.shape() => {
            b.unchanged += 1;
            plan_set_elements(b, &table, listing);
        }
        current => {
            let tally = if current.is_some() { Tally::CHANGE } else { Tally::CREATE };
            let op = Op::Nft { object: "nftables table inet weft", script: table.render_replace() };
            b.push(Stage::Device, op, tally, None);
        }
    }
    let foreign = firewall::foreign_changes(&listing.foreign, &local.cluster_cidrs);
    b.unchanged += foreign.kept;
    if !foreign.script.is_empty() {
        let op = Op::Nft { object: "nftables rules in other tables' forward chains", script: foreign.script };
        let tally = Tally::of(foreign.inserted, 0, foreign.removed);
        b.push(Stage::DeviceConfig, op, tally, None);
    }
    for chain in foreign.unaddressable {
        failures.push(Failure {
            object: format!("nftables chain {chain}"),
            peer: None,
            error: "nft cannot address it by name (not a plain identifier), so weft's accepts \
                    cannot be added to or removed from it"
                .into(),
        });
    }
}

/// Membership changes of an unchanged table are element updates (over nfnetlink, see
/// [`nft::elements`]): a table rewrite would cost a full transaction of every rule and element
/// per peer change. They run with the neighbours and FDB entries, so a new peer is accepted
/// about when it becomes reachable.
fn plan_set_elements(b: &mut Builder, table: &nft::Table, listing: &Listing) {
    let none = BTreeSet::new();
    for set in &table.sets {
        let changes = nft::elements::diff(&set.elements, listing.elements.get(set.name).unwrap_or(&none));
        b.unchanged += set.elements.len() - changes.added.len();
        if !changes.is_empty() {
            let tally = Tally::of(changes.added.len(), 0, changes.removed.len());
            b.push(Stage::NeighboursAndFdb, Op::SetElements { set: set.name, changes }, tally, None);
        }
    }
}

fn plan_neighbour(b: &mut Builder, on: &OnVxlan<'_>, family: Family, ip: IpAddr, mac: Mac, peer: Option<&str>) {
    let tally = match on.neighbours.get(&ip).first() {
        Some(n) if n.mac == mac && n.permanent => {
            b.unchanged += 1;
            return;
        }
        Some(_) => Tally::CHANGE,
        None => Tally::CREATE,
    };
    b.push(Stage::NeighboursAndFdb, Op::Neighbour { family, ip, mac }, tally, peer);
}

/// A VXLAN FDB entry is keyed by MAC and may hold several remotes. A replace updates the remote
/// that already has the destination, or else rewrites the first one (the kernel's list order is
/// the dump order); any other remote of the MAC is deleted afterwards.
fn plan_fdb(b: &mut Builder, on: &OnVxlan<'_>, mac: Mac, dst: IpAddr, peer: Option<&str>) {
    let family = Family::of(dst);
    let entries = on.fdb.get(&mac);
    let matching = entries.iter().find(|e| e.dst == Some(dst));
    let kept = matching.or(entries.first());
    match matching {
        Some(e) if e.permanent => b.unchanged += 1,
        _ => {
            let tally = if entries.is_empty() { Tally::CREATE } else { Tally::CHANGE };
            b.push(Stage::NeighboursAndFdb, Op::Fdb { mac, dst }, tally, peer);
        }
    }
    for e in entries {
        if kept.is_none_or(|k| !std::ptr::eq(*k, *e)) {
            b.removal(Stage::FdbRemovals, Op::DeleteFdb(family, **e));
        }
    }
}

/// `existing`: weft's routes to the same destination (at most one with metric 0, which a
/// replace rewrites in place; any with another metric are removed).
fn plan_route(b: &mut Builder, want: RouteSpec, vxlan_index: Option<u32>, existing: &[&Route], peer: Option<&str>) {
    let oif = match want.dev {
        Dev::Vxlan(_) => vxlan_index,
        Dev::Index(i) => Some(i),
    };
    let primary = existing.iter().find(|r| r.priority.is_none());
    for r in existing.iter().filter(|r| r.priority.is_some()) {
        b.removal(Stage::RouteRemovals, Op::DeleteRoute((*r).clone()));
    }
    let tally = match primary {
        Some(r) if oif.is_some() && r.oif == oif && r.gateway == Some(want.gateway) && r.onlink == want.onlink => {
            b.unchanged += 1;
            return;
        }
        Some(_) => Tally::CHANGE,
        None => Tally::CREATE,
    };
    let replace = primary.is_some();
    b.push(Stage::Routes, Op::Route { route: want, replace }, tally, peer);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::desired::{Peer, PeerPath};
    use crate::nft::ForeignChain;
    use crate::validate::tests::{dual_local, local, peer, v6_block};

    pub(crate) const ETH0: u32 = 2;
    pub(crate) const VXLAN: u32 = 5;
    pub(crate) const CNI0: u32 = 6;
    pub(crate) const VXLAN6: u32 = 7;

    /// The test kernel's index of a family's VXLAN device.
    pub(crate) fn vx(family: Family) -> u32 {
        match family {
            Family::Ipv4 => VXLAN,
            Family::Ipv6 => VXLAN6,
        }
    }

    pub(crate) fn desired_with(peers: &[u8]) -> Desired {
        Desired { local: local(), peers: peers.iter().map(|&n| peer(n, PeerPath::Vxlan)).collect() }
    }

    pub(crate) fn link(index: u32, name: &str, kind: Option<&str>) -> Link {
        Link {
            index,
            name: name.into(),
            mac: Some(Mac::derived(name)),
            mtu: 1500,
            up: true,
            master: None,
            kind: kind.map(str::to_string),
            link: None,
            vxlan: None,
            hairpin: None,
        }
    }

    /// Whether a block of `p` rides the tunnel: the planner's rule, restated.
    pub(crate) fn tunnelled(p: &Peer, block: &IpNet) -> bool {
        p.path == PeerPath::Vxlan || Family::of_net(block) != Family::of(p.node_ip)
    }

    fn block_route(p: &Peer, block: IpNet) -> Route {
        let family = Family::of(p.node_ip);
        if tunnelled(p, &block) {
            let gateway = vtep_of(&block);
            RouteSpec { dst: block, gateway, dev: Dev::Vxlan(family), onlink: true }.to_route(vx(family))
        } else {
            RouteSpec { dst: block, gateway: p.node_ip, dev: Dev::Index(ETH0), onlink: false }.to_route(ETH0)
        }
    }

    fn routes_of(p: &Peer) -> Vec<Route> {
        p.pod_cidrs.iter().map(|b| block_route(p, *b)).collect()
    }

    /// The route to `p`'s first block.
    fn route_of(p: &Peer) -> Route {
        block_route(p, p.pod_cidrs[0])
    }

    pub(crate) fn neighbours_of(p: &Peer) -> Vec<Neighbour> {
        let ifindex = vx(Family::of(p.node_ip));
        let tunnelled = p.pod_cidrs.iter().filter(|b| tunnelled(p, b));
        tunnelled.map(|b| Neighbour { ifindex, ip: vtep_of(b), mac: p.vtep_mac, permanent: true }).collect()
    }

    /// The neighbour of `p`'s first block.
    pub(crate) fn neighbour_of(p: &Peer) -> Neighbour {
        Neighbour { ifindex: vx(Family::of(p.node_ip)), ip: vtep_of(&p.pod_cidrs[0]), mac: p.vtep_mac, permanent: true }
    }

    pub(crate) fn fdb_of(p: &Peer) -> FdbEntry {
        FdbEntry { ifindex: vx(Family::of(p.node_ip)), mac: p.vtep_mac, dst: Some(p.node_ip), permanent: true }
    }

    /// The kernel exactly as a successful apply of `d` leaves it, plus the usual foreign state.
    /// Every underlay is on eth0.
    pub(crate) fn converged(d: &Desired) -> Kernel {
        let l = &d.local;
        let devices: Vec<Link> = l
            .underlays
            .iter()
            .map(|u| {
                let family = Family::of(u.ip);
                let mut vxlan = link(vx(family), family.vxlan_device(), Some("vxlan"));
                vxlan.mtu = l.mtu;
                vxlan.mac = Some(l.vtep_mac);
                vxlan.vxlan = Some(vxlan_spec(l, u, ETH0).attrs);
                vxlan
            })
            .collect();
        let mut cni0 = link(CNI0, &l.bridge, Some("bridge"));
        cni0.mtu = l.mtu;
        let vxlan_peers: Vec<&Peer> = d.peers.iter().filter(|p| p.pod_cidrs.iter().any(|b| tunnelled(p, b))).collect();
        let mut routes: Vec<Route> = d.peers.iter().flat_map(routes_of).collect();
        routes.extend(l.pod_cidrs.iter().map(|block| Route {
            dst: *block,
            gateway: None,
            oif: Some(CNI0),
            onlink: false,
            protocol: 2,
            table: MAIN_TABLE,
            priority: None,
        }));
        let mut addresses: Vec<(u32, IpNet)> = vec![(ETH0, "192.0.2.10/24".parse().unwrap())];
        for device in &devices {
            addresses.extend(l.vtep_addresses().into_iter().map(|a| (device.index, a)));
            addresses.push((device.index, "fe80::1/64".parse().unwrap()));
        }
        addresses.extend(l.gateways().into_iter().map(|g| (CNI0, g)));
        addresses.push((CNI0, "fe80::2/64".parse().unwrap()));
        let elements = l
            .node_ips()
            .families()
            .map(|f| {
                let ips = d.peers.iter().map(|p| p.node_ip).filter(|ip| Family::of(*ip) == f).collect();
                (firewall::peer_set(f).to_string(), ips)
            })
            .collect();
        let mut links = vec![link(1, "lo", None), link(ETH0, "eth0", None)];
        links.extend(devices);
        links.push(cni0);
        Kernel {
            links,
            addresses,
            routes,
            neighbours: vxlan_peers.iter().flat_map(|p| neighbours_of(p)).collect(),
            fdb: vxlan_peers.iter().map(|p| fdb_of(p)).collect(),
            nft: Ok(Listing { table: Some(firewall::weft_table(l, []).shape()), elements, ..Listing::default() }),
            forwarding: l.pod_cidrs.iter().map(|b| (Family::of_net(b), "1".to_string())).collect(),
            vxlan_rp_filter: l.node_ips().families().map(|f| (f, RP_FILTER_LOOSE.to_string())).collect(),
        }
    }

    fn empty() -> Kernel {
        Kernel {
            links: vec![link(1, "lo", None), link(ETH0, "eth0", None)],
            addresses: vec![(ETH0, "192.0.2.10/24".parse().unwrap())],
            routes: Vec::new(),
            neighbours: Vec::new(),
            fdb: Vec::new(),
            nft: Ok(Listing::default()),
            forwarding: Family::ALL.into_iter().map(|f| (f, "0".to_string())).collect(),
            vxlan_rp_filter: BTreeMap::new(),
        }
    }

    /// (stage number, op) for every step.
    fn staged(p: &Plan) -> Vec<(usize, &Op)> {
        p.stages.iter().enumerate().flat_map(|(i, s)| s.iter().map(move |step| (i, &step.op))).collect()
    }

    fn stage_of(p: &Plan, pred: impl Fn(&Op) -> bool) -> usize {
        staged(p)
            .into_iter()
            .find(|(_, op)| pred(op))
            .map(|(i, _)| i)
            .unwrap_or_else(|| panic!("no such op in {:#?}", p.stages))
    }

    fn tally(p: &Plan) -> Tally {
        let mut t = Tally::default();
        p.steps().for_each(|s| t.add(s.tally));
        t
    }

    #[test]
    fn converged_kernel_needs_nothing() {
        let mut d = desired_with(&[2, 3]);
        d.peers.push(peer(4, PeerPath::Direct));
        let p = plan(&d, &converged(&d)).unwrap();
        assert!(p.stages.is_empty(), "{:#?}", p.stages);
        // vxlan0, its address, cni0, 2 sysctls, the table; 2 × (neighbour, fdb, route); 1 route;
        // 3 allowed VXLAN senders (direct peers too).
        assert_eq!(p.unchanged, 6 + 6 + 1 + 3);
        assert!(p.failures.is_empty() && p.rejected.is_empty());
        assert_eq!(p.vxlan_index, [(Family::Ipv4, VXLAN)].into());
    }

    #[test]
    fn from_empty_everything_is_created_route_last() {
        let mut d = desired_with(&[2]);
        d.peers.push(peer(3, PeerPath::Direct));
        let p = plan(&d, &empty()).unwrap();
        assert!(p.vxlan_index.is_empty());
        let create = stage_of(&p, |o| matches!(o, Op::CreateVxlan(..)));
        let addr = stage_of(&p, |o| matches!(o, Op::AddAddress(..)));
        let neigh = stage_of(&p, |o| matches!(o, Op::Neighbour { .. }));
        let fdb = stage_of(&p, |o| matches!(o, Op::Fdb { .. }));
        let route = stage_of(&p, |o| matches!(o, Op::Route { .. }));
        assert!(create < addr && addr < neigh && neigh == fdb && fdb < route);
        let Some(Op::CreateVxlan(_, spec)) = p.steps().map(|s| &s.op).find(|o| matches!(o, Op::CreateVxlan(..))) else {
            unreachable!()
        };
        assert_eq!(spec.attrs.underlay, Some(ETH0));
        assert_eq!(spec.attrs.local, Some(d.local.underlays[0].ip));
        assert!(!spec.attrs.learning && !spec.attrs.udp_csum);
        let routes: Vec<&RouteSpec> = p
            .steps()
            .filter_map(|s| match &s.op {
                Op::Route { route, replace } => {
                    assert!(!replace);
                    Some(route)
                }
                _ => None,
            })
            .collect();
        assert_eq!(routes.len(), 2);
        let direct = routes.iter().find(|r| r.dev == Dev::Index(ETH0)).unwrap();
        assert_eq!((direct.gateway, direct.onlink), (d.peers[1].node_ip, false));
        let vx = routes.iter().find(|r| r.dev == Dev::Vxlan(Family::Ipv4)).unwrap();
        assert_eq!((vx.gateway, vx.onlink), (vtep_of(&d.peers[0].pod_cidrs[0]), true));
        // Only one neighbour and FDB entry: the direct peer has none.
        let n = p.steps().filter(|s| matches!(s.op, Op::Neighbour { .. } | Op::Fdb { .. }));
        assert_eq!(n.count(), 2);
        assert!(p.steps().any(|s| matches!(&s.op, Op::EnsureBridge { name, .. } if name == "cni0")));
        assert!(p.steps().any(|s| matches!(&s.op, Op::Nft { script, .. } if script.contains("table inet weft {"))));
        assert_eq!(p.steps().filter(|s| matches!(s.op, Op::Sysctl { .. })).count(), 2);
        assert!(p.steps().filter(|s| s.critical).all(|s| matches!(s.op, Op::CreateVxlan(..))));
        assert_eq!(tally(&p).removed, 0);
    }

    #[test]
    fn an_adopted_vxlan_is_fixed_in_place() {
        let d = desired_with(&[2]);
        let mut k = converged(&d);
        let vx = k.links.iter_mut().find(|l| l.index == VXLAN).unwrap();
        vx.mtu = 1500;
        vx.up = false;
        vx.vxlan.as_mut().unwrap().learning = true;
        k.addresses.push((VXLAN, "10.244.1.7/24".parse().unwrap()));
        let p = plan(&d, &k).unwrap();
        let ops: Vec<&Op> = p.steps().map(|s| &s.op).collect();
        assert_eq!(ops.len(), 3, "{ops:#?}");
        assert!(ops.contains(&&Op::FixVxlan(
            Family::Ipv4,
            LinkChange { mtu: Some(1450), up: Some(true), ..LinkChange::default() }
        )));
        assert!(ops.contains(&&Op::VxlanLearningOff(Family::Ipv4)));
        let stray =
            Op::DeleteAddress { link: "vxlan0".into(), index: VXLAN, address: "10.244.1.7/24".parse().unwrap() };
        assert!(ops.contains(&&stray));
        assert!(p.steps().all(|s| !s.critical));
    }

    #[test]
    fn a_previous_pod_cidrs_gateway_is_taken_off_cni0() {
        let d = desired_with(&[2]);
        let mut k = converged(&d);
        let old: IpNet = "10.244.9.1/24".parse().unwrap();
        k.addresses.push((CNI0, old));
        let p = plan(&d, &k).unwrap();
        let ops: Vec<&Op> = p.steps().map(|s| &s.op).collect();
        // cni0 itself is right: only the stray address goes, the bridge is not touched.
        assert_eq!(ops, [&Op::DeleteAddress { link: "cni0".into(), index: CNI0, address: old }]);
        assert_eq!(tally(&p).removed, 1);
    }

    #[test]
    fn addresses_of_another_family_on_cni0_are_left_alone() {
        let d = desired_with(&[2]);
        let mut k = converged(&d);
        // The plugin's IPv6 gateway and the kernel's link-local address on a dual-stack node.
        for other in ["fd00:10:244:1::1/64", "fe80::1/64"] {
            k.addresses.push((CNI0, other.parse().unwrap()));
        }
        let p = plan(&d, &k).unwrap();
        assert_eq!(p.steps().count(), 0, "{:#?}", p.stages);
        k.addresses.push((CNI0, "10.244.9.1/24".parse().unwrap()));
        let ops: Vec<Op> = plan(&d, &k).unwrap().steps().map(|s| s.op.clone()).collect();
        let old = "10.244.9.1/24".parse().unwrap();
        assert_eq!(ops, [Op::DeleteAddress { link: "cni0".into(), index: CNI0, address: old }]);
    }

    #[test]
    fn a_pod_cidr_change_adds_the_new_addresses_before_removing_the_old() {
        let mut d = desired_with(&[2, 3]);
        d.peers.push(peer(4, PeerPath::Direct));
        let k = converged(&d);
        d.local.pod_cidrs[0] = "10.244.41.0/24".parse().unwrap();
        // Another node has taken the old block over meanwhile.
        let taker = Peer { pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()], ..peer(9, PeerPath::Vxlan) };
        d.peers.push(taker);
        let p = plan(&d, &k).unwrap();
        let old = |link: &'static str| move |o: &Op| matches!(o, Op::DeleteAddress { link: l, .. } if l == link);
        let vxlan_add = stage_of(&p, |o| *o == Op::AddAddress(Family::Ipv4, "10.244.41.0/32".parse().unwrap()));
        let cni0_add =
            stage_of(&p, |o| matches!(o, Op::EnsureBridge { gateways, .. } if *gateways == d.local.gateways()));
        let (vxlan_del, cni0_del) = (stage_of(&p, old("vxlan0")), stage_of(&p, old("cni0")));
        // Removing a device's last address would flush every route and neighbour through it.
        assert!(vxlan_add < vxlan_del && cni0_add < cni0_del, "{:#?}", p.stages);
        // The old block's addresses (and cni0's connected route) are gone before the taker's
        // neighbour and route are written.
        let first_entry = stage_of(&p, |o| matches!(o, Op::Neighbour { .. }));
        assert!(vxlan_del < first_entry && cni0_del < first_entry, "{:#?}", p.stages);
        // The other peers' entries survive the change and are rightly left alone.
        assert!(p.steps().filter_map(|s| s.peer.as_deref()).all(|n| n == "n9"));
    }

    #[test]
    fn a_vtep_mac_change_rewrites_every_neighbour_the_kernel_flushes() {
        let mut d = desired_with(&[2, 3]);
        d.peers.push(peer(4, PeerPath::Direct));
        let mut k = converged(&d);
        k.neighbours.push(neighbour_of(&peer(9, PeerPath::Vxlan)));
        d.local.vtep_mac = Mac::derived("n1-renamed");
        let p = plan(&d, &k).unwrap();
        let fix = stage_of(&p, |o| matches!(o, Op::FixVxlan(_, c) if c.mac == Some(d.local.vtep_mac)));
        let neighbours: Vec<(usize, &Op)> =
            staged(&p).into_iter().filter(|(_, o)| matches!(o, Op::Neighbour { .. })).collect();
        assert_eq!(neighbours.len(), 2, "{:#?}", p.stages);
        assert!(neighbours.iter().all(|(stage, _)| *stage > fix));
        // FDB entries and routes survive a MAC change; the stale neighbour goes with the rest.
        let ops: Vec<&Op> = p.steps().map(|s| &s.op).collect();
        assert!(!ops.iter().any(|o| matches!(o, Op::Fdb { .. } | Op::Route { .. } | Op::DeleteNeighbour(..))));
        assert_eq!(tally(&p), Tally::of(2, 1, 0));
    }

    #[test]
    fn a_vni_change_recreates_vxlan_and_readds_every_entry() {
        let mut d = desired_with(&[2, 3]);
        d.peers.push(peer(4, PeerPath::Direct));
        let k = converged(&d);
        d.local.vni = 42;
        let p = plan(&d, &k).unwrap();
        assert!(p.vxlan_index.is_empty());
        assert_eq!(p.stages[0][0].op, Op::DeleteLink { index: VXLAN, name: "vxlan0".into() });
        assert!(p.stages[0][0].critical);
        assert!(
            matches!(&p.stages[1].iter().find(|s| s.critical).unwrap().op, Op::CreateVxlan(_, s) if s.attrs.vni == 42)
        );
        let t = tally(&p);
        // address + 2 neighbours + 2 fdb + 2 routes created (+ vxlan0); nothing else removed:
        // the old device's entries vanish with it.
        assert_eq!((t.created, t.removed), (1 + 1 + 2 + 2 + 2, 1));
        assert!(p.steps().all(|s| !matches!(s.op, Op::Route { replace: true, .. })));
        // The direct route does not depend on vxlan0 and stays.
        assert!(!p.steps().any(|s| matches!(&s.op, Op::Route { route, .. } if route.dev != Dev::Vxlan(Family::Ipv4))));
    }

    #[test]
    fn other_identity_changes_recreate_too() {
        let d = desired_with(&[]);
        let breakers: [fn(&mut Link); 5] = [
            |l| l.vxlan.as_mut().unwrap().port = 4789,
            |l| l.vxlan.as_mut().unwrap().local = Some("192.0.2.99".parse().unwrap()),
            |l| l.vxlan.as_mut().unwrap().underlay = Some(9),
            |l| l.vxlan.as_mut().unwrap().udp_csum = true,
            |l| l.kind = Some("dummy".into()),
        ];
        for f in breakers {
            let mut k = converged(&d);
            f(k.links.iter_mut().find(|l| l.index == VXLAN).unwrap());
            let p = plan(&d, &k).unwrap();
            assert!(matches!(p.stages[0][0].op, Op::DeleteLink { index: VXLAN, .. }));
        }
    }

    #[test]
    fn changed_peers_are_replaced_in_place() {
        let mut d = desired_with(&[2, 3]);
        d.peers.push(peer(4, PeerPath::Direct));
        let k = converged(&d);
        let old_mac = d.peers[0].vtep_mac;
        d.peers[0].vtep_mac = Mac::derived("n2-new");
        d.peers[1].node_ip = "198.51.100.99".parse().unwrap();
        d.peers[2].node_ip = "192.0.2.44".parse().unwrap();
        let p = plan(&d, &k).unwrap();
        let steps: Vec<&Step> = p.steps().collect();
        let find = |pred: &dyn Fn(&Op) -> bool| steps.iter().find(|s| pred(&s.op)).copied();
        // n2: the neighbour changes MAC in place; a new FDB entry, the old one removed.
        let n = find(&|o| matches!(o, Op::Neighbour { ip, .. } if *ip == vtep_of(&d.peers[0].pod_cidrs[0]))).unwrap();
        assert_eq!((n.tally, n.peer.as_deref()), (Tally::CHANGE, Some("n2")));
        let f = find(&|o| matches!(o, Op::Fdb { mac, .. } if *mac == d.peers[0].vtep_mac)).unwrap();
        assert_eq!(f.tally, Tally::CREATE);
        assert!(find(&|o| matches!(o, Op::DeleteFdb(_, e) if e.mac == old_mac)).is_some());
        // n3: its FDB entry gets a new destination in place.
        let f = find(&|o| matches!(o, Op::Fdb { dst, .. } if *dst == d.peers[1].node_ip)).unwrap();
        assert_eq!(f.tally, Tally::CHANGE);
        // n4 (direct): the route changes gateway with a replace.
        let r = find(&|o| matches!(o, Op::Route { route, replace: true } if route.gateway == d.peers[2].node_ip));
        assert_eq!(r.unwrap().tally, Tally::CHANGE);
        // n3's and n4's new node IPs replace their old ones in the VXLAN allow-list.
        let t = tally(&p);
        assert_eq!((t.created, t.changed, t.removed), (1 + 2, 3, 1 + 2));
        assert!(!steps.iter().any(|s| matches!(s.op, Op::DeleteRoute(_) | Op::DeleteNeighbour(..))));
    }

    #[test]
    fn a_gone_peer_is_removed_route_first() {
        let k = converged(&desired_with(&[2, 3]));
        let p = plan(&desired_with(&[2]), &k).unwrap();
        let route = stage_of(&p, |o| matches!(o, Op::DeleteRoute(r) if r.dst.to_string() == "10.244.3.0/24"));
        let fdb = stage_of(&p, |o| matches!(o, Op::DeleteFdb(_, e) if e.mac == Mac::derived("n3")));
        let neigh = stage_of(&p, |o| matches!(o, Op::DeleteNeighbour(_, n) if n.ip.to_string() == "10.244.3.0"));
        assert!(route < fdb && fdb < neigh);
        // Route, FDB entry, neighbour and the allow-list element.
        assert_eq!(tally(&p), Tally::of(0, 0, 4));
    }

    #[test]
    fn switching_path_keeps_a_route_while_entries_change() {
        // vxlan → direct: the route is replaced first, the tunnel entries removed after.
        let d = desired_with(&[2]);
        let mut direct = d.clone();
        direct.peers[0].path = PeerPath::Direct;
        let p = plan(&direct, &converged(&d)).unwrap();
        let route = stage_of(&p, |o| matches!(o, Op::Route { replace: true, route } if route.dev == Dev::Index(ETH0)));
        let fdb = stage_of(&p, |o| matches!(o, Op::DeleteFdb(..)));
        let neigh = stage_of(&p, |o| matches!(o, Op::DeleteNeighbour(..)));
        assert!(route < fdb && fdb < neigh);
        // direct → vxlan: entries first, then the route is replaced.
        let p = plan(&d, &converged(&direct)).unwrap();
        let neigh = stage_of(&p, |o| matches!(o, Op::Neighbour { .. }));
        let route =
            stage_of(&p, |o| matches!(o, Op::Route { replace: true, route } if route.dev == Dev::Vxlan(Family::Ipv4)));
        assert!(neigh < route);
        assert_eq!(tally(&p), Tally::of(2, 1, 0));
    }

    fn dual_underlay(peers: &[u8]) -> Desired {
        let mut d = desired_with(peers);
        d.local.underlays.push(UnderlayAddr { ip: "2001:db8:1::10".parse().unwrap(), iface: "eth0".into() });
        d
    }

    #[test]
    fn each_underlay_family_gets_its_own_device_and_peers_go_on_theirs() {
        let mut d = dual_underlay(&[2, 3]);
        d.peers[1].node_ip = "2001:db8:2::13".parse().unwrap();
        let p = plan(&d, &empty()).unwrap();
        let created: Vec<(Family, &VxlanSpec)> = p
            .steps()
            .filter_map(|s| match &s.op {
                Op::CreateVxlan(f, spec) => Some((*f, spec)),
                _ => None,
            })
            .collect();
        assert_eq!(created.len(), 2);
        assert_eq!((created[1].0, created[1].1.name.as_str()), (Family::Ipv6, "vxlan-v6"));
        assert_eq!(created[1].1.attrs.local, Some("2001:db8:1::10".parse().unwrap()));
        // Same VNI, port and VTEP MAC on both.
        assert_eq!(
            (created[0].1.attrs.vni, created[0].1.attrs.port),
            (created[1].1.attrs.vni, created[1].1.attrs.port)
        );
        assert_eq!(created[0].1.mac, created[1].1.mac);
        let n3 = &d.peers[1];
        let ops: Vec<&Op> = p.steps().map(|s| &s.op).collect();
        assert!(ops.contains(&&Op::Fdb { mac: n3.vtep_mac, dst: n3.node_ip }));
        assert!(ops.contains(&&Op::Neighbour {
            family: Family::Ipv6,
            ip: vtep_of(&n3.pod_cidrs[0]),
            mac: n3.vtep_mac
        }));
        assert!(ops.iter().any(|o| matches!(o, Op::Route { route, .. }
            if route.dst == n3.pod_cidrs[0] && route.dev == Dev::Vxlan(Family::Ipv6))));
        assert!(ops.contains(&&Op::AddAddress(Family::Ipv6, "10.244.1.0/32".parse().unwrap())));
        assert!(ops.iter().any(|o| matches!(o, Op::Sysctl { key, .. } if key.contains("vxlan-v6"))));
        // Converged, nothing is left to do.
        assert!(plan(&d, &converged(&d)).unwrap().stages.is_empty());
    }

    /// A dual-stack node over an IPv4 underlay with dual-stack peers.
    fn dual_stack(peers: &[u8]) -> Desired {
        let mut d = desired_with(peers);
        d.local = dual_local();
        for p in &mut d.peers {
            let n: u8 = p.name[1..].parse().unwrap();
            p.pod_cidrs.push(v6_block(n));
        }
        d
    }

    fn routes(p: &Plan) -> Vec<&RouteSpec> {
        p.steps()
            .filter_map(|s| match &s.op {
                Op::Route { route, .. } => Some(route),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn each_pod_family_gets_its_vtep_gateway_forwarding_and_routes() {
        let d = dual_stack(&[2]);
        let p = plan(&d, &empty()).unwrap();
        let ops: Vec<&Op> = p.steps().map(|s| &s.op).collect();
        for vtep in ["10.244.1.0/32", "fd00:10:244:1::/128"] {
            assert!(ops.contains(&&Op::AddAddress(Family::Ipv4, vtep.parse().unwrap())), "{vtep}: {ops:#?}");
        }
        let gateways: Vec<IpNet> = vec!["10.244.1.1/24".parse().unwrap(), "fd00:10:244:1::1/64".parse().unwrap()];
        assert!(ops.iter().any(|o| matches!(o, Op::EnsureBridge { gateways: g, .. } if *g == gateways)));
        for key in [sysctl::IP_FORWARD, sysctl::IP6_FORWARD] {
            assert!(ops.iter().any(|o| matches!(o, Op::Sysctl { key: k, value: "1" } if k == key)), "{key}");
        }
        // Both blocks through vxlan0 (the IPv4 underlay), each via its own VTEP; one FDB entry.
        let n2 = &d.peers[0];
        let want = |block: IpNet| RouteSpec {
            dst: block,
            gateway: vtep_of(&block),
            dev: Dev::Vxlan(Family::Ipv4),
            onlink: true,
        };
        assert_eq!(routes(&p), [&want(n2.pod_cidrs[0]), &want(n2.pod_cidrs[1])]);
        let neighbours: Vec<IpAddr> = p
            .steps()
            .filter_map(|s| match s.op {
                Op::Neighbour { family: Family::Ipv4, ip, mac } if mac == n2.vtep_mac => Some(ip),
                _ => None,
            })
            .collect();
        assert_eq!(neighbours, ["10.244.2.0".parse::<IpAddr>().unwrap(), "fd00:10:244:2::".parse().unwrap()]);
        assert_eq!(p.steps().filter(|s| matches!(s.op, Op::Fdb { .. })).count(), 1);
        assert!(plan(&d, &converged(&d)).unwrap().stages.is_empty());
    }

    #[test]
    fn a_direct_peer_routes_only_its_underlays_family_natively() {
        let mut d = dual_stack(&[2]);
        d.peers[0].path = PeerPath::Direct;
        let p = plan(&d, &empty()).unwrap();
        let n2 = &d.peers[0];
        let direct = RouteSpec { dst: n2.pod_cidrs[0], gateway: n2.node_ip, dev: Dev::Index(ETH0), onlink: false };
        let v6 = n2.pod_cidrs[1];
        let tunnel = RouteSpec { dst: v6, gateway: vtep_of(&v6), dev: Dev::Vxlan(Family::Ipv4), onlink: true };
        assert_eq!(routes(&p), [&direct, &tunnel]);
        // The IPv6 block still needs the tunnel's neighbour and FDB entry.
        let ops: Vec<&Op> = p.steps().map(|s| &s.op).collect();
        assert!(ops.contains(&&Op::Neighbour { family: Family::Ipv4, ip: vtep_of(&v6), mac: n2.vtep_mac }));
        assert!(ops.contains(&&Op::Fdb { mac: n2.vtep_mac, dst: n2.node_ip }));
        assert_eq!(ops.iter().filter(|o| matches!(o, Op::Neighbour { .. })).count(), 1);
        assert!(plan(&d, &converged(&d)).unwrap().stages.is_empty());
    }

    #[test]
    fn an_ipv6_only_node_programs_nothing_of_ipv4() {
        let mut d = dual_stack(&[2, 3]);
        d.local.underlays = vec![UnderlayAddr { ip: "2001:db8:1::10".parse().unwrap(), iface: "eth0".into() }];
        d.local.pod_cidrs.remove(0);
        d.local.cluster_cidrs.remove(0);
        for (p, ip) in d.peers.iter_mut().zip(["2001:db8:1::20", "2001:db8:2::30"]) {
            p.node_ip = ip.parse().unwrap();
            p.pod_cidrs.remove(0);
        }
        d.peers[0].path = PeerPath::Direct;
        let p = plan(&d, &empty()).unwrap();
        let ops: Vec<&Op> = p.steps().map(|s| &s.op).collect();
        assert!(ops.iter().all(|o| !matches!(o, Op::CreateVxlan(Family::Ipv4, _))));
        assert!(ops.contains(&&Op::AddAddress(Family::Ipv6, "fd00:10:244:1::/128".parse().unwrap())));
        let sysctls: Vec<&str> = ops
            .iter()
            .filter_map(|o| match o {
                Op::Sysctl { key, .. } => Some(key.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(sysctls, [sysctl::IP6_FORWARD, "net/ipv4/conf/vxlan-v6/rp_filter"]);
        let (n2, n3) = (&d.peers[0], &d.peers[1]);
        let direct = RouteSpec { dst: n2.pod_cidrs[0], gateway: n2.node_ip, dev: Dev::Index(ETH0), onlink: false };
        let b3 = n3.pod_cidrs[0];
        let tunnel = RouteSpec { dst: b3, gateway: vtep_of(&b3), dev: Dev::Vxlan(Family::Ipv6), onlink: true };
        assert_eq!(routes(&p), [&direct, &tunnel]);
        assert!(plan(&d, &converged(&d)).unwrap().stages.is_empty());
    }

    #[test]
    fn a_stale_ipv6_block_and_gateway_go_and_link_local_addresses_stay() {
        let d = dual_stack(&[2]);
        let mut k = converged(&d);
        let old_v6: IpNet = "fd00:10:244:9::1/64".parse().unwrap();
        let old_vtep: IpNet = "fd00:10:244:9::/128".parse().unwrap();
        k.addresses.push((CNI0, old_v6));
        k.addresses.push((VXLAN, old_vtep));
        let p = plan(&d, &k).unwrap();
        let mut ops: Vec<String> = p.steps().map(|s| s.op.to_string()).collect();
        ops.sort();
        assert_eq!(ops, [format!("address {old_vtep} on vxlan0"), format!("address {old_v6} on cni0")]);
        // On an IPv4-only node the plugin's IPv6 gateway is not the agent's to remove.
        let v4 = desired_with(&[2]);
        let mut k = converged(&v4);
        k.addresses.push((CNI0, old_v6));
        assert!(plan(&v4, &k).unwrap().stages.is_empty());
    }

    #[test]
    fn a_device_of_a_family_the_node_no_longer_has_is_removed_with_its_routes() {
        let mut d = dual_underlay(&[2, 3]);
        d.peers[1].node_ip = "2001:db8:2::13".parse().unwrap();
        let k = converged(&d);
        // The node lost its IPv6 underlay, and with it the IPv6 peer.
        let mut now = desired_with(&[2]);
        now.peers.truncate(1);
        let p = plan(&now, &k).unwrap();
        let ops: Vec<String> = p.steps().map(|s| s.op.to_string()).collect();
        // Its routes and entries go with it; the allow-list loses its IPv6 set and rule.
        assert_eq!(ops, ["link vxlan-v6", "nftables table inet weft"], "{ops:?}");
        assert_eq!(p.vxlan_index, [(Family::Ipv4, VXLAN)].into());
    }

    #[test]
    fn stale_owned_entries_go_and_foreign_ones_stay() {
        let d = desired_with(&[2]);
        let mut k = converged(&d);
        let stale = peer(9, PeerPath::Vxlan);
        k.routes.push(route_of(&stale));
        k.neighbours.push(neighbour_of(&stale));
        k.fdb.push(fdb_of(&stale));
        // Foreign: other protocol, other device, not permanent, and a metric-variant twin.
        let mut static_route = route_of(&peer(8, PeerPath::Vxlan));
        static_route.protocol = 4;
        k.routes.push(static_route);
        k.neighbours.push(Neighbour { ifindex: ETH0, ..neighbour_of(&peer(7, PeerPath::Vxlan)) });
        k.neighbours.push(Neighbour { permanent: false, ..neighbour_of(&peer(6, PeerPath::Vxlan)) });
        k.fdb.push(FdbEntry { ifindex: CNI0, ..fdb_of(&peer(5, PeerPath::Vxlan)) });
        let mut twin = route_of(&d.peers[0]);
        twin.priority = Some(100);
        k.routes.push(twin.clone());
        let p = plan(&d, &k).unwrap();
        let mut removed: Vec<String> = p.steps().map(|s| s.op.to_string()).collect();
        removed.sort();
        assert_eq!(
            removed,
            [
                format!("fdb {} on vxlan0", stale.vtep_mac),
                "neighbour 10.244.9.0 on vxlan0".into(),
                "route 10.244.2.0/24".into(),
                "route 10.244.9.0/24".into(),
            ]
        );
        assert!(p.steps().any(|s| s.op == Op::DeleteRoute(twin.clone())));
        assert_eq!(tally(&p), Tally::of(0, 0, 4));
    }

    #[test]
    fn extra_fdb_remotes_of_a_peer_mac_are_removed() {
        let d = desired_with(&[2]);
        let mut k = converged(&d);
        let extra = FdbEntry { dst: Some("203.0.113.5".parse().unwrap()), ..fdb_of(&d.peers[0]) };
        k.fdb.insert(0, extra);
        let p = plan(&d, &k).unwrap();
        assert_eq!(p.steps().map(|s| &s.op).collect::<Vec<_>>(), [&Op::DeleteFdb(Family::Ipv4, extra)]);
        // Without the right remote, the first is rewritten and the others deleted.
        k.fdb.retain(|e| e.dst == extra.dst);
        let second = FdbEntry { dst: Some("203.0.113.6".parse().unwrap()), ..extra };
        k.fdb.push(second);
        let p = plan(&d, &k).unwrap();
        let ops: Vec<&Op> = p.steps().map(|s| &s.op).collect();
        assert_eq!(ops.len(), 2);
        assert!(ops.contains(&&Op::Fdb { mac: extra.mac, dst: d.peers[0].node_ip }));
        assert!(ops.contains(&&Op::DeleteFdb(Family::Ipv4, second)));
    }

    #[test]
    fn invalid_peers_are_reported_and_not_programmed() {
        let mut d = desired_with(&[2]);
        let k = converged(&d);
        d.peers[0].pod_cidrs[0] = "10.99.2.0/24".parse().unwrap();
        d.peers.push(peer(3, PeerPath::Vxlan));
        let p = plan(&d, &k).unwrap();
        assert_eq!(p.rejected.len(), 1);
        assert_eq!(p.rejected[0].peer.as_deref(), Some("n2"));
        assert!(p.steps().all(|s| s.peer.as_deref() != Some("n2")));
        // What had been programmed for it before is removed.
        assert!(p.steps().any(|s| matches!(&s.op, Op::DeleteRoute(r) if r.dst.to_string() == "10.244.2.0/24")));
        assert!(p.steps().any(|s| s.peer.as_deref() == Some("n3")));
    }

    #[test]
    fn a_bad_local_node_or_missing_underlay_is_an_error() {
        let mut d = desired_with(&[]);
        d.local.underlays[0].iface = "eth9".into();
        assert_eq!(plan(&d, &empty()), Err(PlanError::NoUnderlay("eth9".into())));
        d.local.vni = u32::MAX;
        assert!(matches!(plan(&d, &empty()), Err(PlanError::Invalid(_))));
    }

    #[test]
    fn nftables_is_rewritten_only_when_it_differs() {
        let d = desired_with(&[2]);
        let mut k = converged(&d);
        let Ok(listing) = &mut k.nft else { unreachable!() };
        listing.table.as_mut().unwrap().chains[1].comments.pop();
        let p = plan(&d, &k).unwrap();
        assert_eq!(p.stages.len(), 1);
        assert_eq!(p.stages[0][0].tally, Tally::CHANGE);
        assert!(
            matches!(&p.stages[0][0].op, Op::Nft { script, .. } if script.starts_with("add table inet weft\ndelete table inet weft\n"))
        );
        // A cluster CIDR change changes the rules' comments, hence the shape.
        let mut wider = d.clone();
        wider.local.cluster_cidrs[0] = "10.0.0.0/8".parse().unwrap();
        let p = plan(&wider, &converged(&d)).unwrap();
        assert!(p.steps().any(|s| matches!(s.op, Op::Nft { .. })));
        // An unreadable ruleset is reported and nftables left alone.
        k.nft = Err("nft: not found".into());
        let p = plan(&d, &k).unwrap();
        assert!(p.steps().all(|s| !matches!(s.op, Op::Nft { .. })));
        assert_eq!(p.failures.len(), 1);
    }

    /// The element changes of a plan: (stage, changes).
    fn element_steps(p: &Plan) -> Vec<(usize, &ElementChanges)> {
        staged(p)
            .into_iter()
            .filter_map(|(i, op)| match op {
                Op::SetElements { set: firewall::VXLAN_PEERS, changes } => Some((i, changes)),
                _ => None,
            })
            .collect()
    }

    fn nft_scripts(p: &Plan) -> Vec<&str> {
        p.steps()
            .filter_map(|s| match &s.op {
                Op::Nft { script, .. } => Some(script.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_peer_change_updates_the_vxlan_allow_list_by_element() {
        let full = desired_with(&[2, 3]);
        let less = desired_with(&[2]);
        let n3: IpAddr = "198.51.100.13".parse().unwrap();
        // Joining: one element added, with the peer's neighbour and FDB entry; no table rewrite.
        let p = plan(&full, &converged(&less)).unwrap();
        assert!(nft_scripts(&p).is_empty());
        let elements = element_steps(&p);
        assert_eq!(
            elements,
            [(stage_of(&p, |op| matches!(op, Op::Fdb { .. })), &ElementChanges { added: vec![n3], removed: vec![] })]
        );
        assert_eq!(tally(&p), Tally::of(4, 0, 0));
        // Leaving: the element goes; the table stays.
        let p = plan(&less, &converged(&full)).unwrap();
        assert!(nft_scripts(&p).is_empty());
        assert_eq!(element_steps(&p)[0].1, &ElementChanges { added: vec![], removed: vec![n3] });
        assert_eq!(tally(&p), Tally::of(0, 0, 4));
    }

    #[test]
    fn a_rewritten_table_carries_its_elements_and_rejected_peers_are_not_allowed() {
        let mut d = desired_with(&[2, 3]);
        let mut clash = peer(9, PeerPath::Vxlan);
        clash.pod_cidrs = d.peers[0].pod_cidrs.clone();
        d.peers.push(clash.clone());
        let p = plan(&d, &empty()).unwrap();
        let nft = nft_scripts(&p);
        assert_eq!(nft.len(), 1, "{nft:#?}");
        assert!(nft[0].contains("elements = { 198.51.100.13 }\n"), "{}", nft[0]);
        assert!(!nft[0].contains(&clash.node_ip.to_string()));
        assert!(element_steps(&p).is_empty());
    }

    #[test]
    fn dropping_forward_chains_get_accepts_once() {
        let d = desired_with(&[]);
        let mut k = converged(&d);
        let docker = ForeignChain {
            family: "ip".into(),
            table: "filter".into(),
            name: "FORWARD".into(),
            forward_drop: true,
            weft_rules: Vec::new(),
        };
        let Ok(listing) = &mut k.nft else { unreachable!() };
        listing.foreign.push(docker.clone());
        let p = plan(&d, &k).unwrap();
        assert_eq!(p.stages.len(), 1);
        assert_eq!(p.stages[0][0].tally, Tally::of(2, 0, 0));
        let accepts = firewall::cluster_accepts(&d.local.cluster_cidrs);
        let Ok(listing) = &mut k.nft else { unreachable!() };
        listing.foreign[0].weft_rules = vec![(10, accepts[0].comment.clone()), (11, accepts[1].comment.clone())];
        let p = plan(&d, &k).unwrap();
        assert!(p.stages.is_empty());
    }
}
