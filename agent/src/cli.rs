//! The command line. Every flag can also be set through the environment as `WEFT_<FLAG>`.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use weft_overlay::desired::{DEFAULT_VNI, DEFAULT_VXLAN_PORT};
use weft_overlay::underlay::NodeIps;

use crate::config::{self, Config, ConfigError, Encap, GossipSettings};
use crate::detect::Underlay;
use crate::files::Paths;
use crate::http;

pub const DEFAULT_GOSSIP_PORT: u16 = 8473;
pub const DEFAULT_STATUS_ADDR: &str = "127.0.0.1:9473";
/// See docs/operations.md, "Detection and convergence": with 100 ms rounds a dead node is
/// withdrawn after about 1.5 s.
pub const DEFAULT_PHI_THRESHOLD: f64 = 30.0;

#[derive(Debug, Parser)]
#[command(name = "weft-agent", version, about = "weft node agent")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, global = true, env = "WEFT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter (tracing-subscriber EnvFilter syntax, e.g. `info` or `weft_agent=debug`).
    #[arg(long, global = true, env = "WEFT_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent.
    Run(Box<RunArgs>),
    /// Print the node and peer table from a running agent's status endpoint.
    Status(StatusArgs),
    /// Explain what is wrong on this node and its paths, and what to do (exit 0: nothing broken).
    Diagnose(DiagnoseArgs),
    /// Remove everything weft put on this node (stop the agent first).
    Cleanup(CleanupArgs),
    /// Print a new random cluster key, a line for --cluster-key-file.
    Keygen,
}

fn duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    match duration(s) {
        Ok(d) if d.is_zero() => Err("must be positive".into()),
        parsed => parsed.map_err(|e| e.to_string()),
    }
}

/// Where the agent keeps and publishes its files; several agents sharing one filesystem (lab
/// nodes) each need their own.
#[derive(Debug, Clone, Args)]
pub struct PathArgs {
    /// Directory for the node state file (node.json), the PodCIDR lease and the generation.
    #[arg(long, env = "WEFT_STATE_DIR", default_value = "/run/weft")]
    pub state_dir: PathBuf,
    /// Directory the CNI conflist (10-weft.conflist) is written to.
    #[arg(long, env = "WEFT_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// IPAM store root handed to the plugin as `dataDir`.
    #[arg(long, env = "WEFT_IPAM_DIR", default_value = weft_cni::config::DEFAULT_DATA_DIR)]
    pub ipam_dir: PathBuf,
}

impl PathArgs {
    pub fn paths(&self) -> Paths {
        Paths {
            state_dir: self.state_dir.clone(),
            cni_conf_dir: self.cni_conf_dir.clone(),
            ipam_dir: self.ipam_dir.clone(),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Node name, unique in the cluster [default: the hostname].
    #[arg(long, env = "WEFT_NODE_NAME")]
    pub node_name: Option<String>,
    /// Underlay addresses, at most one per family: `192.0.2.10`, `2001:db8:1::10` or both
    /// comma-separated [default: from --iface, else the IPv4 default route's interface, else the
    /// IPv6 one's; an IPv6 address is added to an IPv4 underlay only when given here].
    #[arg(long, env = "WEFT_NODE_IP")]
    pub node_ip: Option<NodeIps>,
    /// Underlay interface [default: the one holding --node-ip, else the default route's]; without
    /// --node-ip its first address of each family is used.
    #[arg(long, env = "WEFT_IFACE")]
    pub iface: Option<String>,
    /// Gossip seeds, `host:port,...` (a seed without a port uses --gossip-port).
    #[arg(long, env = "WEFT_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Gossip UDP port, on the node IP.
    #[arg(long, env = "WEFT_GOSSIP_PORT", default_value_t = DEFAULT_GOSSIP_PORT)]
    pub gossip_port: u16,
    /// Cluster key file sealing gossip: one base64 key per line (`weft-agent keygen`); the first
    /// seals what this node sends, all open what it receives. Re-read on SIGHUP and when it
    /// changes. Without it gossip is unauthenticated plain text.
    #[arg(long, env = "WEFT_CLUSTER_KEY_FILE")]
    pub cluster_key_file: Option<PathBuf>,
    /// Sealed gossip sent longer ago than this, by the sender's clock, is refused as a possible
    /// replay: node clocks must agree to within it.
    #[arg(long, env = "WEFT_GOSSIP_REPLAY_WINDOW", default_value = "60s", value_parser = duration)]
    pub gossip_replay_window: Duration,
    /// Gossip cluster id; nodes with another id are ignored.
    #[arg(long, env = "WEFT_CLUSTER_ID", default_value = "weft")]
    pub cluster_id: String,
    /// Pod address space of the whole cluster, at most one CIDR per family: IPv4-only,
    /// IPv6-only or dual-stack (`10.244.0.0/16,fd00:10:244::/56`).
    #[arg(long, env = "WEFT_CLUSTER_CIDR", value_delimiter = ',', default_value = config::DEFAULT_CLUSTER_CIDR)]
    pub cluster_cidr: Vec<IpNet>,
    /// Prefix length of each node's IPv4 PodCIDR block (at most /30).
    #[arg(long, env = "WEFT_NODE_CIDR_PREFIX", default_value_t = config::DEFAULT_NODE_CIDR_PREFIX)]
    pub node_cidr_prefix: u8,
    /// Prefix length of each node's IPv6 PodCIDR block (at most /64).
    #[arg(long, env = "WEFT_NODE_CIDR_PREFIX_V6", default_value_t = config::DEFAULT_NODE_CIDR_PREFIX_V6)]
    pub node_cidr_prefix_v6: u8,
    /// Static PodCIDRs for this node, at most one per family of --cluster-cidr [default:
    /// allocated through gossip, per family without one].
    #[arg(long, env = "WEFT_POD_CIDR", value_delimiter = ',')]
    pub pod_cidr: Vec<IpNet>,
    /// VXLAN network identifier (the same on every node).
    #[arg(long, env = "WEFT_VNI", default_value_t = DEFAULT_VNI)]
    pub vni: u32,
    /// VXLAN UDP port (the same on every node).
    #[arg(long, env = "WEFT_VXLAN_PORT", default_value_t = DEFAULT_VXLAN_PORT)]
    pub vxlan_port: u16,
    /// Pod MTU [default: the underlay interface's MTU − 50 over IPv4, − 70 over IPv6, the
    /// smaller of the two with underlays of both families].
    #[arg(long, env = "WEFT_MTU")]
    pub mtu: Option<u32>,
    /// Encapsulate always, or only to peers outside this node's underlay subnet.
    #[arg(long, env = "WEFT_ENCAP", value_enum, default_value_t = Encap::Always)]
    pub encap: Encap,
    /// Address of the status HTTP server.
    #[arg(long, env = "WEFT_STATUS_ADDR", default_value = DEFAULT_STATUS_ADDR)]
    pub status_addr: SocketAddr,
    /// Also serve `/metrics` (and nothing else) here, e.g. the node IP and port 9474, so that a
    /// Prometheus elsewhere can scrape it while `/status` stays on loopback. Off by default.
    #[arg(long, env = "WEFT_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Status connections that send no complete request head within this long (of opening, or
    /// of their last answer) are closed.
    #[arg(long, env = "WEFT_STATUS_IDLE_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub status_idle_timeout: Duration,
    /// Status connections served at once (at most a quarter of the open-file limit); further
    /// ones are closed as they arrive.
    #[arg(long, env = "WEFT_STATUS_MAX_CONNECTIONS", default_value = "64")]
    pub status_max_connections: NonZeroUsize,
    #[command(flatten)]
    pub paths: PathArgs,
    /// Chain the portmap plugin after weft in the conflist (hostPort support; needs the
    /// portmap binary in the runtime's CNI bin dir).
    #[arg(long, env = "WEFT_PORTMAP")]
    pub portmap: bool,
    /// Period of the full resync (rewrite files, re-apply the datapath).
    #[arg(long, env = "WEFT_RESYNC_INTERVAL", default_value = "30s", value_parser = duration)]
    pub resync_interval: Duration,
    /// Period of the dataplane probes of every peer (through the tunnel, full size, underlay).
    #[arg(long, env = "WEFT_PROBE_INTERVAL", default_value = "2s", value_parser = duration)]
    pub probe_interval: Duration,
    /// How long a peer whose agent stopped keeps its routes while its tunnel still answers the
    /// probes (an agent restart or upgrade); a peer whose tunnel stops answering is withdrawn.
    #[arg(long, env = "WEFT_AGENT_DOWN_GRACE", default_value = "5m", value_parser = duration)]
    pub agent_down_grace: Duration,
    /// Gossip round period.
    #[arg(long, env = "WEFT_GOSSIP_INTERVAL", default_value = "100ms", value_parser = duration)]
    pub gossip_interval: Duration,
    /// Failure detector threshold, in mean heartbeat intervals of silence.
    #[arg(long, env = "WEFT_PHI_THRESHOLD", default_value_t = DEFAULT_PHI_THRESHOLD)]
    pub phi_threshold: f64,
    /// How long dead and departed nodes are remembered (their PodCIDRs stay reserved).
    #[arg(long, env = "WEFT_DEAD_NODE_GRACE_PERIOD", default_value = "1h", value_parser = duration)]
    pub dead_node_grace_period: Duration,
    /// Longest wait after start for membership to settle before peers are programmed.
    #[arg(long, env = "WEFT_STARTUP_GRACE", default_value = "10s", value_parser = duration)]
    pub startup_grace: Duration,
}

impl RunArgs {
    /// The configuration, given the detected underlay and the hostname (used only when no
    /// --node-name is given).
    pub fn config(&self, underlay: Underlay, hostname: impl FnOnce() -> String) -> Result<Config, ConfigError> {
        let listen = SocketAddr::new(underlay.primary().ip, self.gossip_port);
        let seeds = self.peers.iter().map(|s| config::normalize_seed(s, self.gossip_port)).collect::<Result<_, _>>()?;
        let cfg = Config {
            node_name: self.node_name.clone().unwrap_or_else(hostname),
            mtu: config::pod_mtu(self.mtu, &underlay)?,
            underlay,
            cluster_cidrs: self.cluster_cidr.clone(),
            node_cidr_prefix: self.node_cidr_prefix,
            node_cidr_prefix_v6: self.node_cidr_prefix_v6,
            pod_cidrs: self.pod_cidr.clone(),
            vni: self.vni,
            vxlan_port: self.vxlan_port,
            encap: self.encap,
            gossip: GossipSettings {
                cluster_id: self.cluster_id.clone(),
                listen,
                seeds,
                interval: self.gossip_interval,
                phi_threshold: self.phi_threshold,
                dead_node_grace_period: self.dead_node_grace_period,
            },
            startup_grace: self.startup_grace,
            resync_interval: self.resync_interval,
            probe_interval: self.probe_interval,
            agent_down_grace: self.agent_down_grace,
            paths: self.paths.paths(),
            portmap: self.portmap,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The status server's limits, given this process's open-file limit.
    pub fn status_limits(&self, open_files: u64) -> http::Limits {
        http::Limits::within(self.status_idle_timeout, self.status_max_connections.get(), open_files)
    }
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Address of the agent's status HTTP server.
    #[arg(long, env = "WEFT_STATUS_ADDR", default_value = DEFAULT_STATUS_ADDR)]
    pub status_addr: SocketAddr,
    /// Print the status document as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Show every node's paths as each reports them in gossip: which pairs are broken and why.
    #[arg(long, conflicts_with = "json")]
    pub cluster: bool,
}

#[derive(Debug, Clone, Args)]
pub struct DiagnoseArgs {
    /// Address of the agent's status HTTP server.
    #[arg(long, env = "WEFT_STATUS_ADDR", default_value = DEFAULT_STATUS_ADDR)]
    pub status_addr: SocketAddr,
    /// Print the findings as a JSON list instead of lines.
    #[arg(long)]
    pub json: bool,
    /// The VNI vxlan0 must have: the agent's --vni.
    #[arg(long, env = "WEFT_VNI", default_value_t = DEFAULT_VNI)]
    pub vni: u32,
    /// The UDP port vxlan0 must use: the agent's --vxlan-port.
    #[arg(long, env = "WEFT_VXLAN_PORT", default_value_t = DEFAULT_VXLAN_PORT)]
    pub vxlan_port: u16,
}

#[derive(Debug, Clone, Args)]
pub struct CleanupArgs {
    #[command(flatten)]
    pub paths: PathArgs,
    /// Also remove the bridge while pods are still attached to it (they lose their network).
    #[arg(long)]
    pub force: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn underlay() -> Underlay {
        Underlay::single("192.0.2.10".parse().unwrap(), "eth0", "192.0.2.0/24".parse().unwrap(), 1500)
    }

    fn run_args(args: &[&str]) -> RunArgs {
        let cli = Cli::try_parse_from([&["weft-agent", "run"], args].concat()).unwrap();
        match cli.command {
            Command::Run(args) => *args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn config_with_defaults_is_what_run_parses_without_flags() {
        let args = run_args(&[]);
        let parsed = args.config(underlay(), || "host-1".into()).unwrap();
        assert_eq!(Config::with_defaults("host-1", underlay(), Vec::new(), args.paths.paths()), parsed);
    }

    #[test]
    fn defaults_follow_the_spec() {
        let cfg = run_args(&[]).config(underlay(), || "host-1".into()).unwrap();
        assert_eq!(cfg.node_name, "host-1");
        assert_eq!(cfg.mtu, 1450);
        assert_eq!(cfg.cluster_cidrs, ["10.244.0.0/16".parse::<IpNet>().unwrap()]);
        assert_eq!((cfg.node_cidr_prefix, cfg.node_cidr_prefix_v6), (24, 64));
        assert!(cfg.pod_cidrs.is_empty());
        assert_eq!((cfg.vni, cfg.vxlan_port), (1, 8472));
        assert_eq!(cfg.encap, Encap::Always);
        assert_eq!(cfg.gossip.listen, "192.0.2.10:8473".parse().unwrap());
        assert_eq!(cfg.gossip.cluster_id, "weft");
        assert_eq!(cfg.gossip.interval, Duration::from_millis(100));
        assert_eq!(cfg.resync_interval, Duration::from_secs(30));
        assert_eq!(cfg.paths.state_file(), PathBuf::from("/run/weft/node.json"));
        assert_eq!(cfg.paths.conflist(), PathBuf::from("/etc/cni/net.d/10-weft.conflist"));
        assert_eq!(cfg.paths.ipam_dir, PathBuf::from("/var/lib/cni/weft"));
        assert!(!cfg.portmap);
        let status = Cli::try_parse_from(["weft-agent", "status"]).unwrap();
        let Command::Status(s) = status.command else { panic!() };
        assert_eq!(s.status_addr, DEFAULT_STATUS_ADDR.parse().unwrap());
    }

    #[test]
    fn cluster_and_pod_cidrs_take_one_per_family() {
        let args = run_args(&[
            "--cluster-cidr=10.244.0.0/16,fd00:10:244::/56",
            "--node-cidr-prefix-v6=60",
            "--pod-cidr=fd00:10:244:10::/60,10.244.9.0/24",
        ]);
        let cfg = args.config(underlay(), || "n".into()).unwrap();
        assert_eq!(cfg.node_cidr_prefix_v6, 60);
        assert_eq!(cfg.pod_cidrs.len(), 2);
        let bad = run_args(&["--cluster-cidr=10.244.0.0/16,10.245.0.0/16"]).config(underlay(), || "n".into());
        let err = bad.unwrap_err().to_string();
        assert!(err.starts_with("--cluster-cidr: two IPv4 CIDRs"), "{err}");
        assert!(Cli::try_parse_from(["weft-agent", "run", "--cluster-cidr=10.244.0.0/16,x"]).is_err());
    }

    #[test]
    fn flags_override_defaults() {
        let args = run_args(&[
            "--node-name=n1",
            "--peers=10.0.0.1,10.0.0.2:9000,seed.example",
            "--gossip-port=7000",
            "--pod-cidr=10.244.9.0/24",
            "--mtu=1400",
            "--encap=cross-subnet",
            "--gossip-interval=200ms",
            "--resync-interval=1m",
            "--state-dir=/tmp/s",
            "--portmap",
        ]);
        let cfg = args.config(underlay(), || unreachable!()).unwrap();
        assert_eq!(cfg.node_name, "n1");
        assert_eq!(cfg.gossip.seeds, ["10.0.0.1:7000", "10.0.0.2:9000", "seed.example:7000"]);
        assert_eq!(cfg.gossip.listen.port(), 7000);
        assert_eq!(cfg.pod_cidrs, ["10.244.9.0/24".parse::<IpNet>().unwrap()]);
        assert_eq!(cfg.mtu, 1400);
        assert_eq!(cfg.encap, Encap::CrossSubnet);
        assert_eq!(cfg.gossip.interval, Duration::from_millis(200));
        assert_eq!(cfg.resync_interval, Duration::from_secs(60));
        assert_eq!(cfg.paths.state_file(), PathBuf::from("/tmp/s/node.json"));
        assert!(cfg.portmap);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Cli::try_parse_from(["weft-agent", "run", "--encap=sometimes"]).is_err());
        assert!(Cli::try_parse_from(["weft-agent", "run", "--resync-interval=soon"]).is_err());
        let err = run_args(&["--pod-cidr=10.9.0.0/24"]).config(underlay(), || "h".into()).unwrap_err();
        assert!(err.to_string().contains("--pod-cidr"));
        let err = run_args(&[]).config(underlay(), || "bad host".into()).unwrap_err();
        assert!(err.to_string().contains("--node-name"));
    }

    #[test]
    fn node_ip_takes_one_address_per_family_and_names_itself_when_wrong() {
        let args = run_args(&["--node-ip=2001:db8:1::10,192.0.2.10"]);
        assert_eq!(args.node_ip, Some("192.0.2.10,2001:db8:1::10".parse().unwrap()));
        for (bad, why) in [
            ("--node-ip=192.0.2.10,198.51.100.1", "at most one per family"),
            ("--node-ip=2001:db8::1,2001:db8::2", "at most one per family"),
            ("--node-ip=fe80::1", "link-local"),
            ("--node-ip=224.0.0.1", "unicast"),
            ("--node-ip=::", "unicast"),
            ("--node-ip=node-a", "not an IP address"),
        ] {
            let err = Cli::try_parse_from(["weft-agent", "run", bad]).unwrap_err().to_string();
            assert!(err.contains("--node-ip") && err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn status_limits_default_to_10s_and_64_connections_and_refuse_zero() {
        let limits = run_args(&[]).status_limits(1024);
        assert_eq!(limits, http::Limits { idle_timeout: Duration::from_secs(10), max_connections: 64 });
        let args = run_args(&["--status-idle-timeout=2s", "--status-max-connections=500"]);
        assert_eq!(
            args.status_limits(1024),
            http::Limits { idle_timeout: Duration::from_secs(2), max_connections: 256 }
        );
        for bad in ["--status-idle-timeout=0s", "--status-max-connections=0"] {
            assert!(Cli::try_parse_from(["weft-agent", "run", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_run_flag_has_a_weft_env_name() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        let run = cmd.find_subcommand("run").unwrap();
        for arg in run.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if ["help", "version"].contains(&long) {
                continue;
            }
            let expected = format!("WEFT_{}", long.to_uppercase().replace('-', "_"));
            assert_eq!(arg.get_env().map(|e| e.to_string_lossy().into_owned()), Some(expected), "--{long}");
        }
    }
}
