//! The kernel objects weft reads and writes, as plain data: what the snapshot holds, what the
//! planner compares and emits, and what [`crate::netlink`] encodes. No I/O here.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::mac::Mac;

/// Route protocol number marking the routes weft installs (see `ip route show proto 87`).
pub const WEFT_ROUTE_PROTOCOL: u8 = 87;
pub const MAIN_TABLE: u32 = 254;

/// What weft needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<Mac>,
    pub mtu: u32,
    pub up: bool,
    pub master: Option<u32>,
    pub kind: Option<String>,
    /// IFLA_LINK: a veth's peer index (in the peer's namespace), a vxlan's underlay device.
    pub link: Option<u32>,
    pub vxlan: Option<VxlanAttrs>,
    pub hairpin: Option<bool>,
}

/// The attributes of a VXLAN device that identify its tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VxlanAttrs {
    pub vni: u32,
    pub port: u16,
    pub local: Option<IpAddr>,
    pub underlay: Option<u32>,
    pub learning: bool,
    pub udp_csum: bool,
}

/// A new VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub attrs: VxlanAttrs,
    pub mtu: u32,
    pub mac: Mac,
}

/// Changes to an existing link; `None` leaves an attribute alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkChange {
    pub up: Option<bool>,
    pub mtu: Option<u32>,
    pub mac: Option<Mac>,
    pub name: Option<String>,
    /// `Some(None)` detaches the link from its bridge.
    pub master: Option<Option<u32>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub onlink: bool,
    pub protocol: u8,
    pub table: u32,
    /// The metric; `None` is the family's default, which the kernel gives a route added without
    /// one ([`default_metric`]: 0 for IPv4, omitted from dumps; 1024 for IPv6, reported). Part of
    /// a route's key, so a delete with it removes exactly this route among several to the same
    /// destination.
    pub priority: Option<u32>,
}

/// The metric the kernel gives a route of this destination's family added without one
/// (IPv6: IP6_RT_PRIO_USER).
pub fn default_metric(dst: &IpNet) -> u32 {
    match dst {
        IpNet::V4(_) => 0,
        IpNet::V6(_) => 1024,
    }
}

/// A neighbour entry (ip → MAC) on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Neighbour {
    pub ifindex: u32,
    pub ip: IpAddr,
    pub mac: Mac,
    pub permanent: bool,
}

/// A forwarding-database entry on a VXLAN device: frames for `mac` go to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FdbEntry {
    pub ifindex: u32,
    pub mac: Mac,
    pub dst: Option<IpAddr>,
    pub permanent: bool,
}
