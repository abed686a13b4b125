//! The gossip key schema: what each node publishes about itself, and the claim encoding.
//!
//! | key          | value                                   | changes                      |
//! |--------------|-----------------------------------------|------------------------------|
//! | `node_ip`    | underlay IPv4 address (absent on an IPv6-only node) | never within a generation |
//! | `node_ip6`   | underlay IPv6 address (absent without one) | never within a generation |
//! | `vtep_mac`   | VTEP MAC (`Mac::derived(node name)`)    | never                        |
//! | `vni`        | VXLAN network identifier                | never within a generation    |
//! | `vxlan_port` | VXLAN UDP port                          | never within a generation    |
//! | `version`    | agent version (informational)           | never within a generation    |
//! | `status`     | `up`; `name-in-use` while the agent yields its name to another; `leaving` during shutdown | on those events |
//! | `pod_cidr`   | IPv4 claim: `<cidr>;<claiming|confirmed|static>;<since ms>` (absent on a node without IPv4 pods) | while allocating |
//! | `pod_cidr6`  | IPv6 claim, the same encoding (absent without IPv6 pods) | while allocating |
//!
//! | `settings`   | settings every node must share (`settings::encode`) | never within a generation |
//! | `dataplane`  | this node's probe results, bounded (`probe::summary`) | when they change     |
//! | `gossip-protocol` | `monitors-1`: this node pings the members it monitors and answers pings (`gossip::ping`) | never within a generation |
//! | `suspects`   | the members it monitors that missed 3 pings in a row: `<name>:<generation>,…` (`monitors::encode_suspects`) | when a suspicion starts or ends |
//!
//! A node's suspicions are one key rather than a key per suspect: chitchat keeps a deleted key
//! as a tombstone for the grace period, so a flapping link would leave one behind per episode,
//! while one value stays bounded by the members the node monitors (about 8) and a reader
//! parses one key per monitor.
//!
//! A claim is one key so that a peer can never see a block with another claim's time; one key
//! per family, so that a node of the previous release, which parses `pod_cidr` as IPv4 and knows
//! no `pod_cidr6`, keeps understanding dual-stack nodes by their IPv4 block and sees an IPv6-only
//! node as one that has not claimed a block yet (not programmed, nothing rejected).
//! `node_ip` keeps its meaning of the previous release (which knows only IPv4 underlays), so
//! such nodes keep understanding IPv4 nodes, and their announcements (no `node_ip6`) still are
//! an IPv4-only underlay here.

use weft_overlay::Mac;
use weft_overlay::underlay::{Family, NodeIps};

use crate::allocation::{Claim, ClaimKind};

pub const NODE_IP: &str = "node_ip";
pub const NODE_IP6: &str = "node_ip6";
pub const VTEP_MAC: &str = "vtep_mac";
pub const VNI: &str = "vni";
pub const VXLAN_PORT: &str = "vxlan_port";
pub const VERSION: &str = "version";
pub const STATUS: &str = "status";
pub const POD_CIDR: &str = "pod_cidr";
pub const POD_CIDR6: &str = "pod_cidr6";
pub const DATAPLANE: &str = "dataplane";
pub const SETTINGS: &str = "settings";
pub const GOSSIP_PROTOCOL: &str = "gossip-protocol";
pub const SUSPECTS: &str = "suspects";

/// The liveness protocol of this release: monitors (`gossip::monitors`).
pub const PROTOCOL_MONITORS: &str = "monitors-1";

pub const STATUS_UP: &str = "up";
pub const STATUS_LEAVING: &str = "leaving";
/// This agent found its node name in use by another live agent and does not serve under it.
pub const STATUS_REFUSED: &str = "name-in-use";

/// The key carrying a node's underlay address of one family.
pub fn node_ip_key(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => NODE_IP,
        Family::Ipv6 => NODE_IP6,
    }
}

/// The key carrying a node's claim of one family.
pub fn pod_cidr_key(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => POD_CIDR,
        Family::Ipv6 => POD_CIDR6,
    }
}

/// The facts a node announces for its whole generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub node_ips: NodeIps,
    pub vtep_mac: Mac,
    pub vni: u32,
    pub vxlan_port: u16,
    /// [`crate::settings::encode`] of this node's configuration.
    pub settings: String,
}

impl Facts {
    /// The key-values a node starts gossiping with.
    pub fn key_values(&self, claims: &[Claim]) -> Vec<(String, String)> {
        let mut kvs: Vec<(String, String)> =
            self.node_ips.iter().map(|ip| (node_ip_key(Family::of(ip)).to_string(), ip.to_string())).collect();
        kvs.extend([
            (VTEP_MAC.to_string(), self.vtep_mac.to_string()),
            (VNI.to_string(), self.vni.to_string()),
            (VXLAN_PORT.to_string(), self.vxlan_port.to_string()),
            (SETTINGS.to_string(), self.settings.clone()),
            (VERSION.to_string(), env!("CARGO_PKG_VERSION").to_string()),
            (STATUS.to_string(), STATUS_UP.to_string()),
        ]);
        for claim in claims {
            kvs.push((pod_cidr_key(Family::of_net(&claim.cidr)).to_string(), encode_claim(claim)));
        }
        kvs
    }
}

fn kind_name(kind: ClaimKind) -> &'static str {
    match kind {
        ClaimKind::Static => "static",
        ClaimKind::Confirmed => "confirmed",
        ClaimKind::Claiming => "claiming",
    }
}

pub fn encode_claim(claim: &Claim) -> String {
    format!("{};{};{}", claim.cidr, kind_name(claim.kind), claim.since_ms)
}

/// Parses the `pod_cidr` value; the error says what is wrong with it. Whether the block is
/// acceptable is for validation to decide.
pub fn decode_claim(value: &str) -> Result<Claim, String> {
    let mut parts = value.split(';');
    let (Some(cidr), Some(kind), Some(since), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err("expected <cidr>;<kind>;<since ms>".into());
    };
    let cidr = cidr.parse().map_err(|_| format!("{cidr:?} is not a CIDR"))?;
    let kind = match kind {
        "static" => ClaimKind::Static,
        "confirmed" => ClaimKind::Confirmed,
        "claiming" => ClaimKind::Claiming,
        other => return Err(format!("unknown claim kind {other:?}")),
    };
    let since_ms = since.parse().map_err(|_| format!("{since:?} is not a time in ms"))?;
    Ok(Claim { cidr, kind, since_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_round_trip() {
        for kind in [ClaimKind::Static, ClaimKind::Confirmed, ClaimKind::Claiming] {
            let claim = Claim { cidr: "10.244.3.0/24".parse().unwrap(), kind, since_ms: 1_732_345_678_901 };
            assert_eq!(decode_claim(&encode_claim(&claim)), Ok(claim));
        }
        assert_eq!(
            encode_claim(&Claim { cidr: "10.244.3.0/24".parse().unwrap(), kind: ClaimKind::Confirmed, since_ms: 12 }),
            "10.244.3.0/24;confirmed;12"
        );
    }

    #[test]
    fn malformed_claims_are_errors() {
        for bad in [
            "",
            "10.244.3.0/24",
            "10.244.3.0/24;confirmed",
            "10.244.3.0/24;confirmed;1;x",
            "10.244.3.0;confirmed;1",
            "10.244.3.0/24;owned;1",
            "10.244.3.0/24;confirmed;-1",
        ] {
            assert!(decode_claim(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn facts_include_the_claim_only_when_there_is_one() {
        let node_ips = "192.0.2.1".parse().unwrap();
        let settings = "gossip-interval-ms=100".to_string();
        let facts = Facts { node_ips, vtep_mac: Mac::derived("a"), vni: 1, vxlan_port: 8472, settings };
        assert!(!facts.key_values(&[]).iter().any(|(k, _)| k == POD_CIDR));
        let claim = Claim { cidr: "10.244.3.0/24".parse().unwrap(), kind: ClaimKind::Claiming, since_ms: 1 };
        let kvs = facts.key_values(&[claim]);
        assert!(kvs.contains(&(POD_CIDR.into(), "10.244.3.0/24;claiming;1".into())));
        // An IPv6 claim goes under its own key; a dual-stack node announces both.
        let claim6 = Claim { cidr: "fd00:10:244:3::/64".parse().unwrap(), ..claim };
        let kvs = facts.key_values(&[claim, claim6]);
        assert!(kvs.contains(&(POD_CIDR6.into(), "fd00:10:244:3::/64;claiming;1".into())));
        assert!(kvs.contains(&(POD_CIDR.into(), "10.244.3.0/24;claiming;1".into())));
        // An IPv6-only node announces no `pod_cidr` at all.
        assert!(!facts.key_values(&[claim6]).iter().any(|(k, _)| k == POD_CIDR));
        assert!(kvs.contains(&(STATUS.into(), STATUS_UP.into())));
        assert!(kvs.contains(&(SETTINGS.into(), "gossip-interval-ms=100".into())));
    }

    #[test]
    fn underlay_addresses_are_announced_one_key_per_family() {
        let facts = |ips: &str| Facts {
            node_ips: ips.parse().unwrap(),
            vtep_mac: Mac::derived("a"),
            vni: 1,
            vxlan_port: 8472,
            settings: String::new(),
        };
        let get = |kvs: &[(String, String)], key: &str| kvs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let dual = facts("192.0.2.1,2001:db8:1::1").key_values(&[]);
        assert_eq!(get(&dual, NODE_IP).as_deref(), Some("192.0.2.1"));
        assert_eq!(get(&dual, NODE_IP6).as_deref(), Some("2001:db8:1::1"));
        // An IPv6-only node has no `node_ip`: a previous release never mistakes it for IPv4.
        let v6 = facts("2001:db8:1::1").key_values(&[]);
        assert_eq!(get(&v6, NODE_IP), None);
        assert_eq!(get(&v6, NODE_IP6).as_deref(), Some("2001:db8:1::1"));
        assert_eq!(get(&facts("192.0.2.1").key_values(&[]), NODE_IP6), None);
    }
}
