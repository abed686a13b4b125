//! What the kubelet sees (docs/deployment.md, "What the kubelet sees"): the CNI conflist appears
//! only once the node's PodCIDR is confirmed, and never on a node that gets no block; it stays
//! across an agent stop and a restart (an upgrade), which also repairs hand-made damage; and
//! `weft-agent cleanup` removes it, keeping the bridge while pods are attached unless `--force`.
//! Needs root.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use weft_lab::cluster::{AgentOptions, CONFLIST, Cluster};
use weft_lab::topology::{Lab, LabSpec, Node};
use weft_lab::wait;

const LIMIT: Duration = Duration::from_secs(20);

/// What node `node` publishes for the kubelet at one instant. The conflist is read first: the
/// agent writes the state file before the conflist, so a conflist seen before a state file
/// that is still unconfirmed was really written too early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Published {
    conflist: bool,
    /// `Some(true)` when `node.json` exists and the node serves its block.
    confirmed: Option<bool>,
}

fn published(node: &Node) -> Published {
    let conflist = node.path("net.d").join(CONFLIST).exists();
    let confirmed = std::fs::read_to_string(node.path("run").join("node.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .map(|v| v.get("unavailable").is_none_or(serde_json::Value::is_null));
    Published { conflist, confirmed }
}

/// Samples node `i` every 10 ms until its agent is ready and serves its block.
fn watch_until_ready(c: &Cluster, i: usize) -> Vec<Published> {
    let start = Instant::now();
    let mut samples = Vec::new();
    loop {
        let now = published(&c.lab.nodes[i]);
        samples.push(now);
        if now.confirmed == Some(true) && matches!(c.get(i, "/readyz"), Ok((200, _))) {
            return samples;
        }
        assert!(start.elapsed() < LIMIT, "n{} not ready within {LIMIT:?}: {samples:?}", i + 1);
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `weft-agent cleanup` for node `i`'s directories, inside its namespace: (success, output).
fn cleanup(c: &Cluster, i: usize, extra: &[&str]) -> (bool, String) {
    c.cleanup(i, extra).unwrap()
}

#[test]
fn the_conflist_follows_the_confirmed_pod_cidr_and_outlives_the_agent_until_cleanup() {
    weft_lab::require_root();
    // One /24 block in the whole cluster: n1 gets it, n2 never gets one.
    let options = AgentOptions {
        extra_args: vec!["--cluster-cidr=10.244.0.0/24".into(), "--node-cidr-prefix=24".into()],
        ..AgentOptions::default()
    };
    let lab = Lab::build(&weft_lab::unique_prefix(), LabSpec { nodes: 2, subnets: 2, ..LabSpec::default() })
        .expect("build lab");
    let mut c = Cluster::start_some(lab, options, 1).expect("start n1's agent");

    // 1. First start: the conflist appears only after the claim is confirmed.
    let samples = watch_until_ready(&c, 0);
    let early: Vec<&Published> = samples.iter().filter(|p| p.conflist && p.confirmed != Some(true)).collect();
    assert!(early.is_empty(), "conflist before the PodCIDR was confirmed: {early:?}");
    assert!(
        samples.iter().any(|p| !p.conflist && p.confirmed == Some(false)),
        "never saw the unconfirmed claim (node.json unavailable, no conflist): {samples:?}"
    );
    let n1 = &c.lab.nodes[0];
    let conflist: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(n1.path("net.d").join(CONFLIST)).unwrap()).unwrap();
    assert_eq!(conflist["plugins"][0]["stateFile"].as_str(), Some(n1.path("run").join("node.json").to_str().unwrap()));

    // 2. A node that gets no block never gets a conflist, and is not ready.
    c.start_agent(1).expect("start n2's agent");
    let reason = wait::until("n2 to report the exhausted pool", LIMIT, Duration::from_millis(50), || {
        c.get(1, "/readyz").ok().filter(|(code, body)| *code == 503 && body.contains("exhausted")).map(|(_, b)| b)
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", c.get(1, "/readyz")));
    assert!(!c.lab.nodes[1].path("net.d").join(CONFLIST).exists(), "n2 wrote a conflist: {reason}");

    // 3. Stopping the agent leaves the conflist and a serving node.json: pods keep working and
    // the runtime can still tear them down.
    c.add_pod(0, "a").expect("attach a pod on n1");
    c.agent(0).unwrap().stop(Signal::SIGTERM, Duration::from_secs(10)).expect("stop n1's agent");
    assert_eq!(published(&c.lab.nodes[0]), Published { conflist: true, confirmed: Some(true) });

    // 4. A restart (an upgrade is one) keeps the conflist throughout, and its first apply
    // repairs what was removed by hand meanwhile.
    c.lab.nodes[0].ns.run("nft", &["delete", "table", "inet", "weft"]).expect("damage n1 by hand");
    c.start_agent(0).expect("restart n1's agent");
    let samples = watch_until_ready(&c, 0);
    assert!(samples.iter().all(|p| p.conflist), "the conflist went away during a restart: {samples:?}");
    let tables = c.lab.nodes[0].ns.run("nft", &["list", "tables"]).unwrap();
    assert!(tables.contains("inet weft"), "the restart did not restore the table: {tables}");

    // 5. Uninstall: stop, then cleanup removes the conflist; the bridge stays while a pod is
    // attached, and the output says how to remove it anyway.
    c.agent(0).unwrap().stop(Signal::SIGTERM, Duration::from_secs(10)).expect("stop n1's agent");
    let (ok, out) = cleanup(&c, 0, &[]);
    assert!(ok, "cleanup failed: {out}");
    assert!(out.contains("kept bridge cni0") && out.contains("--force"), "{out}");
    let n1 = &c.lab.nodes[0];
    assert!(!n1.path("net.d").join(CONFLIST).exists() && !n1.path("run").join("node.json").exists(), "{out}");
    assert!(n1.ns.ip(&["link", "show", "cni0"]).is_ok(), "cni0 removed with a pod attached: {out}");
    let (ok, out) = cleanup(&c, 0, &["--force"]);
    assert!(ok, "cleanup --force failed: {out}");
    assert!(n1.ns.ip(&["link", "show", "cni0"]).is_err(), "cleanup --force kept cni0: {out}");
}
