//! ADD: address from IPAM, veth pair onto the bridge, container side configured, result out.

use std::path::Path;

use weft_overlay::netlink_sync::SyncNetlink;

use crate::config::Request;
use crate::datapath::{self, Attached, PortSpec};
use crate::env::Invocation;
use crate::error::{CniError, Code};
use crate::ipam::{self, DelegateInput, Lease, store::Owner};
use crate::netns;
use crate::result::{CniResult, Interface, IpConfig};

pub fn add(inv: &Invocation, req: &Request) -> Result<CniResult, CniError> {
    let att = inv.attachment.as_ref().expect("ADD always carries an attachment");
    super::parse_prev_result(req)?;
    let net = req.conf.resolve()?;
    net.check_available().map_err(|reason| CniError::new(Code::TryAgainLater, reason))?;
    let netns_path = att.netns.as_deref().expect("ADD always carries a netns");
    let netns = netns::open(netns_path)?;
    let owner = Owner::new(&att.container_id, &att.ifname);
    let input = DelegateInput { plugin_path: &inv.plugin_path, stdin: &req.raw };
    // Before the veth exists, so that GC of this network can always find it.
    ipam::record(&net.ipam, &owner)?;

    let attachment = PortSpec {
        container_id: &att.container_id,
        ifname: &att.ifname,
        bridge: &net.bridge,
        mtu: net.mtu,
        hairpin: net.hairpin,
    };
    // IPAM (file I/O under a lock) and plugging the veth (kernel work) do not depend on each
    // other: run them side by side. The IPAM thread, done, enters the container's namespace for
    // the socket that configures it (a delegate IPAM plugin it starts must not start there),
    // and, being there, sets the container end's IPv6 sysctls once the veth exists.
    let (plugged_tx, plugged_rx) = std::sync::mpsc::sync_channel::<bool>(1);
    let (plugged, prepared) = std::thread::scope(|s| {
        let worker = s.spawn(|| {
            let plugged_rx = plugged_rx; // moved in: a Receiver cannot be shared between threads
            let lease = ipam::acquire(&net, &owner, input)?;
            let container = SyncNetlink::entering(&netns, netns_path)?;
            if lease.has_ipv6() && plugged_rx.recv() == Ok(true) {
                datapath::ipv6_sysctls(&att.ifname)?;
            }
            Ok((lease, container))
        });
        let plugged = datapath::plug(&attachment, &netns, net.pools.first().map(|p| p.gateway));
        // Sent whatever the outcome, so the worker never waits for a veth that will not come.
        let _ = plugged_tx.send(plugged.is_ok());
        let prepared = worker.join().unwrap_or_else(|_| Err(CniError::new(Code::IpamStore, "the IPAM thread failed")));
        (plugged, prepared)
    });
    let outcome = match (&plugged, prepared) {
        (Ok(plugged), Ok((lease, container))) => plugged
            .configure(&attachment, container, &lease)
            .map(|attached| result(&attachment, netns_path, &attached, lease)),
        (Err(e), _) => Err(e.clone()),
        (Ok(_), Err(e)) => Err(e),
    };
    if outcome.is_err() {
        // Roll back in DEL's order: the veth, then the address and the record.
        if let Ok(plugged) = &plugged {
            plugged.unplug();
        }
        if let Err(e) = ipam::release(&net.ipam, &owner, input) {
            tracing::warn!("rollback: cannot release the address: {e}");
        }
    }
    outcome
}

fn result(a: &PortSpec<'_>, netns: &Path, attached: &Attached, lease: Lease) -> CniResult {
    CniResult {
        interfaces: vec![
            Interface {
                name: attached.bridge.name.clone(),
                mac: attached.bridge.mac.map(|m| m.to_string()).unwrap_or_default(),
                mtu: Some(a.mtu),
                sandbox: None,
            },
            Interface {
                name: attached.host_name.clone(),
                mac: attached.host_mac.to_string(),
                mtu: Some(a.mtu),
                sandbox: None,
            },
            Interface {
                name: a.ifname.to_string(),
                mac: attached.container_mac.to_string(),
                mtu: Some(a.mtu),
                sandbox: Some(netns.display().to_string()),
            },
        ],
        ips: lease
            .ips
            .iter()
            .map(|ip| IpConfig { version: None, address: ip.address, gateway: Some(ip.gateway), interface: Some(2) })
            .collect(),
        routes: lease.routes,
        dns: lease.dns,
    }
}
