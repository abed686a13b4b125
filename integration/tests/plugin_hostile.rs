//! Hostile inputs: files and namespaces that are not what the config or environment says they
//! are. The plugin never blocks on them, never reads them without bound, answers with the right
//! CNI error code and leaves nothing half-applied. Every run is bounded in time and memory.
//! Needs root.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};

use common::{GATEWAY, PluginLab, target};
use serde_json::{Value, json};
use weft_lab::Netns;
use weft_lab::cni::Reply;

/// The CNI environment of `command` for container c1, eth0, with `netns` as CNI_NETNS.
fn env(command: &str, netns: &Path) -> Vec<(String, String)> {
    [("CNI_COMMAND", command), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain([("CNI_NETNS".to_string(), netns.display().to_string())])
        .collect()
}

fn fifo(lab: &PluginLab, name: &str) -> PathBuf {
    let path = lab.dir.join(name);
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR).unwrap();
    path
}

/// The reply is the spec's error JSON with `code`, and `details` (or `msg`) contains `says`.
fn assert_refused(what: &str, reply: &Reply, code: u64, says: &str) {
    assert!(!reply.ok, "{what}: accepted");
    let err: Value = serde_json::from_str(&reply.stdout).unwrap_or_else(|e| {
        panic!("{what}: no error JSON on stdout {:?} ({e}); stderr {}", reply.stdout, reply.stderr)
    });
    assert_eq!(err["code"], code, "{what}: {err}");
    let text = format!("{} {}", err["msg"], err["details"]);
    assert!(text.contains(says), "{what}: expected {says:?} in {err}");
}

/// Nothing was allocated, recorded or plugged.
fn assert_nothing_done(what: &str, lab: &PluginLab, pod: &Netns) {
    assert!(lab.store_entries("weft").is_empty(), "{what}: {:?}", lab.store_entries("weft"));
    assert_nothing_plugged(what, lab, pod);
}

/// No veth, the pod is untouched and the bridge carries no address.
fn assert_nothing_plugged(what: &str, lab: &PluginLab, pod: &Netns) {
    assert!(lab.weft_links().is_empty(), "{what}: leaked {:?}", lab.weft_links());
    assert_eq!(pod.link_names().unwrap(), vec!["lo"], "{what}: touched the pod");
    assert!(lab.bridge_addresses().is_empty(), "{what}: left {:?} on cni0", lab.bridge_addresses());
}

#[test]
fn cni_netns_that_is_not_another_network_namespace_is_code_4_and_never_blocks() {
    let lab = PluginLab::new();
    let pod = lab.pod("p");
    let conf = lab.conf("1.1.0", json!({}));
    // CHECK looks at the namespace only with a prevResult to check against.
    let prev = json!({"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": "/x"}], "ips": []});
    let check = common::with_prev(&conf, &prev);
    let fifo = fifo(&lab, "netns-fifo");
    for (what, netns) in [
        ("a FIFO", fifo.as_path()),
        ("a mount namespace", Path::new("/proc/self/ns/mnt")),
        ("the node's own network namespace", Path::new("/proc/self/ns/net")),
    ] {
        for (command, conf) in [("ADD", &conf), ("CHECK", &check)] {
            let what = format!("{command} with {what} as CNI_NETNS");
            let reply = lab.run_bounded(&what, &env(command, netns), lab.stdin_file(conf));
            assert_refused(&what, &reply, 4, "CNI_NETNS");
            assert_nothing_done(&what, &lab, &pod);
        }
    }
    // DEL goes on without such a namespace and still releases what the attachment holds.
    let t = target("c1", &pod);
    lab.add(&conf, &t);
    let reply = lab.run_bounded("DEL with a FIFO as CNI_NETNS", &env("DEL", &fifo), lab.stdin_file(&conf));
    reply.success().unwrap();
    assert!(lab.store_entries("weft").is_empty(), "DEL released: {:?}", lab.store_entries("weft"));
    lab.assert_no_weft_links();
}

#[test]
fn a_state_file_that_is_a_fifo_a_device_or_huge_is_refused_at_once() {
    let lab = PluginLab::new();
    let pod = lab.pod("p");
    let huge = lab.dir.join("huge.json");
    std::fs::write(&huge, " ".repeat(100 * 1024)).unwrap();
    for (what, state, says) in [
        ("a FIFO", fifo(&lab, "state-fifo"), "not a regular file"),
        ("/dev/zero", PathBuf::from("/dev/zero"), "not a regular file"),
        ("a directory", lab.dir.clone(), "not a regular file"),
        ("a 100 KiB file", huge, "larger than"),
    ] {
        let conf = lab.conf("1.1.0", json!({"podCIDR": null, "stateFile": state}));
        let add =
            lab.run_bounded(&format!("ADD, {what} as stateFile"), &env("ADD", &pod.path()), lab.stdin_file(&conf));
        assert_refused(&format!("ADD, {what}"), &add, 7, says);
        let status_env = [("CNI_COMMAND".to_string(), "STATUS".to_string())];
        let status = lab.run_bounded(&format!("STATUS, {what} as stateFile"), &status_env, lab.stdin_file(&conf));
        assert_refused(&format!("STATUS, {what}"), &status, 50, says);
        assert_nothing_done(what, &lab, &pod);
    }
}

#[test]
fn a_pod_cidr_that_is_no_sane_unicast_network_is_code_7_and_touches_nothing() {
    let lab = PluginLab::new();
    let pod = lab.pod("p");
    for (pod_cidr, says) in [
        ("0.0.0.0/0", "podCIDR 0.0.0.0/0"),
        ("10.244.3.7/24", "podCIDR 10.244.3.7/24 has host bits set"),
        ("127.0.0.0/24", "podCIDR 127.0.0.0/24"),
        ("224.0.0.0/24", "podCIDR 224.0.0.0/24"),
    ] {
        let conf = lab.conf("1.1.0", json!({"podCIDR": pod_cidr}));
        let what = format!("podCIDR {pod_cidr}");
        let reply = lab.run_bounded(&what, &env("ADD", &pod.path()), lab.stdin_file(&conf));
        assert_refused(&what, &reply, 7, says);
        assert_nothing_done(&what, &lab, &pod);
    }
}

#[test]
fn a_failed_add_leaves_no_address_on_the_bridge() {
    let lab = PluginLab::new();
    let pod = lab.pod("p");
    // The interface name is taken in the container: ADD fails after setting up the bridge.
    pod.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer"]).unwrap();
    let conf = lab.conf("1.1.0", json!({}));
    let reply = lab.run_bounded("ADD into a taken name", &env("ADD", &pod.path()), lab.stdin_file(&conf));
    assert_refused("ADD into a taken name", &reply, 4, "already exists");
    assert!(lab.bridge_addresses().is_empty(), "left {:?} on cni0", lab.bridge_addresses());
    assert!(lab.store_entries("weft").is_empty() && lab.weft_links().is_empty());
}

#[test]
fn endless_or_oversized_input_is_refused_without_reading_it_all() {
    let lab = PluginLab::new();
    let pod = lab.pod("p");
    let dev_zero = || File::open("/dev/zero").unwrap();
    let reply = lab.run_bounded("/dev/zero on stdin", &env("ADD", &pod.path()), dev_zero());
    assert_refused("/dev/zero on stdin", &reply, 6, "larger than");
    let mut padded = lab.conf("1.1.0", json!({}));
    padded["padding"] = json!(" ".repeat(5 * 1024 * 1024));
    let reply = lab.run_bounded("a 5 MiB config", &env("ADD", &pod.path()), lab.stdin_file(&padded));
    assert_refused("a 5 MiB config", &reply, 6, "larger than");
    assert_nothing_done("oversized stdin", &lab, &pod);

    // A delegated IPAM plugin that never stops talking.
    let plugins = lab.dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::os::unix::fs::symlink("/usr/bin/yes", plugins.join("chatty-ipam")).unwrap();
    let conf = lab.conf("1.1.0", json!({"podCIDR": null, "ipam": {"type": "chatty-ipam"}}));
    let mut vars = env("ADD", &pod.path());
    vars.push(("CNI_PATH".into(), plugins.display().to_string()));
    let reply = lab.run_bounded("an endless IPAM plugin", &vars, lab.stdin_file(&conf));
    assert_refused("an endless IPAM plugin", &reply, 104, "larger than");
    // The attachment stays recorded: the plugin may hold an address until DEL or GC.
    assert_nothing_plugged("an endless IPAM plugin", &lab, &pod);
}

#[test]
fn fifos_in_the_ipam_store_or_as_log_file_never_block() {
    let lab = PluginLab::new();
    let pod = lab.pod("p");
    let t = target("c1", &pod);
    let store = lab.ipam_dir().join("weft");
    std::fs::create_dir_all(&store).unwrap();
    nix::unistd::mkfifo(&store.join("last_reserved_ip"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let log_fifo = fifo(&lab, "log-fifo");
    let conf = lab.conf("1.1.0", json!({"logFile": log_fifo, "logLevel": "debug"}));
    let reply = lab.run_bounded("FIFOs as hint and log file", &env("ADD", &pod.path()), lab.stdin_file(&conf));
    let result = reply.result().unwrap_or_else(|e| panic!("ADD with FIFOs around: {e}"));
    assert!(lab.ping(&pod, GATEWAY));
    assert!(reply.stderr.contains("DEBUG"), "logs went to stderr instead: {}", reply.stderr);
    lab.call("DEL", Some(&t), &common::with_prev(&conf, &result)).success().unwrap();
    lab.assert_no_weft_links();

    std::fs::remove_file(store.join("lock")).unwrap();
    nix::unistd::mkfifo(&store.join("lock"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let reply = lab.run_bounded("a FIFO as the store's lock", &env("ADD", &pod.path()), lab.stdin_file(&conf));
    assert_refused("a FIFO as the store's lock", &reply, 101, "not a regular file");
    assert!(lab.weft_links().is_empty(), "leaked {:?}", lab.weft_links());
}
