//! Findings from a read-only look at this node's kernel: the overlay's own snapshot (links,
//! addresses, the nftables listing, the sysctls weft sets), checked against what weft programs.

use std::net::IpAddr;

use weft_overlay::desired::{DEFAULT_VXLAN_DEVICE, DEFAULT_VXLAN_PORT};
use weft_overlay::objects::{Link, VxlanAttrs};
use weft_overlay::rules::DEFAULT_BRIDGE;
use weft_overlay::snapshot::{Kernel, RP_FILTER_LOOSE};
use weft_overlay::sysctl;
use weft_overlay::underlay::Family;

use super::{Finding, VxlanPort, or_passed};

/// What the kernel should hold, from diagnose's flags and, when it answered, the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub vni: u32,
    pub vxlan_port: u16,
    /// The node's underlay address, as the agent reports it.
    pub node_ip: Option<IpAddr>,
    /// The pod MTU, as the agent reports it.
    pub pod_mtu: Option<u32>,
}

/// The kernel could not be read at all.
pub fn unreadable(error: &str) -> Finding {
    Finding::error(
        "kernel",
        format!("cannot read this node's kernel state: {error}"),
        "run diagnose as root, in the node's network namespace",
    )
}

/// The port a blocked tunnel is reported with: vxlan0's own when it exists, else the flag's.
pub fn vxlan_port(kernel: Option<&Kernel>, flag: u16) -> VxlanPort {
    match kernel.and_then(vxlan_attrs) {
        Some(attrs) => VxlanPort { port: attrs.port, from: "vxlan0's port" },
        None if flag == DEFAULT_VXLAN_PORT => {
            VxlanPort { port: flag, from: "the default VXLAN port, as vxlan0 could not be read" }
        }
        None => VxlanPort { port: flag, from: "the --vxlan-port given, as vxlan0 could not be read" },
    }
}

/// Every kernel check. `rp_filter_all` is `net.ipv4.conf.all.rp_filter`: the kernel filters by
/// the higher of it and the device's own value.
pub fn kernel_findings(kernel: &Kernel, rp_filter_all: Option<&str>, expected: &Expected) -> Vec<Finding> {
    let mut out: Vec<Finding> = pod_families(kernel).into_iter().map(|f| ip_forward(kernel, f)).collect();
    out.extend(rp_filter(kernel, rp_filter_all));
    out.extend(forward_drops(kernel));
    out.extend(vxlan_device(kernel, expected));
    out.push(pod_mtu(kernel, expected));
    out
}

fn vxlan_link(kernel: &Kernel) -> Option<&Link> {
    kernel.link(DEFAULT_VXLAN_DEVICE)
}

fn vxlan_attrs(kernel: &Kernel) -> Option<&VxlanAttrs> {
    vxlan_link(kernel)?.vxlan.as_ref()
}

/// The families this node has pods of, as the gateways on cni0 show them (IPv4 when there is
/// no bridge yet, as before dual-stack).
fn pod_families(kernel: &Kernel) -> Vec<Family> {
    let bridge = kernel.link(DEFAULT_BRIDGE).map(|l| l.index);
    let mut families: Vec<Family> = kernel
        .addresses
        .iter()
        .filter(|(i, a)| Some(*i) == bridge && !matches!(a.addr(), IpAddr::V6(v6) if v6.is_unicast_link_local()))
        .map(|(_, a)| Family::of_net(a))
        .collect();
    families.sort();
    families.dedup();
    if families.is_empty() { vec![Family::Ipv4] } else { families }
}

fn ip_forward(kernel: &Kernel, family: Family) -> Finding {
    let key = sysctl::forwarding_key(family).replace('/', ".");
    match kernel.forwarding.get(&family).map(String::as_str) {
        Some("1") => Finding::passed("ip-forward", format!("{family} forwarding is on ({key} = 1)")),
        Some(value) => Finding::error(
            "ip-forward",
            format!("{family} forwarding is off ({key} = {value}): this node forwards no {family} pod traffic"),
            format!(
                "sysctl -w {key}=1 (the agent sets it on its next reconcile, but something on this host turned it \
                 off: find what, e.g. a file in /etc/sysctl.d)"
            ),
        ),
        None => Finding::warning(
            "ip-forward",
            format!("cannot read {key}"),
            "run diagnose where /proc/sys is mounted (the node's network namespace)",
        ),
    }
}

/// Strict reverse-path filtering (1) on vxlan0 drops pods' packets that arrive through the tunnel
/// from a peer this node routes otherwise; the agent sets loose (2). Nothing to say without vxlan0.
fn rp_filter(kernel: &Kernel, all: Option<&str>) -> Option<Finding> {
    let device = kernel.vxlan_rp_filter.get(&Family::Ipv4)?.as_str();
    let number = |v: &str| v.parse::<u8>().unwrap_or(0);
    let effective = number(device).max(all.map_or(0, number));
    if effective != 1 {
        return Some(Finding::passed("rp-filter", format!("rp_filter on vxlan0 is not strict ({effective})")));
    }
    let (message, fix) = if number(device) == 1 {
        (
            "rp_filter on vxlan0 is strict (net.ipv4.conf.vxlan0.rp_filter = 1): packets from peers can be dropped"
                .to_string(),
            format!(
                "sysctl -w net.ipv4.conf.vxlan0.rp_filter={RP_FILTER_LOOSE} (the agent sets it on its next reconcile; \
                 something on this host changed it)"
            ),
        )
    } else {
        (
            format!(
                "rp_filter on vxlan0 is strict: net.ipv4.conf.all.rp_filter = 1 overrides vxlan0's {device} (the \
                 kernel uses the higher of the two)"
            ),
            format!("sysctl -w net.ipv4.conf.all.rp_filter={RP_FILTER_LOOSE} (or 0)"),
        )
    };
    Some(Finding::error("rp-filter", message, fix))
}

/// nftables forward chains with policy drop (Docker's) that lack weft's accepts: they drop every
/// packet forwarded to or from pods. The overlay's listing finds them the way the agent does.
fn forward_drops(kernel: &Kernel) -> Vec<Finding> {
    let listing = match &kernel.nft {
        Ok(listing) => listing,
        Err(e) => {
            return vec![Finding::warning(
                "forward-drop",
                format!("cannot read nftables: {e}"),
                "run diagnose as root (it needs CAP_NET_ADMIN to list nftables)",
            )];
        }
    };
    let found = listing
        .foreign
        .iter()
        .filter(|c| c.forward_drop && c.weft_rules.is_empty())
        .map(|c| {
            let chain = format!("{} {} {}", c.family, c.table, c.name);
            Finding::error(
                "forward-drop",
                format!(
                    "nftables chain {chain} drops forwarded packets by policy and has no weft accept: pod \
                         traffic through this node is dropped"
                ),
                format!(
                    "the agent inserts its accepts on its next reconcile (restart it to do it now); if they do not \
                     appear (nft -a list chain {chain}), see docs/troubleshooting.md, \"Docker's FORWARD policy drop\""
                ),
            )
        })
        .collect();
    or_passed(
        found,
        "forward-drop",
        "no nftables forward chain drops pod traffic (iptables-legacy rules are not visible)",
    )
}

/// The VXLAN device of the node's underlay family (vxlan0, or vxlan-v6 on an IPv6-only node)
/// exists, up, with the VNI and port of every node and learning off.
fn vxlan_device(kernel: &Kernel, expected: &Expected) -> Vec<Finding> {
    let check = "vxlan0";
    let family = expected.node_ip.map_or(Family::Ipv4, Family::of);
    let name = family.vxlan_device();
    let Some(link) = kernel.link(name) else {
        return vec![Finding::error(
            check,
            format!("{name} does not exist: this node carries no overlay traffic over {family}"),
            "start weft-agent and wait until it is ready (weft-agent status says why it is not)",
        )];
    };
    let Some(attrs) = link.vxlan.as_ref() else {
        return vec![Finding::error(
            check,
            format!("{name} is not a VXLAN device (kind {})", link.kind.as_deref().unwrap_or("unknown")),
            format!("delete it (ip link del {name}): the agent creates the right one on its next reconcile"),
        )];
    };
    let settings = format!(
        "set the same --vni and --vxlan-port on every node: the agent recreates {name} with them (if the agent runs \
         with other values than diagnose's defaults, pass them to diagnose too)"
    );
    let mut found = Vec::new();
    if attrs.vni != expected.vni {
        let message = format!("{name} has VNI {}, expected {}", attrs.vni, expected.vni);
        found.push(Finding::error(check, message, settings.clone()));
    }
    if attrs.port != expected.vxlan_port {
        let message = format!("{name} uses UDP port {}, expected {}", attrs.port, expected.vxlan_port);
        found.push(Finding::error(check, message, settings));
    }
    if attrs.learning {
        found.push(Finding::error(
            check,
            format!(
                "{name} learns addresses from received packets (learning on): forged frames can redirect pod traffic"
            ),
            format!(
                "the agent turns learning off on its next reconcile; if it comes back, something else configures {name}"
            ),
        ));
    }
    if !link.up {
        found.push(Finding::error(
            check,
            format!("{name} is down"),
            format!("the agent sets it up on its next reconcile; if it stays down, something else configures {name}"),
        ));
    }
    let summary = format!("{name} is up with VNI {}, UDP port {}, learning off", attrs.vni, attrs.port);
    or_passed(found, check, summary)
}

/// The pod MTU must leave room for VXLAN's headers on the underlay interface.
fn pod_mtu(kernel: &Kernel, expected: &Expected) -> Finding {
    let check = "mtu";
    let vxlan = vxlan_link(kernel);
    let pod_mtu = expected.pod_mtu.or(vxlan.map(|l| l.mtu));
    let node_ip = expected.node_ip.or(vxlan_attrs(kernel).and_then(|a| a.local));
    let (Some(pod_mtu), Some(underlay)) = (pod_mtu, node_ip.and_then(|ip| link_holding(kernel, ip))) else {
        return Finding::warning(
            check,
            "cannot compare the pod MTU with the underlay's: neither the agent nor vxlan0 names them",
            "start weft-agent, then run diagnose again",
        );
    };
    let family = node_ip.map_or(Family::Ipv4, Family::of);
    let overhead = family.vxlan_overhead();
    let room = underlay.mtu.saturating_sub(overhead);
    if pod_mtu <= room {
        return Finding::passed(
            check,
            format!("the pod MTU {pod_mtu} fits {} (MTU {} − {overhead})", underlay.name, underlay.mtu),
        );
    }
    Finding::error(
        check,
        format!(
            "the pod MTU {pod_mtu} is larger than {}'s MTU {} − {overhead} (VXLAN's headers over {family}): \
             full-size pod packets cannot leave this node",
            underlay.name, underlay.mtu
        ),
        format!(
            "set --mtu to at most {room} on every node (or leave it out: the agent then uses the underlay MTU − \
             {overhead})"
        ),
    )
}

fn link_holding(kernel: &Kernel, ip: IpAddr) -> Option<&Link> {
    let (index, _) = kernel.addresses.iter().find(|(_, net)| net.addr() == ip)?;
    kernel.links.iter().find(|l| l.index == *index)
}

#[cfg(test)]
mod tests {
    use weft_overlay::nft::{ForeignChain, Listing};

    use super::*;
    use crate::detect::tests::link;
    use crate::diagnose::Severity;

    fn vxlan0() -> Link {
        let attrs = VxlanAttrs {
            vni: 1,
            port: 8472,
            local: Some("192.0.2.10".parse().unwrap()),
            underlay: Some(2),
            learning: false,
            udp_csum: false,
        };
        Link { kind: Some("vxlan".into()), vxlan: Some(attrs), ..link(5, "vxlan0", 1450) }
    }

    /// A node as the agent leaves it: eth0 holding the node IP, vxlan0 on it.
    fn healthy() -> Kernel {
        Kernel {
            links: vec![link(1, "lo", 65536), link(2, "eth0", 1500), vxlan0()],
            addresses: vec![(2, "192.0.2.10/24".parse().unwrap()), (5, "10.244.1.0/32".parse().unwrap())],
            routes: Vec::new(),
            neighbours: Vec::new(),
            fdb: Vec::new(),
            nft: Ok(Listing::default()),
            forwarding: [(Family::Ipv4, "1".to_string())].into(),
            vxlan_rp_filter: [(Family::Ipv4, RP_FILTER_LOOSE.into())].into(),
        }
    }

    fn expected() -> Expected {
        Expected { vni: 1, vxlan_port: 8472, node_ip: Some("192.0.2.10".parse().unwrap()), pod_mtu: Some(1450) }
    }

    fn problems(k: &Kernel, all: Option<&str>, e: &Expected) -> Vec<Finding> {
        kernel_findings(k, all, e).into_iter().filter(|f| !f.ok).collect()
    }

    fn only(k: &Kernel, e: &Expected) -> Finding {
        let mut found = problems(k, Some("0"), e);
        assert_eq!(found.len(), 1, "{found:?}");
        found.remove(0)
    }

    fn vxlan_mut(k: &mut Kernel) -> &mut Link {
        k.links.iter_mut().find(|l| l.name == "vxlan0").unwrap()
    }

    #[test]
    fn a_node_as_the_agent_leaves_it_passes_every_check() {
        let findings = kernel_findings(&healthy(), Some("0"), &expected());
        assert!(findings.iter().all(|f| f.ok), "{findings:?}");
        let checks: Vec<&str> = findings.iter().map(|f| f.check).collect();
        assert_eq!(checks, ["ip-forward", "rp-filter", "forward-drop", "vxlan0", "mtu"]);
    }

    #[test]
    fn ip_forwarding_off_is_an_error_with_the_sysctl_to_set() {
        let mut k = healthy();
        k.forwarding.insert(Family::Ipv4, "0".into());
        let f = only(&k, &expected());
        assert_eq!((f.check, f.severity), ("ip-forward", Severity::Error));
        assert_eq!(
            f.message,
            "IPv4 forwarding is off (net.ipv4.ip_forward = 0): this node forwards no IPv4 pod traffic"
        );
        assert!(f.fix.unwrap().starts_with("sysctl -w net.ipv4.ip_forward=1"));
    }

    #[test]
    fn forwarding_is_checked_for_each_family_the_bridge_has_a_gateway_of() {
        let mut k = healthy();
        let cni0 = Link { index: 9, name: DEFAULT_BRIDGE.into(), ..k.links[0].clone() };
        k.links.push(cni0);
        k.addresses.extend([(9, "fd00:10:244:1::1/64".parse().unwrap()), (9, "fe80::1/64".parse().unwrap())]);
        // An IPv6-only node: IPv4 forwarding off is nobody's concern, IPv6 forwarding off is.
        k.forwarding = [(Family::Ipv4, "0".into()), (Family::Ipv6, "0".into())].into();
        let f = only(&k, &expected());
        assert_eq!(
            f.message,
            "IPv6 forwarding is off (net.ipv6.conf.all.forwarding = 0): this node forwards no IPv6 pod traffic"
        );
        assert!(f.fix.unwrap().starts_with("sysctl -w net.ipv6.conf.all.forwarding=1"));
    }

    #[test]
    fn strict_rp_filter_on_vxlan0_is_found_also_when_all_overrides_it() {
        let mut k = healthy();
        k.vxlan_rp_filter = [(Family::Ipv4, "1".into())].into();
        let f = only(&k, &expected());
        assert_eq!(f.check, "rp-filter");
        assert!(f.fix.unwrap().starts_with("sysctl -w net.ipv4.conf.vxlan0.rp_filter=2"));
        k.vxlan_rp_filter = [(Family::Ipv4, "0".into())].into();
        let f = problems(&k, Some("1"), &expected()).remove(0);
        assert!(f.message.contains("net.ipv4.conf.all.rp_filter = 1 overrides vxlan0's 0"), "{}", f.message);
        assert!(f.fix.unwrap().starts_with("sysctl -w net.ipv4.conf.all.rp_filter=2"));
        // The higher value counts: vxlan0's loose 2 wins over a strict `all`.
        assert!(problems(&healthy(), Some("1"), &expected()).is_empty());
    }

    #[test]
    fn a_forward_chain_dropping_by_policy_without_weft_accepts_is_found() {
        let chain = |weft_rules: Vec<(u64, String)>| ForeignChain {
            family: "ip".into(),
            table: "filter".into(),
            name: "FORWARD".into(),
            forward_drop: true,
            weft_rules,
        };
        let mut k = healthy();
        k.nft = Ok(Listing { foreign: vec![chain(Vec::new())], ..Listing::default() });
        let f = only(&k, &expected());
        assert_eq!(f.check, "forward-drop");
        assert!(f.message.starts_with("nftables chain ip filter FORWARD drops forwarded packets by policy"));
        assert!(f.fix.unwrap().contains("Docker's FORWARD policy drop"));
        k.nft = Ok(Listing {
            foreign: vec![chain(vec![(4, "weft:1".into()), (5, "weft:2".into())])],
            ..Listing::default()
        });
        assert!(problems(&k, Some("0"), &expected()).is_empty());
        k.nft = Err("permission denied".into());
        let f = only(&k, &expected());
        assert_eq!((f.check, f.severity), ("forward-drop", Severity::Warning));
    }

    #[test]
    fn vxlan0_missing_or_set_up_otherwise_is_an_error() {
        let mut k = healthy();
        k.links.retain(|l| l.name != "vxlan0");
        k.vxlan_rp_filter.clear();
        let found = problems(&k, Some("0"), &expected());
        assert_eq!(found.iter().map(|f| f.check).collect::<Vec<_>>(), ["vxlan0"], "{found:?}");
        assert_eq!(found[0].message, "vxlan0 does not exist: this node carries no overlay traffic over IPv4");
        // An IPv6-only node's device is vxlan-v6.
        let v6 = Expected { node_ip: Some("2001:db8:1::10".parse().unwrap()), ..expected() };
        let found: Vec<Finding> =
            kernel_findings(&k, Some("0"), &v6).into_iter().filter(|f| f.check == "vxlan0").collect();
        assert_eq!(found[0].message, "vxlan-v6 does not exist: this node carries no overlay traffic over IPv6");

        let mut k = healthy();
        let attrs = vxlan_mut(&mut k).vxlan.as_mut().unwrap();
        (attrs.vni, attrs.port, attrs.learning) = (2, 4789, true);
        let messages: Vec<String> = problems(&k, Some("0"), &expected()).into_iter().map(|f| f.message).collect();
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert_eq!(messages[0], "vxlan0 has VNI 2, expected 1");
        assert_eq!(messages[1], "vxlan0 uses UDP port 4789, expected 8472");
        assert!(messages[2].contains("learning on"));

        let mut k = healthy();
        vxlan_mut(&mut k).up = false;
        assert_eq!(only(&k, &expected()).message, "vxlan0 is down");
    }

    #[test]
    fn a_pod_mtu_without_room_for_vxlan_on_the_underlay_is_an_error() {
        let mut k = healthy();
        k.links[1].mtu = 1400;
        let f = only(&k, &expected());
        assert_eq!(f.check, "mtu");
        assert_eq!(
            f.message,
            "the pod MTU 1450 is larger than eth0's MTU 1400 − 50 (VXLAN's headers over IPv4): full-size pod packets \
             cannot leave this node"
        );
        assert!(f.fix.unwrap().starts_with("set --mtu to at most 1350 on every node"));
        // Without the agent, vxlan0 names the node IP and the pod MTU.
        let alone = Expected { node_ip: None, pod_mtu: None, ..expected() };
        assert_eq!(only(&k, &alone).check, "mtu");
        k.links.retain(|l| l.name != "vxlan0");
        k.vxlan_rp_filter.clear();
        let unknown = problems(&k, Some("0"), &alone).into_iter().find(|f| f.check == "mtu").unwrap();
        assert_eq!(unknown.severity, Severity::Warning);
    }

    #[test]
    fn the_reported_vxlan_port_is_vxlan0s_else_the_flags() {
        let mut k = healthy();
        vxlan_mut(&mut k).vxlan.as_mut().unwrap().port = 4789;
        assert_eq!(vxlan_port(Some(&k), 8472), VxlanPort { port: 4789, from: "vxlan0's port" });
        assert_eq!(vxlan_port(None, 8472).port, 8472);
        assert!(vxlan_port(None, 8472).from.starts_with("the default VXLAN port"));
        assert!(vxlan_port(None, 9000).from.starts_with("the --vxlan-port given"));
    }
}
