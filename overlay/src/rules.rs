//! The rules every part of weft applies alike — the plugin to its config, the agent to its flags and
//! to what peers announce, the planner to the desired state — so they cannot drift apart. Written
//! over both address families.

use std::net::IpAddr;

use ipnet::IpNet;

/// The bridge pods are attached to unless configured otherwise.
pub const DEFAULT_BRIDGE: &str = "cni0";
/// The kernel's minimum IPv4 MTU.
pub const MIN_MTU: u32 = 68;
/// The largest MTU an Ethernet-like device takes.
pub const MAX_MTU: u32 = 65535;
/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;
/// An IPv4 node block needs a network address (the VTEP) and a gateway host: /30 at most.
pub const MAX_NODE_PREFIX_V4: u8 = 30;
/// IPv6 node blocks are /64 or larger, as Kubernetes allocates them.
pub const MAX_NODE_PREFIX_V6: u8 = 64;

/// Why an interface name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadIfname {
    #[error("interface name is empty")]
    Empty,
    #[error("interface name {0:?} is longer than {MAX_IFNAME_LEN} bytes")]
    TooLong(String),
    #[error("interface name {0:?} is not allowed")]
    Reserved(String),
    #[error("interface name {0:?} contains {1:?}")]
    BadChar(String, char),
}

/// Interface names as the CNI spec and Linux require.
pub fn check_ifname(name: &str) -> Result<(), BadIfname> {
    if name.is_empty() {
        return Err(BadIfname::Empty);
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err(BadIfname::TooLong(name.into()));
    }
    if name == "." || name == ".." {
        return Err(BadIfname::Reserved(name.into()));
    }
    if let Some(bad) = name.chars().find(|c| *c == '/' || *c == ':' || c.is_whitespace()) {
        return Err(BadIfname::BadChar(name.into(), bad));
    }
    Ok(())
}

/// An MTU a device can be given.
pub fn mtu_in_range(mtu: u32) -> bool {
    (MIN_MTU..=MAX_MTU).contains(&mtu)
}

/// An address a node can be reached at (a VXLAN endpoint, a gossip peer): not unspecified,
/// loopback, multicast, broadcast or reserved.
pub fn is_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.octets()[0] >= 240)
        }
        IpAddr::V6(v6) => {
            !(v6.is_unspecified() || v6.is_loopback() || v6.is_multicast() || v6.to_ipv4_mapped().is_some())
        }
    }
}

/// The longest prefix a node block of this family may have (the smallest block).
pub fn max_node_prefix(net: &IpNet) -> u8 {
    match net {
        IpNet::V4(_) => MAX_NODE_PREFIX_V4,
        IpNet::V6(_) => MAX_NODE_PREFIX_V6,
    }
}

/// A PodCIDR's gateway unless configured otherwise, in either family: its first host (the
/// bridge's address, 10.244.3.1 or fd00:10:244:3::1).
pub fn first_host(net: &IpNet) -> IpAddr {
    nth_address(net, 1)
}

/// The address `n` places past `net`'s network address, in either family (wrapping past the
/// end of the address space, never panicking).
pub fn nth_address(net: &IpNet, n: u32) -> IpAddr {
    match net.network() {
        IpAddr::V4(v4) => IpAddr::V4(u32::from(v4).wrapping_add(n).into()),
        IpAddr::V6(v6) => IpAddr::V6(u128::from(v6).wrapping_add(u128::from(n)).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_host_is_the_gateway_in_both_families() {
        let first = |net: &str| first_host(&net.parse().unwrap()).to_string();
        assert_eq!(first("10.244.3.0/24"), "10.244.3.1");
        assert_eq!(first("fd00:10:244:3::/64"), "fd00:10:244:3::1");
        assert_eq!(first("10.244.3.7/24"), "10.244.3.1", "from the network, not the address");
    }

    #[test]
    fn the_nth_address_counts_from_the_network_in_both_families() {
        let nth = |net: &str, n| nth_address(&net.parse().unwrap(), n).to_string();
        assert_eq!(nth("10.244.3.7/24", 10), "10.244.3.10");
        assert_eq!(nth("10.244.3.0/24", 256), "10.244.4.0");
        assert_eq!(nth("fd00:10:244:3::/64", 0x10), "fd00:10:244:3::10");
        assert_eq!(nth("255.255.255.255/32", 1), "0.0.0.0", "wraps, never panics");
    }

    #[test]
    fn unicast_per_family() {
        for ok in ["192.0.2.1", "10.0.0.1", "2001:db8::1", "fe80::1"] {
            assert!(is_unicast(ok.parse().unwrap()), "{ok}");
        }
        for bad in [
            "0.0.0.0",
            "127.0.0.1",
            "224.0.0.5",
            "255.255.255.255",
            "240.0.0.1",
            "::",
            "::1",
            "ff02::1",
            "::ffff:192.0.2.1",
        ] {
            assert!(!is_unicast(bad.parse().unwrap()), "{bad}");
        }
    }

    #[test]
    fn interface_names() {
        for ok in ["eth0", "net1", "a", "123456789012345", "veth-x_y.z"] {
            assert_eq!(check_ifname(ok), Ok(()), "{ok}");
        }
        assert_eq!(check_ifname(""), Err(BadIfname::Empty));
        assert!(matches!(check_ifname(&"a".repeat(16)), Err(BadIfname::TooLong(_))));
        assert!(matches!(check_ifname(".."), Err(BadIfname::Reserved(_))));
        assert!(matches!(check_ifname("a/b"), Err(BadIfname::BadChar(_, '/'))));
        assert!(matches!(check_ifname("a b"), Err(BadIfname::BadChar(_, ' '))));
        assert!(matches!(check_ifname("a:b"), Err(BadIfname::BadChar(_, ':'))));
        assert!(matches!(check_ifname("a\tb"), Err(BadIfname::BadChar(_, '\t'))));
    }

    #[test]
    fn mtu_and_node_prefix_bounds() {
        assert!(mtu_in_range(68) && mtu_in_range(65535));
        assert!(!mtu_in_range(67) && !mtu_in_range(65536));
        assert_eq!(max_node_prefix(&"10.244.0.0/16".parse().unwrap()), 30);
        assert_eq!(max_node_prefix(&"fd00:10:244::/56".parse().unwrap()), 64);
    }
}
