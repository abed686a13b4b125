//! The multi-subnet underlay: a router namespace joins M subnets (one bridge each) and an
//! off-cluster host; N node namespaces sit on the subnets round-robin. The router has routes only
//! for its connected subnets, so pod addresses can cross it only inside VXLAN. The underlay is of
//! one family, IPv4 or IPv6 ([`LabSpec::underlay`]); the same builder makes both.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
pub use weft_overlay::underlay::Family;

use crate::cmd::{LabError, Result};
use crate::netns::Netns;
use weft_overlay::rules::nth_address;

/// Underlays come from the documentation ranges; the off-cluster host gets the third one.
/// The `ip` command's flag for a family's objects (`ip -6 route`).
pub fn ip_flag(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "-4",
        Family::Ipv6 => "-6",
    }
}

fn node_ranges(family: Family) -> [&'static str; 2] {
    match family {
        Family::Ipv4 => ["192.0.2.0/24", "198.51.100.0/24"],
        Family::Ipv6 => ["2001:db8:1::/64", "2001:db8:2::/64"],
    }
}

fn external_range(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "203.0.113.0/24",
        Family::Ipv6 => "2001:db8:3::/64",
    }
}

pub const MAX_SUBNETS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabSpec {
    pub nodes: usize,
    pub subnets: usize,
    /// GRO on the underlay veths, as real NICs have it (and MTU-sized frames from the router's
    /// ports, so that it takes effect).
    pub gro: bool,
    /// The underlay's family: the nodes', router's and external host's addresses.
    pub underlay: Family,
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec { nodes: 3, subnets: 2, gro: true, underlay: Family::Ipv4 }
    }
}

#[derive(Debug, Clone)]
pub struct Subnet {
    pub cidr: IpNet,
    pub gateway: IpAddr,
    /// The bridge in the router namespace that is this subnet's L2 segment.
    pub bridge: String,
}

#[derive(Debug)]
pub struct Node {
    /// `n1`, `n2`, … (also the agent's node name).
    pub name: String,
    pub ns: Netns,
    pub ip: IpAddr,
    pub subnet: usize,
    /// The node's underlay interface.
    pub iface: String,
    /// This node's own files (state dir, CNI conf dir, IPAM dir, logs).
    pub dir: PathBuf,
}

#[derive(Debug)]
pub struct ExternalHost {
    pub ns: Netns,
    pub ip: IpAddr,
}

/// A lab; dropping it removes every namespace and file it made.
#[derive(Debug)]
pub struct Lab {
    pub prefix: String,
    pub dir: PathBuf,
    pub underlay: Family,
    pub subnets: Vec<Subnet>,
    // Field order is drop order: nodes and the external host go before the router.
    pub nodes: Vec<Node>,
    pub external: ExternalHost,
    pub router: Netns,
}

/// The node subnets: the two documentation ranges of the family (/24s, /64s), each split in
/// four (/26s, /66s) when more are needed.
pub fn subnet_cidrs(count: usize, family: Family) -> Result<Vec<IpNet>> {
    if count == 0 || count > MAX_SUBNETS {
        return Err(LabError::Other(format!("subnets must be 1..={MAX_SUBNETS}, got {count}")));
    }
    let ranges = node_ranges(family).map(|r| r.parse::<IpNet>().expect("valid range"));
    if count <= ranges.len() {
        return Ok(ranges.into_iter().take(count).collect());
    }
    Ok(ranges.iter().flat_map(|r| r.subnets(r.prefix_len() + 2).expect("a quarter fits")).take(count).collect())
}

/// Node `i` (0-based) is on subnet `i % subnets`, at host 10 + its position on that subnet.
pub fn node_address(i: usize, subnets: &[IpNet]) -> Result<(usize, IpAddr)> {
    let subnet = i % subnets.len();
    let position = (i / subnets.len()) as u32;
    let net = subnets[subnet];
    let ip = nth_address(&net, 10 + position);
    if !net.contains(&ip) || ip == net.broadcast() {
        return Err(LabError::Other(format!("too many nodes for subnet {net}")));
    }
    Ok((subnet, ip))
}

impl Lab {
    pub fn build(prefix: &str, spec: LabSpec) -> Result<Lab> {
        let cidrs = subnet_cidrs(spec.subnets, spec.underlay)?;
        let dir = std::env::temp_dir().join(prefix);
        std::fs::create_dir_all(&dir).map_err(|e| LabError::Other(format!("create {}: {e}", dir.display())))?;
        let router = Netns::create(&format!("{prefix}-router"))?;
        router.sysctl(forwarding_sysctl(spec.underlay), "1")?;
        let subnets = cidrs
            .iter()
            .enumerate()
            .map(|(k, cidr)| add_segment(&router, &format!("s{k}"), *cidr))
            .collect::<Result<Vec<_>>>()?;
        let external_segment =
            add_segment(&router, "ext", external_range(spec.underlay).parse().expect("valid range"))?;
        let external_ip = nth_address(&external_segment.cidr, 10);
        let external = ExternalHost {
            ns: attach_host(&router, &format!("{prefix}-ext"), "ext0", &external_segment, external_ip, spec.gro)?,
            ip: external_ip,
        };
        let mut nodes = Vec::with_capacity(spec.nodes);
        for i in 0..spec.nodes {
            let (subnet, ip) = node_address(i, &cidrs)?;
            let name = format!("n{}", i + 1);
            let ns = attach_host(&router, &format!("{prefix}-{name}"), &name, &subnets[subnet], ip, spec.gro)?;
            let node_dir = dir.join(&name);
            std::fs::create_dir_all(&node_dir)
                .map_err(|e| LabError::Other(format!("create {}: {e}", node_dir.display())))?;
            nodes.push(Node { name, ns, ip, subnet, iface: "eth0".into(), dir: node_dir });
        }
        let mut hosts: Vec<(&Netns, IpAddr, &Subnet)> =
            nodes.iter().map(|n| (&n.ns, n.ip, &subnets[n.subnet])).collect();
        hosts.push((&external.ns, external.ip, &external_segment));
        pin_neighbours(&router, &hosts, &dir)?;
        Ok(Lab { prefix: prefix.to_string(), dir, underlay: spec.underlay, subnets, nodes, external, router })
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Keeps every namespace and file after this value is gone (`weft-lab up`).
    pub fn persist(self) {
        std::mem::forget(self);
    }

    /// Unplugs (or plugs back) node `i`'s cable: its router port goes down, so nothing reaches
    /// the node and nothing leaves it, as when the machine dies; its own state is untouched.
    pub fn set_cable(&self, i: usize, plugged: bool) -> Result<()> {
        self.router.ip(&["link", "set", &self.nodes[i].name, if plugged { "up" } else { "down" }])?;
        Ok(())
    }

    /// Adds a static route for every node's PodCIDR on the router: the plain routed underlay that
    /// benchmarks use as their 100 % line.
    pub fn route_pod_cidrs_on_router(&self, routes: &[(IpNet, IpAddr)]) -> Result<()> {
        for (cidr, via) in routes {
            self.router.ip(&["route", "replace", &cidr.to_string(), "via", &via.to_string()])?;
        }
        Ok(())
    }

    /// Replaces the router's firewall between the subnets with `rules` (nft rule text, e.g.
    /// `udp dport 8472 drop`), in a forward chain of a table of the lab's own; `&[]` lifts it.
    pub fn router_firewall(&self, rules: &[String]) -> Result<()> {
        let router = &self.router;
        router.run("nft", &["add", "table", "inet", "lab"])?;
        router.run("nft", &["add", "chain", "inet", "lab", "path", "{ type filter hook forward priority 0; }"])?;
        router.run("nft", &["flush", "chain", "inet", "lab", "path"])?;
        for rule in rules {
            let words: Vec<&str> = ["add", "rule", "inet", "lab", "path"].into_iter().chain(rule.split(' ')).collect();
            router.run("nft", &words)?;
        }
        Ok(())
    }

    /// Drops UDP to `port` between the first two subnets, both ways, at the router (traffic
    /// within a subnet is untouched); `router_firewall(&[])` lifts it.
    pub fn block_between_subnets(&self, port: u16) -> Result<()> {
        let proto = self.underlay.nft_proto();
        let rule = |from: &str, to: &str| format!("{proto} saddr {from} {proto} daddr {to} udp dport {port} drop");
        let [s0, s1] = node_ranges(self.underlay);
        self.router_firewall(&[rule(s0, s1), rule(s1, s0)])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Node {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn forwarding_sysctl(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "net.ipv4.ip_forward",
        Family::Ipv6 => "net.ipv6.conf.all.forwarding",
    }
}

/// `ip addr add` arguments for `ip/prefix`: IPv6 addresses without duplicate address detection,
/// so they are usable at once (a tentative address cannot be bound).
fn addr_args(ip: IpAddr, prefix: u8) -> Vec<String> {
    let mut args = vec!["addr".to_string(), "add".into(), format!("{ip}/{prefix}")];
    if ip.is_ipv6() {
        args.push("nodad".into());
    }
    args
}

/// Makes every underlay neighbour entry permanent. The kernel's ARP table is one table for all
/// namespaces, and its dynamic entries are capped machine-wide (`gc_thresh3`, 1024 by default,
/// settable only from the machine's own namespace): with a few dozen nodes learning each other by
/// ARP, a new node could no longer resolve its gateway (its sends failed with ENOBUFS).
/// Permanent entries are exempt from the cap; on real machines every node has its own table.
fn pin_neighbours(router: &Netns, hosts: &[(&Netns, IpAddr, &Subnet)], dir: &Path) -> Result<()> {
    let entry = |ip: IpAddr, dev: &str| format!("neigh replace {ip} lladdr {} dev {dev} nud permanent\n", mac(ip));
    let mut on_router = String::new();
    for &(ns, ip, subnet) in hosts {
        on_router.push_str(&entry(ip, &subnet.bridge));
        let mut own = entry(subnet.gateway, "eth0");
        for &(_, other, _) in hosts.iter().filter(|h| h.2.bridge == subnet.bridge && h.1 != ip) {
            own.push_str(&entry(other, "eth0"));
        }
        batch(ns, &own, dir)?;
    }
    batch(router, &on_router, dir)
}

/// Runs `commands` (one `ip` command per line) in `ns` with a single `ip -batch`.
fn batch(ns: &Netns, commands: &str, dir: &Path) -> Result<()> {
    let path = dir.join(format!("{}.ip-batch", ns.name()));
    std::fs::write(&path, commands).map_err(|e| LabError::Other(format!("write {}: {e}", path.display())))?;
    ns.ip(&["-batch", &path.to_string_lossy()])?;
    std::fs::remove_file(&path).map_err(|e| LabError::Other(format!("remove {}: {e}", path.display())))
}

/// The MAC of an underlay address (the gateway's on the bridge, a host's on its `eth0`): known
/// in advance, so neighbour entries can be written without reading them back. IPv6: the subnet
/// byte of 2001:db8:N:: and the last three.
fn mac(ip: IpAddr) -> String {
    let (tag, [a, b, c, d]) = match ip {
        IpAddr::V4(v4) => (0x77, v4.octets()),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            (0x76, [o[5], o[13], o[14], o[15]])
        }
    };
    format!("02:{tag:02x}:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// A bridge in the router namespace with the subnet's first address: one L2 segment.
fn add_segment(router: &Netns, bridge: &str, cidr: IpNet) -> Result<Subnet> {
    let gateway = nth_address(&cidr, 1);
    router.ip(&["link", "add", bridge, "address", &mac(gateway), "type", "bridge"])?;
    let mut add: Vec<String> = addr_args(gateway, cidr.prefix_len());
    add.extend(["dev".into(), bridge.into()]);
    router.ip(&add.iter().map(String::as_str).collect::<Vec<_>>())?;
    router.ip(&["link", "set", bridge, "up"])?;
    Ok(Subnet { cidr, gateway, bridge: bridge.to_string() })
}

/// A new namespace plugged into `segment` with address `ip` and a default route via the router.
fn attach_host(router: &Netns, name: &str, port: &str, segment: &Subnet, ip: IpAddr, gro: bool) -> Result<Netns> {
    let ns = Netns::create(name)?;
    router.ip(&["link", "add", port, "type", "veth", "peer", "name", "eth0", "address", &mac(ip), "netns", name])?;
    router.ip(&["link", "set", port, "master", &segment.bridge, "up"])?;
    let mut add: Vec<String> = addr_args(ip, segment.cidr.prefix_len());
    add.extend(["dev".into(), "eth0".into()]);
    ns.ip(&add.iter().map(String::as_str).collect::<Vec<_>>())?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.ip(&["route", "add", "default", "via", &segment.gateway.to_string()])?;
    if gro {
        // veth aggregates only what its sending peer could not segment itself (the kernel's
        // veth_skb_is_eligible_for_gro): with TSO on the router's port, everything the router
        // forwards would reach the node unaggregated whatever the node's GRO setting. Without
        // TSO the port segments like a wire carrying MTU-sized frames, and the node's GRO
        // aggregates them again, as a real NIC does.
        router.run("ethtool", &["-K", port, "gro", "on", "tso", "off"])?;
        ns.run("ethtool", &["-K", "eth0", "gro", "on"])?;
    }
    Ok(ns)
}

/// Where lab files live for a given prefix (also after a crash, for `weft-lab down`).
pub fn lab_dir(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(prefix)
}

/// Removes lab directories left by earlier runs (`weft-lab down`).
pub fn remove_lab_dirs(prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix)))
        .filter(|p| std::fs::remove_dir_all(p).is_ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_subnets_use_the_documentation_ranges() {
        let s = subnet_cidrs(2, Family::Ipv4).unwrap();
        assert_eq!(s[0].to_string(), "192.0.2.0/24");
        assert_eq!(s[1].to_string(), "198.51.100.0/24");
        let s = subnet_cidrs(2, Family::Ipv6).unwrap();
        assert_eq!(s[0].to_string(), "2001:db8:1::/64");
        assert_eq!(s[1].to_string(), "2001:db8:2::/64");
    }

    #[test]
    fn more_subnets_split_in_four_and_stay_disjoint() {
        for family in Family::ALL {
            let s = subnet_cidrs(5, family).unwrap();
            assert_eq!(s.len(), 5);
            for (i, a) in s.iter().enumerate() {
                for b in &s[i + 1..] {
                    assert!(!a.contains(b) && !b.contains(a));
                }
            }
            assert!(subnet_cidrs(0, family).is_err() && subnet_cidrs(9, family).is_err());
        }
    }

    #[test]
    fn nodes_go_round_robin_over_subnets() {
        let s = subnet_cidrs(2, Family::Ipv4).unwrap();
        assert_eq!(node_address(0, &s).unwrap(), (0, "192.0.2.10".parse().unwrap()));
        assert_eq!(node_address(1, &s).unwrap(), (1, "198.51.100.10".parse().unwrap()));
        assert_eq!(node_address(2, &s).unwrap(), (0, "192.0.2.11".parse().unwrap()));
        let s = subnet_cidrs(2, Family::Ipv6).unwrap();
        assert_eq!(node_address(1, &s).unwrap(), (1, "2001:db8:2::a".parse().unwrap()));
    }

    #[test]
    fn underlay_macs_differ_across_subnets_and_families() {
        let macs: std::collections::BTreeSet<String> =
            ["192.0.2.10", "198.51.100.10", "2001:db8:1::a", "2001:db8:2::a", "2001:db8:1::1", "2001:db8:2::1"]
                .iter()
                .map(|ip| mac(ip.parse().unwrap()))
                .collect();
        assert_eq!(macs.len(), 6);
    }
}
