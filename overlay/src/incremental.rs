//! Deciding a partial sync (kube-proxy's word): the writes that take the kernel from the state a
//! successful full apply of `prev` left to the one `next` wants, without reading the kernel.
//! Only for peers added, removed or changed under the same local node; anything else (and a
//! change to many peers at once, when a full read-back costs little more than the writes) is
//! left to a full apply. Pure, like [`crate::plan`], whose per-peer objects and stages it uses.
//!
//! It trusts that the kernel still holds what the last full apply wrote: whatever was changed
//! behind weft's back stays so until the next full apply (the agent's periodic resync).
//!
//! Its cost follows the changed peers, not all of them: the applied state keeps its valid peers
//! indexed by name, VTEP MAC, block and node IP, so that a change validates only the peers that
//! came and those they could clash with. Only while some peer is rejected (a conflict that a
//! change elsewhere may resolve) is the whole new state validated again.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::desired::{Desired, LocalNode, Peer};
use crate::firewall;
use crate::mac::Mac;
use crate::nft::elements::ElementChanges;
use crate::objects::{FdbEntry, Neighbour};
use crate::plan::{Builder, Dev, Op, PeerObjects, Plan, RouteSpec, Stage, Tally, rejected};
use crate::underlay::Family;
use crate::validate::{range, validate, validate_peers};

/// More changed peers than this take a full apply.
pub const MAX_CHANGED_PEERS: usize = 64;

/// The link indexes a full apply learned, which the kernel keeps as long as the devices stay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Devices {
    pub vxlan: BTreeMap<Family, u32>,
    pub underlay: BTreeMap<Family, u32>,
}

/// One peer's kernel objects, keyed as the kernel keys them.
struct Owned<'p> {
    peer: &'p Peer,
    family: Family,
    objects: PeerObjects,
}

impl<'p> Owned<'p> {
    fn of(local: &LocalNode, peer: &'p Peer, devices: &Devices) -> Option<Owned<'p>> {
        let family = Family::of(peer.node_ip);
        let underlay = *devices.underlay.get(&family)?;
        Some(Owned { peer, family, objects: PeerObjects::of(local, peer, underlay) })
    }

    fn route(&self, dst: &IpNet) -> Option<&RouteSpec> {
        self.objects.routes.iter().find(|r| r.dst == *dst)
    }

    fn has_neighbour(&self, family: Family, ip: IpAddr) -> bool {
        self.family == family && self.objects.neighbours.contains(&ip)
    }

    /// The FDB entry's key (device family, MAC) and destination, when the peer has one.
    fn fdb(&self) -> Option<((Family, Mac), IpAddr)> {
        self.objects.tunnelled().then_some(((self.family, self.peer.vtep_mac), self.peer.node_ip))
    }
}

/// A desired state the kernel holds (applied in full, or partially on top of such an apply,
/// without failures), kept as the partial sync from it needs it: its valid peers in slots that
/// stay put while others come and go, indexed by what validation compares, the peers it
/// rejected, and the device indexes.
#[derive(Debug, Clone)]
pub struct Applied {
    local: LocalNode,
    slots: Vec<Option<Peer>>,
    free: Vec<usize>,
    by_name: HashMap<String, usize>,
    by_mac: HashMap<Mac, usize>,
    /// Every block of a valid peer by (family, first address), with its last address: valid
    /// blocks never overlap, so at most one starts before a given block and reaches into it.
    blocks: BTreeMap<(Family, u128), (u128, usize)>,
    /// How many valid peers have each node IP (the VXLAN allow-list holds those with any).
    node_ips: HashMap<IpAddr, usize>,
    rejected: Vec<Peer>,
    pub devices: Devices,
}

/// What a partial sync changes in the applied state once it has succeeded.
#[derive(Debug)]
pub struct Change {
    /// Slots of the peers gone or changed.
    gone: Vec<usize>,
    /// The peers new or changed.
    came: Vec<Peer>,
    rejected: Vec<Peer>,
}

/// How a list of peers differs from the applied ones.
struct Diff<'p> {
    /// Per slot: whether the list holds that peer as it is.
    kept: Vec<bool>,
    /// Its peers that are not applied as they are.
    came: Vec<&'p Peer>,
    /// An applied peer listed twice.
    twice: bool,
}

impl Applied {
    /// `None` when the local node is invalid (nothing was applied then).
    pub fn new(desired: &Desired, devices: Devices) -> Option<Applied> {
        let valid = validate(desired).ok()?;
        let mut applied = Applied {
            local: desired.local.clone(),
            slots: Vec::with_capacity(valid.peers.len()),
            free: Vec::new(),
            by_name: HashMap::with_capacity(valid.peers.len()),
            by_mac: HashMap::with_capacity(valid.peers.len()),
            blocks: BTreeMap::new(),
            node_ips: HashMap::with_capacity(valid.peers.len()),
            rejected: Vec::new(),
            devices,
        };
        let change = Change {
            gone: Vec::new(),
            came: valid.peers.into_iter().cloned().collect(),
            rejected: valid.rejected.into_iter().map(|(p, _)| p.clone()).collect(),
        };
        applied.update(change);
        Some(applied)
    }

    /// Makes `change` (planned from this state) the applied state.
    pub fn update(&mut self, change: Change) {
        for slot in change.gone {
            self.remove(slot);
        }
        for peer in change.came {
            self.insert(peer);
        }
        self.rejected = change.rejected;
    }

    fn insert(&mut self, peer: Peer) {
        let slot = self.free.pop().unwrap_or(self.slots.len());
        self.by_name.insert(peer.name.clone(), slot);
        self.by_mac.insert(peer.vtep_mac, slot);
        for block in &peer.pod_cidrs {
            let (family, start, end) = range(block);
            self.blocks.insert((family, start), (end, slot));
        }
        *self.node_ips.entry(peer.node_ip).or_default() += 1;
        if slot == self.slots.len() {
            self.slots.push(Some(peer));
        } else {
            self.slots[slot] = Some(peer);
        }
    }

    fn remove(&mut self, slot: usize) {
        let Some(peer) = self.slots[slot].take() else { return };
        self.free.push(slot);
        self.by_name.remove(&peer.name);
        self.by_mac.remove(&peer.vtep_mac);
        for block in &peer.pod_cidrs {
            let (family, start, _) = range(block);
            self.blocks.remove(&(family, start));
        }
        if let Some(n) = self.node_ips.get_mut(&peer.node_ip) {
            *n -= 1;
            if *n == 0 {
                self.node_ips.remove(&peer.node_ip);
            }
        }
    }

    fn peer(&self, slot: usize) -> Option<&Peer> {
        self.slots.get(slot)?.as_ref()
    }

    fn diff<'p>(&self, peers: impl Iterator<Item = &'p Peer>) -> Diff<'p> {
        let mut diff = Diff { kept: vec![false; self.slots.len()], came: Vec::new(), twice: false };
        for p in peers {
            match self.by_name.get(p.name.as_str()) {
                Some(&slot) if self.peer(slot) == Some(p) => {
                    diff.twice |= diff.kept[slot];
                    diff.kept[slot] = true;
                }
                _ => diff.came.push(p),
            }
        }
        diff
    }

    /// The slots of the applied peers `diff` does not keep.
    fn gone(&self, diff: &Diff<'_>) -> Vec<usize> {
        let kept = diff.kept.iter().filter(|k| **k).count();
        if kept == self.by_name.len() {
            return Vec::new();
        }
        (0..self.slots.len()).filter(|&s| self.slots[s].is_some() && !diff.kept[s]).collect()
    }

    /// Whether every peer of the new list `diff` was taken from is valid, when none of the
    /// applied ones was rejected: a kept peer stays valid unless a peer that came clashes with
    /// it, so the peers that came are validated together with the kept ones sharing a name, a
    /// VTEP MAC or an overlapping block with them.
    fn all_valid(&self, diff: &Diff<'_>) -> bool {
        if !self.rejected.is_empty() || diff.twice {
            return false;
        }
        let mut clashing: Vec<usize> = Vec::new();
        for p in &diff.came {
            let keyed = [self.by_name.get(p.name.as_str()), self.by_mac.get(&p.vtep_mac)];
            clashing.extend(keyed.into_iter().flatten());
            for block in &p.pod_cidrs {
                clashing.extend(self.overlapping(block));
            }
        }
        clashing.sort_unstable();
        clashing.dedup();
        let kept = clashing.into_iter().filter(|&s| diff.kept[s]).filter_map(|s| self.peer(s));
        validate_peers(&self.local, diff.came.iter().copied().chain(kept).collect()).rejected.is_empty()
    }

    /// The slots of the valid peers with a block overlapping `block`: those starting inside it,
    /// and the one starting before it when it reaches into it.
    fn overlapping(&self, block: &IpNet) -> impl Iterator<Item = usize> + '_ {
        let (family, start, end) = range(block);
        let inside = self.blocks.range((family, start)..=(family, end));
        let before = self.blocks.range(..(family, start)).next_back();
        let before = before.filter(|((f, _), (reach, _))| *f == family && *reach >= start);
        inside.chain(before).map(|(_, (_, slot))| *slot)
    }
}

/// Equal when they hold the same peers, rejected ones and devices, and index them alike,
/// whichever slots the peers are in.
impl PartialEq for Applied {
    fn eq(&self, other: &Applied) -> bool {
        let named = |a: &Applied, slot: &usize| a.peer(*slot).map(|p| p.name.clone());
        let view = |a: &Applied| {
            (
                a.by_name.keys().map(|n| (n.clone(), a.peer(a.by_name[n]).cloned())).collect::<BTreeMap<_, _>>(),
                a.by_mac.iter().map(|(m, s)| (*m, named(a, s))).collect::<BTreeMap<_, _>>(),
                a.blocks.iter().map(|(k, (end, s))| (*k, *end, named(a, s))).collect::<Vec<_>>(),
                a.node_ips.iter().map(|(ip, n)| (*ip, *n)).collect::<BTreeMap<_, _>>(),
                a.slots.iter().flatten().count(),
            )
        };
        self.local == other.local
            && self.rejected == other.rejected
            && self.devices == other.devices
            && view(self) == view(other)
    }
}

impl Eq for Applied {}

/// The plan of a partial sync from `prev` to `next`, and what it changes in `prev` once it
/// succeeds ([`Applied::update`]); `None` when a full apply is needed: the local node changed,
/// too many peers changed, or a device index is not known.
pub fn plan_incremental(prev: &Applied, next: &Desired) -> Option<(Plan, Change)> {
    let devices = &prev.devices;
    if prev.local != next.local {
        return None;
    }
    let mut diff = prev.diff(next.peers.iter());
    // Counted before validation, which would leave out invalid peers: a bulk change is left
    // to a full apply without validating it.
    if diff.came.len() + prev.gone(&diff).len() > MAX_CHANGED_PEERS {
        return None;
    }
    let mut left_out = Vec::new();
    if !prev.all_valid(&diff) {
        // The local node is unchanged, so valid before means valid now: an error is not expected.
        let valid = validate(next).ok()?;
        diff = prev.diff(valid.peers.iter().copied());
        left_out = valid.rejected;
    }
    let gone_slots = prev.gone(&diff);
    let gone: Vec<&Peer> = gone_slots.iter().filter_map(|s| prev.peer(*s)).collect();
    let came = &diff.came;
    let local = &prev.local;
    let old: Vec<Owned<'_>> = gone.iter().map(|p| Owned::of(local, p, devices)).collect::<Option<_>>()?;
    let new: Vec<Owned<'_>> = came.iter().map(|p| Owned::of(local, p, devices)).collect::<Option<_>>()?;
    let vxlan = |family: Family| devices.vxlan.get(&family).copied();
    if old.iter().chain(&new).any(|o| o.objects.tunnelled() && vxlan(o.family).is_none()) {
        return None;
    }
    let mut b = Builder::new();
    for n in &new {
        let name = Some(n.peer.name.as_str());
        for vtep in &n.objects.neighbours {
            let was = old.iter().find(|o| o.has_neighbour(n.family, *vtep));
            let tally = match was {
                Some(o) if o.peer.vtep_mac == n.peer.vtep_mac => {
                    b.unchanged += 1;
                    continue;
                }
                Some(_) => Tally::CHANGE,
                None => Tally::CREATE,
            };
            let op = Op::Neighbour { family: n.family, ip: *vtep, mac: n.peer.vtep_mac };
            b.push(Stage::NeighboursAndFdb, op, tally, name);
        }
        if let Some((key, dst)) = n.fdb() {
            match old.iter().find_map(|o| o.fdb().filter(|(k, _)| *k == key)) {
                Some((_, was)) if was == dst => b.unchanged += 1,
                // A replace rewrites the MAC's remote in place, as the full path's does.
                was => {
                    let tally = if was.is_some() { Tally::CHANGE } else { Tally::CREATE };
                    b.push(Stage::NeighboursAndFdb, Op::Fdb { mac: key.1, dst }, tally, name);
                }
            }
        }
        for route in &n.objects.routes {
            // Only a destination weft routed replaces: another's route makes the add fail, and
            // the failure a full apply.
            let tally = match old.iter().find_map(|o| o.route(&route.dst)) {
                Some(was) if was == route => {
                    b.unchanged += 1;
                    continue;
                }
                Some(_) => Tally::CHANGE,
                None => Tally::CREATE,
            };
            let op = Op::Route { route: route.clone(), replace: tally == Tally::CHANGE };
            b.push(Stage::Routes, op, tally, name);
        }
    }

    // What a changed or gone peer had and nothing wants now.
    for o in &old {
        for route in o.objects.routes.iter().filter(|r| new.iter().all(|n| n.route(&r.dst).is_none())) {
            let oif = match route.dev {
                Dev::Vxlan(family) => vxlan(family)?,
                Dev::Index(index) => index,
            };
            b.removal(Stage::RouteRemovals, Op::DeleteRoute(route.to_route(oif)));
        }
        if let Some(((family, mac), dst)) = o.fdb()
            && new.iter().all(|n| n.fdb().is_none_or(|(k, _)| k != (family, mac)))
        {
            let entry = FdbEntry { ifindex: vxlan(family)?, mac, dst: Some(dst), permanent: true };
            b.removal(Stage::FdbRemovals, Op::DeleteFdb(family, entry));
        }
        for ip in o.objects.neighbours.iter().filter(|ip| new.iter().all(|n| !n.has_neighbour(o.family, **ip))) {
            let n = Neighbour { ifindex: vxlan(o.family)?, ip: *ip, mac: o.peer.vtep_mac, permanent: true };
            b.removal(Stage::NeighbourRemovals, Op::DeleteNeighbour(o.family, n));
        }
    }

    // The VXLAN allow-list holds every valid peer's node IP; several peers may share one.
    let before = |ip: IpAddr| prev.node_ips.get(&ip).copied().unwrap_or(0);
    let with = |peers: &[&Peer], ip: IpAddr| peers.iter().filter(|p| p.node_ip == ip).count();
    let mut elements: BTreeMap<Family, ElementChanges> = BTreeMap::new();
    for ip in dedup(came.iter().map(|p| p.node_ip)).filter(|ip| before(*ip) == 0) {
        elements.entry(Family::of(ip)).or_default().added.push(ip);
    }
    for ip in dedup(gone.iter().map(|p| p.node_ip)).filter(|ip| before(*ip) + with(came, *ip) == with(&gone, *ip)) {
        elements.entry(Family::of(ip)).or_default().removed.push(ip);
    }
    for (family, changes) in elements {
        let tally = Tally::of(changes.added.len(), 0, changes.removed.len());
        let op = Op::SetElements { set: firewall::peer_set(family), changes };
        b.push(Stage::NeighboursAndFdb, op, tally, None);
    }

    let plan = Plan {
        unchanged: b.unchanged,
        stages: b.stages(),
        vxlan_index: devices.vxlan.clone(),
        underlay_index: devices.underlay.clone(),
        rejected: rejected(&left_out),
        failures: Vec::new(),
    };
    let change = Change {
        gone: gone_slots,
        came: came.iter().map(|p| (*p).clone()).collect(),
        rejected: left_out.into_iter().map(|(p, _)| p.clone()).collect(),
    };
    Some((plan, change))
}

/// The addresses once each, sorted.
fn dedup(ips: impl Iterator<Item = IpAddr>) -> impl Iterator<Item = IpAddr> {
    let mut ips: Vec<IpAddr> = ips.collect();
    ips.sort_unstable();
    ips.dedup();
    ips.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{PeerPath, UnderlayAddr};
    use crate::plan::tests::{ETH0, desired_with, vx};
    use crate::validate::tests::{dual_local, peer, v6_block};

    /// Devices of every underlay family of `d`, as the planner's test kernel numbers them.
    fn devices(d: &Desired) -> Devices {
        let families = d.local.node_ips().families().collect::<Vec<_>>();
        Devices {
            vxlan: families.iter().map(|f| (*f, vx(*f))).collect(),
            underlay: families.iter().map(|f| (*f, ETH0)).collect(),
        }
    }

    /// The plan's writes as "verb object", sorted, with the tally of each.
    /// The plan from `prev`, applied on the test kernel's devices, to `next`.
    fn partial(prev: &Desired, next: &Desired, devices: Devices) -> Option<Plan> {
        Some(plan_incremental(&Applied::new(prev, devices)?, next)?.0)
    }

    fn writes(prev: &Desired, next: &Desired) -> Vec<(String, Tally)> {
        let plan = partial(prev, next, devices(prev)).expect("an incremental plan");
        let mut out: Vec<(String, Tally)> = plan
            .steps()
            .map(|s| {
                let verb = match &s.op {
                    Op::Route { replace: true, .. } => "replace",
                    Op::Route { .. } | Op::Neighbour { .. } | Op::Fdb { .. } => "set",
                    Op::SetElements { changes, .. } => {
                        let list = |ips: &[IpAddr]| ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>().join(",");
                        return (
                            format!("{} +[{}] -[{}]", s.op, list(&changes.added), list(&changes.removed)),
                            s.tally,
                        );
                    }
                    _ => "delete",
                };
                (format!("{verb} {}", s.op), s.tally)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn set(what: &str, tally: Tally) -> (String, Tally) {
        (what.to_string(), tally)
    }

    const ALLOW: &str = "nftables set inet weft vxlan_peers";

    #[test]
    fn an_added_peer_gets_its_neighbour_fdb_route_and_element() {
        let (prev, next) = (desired_with(&[2]), desired_with(&[2, 3]));
        let mac = peer(3, PeerPath::Vxlan).vtep_mac;
        assert_eq!(
            writes(&prev, &next),
            [
                set(&format!("{ALLOW} +[198.51.100.13] -[]"), Tally::CREATE),
                set(&format!("set fdb {mac} on vxlan0"), Tally::CREATE),
                set("set neighbour 10.244.3.0 on vxlan0", Tally::CREATE),
                set("set route 10.244.3.0/24", Tally::CREATE),
            ]
        );
    }

    #[test]
    fn a_removed_peer_loses_them_all() {
        let (prev, next) = (desired_with(&[2, 3]), desired_with(&[2]));
        let mac = peer(3, PeerPath::Vxlan).vtep_mac;
        assert_eq!(
            writes(&prev, &next),
            [
                set(&format!("delete fdb {mac} on vxlan0"), Tally::REMOVE),
                set("delete neighbour 10.244.3.0 on vxlan0", Tally::REMOVE),
                set("delete route 10.244.3.0/24", Tally::REMOVE),
                set(&format!("{ALLOW} +[] -[198.51.100.13]"), Tally::REMOVE),
            ]
        );
        // Removal order as in a full apply: the route before the entries it points through.
        let plan = partial(&prev, &next, devices(&prev)).unwrap();
        let stage = |pred: fn(&Op) -> bool| plan.stages.iter().position(|s| s.iter().any(|st| pred(&st.op)));
        assert!(stage(|o| matches!(o, Op::DeleteRoute(_))) < stage(|o| matches!(o, Op::DeleteFdb(..))));
        assert!(stage(|o| matches!(o, Op::DeleteFdb(..))) < stage(|o| matches!(o, Op::DeleteNeighbour(..))));
    }

    #[test]
    fn a_new_mac_rewrites_the_neighbour_and_moves_the_fdb_entry() {
        let prev = desired_with(&[2, 3]);
        let mut next = prev.clone();
        next.peers[1].vtep_mac = Mac::derived("n3-new");
        let (old, new) = (prev.peers[1].vtep_mac, next.peers[1].vtep_mac);
        assert_eq!(
            writes(&prev, &next),
            [
                set(&format!("delete fdb {old} on vxlan0"), Tally::REMOVE),
                set(&format!("set fdb {new} on vxlan0"), Tally::CREATE),
                set("set neighbour 10.244.3.0 on vxlan0", Tally::CHANGE),
            ]
        );
    }

    #[test]
    fn a_new_underlay_address_replaces_the_fdb_remote_and_the_element() {
        let prev = desired_with(&[2, 3]);
        let mut next = prev.clone();
        next.peers[1].node_ip = "203.0.113.3".parse().unwrap();
        let mac = prev.peers[1].vtep_mac;
        assert_eq!(
            writes(&prev, &next),
            [
                set(&format!("{ALLOW} +[203.0.113.3] -[198.51.100.13]"), Tally::of(1, 0, 1)),
                set(&format!("set fdb {mac} on vxlan0"), Tally::CHANGE),
            ]
        );
    }

    #[test]
    fn a_new_block_routes_it_and_drops_the_old_one() {
        let prev = desired_with(&[2, 3]);
        let mut next = prev.clone();
        next.peers[1].pod_cidrs = vec!["10.244.33.0/24".parse().unwrap()];
        assert_eq!(
            writes(&prev, &next),
            [
                set("delete neighbour 10.244.3.0 on vxlan0", Tally::REMOVE),
                set("delete route 10.244.3.0/24", Tally::REMOVE),
                set("set neighbour 10.244.33.0 on vxlan0", Tally::CREATE),
                set("set route 10.244.33.0/24", Tally::CREATE),
            ]
        );
    }

    #[test]
    fn a_path_change_replaces_the_route_in_place() {
        let prev = desired_with(&[2, 3]);
        let mut next = prev.clone();
        next.peers[1].path = PeerPath::Direct;
        let mac = prev.peers[1].vtep_mac;
        let to_direct = writes(&prev, &next);
        assert_eq!(
            to_direct,
            [
                set(&format!("delete fdb {mac} on vxlan0"), Tally::REMOVE),
                set("delete neighbour 10.244.3.0 on vxlan0", Tally::REMOVE),
                set("replace route 10.244.3.0/24", Tally::CHANGE),
            ]
        );
        let back = writes(&next, &prev);
        assert_eq!(
            back,
            [
                set("replace route 10.244.3.0/24", Tally::CHANGE),
                set(&format!("set fdb {mac} on vxlan0"), Tally::CREATE),
                set("set neighbour 10.244.3.0 on vxlan0", Tally::CREATE),
            ]
        );
    }

    #[test]
    fn a_dual_stack_peer_gets_both_blocks_and_one_fdb_entry() {
        let dual = |peers: &[u8]| {
            let mut d = desired_with(peers);
            d.local = dual_local();
            for p in &mut d.peers {
                let n = p.name[1..].parse().unwrap();
                p.pod_cidrs.push(v6_block(n));
            }
            d
        };
        let mac = peer(3, PeerPath::Vxlan).vtep_mac;
        assert_eq!(
            writes(&dual(&[2]), &dual(&[2, 3])),
            [
                set(&format!("{ALLOW} +[198.51.100.13] -[]"), Tally::CREATE),
                set(&format!("set fdb {mac} on vxlan0"), Tally::CREATE),
                set("set neighbour 10.244.3.0 on vxlan0", Tally::CREATE),
                set("set neighbour fd00:10:244:3:: on vxlan0", Tally::CREATE),
                set("set route 10.244.3.0/24", Tally::CREATE),
                set("set route fd00:10:244:3::/64", Tally::CREATE),
            ]
        );
    }

    #[test]
    fn a_peer_moving_to_the_ipv6_underlay_moves_its_entries_to_vxlan_v6() {
        let mut prev = desired_with(&[2, 3]);
        prev.local.underlays.push(UnderlayAddr { ip: "2001:db8:1::10".parse().unwrap(), iface: "eth0".into() });
        let mut next = prev.clone();
        next.peers[1].node_ip = "2001:db8:1::3".parse().unwrap();
        let mac = prev.peers[1].vtep_mac;
        assert_eq!(
            writes(&prev, &next),
            [
                set(&format!("delete fdb {mac} on vxlan0"), Tally::REMOVE),
                set("delete neighbour 10.244.3.0 on vxlan0", Tally::REMOVE),
                set(&format!("{ALLOW} +[] -[198.51.100.13]"), Tally::REMOVE),
                set("nftables set inet weft vxlan_peers6 +[2001:db8:1::3] -[]", Tally::CREATE),
                set("replace route 10.244.3.0/24", Tally::CHANGE),
                set(&format!("set fdb {mac} on vxlan-v6"), Tally::CREATE),
                set("set neighbour 10.244.3.0 on vxlan-v6", Tally::CREATE),
            ]
        );
    }

    #[test]
    fn a_peer_sharing_a_node_ip_keeps_the_element() {
        let mut prev = desired_with(&[2, 3]);
        prev.peers[1].node_ip = prev.peers[0].node_ip;
        let mut next = prev.clone();
        next.peers.remove(1);
        assert!(!writes(&prev, &next).iter().any(|(w, _)| w.starts_with(ALLOW)));
    }

    #[test]
    fn a_block_moving_between_peers_is_replaced_not_removed() {
        let prev = desired_with(&[2, 3]);
        let mut next = desired_with(&[2]);
        let mut taker = peer(4, PeerPath::Direct);
        taker.pod_cidrs = prev.peers[1].pod_cidrs.clone();
        next.peers.push(taker);
        let w = writes(&prev, &next);
        assert!(w.contains(&set("replace route 10.244.3.0/24", Tally::CHANGE)), "{w:?}");
        assert!(!w.iter().any(|(x, _)| x == "delete route 10.244.3.0/24"));
    }

    #[test]
    fn unchanged_peers_need_nothing_and_rejected_ones_are_reported() {
        let prev = desired_with(&[2, 3]);
        let mut next = prev.clone();
        next.peers.push(Peer { name: "twin".into(), ..prev.peers[0].clone() });
        let plan = partial(&prev, &next, devices(&prev)).unwrap();
        // n2 and its twin conflict: both rejected, so n2's entries go.
        assert_eq!(plan.rejected.len(), 2);
        assert!(plan.steps().all(|s| s.tally.created == 0 && s.tally.changed == 0));
        assert!(partial(&prev, &prev, devices(&prev)).unwrap().stages.is_empty());
    }

    /// The plan of a partial sync from `prev` to `next`, the applied state after it, and the
    /// one a full apply of `next` keeps.
    fn synced(prev: &Desired, next: &Desired) -> (Plan, Applied, Applied) {
        let mut now = Applied::new(prev, devices(prev)).unwrap();
        let (plan, change) = plan_incremental(&now, next).expect("an incremental plan");
        now.update(change);
        (plan, now, Applied::new(next, devices(prev)).unwrap())
    }

    fn rejected_names(plan: &Plan) -> Vec<&str> {
        let mut names: Vec<&str> = plan.rejected.iter().filter_map(|f| f.peer.as_deref()).collect();
        names.sort_unstable();
        names
    }

    /// `prev` with peer n9 added after `edit`.
    fn with_n9(prev: &Desired, edit: fn(&mut Peer)) -> Desired {
        let mut next = prev.clone();
        let mut p = peer(9, PeerPath::Vxlan);
        edit(&mut p);
        next.peers.push(p);
        next
    }

    #[test]
    fn a_new_peer_clashing_with_an_unchanged_one_takes_both_out() {
        let prev = desired_with(&[2, 3, 4]);
        type Case = (fn(&mut Peer), [&'static str; 2], &'static str);
        let cases: [Case; 4] = [
            // Inside n3's block: found as the block that starts before it and reaches into it.
            (|p| p.pod_cidrs = vec!["10.244.3.128/25".parse().unwrap()], ["n3", "n9"], "10.244.3.0/24"),
            // Around n4's block: found as a block that starts inside it.
            (|p| p.pod_cidrs = vec!["10.244.4.0/23".parse().unwrap()], ["n4", "n9"], "10.244.4.0/24"),
            (|p| p.vtep_mac = Mac::derived("n2"), ["n2", "n9"], "10.244.2.0/24"),
            (|p| p.name = "n3".into(), ["n3", "n3"], "10.244.3.0/24"),
        ];
        for (edit, clashing, block) in cases {
            let next = with_n9(&prev, edit);
            let (plan, now, full) = synced(&prev, &next);
            assert_eq!(rejected_names(&plan), clashing);
            let deleted = format!("delete route {block}");
            assert!(writes(&prev, &next).iter().any(|(w, _)| *w == deleted), "{deleted}");
            assert!(writes(&prev, &next).iter().all(|(_, t)| t.created == 0 && t.changed == 0));
            assert_eq!(now, full);
        }
    }

    #[test]
    fn a_rejected_peer_is_routed_again_once_its_clash_is_gone() {
        let prev = with_n9(&desired_with(&[2, 3]), |p| p.vtep_mac = Mac::derived("n3"));
        let next = desired_with(&[2, 3]);
        let (plan, now, full) = synced(&prev, &next);
        assert!(plan.rejected.is_empty());
        assert!(writes(&prev, &next).contains(&set("set route 10.244.3.0/24", Tally::CREATE)));
        assert_eq!(now, full);
        // Unchanged, the clash stays reported and nothing is written.
        let (plan, now, full) = synced(&prev, &prev);
        assert_eq!(rejected_names(&plan), ["n3", "n9"]);
        assert!(plan.stages.is_empty());
        assert_eq!(now, full);
    }

    #[test]
    fn only_a_clean_change_without_rejected_peers_skips_validating_the_whole_state() {
        let clean = |prev: &Desired, next: &Desired| {
            let applied = Applied::new(prev, devices(prev)).unwrap();
            applied.all_valid(&applied.diff(next.peers.iter()))
        };
        let prev = desired_with(&[2, 3, 4]);
        let mut moved = prev.clone();
        moved.peers[1].pod_cidrs = vec!["10.244.33.0/24".parse().unwrap()];
        assert!(clean(&prev, &desired_with(&[2, 3, 4, 5])));
        assert!(clean(&prev, &desired_with(&[2, 4])));
        assert!(clean(&prev, &moved));
        // A block taken over from a peer that goes in the same change clashes with nothing.
        let mut taken = desired_with(&[2, 4]);
        taken.peers.push(Peer { pod_cidrs: prev.peers[1].pod_cidrs.clone(), ..peer(9, PeerPath::Vxlan) });
        assert!(clean(&prev, &taken));
        assert!(!clean(&prev, &with_n9(&prev, |p| p.pod_cidrs = vec!["10.244.3.128/25".parse().unwrap()])));
        assert!(!clean(&prev, &with_n9(&prev, |p| p.pod_cidrs = vec!["10.244.9.1/24".parse().unwrap()])));
        let mut twice = prev.clone();
        twice.peers.push(prev.peers[0].clone());
        assert!(!clean(&prev, &twice));
        let rejecting = with_n9(&prev, |p| p.vtep_mac = Mac::derived("n3"));
        assert!(!clean(&rejecting, &rejecting));
    }

    #[test]
    fn a_local_change_many_changes_or_an_unknown_device_need_a_full_apply() {
        let prev = desired_with(&[2, 3]);
        let mut local = prev.clone();
        local.local.mtu = 1400;
        assert_eq!(partial(&prev, &local, devices(&prev)), None);
        let many: Vec<u8> = (2..=2 + MAX_CHANGED_PEERS as u8).collect();
        let none = desired_with(&[]);
        assert_eq!(partial(&none, &desired_with(&many), devices(&prev)), None);
        assert!(partial(&none, &desired_with(&many[1..]), devices(&prev)).is_some());
        assert_eq!(partial(&prev, &desired_with(&[2]), Devices::default()), None);
    }
}
