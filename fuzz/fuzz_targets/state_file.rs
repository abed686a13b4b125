//! The files another process (or a disk) hands the agent and the plugin: the node state file
//! (written by the agent, read by every plugin run) and the agent's PodCIDR lease.
#![no_main]

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use libfuzzer_sys::fuzz_target;
use weft_agent::agent::initial_claim;
use weft_agent::config::Config;
use weft_agent::detect::Underlay;
use weft_agent::files::{Paths, parse_lease};
use weft_agent::validate::check_pod_cidr;
use weft_cni::config::{check_gateway, check_mtu};
use weft_cni::state::{MAX_REASON_BYTES, NodeState};
use weft_overlay::rules::check_ifname;

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = NodeState::parse(data) {
        assert!(!state.pools.is_empty() && !state.node_ips.is_empty());
        for pool in &state.pools {
            assert!(pool.cluster_cidr.contains(&pool.pod_cidr));
            weft_cni::config::check_pod_cidr(pool.pod_cidr).expect("accepted PodCIDR is a sane pod CIDR");
            check_gateway(&pool.pod_cidr, pool.gateway).expect("accepted gateway is a host of the PodCIDR");
            assert_eq!(state.pool_of(pool.gateway), Some(pool), "one pool per family");
        }
        if let Some(reason) = &state.unavailable {
            // It ends up in error messages and logs: one bounded line.
            assert!(!reason.trim().is_empty() && reason.len() <= MAX_REASON_BYTES, "{reason:?}");
            assert!(!reason.chars().any(char::is_control), "{reason:?}");
        }
        check_mtu(state.mtu).expect("accepted MTU is in range");
        check_ifname(&state.bridge).expect("accepted bridge name is valid");
        let written = serde_json::to_vec_pretty(&state).expect("state serializes");
        assert_eq!(NodeState::parse(&written), Ok(state), "what is accepted round-trips");
    }

    if let Ok(lease) = parse_lease(data) {
        let subnet = Ipv4Net::new(Ipv4Addr::new(192, 0, 2, 0), 24).expect("literal");
        let underlay = Underlay::single(Ipv4Addr::new(192, 0, 2, 1).into(), "eth0", subnet.into(), 1500);
        let paths = Paths { state_dir: PathBuf::new(), cni_conf_dir: PathBuf::new(), ipam_dir: PathBuf::new() };
        let mut cfg = Config::with_defaults("me", underlay, Vec::new(), paths);
        cfg.cluster_cidrs.push("fd00:10:244::/56".parse().expect("literal"));
        // A lease only ever brings back a block that fits its family's pool.
        for pool in cfg.pools() {
            if let Some(claim) = initial_claim(&cfg, &pool, Some(&lease), 0) {
                check_pod_cidr(claim.cidr, &pool).expect("a held claim fits");
                assert_eq!((claim.cidr, claim.since_ms), (lease.pod_cidr, lease.since));
            }
        }
    }
});
