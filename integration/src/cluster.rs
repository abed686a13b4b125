//! A running weft cluster in a lab: a real `weft-agent` in every node namespace (auto PodCIDR,
//! one seed), and pods attached with the real `weft` plugin through the conflist the agent wrote.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use weft_agent::gossip::keyfile;

use crate::bins;
use crate::cmd::{LabError, Result};
use crate::cni::{Chain, PluginPath, Runtime, Target};
use crate::http;
use crate::netns::{self, Netns};
use crate::process::Process;
use crate::topology::{Family, Lab, Node, ip_flag};
use crate::wait;

pub const GOSSIP_PORT: u16 = 8473;
pub const STATUS_ADDR: &str = "127.0.0.1:9473";
pub const CONFLIST: &str = "10-weft.conflist";
/// Each node's cluster key file, in its directory.
pub const KEY_FILE: &str = "cluster.key";

/// How the agents run.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// `--encap cross-subnet` instead of VXLAN to every peer.
    pub cross_subnet: bool,
    /// Gossip in plain text, without `--cluster-key-file` (by default every node gets the
    /// lab's cluster key, as a production cluster should).
    pub plain_gossip: bool,
    /// Further flags for every agent.
    pub extra_args: Vec<String>,
    /// Runs every agent with this open-file limit (RLIMIT_NOFILE, set by `prlimit`).
    pub open_files: Option<u64>,
}

/// A pod: a namespace attached to its node's bridge by the plugin.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    pub node: usize,
    /// Its IPv4 address; 0.0.0.0 for an IPv6-only pod (see `ips`).
    pub ip: Ipv4Addr,
    /// Every address the plugin gave it, in the result's order (IPv4 first when dual-stack).
    pub ips: Vec<IpAddr>,
    pub ns: Netns,
    target: Target,
    result: Value,
}

#[derive(Debug)]
pub struct Cluster {
    pub options: AgentOptions,
    // Field order is drop order: pods and agents go before the lab's namespaces.
    pub pods: Vec<Pod>,
    pub agents: Vec<Option<Process>>,
    pub lab: Lab,
}

impl Cluster {
    /// Starts an agent on every node, all seeded with the first node.
    pub fn start(lab: Lab, options: AgentOptions) -> Result<Cluster> {
        let count = lab.nodes.len();
        Self::start_some(lab, options, count)
    }

    /// Starts agents on the first `count` nodes only; the rest can join later with `start_agent`.
    pub fn start_some(lab: Lab, options: AgentOptions, count: usize) -> Result<Cluster> {
        let agents = (0..lab.nodes.len()).map(|_| None).collect();
        let mut cluster = Cluster { options, pods: Vec::new(), agents, lab };
        if !cluster.options.plain_gossip {
            let key = keyfile::generate();
            for i in 0..cluster.lab.nodes.len() {
                cluster.write_keys(i, &[&key])?;
            }
        }
        for i in 0..count {
            cluster.start_agent(i)?;
        }
        Ok(cluster)
    }

    /// The seed every agent joins through.
    pub fn seed(&self) -> SocketAddr {
        SocketAddr::from((self.lab.nodes[0].ip, GOSSIP_PORT))
    }

    /// `weft-agent run` flags for node `i`: its own directories, its underlay, the seed.
    pub fn agent_args(&self, i: usize) -> Vec<String> {
        let node = &self.lab.nodes[i];
        let mut args: Vec<String> = vec![
            "run".into(),
            format!("--node-name={}", node.name),
            format!("--node-ip={}", node.ip),
            format!("--iface={}", node.iface),
            format!("--peers={}", self.seed()),
            format!("--state-dir={}", node.path("run").display()),
            format!("--cni-conf-dir={}", node.path("net.d").display()),
            format!("--ipam-dir={}", node.path("ipam").display()),
            format!("--status-addr={STATUS_ADDR}"),
        ];
        if self.options.cross_subnet {
            args.push("--encap=cross-subnet".into());
        }
        if !self.options.plain_gossip {
            args.push(format!("--cluster-key-file={}", node.path(KEY_FILE).display()));
        }
        args.extend(self.options.extra_args.iter().cloned());
        args
    }

    /// Starts (or restarts) node `i`'s agent inside its namespace; logs go to `<node dir>/agent.log`.
    pub fn start_agent(&mut self, i: usize) -> Result<()> {
        self.start_agent_with(i, self.agent_args(i))
    }

    /// Starts node `i`'s agent with the given `weft-agent` arguments (see [`Cluster::agent_args`]).
    pub fn start_agent_with(&mut self, i: usize, args: Vec<String>) -> Result<()> {
        let node = &self.lab.nodes[i];
        let log = File::options()
            .create(true)
            .append(true)
            .open(node.path("agent.log"))
            .map_err(|e| LabError::Other(format!("open agent log: {e}")))?;
        let log2 = log.try_clone().map_err(|e| LabError::Other(format!("agent log: {e}")))?;
        let agent = bins::path("weft-agent")?;
        let mut cmd = match self.options.open_files {
            Some(limit) => {
                let mut prlimit = Command::new("prlimit");
                prlimit.arg(format!("--nofile={limit}")).arg("--").arg(agent);
                prlimit
            }
            None => Command::new(agent),
        };
        cmd.args(args).stdin(Stdio::null()).stdout(log).stderr(log2);
        let name = format!("weft-agent {}", node.name);
        let process = netns::within(&node.ns.path(), || Process::spawn(&name, &mut cmd))??;
        self.agents[i] = Some(process);
        Ok(())
    }

    /// Writes node `i`'s cluster key file (`keys[0]` seals), readable by root only. A running
    /// agent picks it up on SIGHUP (see `reload_keys`) or within 5 s.
    pub fn write_keys(&self, i: usize, keys: &[&str]) -> Result<()> {
        let path = self.lab.nodes[i].path(KEY_FILE);
        let text: String = keys.iter().map(|k| format!("{k}\n")).collect();
        std::fs::write(&path, text)
            .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)))
            .map_err(|e| LabError::Other(format!("write {}: {e}", path.display())))
    }

    /// Tells node `i`'s agent to re-read its key file now.
    pub fn reload_keys(&self, i: usize) -> Result<()> {
        let agent = self.agents[i].as_ref().ok_or_else(|| LabError::Other(format!("no agent on node {i}")))?;
        agent.signal(Signal::SIGHUP)
    }

    /// The value of metric line `series` (name and labels exactly as exposed) on node `i`.
    pub fn metric(&self, i: usize, series: &str) -> Result<f64> {
        let (_, body) = self.get(i, "/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| LabError::Other(format!("no metric {series} on node {i}")))
    }

    /// The agent of node `i`, if running.
    pub fn agent(&mut self, i: usize) -> Option<&mut Process> {
        self.agents[i].as_mut()
    }

    /// `weft-agent cleanup` for node `i`'s directories, inside its namespace, with `extra`
    /// flags: whether it succeeded, and what it said.
    pub fn cleanup(&self, i: usize, extra: &[&str]) -> Result<(bool, String)> {
        let node = &self.lab.nodes[i];
        let mut cmd = Command::new(bins::path("weft-agent")?);
        cmd.arg("cleanup")
            .arg(format!("--state-dir={}", node.path("run").display()))
            .arg(format!("--cni-conf-dir={}", node.path("net.d").display()))
            .arg(format!("--ipam-dir={}", node.path("ipam").display()))
            .args(extra);
        let out = netns::within(&node.ns.path(), || cmd.output())?
            .map_err(|e| LabError::Other(format!("weft-agent cleanup: {e}")))?;
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        Ok((out.status.success(), said))
    }

    /// `GET <path>` on node `i`'s status endpoint.
    pub fn get(&self, i: usize, path: &str) -> Result<(u16, String)> {
        http::get(&self.lab.nodes[i].ns.path(), STATUS_ADDR.parse().expect("valid address"), path)
    }

    /// Node `i`'s `/status` document.
    pub fn status(&self, i: usize) -> Result<Value> {
        let (code, body) = self.get(i, "/status")?;
        if code != 200 {
            return Err(LabError::Other(format!("/status on {} answered {code}", self.lab.nodes[i].name)));
        }
        serde_json::from_str(&body).map_err(|e| LabError::Other(format!("/status is not JSON: {e}")))
    }

    /// Waits until node `i` answers `/readyz` with 200.
    pub fn wait_ready(&self, i: usize, limit: Duration) -> Result<()> {
        let what = format!("{} to become ready", self.lab.nodes[i].name);
        wait::until(&what, limit, Duration::from_millis(50), || {
            matches!(self.get(i, "/readyz"), Ok((200, _))).then_some(())
        })
    }

    /// Waits until every node with a running agent is ready and sees every other such node
    /// alive and programmed.
    pub fn wait_converged(&self, limit: Duration) -> Result<()> {
        let running: Vec<usize> = (0..self.agents.len()).filter(|i| self.agents[*i].is_some()).collect();
        let expected = running.len().saturating_sub(1);
        wait::until("the cluster to converge", limit, Duration::from_millis(50), || {
            running
                .iter()
                .all(|&i| {
                    matches!(self.get(i, "/readyz"), Ok((200, _)))
                        && self.status(i).is_ok_and(|s| programmed_peers(&s) == expected)
                })
                .then_some(())
        })
    }

    /// Node `i`'s PodCIDR as its agent reports it.
    pub fn pod_cidr(&self, i: usize) -> Result<String> {
        let status = self.status(i)?;
        status["node"]["podCIDR"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| LabError::Other(format!("{} has no PodCIDR yet", self.lab.nodes[i].name)))
    }

    fn runtime(&self, node: &Node) -> Runtime {
        Runtime::new(PluginPath::with_reference_plugins(), &node.ns.path())
    }

    fn chain(&self, node: &Node) -> Result<Chain> {
        let path = node.path("net.d").join(CONFLIST);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| LabError::Other(format!("read {} (agent not ready?): {e}", path.display())))?;
        let conflist: Value =
            serde_json::from_str(&text).map_err(|e| LabError::Other(format!("{} is not JSON: {e}", path.display())))?;
        Chain::from_conflist(&conflist)
    }

    /// Creates pod `name` on node `node` through the node's conflist, as a runtime would.
    pub fn add_pod(&mut self, node: usize, name: &str) -> Result<&Pod> {
        let n = &self.lab.nodes[node];
        let ns = Netns::create(&format!("{}-{}-{name}", self.lab.prefix, n.name))?;
        let target = Target::new(&format!("{}-{name}", n.name), &ns.path(), "eth0");
        let result = self.chain(n)?.add(&self.runtime(n), &target, &Value::Null)?;
        let ips: Vec<IpAddr> = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
            .collect();
        if ips.is_empty() {
            return Err(LabError::Other(format!("no address in {result}")));
        }
        let ip = ips
            .iter()
            .find_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        self.pods.push(Pod { name: name.to_string(), node, ip, ips, ns, target, result });
        Ok(self.pods.last().expect("just pushed"))
    }

    /// Deletes a pod through the plugin, as a runtime would, then its namespace.
    pub fn del_pod(&mut self, name: &str) -> Result<()> {
        let index =
            self.pods.iter().position(|p| p.name == name).ok_or_else(|| LabError::Other(format!("no pod {name}")))?;
        let pod = self.pods.remove(index);
        let node = &self.lab.nodes[pod.node];
        self.chain(node)?.del(&self.runtime(node), &pod.target, Some(&pod.result), &Value::Null)
    }

    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// Whether node `i` has a kernel route for `cidr`.
    pub fn has_route(&self, i: usize, cidr: &str) -> bool {
        let family = ip_flag(if cidr.contains(':') { Family::Ipv6 } else { Family::Ipv4 });
        self.lab.nodes[i].ns.ip(&[family, "route", "show", cidr]).is_ok_and(|out| !out.trim().is_empty())
    }

    /// Node `i` dies whole, agent and network (its tunnel stops answering too); waits until
    /// every other node has withdrawn `cidr` (its PodCIDR) and says how long that took.
    pub fn kill_node_until_withdrawn(&mut self, i: usize, cidr: &str, limit: Duration) -> Result<Duration> {
        self.agents[i]
            .as_mut()
            .ok_or_else(|| LabError::Other(format!("node {i} runs no agent")))?
            .stop(Signal::SIGKILL, Duration::from_secs(5))?;
        self.lab.set_cable(i, false)?;
        let start = Instant::now();
        let others: Vec<usize> = (0..self.lab.nodes.len()).filter(|j| *j != i && self.agents[*j].is_some()).collect();
        let what = format!("{} to be withdrawn", self.lab.nodes[i].name);
        wait::until(&what, limit, Duration::from_millis(50), || {
            others.iter().all(|&j| !self.has_route(j, cidr)).then_some(())
        })?;
        Ok(start.elapsed())
    }

    /// Pings pod `dst`'s address of `family` from pod `src` every 10 ms, `count` times, while
    /// node `i`'s agent stops (SIGTERM) and starts again and the cluster converges; ping's output.
    pub fn ping_across_restart(
        &mut self,
        src: &str,
        dst: &str,
        family: Family,
        i: usize,
        count: u32,
    ) -> Result<String> {
        let missing = |name: &str| LabError::Other(format!("no pod {name} with a {family} address"));
        let src = self.pod(src).ok_or_else(|| missing(src))?;
        let dst_ip = self.pod(dst).and_then(|p| p.ip_of(family)).ok_or_else(|| missing(dst))?;
        let mut ping = src.ns.command("ping");
        ping.args(["-i", "0.01", "-c", &count.to_string(), "-W", "1", &dst_ip.to_string()]).stdout(Stdio::piped());
        let pinger = ping.spawn().map_err(|e| LabError::Other(format!("ping: {e}")))?;
        std::thread::sleep(Duration::from_millis(500));
        if let Some(agent) = self.agents[i].as_mut() {
            agent.stop(Signal::SIGTERM, Duration::from_secs(10))?;
        }
        self.start_agent(i)?;
        self.wait_converged(Duration::from_secs(30))?;
        let out = pinger.wait_with_output().map_err(|e| LabError::Other(format!("ping: {e}")))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Keeps everything running after this value is gone (`weft-lab up`).
    pub fn persist(self) {
        std::mem::forget(self);
    }
}

/// Peers that a node reports alive and programmed.
pub fn programmed_peers(status: &Value) -> usize {
    status["peers"]
        .as_array()
        .map(|peers| peers.iter().filter(|p| p["state"] == "alive" && p["programmed"] == Value::Bool(true)).count())
        .unwrap_or(0)
}

impl Pod {
    /// Pings `dst` from this pod: true when a reply came back.
    pub fn ping(&self, dst: impl Into<IpAddr>) -> bool {
        self.ns.run("ping", &["-c", "1", "-W", "2", &dst.into().to_string()]).is_ok()
    }

    /// Its address of `family`, if it has one.
    pub fn ip_of(&self, family: Family) -> Option<IpAddr> {
        self.ips.iter().copied().find(|ip| Family::of(*ip) == family)
    }
}
