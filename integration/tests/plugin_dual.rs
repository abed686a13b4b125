//! Dual-stack and IPv6-only pods: the real `weft` binary driven as a runtime drives it, inside
//! namespaces these tests create. Needs root.

mod common;

use common::{GATEWAY, POD_CIDR, PluginLab, target, with_prev};
use serde_json::{Value, json};
use weft_lab::Netns;

const POD_CIDR_V6: &str = "fd00:10:244:7::/64";
const GATEWAY_V6: &str = "fd00:10:244:7::1";

fn dual_stack(lab: &PluginLab, version: &str) -> Value {
    lab.conf(version, json!({"podCIDR": format!("{POD_CIDR},{POD_CIDR_V6}")}))
}

/// The result's addresses without their prefix, in order.
fn addresses(result: &Value) -> Vec<String> {
    let ips = result["ips"].as_array().expect("ips");
    ips.iter().map(|ip| ip["address"].as_str().unwrap().split('/').next().unwrap().to_string()).collect()
}

/// `ip -o addr show` lines of one family on a device.
fn address_lines(ns: &Netns, family: &str, dev: &str) -> Vec<String> {
    let shown = ns.ip(&["-o", family, "addr", "show", "dev", dev]).unwrap_or_default();
    shown.lines().map(str::to_string).collect()
}

/// The global IPv6 address lines of a device (the kernel's own link-local one is not weft's).
fn global_v6(ns: &Netns, dev: &str) -> Vec<String> {
    address_lines(ns, "-6", dev).into_iter().filter(|l| l.contains("scope global")).collect()
}

#[test]
fn dual_stack_pods_get_both_families_usable_at_once_and_check_del_release_both() {
    let lab = PluginLab::new();
    let (pod_a, pod_b) = (lab.pod("a"), lab.pod("b"));
    let (ta, tb) = (target("ca", &pod_a), target("cb", &pod_b));
    let (conf_a, conf_b) = (dual_stack(&lab, "0.4.0"), dual_stack(&lab, "1.0.0"));
    let a = lab.add(&conf_a, &ta);
    // Right after ADD, before anything else: the IPv6 address is no DAD candidate any more.
    assert!(lab.ping(&pod_a, GATEWAY_V6), "the IPv6 gateway is not reachable right after ADD");
    let b = lab.add(&conf_b, &tb);

    for (result, version) in [(&a, "0.4.0"), (&b, "1.0.0")] {
        let ips = result["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 2, "{result}");
        assert!(ips[0]["address"].as_str().unwrap().starts_with("10.244.7."), "{result}");
        assert!(ips[1]["address"].as_str().unwrap().starts_with("fd00:10:244:7::"), "{result}");
        assert!(ips[1]["address"].as_str().unwrap().ends_with("/64"), "{result}");
        assert_eq!((&ips[0]["gateway"], &ips[1]["gateway"]), (&json!(GATEWAY), &json!(GATEWAY_V6)));
        let versions = (ips[0].get("version"), ips[1].get("version"));
        let want = if version < "1.0.0" { (Some(&json!("4")), Some(&json!("6"))) } else { (None, None) };
        assert_eq!(versions, want, "ips[].version in {version}");
        let routes = &result["routes"];
        assert_eq!(routes, &json!([{"dst": "0.0.0.0/0", "gw": GATEWAY}, {"dst": "::/0", "gw": GATEWAY_V6}]));
    }
    let (a_ips, b_ips) = (addresses(&a), addresses(&b));
    assert_ne!(a_ips, b_ips);

    for (pod, ips) in [(&pod_a, &a_ips), (&pod_b, &b_ips)] {
        let v6 = global_v6(pod, "eth0");
        assert_eq!(v6.len(), 1, "{v6:?}");
        assert!(v6[0].contains(&ips[1]), "{v6:?}");
        assert!(!v6[0].contains("tentative"), "DAD still running: {v6:?}");
        let routes = pod.ip(&["-6", "route", "show", "default"]).unwrap();
        assert!(routes.contains(&format!("via {GATEWAY_V6} dev eth0")), "{routes}");
        // No router advertisement may add addresses or routes to the pod.
        assert_eq!(pod.run("sysctl", &["-n", "net.ipv6.conf.eth0.accept_ra"]).unwrap().trim(), "0");
    }
    let bridge = global_v6(&lab.node, "cni0");
    assert!(bridge.len() == 1 && bridge[0].contains(&format!("{GATEWAY_V6}/64")), "{bridge:?}");
    assert!(!bridge[0].contains("tentative"), "{bridge:?}");

    // Both families, both ways, and the gateways.
    for (pod, peer) in [(&pod_a, &b_ips), (&pod_b, &a_ips)] {
        for dst in peer.iter().map(String::as_str).chain([GATEWAY, GATEWAY_V6]) {
            assert!(lab.ping(pod, dst), "{} cannot reach {dst}", pod.name());
        }
    }

    lab.call("CHECK", Some(&ta), &with_prev(&conf_a, &a)).success().unwrap();
    lab.call("CHECK", Some(&tb), &with_prev(&conf_b, &b)).success().unwrap();
    let v6_address = a["ips"][1]["address"].as_str().unwrap();
    pod_a.ip(&["addr", "del", v6_address, "dev", "eth0"]).unwrap();
    let check = lab.call("CHECK", Some(&ta), &with_prev(&conf_a, &a));
    assert_eq!(check.error_code(), Some(103), "CHECK must notice the missing IPv6 address: {}", check.stdout);
    assert!(check.stdout.contains(v6_address), "{}", check.stdout);

    assert_eq!(lab.allocations().len(), 4, "{:?}", lab.allocations());
    lab.call("DEL", Some(&ta), &with_prev(&conf_a, &a)).success().unwrap();
    let left = lab.allocations();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(b_ips.iter().all(|ip| left.iter().any(|f| f.starts_with(&format!("{ip}@")))), "{left:?}");
    lab.call("DEL", Some(&tb), &with_prev(&conf_b, &b)).success().unwrap();
    assert!(lab.allocations().is_empty(), "leaked: {:?}", lab.allocations());
    lab.assert_no_weft_links();
}

#[test]
fn gc_releases_both_families_of_a_stale_attachment() {
    let lab = PluginLab::new();
    let (keep, gone) = (lab.pod("keep"), lab.pod("gone"));
    let conf = dual_stack(&lab, "1.1.0");
    let kept = lab.add(&conf, &target("keep", &keep));
    lab.add(&conf, &target("gone", &gone));
    assert_eq!(lab.allocations().len(), 4);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    lab.call("GC", None, &gc).success().unwrap();
    let mut left = lab.allocations();
    left.sort();
    let mut want: Vec<String> = addresses(&kept);
    want.sort();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(want.iter().zip(&left).all(|(ip, file)| file.starts_with(&format!("{ip}@"))), "{left:?} vs {want:?}");
    assert_eq!(lab.weft_links().len(), 1, "only the kept pod's veth: {:?}", lab.weft_links());
    for dst in [GATEWAY, GATEWAY_V6] {
        assert!(lab.ping(&keep, dst), "the kept pod lost {dst}");
    }
    gc["cni.dev/valid-attachments"] = json!([]);
    lab.call("GC", None, &gc).success().unwrap();
    assert!(lab.allocations().is_empty(), "leaked: {:?}", lab.allocations());
    lab.assert_no_weft_links();
}

#[test]
fn an_ipv6_only_config_and_ip_families_ipv6_give_only_ipv6() {
    let lab = PluginLab::new();
    let only_v6 = lab.conf("1.1.0", json!({"podCIDR": POD_CIDR_V6}));
    let mut dual_asking_v6 = dual_stack(&lab, "1.1.0");
    dual_asking_v6["ipFamilies"] = json!(["IPv6"]);
    for (i, conf) in [only_v6, dual_asking_v6].iter().enumerate() {
        let pod = lab.pod(&format!("p{i}"));
        let t = target(&format!("c{i}"), &pod);
        let result = lab.add(conf, &t);
        let ips = result["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 1, "{result}");
        assert!(ips[0]["address"].as_str().unwrap().starts_with("fd00:10:244:7::"), "{result}");
        assert_eq!(result["routes"], json!([{"dst": "::/0", "gw": GATEWAY_V6}]));
        assert!(address_lines(&pod, "-4", "eth0").is_empty(), "no IPv4 address wanted");
        assert!(lab.ping(&pod, GATEWAY_V6), "IPv6-only pod cannot reach its gateway");
        lab.call("CHECK", Some(&t), &with_prev(conf, &result)).success().unwrap();
        lab.call("DEL", Some(&t), &with_prev(conf, &result)).success().unwrap();
    }
    assert!(lab.allocations().is_empty(), "leaked: {:?}", lab.allocations());
    lab.assert_no_weft_links();
}

#[test]
fn asking_for_a_family_without_a_pool_is_code_7_and_leaves_nothing_behind() {
    let lab = PluginLab::new();
    let pod = lab.pod("p");
    let t = target("c1", &pod);
    let conf = lab.conf("1.0.0", json!({"ipFamilies": ["IPv4", "IPv6"]}));
    let reply = lab.call("ADD", Some(&t), &conf);
    assert_eq!(reply.error_code(), Some(7), "{}", reply.stdout);
    let err: Value = serde_json::from_str(&reply.stdout).unwrap();
    assert!(err["msg"].as_str().unwrap().contains("ipFamilies"), "{err}");
    assert!(lab.store_entries("weft").is_empty(), "{:?}", lab.store_entries("weft"));
    assert!(!lab.node.link_names().unwrap().contains(&"cni0".to_string()), "no bridge");
    assert!(!pod.link_names().unwrap().contains(&"eth0".to_string()), "no interface in the pod");
    lab.assert_no_weft_links();
}

#[test]
fn host_local_with_a_range_per_family_gives_both() {
    let lab = PluginLab::new();
    let host_local_dir = lab.dir.join("host-local");
    let ipam = json!({"type": "host-local", "dataDir": host_local_dir,
                      "ranges": [[{"subnet": "10.244.8.0/24"}], [{"subnet": "fd00:10:244:8::/64"}]]});
    let conf = lab.conf("0.4.0", json!({"podCIDR": null, "ipam": ipam}));
    let pod = lab.pod("p");
    let t = target("c1", &pod);
    let result = lab.add(&conf, &t);
    let ips = addresses(&result);
    assert!(ips.len() == 2 && ips[0].starts_with("10.244.8.") && ips[1].starts_with("fd00:10:244:8::"), "{result}");
    assert_eq!(result["ips"][1]["version"], "6");
    assert_eq!(result["ips"][1]["gateway"], "fd00:10:244:8::1");
    assert_eq!(global_v6(&pod, "eth0").len(), 1);
    for dst in ["10.244.8.1", "fd00:10:244:8::1"] {
        assert!(lab.ping(&pod, dst), "cannot reach {dst}");
    }
    lab.call("CHECK", Some(&t), &with_prev(&conf, &result)).success().unwrap();
    lab.call("DEL", Some(&t), &with_prev(&conf, &result)).success().unwrap();
    let reserved: Vec<String> = std::fs::read_dir(host_local_dir.join("weft"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    assert!(reserved.is_empty(), "host-local still holds {reserved:?}");
    lab.assert_no_weft_links();
}
