//! The multi-subnet underlay: a router namespace joins M subnets (one bridge each) and an
//! off-cluster host; N node namespaces sit on the subnets round-robin. The router has routes only
//! for its connected subnets, so pod addresses can cross it only inside VXLAN.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

use crate::cmd::{LabError, Result};
use crate::netns::Netns;

/// Underlays come from the documentation ranges; the off-cluster host gets the third one.
const NODE_RANGES: [&str; 2] = ["192.0.2.0/24", "198.51.100.0/24"];
const EXTERNAL_RANGE: &str = "203.0.113.0/24";
pub const MAX_SUBNETS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabSpec {
    pub nodes: usize,
    pub subnets: usize,
    /// GRO on the underlay veths, as real NICs have it (and MTU-sized frames from the router's
    /// ports, so that it takes effect).
    pub gro: bool,
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec { nodes: 3, subnets: 2, gro: true }
    }
}

#[derive(Debug, Clone)]
pub struct Subnet {
    pub cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// The bridge in the router namespace that is this subnet's L2 segment.
    pub bridge: String,
}

#[derive(Debug)]
pub struct Node {
    /// `n1`, `n2`, … (also the agent's node name).
    pub name: String,
    pub ns: Netns,
    pub ip: Ipv4Addr,
    pub subnet: usize,
    /// The node's underlay interface.
    pub iface: String,
    /// This node's own files (state dir, CNI conf dir, IPAM dir, logs).
    pub dir: PathBuf,
}

#[derive(Debug)]
pub struct ExternalHost {
    pub ns: Netns,
    pub ip: Ipv4Addr,
}

/// A lab; dropping it removes every namespace and file it made.
#[derive(Debug)]
pub struct Lab {
    pub prefix: String,
    pub dir: PathBuf,
    pub subnets: Vec<Subnet>,
    // Field order is drop order: nodes and the external host go before the router.
    pub nodes: Vec<Node>,
    pub external: ExternalHost,
    pub router: Netns,
}

/// The node subnets: the two documentation /24s, split into /26s when more are needed.
pub fn subnet_cidrs(count: usize) -> Result<Vec<Ipv4Net>> {
    if count == 0 || count > MAX_SUBNETS {
        return Err(LabError::Other(format!("subnets must be 1..={MAX_SUBNETS}, got {count}")));
    }
    let ranges = NODE_RANGES.iter().map(|r| r.parse::<Ipv4Net>().expect("valid range"));
    if count <= NODE_RANGES.len() {
        return Ok(ranges.take(count).collect());
    }
    Ok(ranges.flat_map(|r| r.subnets(26).expect("/26 fits in /24")).take(count).collect())
}

/// Node `i` (0-based) is on subnet `i % subnets`, at host 10 + its position on that subnet.
pub fn node_address(i: usize, subnets: &[Ipv4Net]) -> Result<(usize, Ipv4Addr)> {
    let subnet = i % subnets.len();
    let position = (i / subnets.len()) as u32;
    let net = subnets[subnet];
    let ip = Ipv4Addr::from(u32::from(net.network()) + 10 + position);
    if !net.contains(&ip) || ip == net.broadcast() {
        return Err(LabError::Other(format!("too many nodes for subnet {net}")));
    }
    Ok((subnet, ip))
}

impl Lab {
    pub fn build(prefix: &str, spec: LabSpec) -> Result<Lab> {
        let cidrs = subnet_cidrs(spec.subnets)?;
        let dir = std::env::temp_dir().join(prefix);
        std::fs::create_dir_all(&dir).map_err(|e| LabError::Other(format!("create {}: {e}", dir.display())))?;
        let router = Netns::create(&format!("{prefix}-router"))?;
        router.sysctl("net.ipv4.ip_forward", "1")?;
        let subnets = cidrs
            .iter()
            .enumerate()
            .map(|(k, cidr)| add_segment(&router, &format!("s{k}"), *cidr))
            .collect::<Result<Vec<_>>>()?;
        let external_segment = add_segment(&router, "ext", EXTERNAL_RANGE.parse().expect("valid range"))?;
        let external_ip = host(&external_segment.cidr, 10);
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
        let mut hosts: Vec<(&Netns, Ipv4Addr, &Subnet)> =
            nodes.iter().map(|n| (&n.ns, n.ip, &subnets[n.subnet])).collect();
        hosts.push((&external.ns, external.ip, &external_segment));
        pin_neighbours(&router, &hosts, &dir)?;
        Ok(Lab { prefix: prefix.to_string(), dir, subnets, nodes, external, router })
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
    pub fn route_pod_cidrs_on_router(&self, routes: &[(Ipv4Net, Ipv4Addr)]) -> Result<()> {
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
        let rule = |from: &str, to: &str| format!("ip saddr {from} ip daddr {to} udp dport {port} drop");
        let [s0, s1] = NODE_RANGES;
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

fn host(net: &Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + n)
}

/// Makes every underlay neighbour entry permanent. The kernel's ARP table is one table for all
/// namespaces, and its dynamic entries are capped machine-wide (`gc_thresh3`, 1024 by default,
/// settable only from the machine's own namespace): with a few dozen nodes learning each other by
/// ARP, a new node could no longer resolve its gateway (its sends failed with ENOBUFS).
/// Permanent entries are exempt from the cap; on real machines every node has its own table.
fn pin_neighbours(router: &Netns, hosts: &[(&Netns, Ipv4Addr, &Subnet)], dir: &Path) -> Result<()> {
    let entry = |ip: Ipv4Addr, dev: &str| format!("neigh replace {ip} lladdr {} dev {dev} nud permanent\n", mac(ip));
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
/// in advance, so neighbour entries can be written without reading them back.
fn mac(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("02:77:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// A bridge in the router namespace with the subnet's first address: one L2 segment.
fn add_segment(router: &Netns, bridge: &str, cidr: Ipv4Net) -> Result<Subnet> {
    let gateway = host(&cidr, 1);
    router.ip(&["link", "add", bridge, "address", &mac(gateway), "type", "bridge"])?;
    router.ip(&["addr", "add", &format!("{gateway}/{}", cidr.prefix_len()), "dev", bridge])?;
    router.ip(&["link", "set", bridge, "up"])?;
    Ok(Subnet { cidr, gateway, bridge: bridge.to_string() })
}

/// A new namespace plugged into `segment` with address `ip` and a default route via the router.
fn attach_host(router: &Netns, name: &str, port: &str, segment: &Subnet, ip: Ipv4Addr, gro: bool) -> Result<Netns> {
    let ns = Netns::create(name)?;
    router.ip(&["link", "add", port, "type", "veth", "peer", "name", "eth0", "address", &mac(ip), "netns", name])?;
    router.ip(&["link", "set", port, "master", &segment.bridge, "up"])?;
    ns.ip(&["addr", "add", &format!("{ip}/{}", segment.cidr.prefix_len()), "dev", "eth0"])?;
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
        let s = subnet_cidrs(2).unwrap();
        assert_eq!(s[0].to_string(), "192.0.2.0/24");
        assert_eq!(s[1].to_string(), "198.51.100.0/24");
    }

    #[test]
    fn more_subnets_split_into_26s_and_stay_disjoint() {
        let s = subnet_cidrs(5).unwrap();
        assert_eq!(s.len(), 5);
        for (i, a) in s.iter().enumerate() {
            for b in &s[i + 1..] {
                assert!(!a.contains(b) && !b.contains(a));
            }
        }
        assert!(subnet_cidrs(0).is_err() && subnet_cidrs(9).is_err());
    }

    #[test]
    fn nodes_go_round_robin_over_subnets() {
        let s = subnet_cidrs(2).unwrap();
        assert_eq!(node_address(0, &s).unwrap(), (0, "192.0.2.10".parse().unwrap()));
        assert_eq!(node_address(1, &s).unwrap(), (1, "198.51.100.10".parse().unwrap()));
        assert_eq!(node_address(2, &s).unwrap(), (0, "192.0.2.11".parse().unwrap()));
    }
}
