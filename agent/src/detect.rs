//! The node's underlay: its addresses (at most one per family), the interface carrying each, that
//! interface's subnet and MTU. Deciding is [`choose`] (pure); [`detect`] only reads the kernel's
//! links, addresses and routes.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use weft_overlay::desired::UnderlayAddr;
use weft_overlay::netlink::{Netlink, NetlinkError};
use weft_overlay::objects::{Link, Route};
use weft_overlay::underlay::{Family, NodeIps, check_node_ip};

/// One underlay address of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnderlayIp {
    pub ip: IpAddr,
    pub iface: String,
    /// The on-link subnet of `ip` on `iface`: peers inside it are direct L2 neighbours.
    pub subnet: IpNet,
    /// The interface's MTU.
    pub mtu: u32,
}

/// The node's underlay addresses, one per family at most, IPv4 first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub addrs: Vec<UnderlayIp>,
}

impl Underlay {
    /// One IPv4 underlay address (tests and benchmarks).
    pub fn single(ip: IpAddr, iface: &str, subnet: IpNet, mtu: u32) -> Underlay {
        Underlay { addrs: vec![UnderlayIp { ip, iface: iface.to_string(), subnet, mtu }] }
    }

    pub fn node_ips(&self) -> NodeIps {
        NodeIps::new(self.addrs.iter().map(|a| a.ip)).unwrap_or_default()
    }

    /// The address standing for the node where one must be named (gossip, the state file,
    /// status): IPv4 when the node has one.
    pub fn primary(&self) -> &UnderlayIp {
        &self.addrs[0]
    }

    pub fn subnets(&self) -> Vec<IpNet> {
        self.addrs.iter().map(|a| a.subnet).collect()
    }

    /// As the datapath takes them.
    pub fn addrs(&self) -> Vec<UnderlayAddr> {
        self.addrs.iter().map(|a| UnderlayAddr { ip: a.ip, iface: a.iface.clone() }).collect()
    }

    /// (family, underlay MTU) of each address, for the pod MTU.
    pub fn mtus(&self) -> impl Iterator<Item = (Family, u32)> + '_ {
        self.addrs.iter().map(|a| (Family::of(a.ip), a.mtu))
    }
}

/// What the kernel says, as far as detection needs it.
#[derive(Debug, Clone, Default)]
pub struct HostNetwork {
    pub links: Vec<Link>,
    /// Addresses (both families) by link index.
    pub addresses: BTreeMap<u32, Vec<IpNet>>,
    /// Main-table routes of both families.
    pub routes: Vec<Route>,
}

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("cannot read the host network: {0}")]
    Netlink(#[from] NetlinkError),
    #[error("no default route (IPv4 or IPv6) with an output interface; pass --iface or --node-ip")]
    NoDefaultRoute,
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
    #[error("interface {0} has no address usable as a node IP; pass --node-ip")]
    NoAddress(String),
    #[error("--node-ip {ip} is not configured on {}", .iface.as_deref().unwrap_or("any interface"))]
    AddressNotFound { ip: IpAddr, iface: Option<String> },
}

/// Picks the underlay. With `--node-ip` (one address per family): each address and the
/// interface holding it (which must be `--iface` when given). With only `--iface`: its first
/// usable address of each family. With neither: the interface of the IPv4 default route and its
/// first IPv4 address, else the same for IPv6 — IPv4 wins, an IPv6 address is added to an
/// IPv4 underlay only when given.
pub fn choose(net: &HostNetwork, node_ips: Option<&NodeIps>, iface: Option<&str>) -> Result<Underlay, DetectError> {
    let link_named = |name: &str| {
        net.links.iter().find(|l| l.name == name).ok_or_else(|| DetectError::NoSuchInterface(name.to_string()))
    };
    let on = |link: &Link| net.addresses.get(&link.index).into_iter().flatten().copied().collect::<Vec<IpNet>>();
    let underlay_ip =
        |link: &Link, a: IpNet| UnderlayIp { ip: a.addr(), iface: link.name.clone(), subnet: a.trunc(), mtu: link.mtu };
    let usable = |a: &IpNet| check_node_ip(a.addr()).is_ok();
    let addrs = match (node_ips, iface) {
        (Some(ips), _) => ips
            .iter()
            .map(|ip| {
                let not_found = || DetectError::AddressNotFound { ip, iface: iface.map(str::to_string) };
                let link = match iface {
                    Some(name) => link_named(name)?,
                    None => net.links.iter().find(|l| on(l).iter().any(|a| a.addr() == ip)).ok_or_else(not_found)?,
                };
                let address = on(link).into_iter().find(|a| a.addr() == ip).ok_or_else(not_found)?;
                Ok(underlay_ip(link, address))
            })
            .collect::<Result<Vec<_>, DetectError>>()?,
        (None, Some(name)) => {
            let link = link_named(name)?;
            let addrs = on(link);
            Family::ALL
                .into_iter()
                .filter_map(|f| addrs.iter().find(|a| Family::of_net(a) == f && usable(a)))
                .map(|a| underlay_ip(link, *a))
                .collect()
        }
        (None, None) => {
            let (family, link) = Family::ALL
                .into_iter()
                .find_map(|f| {
                    let oif = net
                        .routes
                        .iter()
                        .filter(|r| r.dst.prefix_len() == 0 && Family::of_net(&r.dst) == f)
                        .find_map(|r| r.oif)?;
                    Some((f, net.links.iter().find(|l| l.index == oif)?))
                })
                .ok_or(DetectError::NoDefaultRoute)?;
            let address = on(link).into_iter().find(|a| Family::of_net(a) == family && usable(a));
            vec![underlay_ip(link, address.ok_or_else(|| DetectError::NoAddress(link.name.clone()))?)]
        }
    };
    if addrs.is_empty() {
        return Err(DetectError::NoAddress(iface.unwrap_or_default().to_string()));
    }
    Ok(Underlay { addrs })
}

/// Reads the host network of the calling network namespace and chooses the underlay.
pub async fn detect(node_ips: Option<&NodeIps>, iface: Option<&str>) -> Result<Underlay, DetectError> {
    let nl = Netlink::connect()?;
    let links = nl.links().await?;
    let mut addresses: BTreeMap<u32, Vec<IpNet>> = BTreeMap::new();
    for family in Family::ALL {
        for (index, address) in nl.all_addresses_of(family).await? {
            addresses.entry(index).or_default().push(address);
        }
    }
    let routes = nl.routes().await?;
    choose(&HostNetwork { links, addresses, routes }, node_ips, iface)
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

    fn default_route(dst: &str, gateway: &str, oif: u32) -> Route {
        Route {
            dst: dst.parse().unwrap(),
            gateway: Some(gateway.parse().unwrap()),
            oif: Some(oif),
            onlink: false,
            protocol: WEFT_ROUTE_PROTOCOL,
            table: MAIN_TABLE,
            priority: None,
        }
    }

    fn host() -> HostNetwork {
        HostNetwork {
            links: vec![link(1, "lo", 65536), link(2, "eth0", 1500), link(3, "eth1", 9000)],
            addresses: [
                (1, vec!["127.0.0.1/8".parse().unwrap(), "::1/128".parse().unwrap()]),
                (
                    2,
                    vec![
                        "192.0.2.10/24".parse().unwrap(),
                        "192.0.2.11/24".parse().unwrap(),
                        "fe80::2/64".parse().unwrap(),
                        "2001:db8:1::10/64".parse().unwrap(),
                    ],
                ),
                (3, vec!["198.51.100.5/26".parse().unwrap(), "2001:db8:3::5/64".parse().unwrap()]),
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
                default_route("0.0.0.0/0", "198.51.100.1", 3),
                default_route("::/0", "2001:db8:1::1", 2),
            ],
        }
    }

    fn ips(s: &str) -> NodeIps {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_to_the_ipv4_default_routes_interface_and_its_first_address() {
        let u = choose(&host(), None, None).unwrap();
        assert_eq!(u.addrs.len(), 1, "IPv4 wins; IPv6 only when given");
        let a = u.primary();
        assert_eq!(a.iface, "eth1");
        assert_eq!(a.ip, "198.51.100.5".parse::<IpAddr>().unwrap());
        assert_eq!(a.subnet, "198.51.100.0/26".parse::<IpNet>().unwrap());
        assert_eq!(a.mtu, 9000);
    }

    #[test]
    fn without_an_ipv4_default_route_the_ipv6_ones_address_is_taken() {
        let mut v6_only = host();
        v6_only.routes.retain(|r| r.dst.addr().is_ipv6());
        let u = choose(&v6_only, None, None).unwrap();
        assert_eq!(u.addrs.len(), 1);
        // The link-local address is skipped.
        assert_eq!(u.primary().ip, "2001:db8:1::10".parse::<IpAddr>().unwrap());
        assert_eq!(u.primary().subnet, "2001:db8:1::/64".parse::<IpNet>().unwrap());
    }

    #[test]
    fn given_node_ips_find_their_interfaces() {
        let u = choose(&host(), Some(&ips("192.0.2.11")), None).unwrap();
        assert_eq!((u.primary().iface.as_str(), u.primary().mtu), ("eth0", 1500));
        assert_eq!(u.primary().subnet, "192.0.2.0/24".parse::<IpNet>().unwrap());
        let both = choose(&host(), Some(&ips("2001:db8:3::5,192.0.2.10")), None).unwrap();
        let found: Vec<(IpAddr, &str)> = both.addrs.iter().map(|a| (a.ip, a.iface.as_str())).collect();
        assert_eq!(found, [("192.0.2.10".parse().unwrap(), "eth0"), ("2001:db8:3::5".parse().unwrap(), "eth1")]);
        assert_eq!(both.node_ips(), ips("192.0.2.10,2001:db8:3::5"));
    }

    #[test]
    fn a_given_interface_supplies_an_address_of_each_family() {
        let u = choose(&host(), None, Some("eth0")).unwrap();
        let found: Vec<IpAddr> = u.addrs.iter().map(|a| a.ip).collect();
        assert_eq!(found, ["192.0.2.10".parse::<IpAddr>().unwrap(), "2001:db8:1::10".parse().unwrap()]);
    }

    #[test]
    fn inconsistent_or_missing_inputs_are_errors() {
        let ip = ips("192.0.2.10");
        assert!(matches!(choose(&host(), Some(&ip), Some("eth1")), Err(DetectError::AddressNotFound { .. })));
        assert!(matches!(choose(&host(), None, Some("eth9")), Err(DetectError::NoSuchInterface(_))));
        let err = choose(&host(), Some(&ips("2001:db8:9::1")), None).unwrap_err();
        assert!(matches!(err, DetectError::AddressNotFound { iface: None, .. }));
        assert!(err.to_string().contains("--node-ip"), "{err}");
        let mut no_default = host();
        no_default.routes.retain(|r| r.dst.prefix_len() != 0);
        assert!(matches!(choose(&no_default, None, None), Err(DetectError::NoDefaultRoute)));
        let mut bare = host();
        bare.addresses.remove(&3);
        assert!(matches!(choose(&bare, None, None), Err(DetectError::NoAddress(_))));
        assert!(matches!(choose(&host(), None, Some("lo")), Err(DetectError::NoAddress(_))));
    }
}
