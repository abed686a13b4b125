//! ADD: address from IPAM, veth pair onto the bridge, container side configured, result out.

use std::fs::File;
use std::path::Path;

use ipnet::{IpNet, Ipv4Net};

use crate::config::Request;
use crate::datapath::{self, Attached, PortSpec};
use crate::env::Invocation;
use crate::error::{CniError, Code};
use crate::ipam::{self, DelegateInput, Lease, store::Owner};
use crate::result::{CniResult, Interface, IpConfig};
use crate::runtime;
use weft_overlay::netlink::PendingSocket;

pub fn add(inv: &Invocation, req: &Request) -> Result<CniResult, CniError> {
    let att = inv.attachment.as_ref().expect("ADD always carries an attachment");
    super::parse_prev_result(req)?;
    let net = req.conf.resolve()?;
    let netns_path = att.netns.as_deref().expect("ADD always carries a netns");
    let netns = super::open_netns(netns_path)?;
    let owner = Owner::new(&att.container_id, &att.ifname);
    let input = DelegateInput { plugin_path: &inv.plugin_path, stdin: &req.raw };
    // Entering the container's namespace takes a thread: let it run while IPAM works.
    let container = netns
        .try_clone()
        .map(|ns| PendingSocket::open(ns, netns_path))
        .map_err(|e| CniError::new(Code::IoFailure, "cannot duplicate the netns handle").with_details(e))?;

    let attachment = PortSpec {
        container_id: &att.container_id,
        ifname: &att.ifname,
        bridge: &net.bridge,
        mtu: net.mtu,
        hairpin: net.hairpin,
    };
    // IPAM (file I/O under a lock) and plugging the veth (kernel work) do not depend on each
    // other: run them side by side. The bridge gets its address now when it is known up front.
    let rt = runtime::new();
    let gateway = net.pool.map(|p| Ipv4Net::new(p.gateway, p.net.prefix_len()).expect("prefix is valid"));
    let (plugged, lease) = std::thread::scope(|s| {
        let ipam = s.spawn(|| ipam::acquire(&net, &owner, input));
        let plugged = rt.block_on(datapath::plug(&attachment, &netns, gateway));
        let lease = ipam.join().unwrap_or_else(|_| Err(CniError::new(Code::IpamStore, "the IPAM thread failed")));
        (plugged, lease)
    });
    let release = || {
        if let Err(e) = ipam::release(&net.ipam, &owner, input) {
            tracing::warn!("rollback: cannot release the address: {e}");
        }
    };
    match (plugged, lease) {
        (Ok(plugged), Ok(lease)) => match rt.block_on(plugged.configure(&attachment, container, &lease)) {
            Ok(attached) => Ok(result(&attachment, netns_path, &attached, lease)),
            Err(e) => {
                rt.block_on(plugged.unplug());
                release();
                Err(e)
            }
        },
        (Ok(plugged), Err(e)) => {
            rt.block_on(plugged.unplug());
            Err(e)
        }
        (Err(e), Ok(_)) => {
            release();
            Err(e)
        }
        (Err(e), Err(_)) => Err(e),
    }
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
        ips: vec![IpConfig {
            version: None,
            address: IpNet::V4(lease.address),
            gateway: Some(lease.gateway.into()),
            interface: Some(2),
        }],
        routes: lease.routes,
        dns: lease.dns,
    }
}

/// Used by ADD and CHECK: the namespace must exist and be a network namespace.
pub(super) fn open(path: &Path) -> Result<File, CniError> {
    let file = File::open(path).map_err(|e| {
        CniError::new(Code::UnknownContainer, format!("cannot open network namespace {}", path.display()))
            .with_details(e)
    })?;
    let is_nsfs = nix::sys::statfs::fstatfs(&file).map(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC);
    if is_nsfs != Ok(true) {
        return Err(CniError::new(
            Code::InvalidEnvironment,
            format!("CNI_NETNS {} is not a network namespace", path.display()),
        ));
    }
    Ok(file)
}
