//! `weft-lab demo`: build a multi-subnet lab, start real agents, attach pods with the real
//! plugin, and show — as checks that can fail — that pods reach each other across subnets with
//! their own addresses while traffic leaving the cluster is masqueraded.

use std::io::IsTerminal;
use std::time::Duration;

use std::net::SocketAddr;

use crate::cluster::{AgentOptions, Cluster, GOSSIP_PORT, programmed_peers};
use crate::cmd::{LabError, Result};
use crate::netns::Netns;
use crate::probe::{self, tcp_source_seen};
use crate::report::{Colour, Steps, paint, table};
use crate::topology::{Family, Lab, LabSpec};
use crate::wait;
use weft_overlay::desired::DEFAULT_VXLAN_PORT;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub nodes: usize,
    pub subnets: usize,
    pub pods_per_node: usize,
    pub cross_subnet: bool,
    /// The underlay's family.
    pub underlay: Family,
    /// The pods' families: one address of each per pod, the checks run per family.
    pub pod_families: Vec<Family>,
    /// Leave the lab running afterwards (`weft-lab down` removes it).
    pub keep: bool,
}

/// Runs the demo; `Ok(true)` only if every check passed.
pub fn run(opts: &DemoOptions) -> Result<bool> {
    crate::require_root();
    let colour = std::io::stdout().is_terminal();
    println!(
        "{}",
        paint(
            colour,
            &format!(
                "weft demo: {} nodes on {} {} subnets, {} {} pods per node, encapsulation {}",
                opts.nodes,
                opts.subnets,
                opts.underlay,
                opts.pods_per_node,
                pod_families_name(&opts.pod_families),
                if opts.cross_subnet { "cross-subnet" } else { "always" }
            ),
            Colour::Bold
        )
    );
    let mut steps = Steps::new(4);
    let cluster = start(opts, &mut steps)?;
    steps.run("checking", || Ok::<_, LabError>(()))?;
    let mut checks = Checks { colour, passed: 0, failed: 0 };
    print_agents(&cluster, &mut checks);
    for &family in &opts.pod_families {
        print_ping_matrix(&cluster, family, &mut checks);
        print_source_addresses(&cluster, family, &mut checks);
    }
    print_intruders(&cluster, &mut checks);

    let ok = checks.failed == 0;
    let verdict = format!("{} checks passed, {} failed", checks.passed, checks.failed);
    println!("\n{}", paint(colour, &verdict, if ok { Colour::Green } else { Colour::Red }));
    if opts.keep {
        println!("the lab keeps running: `weft-lab status`, `weft-lab exec n1 -- ip route`, `weft-lab down`");
        cluster.persist();
    } else {
        drop(cluster);
        println!("lab removed");
    }
    Ok(ok)
}

/// Builds the lab, starts the agents, waits for convergence and attaches the pods (three steps).
pub fn start(opts: &DemoOptions, steps: &mut Steps) -> Result<Cluster> {
    let prefix = crate::unique_prefix();
    let spec = LabSpec { nodes: opts.nodes, subnets: opts.subnets, gro: true, underlay: opts.underlay };
    let lab = steps.run("building nodes, router and off-cluster host", || Lab::build(&prefix, spec))?;
    for (k, s) in lab.subnets.iter().enumerate() {
        let members: Vec<&str> = lab.nodes.iter().filter(|n| n.subnet == k).map(|n| n.name.as_str()).collect();
        println!("      subnet {} ({}): {}", s.cidr, s.bridge, members.join(", "));
    }
    println!("      off-cluster host {}; the router has no route to any pod address", lab.external.ip);
    let extra_args = cluster_cidr_args(&opts.pod_families);
    let options = AgentOptions { cross_subnet: opts.cross_subnet, extra_args, ..AgentOptions::default() };
    let mut cluster = steps.run("starting weft-agent on every node (one seed) and waiting for convergence", || {
        let cluster = Cluster::start(lab, options)?;
        cluster.wait_converged(Duration::from_secs(60)).map(|()| cluster)
    })?;
    steps.run("attaching pods with the weft plugin", || {
        for node in 0..opts.nodes {
            for p in 0..opts.pods_per_node {
                cluster.add_pod(node, &pod_name(p))?;
            }
        }
        Ok::<_, LabError>(())
    })?;
    Ok(cluster)
}

/// The agents' `--cluster-cidr` for `families`: the lab's pod range of each (none for IPv4 only,
/// the agents' default).
fn cluster_cidr_args(families: &[Family]) -> Vec<String> {
    if families == [Family::Ipv4] {
        return Vec::new();
    }
    let range = |f: &Family| match f {
        Family::Ipv4 => "10.244.0.0/16",
        Family::Ipv6 => "fd00:10:244::/56",
    };
    vec![format!("--cluster-cidr={}", families.iter().map(range).collect::<Vec<_>>().join(","))]
}

/// "dual-stack", or the one family's name.
fn pod_families_name(families: &[Family]) -> String {
    match families {
        [one] => one.to_string(),
        _ => "dual-stack".to_string(),
    }
}

/// A node's blocks for the table: `podCIDR` is the IPv6 block too on an IPv6-only node.
fn pod_cidrs(status: &serde_json::Value) -> String {
    let mut blocks: Vec<&str> = ["podCIDR", "podCIDR6"].iter().filter_map(|k| status["node"][k].as_str()).collect();
    blocks.dedup();
    blocks.join(",")
}

fn pod_name(p: usize) -> String {
    char::from(b'a' + (p % 26) as u8).to_string()
}

struct Checks {
    colour: bool,
    passed: usize,
    failed: usize,
}

impl Checks {
    fn mark(&mut self, ok: bool) -> String {
        if ok {
            self.passed += 1;
            paint(self.colour, "✓", Colour::Green)
        } else {
            self.failed += 1;
            paint(self.colour, "✗", Colour::Red)
        }
    }
}

fn print_agents(c: &Cluster, checks: &mut Checks) {
    println!("\nAgents (GET /status on each node)");
    let expected = c.lab.nodes.len() - 1;
    let rows: Vec<Vec<String>> = (0..c.lab.nodes.len())
        .map(|i| {
            let node = &c.lab.nodes[i];
            let s = c.status(i).unwrap_or_default();
            let ready = s["node"]["ready"] == true;
            let peers = programmed_peers(&s);
            let mark = checks.mark(ready && peers == expected);
            vec![
                node.name.clone(),
                node.ip.to_string(),
                pod_cidrs(&s),
                s["node"]["vtepMAC"].as_str().unwrap_or("-").to_string(),
                format!("{peers}/{expected}"),
                format!("{} {}", mark, if ready { "ready" } else { "not ready" }),
            ]
        })
        .collect();
    print!("{}", table(&["NODE", "NODE IP", "POD CIDR", "VTEP MAC", "PEERS", "STATUS"], &rows));
}

fn print_ping_matrix(c: &Cluster, family: Family, checks: &mut Checks) {
    println!("\n{family} ping matrix (row pings column)");
    let names: Vec<String> = c.pods.iter().map(|p| format!("{}-{}", c.lab.nodes[p.node].name, p.name)).collect();
    let mut headers = vec![""];
    headers.extend(names.iter().map(String::as_str));
    let rows: Vec<Vec<String>> = c
        .pods
        .iter()
        .zip(&names)
        .map(|(from, name)| {
            let ip = from.ip_of(family).map_or_else(|| "-".to_string(), |ip| ip.to_string());
            let mut row = vec![format!("{name} {ip}")];
            row.extend(c.pods.iter().map(|to| checks.mark(to.ip_of(family).is_some_and(|ip| from.ping(ip)))));
            row
        })
        .collect();
    print!("{}", table(&headers, &rows));
}

fn print_source_addresses(c: &Cluster, family: Family, checks: &mut Checks) {
    println!("\n{family}: source address a listener sees");
    let Some(client) = c.pods.first() else { return };
    let Some(client_ip) = client.ip_of(family) else { return };
    let client_node = &c.lab.nodes[client.node];
    let mut rows = Vec::new();
    let mut port = if family == Family::Ipv4 { 7100 } else { 7200 };
    for server in c.pods.iter().filter(|p| p.node != client.node && p.name == client.name) {
        let server_node = &c.lab.nodes[server.node];
        let path = if server_node.subnet == client_node.subnet { "same subnet" } else { "across the router" };
        port += 1;
        let Some(server_ip) = server.ip_of(family) else { continue };
        let seen = tcp_source_seen(&server.ns, server_ip, port, &client.ns);
        let ok = seen.as_ref().is_ok_and(|ip| *ip == client_ip);
        rows.push(vec![
            format!("{}-{} → {}-{} ({path})", client_node.name, client.name, server_node.name, server.name),
            seen.map(|ip| ip.to_string()).unwrap_or_else(|e| e.to_string()),
            format!("{} pod address kept (no NAT)", checks.mark(ok)),
        ]);
    }
    let ext = &c.lab.external;
    // The off-cluster host has an address of the underlay's family only.
    let egress = Family::of(ext.ip) == family;
    if egress {
        let seen = tcp_source_seen(&ext.ns, ext.ip, port + 1, &client.ns);
        let ok = seen.as_ref().is_ok_and(|ip| *ip == client_node.ip);
        rows.push(vec![
            format!("{}-{} → off-cluster {}", client_node.name, client.name, ext.ip),
            seen.map(|ip| ip.to_string()).unwrap_or_else(|e| e.to_string()),
            format!("{} masqueraded to node {}", checks.mark(ok), client_node.ip),
        ]);
    }
    print!("{}", table(&["CONNECTION", "SEEN FROM", "CHECK"], &rows));
    if !egress {
        println!("  (no egress check: the off-cluster host has no {family} address on this underlay)");
    }
}

/// Traffic an off-cluster host forges at node 1, and the counter that shows it was dropped.
fn print_intruders(c: &Cluster, checks: &mut Checks) {
    println!("\nForged traffic from the off-cluster host to {} (must be dropped and counted)", c.lab.nodes[0].name);
    let (ext, target) = (&c.lab.external, &c.lab.nodes[0]);
    let gossip = SocketAddr::from((target.ip, GOSSIP_PORT));
    let mut rows = Vec::new();
    for (what, payload, series) in [
        (
            "gossip without the cluster key",
            b"\xb0\x53\x00\x00plain chitchat".to_vec(),
            "weft_gossip_datagrams_dropped_total{reason=\"unsealed\"}",
        ),
        (
            "gossip with a forged seal",
            [b"WFT\x01".as_slice(), &[0x55; 120]].concat(),
            "weft_gossip_datagrams_dropped_total{reason=\"unknown_key\"}",
        ),
    ] {
        let counted = c.metric(0, series).and_then(|before| {
            probe::send_udp(&ext.ns, ext.ip, gossip, &payload)?;
            wait::until(what, Duration::from_secs(3), Duration::from_millis(20), || {
                c.metric(0, series).is_ok_and(|now| now > before).then_some(())
            })
        });
        let ok = counted.is_ok();
        rows.push(vec![
            format!("{what} → {gossip}"),
            format!("{} {}", checks.mark(ok), if ok { "dropped, counted" } else { "NOT counted" }),
            series.to_string(),
        ]);
    }
    // The agent exports this counter at its next reconcile; the kernel's rule shows it at once.
    let vxlan = SocketAddr::from((target.ip, DEFAULT_VXLAN_PORT));
    let dropped = || vxlan_drop_counter(&target.ns);
    let counted = dropped().and_then(|before| {
        probe::send_udp(&ext.ns, ext.ip, vxlan, &[0x08, 0, 0, 0, 0, 0, 1, 0])?;
        wait::until("the VXLAN drop", Duration::from_secs(3), Duration::from_millis(20), || {
            dropped().is_ok_and(|now| now > before).then_some(())
        })
    });
    let ok = counted.is_ok();
    rows.push(vec![
        format!("VXLAN from a non-peer → {vxlan}"),
        format!("{} {}", checks.mark(ok), if ok { "dropped, counted" } else { "NOT counted" }),
        "weft_vxlan_dropped_packets_total".to_string(),
    ]);
    print!("{}", table(&["FORGED", "CHECK", "COUNTER"], &rows));
}

/// Packets the VXLAN allow-list has dropped on a node, from its nftables rule.
fn vxlan_drop_counter(ns: &Netns) -> Result<u64> {
    let chain = ns.run("nft", &["list", "chain", "inet", "weft", "vxlan_ingress"])?;
    chain
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| LabError::Other(format!("no counter in the VXLAN allow-list: {chain}")))
}
