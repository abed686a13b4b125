//! CHECK: the container's network is still as ADD (per prevResult) left it.

use crate::config::{IpamMode, Request};
use crate::datapath::{self, Expected};
use crate::env::Invocation;
use crate::error::{CniError, Code};
use crate::ipam::delegate;
use crate::ipam::store::{Owner, Store};
use crate::netns;
use crate::runtime;

pub fn check(inv: &Invocation, req: &Request) -> Result<(), CniError> {
    if !req.version.supports_check() {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!("CHECK needs cniVersion 0.4.0 or later, got {}", req.version),
        ));
    }
    let att = inv.attachment.as_ref().expect("CHECK always carries an attachment");
    let prev =
        super::parse_prev_result(req)?.ok_or_else(|| CniError::new(Code::InvalidConfig, "CHECK needs prevResult"))?;
    let net = req.conf.resolve()?;
    let netns_path = att.netns.as_deref().expect("CHECK always carries a netns");
    let netns = netns::open(netns_path)?;

    let index = prev.interfaces.iter().position(|i| i.name == att.ifname && i.sandbox.is_some()).ok_or_else(|| {
        CniError::new(Code::InvalidConfig, format!("prevResult has no container interface {}", att.ifname))
    })?;
    let addresses: Vec<_> = prev.ips.iter().filter(|ip| ip.interface == Some(index)).map(|ip| ip.address).collect();
    let routes = prev.routes.iter().map(|r| (r.dst, r.gw)).collect();
    let expected = Expected {
        container_id: &att.container_id,
        ifname: &att.ifname,
        bridge: &net.bridge,
        mac: prev.interfaces[index].mac.parse().ok(),
        mtu: net.mtu,
        addresses: addresses.clone(),
        routes,
    };
    runtime::block_on(datapath::verify(&expected, netns::socket_in(&netns, netns_path)?))?;

    match &net.ipam {
        IpamMode::BuiltIn { store_dir } => {
            let held = Store::open(store_dir)?.held(&Owner::new(&att.container_id, &att.ifname))?;
            for addr in &addresses {
                if !held.contains(&addr.addr()) {
                    return Err(CniError::new(
                        Code::CheckFailed,
                        format!("address {} is not reserved for this container in the IPAM store", addr.addr()),
                    ));
                }
            }
        }
        IpamMode::Delegate { plugin, .. } => {
            delegate::run(&delegate::find(plugin, &inv.plugin_path)?, "CHECK", &req.raw)?;
        }
    }
    Ok(())
}
