//! The plugin's inputs from the runtime: the CNI_* environment and the network config on stdin.
//!
//! Input: `KEY=VALUE` lines for the environment, a NUL byte, then stdin (no NUL: all stdin).
#![no_main]

use std::collections::BTreeMap;
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use weft_cni::config::{Request, check_gateway, check_mtu, check_pod_cidr, peek_version};
use weft_cni::env::{Command, Invocation};
use weft_cni::error::{CniError, Code};
use weft_cni::names::validate_id;
use weft_overlay::rules::check_ifname;

fuzz_target!(|data: &[u8]| {
    let (env, stdin) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    let env = String::from_utf8_lossy(env);
    let vars: BTreeMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
    check_invocation(Invocation::from_vars(|k| vars.get(k).map(|v| v.to_string())));
    check_request(stdin);
});

fn check_invocation(inv: Result<Invocation, CniError>) {
    let inv = match inv {
        Ok(inv) => inv,
        Err(e) => return assert_eq!(e.code, Code::InvalidEnvironment as u32, "{e}"),
    };
    assert!(inv.plugin_path.iter().all(|p| !p.as_os_str().is_empty()));
    let needs_attachment = matches!(inv.command, Command::Add | Command::Del | Command::Check);
    assert_eq!(inv.attachment.is_some(), needs_attachment);
    if let Some(a) = inv.attachment {
        validate_id("container id", &a.container_id).expect("accepted container id is valid");
        check_ifname(&a.ifname).expect("accepted ifname is valid");
        assert!(a.netns.is_some() || inv.command == Command::Del, "only DEL may lack a netns");
    }
}

fn check_request(stdin: &[u8]) {
    let peeked = peek_version(stdin);
    let req = match Request::parse(stdin.to_vec()) {
        Ok(req) => req,
        Err(e) => return check_error_json(&e, peeked),
    };
    // The version the error path answers in is the one the request is decoded with.
    assert_eq!(peeked, Some(req.version));
    assert_eq!(req.version.as_str().parse().ok(), Some(req.version), "the version re-serializes");
    validate_id("network name", &req.conf.name).expect("accepted network name is valid");

    // The state file is the state_file target's business: never read one here.
    let mut conf = req.conf.clone();
    conf.state_file = Some(PathBuf::from("/nonexistent/weft-fuzz/node.json"));
    let network = match conf.resolve() {
        Ok(network) => network,
        Err(e) => return check_error_json(&e, peeked),
    };
    assert_eq!(network.name, conf.name);
    check_mtu(network.mtu).expect("resolved MTU is in range");
    check_ifname(&network.bridge).expect("resolved bridge name is valid");
    for pool in &network.pools {
        // An exact network of unicast addresses, with room for a gateway and a pod.
        check_pod_cidr(pool.net).expect("resolved pool is a sane pod CIDR");
        check_gateway(&pool.net, pool.gateway).expect("resolved gateway is a host of the pool");
    }
    // At most one pool per family, IPv4 first.
    assert!(network.pools.len() <= 2);
    assert!(network.pools.windows(2).all(|w| w[0].net.addr().is_ipv4() && w[1].net.addr().is_ipv6()));
}

/// What the runtime reads back: the spec's error JSON, in the request's version when it has one.
fn check_error_json(e: &CniError, version: Option<weft_cni::version::CniVersion>) {
    assert!(e.code > 0, "{e}");
    let v: serde_json::Value = serde_json::from_str(&e.to_json(version)).expect("error JSON parses");
    assert_eq!(v["code"].as_u64(), Some(u64::from(e.code)));
    assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()));
    if let Some(version) = version {
        assert_eq!(v["cniVersion"].as_str(), Some(version.as_str()));
    }
}
