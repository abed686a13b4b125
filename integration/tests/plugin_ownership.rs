//! Ownership under churn, plugin side: a node that does not own its block hands out no address,
//! and GC of one network removes only that network's leftovers, wherever they are. Drives the
//! real `weft` binary as a runtime does. Needs root.

mod common;

use common::{GATEWAY, PluginLab, target, with_prev, write_state};
use serde_json::{Value, json};
use weft_cni::names::host_veth_name;

const REASON: &str = "block 10.244.9.0/24 is owned by node-b";

#[test]
fn a_node_that_does_not_own_its_block_refuses_add_and_status_but_serves_its_pods() {
    let lab = PluginLab::new();
    let state = lab.dir.join("node.json");
    write_state(&state, "10.244.9.0/24", 1400, None);
    let conf = lab.conf("1.1.0", json!({"podCIDR": null, "mtu": null, "stateFile": state}));
    let (p1, p2) = (lab.pod("p1"), lab.pod("p2"));
    let (t1, t2) = (target("c1", &p1), target("c2", &p2));
    let result = lab.add(&conf, &t1);

    write_state(&state, "10.244.9.0/24", 1400, Some(REASON));
    let add = lab.call("ADD", Some(&t2), &conf);
    assert_eq!(add.error_code(), Some(11), "ADD: try again later: {}", add.stdout);
    let expected = format!("this node cannot give out addresses from 10.244.9.0/24: {REASON}");
    assert_eq!(add.json().unwrap()["msg"], expected.as_str());
    assert_eq!(lab.allocations().len(), 1, "ADD allocated nothing");
    assert_eq!(lab.weft_links(), vec![host_veth_name("c1", "eth0")], "ADD created no veth");
    assert_eq!(p2.link_names().unwrap(), vec!["lo"], "ADD did not touch the pod");
    let status = lab.call("STATUS", None, &conf);
    assert_eq!(status.error_code(), Some(50), "{}", status.stdout);
    assert_eq!(status.json().unwrap()["msg"], expected.as_str());

    // The pods the node already has keep working, and DEL always releases.
    lab.call("CHECK", Some(&t1), &with_prev(&conf, &result)).success().unwrap();
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    lab.call("GC", None, &gc).success().unwrap();
    assert!(lab.ping(&p1, "10.244.9.1"), "the existing pod still works");
    lab.call("DEL", Some(&t1), &with_prev(&conf, &result)).success().unwrap();
    assert!(lab.allocations().is_empty(), "DEL released the address");
    lab.assert_no_weft_links();

    // A podCIDR in the plugin's own config is the operator's: the agent's reason does not apply.
    let static_conf = lab.conf("1.1.0", json!({"stateFile": state}));
    lab.call("STATUS", None, &static_conf).success().unwrap();
    lab.add(&static_conf, &t2);
    lab.call("DEL", Some(&t2), &static_conf).success().unwrap();
    lab.assert_no_weft_links();
}

#[test]
fn a_state_file_with_a_reason_that_is_not_one_line_of_text_is_refused() {
    let lab = PluginLab::new();
    let state = lab.dir.join("node.json");
    let conf = lab.conf("1.1.0", json!({"podCIDR": null, "stateFile": state}));
    let pod = lab.pod("p");
    for reason in ["two\nlines", "\u{1b}[2J", &"x".repeat(1025)] {
        write_state(&state, "10.244.9.0/24", 1400, Some(reason));
        let add = lab.call("ADD", Some(&target("c1", &pod)), &conf);
        assert_eq!(add.error_code(), Some(7), "{reason:?}: {}", add.stdout);
        assert!(add.stdout.contains("unavailable"), "{reason:?}: names the field: {}", add.stdout);
        assert_eq!(lab.call("STATUS", None, &conf).error_code(), Some(50), "{reason:?}");
        assert!(lab.allocations().is_empty() && lab.weft_links().is_empty(), "{reason:?}: nothing done");
    }
}

#[test]
fn gc_of_one_network_leaves_another_networks_pods_on_the_shared_bridge_alone() {
    gc_stays_in_its_own_network(false);
}

#[test]
fn gc_of_a_delegated_ipam_network_leaves_another_networks_pods_alone() {
    gc_stays_in_its_own_network(true);
}

/// Network `weft` (built-in IPAM) and network `second` (built-in, or host-local) share `cni0`.
fn gc_stays_in_its_own_network(delegated: bool) {
    let mut lab = PluginLab::new();
    let weft = lab.conf("1.1.0", json!({}));
    let second = second_network(&mut lab, delegated);
    let (p1, p2) = (lab.pod("p1"), lab.pod("p2"));
    let weft_pod = target("c1", &p1);
    lab.add(&weft, &weft_pod);
    // host-local 1.1.1 speaks up to 1.0.0: ADD in that version, GC (1.1.0) skips it.
    let mut second_add = second.clone();
    second_add["cniVersion"] = json!("1.0.0");
    lab.add(&second_add, &target("c2", &p2));
    assert_eq!(lab.weft_links().len(), 2);

    // GC of `second`, which lists only its own pod: `weft`'s pod is none of its business.
    let mut gc = second.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c2", "ifname": "eth0"}]);
    lab.call("GC", None, &gc).success().unwrap();
    assert!(lab.weft_links().contains(&host_veth_name("c1", "eth0")), "GC of second removed weft's pod's veth");
    assert!(lab.ping(&p1, GATEWAY), "weft's pod still works");
    assert_eq!(lab.weft_links().len(), 2, "second's listed pod keeps its veth");

    // With nothing valid, `second` loses its own pod, and only that.
    gc["cni.dev/valid-attachments"] = json!([]);
    lab.call("GC", None, &gc).success().unwrap();
    assert_eq!(lab.weft_links(), vec![host_veth_name("c1", "eth0")]);
    assert!(lab.store_entries("second").is_empty(), "second forgot its pod: {:?}", lab.store_entries("second"));
    assert_eq!(lab.allocations().len(), 1, "weft's reservation stays");
    assert!(lab.ping(&p1, GATEWAY), "weft's pod still works");
    lab.call("DEL", Some(&weft_pod), &weft).success().unwrap();
    lab.assert_no_weft_links();
}

fn second_network(lab: &mut PluginLab, delegated: bool) -> Value {
    let addressing = if delegated {
        let dir = lab.dir.join("host-local");
        json!({"podCIDR": null, "ipam": {"type": host_local_with_gc(lab), "subnet": "10.244.8.0/24", "dataDir": dir}})
    } else {
        json!({"podCIDR": "10.244.8.0/24"})
    };
    let mut conf = lab.conf("1.1.0", addressing);
    conf["name"] = json!("second");
    conf
}

/// host-local 1.1.1 predates GC (and answers it with code 3): a shim in front of it answers GC
/// as a 1.1.0 IPAM plugin with nothing to collect would. Returns the shim's plugin name.
fn host_local_with_gc(lab: &mut PluginLab) -> &'static str {
    let shims = lab.dir.join("shims");
    std::fs::create_dir_all(&shims).unwrap();
    let shim = shims.join("host-local-gc");
    std::fs::write(&shim, "#!/bin/sh\n[ \"$CNI_COMMAND\" = GC ] && exit 0\nexec /usr/lib/cni/host-local\n").unwrap();
    std::fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    lab.rt.path.0.insert(0, shims);
    "host-local-gc"
}

#[test]
fn gc_removes_a_veth_that_a_killed_del_left_down_and_off_the_bridge() {
    let lab = PluginLab::new();
    let conf = lab.conf("1.1.0", json!({}));
    let pods: Vec<_> = (0..3).map(|i| lab.pod(&format!("p{i}"))).collect();
    for (i, pod) in pods.iter().enumerate() {
        lab.add(&conf, &target(&format!("c{i}"), pod));
    }
    // DEL's first request (down, off the bridge) went through, then DEL was killed.
    let half_deleted = host_veth_name("c1", "eth0");
    lab.node.ip(&["link", "set", "dev", &half_deleted, "down", "nomaster"]).unwrap();

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] =
        json!([{"containerID": "c0", "ifname": "eth0"}, {"containerID": "c2", "ifname": "eth0"}]);
    lab.call("GC", None, &gc).success().unwrap();
    let left = lab.weft_links();
    assert!(!left.contains(&half_deleted), "GC missed the half-deleted veth: {left:?}");
    assert_eq!(left.len(), 2, "the valid pods keep theirs: {left:?}");
    assert_eq!(lab.allocations().len(), 2, "c1's address is released");
    assert!(lab.ping(&pods[0], GATEWAY) && lab.ping(&pods[2], GATEWAY), "the valid pods still work");
    assert_eq!(pods[1].link_names().unwrap(), vec!["lo"], "c1's pod lost its interface with the veth");

    gc["cni.dev/valid-attachments"] = json!([]);
    lab.call("GC", None, &gc).success().unwrap();
    assert!(lab.store_entries("weft").is_empty(), "{:?}", lab.store_entries("weft"));
    lab.assert_no_weft_links();
}
