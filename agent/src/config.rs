//! The agent's resolved configuration: flags plus what was detected, checked once at start.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

use weft_overlay::desired::{DEFAULT_VNI, DEFAULT_VXLAN_PORT};
use weft_overlay::rules::max_node_prefix;
use weft_overlay::underlay::{self, Family, NodeIpError, NodeIps};

use crate::cli::{DEFAULT_GOSSIP_PORT, DEFAULT_PHI_THRESHOLD};
use crate::detect::Underlay;
use crate::files::Paths;
use crate::validate::{self, Pool};

/// Period of the dataplane probes: with three failed rounds to confirm a failure, a blocked
/// tunnel is reported within 10 s.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Where peers' pod traffic is encapsulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Encap {
    /// VXLAN to every peer.
    Always,
    /// Route natively to peers inside this node's underlay subnet, VXLAN to the others.
    CrossSubnet,
}

/// Gossip membership settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GossipSettings {
    pub cluster_id: String,
    /// Bound and advertised: the node's primary underlay address (IPv4 when it has one) and
    /// the gossip port.
    pub listen: SocketAddr,
    /// `host:port` of seed nodes.
    pub seeds: Vec<String>,
    pub interval: Duration,
    /// Failure detector threshold: a node is dead once the time since its last heartbeat
    /// exceeds this many mean heartbeat intervals.
    pub phi_threshold: f64,
    /// How long dead (and left) nodes are remembered, keeping their PodCIDRs reserved.
    pub dead_node_grace_period: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub node_name: String,
    pub underlay: Underlay,
    /// Pod MTU (of the VXLAN devices and the bridge).
    pub mtu: u32,
    /// The cluster's pod ranges, at most one per family (IPv4 first): its shape (IPv4-only,
    /// IPv6-only, dual-stack).
    pub cluster_cidrs: Vec<IpNet>,
    /// Block size of IPv4 node blocks.
    pub node_cidr_prefix: u8,
    /// Block size of IPv6 node blocks.
    pub node_cidr_prefix_v6: u8,
    /// Static PodCIDRs, at most one per family; a family without one is allocated through gossip.
    pub pod_cidrs: Vec<IpNet>,
    pub vni: u32,
    pub vxlan_port: u16,
    pub encap: Encap,
    pub gossip: GossipSettings,
    /// Upper bound on waiting for membership to settle after start.
    pub startup_grace: Duration,
    pub resync_interval: Duration,
    /// Period of the dataplane probes of every peer.
    pub probe_interval: Duration,
    /// How long a peer whose agent is gone keeps its routes while its tunnel answers.
    pub agent_down_grace: Duration,
    pub paths: Paths,
    /// Chain the `portmap` plugin in the conflist (hostPort support).
    pub portmap: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("--node-name {name:?}: {reason}")]
    NodeName { name: String, reason: String },
    #[error("--node-ip: {0}")]
    NodeIp(NodeIpError),
    #[error("--cluster-cidr {0} has host bits set")]
    ClusterCidr(IpNet),
    #[error("--cluster-cidr: no CIDR given")]
    NoClusterCidr,
    #[error("{flag}: two {family} CIDRs ({a}, {b}): at most one per family")]
    TwoOfOneFamily { flag: &'static str, family: Family, a: IpNet, b: IpNet },
    #[error("{flag} /{prefix} must be between the cluster CIDR's /{cluster} and /{max}")]
    Prefix { flag: &'static str, prefix: u8, cluster: u8, max: u8 },
    #[error("--pod-cidr {cidr}: {reason}")]
    PodCidr { cidr: IpNet, reason: String },
    #[error("--vni {0} is outside 1..=16777215")]
    Vni(u32),
    #[error("--vxlan-port must not be 0")]
    VxlanPort,
    #[error("MTU: {0}")]
    Mtu(String),
    #[error("an underlay MTU leaves no room for VXLAN's headers (50 bytes over IPv4, 70 over IPv6): {0:?}")]
    UnderlayMtu(Vec<(Family, u32)>),
    #[error("{0} must be positive")]
    ZeroDuration(&'static str),
    #[error("--phi-threshold must be a positive number")]
    Phi,
    #[error("--cluster-id must not be empty")]
    ClusterId,
    #[error("gossip seed {0:?} is not host:port")]
    Seed(String),
}

/// Seeds as chitchat takes them (`host:port`); a seed without a port gets the gossip port.
pub fn normalize_seed(seed: &str, default_port: u16) -> Result<String, ConfigError> {
    let seed = seed.trim();
    if seed.is_empty() {
        return Err(ConfigError::Seed(seed.to_string()));
    }
    if seed.parse::<SocketAddr>().is_ok() {
        return Ok(seed.to_string());
    }
    if let Ok(ip) = seed.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port).to_string());
    }
    match seed.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(seed.to_string()),
        Some(_) => Err(ConfigError::Seed(seed.to_string())),
        None => Ok(format!("{seed}:{default_port}")),
    }
}

/// The pod MTU: explicit, else what VXLAN leaves of the underlay MTUs, the smallest over the
/// underlay families the node has (pods may use either tunnel).
pub fn pod_mtu(explicit: Option<u32>, underlay: &Underlay) -> Result<u32, ConfigError> {
    let mtu = match explicit {
        Some(mtu) => mtu,
        None => {
            underlay::pod_mtu(underlay.mtus()).ok_or_else(|| ConfigError::UnderlayMtu(underlay.mtus().collect()))?
        }
    };
    weft_cni::config::check_mtu(mtu).map_err(ConfigError::Mtu)?;
    Ok(mtu)
}

impl Config {
    /// Every setting of `weft-agent run` at its default (a test in cli.rs keeps the two equal),
    /// for the given node name, underlay, seeds and files. Tests and benchmarks start from this
    /// and change what they need.
    pub fn with_defaults(node_name: &str, underlay: Underlay, seeds: Vec<String>, paths: Paths) -> Config {
        Config {
            node_name: node_name.to_string(),
            mtu: underlay::pod_mtu(underlay.mtus()).unwrap_or(0),
            gossip: GossipSettings {
                cluster_id: "weft".into(),
                listen: SocketAddr::new(underlay.primary().ip, DEFAULT_GOSSIP_PORT),
                seeds,
                interval: Duration::from_millis(100),
                phi_threshold: DEFAULT_PHI_THRESHOLD,
                dead_node_grace_period: Duration::from_secs(3600),
            },
            underlay,
            cluster_cidrs: vec![DEFAULT_CLUSTER_CIDR.parse().expect("valid CIDR")],
            node_cidr_prefix: DEFAULT_NODE_CIDR_PREFIX,
            node_cidr_prefix_v6: DEFAULT_NODE_CIDR_PREFIX_V6,
            pod_cidrs: Vec::new(),
            vni: DEFAULT_VNI,
            vxlan_port: DEFAULT_VXLAN_PORT,
            encap: Encap::Always,
            startup_grace: Duration::from_secs(10),
            resync_interval: Duration::from_secs(30),
            probe_interval: DEFAULT_PROBE_INTERVAL,
            agent_down_grace: Duration::from_secs(300),
            paths,
            portmap: false,
        }
    }

    /// Everything that can be checked without the network or the filesystem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate::check_node_name(&self.node_name)
            .map_err(|reason| ConfigError::NodeName { name: self.node_name.clone(), reason })?;
        NodeIps::new(self.underlay.addrs.iter().map(|a| a.ip)).map_err(ConfigError::NodeIp)?;
        self.validate_pools()?;
        if !(1..=0x00ff_ffff).contains(&self.vni) {
            return Err(ConfigError::Vni(self.vni));
        }
        if self.vxlan_port == 0 {
            return Err(ConfigError::VxlanPort);
        }
        weft_cni::config::check_mtu(self.mtu).map_err(ConfigError::Mtu)?;
        for (name, d) in [
            ("--gossip-interval", self.gossip.interval),
            ("--resync-interval", self.resync_interval),
            ("--probe-interval", self.probe_interval),
            ("--dead-node-grace-period", self.gossip.dead_node_grace_period),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        if !(self.gossip.phi_threshold.is_finite() && self.gossip.phi_threshold > 0.0) {
            return Err(ConfigError::Phi);
        }
        if self.gossip.cluster_id.is_empty() {
            return Err(ConfigError::ClusterId);
        }
        Ok(())
    }

    /// Whether any seed is somebody else: then start-up waits to hear from the cluster.
    pub fn expects_peers(&self) -> bool {
        let me = self.gossip.listen.to_string();
        self.gossip.seeds.iter().any(|s| *s != me)
    }

    /// The cluster's pod shape, checked: at most one range per family without host bits, a
    /// block size per family inside its range (IPv4 /30, IPv6 /64 at most), each static block
    /// an aligned block of its family's range.
    fn validate_pools(&self) -> Result<(), ConfigError> {
        if self.cluster_cidrs.is_empty() {
            return Err(ConfigError::NoClusterCidr);
        }
        // Every node, the datapath and the node state file compare blocks exactly.
        if let Some(cidr) = self.cluster_cidrs.iter().find(|c| c.trunc() != **c) {
            return Err(ConfigError::ClusterCidr(*cidr));
        }
        for (flag, nets) in [("--cluster-cidr", &self.cluster_cidrs), ("--pod-cidr", &self.pod_cidrs)] {
            if let Some((family, a, b)) = twin_family(nets) {
                return Err(ConfigError::TwoOfOneFamily { flag, family, a, b });
            }
        }
        for pool in self.pools() {
            let (cluster, max) = (pool.cluster_cidr.prefix_len(), max_node_prefix(&pool.cluster_cidr));
            if pool.node_prefix < cluster || pool.node_prefix > max {
                let flag = prefix_flag(Family::of_net(&pool.cluster_cidr));
                return Err(ConfigError::Prefix { flag, prefix: pool.node_prefix, cluster, max });
            }
        }
        for cidr in &self.pod_cidrs {
            let family = Family::of_net(cidr);
            let pool = self.pool(family).ok_or_else(|| ConfigError::PodCidr {
                cidr: *cidr,
                reason: format!("the cluster has no {family} range (--cluster-cidr)"),
            })?;
            validate::check_pod_cidr(*cidr, &pool)
                .map_err(|r| ConfigError::PodCidr { cidr: *cidr, reason: r.to_string() })?;
        }
        Ok(())
    }

    /// The cluster's pod ranges with their block sizes, IPv4 first.
    pub fn pools(&self) -> Vec<Pool> {
        let mut pools: Vec<Pool> = self
            .cluster_cidrs
            .iter()
            .map(|c| Pool {
                cluster_cidr: *c,
                node_prefix: match Family::of_net(c) {
                    Family::Ipv4 => self.node_cidr_prefix,
                    Family::Ipv6 => self.node_cidr_prefix_v6,
                },
            })
            .collect();
        pools.sort_by_key(|p| Family::of_net(&p.cluster_cidr));
        pools
    }

    pub fn pool(&self, family: Family) -> Option<Pool> {
        self.pools().into_iter().find(|p| Family::of_net(&p.cluster_cidr) == family)
    }

    /// This node's static block of one family, if configured.
    pub fn static_pod_cidr(&self, family: Family) -> Option<IpNet> {
        self.pod_cidrs.iter().copied().find(|c| Family::of_net(c) == family)
    }

    pub fn rules(&self) -> validate::Rules {
        let pools = self.pools();
        validate::Rules {
            settings: crate::settings::encode(&pools, self.gossip.interval),
            pools,
            vni: self.vni,
            vxlan_port: self.vxlan_port,
            local_node_ips: self.underlay.node_ips(),
        }
    }
}

pub const DEFAULT_CLUSTER_CIDR: &str = "10.244.0.0/16";
pub const DEFAULT_NODE_CIDR_PREFIX: u8 = 24;
/// As Kubernetes allocates IPv6 node blocks.
pub const DEFAULT_NODE_CIDR_PREFIX_V6: u8 = 64;

/// The flag setting the block size of a family.
fn prefix_flag(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "--node-cidr-prefix",
        Family::Ipv6 => "--node-cidr-prefix-v6",
    }
}

/// Two nets of one family in `nets`: the family and the first two.
fn twin_family(nets: &[IpNet]) -> Option<(Family, IpNet, IpNet)> {
    nets.iter().enumerate().find_map(|(i, a)| {
        let b = nets[i + 1..].iter().find(|b| Family::of_net(b) == Family::of_net(a))?;
        Some((Family::of_net(a), *a, *b))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    pub(crate) fn sample() -> Config {
        let underlay = Underlay::single("192.0.2.10".parse().unwrap(), "eth0", "192.0.2.0/24".parse().unwrap(), 1500);
        let paths = Paths {
            state_dir: "/run/weft".into(),
            cni_conf_dir: "/etc/cni/net.d".into(),
            ipam_dir: "/var/lib/cni/weft".into(),
        };
        let mut cfg = Config::with_defaults("node-a", underlay, vec!["192.0.2.10:8473".into()], paths);
        cfg.gossip.phi_threshold = 8.0;
        cfg
    }

    #[test]
    fn the_sample_is_valid_and_expects_no_peers_when_it_is_its_own_seed() {
        let c = sample();
        assert_eq!(c.validate(), Ok(()));
        assert!(!c.expects_peers());
        let mut c = sample();
        c.gossip.seeds.push("seed.example:8473".into());
        assert!(c.expects_peers());
    }

    #[test]
    fn invalid_settings_are_named() {
        type Change = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|c| c.node_name = "bad name".into()), "--node-name"),
            (Box::new(|c| c.underlay.addrs[0].ip = Ipv4Addr::LOCALHOST.into()), "--node-ip"),
            (Box::new(|c| c.underlay.addrs[0].ip = "fe80::1".parse().unwrap()), "link-local"),
            (Box::new(|c| c.cluster_cidrs = vec!["10.244.0.1/16".parse().unwrap()]), "--cluster-cidr"),
            (Box::new(|c| c.cluster_cidrs.clear()), "--cluster-cidr"),
            (Box::new(|c| c.cluster_cidrs.push("10.0.0.0/8".parse().unwrap())), "--cluster-cidr: two IPv4"),
            (Box::new(|c| c.node_cidr_prefix = 8), "--node-cidr-prefix /8"),
            (Box::new(|c| c.node_cidr_prefix = 31), "/30"),
            (Box::new(|c| c.pod_cidrs = vec!["10.245.0.0/24".parse().unwrap()]), "--pod-cidr"),
            (Box::new(|c| c.pod_cidrs = vec!["10.244.0.0/25".parse().unwrap()]), "--pod-cidr"),
            // An IPv6 --pod-cidr on an IPv4-only cluster.
            (Box::new(|c| c.pod_cidrs = vec!["fd00:10:244:1::/64".parse().unwrap()]), "--pod-cidr fd00:10:244:1::/64"),
            (
                Box::new(|c| c.pod_cidrs = vec!["10.244.1.0/24".parse().unwrap(), "10.244.2.0/24".parse().unwrap()]),
                "--pod-cidr: two IPv4",
            ),
            // IPv6 blocks longer than /64, or larger than the cluster range.
            (
                Box::new(|c| {
                    c.cluster_cidrs.push("fd00:10:244::/56".parse().unwrap());
                    c.node_cidr_prefix_v6 = 80;
                }),
                "--node-cidr-prefix-v6 /80 must be between the cluster CIDR's /56 and /64",
            ),
            (
                Box::new(|c| {
                    c.cluster_cidrs.push("fd00:10:244::/56".parse().unwrap());
                    c.node_cidr_prefix_v6 = 48;
                }),
                "--node-cidr-prefix-v6 /48",
            ),
            (
                Box::new(|c| {
                    c.cluster_cidrs.push("fd00:10:244::/56".parse().unwrap());
                    c.pod_cidrs = vec!["fd00:10:245::/64".parse().unwrap()];
                }),
                "--pod-cidr fd00:10:245::/64",
            ),
            (Box::new(|c| c.vni = 0), "--vni"),
            (Box::new(|c| c.vni = 1 << 24), "--vni"),
            (Box::new(|c| c.vxlan_port = 0), "--vxlan-port"),
            (Box::new(|c| c.mtu = 20), "MTU"),
            (Box::new(|c| c.gossip.interval = Duration::ZERO), "--gossip-interval"),
            (Box::new(|c| c.gossip.phi_threshold = f64::NAN), "--phi-threshold"),
            (Box::new(|c| c.gossip.cluster_id.clear()), "--cluster-id"),
        ];
        for (change, expected) in cases {
            let mut c = sample();
            change(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(expected), "{err} should mention {expected}");
        }
    }

    #[test]
    fn three_cluster_shapes_and_their_pools() {
        let mut c = sample();
        assert_eq!(c.pools(), [Pool { cluster_cidr: "10.244.0.0/16".parse().unwrap(), node_prefix: 24 }]);
        c.cluster_cidrs = vec!["fd00:10:244::/56".parse().unwrap(), "10.244.0.0/16".parse().unwrap()];
        c.pod_cidrs = vec!["fd00:10:244:7::/64".parse().unwrap()];
        assert_eq!(c.validate(), Ok(()));
        let pools = c.pools();
        assert_eq!(pools.len(), 2);
        assert_eq!(pools[0].cluster_cidr.to_string(), "10.244.0.0/16", "IPv4 first");
        assert_eq!((pools[1].cluster_cidr.to_string(), pools[1].node_prefix), ("fd00:10:244::/56".into(), 64));
        assert_eq!(c.static_pod_cidr(Family::Ipv6), Some("fd00:10:244:7::/64".parse().unwrap()));
        assert_eq!(c.static_pod_cidr(Family::Ipv4), None);
        c.cluster_cidrs.remove(1);
        assert_eq!(c.validate(), Ok(()), "IPv6-only");
        assert_eq!(c.pools().len(), 1);
    }

    #[test]
    fn seeds_get_the_gossip_port_when_they_have_none() {
        assert_eq!(normalize_seed("10.0.0.1", 8473).unwrap(), "10.0.0.1:8473");
        assert_eq!(normalize_seed("10.0.0.1:9000", 8473).unwrap(), "10.0.0.1:9000");
        assert_eq!(normalize_seed(" node-a ", 8473).unwrap(), "node-a:8473");
        assert_eq!(normalize_seed("node-a:7", 8473).unwrap(), "node-a:7");
        assert!(normalize_seed("node-a:x", 8473).is_err());
        assert!(normalize_seed(":8473", 8473).is_err());
        assert!(normalize_seed("", 8473).is_err());
        // IPv6 seeds are written [addr]:port; a bare IPv6 address gets the gossip port.
        assert_eq!(normalize_seed("2001:db8:1::10", 8473).unwrap(), "[2001:db8:1::10]:8473");
        assert_eq!(normalize_seed("[2001:db8:1::10]:9000", 8473).unwrap(), "[2001:db8:1::10]:9000");
    }

    #[test]
    fn an_ipv6_only_node_gossips_on_its_ipv6_address_and_a_dual_one_on_ipv4() {
        let v6 = Underlay::single("2001:db8:1::10".parse().unwrap(), "eth0", "2001:db8:1::/64".parse().unwrap(), 1500);
        let cfg = Config::with_defaults("n", v6, vec![], sample().paths);
        assert_eq!(cfg.gossip.listen, "[2001:db8:1::10]:8473".parse().unwrap());
        assert_eq!((cfg.mtu, cfg.validate()), (1430, Ok(())));
        let mut dual = sample().underlay;
        dual.addrs.push(crate::detect::UnderlayIp {
            ip: "2001:db8:1::10".parse().unwrap(),
            iface: "eth0".into(),
            subnet: "2001:db8:1::/64".parse().unwrap(),
            mtu: 1500,
        });
        let cfg = Config::with_defaults("n", dual, vec![], sample().paths);
        assert_eq!(cfg.gossip.listen, "192.0.2.10:8473".parse().unwrap());
    }

    fn underlay_of(ips: &[(&str, u32)]) -> Underlay {
        let addrs = ips
            .iter()
            .map(|(ip, mtu)| {
                let ip: std::net::IpAddr = ip.parse().unwrap();
                crate::detect::UnderlayIp { ip, iface: "eth0".into(), subnet: ip.into(), mtu: *mtu }
            })
            .collect();
        Underlay { addrs }
    }

    #[test]
    fn pod_mtu_leaves_room_for_vxlan_unless_given() {
        let v4 = |mtu| underlay_of(&[("192.0.2.10", mtu)]);
        assert_eq!(pod_mtu(None, &v4(1500)), Ok(1450));
        assert_eq!(pod_mtu(Some(1400), &v4(1500)), Ok(1400));
        assert_eq!(pod_mtu(None, &v4(9001)), Ok(8951));
        assert!(pod_mtu(None, &v4(40)).is_err());
        assert!(pod_mtu(Some(10), &v4(1500)).is_err());
        // An IPv6 underlay costs 70 bytes; with both, the smaller result fits either tunnel.
        assert_eq!(pod_mtu(None, &underlay_of(&[("2001:db8:1::10", 1500)])), Ok(1430));
        assert_eq!(pod_mtu(None, &underlay_of(&[("192.0.2.10", 1500), ("2001:db8:1::10", 1500)])), Ok(1430));
        assert_eq!(pod_mtu(Some(1450), &underlay_of(&[("2001:db8:1::10", 1500)])), Ok(1450));
    }
}
