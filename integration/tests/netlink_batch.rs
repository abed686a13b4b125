//! `SyncNetlink`, the plugin's blocking netlink, against the kernel: a veth pair made with its
//! peer in another namespace reports both ends' indexes (the kernel's echo), and a batch of
//! writes sent at once is carried out in order, each write answered on its own. Needs root.

use std::fs::File;

use serde_json::Value;
use weft_lab::netns::{Netns, within};
use weft_overlay::Mac;
use weft_overlay::netlink::VethSpec;
use weft_overlay::netlink_sync::{SyncNetlink, Write};
use weft_overlay::objects::{LinkChange, MAIN_TABLE, Route, WEFT_ROUTE_PROTOCOL};

fn index_of(ns: &Netns, name: &str) -> u32 {
    let out = ns.ip(&["-j", "link", "show", name]).expect("ip link");
    let links: Value = serde_json::from_str(&out).expect("json");
    links[0]["ifindex"].as_u64().expect("ifindex") as u32
}

#[test]
fn a_veth_pair_and_a_batch_of_writes_in_two_namespaces() {
    weft_lab::require_root();
    let prefix = weft_lab::unique_prefix();
    let node = Netns::create(&format!("{prefix}-node")).expect("node namespace");
    let pod = Netns::create(&format!("{prefix}-pod")).expect("pod namespace");
    node.ip(&["link", "add", "br0", "type", "bridge"]).expect("bridge");
    let pod_file = File::open(pod.path()).expect("pod netns file");
    let pod_path = pod.path();

    let indexes = within(&node.path(), || {
        let nl = SyncNetlink::connect().expect("connect");
        let bridge = nl.link("br0").expect("get link").expect("br0 exists");
        assert_eq!(nl.link("nosuch0").expect("get link"), None, "a missing link is None, not an error");
        let spec = VethSpec {
            name: "host0".into(),
            mac: Mac::derived("host0"),
            mtu: 1450,
            master: Some(bridge.index),
            peer_name: "eth0".into(),
            peer_mac: None,
            peer_netns: std::os::fd::AsFd::as_fd(&pod_file),
        };
        let indexes = nl.add_veth(&spec).expect("create veth");
        assert!(nl.add_veth(&spec).expect_err("exists already").is_exists());
        indexes
    })
    .expect("inside the node");
    assert_eq!(indexes.host, index_of(&node, "host0"));
    assert_eq!(indexes.peer, Some(index_of(&pod, "eth0")), "the echo names the peer's index in its namespace");

    let index = indexes.peer.expect("peer index");
    let up = LinkChange { up: Some(true), mac: Some(Mac::derived("eth0")), ..LinkChange::default() };
    let route = Route {
        dst: "0.0.0.0/0".parse().unwrap(),
        gateway: Some("10.244.9.1".parse().unwrap()),
        oif: Some(index),
        onlink: false,
        protocol: WEFT_ROUTE_PROTOCOL,
        table: MAIN_TABLE,
        priority: None,
    };
    let address = Write::AddAddress { index, addr: "10.244.9.7/24".parse().unwrap() };
    // The thread that enters the pod's namespace ends with the closure; the socket stays there.
    let nl = std::thread::scope(|s| s.spawn(|| SyncNetlink::entering(&pod_file, &pod_path)).join())
        .expect("thread")
        .expect("socket in the pod");
    let outcomes = nl.write_all(&[address.clone(), Write::SetLink { index, change: &up }, Write::AddRoute(&route)]);
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let shown = pod.ip(&["-4", "route", "show", "default"]).expect("routes");
    assert!(shown.contains("via 10.244.9.1 dev eth0"), "the route needed the address before it: {shown}");
    let link: Value = serde_json::from_str(&pod.ip(&["-j", "link", "show", "eth0"]).expect("link")).expect("json");
    assert!(link[0]["flags"].as_array().expect("flags").iter().any(|f| f == "UP"), "{link}");
    assert_eq!(link[0]["address"], Mac::derived("eth0").to_string());

    // Each write has its own answer: a failure does not stop the ones after it.
    let second = Write::AddAddress { index, addr: "10.244.9.8/24".parse().unwrap() };
    let outcomes = nl.write_all(&[address, second]);
    assert!(outcomes[0].as_ref().expect_err("the address is there").is_exists());
    assert!(outcomes[1].is_ok(), "{:?}", outcomes[1]);
    assert!(pod.ip(&["-4", "addr", "show", "eth0"]).expect("addresses").contains("10.244.9.8/24"));
    assert!(nl.write_all(&[]).is_empty());
    nl.delete_link_by_name("eth0").expect("delete the pair from its container end");
    assert!(!node.link_names().expect("links").contains(&"host0".to_string()), "the pair is gone");
}
