//! Sealed gossip with real agents: strangers, forgeries and replays from the underlay are
//! dropped and counted and change nothing; cluster keys rotate with no partition. Needs root.

use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft_agent::gossip::keyfile;
use weft_lab::cluster::{AgentOptions, Cluster, GOSSIP_PORT, KEY_FILE, programmed_peers};
use weft_lab::process::Process;
use weft_lab::topology::{Lab, LabSpec};
use weft_lab::{bins, netns, probe, wait};

const CONVERGE: Duration = Duration::from_secs(30);

fn cluster(nodes: usize) -> Cluster {
    weft_lab::require_root();
    let lab =
        Lab::build(&weft_lab::unique_prefix(), LabSpec { nodes, subnets: 2, ..LabSpec::default() }).expect("build lab");
    let c = Cluster::start(lab, AgentOptions::default()).expect("start agents");
    c.wait_converged(CONVERGE).expect("sealed cluster converges");
    c
}

fn dropped(c: &Cluster, i: usize, reason: &str) -> f64 {
    c.metric(i, &format!("weft_gossip_datagrams_dropped_total{{reason=\"{reason}\"}}")).expect("drop counter")
}

/// Waits until node `i` has dropped more than `before` datagrams for `reason`.
fn wait_dropped(c: &Cluster, i: usize, reason: &str, before: f64) {
    let what = format!("a {reason} datagram dropped on node {i}");
    if let Err(e) = wait::until(&what, Duration::from_secs(15), Duration::from_millis(100), || {
        (dropped(c, i, reason) > before).then_some(())
    }) {
        let logs: Vec<String> = ["intruder-key", "intruder-plain"]
            .iter()
            .filter_map(|name| std::fs::read_to_string(c.lab.dir.join(name).join("agent.log")).ok())
            .collect();
        panic!("{e}; intruder logs: {logs:#?}");
    }
}

/// No node lists anyone but the cluster's own nodes, and every one sees all others programmed.
fn assert_membership_intact(c: &Cluster) {
    let names: Vec<&str> = c.lab.nodes.iter().map(|n| n.name.as_str()).collect();
    for i in 0..names.len() {
        let status = c.status(i).unwrap();
        assert_eq!(programmed_peers(&status), names.len() - 1, "node {i} lost a peer: {status}");
        for peer in status["peers"].as_array().unwrap() {
            let name = peer["name"].as_str().unwrap_or_default();
            assert!(names.contains(&name), "node {i} lists a stranger: {peer}");
        }
    }
}

/// A `weft-agent` on the off-cluster host, trying to join through node 1 with `key` (or in
/// plain text).
fn intruder(c: &Cluster, name: &str, port: u16, key: Option<&str>) -> Process {
    let dir = c.lab.dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let ext = &c.lab.external;
    let mut args = vec![
        "run".to_string(),
        format!("--node-name={name}"),
        format!("--node-ip={}", ext.ip),
        format!("--gossip-port={port}"),
        format!("--peers={}", c.seed()),
        format!("--status-addr=127.0.0.1:{port}"),
        format!("--state-dir={}", dir.join("run").display()),
        format!("--cni-conf-dir={}", dir.join("net.d").display()),
        format!("--ipam-dir={}", dir.join("ipam").display()),
    ];
    if let Some(key) = key {
        let path = dir.join("key");
        std::fs::write(&path, format!("{key}\n")).unwrap();
        args.push(format!("--cluster-key-file={}", path.display()));
    }
    let log = File::create(dir.join("agent.log")).unwrap();
    let mut cmd = Command::new(bins::path("weft-agent").unwrap());
    cmd.args(args).stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
    netns::within(&ext.ns.path(), || Process::spawn(name, &mut cmd)).unwrap().unwrap()
}

/// Sends `payload` from the off-cluster host to `to`.
fn send_from_outside(c: &Cluster, to: SocketAddr, payload: &[u8]) {
    probe::send_udp(&c.lab.external.ns, c.lab.external.ip, to, payload).unwrap();
}

/// The UDP payload of the first packet in a pcap file (Ethernet, IPv4).
fn first_udp_payload(pcap: &Path) -> Vec<u8> {
    let bytes = std::fs::read(pcap).unwrap();
    assert_eq!(bytes[..4], [0xd4, 0xc3, 0xb2, 0xa1], "a little-endian pcap file");
    let record = &bytes[24..];
    let captured = u32::from_le_bytes(record[8..12].try_into().unwrap()) as usize;
    let frame = &record[16..16 + captured];
    let ip = &frame[14..];
    let udp = &ip[usize::from(ip[0] & 0x0f) * 4..];
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    udp[8..udp_len].to_vec()
}

#[test]
fn strangers_forgeries_and_replays_are_dropped_counted_and_change_nothing() {
    let c = cluster(2);
    let (n1, n2) = (&c.lab.nodes[0], &c.lab.nodes[1]);
    let to_n1 = SocketAddr::from((n1.ip, GOSSIP_PORT));
    let before: Vec<f64> =
        ["unknown_key", "unsealed", "forged", "replayed"].iter().map(|r| dropped(&c, 0, r)).collect();

    // Agents without the cluster key: one with a key of its own, one in plain text.
    let _wrong_key = intruder(&c, "intruder-key", 8481, Some(&keyfile::generate()));
    let _plain = intruder(&c, "intruder-plain", 8482, None);
    wait_dropped(&c, 0, "unknown_key", before[0]);
    wait_dropped(&c, 0, "unsealed", before[1]);

    // A datagram that claims the cluster key's id but was not made with the key.
    let cluster_key = std::fs::read_to_string(n1.path(KEY_FILE)).unwrap();
    let key_id = keyfile::parse(Path::new(KEY_FILE), &cluster_key).unwrap().primary().to_string();
    let mut forged = b"WFT\x01".to_vec();
    forged.extend((0..4).map(|i| u8::from_str_radix(&key_id[2 * i..2 * i + 2], 16).unwrap()));
    forged.extend((0..400).map(|_| rand::random::<u8>()));
    send_from_outside(&c, to_n1, &forged);
    wait_dropped(&c, 0, "forged", before[2]);

    // A genuine datagram from n2 to n1, captured on the wire and sent again.
    let pcap = c.lab.dir.join("gossip.pcap");
    let filter = format!("udp and src host {} and dst port {GOSSIP_PORT}", n2.ip);
    let capture = n1
        .ns
        .command("timeout")
        .args(["10", "tcpdump", "-ni", "eth0", "-c", "1", "-w", &pcap.display().to_string(), &filter])
        .output()
        .unwrap();
    assert!(capture.status.success(), "no gossip captured: {}", String::from_utf8_lossy(&capture.stderr));
    let genuine = first_udp_payload(&pcap);
    assert!(genuine.starts_with(b"WFT"), "gossip on the wire is sealed");
    send_from_outside(&c, to_n1, &genuine);
    wait_dropped(&c, 0, "replayed", before[3]);

    // None of it got in: no stranger listed, nothing routed to it, both nodes still peers.
    assert_membership_intact(&c);
    let routes = n1.ns.ip(&["route", "show", "proto", "87"]).unwrap();
    assert_eq!(routes.lines().count(), 1, "only n2's PodCIDR is routed on n1: {routes}");
    // Sealed gossip still flows both ways (a control: the drops are not just a dead socket).
    let received = c.metric(1, "weft_gossip_messages_total{direction=\"in\"}").unwrap();
    wait::until("n2 to keep receiving gossip", Duration::from_secs(5), Duration::from_millis(100), || {
        (c.metric(1, "weft_gossip_messages_total{direction=\"in\"}").unwrap() > received).then_some(())
    })
    .unwrap();
}

/// The id of a key file line, as the agents' metrics show it.
fn id(key: &str) -> String {
    keyfile::parse(Path::new("key"), key).unwrap().primary().to_string()
}

/// Waits until node `i` seals with `key`.
fn wait_primary(c: &Cluster, i: usize, key: &str) {
    let series = format!("weft_gossip_keys{{key_id=\"{}\",role=\"primary\"}}", id(key));
    wait::until(
        &format!("node {i} to seal with the new key"),
        Duration::from_secs(10),
        Duration::from_millis(50),
        || c.metric(i, &series).is_ok_and(|v| v == 1.0).then_some(()),
    )
    .unwrap();
}

/// Checks membership stays whole for `hold`, sampling every 100 ms.
fn hold_intact(c: &Cluster, hold: Duration) {
    let start = Instant::now();
    while start.elapsed() < hold {
        assert_membership_intact(c);
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn cluster_keys_rotate_node_by_node_with_no_partition() {
    let mut c = cluster(3);
    let old = std::fs::read_to_string(c.lab.nodes[0].path(KEY_FILE)).unwrap().trim().to_string();
    let new = keyfile::generate();
    // The documented steps, one node at a time. Each hold outlasts the failure detector
    // (~1.5 s of silence), so a pair that could not talk would show as a lost peer.
    for (step, keys, hold) in [
        ("accept the new key", [old.as_str(), new.as_str()], Duration::from_millis(500)),
        ("seal with the new key", [new.as_str(), old.as_str()], Duration::from_millis(2500)),
    ] {
        for i in 0..3 {
            c.write_keys(i, &keys).unwrap();
            c.reload_keys(i).unwrap();
            wait_primary(&c, i, keys[0]);
            eprintln!("node {i}: {step}");
            hold_intact(&c, hold);
        }
    }
    for i in 0..3 {
        c.write_keys(i, &[&new]).unwrap();
        c.reload_keys(i).unwrap();
        let accepted = format!("weft_gossip_keys{{key_id=\"{}\",role=\"accepted\"}}", id(&old));
        wait::until("the old key to be dropped", Duration::from_secs(10), Duration::from_millis(50), || {
            c.metric(i, &accepted).is_err().then_some(())
        })
        .unwrap();
        hold_intact(&c, Duration::from_millis(500));
    }

    // The old key is now useless: a node restarted with only the old key is shut out.
    let unknown = dropped(&c, 0, "unknown_key");
    c.write_keys(2, &[&old]).unwrap();
    c.agents[2] = None;
    c.start_agent(2).unwrap();
    wait_dropped(&c, 0, "unknown_key", unknown);
}
