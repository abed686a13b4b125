//! Runs through a real runtime: podman 4 with its CNI backend drives `weft` through libcni.

mod common;

use common::PluginLab;
use serde_json::json;

/// Runs `script` in a `--rm` podman container on a weft network of `pod_cidr` (one CIDR or a
/// comma-separated pair) and returns its output, after checking `--rm`'s DEL left no allocation,
/// attachment record or veth.
fn run_and_release(lab: &PluginLab, pod_cidr: &str, script: &str) -> String {
    let conflist = json!({"cniVersion": "1.0.0", "name": "weftnet", "plugins": [
        {"type": "weft", "podCIDR": pod_cidr, "mtu": 1450, "dataDir": lab.ipam_dir()},
    ]});
    let plugin_dirs = [weft_lab::bins::dir(), "/usr/lib/cni".into()];
    let podman = weft_lab::podman::Podman::new(&lab.dir.join("podman"), &conflist, &plugin_dirs).unwrap();
    let name = format!("{}-c1", lab.prefix);
    let out =
        podman.run(&lab.node.path(), "weftnet", &name, script).unwrap_or_else(|e| panic!("podman run failed: {e}"));
    // --rm: podman ran DEL through libcni when the container exited.
    let held = lab.store_entries("weftnet");
    assert!(held.is_empty(), "not released: {held:?}");
    lab.assert_no_weft_links();
    out
}

#[test]
fn a_podman_container_gets_its_address_reaches_its_gateway_and_is_released() {
    let lab = PluginLab::new();
    let script = "ip -o addr show eth0; ip link show eth0; ping -c 1 -W 2 10.244.11.1";
    let out = run_and_release(&lab, "10.244.11.0/24", script);
    assert!(out.contains("inet 10.244.11."), "no pod address: {out}");
    assert!(out.contains("mtu 1450"), "pod MTU: {out}");
    assert!(out.contains("1 packets received"), "gateway unreachable: {out}");
}

#[test]
fn a_podman_container_on_a_dual_stack_network_gets_and_releases_both_families() {
    let lab = PluginLab::new();
    let (v4_gw, v6_gw) = ("10.244.12.1", "fd00:10:244:12::1");
    // Each ping's own line, so a failed one is told apart from the other family's; the IPv6 ping
    // right at start shows the address is usable at once (no duplicate address detection wait).
    let script = format!(
        "ip -o addr show eth0 scope global; ping -c 1 -W 2 {v4_gw} | grep received; \
         ping -c 1 -W 2 {v6_gw} | grep received"
    );
    let out = run_and_release(&lab, "10.244.12.0/24,fd00:10:244:12::/64", &script);
    let global: Vec<&str> = out.lines().filter(|l| l.contains(" eth0 ")).collect();
    assert!(global.iter().any(|l| l.contains("inet 10.244.12.")), "no IPv4 address: {out}");
    assert!(global.iter().any(|l| l.contains("inet6 fd00:10:244:12::")), "no IPv6 address: {out}");
    let received: Vec<&str> = out.lines().filter(|l| l.contains("packets received")).collect();
    assert_eq!(received.len(), 2, "{out}");
    assert!(received.iter().all(|l| l.contains("1 packets received")), "a gateway is unreachable: {out}");
}
