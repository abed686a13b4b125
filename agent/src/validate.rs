//! Validation of what peers announce. Gossip is input from the network: a value that fails here
//! is rejected, logged and counted, and the peer is never programmed.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use weft_overlay::Mac;
use weft_overlay::underlay::{Family, NodeIpError, NodeIps, check_node_ip};

use crate::allocation::Claim;
use crate::gossip::keys;
use crate::settings::{self, Difference};

/// One pod family of the cluster: its range and the size of every node's block in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub cluster_cidr: IpNet,
    pub node_prefix: u8,
}

/// What we check peers against: our own cluster settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// At most one per family, IPv4 first.
    pub pools: Vec<Pool>,
    pub vni: u32,
    pub vxlan_port: u16,
    pub local_node_ips: NodeIps,
    /// This node's `settings` value ([`settings::encode`]).
    pub settings: String,
}

/// A peer's announcement that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// Its underlay addresses: at least one.
    pub node_ips: NodeIps,
    pub vtep_mac: Mac,
    /// Its claims, at most one per family of this cluster (IPv4 first); empty while it has not
    /// claimed a block yet. A claim of a family this cluster lacks is not taken (see `validate`).
    pub claims: Vec<Claim>,
}

impl Rules {
    pub fn pool(&self, family: Family) -> Option<&Pool> {
        self.pools.iter().find(|p| Family::of_net(&p.cluster_cidr) == family)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("node name {0:?} is not valid: {1}")]
    Name(String, String),
    /// One of its facts has not arrived yet: gossip can list a node before its keys reach us,
    /// and a delta cut at the datagram size carries only some of them. Not a fault of the peer;
    /// never logged or counted (`/status` shows it on the peer while it lasts).
    #[error("has not announced {0} yet")]
    NotAnnounced(&'static str),
    #[error("key {key} = {value:?} is malformed: {reason}")]
    Malformed { key: &'static str, value: String, reason: String },
    #[error("node IP {0}: {1}")]
    NodeIpNotUnicast(IpAddr, NodeIpError),
    #[error("node IP {0} is this node's own address")]
    NodeIpIsOurs(IpAddr),
    #[error("VTEP MAC {0} is not a unicast MAC")]
    MacNotUnicast(Mac),
    #[error("VTEP MAC {theirs} is not the one its name gives ({expected})")]
    MacNotOfName { theirs: Mac, expected: Mac },
    #[error("VNI {theirs} differs from ours ({ours})")]
    VniMismatch { ours: u32, theirs: u32 },
    #[error("VXLAN port {theirs} differs from ours ({ours})")]
    VxlanPortMismatch { ours: u16, theirs: u16 },
    #[error("cluster settings differ: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    SettingsDiffer(Vec<Difference>),
    #[error("PodCIDR {cidr} is outside the cluster CIDR {cluster}")]
    PodCidrOutsideCluster { cidr: IpNet, cluster: IpNet },
    #[error("PodCIDR {cidr} is not a /{prefix} block")]
    PodCidrWrongPrefix { cidr: IpNet, prefix: u8 },
    #[error("PodCIDR {0} has host bits set")]
    PodCidrNotAligned(IpNet),
}

impl Rejection {
    /// A short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::Name(..) => "name",
            Rejection::NotAnnounced(_) => "not_announced",
            Rejection::Malformed { .. } => "malformed",
            Rejection::NodeIpNotUnicast(..) => "node_ip_not_unicast",
            Rejection::NodeIpIsOurs(_) => "node_ip_is_ours",
            Rejection::MacNotUnicast(_) => "mac_not_unicast",
            Rejection::MacNotOfName { .. } => "mac_not_of_name",
            Rejection::VniMismatch { .. } => "vni_mismatch",
            Rejection::VxlanPortMismatch { .. } => "vxlan_port_mismatch",
            Rejection::SettingsDiffer(_) => "settings_differ",
            Rejection::PodCidrOutsideCluster { .. } => "pod_cidr_outside_cluster",
            Rejection::PodCidrWrongPrefix { .. } => "pod_cidr_wrong_prefix",
            Rejection::PodCidrNotAligned(_) => "pod_cidr_not_aligned",
        }
    }

    /// The peer runs with other cluster settings than this node: not a bad value, a node of
    /// another configuration (one of the two must not serve, see [`settings::refusal`]).
    pub fn settings_differ(&self) -> bool {
        matches!(
            self,
            Rejection::VniMismatch { .. }
                | Rejection::VxlanPortMismatch { .. }
                | Rejection::SettingsDiffer(_)
                | Rejection::PodCidrOutsideCluster { .. }
                | Rejection::PodCidrWrongPrefix { .. }
        )
    }
}

/// Every label [`Rejection::label`] gives a counted rejection (`not_announced` is never counted),
/// so that the metric shows each at 0 from the start.
pub const COUNTED_LABELS: [&str; 12] = [
    "name",
    "malformed",
    "node_ip_not_unicast",
    "node_ip_is_ours",
    "mac_not_unicast",
    "mac_not_of_name",
    "vni_mismatch",
    "vxlan_port_mismatch",
    "settings_differ",
    "pod_cidr_outside_cluster",
    "pod_cidr_wrong_prefix",
    "pod_cidr_not_aligned",
];

/// Longest node name accepted (a DNS subdomain, as Kubernetes node names are).
pub const MAX_NODE_NAME_LEN: usize = 253;

/// Node names are used in logs, status and kernel object descriptions.
pub fn check_node_name(name: &str) -> Result<(), String> {
    weft_cni::names::validate_id("node name", name)?;
    if name.len() > MAX_NODE_NAME_LEN {
        return Err(format!("longer than {MAX_NODE_NAME_LEN} bytes"));
    }
    Ok(())
}

/// A PodCIDR as every node must hold one: an aligned block of the pool's size in its range
/// (a block of another family is outside it).
pub fn check_pod_cidr(cidr: IpNet, pool: &Pool) -> Result<(), Rejection> {
    if cidr.trunc() != cidr {
        return Err(Rejection::PodCidrNotAligned(cidr));
    }
    if !pool.cluster_cidr.contains(&cidr) {
        return Err(Rejection::PodCidrOutsideCluster { cidr, cluster: pool.cluster_cidr });
    }
    if cidr.prefix_len() != pool.node_prefix {
        return Err(Rejection::PodCidrWrongPrefix { cidr, prefix: pool.node_prefix });
    }
    Ok(())
}

fn get<'a>(kvs: &'a BTreeMap<String, String>, key: &'static str) -> Result<&'a str, Rejection> {
    kvs.get(key).map(String::as_str).ok_or(Rejection::NotAnnounced(key))
}

fn parse<T: std::str::FromStr>(kvs: &BTreeMap<String, String>, key: &'static str) -> Result<T, Rejection>
where
    T::Err: std::fmt::Display,
{
    let value = get(kvs, key)?;
    value.parse().map_err(|e: T::Err| Rejection::Malformed { key, value: value.to_string(), reason: e.to_string() })
}

/// Checks a peer's key-values against our rules.
pub fn validate(name: &str, kvs: &BTreeMap<String, String>, rules: &Rules) -> Result<Announcement, Rejection> {
    check_node_name(name).map_err(|e| Rejection::Name(name.to_string(), e))?;
    // Every fact is checked for presence before any value: a partly arrived announcement is
    // incomplete, not faulty, whatever its first keys hold. A node has an underlay address of
    // at least one family; `node_ip` is named as missing when it has none.
    if !kvs.contains_key(keys::NODE_IP) && !kvs.contains_key(keys::NODE_IP6) {
        return Err(Rejection::NotAnnounced(keys::NODE_IP));
    }
    if let Some(key) = [keys::VTEP_MAC, keys::VNI, keys::VXLAN_PORT].into_iter().find(|k| !kvs.contains_key(*k)) {
        return Err(Rejection::NotAnnounced(key));
    }
    let node_ips = node_ips(kvs)?;
    if let Some(ours) = node_ips.iter().find(|ip| rules.local_node_ips.contains(*ip)) {
        return Err(Rejection::NodeIpIsOurs(ours));
    }
    let vtep_mac: Mac = parse(kvs, keys::VTEP_MAC)?;
    if !vtep_mac.is_unicast() {
        return Err(Rejection::MacNotUnicast(vtep_mac));
    }
    // Every agent derives its VTEP MAC from its name. Another MAC is a bug or a node copying a
    // peer's MAC, which the datapath would have to refuse for both holders (one FDB entry per
    // MAC): refusing the copy alone keeps the real owner programmed.
    let expected = Mac::derived(name);
    if vtep_mac != expected {
        return Err(Rejection::MacNotOfName { theirs: vtep_mac, expected });
    }
    let vni: u32 = parse(kvs, keys::VNI)?;
    if vni != rules.vni {
        return Err(Rejection::VniMismatch { ours: rules.vni, theirs: vni });
    }
    let vxlan_port: u16 = parse(kvs, keys::VXLAN_PORT)?;
    if vxlan_port != rules.vxlan_port {
        return Err(Rejection::VxlanPortMismatch { ours: rules.vxlan_port, theirs: vxlan_port });
    }
    // Absent on a node of a release before it: such a node is checked by its facts alone.
    if let Some(value) = kvs.get(keys::SETTINGS) {
        let malformed = |reason| Rejection::Malformed { key: keys::SETTINGS, value: value.clone(), reason };
        let differ = settings::differences(&rules.settings, value).map_err(malformed)?;
        if !differ.is_empty() {
            return Err(Rejection::SettingsDiffer(differ));
        }
    }
    let mut claims = Vec::new();
    for family in Family::ALL {
        let key = keys::pod_cidr_key(family);
        let Some(value) = kvs.get(key) else { continue };
        let malformed = |reason: String| Rejection::Malformed { key, value: value.clone(), reason };
        let claim = keys::decode_claim(value).map_err(malformed)?;
        if Family::of_net(&claim.cidr) != family {
            return Err(malformed(format!("{} is not an {family} block", claim.cidr)));
        }
        // A block of a family this cluster lacks here (a peer configured for more families,
        // during a rollout): not ours to route, and no fault of the peer.
        if let Some(pool) = rules.pool(family) {
            check_pod_cidr(claim.cidr, pool)?;
            claims.push(claim);
        }
    }
    Ok(Announcement { node_ips, vtep_mac, claims })
}

/// The underlay addresses announced, each under its family's key and of that family.
fn node_ips(kvs: &BTreeMap<String, String>) -> Result<NodeIps, Rejection> {
    let mut ips = Vec::new();
    for family in Family::ALL {
        let key = keys::node_ip_key(family);
        if !kvs.contains_key(key) {
            continue;
        }
        let ip: IpAddr = match family {
            Family::Ipv4 => parse::<Ipv4Addr>(kvs, key)?.into(),
            Family::Ipv6 => parse::<Ipv6Addr>(kvs, key)?.into(),
        };
        check_node_ip(ip).map_err(|e| Rejection::NodeIpNotUnicast(ip, e))?;
        ips.push(ip);
    }
    // One address per key, each of the key's family: at most one per family.
    NodeIps::new(ips).map_err(|e| Rejection::Malformed {
        key: keys::NODE_IP,
        value: String::new(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::allocation::ClaimKind;

    /// The rules every test in the crate validates against.
    pub(crate) fn rules() -> Rules {
        let pools = vec![Pool { cluster_cidr: "10.244.0.0/16".parse().unwrap(), node_prefix: 24 }];
        Rules {
            settings: settings::encode(&pools, INTERVAL),
            pools,
            vni: 1,
            vxlan_port: 8472,
            local_node_ips: "192.0.2.1".parse().unwrap(),
        }
    }

    /// The gossip interval of the test rules.
    pub(crate) const INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

    fn good() -> BTreeMap<String, String> {
        let mac = Mac::derived("node-b").to_string();
        [
            (keys::NODE_IP, "198.51.100.7"),
            (keys::VTEP_MAC, mac.as_str()),
            (keys::VNI, "1"),
            (keys::VXLAN_PORT, "8472"),
            (keys::VERSION, "0.1.0"),
            (keys::STATUS, "up"),
            (keys::POD_CIDR, "10.244.7.0/24;confirmed;42"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn with(key: &str, value: &str) -> BTreeMap<String, String> {
        let mut kvs = good();
        kvs.insert(key.into(), value.into());
        kvs
    }

    #[test]
    fn a_well_formed_announcement_is_accepted() {
        let a = validate("node-b", &good(), &rules()).unwrap();
        assert_eq!(a.node_ips, "198.51.100.7".parse().unwrap());
        assert_eq!(
            a.claims,
            [Claim { cidr: "10.244.7.0/24".parse().unwrap(), kind: ClaimKind::Confirmed, since_ms: 42 }]
        );
    }

    /// The rules of a dual-stack cluster.
    pub(crate) fn dual_rules() -> Rules {
        let mut r = rules();
        r.pools.push(Pool { cluster_cidr: "fd00:10:244::/56".parse().unwrap(), node_prefix: 64 });
        r.settings = settings::encode(&r.pools, INTERVAL);
        r
    }

    #[test]
    fn each_family_is_claimed_under_its_own_key_and_checked_against_its_pool() {
        let dual = with(keys::POD_CIDR6, "fd00:10:244:7::/64;confirmed;43");
        let a = validate("node-b", &dual, &dual_rules()).unwrap();
        let blocks: Vec<String> = a.claims.iter().map(|c| c.cidr.to_string()).collect();
        assert_eq!(blocks, ["10.244.7.0/24", "fd00:10:244:7::/64"]);
        // An IPv6-only peer: no `pod_cidr`.
        let mut v6_only = dual.clone();
        v6_only.remove(keys::POD_CIDR);
        assert_eq!(validate("node-b", &v6_only, &dual_rules()).unwrap().claims.len(), 1);
        // On an IPv4-only node a peer's IPv6 block is not taken, and no fault of the peer.
        assert_eq!(validate("node-b", &dual, &rules()).unwrap().claims.len(), 1);
        for (key, value, label) in [
            (keys::POD_CIDR6, "fd00:10:245:7::/64;confirmed;1", "pod_cidr_outside_cluster"),
            (keys::POD_CIDR6, "fd00:10:244:7::/80;confirmed;1", "pod_cidr_wrong_prefix"),
            (keys::POD_CIDR6, "10.244.8.0/24;confirmed;1", "malformed"),
            (keys::POD_CIDR, "fd00:10:244:7::/64;confirmed;1", "malformed"),
        ] {
            let err = validate("node-b", &with(key, value), &dual_rules()).unwrap_err();
            assert_eq!(err.label(), label, "{key}={value}: {err}");
        }
    }

    /// A node of the previous release announces `pod_cidr` (IPv4) and nothing of IPv6: on a
    /// dual-stack node it is an IPv4-only peer, valid and routed by its IPv4 block.
    #[test]
    fn a_previous_release_ipv4_only_node_is_understood_by_a_dual_stack_node() {
        let a = validate("node-b", &good(), &dual_rules()).unwrap();
        assert_eq!(a.claims.len(), 1);
        assert_eq!(a.claims[0].cidr.to_string(), "10.244.7.0/24");
    }

    #[test]
    fn settings_are_compared_only_where_both_nodes_know_them() {
        // The previous release announces none; ours, with more pools or unknown fields, agree.
        assert!(validate("node-b", &good(), &rules()).is_ok());
        for value in [rules().settings, dual_rules().settings, format!("{};zones=subnet", rules().settings)] {
            assert!(validate("node-b", &with(keys::SETTINGS, &value), &rules()).is_ok(), "{value}");
        }
        let err = validate("node-b", &with(keys::SETTINGS, "gossip-interval-ms=1000"), &rules()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cluster settings differ: gossip-interval-ms is 1000 there and 100 here (--gossip-interval)"
        );
        assert!(err.settings_differ());
    }

    #[test]
    fn a_peer_without_a_claim_yet_is_valid() {
        let mut kvs = good();
        kvs.remove(keys::POD_CIDR);
        assert!(validate("node-b", &kvs, &rules()).unwrap().claims.is_empty());
    }

    #[test]
    fn bad_values_are_rejected_with_a_reason_and_label() {
        let cases: &[(&str, &str, &str)] = &[
            (keys::NODE_IP, "not-an-ip", "malformed"),
            (keys::NODE_IP, "127.0.0.1", "node_ip_not_unicast"),
            (keys::NODE_IP, "0.0.0.0", "node_ip_not_unicast"),
            (keys::NODE_IP, "224.0.0.5", "node_ip_not_unicast"),
            (keys::NODE_IP, "255.255.255.255", "node_ip_not_unicast"),
            (keys::NODE_IP, "192.0.2.1", "node_ip_is_ours"),
            (keys::NODE_IP, "2001:db8::7", "malformed"),
            (keys::NODE_IP6, "198.51.100.8", "malformed"),
            (keys::NODE_IP6, "fe80::7", "node_ip_not_unicast"),
            (keys::NODE_IP6, "ff02::1", "node_ip_not_unicast"),
            (keys::VTEP_MAC, "01:00:5e:00:00:01", "mac_not_unicast"),
            (keys::VTEP_MAC, "00:00:00:00:00:00", "mac_not_unicast"),
            (keys::VTEP_MAC, "0a:11:22", "malformed"),
            (keys::VTEP_MAC, "0a:11:22:33:44:55", "mac_not_of_name"),
            (keys::VNI, "2", "vni_mismatch"),
            (keys::VNI, "x", "malformed"),
            (keys::VXLAN_PORT, "4789", "vxlan_port_mismatch"),
            (keys::SETTINGS, "gossip-interval-ms=1000", "settings_differ"),
            (keys::SETTINGS, "ipv4-pool=10.245.0.0/16+24;ipv6-pool=fd00::/56+64", "settings_differ"),
            (keys::SETTINGS, "gossip-interval-ms", "malformed"),
            (keys::POD_CIDR, "10.245.7.0/24;confirmed;1", "pod_cidr_outside_cluster"),
            (keys::POD_CIDR, "10.244.7.0/25;confirmed;1", "pod_cidr_wrong_prefix"),
            (keys::POD_CIDR, "10.244.7.9/24;confirmed;1", "pod_cidr_not_aligned"),
            (keys::POD_CIDR, "10.244.0.0/16;static;1", "pod_cidr_wrong_prefix"),
            (keys::POD_CIDR, "garbage", "malformed"),
        ];
        let mut seen = BTreeSet::from(["name"]);
        for (key, value, label) in cases {
            let err = validate("node-b", &with(key, value), &rules()).unwrap_err();
            assert_eq!(err.label(), *label, "{key}={value}: {err}");
            seen.insert(err.label());
        }
        assert_eq!(seen, BTreeSet::from(COUNTED_LABELS), "the metric's list of reasons is out of date");
    }

    #[test]
    fn ipv6_and_dual_underlays_are_read_and_a_previous_release_is_ipv4_only() {
        // What a node of the previous release announces: `node_ip` only.
        let previous = validate("node-b", &good(), &rules()).unwrap();
        assert_eq!(previous.node_ips.get(Family::Ipv6), None);
        let mut v6 = good();
        v6.remove(keys::NODE_IP);
        v6.insert(keys::NODE_IP6.into(), "2001:db8:2::7".into());
        let a = validate("node-b", &v6, &rules()).unwrap();
        assert_eq!(a.node_ips, "2001:db8:2::7".parse().unwrap());
        let dual = with(keys::NODE_IP6, "2001:db8:2::7");
        assert_eq!(
            validate("node-b", &dual, &rules()).unwrap().node_ips,
            "198.51.100.7,2001:db8:2::7".parse().unwrap()
        );
        // Our own IPv6 address is ours too.
        let ours = Rules { local_node_ips: "192.0.2.1,2001:db8:2::7".parse().unwrap(), ..rules() };
        assert_eq!(validate("node-b", &v6, &ours).unwrap_err().label(), "node_ip_is_ours");
    }

    #[test]
    fn missing_facts_are_not_announced_yet_and_bad_names_are_rejected() {
        // Part of the facts arrived (a delta cut at the datagram size): not (yet) a fault, even
        // when a value that did arrive would be rejected once the rest is there.
        for key in [keys::NODE_IP, keys::VTEP_MAC, keys::VNI, keys::VXLAN_PORT] {
            let mut kvs = with(keys::VNI, "2");
            kvs.remove(key);
            assert_eq!(validate("node-b", &kvs, &rules()), Err(Rejection::NotAnnounced(key)));
        }
        // Listed by gossip before any of its keys arrived.
        assert_eq!(validate("node-b", &BTreeMap::new(), &rules()), Err(Rejection::NotAnnounced(keys::NODE_IP)));
        // Another node's (valid) announcement under this name: its MAC gives it away.
        assert_eq!(validate("node-c", &good(), &rules()).unwrap_err().label(), "mac_not_of_name");
        for name in ["", "-x", "a b", "a/b", &"n".repeat(254)] {
            assert_eq!(validate(name, &good(), &rules()).unwrap_err().label(), "name", "{name:?}");
        }
    }
}
