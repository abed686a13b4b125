//! The node's underlay: its IP, the interface carrying it, that interface's subnet and MTU.
//! Deciding is [`choose`] (pure); [`detect`] only reads the kernel's links, addresses and routes.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use weft_overlay::netlink::{Netlink, NetlinkError};
use weft_overlay::objects::{Link, Route};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub node_ip: Ipv4Addr,
    pub iface: String,
    /// The subnet of `node_ip` on `iface`: peers inside it are direct L2 neighbours.
    pub subnet: Ipv4Net,
    /// The interface's MTU.
    pub mtu: u32,
}

/// What the kernel says, as far as detection needs it.
#[derive(Debug, Clone, Default)]
pub struct HostNetwork {
    pub links: Vec<Link>,
    /// Addresses by link index.
    pub addresses: BTreeMap<u32, Vec<IpNet>>,
    /// Main-table IPv4 routes.
    pub routes: Vec<Route>,
}

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("cannot read the host network: {0}")]
    Netlink(#[from] NetlinkError),
    #[error("no IPv4 default route with an output interface; pass --iface or --node-ip")]
    NoDefaultRoute,
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
    #[error("interface {0} has no IPv4 address; pass --node-ip")]
    NoAddress(String),
    #[error("node IP {ip} is not configured on {}", .iface.as_deref().unwrap_or("any interface"))]
    AddressNotFound { ip: Ipv4Addr, iface: Option<String> },
}

/// Picks the underlay. Interface: `--iface`, else the one holding `--node-ip`, else the default
/// route's. Address: `--node-ip` (which must be on that interface), else its first address.
pub fn choose(net: &HostNetwork, node_ip: Option<Ipv4Addr>, iface: Option<&str>) -> Result<Underlay, DetectError> {
    // The underlay is IPv4 until weft carries VXLAN over IPv6.
    let addresses = |link: &Link| -> Vec<Ipv4Net> {
        let all = net.addresses.get(&link.index).into_iter().flatten();
        all.filter_map(|a| match a {
            IpNet::V4(v4) => Some(*v4),
            IpNet::V6(_) => None,
        })
        .collect()
    };
    let link = match (iface, node_ip) {
        (Some(name), _) => {
            net.links.iter().find(|l| l.name == name).ok_or_else(|| DetectError::NoSuchInterface(name.to_string()))?
        }
        (None, Some(ip)) => net
            .links
            .iter()
            .find(|l| addresses(l).iter().any(|a| a.addr() == ip))
            .ok_or(DetectError::AddressNotFound { ip, iface: None })?,
        (None, None) => {
            let oif = net
                .routes
                .iter()
                .filter(|r| r.dst.prefix_len() == 0 && r.dst.addr().is_ipv4())
                .find_map(|r| r.oif)
                .ok_or(DetectError::NoDefaultRoute)?;
            net.links.iter().find(|l| l.index == oif).ok_or(DetectError::NoDefaultRoute)?
        }
    };
    let on_link = addresses(link);
    let address = match node_ip {
        Some(ip) => on_link
            .into_iter()
            .find(|a| a.addr() == ip)
            .ok_or_else(|| DetectError::AddressNotFound { ip, iface: Some(link.name.clone()) })?,
        None => on_link.into_iter().next().ok_or_else(|| DetectError::NoAddress(link.name.clone()))?,
    };
    Ok(Underlay { node_ip: address.addr(), iface: link.name.clone(), subnet: address.trunc(), mtu: link.mtu })
}

/// Reads the host network of the calling network namespace and chooses the underlay.
pub async fn detect(node_ip: Option<Ipv4Addr>, iface: Option<&str>) -> Result<Underlay, DetectError> {
    let nl = Netlink::connect()?;
    let links = nl.links().await?;
    let mut addresses: BTreeMap<u32, Vec<IpNet>> = BTreeMap::new();
    for (index, address) in nl.all_addresses().await? {
        addresses.entry(index).or_default().push(address);
    }
    let routes = nl.routes().await?;
    choose(&HostNetwork { links, addresses, routes }, node_ip, iface)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use weft_overlay::objects::{MAIN_TABLE, WEFT_ROUTE_PROTOCOL};

    /// A plain link, up, of no particular kind (also the diagnose tests' fixture).
    pub(crate) fn link(index: u32, name: &str, mtu: u32) -> Link {
        Link {
            index,
            name: name.into(),
            mac: None,
            mtu,
            up: true,
            master: None,
            kind: None,
            link: None,
            vxlan: None,
            hairpin: None,
        }
    }

    fn host() -> HostNetwork {
        HostNetwork {
            links: vec![link(1, "lo", 65536), link(2, "eth0", 1500), link(3, "eth1", 9000)],
            addresses: [
                (1, vec!["127.0.0.1/8".parse().unwrap()]),
                (2, vec!["192.0.2.10/24".parse().unwrap(), "192.0.2.11/24".parse().unwrap()]),
                (3, vec!["198.51.100.5/26".parse().unwrap()]),
            ]
            .into_iter()
            .collect(),
            routes: vec![
                Route {
                    dst: "192.0.2.0/24".parse().unwrap(),
                    gateway: None,
                    oif: Some(2),
                    onlink: false,
                    protocol: 2,
                    table: MAIN_TABLE,
                    priority: None,
                },
                Route {
                    dst: "0.0.0.0/0".parse().unwrap(),
                    gateway: Some("198.51.100.1".parse().unwrap()),
                    oif: Some(3),
                    onlink: false,
                    protocol: WEFT_ROUTE_PROTOCOL,
                    table: MAIN_TABLE,
                    priority: None,
                },
            ],
        }
    }

    #[test]
    fn defaults_to_the_default_routes_interface_and_its_first_address() {
        let u = choose(&host(), None, None).unwrap();
        assert_eq!(u.iface, "eth1");
        assert_eq!(u.node_ip, "198.51.100.5".parse::<Ipv4Addr>().unwrap());
        assert_eq!(u.subnet, "198.51.100.0/26".parse::<Ipv4Net>().unwrap());
        assert_eq!(u.mtu, 9000);
    }

    #[test]
    fn a_given_node_ip_finds_its_interface() {
        let u = choose(&host(), Some("192.0.2.11".parse().unwrap()), None).unwrap();
        assert_eq!((u.iface.as_str(), u.mtu), ("eth0", 1500));
        assert_eq!(u.subnet, "192.0.2.0/24".parse::<Ipv4Net>().unwrap());
    }

    #[test]
    fn a_given_interface_supplies_the_address() {
        let u = choose(&host(), None, Some("eth0")).unwrap();
        assert_eq!(u.node_ip, "192.0.2.10".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn inconsistent_or_missing_inputs_are_errors() {
        let ip = "192.0.2.10".parse().unwrap();
        assert!(matches!(choose(&host(), Some(ip), Some("eth1")), Err(DetectError::AddressNotFound { .. })));
        assert!(matches!(choose(&host(), None, Some("eth9")), Err(DetectError::NoSuchInterface(_))));
        assert!(matches!(
            choose(&host(), Some("203.0.113.1".parse().unwrap()), None),
            Err(DetectError::AddressNotFound { iface: None, .. })
        ));
        let mut no_default = host();
        no_default.routes.retain(|r| r.dst.prefix_len() != 0);
        assert!(matches!(choose(&no_default, None, None), Err(DetectError::NoDefaultRoute)));
        let mut bare = host();
        bare.addresses.remove(&3);
        assert!(matches!(choose(&bare, None, None), Err(DetectError::NoAddress(_))));
    }
}
