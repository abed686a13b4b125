//! Properties of the plugin's parsers and allocator over generated input: they never panic,
//! and what they accept obeys the spec.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use weft_cni::commands::{Reply, run};
use weft_cni::config::Request;
use weft_cni::ipam::pool::Pool;
use weft_cni::names::{host_veth_name, is_weft_veth, validate_id};
use weft_cni::result::CniResult;
use weft_cni::version::CniVersion;
use weft_overlay::rules::check_ifname;

fn env(command: &'static str) -> impl Fn(&str) -> Option<String> {
    move |k| match k {
        "CNI_COMMAND" => Some(command.to_string()),
        "CNI_CONTAINERID" => Some("c1".into()),
        "CNI_IFNAME" => Some("eth0".into()),
        "CNI_NETNS" => Some("/nonexistent/netns".into()),
        _ => None,
    }
}

proptest! {
    #[test]
    fn any_bytes_on_stdin_get_a_spec_error_never_a_panic(stdin in proptest::collection::vec(any::<u8>(), 0..512)) {
        match run(env("CHECK"), stdin.as_slice()) {
            Reply::Success(out) => prop_assert!(false, "CHECK of garbage succeeded: {out:?}"),
            Reply::Failure(json) => {
                let v: serde_json::Value = serde_json::from_str(&json).unwrap();
                prop_assert!(v["code"].as_u64().is_some_and(|c| c > 0));
                prop_assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()));
            }
        }
    }

    #[test]
    fn config_parsing_never_panics_on_json_shaped_input(
        version in prop_oneof![Just("1.0.0".to_string()), Just("0.4.0".to_string()), ".{0,8}"],
        name in ".{0,20}",
        pod_cidr in prop_oneof![Just("10.244.1.0/24".to_string()), ".{0,20}"],
        mtu in any::<i64>(),
    ) {
        let body = serde_json::json!({"cniVersion": version, "name": name, "type": "weft",
                                      "podCIDR": pod_cidr, "mtu": mtu});
        if let Ok(req) = Request::parse(body.to_string().into_bytes()) {
            let _ = req.conf.resolve();
        }
    }

    #[test]
    fn the_allocator_only_hands_out_free_host_addresses(
        v6 in any::<bool>(), host_bits in 2u8..=10, used_bits in proptest::collection::vec(any::<bool>(), 1024),
        last in any::<u32>()
    ) {
        // Blocks of 4 to 1024 addresses in either family: small enough to check exhaustively.
        let net: IpNet = if v6 {
            Ipv6Net::new(Ipv6Addr::new(0xfd00, 0x10, 0x244, 4, 0, 0, 0, 0), 128 - host_bits).unwrap().trunc().into()
        } else {
            Ipv4Net::new(Ipv4Addr::new(10, 244, 4, 0), 32 - host_bits).unwrap().trunc().into()
        };
        let pool = Pool { net, gateway: weft_cni::config::first_host(&net) };
        let at = |offset: u32| -> IpAddr {
            match net.network() {
                IpAddr::V4(n) => Ipv4Addr::from(u32::from(n) + offset).into(),
                IpAddr::V6(n) => Ipv6Addr::from(u128::from(n) + u128::from(offset)).into(),
            }
        };
        let hosts: Vec<IpAddr> = (1..(1u32 << host_bits) - 1).map(at).collect();
        let used: HashSet<IpAddr> = hosts.iter().zip(&used_bits).filter(|(_, u)| **u).map(|(ip, _)| *ip).collect();
        let last = Some(at(last % 2048));
        match pool.next_free(&used, last) {
            Some(ip) => {
                prop_assert!(pool.contains(ip));
                prop_assert!(!used.contains(&ip));
            }
            None => prop_assert!(hosts.iter().all(|ip| *ip == pool.gateway || used.contains(ip))),
        }
    }

    #[test]
    fn interface_names_are_accepted_exactly_when_linux_and_the_spec_allow(name in "\\PC{0,20}") {
        let valid = !name.is_empty() && name.len() <= 15 && name != "." && name != ".."
            && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
        prop_assert_eq!(check_ifname(&name).is_ok(), valid);
    }

    #[test]
    fn host_veth_names_are_always_valid_and_recognised(id in "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,60}", ifname in "[a-z0-9]{1,15}") {
        prop_assert!(validate_id("id", &id).is_ok());
        let veth = host_veth_name(&id, &ifname);
        prop_assert!(check_ifname(&veth).is_ok());
        prop_assert!(is_weft_veth(&veth));
    }

    #[test]
    fn results_read_back_in_every_version(a in any::<[u8; 4]>(), prefix in 8u8..=32, v in 0usize..5) {
        let version = CniVersion::ALL[v];
        let address = Ipv4Net::new(Ipv4Addr::from(a), prefix).unwrap();
        let result = CniResult::from_value(&serde_json::json!({
            "cniVersion": "1.0.0", "ips": [{"address": address.to_string(), "interface": 0}]
        })).unwrap();
        let back = CniResult::from_value(&result.to_json(version)).unwrap();
        prop_assert_eq!(back, result);
    }
}
