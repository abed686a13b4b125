//! weft's nftables rules (flannel's iptables-mode set, plus a VXLAN ingress allow-list): what to
//! forward, what to masquerade, which VXLAN senders to accept, and the accepts weft must put into
//! other tables' forward chains whose policy drops (Docker's).

use std::fmt::Write;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::desired::{KUBE_PROXY_MASQ_MARK, LocalNode};
use crate::nft::table::plain_identifier;
use crate::nft::{BaseChain, Chain, Counter, ForeignChain, Listing, Rule, Set, Table};
use crate::underlay::Family;

pub const FAMILY: &str = "inet";
pub const TABLE: &str = "weft";
/// The IPv4 node IPs of the current peers: the only IPv4 senders of VXLAN this node accepts.
pub const VXLAN_PEERS: &str = "vxlan_peers";
/// The same for IPv6 underlays.
pub const VXLAN_PEERS6: &str = "vxlan_peers6";
/// nft's `priority raw`, `priority filter` and `priority srcnat`, as the listing reports them.
const PRIORITY_RAW: i64 = -300;
const PRIORITY_FILTER: i64 = 0;
const PRIORITY_SRCNAT: i64 = 100;

/// Multicast destinations of a family: never masqueraded (they stay on the link).
fn multicast(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "224.0.0.0/4",
        Family::Ipv6 => "ff00::/8",
    }
}

/// The allow-list set of one underlay family.
pub fn peer_set(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => VXLAN_PEERS,
        Family::Ipv6 => VXLAN_PEERS6,
    }
}

/// The whole `inet weft` table for this node; `peers` are the node IPs allowed to send VXLAN.
/// One allow-list (set and drop rule) per underlay family the node has: a peer's address of a
/// family this node has no tunnel of has nothing to be let in to.
pub fn weft_table(local: &LocalNode, peers: impl IntoIterator<Item = IpAddr>) -> Table {
    let peers: Vec<IpAddr> = peers.into_iter().collect();
    let families: Vec<Family> = local.node_ips().families().collect();
    let sets = families
        .iter()
        .map(|&family| Set {
            name: peer_set(family),
            family,
            elements: peers.iter().copied().filter(|ip| Family::of(*ip) == family).collect(),
        })
        .collect();
    Table {
        family: FAMILY,
        name: TABLE,
        sets,
        chains: vec![forward_chain(&local.cluster_cidrs), postrouting_chain(local), vxlan_ingress_chain(local)],
    }
}

/// VXLAN has no authentication: any host that can reach the node's VXLAN port could inject
/// frames into vxlan0 and so reach pods with forged sources. Only peers may send.
///
/// Prerouting at raw priority rather than input: a drop in any base chain is final whatever
/// other chains accept, so the hook is chosen for cost and scope. At raw priority the packet is
/// already reassembled (defrag runs at -400) but not yet tracked (conntrack at -200), so a flood
/// of forged datagrams fills no conntrack table; `ip daddr <node IP>` limits the rule to what the
/// vxlan0 socket (bound to the node IP) would receive, leaving VXLAN routed through this host
/// alone. One rule per underlay family: an `accept` for peers would end only this chain, so the
/// negated set match says the same with one lookup per packet.
fn vxlan_ingress_chain(local: &LocalNode) -> Chain {
    Chain { name: "vxlan_ingress", base: base("filter", "prerouting", PRIORITY_RAW), rules: vxlan_drops(local) }
}

fn vxlan_drops(local: &LocalNode) -> Vec<Rule> {
    let port = local.vxlan_port;
    let drop = |ip: IpAddr| {
        let family = Family::of(ip);
        let (proto, set) = (family.nft_proto(), peer_set(family));
        Rule::new(format!("{proto} daddr {ip} udp dport {port} {proto} saddr != @{set} counter drop"))
    };
    local.node_ips().iter().map(drop).collect()
}

/// What the VXLAN drop rules have counted together, when the table in `listing` has the rules
/// for `local`. The count restarts from zero whenever the table is rewritten.
pub fn vxlan_dropped(listing: &Listing, local: &LocalNode) -> Option<Counter> {
    let counters: Vec<Counter> =
        vxlan_drops(local).iter().filter_map(|r| listing.counters.get(&r.comment).copied()).collect();
    (!counters.is_empty()).then(|| Counter {
        packets: counters.iter().map(|c| c.packets).sum(),
        bytes: counters.iter().map(|c| c.bytes).sum(),
    })
}

/// Forwarding to and from pods is allowed whatever else the host's firewall says in weft's
/// table (an accept here cannot override a drop in another table: see [`foreign_changes`]).
fn forward_chain(clusters: &[IpNet]) -> Chain {
    Chain { name: "forward", base: base("filter", "forward", PRIORITY_FILTER), rules: cluster_accepts(clusters) }
}

/// Two accepts per cluster CIDR (from and to it, with its family's selector), for weft's
/// forward chain and for foreign forward chains that drop.
pub fn cluster_accepts(clusters: &[IpNet]) -> Vec<Rule> {
    let accepts = |cluster: &IpNet| {
        let p = Family::of_net(cluster).nft_proto();
        [Rule::new(format!("{p} saddr {cluster} accept")), Rule::new(format!("{p} daddr {cluster} accept"))]
    };
    clusters.iter().flat_map(accepts).collect()
}

/// Source NAT, first match wins: never masquerade what kube-proxy marked (it masquerades that
/// itself), keep pod addresses between pods and toward local pods, masquerade pods leaving the
/// cluster, and masquerade anything outside the cluster reaching a remote pod through this
/// node, so the reply comes back here. The same rules per cluster family, each with its
/// family's selector (`ip`, `ip6`); masquerade takes the outgoing interface's address of the
/// packet's family, so a family the node has no address of on that way out is dropped there.
fn postrouting_chain(local: &LocalNode) -> Chain {
    let mark = KUBE_PROXY_MASQ_MARK;
    let mut rules = vec![Rule::new(format!("meta mark & {mark:#x} == {mark:#x} return"))];
    for cluster in &local.cluster_cidrs {
        let family = Family::of_net(cluster);
        let (p, mcast) = (family.nft_proto(), multicast(family));
        if let Some(pods) = local.pod_cidr(family) {
            rules.push(Rule::new(format!("{p} saddr {pods} {p} daddr {cluster} return")));
            rules.push(Rule::new(format!("{p} saddr {cluster} {p} daddr {pods} return")));
            rules.push(Rule::new(format!("{p} saddr != {cluster} {p} daddr {pods} return")));
        }
        rules.push(Rule::new(format!("{p} saddr {cluster} {p} daddr != {mcast} masquerade fully-random")));
        rules.push(Rule::new(format!("{p} saddr != {cluster} {p} daddr {cluster} masquerade fully-random")));
    }
    Chain { name: "postrouting", base: base("nat", "postrouting", PRIORITY_SRCNAT), rules }
}

fn base(kind: &str, hook: &str, priority: i64) -> BaseChain {
    BaseChain { kind: kind.into(), hook: hook.into(), priority, policy: "accept".into() }
}

/// One nft batch for other tables' chains: weft's accepts for `clusters` inserted at the top of
/// each forward chain whose policy drops (when missing), and weft's rules removed (by handle) wherever they
/// are no longer wanted. Foreign rules and policies are never touched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForeignChanges {
    pub script: String,
    pub inserted: usize,
    pub removed: usize,
    pub kept: usize,
    /// Chains nft cannot address by name (not a plain identifier).
    pub unaddressable: Vec<String>,
}

pub fn foreign_changes(foreign: &[ForeignChain], clusters: &[IpNet]) -> ForeignChanges {
    let mut out = ForeignChanges::default();
    for chain in foreign {
        let id = format!("{} {} {}", chain.family, chain.table, chain.name);
        if !(plain_identifier(&chain.table) && plain_identifier(&chain.name)) {
            out.unaddressable.push(id);
            continue;
        }
        // A chain of the `ip` or `ip6` family takes rules of its own family only.
        let fits = |net: &&IpNet| match chain.family.as_str() {
            "ip" => net.addr().is_ipv4(),
            "ip6" => net.addr().is_ipv6(),
            _ => true,
        };
        let ours: Vec<IpNet> = clusters.iter().filter(fits).copied().collect();
        let wanted: Vec<Rule> = if chain.forward_drop { cluster_accepts(&ours) } else { Vec::new() };
        let mut present = Vec::new();
        for (handle, comment) in &chain.weft_rules {
            if wanted.iter().any(|r| &r.comment == comment) && !present.contains(&comment) {
                present.push(comment);
                out.kept += 1;
            } else {
                let _ = writeln!(out.script, "delete rule {id} handle {handle}");
                out.removed += 1;
            }
        }
        // Inserting in reverse leaves them at the top in their own order.
        for rule in wanted.iter().rev().filter(|r| !present.contains(&&r.comment)) {
            let _ = writeln!(out.script, "insert rule {id} {}", rule.render());
            out.inserted += 1;
        }
    }
    out
}

/// The batch that removes everything weft has in nftables: its table and its rules in other
/// tables' chains. `None` when there is nothing; else the script and the number of objects.
pub fn cleanup_script(listing: &Listing) -> Option<(String, usize)> {
    let mut removal = foreign_changes(
        &listing.foreign.iter().map(|c| ForeignChain { forward_drop: false, ..c.clone() }).collect::<Vec<_>>(),
        &[],
    );
    if listing.table.is_some() {
        let _ = writeln!(removal.script, "delete table {FAMILY} {TABLE}");
        removal.removed += 1;
    }
    (removal.removed > 0).then_some((removal.script, removal.removed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::tests::local;

    fn chain(forward_drop: bool, weft_rules: Vec<(u64, String)>) -> ForeignChain {
        ForeignChain { family: "ip".into(), table: "filter".into(), name: "FORWARD".into(), forward_drop, weft_rules }
    }

    #[test]
    fn the_table_holds_flannels_rules_in_order() {
        let text = weft_table(&local(), []).render_replace();
        let expected = [
            "set vxlan_peers {\n\t\ttype ipv4_addr\n\t}",
            "type filter hook forward priority 0; policy accept;",
            "ip saddr 10.244.0.0/16 accept comment",
            "ip daddr 10.244.0.0/16 accept comment",
            "type nat hook postrouting priority 100; policy accept;",
            "meta mark & 0x4000 == 0x4000 return comment",
            "ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return comment",
            "ip saddr 10.244.0.0/16 ip daddr 10.244.1.0/24 return comment",
            "ip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 return comment",
            "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random comment",
            "ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random comment",
            "type filter hook prerouting priority -300; policy accept;",
            "ip daddr 192.0.2.10 udp dport 8472 ip saddr != @vxlan_peers counter drop comment",
        ];
        let mut at = 0;
        for line in expected {
            let found = text[at..].find(line).unwrap_or_else(|| panic!("{line} in\n{text}"));
            at += found + line.len();
        }
        assert!(text.starts_with("add table inet weft\ndelete table inet weft\n"));
    }

    #[test]
    fn vxlan_senders_are_the_peer_ips_and_the_drop_is_counted() {
        let l = local();
        let peers: [IpAddr; 2] = ["198.51.100.10".parse().unwrap(), "192.0.2.11".parse().unwrap()];
        let table = weft_table(&l, peers);
        let text = table.render_replace();
        assert!(text.contains("elements = { 192.0.2.11, 198.51.100.10 }"), "{text}");
        // Membership is not shape: a peer change is an element update, not a table rewrite.
        assert_eq!(table.shape(), weft_table(&l, []).shape());

        let drop = &table.chains[2].rules[0];
        let mut listing = Listing::default();
        assert_eq!(vxlan_dropped(&listing, &l), None);
        listing.counters.insert(drop.comment.clone(), Counter { packets: 2, bytes: 100 });
        assert_eq!(vxlan_dropped(&listing, &l), Some(Counter { packets: 2, bytes: 100 }));
        // Another port is another rule: the old rule's count is not this one's.
        let mut moved = l.clone();
        moved.vxlan_port = 4789;
        assert_eq!(vxlan_dropped(&listing, &moved), None);
    }

    #[test]
    fn each_underlay_family_has_its_own_allow_list() {
        use crate::desired::UnderlayAddr;
        let mut l = local();
        l.underlays.push(UnderlayAddr { ip: "2001:db8:1::10".parse().unwrap(), iface: "eth0".into() });
        let peers: [IpAddr; 3] =
            ["198.51.100.10".parse().unwrap(), "2001:db8:2::20".parse().unwrap(), "2001:db8:1::30".parse().unwrap()];
        let table = weft_table(&l, peers);
        let text = table.render_replace();
        for line in [
            "set vxlan_peers {\n\t\ttype ipv4_addr\n\t\telements = { 198.51.100.10 }\n\t}",
            "set vxlan_peers6 {\n\t\ttype ipv6_addr\n\t\telements = { 2001:db8:1::30, 2001:db8:2::20 }\n\t}",
            "ip daddr 192.0.2.10 udp dport 8472 ip saddr != @vxlan_peers counter drop comment",
            "ip6 daddr 2001:db8:1::10 udp dport 8472 ip6 saddr != @vxlan_peers6 counter drop comment",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        // An IPv6-only node has no IPv4 allow-list, and IPv4 peers are not in its set.
        l.underlays.remove(0);
        let text = weft_table(&l, peers).render_replace();
        assert!(!text.contains("vxlan_peers {") && !text.contains("198.51.100.10"), "{text}");
        // Both rules' drops are counted together.
        let rules = &weft_table(&l, peers).chains[2].rules;
        let mut listing = Listing::default();
        listing.counters.insert(rules[0].comment.clone(), Counter { packets: 2, bytes: 200 });
        assert_eq!(vxlan_dropped(&listing, &l), Some(Counter { packets: 2, bytes: 200 }));
    }

    #[test]
    fn each_cluster_family_is_forwarded_and_masqueraded_with_its_own_selector() {
        use crate::validate::tests::dual_local;
        let text = weft_table(&dual_local(), []).render_replace();
        let expected = [
            "ip saddr 10.244.0.0/16 accept comment",
            "ip daddr 10.244.0.0/16 accept comment",
            "ip6 saddr fd00:10:244::/56 accept comment",
            "ip6 daddr fd00:10:244::/56 accept comment",
            "meta mark & 0x4000 == 0x4000 return comment",
            "ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return comment",
            "ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random comment",
            "ip6 saddr fd00:10:244:1::/64 ip6 daddr fd00:10:244::/56 return comment",
            "ip6 saddr fd00:10:244::/56 ip6 daddr fd00:10:244:1::/64 return comment",
            "ip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244:1::/64 return comment",
            "ip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade fully-random comment",
            "ip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244::/56 masquerade fully-random comment",
        ];
        let mut at = 0;
        for line in expected {
            let found = text[at..].find(line).unwrap_or_else(|| panic!("{line} in\n{text}"));
            at += found + line.len();
        }
        // An IPv6-only node: no IPv4 rule at all.
        let mut v6 = dual_local();
        v6.pod_cidrs.remove(0);
        v6.cluster_cidrs.remove(0);
        let text = weft_table(&v6, []).render_replace();
        assert!(text.contains("ip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade"), "{text}");
        assert!(!text.contains("10.244."), "{text}");
    }

    #[test]
    fn accepts_go_on_top_of_dropping_chains_once() {
        let clusters: [IpNet; 1] = ["10.244.0.0/16".parse().unwrap()];
        let accepts = cluster_accepts(&clusters);
        let c = foreign_changes(&[chain(true, vec![])], &clusters);
        assert_eq!((c.inserted, c.removed, c.kept), (2, 0, 0));
        let lines: Vec<_> = c.script.lines().collect();
        assert!(lines[0].starts_with("insert rule ip filter FORWARD ip daddr 10.244.0.0/16 accept comment \"weft:"));
        assert!(lines[1].starts_with("insert rule ip filter FORWARD ip saddr 10.244.0.0/16 accept comment \"weft:"));

        let present = vec![(4, accepts[0].comment.clone()), (5, accepts[1].comment.clone())];
        let c = foreign_changes(&[chain(true, present)], &clusters);
        assert_eq!(c, ForeignChanges { kept: 2, ..Default::default() });
    }

    #[test]
    fn a_foreign_chain_gets_the_accepts_of_the_families_it_can_hold() {
        let clusters: [IpNet; 2] = ["10.244.0.0/16".parse().unwrap(), "fd00:10:244::/56".parse().unwrap()];
        let of = |family: &str| {
            let c = foreign_changes(&[ForeignChain { family: family.into(), ..chain(true, vec![]) }], &clusters);
            c.script.lines().map(|l| l.split(' ').nth(5).unwrap().to_string()).collect::<Vec<_>>()
        };
        assert_eq!(of("ip"), ["ip", "ip"]);
        assert_eq!(of("ip6"), ["ip6", "ip6"]);
        assert_eq!(of("inet"), ["ip6", "ip6", "ip", "ip"]);
    }

    #[test]
    fn stale_or_duplicate_weft_rules_are_deleted_by_handle() {
        let clusters: [IpNet; 1] = ["10.244.0.0/16".parse().unwrap()];
        let accepts = cluster_accepts(&clusters);
        let rules =
            vec![(4, accepts[0].comment.clone()), (5, accepts[0].comment.clone()), (6, "weft:deadbeef".to_string())];
        let c = foreign_changes(&[chain(true, rules)], &clusters);
        assert_eq!((c.inserted, c.removed, c.kept), (1, 2, 1));
        assert!(c.script.contains("delete rule ip filter FORWARD handle 5\n"));
        assert!(c.script.contains("delete rule ip filter FORWARD handle 6\n"));
        // A chain that stopped dropping keeps nothing of weft.
        let c = foreign_changes(&[chain(false, vec![(4, accepts[0].comment.clone())])], &clusters);
        assert_eq!((c.inserted, c.removed), (0, 1));
    }

    #[test]
    fn chains_nft_cannot_name_are_reported() {
        let mut odd = chain(true, vec![]);
        odd.name = "has space".into();
        let c = foreign_changes(&[odd], &["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(c.unaddressable, ["ip filter has space"]);
        assert!(c.script.is_empty());
    }

    #[test]
    fn cleanup_removes_the_table_and_weft_rules_only() {
        let listing = Listing {
            table: Some(Default::default()),
            foreign: vec![chain(true, vec![(4, "weft:00000000".into())])],
            ..Listing::default()
        };
        let (script, n) = cleanup_script(&listing).unwrap();
        assert_eq!(n, 2);
        assert_eq!(script, "delete rule ip filter FORWARD handle 4\ndelete table inet weft\n");
        assert_eq!(cleanup_script(&Listing::default()), None);
    }
}
