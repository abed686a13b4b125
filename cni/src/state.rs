//! The node state file: the agent publishes the node's PodCIDRs and MTU here, the plugin reads it.
//!
//! The file stays version 1 and readable by the previous plugin on IPv4 nodes: the IPv4 fields
//! keep their names (`nodeIP`, `podCIDR`, `gateway`, `clusterCIDR`), now optional, next to their
//! IPv6 counterparts (`nodeIPv6`, `podCIDRv6`, `gatewayV6`, `clusterCIDRv6`). That flat form is
//! only the wire form: inside, a node has a list of node IPs and a list of per-family pools.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::fsutil::{read_regular, write_atomic};

/// Default location, as in the agent's `--state-dir`.
pub const DEFAULT_STATE_FILE: &str = "/run/weft/node.json";
pub const STATE_FILE_NAME: &str = "node.json";
pub const STATE_FILE_VERSION: u32 = 1;
/// A real state file is a few hundred bytes; anything far larger is not one.
const MAX_STATE_FILE_BYTES: u64 = 64 * 1024;
/// Longest `unavailable` reason accepted: it ends up in every failed ADD's error message.
pub const MAX_REASON_BYTES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Wire", into = "Wire")]
pub struct NodeState {
    pub version: u32,
    pub node: String,
    /// The node's underlay addresses, at most one per family.
    pub node_ips: Vec<IpAddr>,
    /// The node's pools, at most one per family, IPv4 first.
    pub pools: Vec<NodePool>,
    pub mtu: u32,
    pub bridge: String,
    /// Set while the node must not hand out addresses from its pools (the agent is confirming
    /// the block after a restart, another node owns it, or this node's name is taken): why.
    /// ADD and STATUS fail with this reason; DEL, CHECK and GC keep working for existing pods.
    pub unavailable: Option<String>,
}

/// One family's PodCIDR, the bridge's gateway in it, and the cluster CIDR it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodePool {
    pub pod_cidr: IpNet,
    pub gateway: IpAddr,
    pub cluster_cidr: IpNet,
}

/// The file's flat JSON form.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Wire {
    version: u32,
    node: String,
    #[serde(rename = "nodeIP", default, skip_serializing_if = "Option::is_none")]
    node_ip: Option<Ipv4Addr>,
    #[serde(rename = "nodeIPv6", default, skip_serializing_if = "Option::is_none")]
    node_ipv6: Option<Ipv6Addr>,
    #[serde(rename = "podCIDR", default, skip_serializing_if = "Option::is_none")]
    pod_cidr: Option<Ipv4Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<Ipv4Addr>,
    #[serde(rename = "clusterCIDR", default, skip_serializing_if = "Option::is_none")]
    cluster_cidr: Option<Ipv4Net>,
    #[serde(rename = "podCIDRv6", default, skip_serializing_if = "Option::is_none")]
    pod_cidr_v6: Option<Ipv6Net>,
    #[serde(rename = "gatewayV6", default, skip_serializing_if = "Option::is_none")]
    gateway_v6: Option<Ipv6Addr>,
    #[serde(rename = "clusterCIDRv6", default, skip_serializing_if = "Option::is_none")]
    cluster_cidr_v6: Option<Ipv6Net>,
    mtu: u32,
    bridge: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unavailable: Option<String>,
}

const V4_FIELDS: [&str; 3] = ["podCIDR", "gateway", "clusterCIDR"];
const V6_FIELDS: [&str; 3] = ["podCIDRv6", "gatewayV6", "clusterCIDRv6"];

/// A family's wire field names, for errors that name the field: podCIDR, gateway, clusterCIDR.
fn field_names(net: &IpNet) -> [&'static str; 3] {
    if net.addr().is_ipv4() { V4_FIELDS } else { V6_FIELDS }
}

/// A family's pool from its three optional fields: all of them or none.
fn pool_from<N: Into<IpNet>, A: Into<IpAddr>>(
    names: [&str; 3],
    pod_cidr: Option<N>,
    gateway: Option<A>,
    cluster_cidr: Option<N>,
) -> Result<Option<NodePool>, String> {
    match (pod_cidr, gateway, cluster_cidr) {
        (None, None, None) => Ok(None),
        (Some(p), Some(g), Some(c)) => {
            Ok(Some(NodePool { pod_cidr: p.into(), gateway: g.into(), cluster_cidr: c.into() }))
        }
        (p, g, c) => {
            let present = [p.is_some(), g.is_some(), c.is_some()];
            let missing: Vec<&str> = present.into_iter().zip(names).filter_map(|(p, n)| (!p).then_some(n)).collect();
            Err(format!("{} go together: {} missing", names.join(", "), missing.join(" and ")))
        }
    }
}

impl TryFrom<Wire> for NodeState {
    type Error = String;

    fn try_from(w: Wire) -> Result<NodeState, String> {
        let v4 = pool_from(V4_FIELDS, w.pod_cidr, w.gateway, w.cluster_cidr)?;
        let v6 = pool_from(V6_FIELDS, w.pod_cidr_v6, w.gateway_v6, w.cluster_cidr_v6)?;
        let node_ips = w.node_ip.map(IpAddr::V4).into_iter().chain(w.node_ipv6.map(IpAddr::V6)).collect();
        Ok(NodeState {
            version: w.version,
            node: w.node,
            node_ips,
            pools: v4.into_iter().chain(v6).collect(),
            mtu: w.mtu,
            bridge: w.bridge,
            unavailable: w.unavailable,
        })
    }
}

impl From<NodeState> for Wire {
    fn from(s: NodeState) -> Wire {
        let mut w = Wire {
            version: s.version,
            node: s.node,
            node_ip: None,
            node_ipv6: None,
            pod_cidr: None,
            gateway: None,
            cluster_cidr: None,
            pod_cidr_v6: None,
            gateway_v6: None,
            cluster_cidr_v6: None,
            mtu: s.mtu,
            bridge: s.bridge,
            unavailable: s.unavailable,
        };
        for ip in s.node_ips {
            match ip {
                IpAddr::V4(v4) => w.node_ip = Some(v4),
                IpAddr::V6(v6) => w.node_ipv6 = Some(v6),
            }
        }
        // Each field goes where its own family puts it: a pool whose fields mix families leaves
        // both families incomplete, and such a file is refused when read.
        for p in s.pools {
            match p.pod_cidr {
                IpNet::V4(n) => w.pod_cidr = Some(n),
                IpNet::V6(n) => w.pod_cidr_v6 = Some(n),
            }
            match p.gateway {
                IpAddr::V4(g) => w.gateway = Some(g),
                IpAddr::V6(g) => w.gateway_v6 = Some(g),
            }
            match p.cluster_cidr {
                IpNet::V4(c) => w.cluster_cidr = Some(c),
                IpNet::V6(c) => w.cluster_cidr_v6 = Some(c),
            }
        }
        w
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read node state file {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("node state file {path} is not valid: {reason}")]
    Invalid { path: String, reason: String },
}

impl StateError {
    /// The file does not exist yet: the agent has not settled the node's PodCIDR.
    pub fn is_missing(&self) -> bool {
        matches!(self, StateError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

impl NodeState {
    pub fn read(path: &Path) -> Result<NodeState, StateError> {
        let bytes = read_regular(path, MAX_STATE_FILE_BYTES)
            .map_err(|source| StateError::Read { path: path.display().to_string(), source })?;
        NodeState::parse(&bytes).map_err(|reason| StateError::Invalid { path: path.display().to_string(), reason })
    }

    /// Decodes and validates the file's content: it is written by another process, so it is
    /// input like any other.
    pub fn parse(bytes: &[u8]) -> Result<NodeState, String> {
        let state: NodeState = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        state.validate()?;
        Ok(state)
    }

    /// Writes the file atomically, as it is: the reader validates it.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("state always serializes");
        bytes.push(b'\n');
        write_atomic(path, &bytes)
    }

    /// Consistency a reader can rely on; a file that fails this is never used.
    pub fn validate(&self) -> Result<(), String> {
        if self.version != STATE_FILE_VERSION {
            return Err(format!("unsupported version {}", self.version));
        }
        if self.pools.is_empty() {
            return Err("no podCIDR of either family (podCIDR, podCIDRv6)".into());
        }
        if self.node_ips.is_empty() {
            return Err("no node address of either family (nodeIP, nodeIPv6)".into());
        }
        if self.node_ips.iter().any(|a| self.node_ips.iter().filter(|b| a.is_ipv4() == b.is_ipv4()).count() > 1) {
            return Err("two node addresses of one family".into());
        }
        for pool in &self.pools {
            let family = pool.pod_cidr.addr().is_ipv4();
            if self.pools.iter().filter(|p| p.pod_cidr.addr().is_ipv4() == family).count() > 1 {
                return Err(format!("two pools of the family of {}", pool.pod_cidr));
            }
            pool.validate()?;
        }
        crate::config::check_mtu(self.mtu)?;
        weft_overlay::rules::check_ifname(&self.bridge).map_err(|e| format!("bridge: {e}"))?;
        if let Some(reason) = &self.unavailable {
            check_reason(reason).map_err(|e| format!("unavailable: {e}"))?;
        }
        Ok(())
    }

    /// The pool of the family of `ip`, if the node has one.
    pub fn pool_of(&self, ip: IpAddr) -> Option<&NodePool> {
        self.pools.iter().find(|p| p.pod_cidr.addr().is_ipv4() == ip.is_ipv4())
    }
}

impl NodePool {
    /// One family's fields: a sane PodCIDR inside its cluster CIDR, the gateway a host of it.
    /// Errors start with the field's wire name.
    pub fn validate(&self) -> Result<(), String> {
        let [pod, gateway, cluster] = field_names(&self.pod_cidr);
        let family = self.pod_cidr.addr().is_ipv4();
        if self.gateway.is_ipv4() != family || self.cluster_cidr.addr().is_ipv4() != family {
            return Err(format!("{pod} {}: {gateway} and {cluster} must be of its family", self.pod_cidr));
        }
        crate::config::check_pod_cidr(self.pod_cidr).map_err(|e| format!("{pod} {e}"))?;
        if self.cluster_cidr != self.cluster_cidr.trunc() {
            return Err(format!("{cluster} {} has host bits set", self.cluster_cidr));
        }
        if !self.cluster_cidr.contains(&self.pod_cidr) {
            return Err(format!("{pod} {} is outside {cluster} {}", self.pod_cidr, self.cluster_cidr));
        }
        crate::config::check_gateway(&self.pod_cidr, self.gateway).map_err(|e| format!("{gateway} {e}"))
    }
}

/// The reason is shown to operators in error messages and logs: one bounded line of text.
fn check_reason(reason: &str) -> Result<(), String> {
    if reason.trim().is_empty() {
        return Err("the reason is empty".into());
    }
    if reason.len() > MAX_REASON_BYTES {
        return Err(format!("the reason is longer than {MAX_REASON_BYTES} bytes"));
    }
    if reason.chars().any(char::is_control) {
        return Err("the reason contains control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(pod: &str, gateway: &str, cluster: &str) -> NodePool {
        NodePool {
            pod_cidr: pod.parse().unwrap(),
            gateway: gateway.parse().unwrap(),
            cluster_cidr: cluster.parse().unwrap(),
        }
    }

    fn sample() -> NodeState {
        NodeState {
            version: 1,
            node: "node-a".into(),
            node_ips: vec!["192.0.2.10".parse().unwrap()],
            pools: vec![pool("10.244.3.0/24", "10.244.3.1", "10.244.0.0/16")],
            mtu: 1450,
            bridge: "cni0".into(),
            unavailable: None,
        }
    }

    fn dual() -> NodeState {
        NodeState {
            node_ips: vec!["192.0.2.10".parse().unwrap(), "2001:db8::10".parse().unwrap()],
            pools: vec![
                pool("10.244.3.0/24", "10.244.3.1", "10.244.0.0/16"),
                pool("fd00:10:244:3::/64", "fd00:10:244:3::1", "fd00:10:244::/56"),
            ],
            ..sample()
        }
    }

    #[test]
    fn a_file_of_the_previous_agent_still_parses() {
        // Written by the IPv4-only agent before dual-stack: every IPv4 field, no IPv6 one.
        let old = br#"{"version": 1, "node": "node-a", "nodeIP": "192.0.2.10", "podCIDR": "10.244.3.0/24",
            "gateway": "10.244.3.1", "clusterCIDR": "10.244.0.0/16", "mtu": 1450, "bridge": "cni0"}"#;
        assert_eq!(NodeState::parse(old), Ok(sample()));
        // And an IPv4-only state is written exactly in that form, for the previous plugin.
        let keys: Vec<String> = serde_json::to_value(sample()).unwrap().as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 8, "{keys:?}");
    }

    #[test]
    fn both_families_parse_and_round_trip() {
        let text = serde_json::to_string(&dual()).unwrap();
        for key in [
            r#""nodeIPv6":"2001:db8::10""#,
            r#""podCIDRv6":"fd00:10:244:3::/64""#,
            r#""gatewayV6":"fd00:10:244:3::1""#,
            r#""clusterCIDRv6":"fd00:10:244::/56""#,
            r#""podCIDR":"10.244.3.0/24""#,
        ] {
            assert!(text.contains(key), "{key} in {text}");
        }
        assert_eq!(NodeState::parse(text.as_bytes()), Ok(dual()));
    }

    #[test]
    fn an_ipv6_only_node_has_no_ipv4_field() {
        let v6 =
            NodeState { node_ips: vec!["2001:db8::10".parse().unwrap()], pools: vec![dual().pools[1]], ..sample() };
        let value = serde_json::to_value(&v6).unwrap();
        for absent in ["nodeIP", "podCIDR", "gateway", "clusterCIDR"] {
            assert!(value.get(absent).is_none(), "{absent}");
        }
        assert_eq!(NodeState::parse(value.to_string().as_bytes()), Ok(v6));
        // IPv4 pods on an IPv6 underlay: the node IPs and the pools are independent.
        let mixed = NodeState { node_ips: vec!["2001:db8::10".parse().unwrap()], ..sample() };
        assert_eq!(mixed.validate(), Ok(()));
    }

    #[test]
    fn each_familys_fields_come_complete_and_consistent() {
        let without = |key: &str| {
            let mut v = serde_json::to_value(dual()).unwrap();
            v.as_object_mut().unwrap().remove(key);
            NodeState::parse(v.to_string().as_bytes()).unwrap_err()
        };
        assert!(without("gatewayV6").contains("gatewayV6 missing"), "{}", without("gatewayV6"));
        assert!(without("clusterCIDR").contains("clusterCIDR missing"), "{}", without("clusterCIDR"));
        let neither = |v: &mut serde_json::Value| {
            for key in ["podCIDR", "gateway", "clusterCIDR", "podCIDRv6", "gatewayV6", "clusterCIDRv6"] {
                v.as_object_mut().unwrap().remove(key);
            }
        };
        let mut v = serde_json::to_value(dual()).unwrap();
        neither(&mut v);
        assert!(NodeState::parse(v.to_string().as_bytes()).unwrap_err().starts_with("no podCIDR"));
        let mut v = serde_json::to_value(dual()).unwrap();
        v.as_object_mut().unwrap().remove("nodeIP");
        v.as_object_mut().unwrap().remove("nodeIPv6");
        assert!(NodeState::parse(v.to_string().as_bytes()).unwrap_err().starts_with("no node address"));
        // An IPv6 value in an IPv4 field, or the other way round, is no state file.
        let swapped =
            serde_json::to_string(&dual()).unwrap().replace(r#""gateway":"10.244.3.1""#, r#""gateway":"fd00::1""#);
        assert!(NodeState::parse(swapped.as_bytes()).is_err());
    }

    #[test]
    fn each_family_is_validated_naming_its_fields() {
        let with_v6 = |pod: &str, gw: &str, cluster: &str| {
            let mut s = dual();
            s.pools[1] = pool(pod, gw, cluster);
            s.validate().unwrap_err()
        };
        assert!(with_v6("fd00:10:244:3::/64", "fd00:10:244:4::1", "fd00:10:244::/56").starts_with("gatewayV6"));
        assert!(with_v6("fd00:10:245::/64", "fd00:10:245::1", "fd00:10:244::/56").starts_with("podCIDRv6"));
        assert!(with_v6("fd00:10:244:3::/127", "fd00:10:244:3::1", "fd00:10:244::/56").starts_with("podCIDRv6"));
        assert!(with_v6("fd00:10:244:3::/64", "fd00:10:244:3::1", "fd00:10:244::1/56").starts_with("clusterCIDRv6"));
        assert!(with_v6("fd00:10:244:3::/64", "10.244.3.1", "fd00:10:244::/56").contains("must be of its family"));
        let mut two = dual();
        two.pools[1] = two.pools[0];
        assert!(two.validate().unwrap_err().starts_with("two pools"));
        let mut mixed = sample();
        mixed.pools[0].gateway = "fd00:10:244:3::1".parse().unwrap();
        let text = serde_json::to_string(&mixed).unwrap();
        assert!(NodeState::parse(text.as_bytes()).unwrap_err().contains("missing"), "{text}");
    }

    #[test]
    fn uses_the_field_names_of_the_spec() {
        let v = serde_json::to_value(sample()).unwrap();
        for key in ["version", "node", "nodeIP", "podCIDR", "gateway", "clusterCIDR", "mtu", "bridge"] {
            assert!(v.get(key).is_some(), "{key} missing");
        }
    }

    #[test]
    fn write_then_read_round_trips() {
        let path = std::env::temp_dir().join(format!("weft-state-{}.json", rand::random::<u64>()));
        sample().write(&path).unwrap();
        assert_eq!(NodeState::read(&path).unwrap(), sample());
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn missing_file_is_reported_as_missing() {
        let err = NodeState::read(Path::new("/nonexistent/weft/node.json")).unwrap_err();
        assert!(err.is_missing());
    }

    #[test]
    fn inconsistent_state_is_rejected() {
        let mut s = sample();
        s.pools[0].gateway = "10.244.4.1".parse().unwrap();
        assert!(s.validate().is_err());
        let mut s = sample();
        s.pools[0].pod_cidr = "10.245.0.0/24".parse().unwrap();
        assert!(s.validate().is_err());
        let mut s = sample();
        s.mtu = 10;
        assert!(s.validate().is_err());
    }

    #[test]
    fn an_unavailable_reason_must_be_one_bounded_line() {
        let with = |reason: &str| NodeState { unavailable: Some(reason.into()), ..sample() };
        assert_eq!(with("confirming the block after a restart").validate(), Ok(()));
        assert_eq!(with(&"é".repeat(MAX_REASON_BYTES / 2)).validate(), Ok(()));
        for bad in ["", "  ", "two\nlines", "bell\u{7}", "esc\u{1b}[31m", &"x".repeat(MAX_REASON_BYTES + 1)] {
            assert!(with(bad).validate().is_err(), "{bad:?}");
        }
        let text = serde_json::to_string(&with("taken")).unwrap();
        assert!(text.contains(r#""unavailable":"taken""#), "{text}");
        assert!(!serde_json::to_string(&sample()).unwrap().contains("unavailable"), "absent when None");
    }

    #[test]
    fn a_state_file_that_is_not_a_regular_file_is_refused() {
        for path in ["/dev/zero", "/proc/self"] {
            let err = NodeState::read(Path::new(path)).unwrap_err();
            assert!(!err.is_missing() && err.to_string().contains("not a regular file"), "{path}: {err}");
        }
    }

    #[test]
    fn a_pod_cidr_that_is_no_sane_unicast_block_is_rejected() {
        let mut s = sample();
        s.pools[0] = pool("0.0.0.0/0", "0.0.0.1", "0.0.0.0/0");
        assert!(s.validate().unwrap_err().starts_with("podCIDR"));
    }

    #[test]
    fn cidrs_with_host_bits_are_rejected() {
        // Found by the state_file fuzz target: such a PodCIDR became the plugin's pool as is.
        let text = serde_json::to_string(&sample()).unwrap().replace("10.244.3.0/24", "10.244.3.0/22");
        assert_eq!(
            NodeState::parse(text.as_bytes()).unwrap_err(),
            "podCIDR 10.244.3.0/22 has host bits set (the network is 10.244.0.0/22)"
        );
        let mut s = sample();
        s.pools[0].cluster_cidr = "10.244.0.1/16".parse().unwrap();
        assert!(s.validate().is_err());
    }
}
