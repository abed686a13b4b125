//! The node state file: the agent publishes the node's PodCIDR and MTU here, the plugin reads it.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use ipnet::Ipv4Net;
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
pub struct NodeState {
    pub version: u32,
    pub node: String,
    /// The node's primary underlay address (IPv4 when it has one, else IPv6).
    #[serde(rename = "nodeIP")]
    pub node_ip: IpAddr,
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Ipv4Net,
    pub mtu: u32,
    pub bridge: String,
    /// Set while the node must not hand out addresses from `podCIDR` (the agent is confirming
    /// the block after a restart, another node owns it, or this node's name is taken): why.
    /// ADD and STATUS fail with this reason; DEL, CHECK and GC keep working for existing pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
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
        crate::config::check_pod_cidr(self.pod_cidr.into()).map_err(|e| format!("podCIDR {e}"))?;
        if self.cluster_cidr != self.cluster_cidr.trunc() {
            return Err(format!("clusterCIDR {} has host bits set", self.cluster_cidr));
        }
        if !self.cluster_cidr.contains(&self.pod_cidr) {
            return Err(format!("podCIDR {} is outside clusterCIDR {}", self.pod_cidr, self.cluster_cidr));
        }
        crate::config::check_gateway(&self.pod_cidr, self.gateway)?;
        crate::config::check_mtu(self.mtu)?;
        weft_overlay::rules::check_ifname(&self.bridge).map_err(|e| format!("bridge: {e}"))?;
        if let Some(reason) = &self.unavailable {
            check_reason(reason).map_err(|e| format!("unavailable: {e}"))?;
        }
        Ok(())
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

    fn sample() -> NodeState {
        NodeState {
            version: 1,
            node: "node-a".into(),
            node_ip: "192.0.2.10".parse().unwrap(),
            pod_cidr: "10.244.3.0/24".parse().unwrap(),
            gateway: "10.244.3.1".parse().unwrap(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            mtu: 1450,
            bridge: "cni0".into(),
            unavailable: None,
        }
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
        s.gateway = "10.244.4.1".parse().unwrap();
        assert!(s.validate().is_err());
        let mut s = sample();
        s.pod_cidr = "10.245.0.0/24".parse().unwrap();
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
        (s.pod_cidr, s.cluster_cidr, s.gateway) =
            ("0.0.0.0/0".parse().unwrap(), "0.0.0.0/0".parse().unwrap(), "0.0.0.1".parse().unwrap());
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
        s.cluster_cidr = "10.244.0.1/16".parse().unwrap();
        assert!(s.validate().is_err());
    }
}
