//! Address management: weft's built-in store, or a delegated IPAM plugin, behind one interface.

pub mod delegate;
pub mod pool;
pub mod store;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::IpNet;

use crate::config::{IpamMode, Network, first_host};
use crate::error::{CniError, Code};
use crate::result::{CniResult, Dns, Route};
use store::{Owner, Store, StoreError};

/// What the container gets: an address of each family (IPv4 first), its routes and DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ips: Vec<LeasedIp>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

impl Lease {
    pub fn has_ipv6(&self) -> bool {
        self.ips.iter().any(|ip| ip.address.addr().is_ipv6())
    }
}

/// One family's address (with the pool's prefix) and the gateway of that family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeasedIp {
    pub address: IpNet,
    pub gateway: IpAddr,
}

/// The default route of the family of `gateway`, via it.
fn default_route(gateway: IpAddr) -> Route {
    let any = if gateway.is_ipv4() { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
    Route::new(IpNet::new(any, 0).expect("/0 is a valid prefix"), Some(gateway))
}

/// How to run a delegated IPAM plugin: where to find it and the config it gets on stdin.
#[derive(Debug, Clone, Copy)]
pub struct DelegateInput<'a> {
    pub plugin_path: &'a [PathBuf],
    pub stdin: &'a [u8],
}

impl From<StoreError> for CniError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Exhausted(_) => CniError::new(Code::AddressesExhausted, e.to_string()),
            StoreError::Io { .. } => CniError::new(Code::IpamStore, "IPAM store failure").with_details(e),
        }
    }
}

/// Records the attachment in its network's store: ADD does this before the host veth exists, so
/// GC of this network can always find the veth.
pub fn record(mode: &IpamMode, owner: &Owner) -> Result<(), CniError> {
    Ok(Store::open(mode.store_dir())?.record(owner)?)
}

/// Reserves an address for `owner` (the same one again on a repeated ADD).
pub fn acquire(net: &Network, owner: &Owner, delegate_input: DelegateInput<'_>) -> Result<Lease, CniError> {
    match &net.ipam {
        IpamMode::BuiltIn { .. } if net.pools.is_empty() => {
            Err(CniError::new(Code::TryAgainLater, "the node's PodCIDR is not known"))
        }
        IpamMode::BuiltIn { store_dir } => {
            let addresses = Store::open(store_dir)?.allocate_all(&net.pools, owner)?;
            let ips: Vec<LeasedIp> = net
                .pools
                .iter()
                .zip(addresses)
                .map(|(pool, ip)| LeasedIp {
                    address: IpNet::new(ip, pool.net.prefix_len()).expect("prefix comes from a valid net"),
                    gateway: pool.gateway,
                })
                .collect();
            let routes = ips.iter().map(|ip| default_route(ip.gateway)).collect();
            Ok(Lease { ips, routes, dns: net.dns.clone() })
        }
        IpamMode::Delegate { plugin, .. } => {
            let path = delegate::find(plugin, delegate_input.plugin_path)?;
            let result = delegate::run(&path, "ADD", delegate_input.stdin)?.ok_or_else(|| {
                CniError::new(Code::DelegateFailed, format!("IPAM plugin {plugin} returned no result"))
            })?;
            let lease = lease_from(result, &net.dns);
            if lease.is_err() {
                // Give back whatever the delegate reserved before reporting.
                let _ = delegate::run(&path, "DEL", delegate_input.stdin);
            }
            lease
        }
    }
}

/// Releases whatever `owner` holds, then forgets its record; holding nothing is not an error.
pub fn release(mode: &IpamMode, owner: &Owner, delegate_input: DelegateInput<'_>) -> Result<(), CniError> {
    if let IpamMode::Delegate { plugin, .. } = mode {
        let path = delegate::find(plugin, delegate_input.plugin_path)?;
        delegate::run(&path, "DEL", delegate_input.stdin)?;
    }
    Store::open(mode.store_dir())?.release(owner)?;
    Ok(())
}

/// The container's configuration from a delegate's result: its first address of each family,
/// each with its gateway (the given one, else the block's first host). Without routes in the
/// result, a default route per family; given routes of a family the pod has an address of get
/// that family's gateway when they have none.
fn lease_from(result: CniResult, default_dns: &Dns) -> Result<Lease, CniError> {
    let mut ips: Vec<LeasedIp> = Vec::new();
    for ip in &result.ips {
        if ips.iter().any(|l| l.address.addr().is_ipv4() == ip.address.addr().is_ipv4()) {
            continue;
        }
        let gateway = ip
            .gateway
            .filter(|gw| gw.is_ipv4() == ip.address.addr().is_ipv4())
            .unwrap_or_else(|| first_host(&ip.address.trunc()));
        ips.push(LeasedIp { address: ip.address, gateway });
    }
    if ips.is_empty() {
        return Err(CniError::new(Code::DelegateFailed, "the IPAM plugin returned no address"));
    }
    ips.sort_by_key(|ip| ip.address.addr().is_ipv6());
    let gateway_for = |dst: &IpNet| ips.iter().find(|l| l.address.addr().is_ipv4() == dst.addr().is_ipv4());
    let routes: Vec<Route> = if result.routes.is_empty() {
        ips.iter().map(|ip| default_route(ip.gateway)).collect()
    } else {
        result
            .routes
            .into_iter()
            .filter_map(|mut route| {
                let own = gateway_for(&route.dst)?;
                route.gw.get_or_insert(own.gateway);
                Some(route)
            })
            .collect()
    };
    let dns = if result.dns.is_empty() { default_dns.clone() } else { result.dns };
    Ok(Lease { ips, routes, dns })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_delegate_result_becomes_a_lease_with_gateway_routes() {
        let r = CniResult::from_value(&json!({"cniVersion":"0.4.0",
            "ips":[{"version":"4","address":"10.1.0.5/24","gateway":"10.1.0.1"}],
            "routes":[{"dst":"0.0.0.0/0"},{"dst":"192.168.0.0/16","gw":"10.1.0.254"},{"dst":"::/0"}]}))
        .unwrap();
        let lease = lease_from(r, &Dns::default()).unwrap();
        assert_eq!(lease.ips[0].address.to_string(), "10.1.0.5/24");
        assert_eq!(lease.ips[0].gateway.to_string(), "10.1.0.1");
        assert_eq!(lease.routes[0].gw, Some("10.1.0.1".parse().unwrap()));
        assert_eq!(lease.routes[1].gw, Some("10.1.0.254".parse().unwrap()));
        assert_eq!(lease.routes.len(), 2, "no IPv6 route without an IPv6 address");
    }

    #[test]
    fn a_delegate_result_without_gateway_or_routes_gets_defaults() {
        let r = CniResult::from_value(&json!({"cniVersion":"1.0.0","ips":[{"address":"10.1.0.5/24"}]})).unwrap();
        let lease = lease_from(r, &Dns { domain: Some("x".into()), ..Dns::default() }).unwrap();
        assert_eq!(lease.ips[0].gateway.to_string(), "10.1.0.1");
        assert_eq!(lease.routes.len(), 1);
        assert_eq!(lease.dns.domain.as_deref(), Some("x"));
    }

    #[test]
    fn a_dual_stack_delegate_result_gives_both_families_ipv4_first() {
        let r = CniResult::from_value(&json!({"cniVersion":"0.4.0","ips":[
            {"version":"6","address":"fd00:10:244:5::9/64","gateway":"fd00:10:244:5::1"},
            {"version":"4","address":"10.244.5.9/24"}]}))
        .unwrap();
        let lease = lease_from(r, &Dns::default()).unwrap();
        let ips: Vec<String> = lease.ips.iter().map(|ip| format!("{} via {}", ip.address, ip.gateway)).collect();
        assert_eq!(ips, ["10.244.5.9/24 via 10.244.5.1", "fd00:10:244:5::9/64 via fd00:10:244:5::1"]);
        let routes: Vec<String> = lease.routes.iter().map(|r| format!("{} via {}", r.dst, r.gw.unwrap())).collect();
        assert_eq!(routes, ["0.0.0.0/0 via 10.244.5.1", "::/0 via fd00:10:244:5::1"]);
    }

    #[test]
    fn an_ipv6_only_delegate_result_works_and_an_empty_one_fails() {
        let r = CniResult::from_value(&json!({"cniVersion":"1.0.0","ips":[{"address":"fd00::5/64"}]})).unwrap();
        let lease = lease_from(r, &Dns::default()).unwrap();
        assert_eq!(lease.ips[0].gateway.to_string(), "fd00::1");
        let r = CniResult::from_value(&json!({"cniVersion":"1.0.0","ips":[]})).unwrap();
        assert_eq!(lease_from(r, &Dns::default()).unwrap_err().code, Code::DelegateFailed as u32);
    }
}
