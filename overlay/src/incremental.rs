//! Deciding a partial sync (kube-proxy's word): the writes that take the kernel from the state a
//! successful full apply of `prev` left to the one `next` wants, without reading the kernel.
//! Only for peers added, removed or changed under the same local node; anything else (and a
//! change to many peers at once, when a full read-back costs little more than the writes) is
//! left to a full apply. Pure, like [`crate::plan`], whose per-peer objects and stages it uses.
//!
//! It trusts that the kernel still holds what the last full apply wrote: whatever was changed
//! behind weft's back stays so until the next full apply (the agent's periodic resync).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use crate::desired::{Desired, Peer};
use crate::firewall;
use crate::mac::Mac;
use crate::nft::elements::ElementChanges;
use crate::objects::{FdbEntry, Neighbour};
use crate::plan::{Builder, Dev, Op, PeerObjects, Plan, RouteSpec, Stage, Tally, rejected};
use crate::underlay::Family;
use crate::validate::{Validated, validate};

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
    fn of(desired: &Desired, peer: &'p Peer, devices: &Devices) -> Option<Owned<'p>> {
        let family = Family::of(peer.node_ip);
        let underlay = *devices.underlay.get(&family)?;
        Some(Owned { peer, family, objects: PeerObjects::of(&desired.local, peer, underlay) })
    }

    fn route(&self, dst: &ipnet::IpNet) -> Option<&RouteSpec> {
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
/// without failures), with what the partial sync from it needs: which of its peers are valid
/// (kept, so that each sync validates only the new state) and the device indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub desired: Desired,
    /// Indexes into `desired.peers`.
    valid: Vec<usize>,
    pub devices: Devices,
}

impl Applied {
    /// `None` when the local node is invalid (nothing was applied then).
    pub fn new(desired: Desired, devices: Devices) -> Option<Applied> {
        let valid = valid_indexes(&desired, &validate(&desired).ok()?);
        Some(Applied { desired, valid, devices })
    }

    fn peers(&self) -> Vec<&Peer> {
        self.valid.iter().map(|&i| &self.desired.peers[i]).collect()
    }
}

/// The positions of the valid peers in `desired.peers` (validation keeps their order).
fn valid_indexes(desired: &Desired, valid: &Validated<'_>) -> Vec<usize> {
    let mut kept = valid.peers.iter().peekable();
    let mut out = Vec::with_capacity(valid.peers.len());
    for (i, p) in desired.peers.iter().enumerate() {
        if kept.next_if(|v| std::ptr::eq(**v, p)).is_some() {
            out.push(i);
        }
    }
    out
}

/// The plan of a partial sync from `prev` to `next`, and `next` as applied once it succeeds;
/// `None` when a full apply is needed: the local node changed, too many peers changed, or a
/// device index is not known.
pub fn plan_incremental(prev: &Applied, next: &Desired) -> Option<(Plan, Applied)> {
    let devices = &prev.devices;
    if prev.desired.local != next.local {
        return None;
    }
    // The local node is unchanged, so valid before means valid now: an error is not expected.
    let before = prev.peers();
    let after = validate(next).ok()?;
    let gone = changed(&before, &after.peers);
    let came = changed(&after.peers, &before);
    if gone.len() + came.len() > MAX_CHANGED_PEERS {
        return None;
    }
    let old: Vec<Owned<'_>> = gone.iter().map(|p| Owned::of(&prev.desired, p, devices)).collect::<Option<_>>()?;
    let new: Vec<Owned<'_>> = came.iter().map(|p| Owned::of(next, p, devices)).collect::<Option<_>>()?;
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
    let mut elements: BTreeMap<Family, ElementChanges> = BTreeMap::new();
    let holds = |peers: &[&Peer], ip: IpAddr| peers.iter().any(|p| p.node_ip == ip);
    for ip in dedup(came.iter().map(|p| p.node_ip)).filter(|ip| !holds(&before, *ip)) {
        elements.entry(Family::of(ip)).or_default().added.push(ip);
    }
    for ip in dedup(gone.iter().map(|p| p.node_ip)).filter(|ip| !holds(&after.peers, *ip)) {
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
        rejected: rejected(&after),
        failures: Vec::new(),
    };
    let valid = valid_indexes(next, &after);
    Some((plan, Applied { desired: next.clone(), valid, devices: devices.clone() }))
}

/// The peers of `these` that `others` has not, or not as they are (peer names are unique
/// among valid peers).
fn changed<'p>(these: &[&'p Peer], others: &[&Peer]) -> Vec<&'p Peer> {
    let others: HashMap<&str, &Peer> = others.iter().map(|p| (p.name.as_str(), *p)).collect();
    these.iter().copied().filter(|p| others.get(p.name.as_str()).is_none_or(|o| *o != *p)).collect()
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
        Some(plan_incremental(&Applied::new(prev.clone(), devices)?, next)?.0)
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
