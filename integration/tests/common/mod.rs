//! Fixtures for the plugin tests: a node namespace, pod namespaces, a runtime driving the real
//! `weft` binary inside the node namespace, and probes for leftovers.

#![allow(dead_code)] // each test binary uses a different subset

use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft_lab::cni::{PluginPath, Reply, Runtime, Target};
use weft_lab::{Netns, wait};

pub const POD_CIDR: &str = "10.244.7.0/24";
pub const GATEWAY: &str = "10.244.7.1";
pub const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// A plugin run that has not answered after this long is hung.
pub const HANG: Duration = Duration::from_secs(5);
/// Address space a bounded plugin run may map: one reading without bound fails here instead of
/// taking the machine's memory.
const MEMORY_LIMIT: u64 = 1 << 30;

pub struct PluginLab {
    pub prefix: String,
    pub dir: PathBuf,
    pub rt: Runtime,
    // Declared last: dropped after the runtime that refers to it.
    pub node: Netns,
}

impl PluginLab {
    pub fn new() -> PluginLab {
        weft_lab::require_root();
        let prefix = weft_lab::unique_prefix();
        let node = Netns::create(&format!("{prefix}-node")).expect("create node namespace");
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).expect("create lab dir");
        let rt = Runtime::new(PluginPath::with_reference_plugins(), &node.path());
        PluginLab { prefix, dir, rt, node }
    }

    pub fn pod(&self, name: &str) -> Netns {
        Netns::create(&format!("{}-{name}", self.prefix)).expect("create pod namespace")
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.join("ipam")
    }

    /// A weft network config with a static PodCIDR and this lab's IPAM dir, plus `extra` fields.
    pub fn conf(&self, version: &str, extra: Value) -> Value {
        let mut conf = json!({
            "cniVersion": version, "name": "weft", "type": "weft",
            "podCIDR": POD_CIDR, "mtu": 1450, "dataDir": self.ipam_dir(),
            "stateFile": self.dir.join("no-state.json"),
        });
        for (k, v) in extra.as_object().expect("extra is an object") {
            if v.is_null() {
                conf.as_object_mut().unwrap().remove(k);
            } else {
                conf[k] = v.clone();
            }
        }
        conf
    }

    pub fn call(&self, command: &str, target: Option<&Target>, conf: &Value) -> Reply {
        self.rt.exec("weft", command, target, conf).expect("run weft")
    }

    pub fn add(&self, conf: &Value, target: &Target) -> Value {
        let reply = self.call("ADD", Some(target), conf);
        reply.result().unwrap_or_else(|e| panic!("ADD failed: {e}"))
    }

    /// Host veths weft made in the node namespace (live or tombstoned).
    pub fn weft_links(&self) -> Vec<String> {
        let links = self.node.link_names().expect("list links");
        links.into_iter().filter(|n| weft_cni::names::is_weft_veth(n)).collect()
    }

    /// Waits (bounded) until DEL's detached reapers have removed every weft veth.
    pub fn assert_no_weft_links(&self) {
        let left = wait::until("weft veths to be reaped", Duration::from_secs(10), Duration::from_millis(20), || {
            self.weft_links().is_empty().then_some(())
        });
        assert!(left.is_ok(), "veths left behind: {:?}", self.weft_links());
    }

    /// Allocation files (`<address>@<owner>`) in the IPAM store of network `weft`.
    pub fn allocations(&self) -> Vec<String> {
        let is_allocation = |n: &String| n.split_once('@').is_some_and(|(ip, _)| ip.parse::<IpAddr>().is_ok());
        self.store_entries("weft").into_iter().filter(is_allocation).collect()
    }

    /// Allocations and attachment records (`…@<owner>`) in the store of `network`.
    pub fn store_entries(&self, network: &str) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.ipam_dir().join(network)) else { return Vec::new() };
        entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n.contains('@')).collect()
    }

    /// The IPv4 addresses on the node's `cni0` (none when it does not exist).
    pub fn bridge_addresses(&self) -> Vec<String> {
        let shown = self.node.ip(&["-o", "-4", "addr", "show", "dev", "cni0"]).unwrap_or_default();
        shown.lines().filter_map(|l| Some(l.split_whitespace().nth(3)?.to_string())).collect()
    }

    /// Runs weft as `call` does, with `vars` as its CNI environment and `stdin` (any file: a
    /// config written out, /dev/zero …), under a memory limit. Panics, after killing it, when it
    /// has not answered within [`HANG`].
    pub fn run_bounded(&self, what: &str, vars: &[(String, String)], stdin: File) -> Reply {
        let plain = self.rt.command("weft").expect("weft");
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--as={MEMORY_LIMIT}")).arg("--").arg(plain.get_program()).env_clear();
        for (key, value) in plain.get_envs() {
            cmd.env(key, value.unwrap_or_default());
        }
        cmd.envs(vars.iter().cloned()).stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = self.rt.spawn(&mut cmd).expect("start weft");
        let exited = wait::until(what, HANG, Duration::from_millis(10), || child.try_wait().ok().flatten());
        if exited.is_err() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: weft hung (no answer within {HANG:?})");
        }
        let out = child.wait_with_output().expect("collect weft's answer");
        Reply {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: start.elapsed(),
        }
    }

    /// `conf` written to a file, to be a plugin's stdin.
    pub fn stdin_file(&self, conf: &Value) -> File {
        let path = self.dir.join(format!("stdin-{}.json", rand::random::<u32>()));
        std::fs::write(&path, conf.to_string()).expect("write stdin file");
        File::open(path).expect("open stdin file")
    }

    /// Runs ping inside `pod`; true when a reply came back.
    pub fn ping(&self, pod: &Netns, dst: &str) -> bool {
        pod.run("ping", &["-c", "1", "-W", "2", dst]).is_ok()
    }
}

impl Drop for PluginLab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn target(id: &str, pod: &Netns) -> Target {
    Target::new(id, &pod.path(), "eth0")
}

/// What the agent publishes, with `unavailable` set when the node must not hand out addresses.
pub fn write_state(path: &Path, pod_cidr: &str, mtu: u32, unavailable: Option<&str>) {
    let net: ipnet::Ipv4Net = pod_cidr.parse().unwrap();
    weft_cni::state::NodeState {
        version: 1,
        node: "n1".into(),
        node_ips: vec!["192.0.2.10".parse().unwrap()],
        pools: vec![weft_cni::state::NodePool {
            pod_cidr: net.into(),
            gateway: weft_cni::config::first_host(&net.into()),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        }],
        mtu,
        bridge: "cni0".into(),
        unavailable: unavailable.map(String::from),
    }
    .write(path)
    .unwrap();
}

/// The config a runtime sends for CHECK/DEL: the ADD config plus its result as prevResult.
pub fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}
