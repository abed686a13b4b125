//! The plugin's kernel work: attach a container to the bridge, detach it, verify it, collect
//! leftovers, over `weft_overlay::netlink` (ADD: `weft_overlay::netlink_sync`, batched).

use std::collections::HashSet;
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsFd;

use ipnet::IpNet;
use weft_overlay::bridge::{self, BridgeError, bridge_mac, ensure_bridge_link};
use weft_overlay::netlink::{Netlink, NetlinkError, PendingSocket, VethSpec};
use weft_overlay::netlink_sync::{SyncNetlink, VethIndexes, Write};
use weft_overlay::objects::{Link, LinkChange, MAIN_TABLE, Route, WEFT_ROUTE_PROTOCOL};
use weft_overlay::{Mac, sysctl};

use crate::error::{CniError, Code};
use crate::ipam::Lease;
use crate::names::{TOMBSTONE_PREFIX, host_veth_name, is_weft_veth, tombstone_name};
use crate::{reaper, runtime};

/// The node forwards pod traffic of every family its pods have.
fn forwarding_key(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { sysctl::IP_FORWARD } else { "net/ipv6/conf/all/forwarding" }
}

impl From<NetlinkError> for CniError {
    fn from(e: NetlinkError) -> Self {
        CniError::new(Code::Kernel, "kernel operation failed").with_details(e)
    }
}

impl From<BridgeError> for CniError {
    fn from(e: BridgeError) -> Self {
        CniError::new(Code::Kernel, "cannot set up the bridge").with_details(e)
    }
}

/// How a container is attached: the names and settings of its veth pair.
#[derive(Debug, Clone)]
pub struct PortSpec<'a> {
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub bridge: &'a str,
    pub mtu: u32,
    pub hairpin: bool,
}

/// The links ADD created or used, for the result.
#[derive(Debug, Clone)]
pub struct Attached {
    pub bridge: Link,
    pub host_name: String,
    pub host_mac: Mac,
    pub container_mac: Mac,
}

/// A veth pair plugged into the bridge, its container end not yet configured.
#[derive(Debug)]
pub struct Plugged {
    host_nl: SyncNetlink,
    bridge: Link,
    host_name: String,
    host_mac: Mac,
    indexes: VethIndexes,
}

/// ADD's first kernel part, which needs no address yet and so runs while IPAM works: the bridge
/// link (its address comes last, in `configure`) and the veth pair, the container end created
/// directly inside the container's namespace. Plain blocking netlink: a process that makes a
/// handful of requests gains nothing from an async runtime and pays for starting one.
pub fn plug(a: &PortSpec<'_>, netns: &File, first_gateway: Option<IpAddr>) -> Result<Plugged, CniError> {
    let host_nl = SyncNetlink::connect()?;
    let bridge = match host_nl.link(a.bridge)? {
        Some(link) if bridge::is_ready(&link, a.mtu) => link,
        // The node's first pod (or a bridge changed behind weft's back): create or repair it.
        _ => {
            runtime::block_on(async {
                let nl = Netlink::connect()?;
                ensure_bridge_link(&nl, a.bridge, a.mtu, bridge_mac(a.bridge, first_gateway)).await
            })?
            .0
        }
    };

    let host_name = host_veth_name(a.container_id, a.ifname);
    // Fixed by what it belongs to, so a repeated ADD reproduces it and the result needs no read-back.
    let host_mac = Mac::derived(&host_name);
    let spec = VethSpec {
        name: host_name.clone(),
        mac: host_mac,
        mtu: a.mtu,
        master: Some(bridge.index),
        peer_name: a.ifname.to_string(),
        peer_mac: None,
        peer_netns: netns.as_fd(),
    };
    let indexes = match host_nl.add_veth(&spec) {
        Ok(indexes) => indexes,
        Err(e) if !e.is_exists() => return Err(e.into()),
        // A repeated ADD: replace the pair left by the earlier one (its address is kept by IPAM).
        Err(_) => match host_nl.link(&host_name)? {
            Some(stale) => {
                host_nl.delete_link(stale.index)?;
                host_nl.add_veth(&spec)?
            }
            None => {
                return Err(CniError::new(
                    Code::InvalidEnvironment,
                    format!("an interface named {} already exists in the container", a.ifname),
                ));
            }
        },
    };
    Ok(Plugged { host_nl, bridge, host_name, host_mac, indexes })
}

impl Plugged {
    /// ADD's second kernel part, once the addresses are known (and, for IPv6, the container
    /// end prepared by `ipv6_sysctls`): the container end gets its MAC (derived from an
    /// address), its addresses of both families (an IPv6 one usable at once, see
    /// `address_message`), link up and routes, all in one batch; forwarding of the pod's
    /// families; and last, in a second batch, hairpin on the host end and the gateway addresses
    /// on the bridge, so that a failed ADD never leaves one there.
    pub fn configure(&self, a: &PortSpec<'_>, ns_nl: SyncNetlink, lease: &Lease) -> Result<Attached, CniError> {
        let index = match self.indexes.peer {
            Some(index) => index,
            // A kernel that does not echo new links: look the container end up.
            None => {
                ns_nl
                    .link(a.ifname)?
                    .ok_or_else(|| CniError::new(Code::Kernel, format!("{} vanished from the container", a.ifname)))?
                    .index
            }
        };
        // A reused address keeps its MAC, so neighbours' ARP and NDP caches stay right.
        let container_mac = container_mac(lease);
        let up = LinkChange { up: Some(true), mac: Some(container_mac), ..LinkChange::default() };
        let routes = container_routes(lease, index);
        let mut writes: Vec<Write<'_>> =
            lease.ips.iter().map(|ip| Write::AddAddress { index, addr: ip.address }).collect();
        writes.push(Write::SetLink { index, change: &up });
        writes.extend(routes.iter().map(Write::AddRoute));
        all_written(ns_nl.write_all(&writes))?;
        for ip in &lease.ips {
            let family = forwarding_key(ip.address.addr());
            sysctl::ensure(family, "1").map_err(|e| {
                CniError::new(Code::Kernel, format!("cannot enable forwarding ({family})")).with_details(e)
            })?;
        }
        let hairpin = a.hairpin.then_some(Write::Hairpin { index: self.indexes.host, on: true });
        let gateways = lease.ips.iter().map(|ip| Write::AddAddress {
            index: self.bridge.index,
            addr: IpNet::new(ip.gateway, ip.address.prefix_len()).expect("prefix is valid"),
        });
        let host_writes: Vec<Write<'_>> = hairpin.into_iter().chain(gateways).collect();
        // The gateway is there already on every ADD but the first: not an error.
        all_written(self.host_nl.write_all(&host_writes).into_iter().zip(&host_writes).map(|(outcome, w)| {
            match (outcome, w) {
                (Err(e), Write::AddAddress { .. }) if e.is_exists() => Ok(()),
                (outcome, _) => outcome,
            }
        }))?;
        Ok(Attached {
            bridge: self.bridge.clone(),
            host_name: self.host_name.clone(),
            host_mac: self.host_mac,
            container_mac,
        })
    }

    /// Rollback: removes the pair again.
    pub fn unplug(&self) {
        if let Err(e) = self.host_nl.delete_link_by_name(&self.host_name) {
            tracing::warn!("rollback: cannot delete {}: {e}", self.host_name);
        }
    }
}

/// The first failure of a batch, if any.
fn all_written(outcomes: impl IntoIterator<Item = Result<(), NetlinkError>>) -> Result<(), CniError> {
    outcomes.into_iter().collect::<Result<Vec<()>, _>>().map(drop).map_err(CniError::from)
}

/// The container's MAC: from its IPv4 address as other CNIs do (`0a:58:` + the address), else
/// derived from its IPv6 address; either way the same again for the same address.
fn container_mac(lease: &Lease) -> Mac {
    match lease.ips.first().expect("a lease has an address").address.addr() {
        IpAddr::V4(v4) => Mac::for_ipv4(v4),
        v6 => Mac::derived(&v6.to_string()),
    }
}

/// IPv6 on the container's interface: enabled (a runtime may have disabled it in the
/// namespace), and no router advertisements: the pod's addresses and routes are weft's alone,
/// nothing on the bridge may add others (SLAAC addresses, a default route to a rogue router).
/// Only `/proc/sys` reaches these, and it follows the caller's namespace: call it from a thread
/// inside the container's, once the container end exists and before it is up (`configure`).
pub fn ipv6_sysctls(ifname: &str) -> Result<(), CniError> {
    let unprepared =
        |e: std::io::Error| CniError::new(Code::Kernel, "cannot prepare the container for IPv6").with_details(e);
    sysctl::ensure(&sysctl::ipv6_dev_key("disable_ipv6", ifname), "0").map_err(unprepared)?;
    // A new interface starts with the namespace's default, which accepts them: no read first.
    sysctl::write(&sysctl::ipv6_dev_key("accept_ra", ifname), "0").map_err(unprepared)
}

/// The lease's routes as kernel routes out of the container interface; only those of a family
/// the pod has an address of (a route of another family would have no source address).
fn container_routes(lease: &Lease, oif: u32) -> Vec<Route> {
    let has_family = |dst: &IpNet| lease.ips.iter().any(|ip| ip.address.addr().is_ipv4() == dst.addr().is_ipv4());
    lease
        .routes
        .iter()
        .filter(|r| has_family(&r.dst))
        .filter_map(|r| {
            Some(Route {
                dst: r.dst,
                gateway: Some(r.gw?),
                oif: Some(oif),
                onlink: false,
                protocol: WEFT_ROUTE_PROTOCOL,
                table: MAIN_TABLE,
                priority: None,
            })
        })
        .collect()
}

/// DEL's kernel part: cut the container off and free both interface names at once; the kernel's
/// slow device removal finishes in a detached reaper. Missing pieces (the veth, the container's
/// namespace) are not errors.
pub async fn detach(container_id: &str, ifname: &str, container: Option<PendingSocket>) -> Result<(), CniError> {
    let host_nl = Netlink::connect()?;
    let host_name = host_veth_name(container_id, ifname);
    let Some(host) = host_nl.link(&host_name).await? else {
        return Ok(());
    };
    let tombstone = tombstone_name(host.index);
    if let Some(container) = container {
        free_container_name(container, ifname, host.index).await;
    }
    let cut = LinkChange { up: Some(false), master: Some(None), ..LinkChange::default() };
    host_nl.set_link(host.index, &cut).await?;
    // Renaming needs the link down, so it is a second request.
    host_nl.set_link(host.index, &LinkChange { name: Some(tombstone.clone()), ..LinkChange::default() }).await?;
    reaper::spawn(&tombstone);
    Ok(())
}

/// Renames the container end (if it is still there and is our pair's) so CNI_IFNAME is free at
/// once. A netns that is gone or unreadable is fine: the pair dies with the host end anyway.
async fn free_container_name(container: PendingSocket, ifname: &str, host_index: u32) {
    let Ok(ns_nl) = container.connect() else {
        return;
    };
    let Ok(Some(iface)) = ns_nl.link(ifname).await else {
        return;
    };
    if iface.link != Some(host_index) || iface.kind.as_deref() != Some("veth") {
        return;
    }
    let down = LinkChange { up: Some(false), ..LinkChange::default() };
    let rename = LinkChange { name: Some(tombstone_name(iface.index)), ..LinkChange::default() };
    if let Err(e) = async {
        ns_nl.set_link(iface.index, &down).await?;
        ns_nl.set_link(iface.index, &rename).await
    }
    .await
    {
        tracing::warn!("cannot free {ifname} in the container: {e}");
    }
}

/// GC's kernel part: remove the host veths named in `stale`, on the bridge or not (a DEL killed
/// half-way leaves one down and off it), and every tombstone (cut off by DEL, not yet reaped: it
/// is no pod's any more, whichever network it was in). Returns the names removed.
pub async fn collect_veths(stale: &HashSet<String>) -> Result<Vec<String>, CniError> {
    let nl = Netlink::connect()?;
    let mut removed = Vec::new();
    for link in nl.links().await? {
        let tombstone = is_weft_veth(&link.name) && link.name.starts_with(TOMBSTONE_PREFIX);
        if !tombstone && !stale.contains(&link.name) {
            continue;
        }
        match nl.delete_link(link.index).await {
            Ok(()) => removed.push(link.name),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(removed)
}

/// What CHECK expects of an attachment, taken from prevResult.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub bridge: &'a str,
    pub mac: Option<Mac>,
    pub mtu: u32,
    pub addresses: Vec<IpNet>,
    pub routes: Vec<(IpNet, Option<IpAddr>)>,
}

/// CHECK's kernel part: every difference is reported, not just the first.
pub async fn verify(e: &Expected<'_>, container: PendingSocket) -> Result<(), CniError> {
    let mut problems = Vec::new();
    let host_nl = Netlink::connect()?;
    let bridge = host_nl.link(e.bridge).await?;
    let host_name = host_veth_name(e.container_id, e.ifname);
    match (host_nl.link(&host_name).await?, &bridge) {
        (None, _) => problems.push(format!("host veth {host_name} is missing")),
        (Some(_), None) => problems.push(format!("bridge {} is missing", e.bridge)),
        (Some(host), Some(bridge)) => {
            if host.master != Some(bridge.index) {
                problems.push(format!("{host_name} is not attached to {}", e.bridge));
            }
            if !host.up {
                problems.push(format!("{host_name} is down"));
            }
        }
    }
    let ns_nl = container.connect()?;
    match ns_nl.link(e.ifname).await? {
        None => problems.push(format!("{} is missing in the container", e.ifname)),
        Some(iface) => {
            if !iface.up {
                problems.push(format!("{} is down", e.ifname));
            }
            if let Some(mac) = e.mac.filter(|m| iface.mac != Some(*m)) {
                problems.push(format!("{} has MAC {:?}, expected {mac}", e.ifname, iface.mac));
            }
            if iface.mtu != e.mtu {
                problems.push(format!("{} has MTU {}, expected {}", e.ifname, iface.mtu, e.mtu));
            }
            let addrs = ns_nl.addresses(iface.index).await?;
            for want in e.addresses.iter().filter(|a| !addrs.contains(a)) {
                problems.push(format!("{} lacks address {want}", e.ifname));
            }
            let routes = ns_nl.routes().await?;
            for (dst, gw) in &e.routes {
                let present = routes.iter().any(|r| r.dst == *dst && (gw.is_none() || r.gateway == *gw));
                if !present {
                    let via = gw.map(|gw| format!(" via {gw}")).unwrap_or_default();
                    problems.push(format!("route {dst}{via} is missing"));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(Code::CheckFailed, "the container's network is not as ADD left it")
            .with_details(problems.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::LeasedIp;
    use crate::result::{Dns, Route};

    fn lease(ips: &[(&str, &str)], routes: &[(&str, &str)]) -> Lease {
        Lease {
            ips: ips
                .iter()
                .map(|(a, gw)| LeasedIp { address: a.parse().unwrap(), gateway: gw.parse().unwrap() })
                .collect(),
            routes: routes
                .iter()
                .map(|(dst, gw)| Route::new(dst.parse().unwrap(), Some(gw.parse().unwrap())))
                .collect(),
            dns: Dns::default(),
        }
    }

    #[test]
    fn lease_routes_become_routes_out_of_the_container_interface() {
        let v4 = lease(&[("10.244.3.7/24", "10.244.3.1")], &[("0.0.0.0/0", "10.244.3.1"), ("::/0", "fd00::1")]);
        let routes = container_routes(&v4, 5);
        assert_eq!(routes.len(), 1, "no IPv6 route without an IPv6 address");
        assert_eq!(routes[0].oif, Some(5));
        assert_eq!(routes[0].gateway, Some("10.244.3.1".parse().unwrap()));
    }

    #[test]
    fn a_dual_stack_lease_gets_a_default_route_per_family() {
        let dual = lease(
            &[("10.244.3.7/24", "10.244.3.1"), ("fd00:10:244:3::7/64", "fd00:10:244:3::1")],
            &[("0.0.0.0/0", "10.244.3.1"), ("::/0", "fd00:10:244:3::1")],
        );
        let routes: Vec<String> =
            container_routes(&dual, 5).iter().map(|r| format!("{} via {}", r.dst, r.gateway.unwrap())).collect();
        assert_eq!(routes, ["0.0.0.0/0 via 10.244.3.1", "::/0 via fd00:10:244:3::1"]);
        assert_eq!(container_mac(&dual).to_string(), "0a:58:0a:f4:03:07", "from the IPv4 address");
    }

    #[test]
    fn an_ipv6_only_container_gets_a_stable_mac_of_its_address() {
        let v6 = lease(&[("fd00:10:244:3::7/64", "fd00:10:244:3::1")], &[]);
        assert_eq!(container_mac(&v6), container_mac(&v6.clone()));
        assert!(container_mac(&v6).is_unicast());
        let other = lease(&[("fd00:10:244:3::8/64", "fd00:10:244:3::1")], &[]);
        assert_ne!(container_mac(&v6), container_mac(&other));
    }
}
