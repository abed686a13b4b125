//! Fixtures for the plugin tests: a node namespace, pod namespaces, a runtime driving the real
//! `weft` binary inside the node namespace, and probes for leftovers.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use weft_lab::cni::{PluginPath, Reply, Runtime, Target};
use weft_lab::{Netns, wait};

pub const POD_CIDR: &str = "10.244.7.0/24";
pub const GATEWAY: &str = "10.244.7.1";
pub const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

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

    /// Allocation files in the IPAM store of network `weft`.
    pub fn allocations(&self) -> Vec<String> {
        let dir = self.ipam_dir().join("weft");
        let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
        entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n.contains('@')).collect()
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

/// The config a runtime sends for CHECK/DEL: the ADD config plus its result as prevResult.
pub fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}
