//! The node bridge `cni0`: ensured by the agent before the first pod and by the plugin on every
//! ADD, so the two never disagree about what it looks like.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::mac::Mac;
use crate::netlink::{Netlink, NetlinkError};
use crate::objects::{Link, LinkChange};
use crate::sysctl;

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("{0} exists but is not a bridge (kind {1:?})")]
    NotABridge(String, Option<String>),
    #[error("{0} vanished while being set up")]
    Vanished(String),
    #[error(transparent)]
    Sysctl(#[from] std::io::Error),
}

/// What was changed to make the bridge right (for reports and logs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgeChanges {
    pub created: bool,
    pub changed: bool,
    pub addresses_added: usize,
}

/// Makes `name` a bridge that is up, has `mtu` and carries `gateways` (addresses with prefix,
/// IPv4 first; other addresses are left alone). Safe against concurrent callers: losing a
/// creation race is not an error.
pub async fn ensure_bridge(
    nl: &Netlink,
    name: &str,
    mtu: u32,
    gateways: &[IpNet],
) -> Result<(Link, BridgeChanges), BridgeError> {
    let mac = bridge_mac(name, gateways.first().map(IpNet::addr));
    let (link, mut changes) = ensure_bridge_link(nl, name, mtu, mac).await?;
    for gateway in gateways {
        changes.addresses_added += usize::from(ensure_address(nl, link.index, *gateway).await?);
    }
    Ok((link, changes))
}

/// The MAC a bridge is created with, fixed: otherwise the bridge takes its lowest port's MAC,
/// which changes as pods come and go. Derived from the IPv4 gateway (the first gateway given,
/// IPv4 first) as other CNIs do, else from the bridge's name: the agent and the plugin, whichever
/// creates the bridge first, give it the same one.
pub fn bridge_mac(name: &str, first_gateway: Option<IpAddr>) -> Mac {
    match first_gateway {
        Some(IpAddr::V4(v4)) => Mac::for_ipv4(v4),
        _ => Mac::derived(name),
    }
}

/// The bridge link alone: exists (created with `mac`), is a bridge, is up, has `mtu`.
pub async fn ensure_bridge_link(
    nl: &Netlink,
    name: &str,
    mtu: u32,
    mac: Mac,
) -> Result<(Link, BridgeChanges), BridgeError> {
    let mut changes = BridgeChanges::default();
    let link = match nl.link(name).await? {
        Some(link) => link,
        None => {
            match nl.add_bridge(name, mtu, mac).await {
                Ok(()) => {
                    changes.created = true;
                    skip_link_local_dad(name)?;
                }
                Err(e) if e.is_exists() => {}
                Err(e) => return Err(e.into()),
            }
            nl.link(name).await?.ok_or_else(|| BridgeError::Vanished(name.to_string()))?
        }
    };
    if link.kind.as_deref() != Some("bridge") {
        return Err(BridgeError::NotABridge(name.to_string(), link.kind));
    }
    if !is_ready(&link, mtu) {
        let change = LinkChange { up: Some(true), mtu: Some(mtu), ..LinkChange::default() };
        nl.set_link(link.index, &change).await?;
        changes.changed = true;
    }
    Ok((link, changes))
}

/// The bridge's IPv6 link-local address is usable as soon as it is up: while it is tentative
/// (duplicate address detection, 1–2 s after the bridge comes up) the node cannot resolve a pod's
/// address, so the first IPv6 packets forwarded to a new node's pods waited that long. Set
/// before the bridge goes up, when its link-local address is made; nothing to do where IPv6 is
/// off.
fn skip_link_local_dad(name: &str) -> std::io::Result<()> {
    match sysctl::ensure(&sysctl::ipv6_dev_key("accept_dad", name), "0") {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other.map(|_| ()),
    }
}

/// Whether an existing link is the bridge as `ensure_bridge_link` leaves it (a caller that finds
/// it so needs nothing changed).
pub fn is_ready(link: &Link, mtu: u32) -> bool {
    link.kind.as_deref() == Some("bridge") && link.up && link.mtu == mtu
}

/// Puts `address` on the link unless it is there already; whether it was added. An IPv6 one
/// is usable at once (no duplicate address detection, see `Netlink::add_address`). One request:
/// the kernel refuses an address the link has (EEXIST), which is cheaper to ask than a dump of
/// every address of the namespace (each pod's host veth has its own link-local one).
pub async fn ensure_address(nl: &Netlink, index: u32, address: IpNet) -> Result<bool, BridgeError> {
    match nl.add_address(index, address).await {
        Ok(()) => Ok(true),
        Err(e) if e.is_exists() => Ok(false),
        Err(e) => Err(e.into()),
    }
}
