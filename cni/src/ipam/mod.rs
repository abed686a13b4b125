//! Address management: weft's built-in store, or a delegated IPAM plugin, behind one interface.

pub mod delegate;
pub mod pool;
pub mod store;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net};

use crate::config::{IpamMode, Network, first_host};
use crate::error::{CniError, Code};
use crate::result::{CniResult, Dns, Route};
use store::{Owner, Store, StoreError};

/// What the container gets: its address, the gateway, its routes and DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub routes: Vec<Route>,
    pub dns: Dns,
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
    match (&net.ipam, &net.pool) {
        (IpamMode::BuiltIn { store_dir }, Some(pool)) => {
            let ip = Store::open(store_dir)?.allocate(pool, owner)?;
            let address = Ipv4Net::new(ip, pool.net.prefix_len()).expect("prefix comes from a valid net");
            Ok(Lease {
                address,
                gateway: pool.gateway,
                routes: vec![Route::new(IpNet::V4(Ipv4Net::default()), Some(IpAddr::V4(pool.gateway)))],
                dns: net.dns.clone(),
            })
        }
        (IpamMode::BuiltIn { .. }, None) => Err(CniError::new(Code::TryAgainLater, "the node's PodCIDR is not known")),
        (IpamMode::Delegate { plugin, .. }, _) => {
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

/// The container's IPv4 configuration from a delegate's result.
fn lease_from(result: CniResult, default_dns: &Dns) -> Result<Lease, CniError> {
    let ip = result
        .ips
        .iter()
        .find(|ip| matches!(ip.address, IpNet::V4(_)))
        .ok_or_else(|| CniError::new(Code::UnsupportedField, "the IPAM plugin returned no IPv4 address"))?;
    let IpNet::V4(address) = ip.address else { unreachable!("filtered to IPv4 above") };
    let gateway = match ip.gateway {
        Some(IpAddr::V4(gw)) => gw,
        _ => first_host(&address.trunc()),
    };
    let mut routes: Vec<Route> = result.routes.into_iter().filter(|r| matches!(r.dst, IpNet::V4(_))).collect();
    if routes.is_empty() {
        routes.push(Route::new(IpNet::V4(Ipv4Net::default()), None));
    }
    for route in &mut routes {
        route.gw.get_or_insert(IpAddr::V4(gateway));
    }
    let dns = if result.dns.is_empty() { default_dns.clone() } else { result.dns };
    Ok(Lease { address, gateway, routes, dns })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_delegate_result_becomes_a_lease_with_gateway_routes() {
        let r = CniResult::from_value(&json!({"cniVersion":"0.4.0",
            "ips":[{"version":"4","address":"10.1.0.5/24","gateway":"10.1.0.1"}],
            "routes":[{"dst":"0.0.0.0/0"},{"dst":"192.168.0.0/16","gw":"10.1.0.254"}]}))
        .unwrap();
        let lease = lease_from(r, &Dns::default()).unwrap();
        assert_eq!(lease.address.to_string(), "10.1.0.5/24");
        assert_eq!(lease.gateway.to_string(), "10.1.0.1");
        assert_eq!(lease.routes[0].gw, Some("10.1.0.1".parse().unwrap()));
        assert_eq!(lease.routes[1].gw, Some("10.1.0.254".parse().unwrap()));
    }

    #[test]
    fn a_delegate_result_without_gateway_or_routes_gets_defaults() {
        let r = CniResult::from_value(&json!({"cniVersion":"1.0.0","ips":[{"address":"10.1.0.5/24"}]})).unwrap();
        let lease = lease_from(r, &Dns { domain: Some("x".into()), ..Dns::default() }).unwrap();
        assert_eq!(lease.gateway.to_string(), "10.1.0.1");
        assert_eq!(lease.routes.len(), 1);
        assert_eq!(lease.dns.domain.as_deref(), Some("x"));
    }

    #[test]
    fn an_ipv6_only_delegate_result_is_unsupported() {
        let r = CniResult::from_value(&json!({"cniVersion":"1.0.0","ips":[{"address":"fd00::5/64"}]})).unwrap();
        assert_eq!(lease_from(r, &Dns::default()).unwrap_err().code, Code::UnsupportedField as u32);
    }
}
