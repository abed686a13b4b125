//! One run through a real runtime: podman 4 with its CNI backend drives `weft` through libcni.

mod common;

use common::PluginLab;
use serde_json::json;

#[test]
fn a_podman_container_gets_its_address_reaches_its_gateway_and_is_released() {
    let lab = PluginLab::new();
    let conflist = json!({"cniVersion": "1.0.0", "name": "weftnet", "plugins": [
        {"type": "weft", "podCIDR": "10.244.11.0/24", "mtu": 1450, "dataDir": lab.ipam_dir()},
    ]});
    let plugin_dirs = [weft_lab::bins::dir(), "/usr/lib/cni".into()];
    let podman = weft_lab::podman::Podman::new(&lab.dir.join("podman"), &conflist, &plugin_dirs).unwrap();
    let name = format!("{}-c1", lab.prefix);
    let out = podman
        .run(&lab.node.path(), "weftnet", &name, "ip -o addr show eth0; ip link show eth0; ping -c 1 -W 2 10.244.11.1")
        .unwrap_or_else(|e| panic!("podman run failed: {e}"));
    assert!(out.contains("inet 10.244.11."), "no pod address: {out}");
    assert!(out.contains("mtu 1450"), "pod MTU: {out}");
    assert!(out.contains("1 packets received"), "gateway unreachable: {out}");
    // --rm: podman ran DEL through libcni when the container exited.
    let store = lab.ipam_dir().join("weftnet");
    let held: Vec<_> = std::fs::read_dir(&store).unwrap().filter_map(|e| e.ok()).collect();
    assert!(held.iter().all(|e| !e.file_name().to_string_lossy().contains('@')), "address not released");
    lab.assert_no_weft_links();
}
