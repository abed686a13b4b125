//! Which address to hand out next: pure logic over the set of addresses in use, the same for
//! both families (addresses as u128, so an IPv6 /64 is just a larger number).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// The assignable addresses of a PodCIDR: every host address except the gateway. The block's
/// first and last address are never handed out, in either family (IPv4's network and broadcast;
/// IPv6's subnet-router anycast, and the last one to keep one rule for both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub net: IpNet,
    pub gateway: IpAddr,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl Pool {
    /// The first host as a number and the end (exclusive: the block's last address).
    fn bounds(&self) -> (u128, u128) {
        (to_u128(self.net.network()) + 1, to_u128(self.net.broadcast()))
    }

    /// The address `n` of this pool's family; `n` always comes from inside the block.
    fn addr(&self, n: u128) -> IpAddr {
        match self.net {
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(n).expect("inside an IPv4 block"))),
            IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
        }
    }

    /// How many addresses the pool can hand out: the ones `next_free` walks through. Saturates
    /// at u64::MAX (a /64 has 2^64 - 3).
    pub fn capacity(&self) -> u64 {
        let (first, end) = self.bounds();
        let gateway_inside =
            self.gateway.is_ipv4() == self.net.addr().is_ipv4() && (first..end).contains(&to_u128(self.gateway));
        let count = end.saturating_sub(first).saturating_sub(u128::from(gateway_inside));
        u64::try_from(count).unwrap_or(u64::MAX)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.net.contains(&ip) && ip != self.net.network() && ip != self.net.broadcast() && ip != self.gateway
    }

    /// The first free address after `last` (wrapping around), so a just-freed address is not
    /// handed out again while others are free. `None` when the pool is exhausted. At most
    /// `used.len() + 2` candidates are looked at, whatever the block's size: among that many
    /// consecutive addresses at most `used.len()` are taken and one is the gateway.
    pub fn next_free(&self, used: &HashSet<IpAddr>, last: Option<IpAddr>) -> Option<IpAddr> {
        let (first, end) = self.bounds();
        let size = end.checked_sub(first).filter(|s| *s > 0)?;
        let start = match last.map(to_u128) {
            Some(n) if last.is_some_and(|ip| self.net.contains(&ip)) && (first..end).contains(&n) => n + 1 - first,
            _ => 0,
        };
        let steps = size.min(used.len() as u128 + 2);
        (0..steps).map(|i| self.addr(first + (start + i) % size)).find(|ip| *ip != self.gateway && !used.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(net: &str, gw: &str) -> Pool {
        Pool { net: net.parse().unwrap(), gateway: gw.parse().unwrap() }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn starts_after_the_gateway_on_an_empty_pool() {
        let p = pool("10.244.3.0/24", "10.244.3.1");
        assert_eq!(p.next_free(&HashSet::new(), None), Some(ip("10.244.3.2")));
    }

    #[test]
    fn continues_after_the_last_reserved_instead_of_reusing_a_freed_one() {
        let p = pool("10.244.3.0/24", "10.244.3.1");
        // .2 was freed, .3 is in use, .3 was the last handed out: next is .4, not .2.
        let used: HashSet<_> = [ip("10.244.3.3")].into();
        assert_eq!(p.next_free(&used, Some(ip("10.244.3.3"))), Some(ip("10.244.3.4")));
    }

    #[test]
    fn wraps_around_and_never_returns_network_broadcast_or_gateway() {
        let p = pool("10.244.3.0/29", "10.244.3.1"); // hosts .1-.6, gateway .1
        let mut used = HashSet::new();
        let mut last = None;
        for _ in 0..5 {
            let got = p.next_free(&used, last).unwrap();
            assert!(p.contains(got), "{got}");
            assert!(used.insert(got));
            last = Some(got);
        }
        assert_eq!(p.next_free(&used, last), None, "pool of 5 is exhausted");
        used.remove(&ip("10.244.3.3"));
        assert_eq!(p.next_free(&used, last), Some(ip("10.244.3.3")));
    }

    #[test]
    fn a_gateway_in_the_middle_is_skipped() {
        let p = pool("10.244.3.0/30", "10.244.3.2"); // hosts .1 .2
        assert_eq!(p.next_free(&HashSet::new(), Some(ip("10.244.3.1"))), Some(ip("10.244.3.1")));
        assert_eq!(p.next_free(&[ip("10.244.3.1")].into(), None), None);
    }

    #[test]
    fn a_last_reserved_outside_the_pool_restarts_from_the_beginning() {
        let p = pool("10.244.3.0/24", "10.244.3.1");
        assert_eq!(p.next_free(&HashSet::new(), Some(ip("10.9.9.9"))), Some(ip("10.244.3.2")));
        assert_eq!(p.next_free(&HashSet::new(), Some(ip("10.244.3.255"))), Some(ip("10.244.3.2")));
    }

    #[test]
    fn contains_excludes_special_addresses() {
        let p = pool("10.244.3.0/24", "10.244.3.1");
        for special in ["10.244.3.0", "10.244.3.1", "10.244.3.255", "10.244.4.2"] {
            assert!(!p.contains(ip(special)), "{special}");
        }
        assert!(p.contains(ip("10.244.3.254")));
    }

    #[test]
    fn capacity_counts_the_host_addresses_but_the_gateway() {
        let pool = |net: &str, gw: &str| Pool { net: net.parse().unwrap(), gateway: gw.parse().unwrap() };
        assert_eq!(pool("10.244.3.0/24", "10.244.3.1").capacity(), 253);
        assert_eq!(pool("10.244.3.0/30", "10.244.3.1").capacity(), 1);
        assert_eq!(pool("10.244.0.0/16", "10.244.0.1").capacity(), 65_533);
        assert_eq!(pool("fd00:10:244:1::/120", "fd00:10:244:1::1").capacity(), 253);
        assert_eq!(pool("fd00:10:244:1::/64", "fd00:10:244:1::1").capacity(), u64::MAX - 2);
        assert_eq!(pool("fd00:10:244::/48", "fd00:10:244::1").capacity(), u64::MAX, "saturates");
    }

    #[test]
    fn an_ipv6_120_wraps_around_and_is_exhausted_like_an_ipv4_24() {
        let p = pool("fd00:10:244:1::/126", "fd00:10:244:1::1"); // hosts ::1 ::2, gateway ::1
        assert_eq!(p.next_free(&HashSet::new(), None), Some(ip("fd00:10:244:1::2")));
        assert_eq!(p.next_free(&[ip("fd00:10:244:1::2")].into(), None), None);
        let p = pool("fd00:10:244:1::/120", "fd00:10:244:1::1");
        let last = Some(ip("fd00:10:244:1::fe"));
        assert_eq!(p.next_free(&HashSet::new(), last), Some(ip("fd00:10:244:1::2")), "wraps past ::ff");
        let used: HashSet<_> = (2..=0xfe).map(|n| ip(&format!("fd00:10:244:1::{n:x}"))).collect();
        assert_eq!(p.next_free(&used, last), None);
        assert!(!p.contains(ip("fd00:10:244:1::ff")) && !p.contains(ip("fd00:10:244:1::")));
    }

    #[test]
    fn a_64_answers_at_once_whatever_its_size() {
        let p = pool("fd00:10:244:1::/64", "fd00:10:244:1::1");
        let used: HashSet<_> = ["fd00:10:244:1::2", "fd00:10:244:1::3", "fd00:10:244:1::5"].map(ip).into();
        assert_eq!(p.next_free(&used, None), Some(ip("fd00:10:244:1::4")));
        assert_eq!(p.next_free(&used, Some(ip("fd00:10:244:1::5"))), Some(ip("fd00:10:244:1::6")));
        // The end of the block: the last address is skipped, the walk wraps to the start.
        let last = ip("fd00:10:244:1:ffff:ffff:ffff:fffe");
        assert_eq!(p.next_free(&used, Some(last)), Some(ip("fd00:10:244:1::4")));
    }

    #[test]
    fn the_walk_is_bounded_by_the_used_set_not_the_block() {
        // A run of 1000 taken addresses: the walk looks at no more than 1002 candidates and the
        // last of them is free.
        let p = pool("fd00:10:244:1::/64", "fd00:10:244:1::1");
        let used: HashSet<_> = (2..1002u32).map(|n| ip(&format!("fd00:10:244:1::{n:x}"))).collect();
        assert_eq!(p.next_free(&used, None), Some(ip(&format!("fd00:10:244:1::{:x}", 1002))));
    }

    #[test]
    fn an_address_of_the_other_family_is_never_in_the_pool() {
        let p = pool("10.244.3.0/24", "10.244.3.1");
        assert!(!p.contains(ip("::ffff:10.244.3.7")) && !p.contains(ip("fd00::7")));
    }
}
