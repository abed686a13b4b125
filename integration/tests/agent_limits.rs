//! Real agents against clients that hold on or send junk: idle status connections cannot take
//! the file handles the agent needs, and junk gossip is counted in full but logged sparingly.
//! Needs root.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use chitchat::{ChitchatEnvelope, ChitchatMessage, ProtocolVersion, Serializable};
use rand::RngExt;
use weft_agent::gossip::keyfile;
use weft_agent::gossip::seal::Sealer;
use weft_agent::http::status::timestamp;
use weft_lab::cluster::{AgentOptions, Cluster, GOSSIP_PORT, KEY_FILE, STATUS_ADDR, programmed_peers};
use weft_lab::topology::{Lab, LabSpec};
use weft_lab::{netns, wait};

const CONVERGE: Duration = Duration::from_secs(30);
/// The status server's default idle timeout (`--status-idle-timeout`).
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

fn cluster(nodes: usize, options: AgentOptions) -> Cluster {
    weft_lab::require_root();
    // GRO plays no part in what these tests check.
    let spec = LabSpec { nodes, subnets: nodes.min(2), gro: false, ..LabSpec::default() };
    let lab = Lab::build(&weft_lab::unique_prefix(), spec).expect("build lab");
    let c = Cluster::start(lab, options).expect("start agents");
    if let Err(e) = c.wait_converged(CONVERGE) {
        let logs: Vec<String> =
            c.lab.nodes.iter().map(|n| std::fs::read_to_string(n.path("agent.log")).unwrap_or_default()).collect();
        panic!("{e}; agent logs: {logs:#?}");
    }
    c
}

/// Node 1's agent log.
fn agent_log(c: &Cluster) -> Vec<u8> {
    std::fs::read(c.lab.nodes[0].path("agent.log")).expect("agent log")
}

/// Warnings and errors node 1's agent logged after byte `from`.
fn warnings_since(c: &Cluster, from: usize) -> Vec<String> {
    let log = agent_log(c);
    String::from_utf8_lossy(&log[from.min(log.len())..])
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(str::to_string)
        .collect()
}

// ---- idle status connections ----

/// Whether the server has closed `stream` (a non-blocking socket): end of stream or reset.
fn closed_by_server(mut stream: &TcpStream) -> bool {
    let mut byte = [0u8; 512];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

fn count_closed(streams: &[TcpStream]) -> usize {
    streams.iter().filter(|s| closed_by_server(s)).count()
}

/// A connection that made one keep-alive request, read the answer, and then says nothing more.
fn idle_after_a_response(to: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(to).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: weft\r\n\r\n").unwrap();
    let mut answer = [0u8; 512];
    let n = stream.read(&mut answer).expect("an answer to the first request");
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer[..n]));
    stream
}

/// A connection that sends half a request and stops.
fn half_a_request(to: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(to).expect("connect");
    stream.write_all(b"GET /status HTTP/1.1\r\nHost: we").unwrap();
    stream
}

#[test]
fn idle_status_connections_are_closed_and_cannot_starve_the_agent_of_file_handles() {
    // More idle clients than the agent may open files: before the limits, the agent accepted
    // until EMFILE and never closed one, and then neither answered /healthz nor reconciled.
    const OPEN_FILES: u64 = 400;
    const CLIENTS: usize = 420;
    let options = AgentOptions {
        open_files: Some(OPEN_FILES),
        extra_args: vec!["--resync-interval=1s".into()],
        ..AgentOptions::default()
    };
    let c = cluster(1, options);
    let errors_before = c.metric(0, "weft_reconcile_errors_total").unwrap();
    let started = SystemTime::now();
    let clock = Instant::now();
    let to: SocketAddr = STATUS_ADDR.parse().unwrap();
    let clients: Vec<TcpStream> = netns::within(&c.lab.nodes[0].ns.path(), || {
        let mut clients: Vec<TcpStream> = (0..5).map(|_| idle_after_a_response(to)).collect();
        clients.extend((0..5).map(|_| half_a_request(to)));
        clients.extend((clients.len()..CLIENTS).map(|_| TcpStream::connect(to).expect("connect")));
        clients
    })
    .unwrap();
    for s in &clients {
        s.set_nonblocking(true).unwrap();
    }

    // The server keeps only a few of them, well under the open-file limit; the rest are closed
    // at once (long before any idle timeout) and counted.
    let most = CLIENTS - (OPEN_FILES / 2) as usize;
    let mut closed_at_once = 0;
    let shed = wait::until(
        "connections beyond the cap to be closed",
        Duration::from_secs(3),
        Duration::from_millis(100),
        || {
            closed_at_once = count_closed(&clients);
            (closed_at_once >= most).then_some(())
        },
    );
    assert!(
        shed.is_ok(),
        "only {closed_at_once} of {CLIENTS} idle connections closed at once; at least {most} should be"
    );
    assert!(clock.elapsed() < IDLE_TIMEOUT, "too slow to tell shedding from idle timeouts");

    // Every idle one (silent, after a response, or half a request) is closed within the timeout.
    let mut closed = 0;
    let reaped = wait::until(
        "idle connections to be closed",
        IDLE_TIMEOUT + Duration::from_secs(5),
        Duration::from_millis(200),
        || {
            closed = count_closed(&clients);
            (closed == CLIENTS).then_some(())
        },
    );
    assert!(reaped.is_ok(), "{closed} of {CLIENTS} idle connections closed after {:?}", clock.elapsed());
    eprintln!("{closed_at_once} connections closed at once, all {CLIENTS} closed after {:?}", clock.elapsed());

    // The agent answers again, and no reconcile failed meanwhile (one ran every second).
    wait::until("/healthz to answer", Duration::from_secs(5), Duration::from_millis(100), || {
        matches!(c.get(0, "/healthz"), Ok((200, _))).then_some(())
    })
    .unwrap();
    let rejected = c.metric(0, "weft_http_connections_rejected_total").unwrap();
    assert!(rejected >= closed_at_once as f64, "{rejected} counted, {closed_at_once} closed at once");
    assert_eq!(c.metric(0, "weft_reconcile_errors_total").unwrap(), errors_before, "a reconcile failed");
    let last = &c.status(0).unwrap()["lastReconcile"];
    assert!(last["error"].is_null(), "{last}");
    assert!(last["at"].as_str().unwrap() > timestamp(started).as_str(), "no reconcile since the flood: {last}");
}

// ---- junk gossip ----

const JUNK: usize = 10_000;

/// UDP datagrams the kernel of node 1 dropped for a full socket buffer so far.
fn buffer_drops(c: &Cluster) -> u64 {
    let snmp = c.lab.nodes[0].ns.run("cat", &["/proc/net/snmp"]).unwrap();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    let column = names.split_whitespace().position(|n| n == "RcvbufErrors").unwrap();
    values.split_whitespace().nth(column).unwrap().parse().unwrap()
}

/// Sends every datagram from the off-cluster host to node 1's gossip port, paced so that the
/// agent mostly keeps up; returns how many of them at least arrived in its socket.
fn flood(c: &Cluster, junk: &[Vec<u8>]) -> u64 {
    let to = SocketAddr::from((c.lab.nodes[0].ip, GOSSIP_PORT));
    let ext = &c.lab.external;
    let socket = netns::within(&ext.ns.path(), || UdpSocket::bind((ext.ip, 0))).unwrap().unwrap();
    let full_before = buffer_drops(c);
    for batch in junk.chunks(50) {
        for datagram in batch {
            socket.send_to(datagram, to).unwrap();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // Let the socket drain before reading the kernel's count.
    std::thread::sleep(Duration::from_millis(500));
    junk.len() as u64 - (buffer_drops(c) - full_before)
}

fn dropped(c: &Cluster, reason: &str) -> f64 {
    c.metric(0, &format!("weft_gossip_datagrams_dropped_total{{reason=\"{reason}\"}}")).unwrap_or(0.0)
}

/// Floods node 1 with `junk` and checks that every datagram that arrived is counted under one
/// of `reasons` (each at least once), that the log got at most a line or two per reason, and
/// that membership did not change.
fn assert_counted_and_logged_sparingly(c: &Cluster, junk: &[Vec<u8>], reasons: &[&str]) {
    let before: Vec<f64> = reasons.iter().map(|r| dropped(c, r)).collect();
    let log_from = agent_log(c).len();
    let arrived = flood(c, junk);
    eprintln!("{arrived} of {} junk datagrams arrived", junk.len());
    let gained = || -> Vec<f64> { reasons.iter().zip(&before).map(|(r, b)| dropped(c, r) - b).collect() };
    let counted =
        wait::until("every junk datagram to be counted", Duration::from_secs(10), Duration::from_millis(200), || {
            (gained().iter().sum::<f64>() >= arrived as f64).then_some(())
        });
    let by_reason = gained();
    assert!(counted.is_ok(), "{arrived} arrived, counted {by_reason:?} for {reasons:?}");
    // The kernel's count of full-buffer drops may include some of the peer's gossip too.
    assert!(by_reason.iter().sum::<f64>() <= junk.len() as f64, "{by_reason:?} for {reasons:?}");
    for (reason, n) in reasons.iter().zip(&by_reason) {
        assert!(*n > 0.0, "nothing counted as {reason}: {by_reason:?}");
    }
    let lines = warnings_since(c, log_from);
    eprintln!("counted {by_reason:?} for {reasons:?}; {} warnings", lines.len());
    assert!(lines.len() <= 2 * reasons.len(), "{} warnings for {arrived} datagrams: {lines:#?}", lines.len());

    let names: Vec<&str> = c.lab.nodes.iter().map(|n| n.name.as_str()).collect();
    for i in 0..names.len() {
        let status = c.status(i).unwrap();
        assert_eq!(programmed_peers(&status), names.len() - 1, "node {i} lost a peer: {status}");
        let peers = status["peers"].as_array().unwrap();
        assert!(peers.iter().all(|p| names.contains(&p["name"].as_str().unwrap_or_default())), "{status}");
    }
}

fn random_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|_| rand::random::<u8>()).collect()
}

/// Up to 600 random bytes.
fn noise() -> Vec<u8> {
    random_bytes(rand::rng().random_range(1..600))
}

/// chitchat's `BadCluster`: what a node answers a `Syn` of another gossip cluster with.
fn bad_cluster() -> Vec<u8> {
    let mut bytes = Vec::new();
    ChitchatEnvelope { version: ProtocolVersion::V0, message: ChitchatMessage::BadCluster }.serialize(&mut bytes);
    bytes
}

/// The start of a chitchat `Syn`: magic number, protocol version, message type 0.
fn syn_header() -> Vec<u8> {
    let mut bytes = bad_cluster();
    *bytes.last_mut().unwrap() = 0;
    bytes
}

/// A `Syn` from a node of another gossip cluster, with an empty digest.
fn foreign_syn() -> Vec<u8> {
    let mut bytes = syn_header();
    0u16.serialize(&mut bytes);
    "another-cluster".serialize(&mut bytes);
    bytes
}

/// Random bytes, some starting like a chitchat `Syn`, and messages of another gossip cluster.
fn plain_junk() -> Vec<Vec<u8>> {
    (0..JUNK)
        .map(|i| match i % 20 {
            0 => foreign_syn(),
            1 => bad_cluster(),
            2 | 3 => [syn_header(), random_bytes(40)].concat(),
            _ => noise(),
        })
        .collect()
}

#[test]
fn junk_gossip_to_an_agent_without_a_key_is_counted_and_logged_sparingly() {
    let c = cluster(2, AgentOptions { plain_gossip: true, ..AgentOptions::default() });
    assert_counted_and_logged_sparingly(&c, &plain_junk(), &["malformed", "foreign_cluster"]);
}

/// Junk for a sealed cluster: random bytes, seals under a key nobody has, forgeries under the
/// cluster key's id, and datagrams sealed with the cluster key (as a member could) that are
/// stale, replayed, or hold no chitchat message.
fn sealed_junk(key_file: &Path) -> Vec<Vec<u8>> {
    let ring = keyfile::parse(key_file, &std::fs::read_to_string(key_file).unwrap()).unwrap();
    let stranger = keyfile::parse(key_file, &keyfile::generate()).unwrap();
    let mut sealer = Sealer::new(rand::random());
    let now_ms = u64::try_from(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis()).unwrap();
    let mut seal = |ring, sent_ms, plaintext: &[u8]| {
        let mut out = Vec::new();
        sealer.seal(ring, rand::random(), sent_ms, plaintext, &mut out);
        out
    };
    let replayed = seal(&ring, now_ms, &bad_cluster());
    (0..JUNK)
        .map(|i| match i % 6 {
            0 => noise(),
            1 => seal(&stranger, now_ms, b"hello"),
            2 => {
                let mut forged = seal(&ring, now_ms, b"hello");
                let last = forged.len() - 1;
                forged[last] ^= 1;
                forged
            }
            3 => seal(&ring, now_ms - 3_600_000, b"hello"),
            4 => replayed.clone(),
            _ => seal(&ring, now_ms, &random_bytes(100)),
        })
        .collect()
}

#[test]
fn junk_gossip_to_an_agent_with_a_key_is_counted_and_logged_sparingly() {
    let c = cluster(2, AgentOptions::default());
    let junk = sealed_junk(&c.lab.nodes[0].path(KEY_FILE));
    let reasons = ["unsealed", "unknown_key", "forged", "stale", "replayed", "malformed", "foreign_cluster"];
    assert_counted_and_logged_sparingly(&c, &junk, &reasons);
}
