//! The network configuration on stdin, and the effective network it resolves to once the node
//! state file is consulted. Explicit configuration beats the state file.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{CniError, Code};
use crate::ipam::pool::Pool;
use weft_overlay::rules::{DEFAULT_BRIDGE, MAX_MTU, MIN_MTU, check_ifname, mtu_in_range};

use crate::names::validate_id;
use crate::result::Dns;
#[cfg(test)]
use crate::state::NodePool;
use crate::state::{DEFAULT_STATE_FILE, NodeState};
use crate::version::CniVersion;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/weft";
/// Without an agent and without `mtu`, pods get a plain Ethernet MTU.
pub const DEFAULT_MTU: u32 = 1500;

/// One plugin entry of a conflist, with the fields the runtime injects.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    pub bridge: Option<String>,
    pub state_file: Option<PathBuf>,
    #[serde(rename = "podCIDR", alias = "podcidr", alias = "subnet")]
    pub pod_cidr: Option<String>,
    pub gateway: Option<String>,
    /// "IPv4", "IPv6": the families the pod gets; default every family the node has a pool for.
    #[serde(rename = "ipFamilies")]
    pub ip_families: Option<Vec<String>>,
    pub mtu: Option<u32>,
    pub data_dir: Option<PathBuf>,
    pub ipam: Option<Value>,
    #[serde(default)]
    pub hairpin_mode: bool,
    pub log_file: Option<PathBuf>,
    pub log_level: Option<String>,
    #[serde(default)]
    pub dns: Dns,
    pub prev_result: Option<Value>,
    pub runtime_config: Option<Value>,
    pub args: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

/// An attachment the runtime still considers live (GC input).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The parsed request body: the raw JSON (passed on to a delegated IPAM plugin) and its typed form.
#[derive(Debug, Clone)]
pub struct Request {
    pub raw: Vec<u8>,
    pub version: CniVersion,
    pub conf: NetConf,
}

/// Where addresses come from. Either way the network's store `dataDir/<network name>` records
/// which attachments the network has on this node (GC finds their veths through it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpamMode {
    /// weft's own store hands out the addresses.
    BuiltIn { store_dir: PathBuf },
    /// Another IPAM plugin, run from CNI_PATH, hands out the addresses.
    Delegate { plugin: String, store_dir: PathBuf },
}

impl IpamMode {
    pub fn store_dir(&self) -> &Path {
        match self {
            IpamMode::BuiltIn { store_dir } | IpamMode::Delegate { store_dir, .. } => store_dir,
        }
    }
}

/// Everything ADD and CHECK need to know about the network on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub name: String,
    pub bridge: String,
    pub mtu: u32,
    pub hairpin: bool,
    pub ipam: IpamMode,
    /// The node's PodCIDR and gateway per family, IPv4 first; with built-in IPAM the pools the
    /// pod gets an address from (never empty then), with a delegate whatever the node has.
    pub pools: Vec<Pool>,
    pub dns: Dns,
    /// Why the node must not hand out addresses from `pool` now (the state file's `unavailable`).
    pub unavailable: Option<String>,
}

impl Network {
    /// ADD and STATUS: may this node give out addresses now? The message says why not.
    pub fn check_available(&self) -> Result<(), String> {
        match &self.unavailable {
            Some(reason) if !self.pools.is_empty() => {
                let nets: Vec<String> = self.pools.iter().map(|p| p.net.to_string()).collect();
                Err(format!("this node cannot give out addresses from {}: {reason}", nets.join(", ")))
            }
            _ => Ok(()),
        }
    }
}

/// Reads the version first, so that even a body that fails to decode gets an answer in its version.
pub fn peek_version(raw: &[u8]) -> Option<CniVersion> {
    let value: Value = serde_json::from_slice(raw).ok()?;
    value.get("cniVersion")?.as_str()?.parse().ok()
}

impl Request {
    pub fn parse(raw: Vec<u8>) -> Result<Request, CniError> {
        let value: Value =
            serde_json::from_slice(&raw).context_code(Code::DecodeFailure, "network config is not valid JSON")?;
        let version_str = value
            .get("cniVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| CniError::new(Code::DecodeFailure, "network config has no cniVersion string"))?;
        let version: CniVersion = version_str
            .parse()
            .map_err(|e| CniError::new(Code::IncompatibleVersion, "incompatible CNI version").with_details(e))?;
        let conf = NetConf::deserialize(&value).context_code(Code::DecodeFailure, "cannot decode network config")?;
        validate_id("network name", &conf.name).map_err(|e| CniError::new(Code::InvalidConfig, e))?;
        Ok(Request { raw, version, conf })
    }
}

impl NetConf {
    pub fn state_file(&self) -> &Path {
        self.state_file.as_deref().unwrap_or(Path::new(DEFAULT_STATE_FILE))
    }

    /// Resolves the effective network. Built-in IPAM needs the node's PodCIDR: static `podCIDR`,
    /// else the agent's state file. A delegated IPAM plugin brings its own range, so then the
    /// state file only contributes MTU and bridge, when it exists.
    pub fn resolve(&self) -> Result<Network, CniError> {
        let invalid = |msg: String| CniError::new(Code::InvalidConfig, msg);
        let ipam = self.ipam_mode()?;
        let state = match (&self.pod_cidr, &ipam) {
            (Some(_), _) => None,
            (None, IpamMode::Delegate { .. }) => NodeState::read(self.state_file()).ok(),
            (None, IpamMode::BuiltIn { .. }) => Some(NodeState::read(self.state_file()).map_err(|e| {
                let code = if e.is_missing() { Code::TryAgainLater } else { Code::InvalidConfig };
                CniError::new(code, "the node's PodCIDR is not known yet (no podCIDR in config, no node state)")
                    .with_details(e)
            })?),
        };
        let pools = self.pools(state.as_ref())?;
        let pools = match (&self.ip_families, &ipam) {
            (None, _) => pools,
            (Some(_), IpamMode::Delegate { .. }) => {
                return Err(invalid(
                    "ipFamilies applies to weft's own IPAM; with ipam.type the IPAM plugin's ranges choose the families"
                        .into(),
                ));
            }
            (Some(families), IpamMode::BuiltIn { .. }) => select_families(families, pools).map_err(invalid)?,
        };
        // Only a pool taken from the state file is the agent's to withhold; a static one is not.
        let unavailable = match (&ipam, &state) {
            (IpamMode::BuiltIn { .. }, Some(state)) => state.unavailable.clone(),
            _ => None,
        };
        let mtu = self.mtu.or(state.as_ref().map(|s| s.mtu)).unwrap_or(DEFAULT_MTU);
        check_mtu(mtu).map_err(invalid)?;
        let bridge = self.bridge_name(state.as_ref());
        check_ifname(&bridge).map_err(|e| invalid(format!("bridge: {e}")))?;
        Ok(Network {
            name: self.name.clone(),
            bridge,
            mtu,
            hairpin: self.hairpin_mode,
            ipam,
            pools,
            dns: self.dns.clone(),
            unavailable,
        })
    }

    /// The node's pools: the configured `podCIDR` list, else the state file's; each gateway the
    /// configured one of its family, else the state file's, else the block's first host.
    fn pools(&self, state: Option<&NodeState>) -> Result<Vec<Pool>, CniError> {
        let invalid = |msg: String| CniError::new(Code::InvalidConfig, msg);
        let nets = match (&self.pod_cidr, state) {
            (Some(text), _) => parse_list("podCIDR", text, parse_pod_cidr, |n| n.addr().is_ipv4())?,
            (None, Some(state)) => state.pools.iter().map(|p| p.pod_cidr).collect(),
            (None, None) => Vec::new(),
        };
        let gateways = match &self.gateway {
            Some(text) => parse_list("gateway", text, parse_address, IpAddr::is_ipv4)?,
            None => Vec::new(),
        };
        if let Some(gw) = gateways.iter().find(|gw| !nets.iter().any(|n| n.addr().is_ipv4() == gw.is_ipv4())) {
            return Err(invalid(format!("gateway {gw}: there is no podCIDR of its family")));
        }
        let mut pools: Vec<Pool> = nets
            .into_iter()
            .map(|net| {
                let configured = gateways.iter().find(|gw| gw.is_ipv4() == net.addr().is_ipv4()).copied();
                let from_state = || state.and_then(|s| s.pool_of(net.addr())).map(|p| p.gateway);
                let gateway = configured.or_else(from_state).unwrap_or_else(|| first_host(&net));
                check_gateway(&net, gateway).map_err(|e| invalid(format!("gateway {e}")))?;
                Ok(Pool { net, gateway })
            })
            .collect::<Result<_, CniError>>()?;
        pools.sort_by_key(|p| p.net.addr().is_ipv6());
        Ok(pools)
    }

    /// The bridge: configured, else the agent's, else `cni0`.
    pub fn bridge_name(&self, state: Option<&NodeState>) -> String {
        self.bridge.clone().or_else(|| state.map(|s| s.bridge.clone())).unwrap_or_else(|| DEFAULT_BRIDGE.to_string())
    }

    pub fn ipam_mode(&self) -> Result<IpamMode, CniError> {
        match &self.ipam {
            None => Ok(self.built_in_ipam()),
            Some(Value::Object(map)) if map.is_empty() => Ok(self.built_in_ipam()),
            Some(Value::Object(map)) => match map.get("type").and_then(Value::as_str) {
                Some(plugin) if validate_id("ipam type", plugin).is_ok() => {
                    Ok(IpamMode::Delegate { plugin: plugin.to_string(), store_dir: self.store_dir() })
                }
                _ => Err(CniError::new(Code::InvalidConfig, "ipam.type must name an IPAM plugin")),
            },
            Some(_) => Err(CniError::new(Code::InvalidConfig, "ipam must be an object")),
        }
    }

    fn built_in_ipam(&self) -> IpamMode {
        IpamMode::BuiltIn { store_dir: self.store_dir() }
    }

    fn store_dir(&self) -> PathBuf {
        self.data_dir.as_deref().unwrap_or(Path::new(DEFAULT_DATA_DIR)).join(&self.name)
    }
}

/// A comma-separated list with at most one entry per family (like the agent's `--cluster-cidr`).
fn parse_list<T>(
    field: &str,
    text: &str,
    parse: impl Fn(&str) -> Result<T, CniError>,
    is_ipv4: impl Fn(&T) -> bool,
) -> Result<Vec<T>, CniError> {
    let items = text.split(',').map(|item| parse(item.trim())).collect::<Result<Vec<T>, CniError>>()?;
    let v4 = items.iter().filter(|i| is_ipv4(i)).count();
    if v4 > 1 || items.len() - v4 > 1 {
        return Err(CniError::new(
            Code::InvalidConfig,
            format!("{field} {text:?}: at most one per family (one IPv4 and one IPv6)"),
        ));
    }
    Ok(items)
}

fn parse_pod_cidr(text: &str) -> Result<IpNet, CniError> {
    let net = text
        .parse::<IpNet>()
        .map_err(|e| CniError::new(Code::InvalidConfig, format!("podCIDR {text:?} is not a CIDR")).with_details(e))?;
    check_pod_cidr(net).map_err(|e| CniError::new(Code::InvalidConfig, format!("podCIDR {e}")))?;
    Ok(net)
}

/// Ranges no pod may be addressed from: "this network", loopback, link-local, multicast,
/// reserved (IPv4); unspecified, loopback, link-local, multicast (IPv6).
const NOT_FOR_PODS: [&str; 9] = [
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "fe80::/10",
    "ff00::/8",
];

/// A pod CIDR is an exact network (no host bits: a typo must not silently move the pool), of
/// unicast addresses, big enough for a gateway and a pod and small enough not to swallow the
/// node's own routes (IPv4 /8 to /30, IPv6 /48 to /126). Errors start with the CIDR.
pub fn check_pod_cidr(net: IpNet) -> Result<(), String> {
    if net != net.trunc() {
        return Err(format!("{net} has host bits set (the network is {})", net.trunc()));
    }
    let (shortest, longest) = match net {
        IpNet::V4(_) => (8, 30),
        IpNet::V6(_) => (48, 126),
    };
    if !(shortest..=longest).contains(&net.prefix_len()) {
        return Err(format!("{net} must have a prefix length from /{shortest} to /{longest}"));
    }
    let special = NOT_FOR_PODS.iter().map(|r| r.parse::<IpNet>().expect("literal CIDR"));
    if let Some(range) = special.into_iter().find(|r| r.contains(&net) || net.contains(r)) {
        return Err(format!("{net} overlaps {range}, which is not for unicast pod addresses"));
    }
    Ok(())
}

fn parse_address(text: &str) -> Result<IpAddr, CniError> {
    text.parse::<IpAddr>()
        .map_err(|e| CniError::new(Code::InvalidConfig, format!("gateway {text:?} is not an address")).with_details(e))
}

/// The pod's families from `ipFamilies` ("IPv4", "IPv6", Kubernetes' spelling): each must name a
/// family the node has a pool for, once.
fn select_families(families: &[String], pools: Vec<Pool>) -> Result<Vec<Pool>, String> {
    if families.is_empty() {
        return Err("ipFamilies is empty: list IPv4, IPv6 or both, or leave it out".into());
    }
    let mut wanted = Vec::new();
    for family in families {
        let v4 = match family.as_str() {
            "IPv4" => true,
            "IPv6" => false,
            other => return Err(format!("ipFamilies: {other:?} is neither IPv4 nor IPv6")),
        };
        if wanted.contains(&v4) {
            return Err(format!("ipFamilies lists {family} twice"));
        }
        if !pools.iter().any(|p| p.net.addr().is_ipv4() == v4) {
            return Err(format!("ipFamilies asks for {family}, but the node has no {family} pool"));
        }
        wanted.push(v4);
    }
    Ok(pools.into_iter().filter(|p| wanted.contains(&p.net.addr().is_ipv4())).collect())
}

pub use weft_overlay::rules::first_host;

/// The gateway is a host of its pool (neither its first nor its last address). Errors start
/// with the gateway, for the caller to prefix with its field name.
pub fn check_gateway(pod_cidr: &IpNet, gateway: IpAddr) -> Result<(), String> {
    if !pod_cidr.contains(&gateway) || gateway == pod_cidr.network() || gateway == pod_cidr.broadcast() {
        return Err(format!("{gateway} is not a host address of {pod_cidr}"));
    }
    Ok(())
}

pub fn check_mtu(mtu: u32) -> Result<(), String> {
    if !mtu_in_range(mtu) {
        return Err(format!("mtu {mtu} is outside {MIN_MTU}..={MAX_MTU}"));
    }
    Ok(())
}

trait ContextCode<T> {
    fn context_code(self, code: Code, msg: &str) -> Result<T, CniError>;
}

impl<T> ContextCode<T> for Result<T, serde_json::Error> {
    fn context_code(self, code: Code, msg: &str) -> Result<T, CniError> {
        self.map_err(|e| CniError::new(code, msg).with_details(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Request, CniError> {
        Request::parse(serde_json::to_vec(&v).unwrap())
    }

    fn base() -> Value {
        json!({"cniVersion":"1.0.0","name":"weft","type":"weft","podCIDR":"10.244.3.0/24"})
    }

    #[test]
    fn minimal_static_config_resolves_with_defaults() {
        let net = parse(base()).unwrap().conf.resolve().unwrap();
        assert_eq!(net.bridge, "cni0");
        let pool = net.pools[0];
        assert_eq!(pool.net.to_string(), "10.244.3.0/24");
        assert_eq!(pool.gateway.to_string(), "10.244.3.1");
        assert_eq!(net.mtu, 1500);
        assert_eq!(net.ipam, IpamMode::BuiltIn { store_dir: "/var/lib/cni/weft/weft".into() });
        assert!(!net.hairpin);
    }

    #[test]
    fn pod_cidr_aliases_are_accepted() {
        for key in ["podcidr", "subnet"] {
            let mut v = base();
            v.as_object_mut().unwrap().remove("podCIDR");
            v[key] = "10.244.9.0/24".into();
            assert_eq!(parse(v).unwrap().conf.resolve().unwrap().pools[0].net.to_string(), "10.244.9.0/24");
        }
    }

    #[test]
    fn every_field_is_read() {
        let v = json!({"cniVersion":"0.4.0","name":"n1","type":"weft","bridge":"br9","podCIDR":"10.244.3.0/24",
            "gateway":"10.244.3.254","mtu":1400,"dataDir":"/tmp/d","hairpinMode":true,
            "logFile":"/tmp/l","logLevel":"debug","dns":{"nameservers":["1.1.1.1"]},"stateFile":"/tmp/s.json"});
        let req = parse(v).unwrap();
        assert_eq!(req.version, CniVersion::V0_4_0);
        assert_eq!(req.conf.log_level.as_deref(), Some("debug"));
        assert_eq!(req.conf.state_file(), Path::new("/tmp/s.json"));
        let net = req.conf.resolve().unwrap();
        assert_eq!((net.bridge.as_str(), net.mtu, net.hairpin), ("br9", 1400, true));
        assert_eq!(net.pools[0].gateway.to_string(), "10.244.3.254");
        assert_eq!(net.dns.nameservers, vec!["1.1.1.1".to_string()]);
        assert_eq!(net.ipam, IpamMode::BuiltIn { store_dir: "/tmp/d/n1".into() });
    }

    #[test]
    fn conflist_injected_fields_are_accepted() {
        let mut v = base();
        v["prevResult"] = json!({"cniVersion":"1.0.0","ips":[]});
        v["runtimeConfig"] = json!({"portMappings":[]});
        v["args"] = json!({"cni":{}});
        v["cni.dev/valid-attachments"] = json!([{"containerID":"c1","ifname":"eth0"}]);
        let conf = parse(v).unwrap().conf;
        assert_eq!(conf.valid_attachments.unwrap()[0].container_id, "c1");
        assert!(conf.prev_result.is_some());
    }

    #[test]
    fn errors_carry_the_right_codes() {
        let cases: Vec<(Value, Code)> = vec![
            (json!({"cniVersion":"0.2.0","name":"weft","type":"weft"}), Code::IncompatibleVersion),
            (json!({"name":"weft","type":"weft"}), Code::DecodeFailure),
            (json!({"cniVersion":"1.0.0","type":"weft"}), Code::DecodeFailure),
            (json!({"cniVersion":"1.0.0","name":"a/b","type":"weft"}), Code::InvalidConfig),
            (json!({"cniVersion":"1.0.0","name":"weft","type":"weft","mtu":"big"}), Code::DecodeFailure),
        ];
        for (v, code) in cases {
            assert_eq!(parse(v.clone()).unwrap_err().code, code as u32, "{v}");
        }
        assert_eq!(Request::parse(b"{not json".to_vec()).unwrap_err().code, Code::DecodeFailure as u32);
    }

    #[test]
    fn bad_values_are_invalid_config() {
        let cases: Vec<(&str, Value, Code)> = vec![
            ("podCIDR", "10.244.3.0/31".into(), Code::InvalidConfig),
            ("podCIDR", "banana".into(), Code::InvalidConfig),
            ("gateway", "10.244.4.1".into(), Code::InvalidConfig),
            ("gateway", "10.244.3.0".into(), Code::InvalidConfig),
            ("gateway", "10.244.3.255".into(), Code::InvalidConfig),
            ("gateway", "fd00::1".into(), Code::InvalidConfig),
            ("mtu", 20.into(), Code::InvalidConfig),
            ("bridge", "a-name-much-too-long".into(), Code::InvalidConfig),
            ("ipam", json!({"subnet":"10.0.0.0/24"}), Code::InvalidConfig),
            ("ipam", json!("host-local"), Code::InvalidConfig),
        ];
        for (key, value, code) in cases {
            let mut v = base();
            v[key] = value.clone();
            let err = parse(v).unwrap().conf.resolve().unwrap_err();
            assert_eq!(err.code, code as u32, "{key}={value}: {err}");
        }
    }

    fn dual_stack() -> Value {
        json!({"cniVersion":"1.0.0","name":"weft","type":"weft","podCIDR":"10.244.3.0/24,fd00:10:244:3::/64"})
    }

    fn resolve_with(mut v: Value, key: &str, value: Value) -> Result<Network, CniError> {
        v[key] = value;
        parse(v).unwrap().conf.resolve()
    }

    #[test]
    fn a_pod_cidr_list_gives_a_pool_per_family_ipv4_first() {
        for text in ["10.244.3.0/24,fd00:10:244:3::/64", " fd00:10:244:3::/64 , 10.244.3.0/24"] {
            let net = resolve_with(base(), "podCIDR", text.into()).unwrap();
            let pools: Vec<String> = net.pools.iter().map(|p| format!("{} via {}", p.net, p.gateway)).collect();
            assert_eq!(pools, ["10.244.3.0/24 via 10.244.3.1", "fd00:10:244:3::/64 via fd00:10:244:3::1"], "{text}");
        }
        let net = resolve_with(dual_stack(), "gateway", "fd00:10:244:3::fe,10.244.3.254".into()).unwrap();
        assert_eq!(net.pools[0].gateway.to_string(), "10.244.3.254");
        assert_eq!(net.pools[1].gateway.to_string(), "fd00:10:244:3::fe");
        let net = resolve_with(dual_stack(), "gateway", "fd00:10:244:3::fe".into()).unwrap();
        assert_eq!(net.pools[0].gateway.to_string(), "10.244.3.1", "a family without one gets the first host");
        let v6_only = resolve_with(base(), "podCIDR", "fd00:10:244:3::/64".into()).unwrap();
        assert_eq!(v6_only.pools.len(), 1);
    }

    #[test]
    fn bad_lists_are_invalid_config_naming_the_field() {
        let cases: Vec<(&str, &str, &str)> = vec![
            ("podCIDR", "10.244.3.0/24,10.244.4.0/24", "podCIDR"),
            ("podCIDR", "fd00:10:244:3::/64,fd00:10:244:4::/64", "podCIDR"),
            ("podCIDR", "10.244.3.0/24,", "podCIDR"),
            ("podCIDR", "10.244.3.0/24,fd00:10:244:3::/64,10.244.4.0/24", "podCIDR"),
            (
                "podCIDR",
                "10.244.3.0/24,fd00:10:200::/40",
                "podCIDR fd00:10:200::/40 must have a prefix length from /48",
            ),
            ("podCIDR", "10.244.3.0/24,fd00:10:244:3::/127", "podCIDR fd00:10:244:3::/127"),
            ("podCIDR", "10.244.3.0/24,fd00:10:244:3::1/64", "podCIDR fd00:10:244:3::1/64 has host bits set"),
            ("podCIDR", "10.244.3.0/24,fe80::/64", "podCIDR fe80::/64 overlaps"),
            ("gateway", "10.244.3.1,10.244.3.2", "gateway"),
            ("gateway", "fd00:10:244:4::1", "gateway fd00:10:244:4::1 is not a host address"),
            ("gateway", "fd00:10:244:3::", "gateway fd00:10:244:3:: is not a host address"),
            ("gateway", "10.244.3.1,fd00::zz", "gateway \"fd00::zz\""),
        ];
        for (key, value, msg) in cases {
            let err = resolve_with(dual_stack(), key, value.into()).unwrap_err();
            assert_eq!(err.code, Code::InvalidConfig as u32, "{key}={value}: {err}");
            assert!(err.msg.starts_with(msg), "{key}={value}: {err}");
        }
        let err = resolve_with(base(), "gateway", "fd00::1".into()).unwrap_err();
        assert_eq!(err.msg, "gateway fd00::1: there is no podCIDR of its family");
    }

    #[test]
    fn ip_families_chooses_among_the_nodes_pools() {
        let families = |list: Value| resolve_with(dual_stack(), "ipFamilies", list);
        let nets = |net: Network| net.pools.iter().map(|p| p.net.to_string()).collect::<Vec<_>>();
        assert_eq!(nets(families(json!(["IPv6"])).unwrap()), ["fd00:10:244:3::/64"]);
        assert_eq!(nets(families(json!(["IPv4"])).unwrap()), ["10.244.3.0/24"]);
        assert_eq!(nets(families(json!(["IPv6", "IPv4"])).unwrap()).len(), 2);
        assert_eq!(nets(parse(dual_stack()).unwrap().conf.resolve().unwrap()).len(), 2, "default: every pool");
        for (list, msg) in [
            (json!([]), "ipFamilies is empty"),
            (json!(["ipv6"]), "ipFamilies: \"ipv6\" is neither"),
            (json!(["IPv4", "IPv4"]), "ipFamilies lists IPv4 twice"),
        ] {
            let err = families(list.clone()).unwrap_err();
            assert_eq!((err.code, err.msg.starts_with(msg)), (Code::InvalidConfig as u32, true), "{list}: {err}");
        }
        let err = resolve_with(base(), "ipFamilies", json!(["IPv4", "IPv6"])).unwrap_err();
        assert_eq!(err.code, Code::InvalidConfig as u32);
        assert_eq!(err.msg, "ipFamilies asks for IPv6, but the node has no IPv6 pool");
        let mut delegated = base();
        delegated["ipam"] = json!({"type":"host-local"});
        assert!(resolve_with(delegated, "ipFamilies", json!(["IPv4"])).unwrap_err().msg.starts_with("ipFamilies"));
    }

    #[test]
    fn a_dual_stack_state_file_gives_both_pools_and_a_config_gateway_overrides_one() {
        let path = std::env::temp_dir().join(format!("weft-conf-{}.json", rand::random::<u64>()));
        let v6 = NodePool {
            pod_cidr: "fd00:10:244:7::/64".parse().unwrap(),
            gateway: "fd00:10:244:7::1".parse().unwrap(),
            cluster_cidr: "fd00:10:244::/56".parse().unwrap(),
        };
        let mut state = NodeState::read(&state_file(None)).unwrap();
        state.pools.push(v6);
        state.write(&path).unwrap();
        let v = json!({"cniVersion":"1.1.0","name":"weft","type":"weft","stateFile":path,"gateway":"fd00:10:244:7::9"});
        let net = parse(v.clone()).unwrap().conf.resolve();
        let mut only_v6 = v;
        only_v6["ipFamilies"] = json!(["IPv6"]);
        let only_v6 = parse(only_v6).unwrap().conf.resolve();
        std::fs::remove_file(&path).unwrap();
        let net = net.unwrap();
        assert_eq!(net.pools[0].gateway.to_string(), "10.244.7.1", "from the state file");
        assert_eq!(net.pools[1].gateway.to_string(), "fd00:10:244:7::9", "from the config");
        assert_eq!(only_v6.unwrap().pools.len(), 1);
    }

    #[test]
    fn host_bits_in_pod_cidr_are_rejected_naming_the_field() {
        let mut v = base();
        v["podCIDR"] = "10.244.3.7/24".into();
        let err = parse(v).unwrap().conf.resolve().unwrap_err();
        assert_eq!(err.code, Code::InvalidConfig as u32);
        assert_eq!(err.msg, "podCIDR 10.244.3.7/24 has host bits set (the network is 10.244.3.0/24)");
    }

    #[test]
    fn a_pod_cidr_must_be_a_sane_unicast_block() {
        for ok in ["10.0.0.0/8", "10.244.3.0/30", "192.168.0.0/16", "fd00:10:244:1::/64", "2001:db8::/48"] {
            assert_eq!(check_pod_cidr(ok.parse().unwrap()), Ok(()), "{ok}");
        }
        for bad in [
            "0.0.0.0/0",
            "0.0.0.0/8",
            "10.0.0.0/7",
            "10.244.3.0/31",
            "127.0.0.0/24",
            "169.254.1.0/24",
            "224.0.0.0/24",
            "255.255.255.0/30",
            "::/48",
            "fe80::/64",
            "ff02::/64",
            "fd00::/127",
        ] {
            let err = check_pod_cidr(bad.parse().unwrap()).unwrap_err();
            assert!(err.starts_with(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn ipam_type_selects_delegation_and_empty_ipam_is_built_in() {
        let mut v = base();
        v["ipam"] = json!({"type":"host-local","subnet":"10.244.3.0/24"});
        let delegate = IpamMode::Delegate { plugin: "host-local".into(), store_dir: "/var/lib/cni/weft/weft".into() };
        assert_eq!(parse(v).unwrap().conf.ipam_mode().unwrap(), delegate);
        let mut v = base();
        v["ipam"] = json!({});
        assert!(matches!(parse(v).unwrap().conf.ipam_mode().unwrap(), IpamMode::BuiltIn { .. }));
    }

    fn state_file(unavailable: Option<&str>) -> PathBuf {
        let path = std::env::temp_dir().join(format!("weft-conf-{}.json", rand::random::<u64>()));
        let state = NodeState {
            version: 1,
            node: "n".into(),
            node_ips: vec!["192.0.2.10".parse().unwrap()],
            pools: vec![NodePool {
                pod_cidr: "10.244.7.0/24".parse().unwrap(),
                gateway: "10.244.7.1".parse().unwrap(),
                cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            }],
            mtu: 1450,
            bridge: "cni0".into(),
            unavailable: unavailable.map(String::from),
        };
        state.write(&path).unwrap();
        path
    }

    #[test]
    fn without_pod_cidr_the_state_file_is_used_and_config_overrides_it() {
        let path = state_file(None);
        let v = json!({"cniVersion":"1.1.0","name":"weft","type":"weft","stateFile":path,"mtu":1400});
        let net = parse(v).unwrap().conf.resolve().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(net.pools[0].net.to_string(), "10.244.7.0/24");
        assert_eq!(net.mtu, 1400);
        assert_eq!(net.pools[0].gateway.to_string(), "10.244.7.1");
    }

    #[test]
    fn an_unavailable_node_withholds_the_state_files_pool_but_not_a_static_one() {
        let path = state_file(Some("block 10.244.7.0/24 is owned by node-b"));
        let from_state = json!({"cniVersion":"1.1.0","name":"weft","type":"weft","stateFile":path});
        let net = parse(from_state.clone()).unwrap().conf.resolve().unwrap();
        assert_eq!(
            net.check_available().unwrap_err(),
            "this node cannot give out addresses from 10.244.7.0/24: block 10.244.7.0/24 is owned by node-b"
        );
        let mut static_cidr = from_state.clone();
        static_cidr["podCIDR"] = "10.244.7.0/24".into();
        let mut delegated = from_state;
        delegated["ipam"] = json!({"type":"host-local","subnet":"10.1.0.0/24"});
        for v in [static_cidr, delegated] {
            assert_eq!(parse(v.clone()).unwrap().conf.resolve().unwrap().check_available(), Ok(()), "{v}");
        }
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn missing_state_file_means_try_again_later_and_names_the_file() {
        let v = json!({"cniVersion":"1.1.0","name":"weft","type":"weft","stateFile":"/nonexistent/node.json"});
        let err = parse(v).unwrap().conf.resolve().unwrap_err();
        assert_eq!(err.code, Code::TryAgainLater as u32);
        assert!(err.details.contains("/nonexistent/node.json"), "{err}");
    }

    #[test]
    fn delegated_ipam_needs_no_pod_cidr() {
        let v = json!({"cniVersion":"1.0.0","name":"weft","type":"weft","stateFile":"/nonexistent/node.json",
                       "ipam":{"type":"host-local","subnet":"10.1.0.0/24"}});
        let net = parse(v).unwrap().conf.resolve().unwrap();
        assert!(net.pools.is_empty());
        assert!(matches!(net.ipam, IpamMode::Delegate { plugin, .. } if plugin == "host-local"));
    }

    #[test]
    fn peek_version_survives_undecodable_bodies() {
        assert_eq!(peek_version(br#"{"cniVersion":"0.3.1","mtu":"x"}"#), Some(CniVersion::V0_3_1));
        assert_eq!(peek_version(b"garbage"), None);
    }
}
