//! Pods made by hand: a namespace with `eth0` on a node's bridge, an address from the node's
//! PodCIDR and a default route via the bridge's gateway, as a bridge CNI plugin would leave it.
//! For tests of the node datapath that must not depend on the plugin.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};

use crate::cmd::Result;
use crate::netns::Netns;
use crate::topology::{Family, ip_flag};

#[derive(Debug)]
pub struct Pod {
    pub ns: Netns,
    pub ip: Ipv4Addr,
}

/// How to attach a pod to a node's bridge.
#[derive(Debug, Clone)]
pub struct PodSpec<'a> {
    /// Namespace name of the pod.
    pub name: &'a str,
    /// The host end of the veth on the node (at most 15 characters).
    pub host_veth: &'a str,
    pub bridge: &'a str,
    /// The pod's address with the PodCIDR's prefix.
    pub address: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
}

/// Creates the pod. The bridge is created (with the gateway address) when the node has none
/// yet, as a CNI plugin does on the first ADD.
pub fn attach(node: &Netns, spec: &PodSpec<'_>) -> Result<Pod> {
    let mtu = spec.mtu.to_string();
    if node.ip(&["link", "show", spec.bridge]).is_err() {
        node.ip(&["link", "add", spec.bridge, "mtu", &mtu, "type", "bridge"])?;
        let gateway = format!("{}/{}", spec.gateway, spec.address.prefix_len());
        node.ip(&["addr", "add", &gateway, "dev", spec.bridge])?;
        node.ip(&["link", "set", spec.bridge, "up"])?;
    }
    let ns = Netns::create(spec.name)?;
    node.ip(&["link", "add", spec.host_veth, "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "netns", spec.name])?;
    node.ip(&["link", "set", spec.host_veth, "master", spec.bridge, "up"])?;
    ns.ip(&["addr", "add", &spec.address.to_string(), "dev", "eth0"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.ip(&["route", "add", "default", "via", &spec.gateway.to_string()])?;
    Ok(Pod { ns, ip: spec.address.addr() })
}

impl Pod {
    /// One ping with a one-second deadline: whether a reply came back.
    pub fn ping_once(&self, to: impl Into<IpAddr>) -> bool {
        self.ns.run("ping", &["-c", "1", "-W", "1", &to.into().to_string()]).is_ok()
    }

    /// Gives the pod an address of another family (with its block's prefix) and that family's
    /// default route via `gateway`, as a dual-stack plugin does. An IPv6 one skips duplicate
    /// address detection, so it is usable at once.
    pub fn add_address(&self, address: IpNet, gateway: IpAddr) -> Result<()> {
        let address = address.to_string();
        let family = ip_flag(Family::of(gateway));
        let mut add = vec![family, "addr", "add", &address, "dev", "eth0"];
        if gateway.is_ipv6() {
            add.push("nodad");
        }
        self.ns.ip(&add)?;
        self.ns.ip(&[family, "route", "add", "default", "via", &gateway.to_string()])?;
        Ok(())
    }
}
