//! The `weft` plugin binary driven exactly as a runtime drives it (CNI_* env, config on stdin),
//! inside namespaces these tests create. Needs root.

mod common;

use std::collections::HashSet;

use common::{GATEWAY, PluginLab, VERSIONS, target, with_prev, write_state};
use serde_json::{Value, json};
use weft_lab::cni::{Chain, Target};

#[test]
fn every_version_adds_checks_and_deletes_in_its_own_format() {
    let lab = PluginLab::new();
    for version in VERSIONS {
        let pod = lab.pod(&format!("v{}", version.replace('.', "")));
        let t = target(&format!("c-{version}"), &pod);
        let conf = lab.conf(version, json!({}));
        let result = lab.add(&conf, &t);

        assert_eq!(result["cniVersion"], version);
        let ifaces = result["interfaces"].as_array().expect("interfaces");
        assert_eq!(ifaces.len(), 3, "bridge, host veth, container: {result}");
        assert_eq!(ifaces[0]["name"], "cni0");
        assert!(ifaces[1]["name"].as_str().unwrap().starts_with("weft"));
        assert_eq!(ifaces[2]["name"], "eth0");
        assert_eq!(ifaces[2]["sandbox"], pod.path().display().to_string());
        let ip = &result["ips"][0];
        assert_eq!(ip["interface"], 2);
        assert_eq!(ip["gateway"], GATEWAY);
        assert_eq!(ip.get("version").is_some(), version < "1.0.0", "ips[].version in {version}: {ip}");
        assert_eq!(ifaces[2].get("mtu").is_some(), version == "1.1.0");
        assert_eq!(result["routes"][0]["dst"], "0.0.0.0/0");

        let address = ip["address"].as_str().unwrap();
        let shown = pod.ip(&["-o", "addr", "show", "eth0"]).unwrap();
        assert!(shown.contains(address), "{address} not on eth0: {shown}");
        assert!(pod.ip(&["link", "show", "eth0"]).unwrap().contains("mtu 1450"));
        assert!(lab.ping(&pod, GATEWAY), "pod cannot reach its gateway in {version}");

        let check = lab.call("CHECK", Some(&t), &with_prev(&conf, &result));
        if version >= "0.4.0" {
            check.success().unwrap_or_else(|e| panic!("CHECK in {version}: {e}"));
        } else {
            assert_eq!(check.error_code(), Some(1), "CHECK must be refused in {version}");
        }
        lab.call("DEL", Some(&t), &with_prev(&conf, &result)).success().unwrap();
    }
    assert!(lab.allocations().is_empty(), "leaked: {:?}", lab.allocations());
    lab.assert_no_weft_links();
}

#[test]
fn version_lists_every_supported_version() {
    let lab = PluginLab::new();
    let reply = lab.call("VERSION", None, &json!({"cniVersion": "1.0.0"}));
    let v = reply.result().unwrap();
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(v["supportedVersions"], json!(VERSIONS));
}

#[test]
fn repeated_add_keeps_the_address_and_still_works() {
    let lab = PluginLab::new();
    let pod = lab.pod("p");
    let t = target("c1", &pod);
    let conf = lab.conf("1.0.0", json!({}));
    let first = lab.add(&conf, &t);
    let second = lab.add(&conf, &t);
    assert_eq!(first["ips"][0]["address"], second["ips"][0]["address"]);
    assert_eq!(lab.allocations().len(), 1);
    assert!(lab.ping(&pod, GATEWAY));
    lab.call("DEL", Some(&t), &with_prev(&conf, &second)).success().unwrap();
    lab.assert_no_weft_links();
}

#[test]
fn del_is_idempotent_with_or_without_netns_and_prev_result() {
    let lab = PluginLab::new();
    let pod = lab.pod("p");
    let t = target("c1", &pod);
    let conf = lab.conf("1.0.0", json!({}));
    let result = lab.add(&conf, &t);
    lab.call("DEL", Some(&t), &with_prev(&conf, &result)).success().unwrap();
    // Again, without prevResult, and with no netns at all: still success.
    lab.call("DEL", Some(&t), &conf).success().unwrap();
    let no_netns = Target { netns: None, ..t.clone() };
    lab.call("DEL", Some(&no_netns), &conf).success().unwrap();
    // A DEL for something never added is fine too.
    lab.call("DEL", Some(&target("never-added", &pod)), &conf).success().unwrap();
    assert!(lab.allocations().is_empty());
    lab.assert_no_weft_links();
}

#[test]
fn del_after_the_netns_is_gone_releases_the_address_and_the_veth() {
    let lab = PluginLab::new();
    let pod = lab.pod("p");
    let t = target("c1", &pod);
    let conf = lab.conf("1.0.0", json!({}));
    lab.add(&conf, &t);
    drop(pod); // the runtime removed the netns before DEL
    assert!(!t.netns.as_ref().unwrap().exists());
    lab.call("DEL", Some(&t), &conf).success().unwrap();
    assert!(lab.allocations().is_empty());
    lab.assert_no_weft_links();
}

#[test]
fn a_freed_name_can_be_reused_at_once_after_del() {
    let lab = PluginLab::new();
    let pod = lab.pod("p");
    let t = target("c1", &pod);
    let conf = lab.conf("1.0.0", json!({}));
    for _ in 0..3 {
        let result = lab.add(&conf, &t);
        assert!(lab.ping(&pod, GATEWAY));
        lab.call("DEL", Some(&t), &with_prev(&conf, &result)).success().unwrap();
    }
    lab.assert_no_weft_links();
}

#[test]
fn gc_releases_and_removes_everything_not_listed_as_valid() {
    let lab = PluginLab::new();
    let conf = lab.conf("1.1.0", json!({}));
    let pods: Vec<_> = (0..3).map(|i| lab.pod(&format!("p{i}"))).collect();
    let targets: Vec<_> = pods.iter().enumerate().map(|(i, p)| target(&format!("c{i}"), p)).collect();
    for t in &targets {
        lab.add(&conf, t);
    }
    assert_eq!(lab.weft_links().len(), 3);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c0", "ifname": "eth0"}]);
    lab.call("GC", None, &gc).success().unwrap();
    assert_eq!(lab.allocations().len(), 1, "only c0 keeps its address");
    assert_eq!(lab.weft_links().len(), 1, "only c0 keeps its veth");
    assert!(lab.ping(&pods[0], GATEWAY), "the valid attachment still works");
    gc["cni.dev/valid-attachments"] = json!([]);
    lab.call("GC", None, &gc).success().unwrap();
    assert!(lab.allocations().is_empty());
    lab.assert_no_weft_links();
}

#[test]
fn status_says_50_until_the_pod_cidr_is_known() {
    let lab = PluginLab::new();
    let state = lab.dir.join("node.json");
    let conf = lab.conf("1.1.0", json!({"podCIDR": null, "stateFile": state}));
    assert_eq!(lab.call("STATUS", None, &conf).error_code(), Some(50));
    let pod = lab.pod("p");
    assert_eq!(lab.call("ADD", Some(&target("c1", &pod)), &conf).error_code(), Some(11), "ADD: try again later");
    write_state(&state, "10.244.9.0/24", 1400, None);
    lab.call("STATUS", None, &conf).success().unwrap();
    assert_eq!(lab.call("STATUS", None, &lab.conf("1.0.0", json!({}))).error_code(), Some(1), "STATUS needs 1.1.0");
}

#[test]
fn the_agents_state_file_supplies_pod_cidr_and_mtu() {
    let lab = PluginLab::new();
    let state = lab.dir.join("node.json");
    write_state(&state, "10.244.9.0/24", 1400, None);
    let conf = lab.conf("1.0.0", json!({"podCIDR": null, "mtu": null, "stateFile": state}));
    let pod = lab.pod("p");
    let t = target("c1", &pod);
    let result = lab.add(&conf, &t);
    assert!(result["ips"][0]["address"].as_str().unwrap().starts_with("10.244.9."));
    assert!(pod.ip(&["link", "show", "eth0"]).unwrap().contains("mtu 1400"));
    assert!(lab.ping(&pod, "10.244.9.1"));
    lab.call("DEL", Some(&t), &conf).success().unwrap();
}

#[test]
fn exhaustion_is_code_100_and_leaks_nothing() {
    let lab = PluginLab::new();
    let conf = lab.conf("1.0.0", json!({"podCIDR": "10.244.7.0/30"})); // one assignable address
    let (p1, p2) = (lab.pod("p1"), lab.pod("p2"));
    lab.add(&conf, &target("c1", &p1));
    let reply = lab.call("ADD", Some(&target("c2", &p2)), &conf);
    assert_eq!(reply.error_code(), Some(100), "{}", reply.stdout);
    assert_eq!(lab.allocations().len(), 1);
    assert_eq!(lab.weft_links().len(), 1);
    assert!(p2.ip(&["-o", "link", "show"]).unwrap().lines().count() == 1, "p2 has only lo");
    lab.call("DEL", Some(&target("c1", &p1)), &conf).success().unwrap();
    lab.assert_no_weft_links();
}

#[test]
fn check_reports_a_broken_container() {
    let lab = PluginLab::new();
    let pod = lab.pod("p");
    let t = target("c1", &pod);
    let conf = lab.conf("1.0.0", json!({}));
    let result = lab.add(&conf, &t);
    let address = result["ips"][0]["address"].as_str().unwrap().to_string();
    pod.ip(&["addr", "del", &address, "dev", "eth0"]).unwrap();
    let reply = lab.call("CHECK", Some(&t), &with_prev(&conf, &result));
    assert_eq!(reply.error_code(), Some(103), "{}", reply.stdout);
    assert!(reply.stdout.contains("lacks address"), "{}", reply.stdout);
    let reply = lab.call("CHECK", Some(&t), &conf);
    assert_eq!(reply.error_code(), Some(7), "CHECK without prevResult");
    lab.call("DEL", Some(&t), &with_prev(&conf, &result)).success().unwrap();
}

#[test]
fn hairpin_mode_turns_hairpin_on_for_the_pods_port() {
    let lab = PluginLab::new();
    let pod = lab.pod("p");
    let conf = lab.conf("1.0.0", json!({"hairpinMode": true}));
    let result = lab.add(&conf, &target("c1", &pod));
    let host = result["interfaces"][1]["name"].as_str().unwrap();
    let details = lab.node.run("bridge", &["-d", "link", "show", "dev", host]).unwrap();
    assert!(details.contains("hairpin on"), "{details}");
    lab.call("DEL", Some(&target("c1", &pod)), &conf).success().unwrap();
}

#[test]
fn delegated_host_local_ipam_is_used_and_released() {
    let lab = PluginLab::new();
    let host_local_dir = lab.dir.join("host-local");
    let ipam = json!({"type": "host-local", "subnet": "10.244.8.0/24", "dataDir": host_local_dir,
                      "routes": [{"dst": "0.0.0.0/0"}]});
    let conf = lab.conf("0.4.0", json!({"podCIDR": null, "ipam": ipam}));
    let pod = lab.pod("p");
    let t = target("c1", &pod);
    let result = lab.add(&conf, &t);
    assert!(result["ips"][0]["address"].as_str().unwrap().starts_with("10.244.8."), "{result}");
    assert!(lab.ping(&pod, "10.244.8.1"));
    lab.call("CHECK", Some(&t), &with_prev(&conf, &result)).success().unwrap();
    assert!(lab.allocations().is_empty(), "weft's own store is not used");
    let reserved = || std::fs::read_dir(host_local_dir.join("weft")).unwrap().count();
    assert!(reserved() > 1, "host-local holds the reservation");
    lab.call("DEL", Some(&t), &with_prev(&conf, &result)).success().unwrap();
    assert_eq!(reserved(), 2, "only host-local's lock and last-reserved files remain");
    lab.assert_no_weft_links();
}

#[test]
fn works_as_the_first_plugin_of_a_chain_with_portmap_and_bandwidth() {
    let lab = PluginLab::new();
    let mut weft = lab.conf("1.0.0", json!({}));
    weft.as_object_mut().unwrap().remove("cniVersion");
    let conflist = json!({"cniVersion": "1.0.0", "name": "weft", "plugins": [
        weft,
        {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
        {"type": "bandwidth", "capabilities": {"bandwidth": true}},
    ]});
    let chain = Chain::from_conflist(&conflist).unwrap();
    let runtime_config = json!({
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 1_000_000, "ingressBurst": 100_000, "egressRate": 1_000_000, "egressBurst": 100_000},
    });
    let pod = lab.pod("p");
    let t = target("c1", &pod);
    let result = chain.add(&lab.rt, &t, &runtime_config).unwrap();
    // portmap and bandwidth pass weft's result on: they understood it.
    assert_eq!(result["interfaces"][2]["name"], "eth0");
    let address = result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
    let rules = lab.node.run("nft", &["list", "ruleset"]).unwrap();
    assert!(rules.contains(&address) && rules.contains("8080"), "portmap DNAT for {address}: {rules}");
    let host = result["interfaces"][1]["name"].as_str().unwrap();
    let qdisc = lab.node.run("tc", &["qdisc", "show", "dev", host]).unwrap();
    assert!(qdisc.contains("tbf"), "bandwidth shaped {host}: {qdisc}");
    assert!(lab.ping(&pod, GATEWAY));
    // weft's CHECK against the chain's final result. portmap 1.1.1's own CHECK is not run: it
    // looks for IPv6 rules an IPv4-only ADD never made (containernetworking/plugins#819).
    let mut weft_in_chain = conflist["plugins"][0].clone();
    weft_in_chain["name"] = json!("weft");
    weft_in_chain["cniVersion"] = json!("1.0.0");
    lab.call("CHECK", Some(&t), &with_prev(&weft_in_chain, &result)).success().unwrap();
    chain.del(&lab.rt, &t, Some(&result), &runtime_config).unwrap();
    assert!(lab.allocations().is_empty());
    lab.assert_no_weft_links();
}

#[test]
fn bad_input_gets_the_right_code_and_leaves_nothing() {
    let lab = PluginLab::new();
    let pod = lab.pod("p");
    let good = lab.conf("1.0.0", json!({}));
    let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        let mut all = vec![
            ("CNI_COMMAND".to_string(), "ADD".to_string()),
            ("CNI_CONTAINERID".into(), "c1".into()),
            ("CNI_IFNAME".into(), "eth0".into()),
            ("CNI_NETNS".into(), pod.path().display().to_string()),
        ];
        for (k, v) in pairs {
            all.retain(|(key, _)| key != k);
            if !v.is_empty() {
                all.push((k.to_string(), v.to_string()));
            }
        }
        all
    };
    let regular_file = lab.dir.join("not-a-netns");
    std::fs::write(&regular_file, b"").unwrap();
    let regular_file = regular_file.display().to_string();
    type Case<'a> = (&'a str, Vec<(String, String)>, Vec<u8>, u64);
    let cases: Vec<Case<'_>> = vec![
        ("no CNI_COMMAND", env(&[("CNI_COMMAND", "")]), good.to_string().into(), 4),
        ("unknown command", env(&[("CNI_COMMAND", "FROB")]), good.to_string().into(), 4),
        ("no container id", env(&[("CNI_CONTAINERID", "")]), good.to_string().into(), 4),
        ("bad container id", env(&[("CNI_CONTAINERID", "-x/y")]), good.to_string().into(), 4),
        ("ifname too long", env(&[("CNI_IFNAME", "eth0123456789012")]), good.to_string().into(), 4),
        ("ifname with slash", env(&[("CNI_IFNAME", "a/b")]), good.to_string().into(), 4),
        ("no netns", env(&[("CNI_NETNS", "")]), good.to_string().into(), 4),
        ("netns not a namespace", env(&[("CNI_NETNS", &regular_file)]), good.to_string().into(), 4),
        ("netns missing", env(&[("CNI_NETNS", "/run/netns/wl-no-such-ns")]), good.to_string().into(), 3),
        ("not JSON", env(&[]), b"{oops".to_vec(), 6),
        ("empty stdin", env(&[]), Vec::new(), 6),
        ("wrong field type", env(&[]), lab.conf("1.0.0", json!({"mtu": "big"})).to_string().into(), 6),
        ("unsupported version", env(&[]), lab.conf("0.2.0", json!({})).to_string().into(), 1),
        (
            "two IPv4 pod CIDRs",
            env(&[]),
            lab.conf("1.0.0", json!({"podCIDR": "10.244.7.0/24,10.244.8.0/24"})).to_string().into(),
            7,
        ),
        (
            "IPv6 pod CIDR /40",
            env(&[]),
            lab.conf("1.0.0", json!({"podCIDR": "fd00:10:200::/40"})).to_string().into(),
            7,
        ),
        ("gateway outside", env(&[]), lab.conf("1.0.0", json!({"gateway": "10.9.9.9"})).to_string().into(), 7),
        (
            "bad prevResult",
            env(&[]),
            lab.conf("1.0.0", json!({"prevResult": {"ips": [{"address": "x"}]}})).to_string().into(),
            7,
        ),
        (
            "missing IPAM plugin",
            env(&[]),
            lab.conf("1.0.0", json!({"ipam": {"type": "no-such-ipam"}})).to_string().into(),
            7,
        ),
        ("no state yet", env(&[]), lab.conf("1.0.0", json!({"podCIDR": null})).to_string().into(), 11),
    ];
    for (what, vars, stdin, code) in cases {
        let mut cmd = lab.rt.command("weft").unwrap();
        cmd.envs(vars);
        let reply = lab.rt.run(&mut cmd, &stdin).unwrap();
        assert!(!reply.ok, "{what}: accepted");
        let err: Value =
            serde_json::from_str(&reply.stdout).unwrap_or_else(|e| panic!("{what}: stdout {:?}: {e}", reply.stdout));
        assert_eq!(err["code"], code, "{what}: {err}");
        assert!(err["msg"].as_str().is_some_and(|m| !m.is_empty()), "{what}: message");
        assert!(err["cniVersion"].is_string(), "{what}: cniVersion");
        assert!(lab.allocations().is_empty(), "{what}: leaked an address");
        assert!(lab.weft_links().is_empty(), "{what}: leaked a veth");
        assert_eq!(pod.ip(&["-o", "link", "show"]).unwrap().lines().count(), 1, "{what}: touched the pod");
    }
}

#[test]
fn two_hundred_parallel_adds_then_dels_leave_no_duplicate_and_no_leak() {
    const PODS: usize = 200;
    let lab = PluginLab::new();
    let conf = lab.conf("1.0.0", json!({}));
    let pods: Vec<_> = (0..PODS).map(|i| lab.pod(&format!("p{i}"))).collect();
    let targets: Vec<Target> = pods.iter().enumerate().map(|(i, p)| target(&format!("c{i}"), p)).collect();
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = targets.iter().map(|t| s.spawn(|| lab.add(&conf, t))).collect();
        handles.into_iter().map(|h| h.join().expect("ADD thread")).collect()
    });
    let addresses: HashSet<&str> = results.iter().map(|r| r["ips"][0]["address"].as_str().unwrap()).collect();
    assert_eq!(addresses.len(), PODS, "duplicate addresses handed out");
    assert_eq!(lab.allocations().len(), PODS);
    assert_eq!(lab.weft_links().len(), PODS);
    let lab = &lab;
    std::thread::scope(|s| {
        for (t, r) in targets.iter().zip(&results) {
            let conf = with_prev(&conf, r);
            s.spawn(move || lab.call("DEL", Some(t), &conf).success().expect("DEL"));
        }
    });
    assert!(lab.allocations().is_empty(), "leaked: {:?}", lab.allocations());
    lab.assert_no_weft_links();
}
