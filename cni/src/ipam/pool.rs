//! Which address to hand out next: pure logic over the set of addresses in use.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The assignable addresses of a PodCIDR: every host address except the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub net: Ipv4Net,
    pub gateway: Ipv4Addr,
}

impl Pool {
    /// How many addresses the pool can hand out: the ones `next_free` walks through.
    pub fn capacity(&self) -> u64 {
        let first = u64::from(u32::from(self.net.network())) + 1;
        let end = u64::from(u32::from(self.net.broadcast()));
        let gateway_inside = (first..end).contains(&u64::from(u32::from(self.gateway)));
        end.saturating_sub(first).saturating_sub(u64::from(gateway_inside))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.net.contains(&ip) && ip != self.net.network() && ip != self.net.broadcast() && ip != self.gateway
    }

    /// The first free address after `last` (wrapping around), so a just-freed address is not
    /// handed out again while others are free. `None` when the pool is exhausted.
    pub fn next_free(&self, used: &HashSet<Ipv4Addr>, last: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        let first = u32::from(self.net.network()) + 1;
        let end = u32::from(self.net.broadcast()); // exclusive
        let size = end - first;
        let start = match last {
            Some(ip) if self.net.contains(&ip) && u32::from(ip) >= first && u32::from(ip) < end => {
                u32::from(ip) + 1 - first
            }
            _ => 0,
        };
        (0..size)
            .map(|i| Ipv4Addr::from(first + (start + i) % size))
            .find(|ip| *ip != self.gateway && !used.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(net: &str, gw: &str) -> Pool {
        Pool { net: net.parse().unwrap(), gateway: gw.parse().unwrap() }
    }

    fn ip(s: &str) -> Ipv4Addr {
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
    }
}
