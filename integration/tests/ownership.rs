//! Who owns a node name and a PodCIDR block, under the events every operator causes: a node back
//! from maintenance, a cloned VM with the same hostname, two nodes given the same static
//! PodCIDR. Real agents and the real plugin in node namespaces; pods keep talking and what weft
//! reports says what is wrong. Needs root.

use std::process::{Child, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use weft_lab::cluster::{AgentOptions, Cluster, Pod};
use weft_lab::cni::{PluginPath, Reply, Runtime, Target};
use weft_lab::topology::{Lab, LabSpec};
use weft_lab::{Netns, wait};

const CONVERGE: Duration = Duration::from_secs(30);
/// 10 ms pings for 8 s: long enough to span the event under test.
const PINGS: u32 = 800;

fn lab(nodes: usize) -> Lab {
    weft_lab::require_root();
    Lab::build(&weft_lab::unique_prefix(), LabSpec { nodes, subnets: 2, gro: false, ..LabSpec::default() })
        .expect("build lab")
}

fn converge(c: &Cluster) {
    c.wait_converged(CONVERGE).unwrap_or_else(|e| {
        let running = (0..c.agents.len()).filter(|i| c.agents[*i].is_some());
        panic!("{e}: {:?}", running.map(|i| c.status(i)).collect::<Vec<_>>())
    });
}

fn spawn_ping(from: &Pod, to: &Pod) -> Child {
    let mut ping = from.ns.command("ping");
    ping.args(["-i", "0.01", "-c", &PINGS.to_string(), "-W", "1", &to.ip.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    ping.spawn().expect("spawn ping")
}

fn assert_no_loss(what: &str, ping: Child) {
    let out = String::from_utf8_lossy(&ping.wait_with_output().expect("ping output").stdout).into_owned();
    assert!(out.contains(&format!("{PINGS} received")), "{what}: pings lost: {out}");
}

/// Waits until node `i`'s `/status` satisfies `check`, showing the last document on timeout.
fn wait_status(c: &Cluster, i: usize, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    wait::until(what, CONVERGE, Duration::from_millis(100), || {
        last = c.status(i).ok()?;
        check(&last).then(|| last.clone())
    })
    .unwrap_or_else(|e| panic!("{e}; last status: {last}"))
}

fn reason(status: &Value) -> &str {
    status["node"]["notReadyReason"].as_str().unwrap_or("")
}

/// The plugin as the agent's conflist configures it on node `i`, run for `command` (a pod
/// namespace is made for ADD): what it answered.
fn plugin(c: &Cluster, i: usize, command: &str) -> Reply {
    let node = &c.lab.nodes[i];
    let conf = json!({
        "cniVersion": "1.1.0", "name": "weft", "type": "weft",
        "stateFile": node.path("run").join("node.json"), "dataDir": node.path("ipam"),
    });
    let rt = Runtime::new(PluginPath::with_reference_plugins(), &node.ns.path());
    let pod = Netns::create(&format!("{}-{}-probe", c.lab.prefix, node.name)).expect("pod namespace");
    let target = Target::new(&format!("{}-probe", node.name), &pod.path(), "eth0");
    rt.exec("weft", command, (command == "ADD").then_some(&target), &conf).expect("run the plugin")
}

/// An ADD on node `i` that must be refused with code 11 (try again later) and `why` in its message.
fn assert_add_refused(c: &Cluster, i: usize, why: &str) {
    let reply = plugin(c, i, "ADD");
    assert_eq!(reply.error_code(), Some(11), "ADD on {}: {}", c.lab.nodes[i].name, reply.stdout);
    assert!(reply.stdout.contains(why), "{} lacks {why:?}", reply.stdout);
}

#[test]
fn a_node_back_from_maintenance_never_takes_its_old_block_from_the_node_now_holding_it() {
    let options = AgentOptions {
        extra_args: vec![
            "--cluster-cidr=10.244.0.0/23".into(),
            "--node-cidr-prefix=24".into(),
            "--dead-node-grace-period=3s".into(),
        ],
        ..AgentOptions::default()
    };
    let mut c = Cluster::start_some(lab(3), options, 2).expect("start n1 and n2");
    converge(&c);
    let block = c.pod_cidr(1).unwrap();
    c.add_pod(1, "old").unwrap();
    // n2 goes down for maintenance, long enough for the cluster to forget it.
    c.agent(1).unwrap().stop(Signal::SIGTERM, Duration::from_secs(10)).unwrap();
    c.agents[1] = None;
    wait_status(&c, 0, "n1 to forget n2", |s| {
        s["peers"].as_array().is_some_and(|p| p.iter().all(|p| p["name"] != "n2"))
    });
    c.start_agent(2).unwrap();
    converge(&c);
    assert_eq!(c.pod_cidr(2).unwrap(), block, "n3 gets the forgotten block");
    c.add_pod(0, "a").unwrap();
    c.add_pod(2, "c").unwrap();
    let (a, cc) = (c.pod("a").unwrap(), c.pod("c").unwrap());
    let pings = [("a -> c", spawn_ping(a, cc)), ("c -> a", spawn_ping(cc, a))];
    std::thread::sleep(Duration::from_millis(500));

    // n2 comes back with its state dir: its lease names the block n3 holds, with pods in it.
    c.start_agent(1).unwrap();
    let n2 = wait_status(&c, 1, "n2 to report its block gone and its old pod stranded", |s| {
        reason(s).contains("exhausted") && s["node"]["strandedPods"]["count"] == 1
    });
    for (what, ping) in pings {
        assert_no_loss(what, ping);
    }
    assert_eq!(c.pod_cidr(2).unwrap(), block, "n3 keeps its block");
    c.wait_ready(2, CONVERGE).unwrap();
    let old = c.pod("old").unwrap().ip.to_string();
    assert_eq!(n2["node"]["strandedPods"]["addresses"], json!([old]), "{n2}");
    assert_add_refused(&c, 1, "exhausted");
}

#[test]
fn an_agent_started_under_a_live_nodes_name_refuses_it_and_that_nodes_pods_keep_talking() {
    let mut c = Cluster::start_some(lab(4), AgentOptions::default(), 3).expect("start n1..n3");
    converge(&c);
    c.add_pod(0, "a").unwrap();
    c.add_pod(1, "b").unwrap();
    let (a, b) = (c.pod("a").unwrap(), c.pod("b").unwrap());
    let pings = [("b -> a", spawn_ping(b, a)), ("a -> b", spawn_ping(a, b))];
    std::thread::sleep(Duration::from_millis(500));

    // A cloned VM: n4's machine, n1's hostname.
    let args = c.agent_args(3).into_iter().map(|a| if a == "--node-name=n4" { "--node-name=n1".into() } else { a });
    c.start_agent_with(3, args.collect()).unwrap();
    let n1_ip = c.lab.nodes[0].ip.to_string();
    let clone = wait_status(&c, 3, "the clone to refuse n1's name", |s| {
        s["node"]["ready"] == false && reason(s).contains(&format!("node name n1 is in use by the agent at {n1_ip}"))
    });
    for (what, ping) in pings {
        assert_no_loss(what, ping);
    }
    assert_eq!(clone["node"]["podCIDR"], Value::Null);
    assert_eq!(c.metric(3, "weft_node_name_in_use").unwrap(), 1.0);
    let clone_ip = c.lab.nodes[3].ip.to_string();
    let n1 = wait_status(&c, 0, "n1 to show the clone", |s| {
        s["node"]["nameInUseBy"].as_array().is_some_and(|a| a.iter().any(|n| n["nodeIP"] == clone_ip.as_str()))
    });
    assert_eq!(n1["node"]["ready"], true);
    let seen_by_n2 = c.status(1).unwrap();
    let row = seen_by_n2["peers"].as_array().unwrap().iter().find(|p| p["name"] == "n1").unwrap().clone();
    assert_eq!((row["nodeIP"].as_str(), row["programmed"].as_bool()), (Some(n1_ip.as_str()), Some(true)), "{row}");
    assert_eq!(c.metric(0, "weft_node_name_in_use").unwrap(), 0.0);
}

#[test]
fn the_loser_of_a_static_podcidr_conflict_gives_out_no_address_and_says_why() {
    const BLOCK: &str = "--pod-cidr=10.244.77.0/24";
    let mut c = Cluster::start_some(lab(2), AgentOptions::default(), 0).expect("lab");
    let with_block = |c: &Cluster, i: usize| c.agent_args(i).into_iter().chain([BLOCK.to_string()]).collect();
    c.start_agent_with(0, with_block(&c, 0)).unwrap();
    c.wait_ready(0, CONVERGE).unwrap();
    c.add_pod(0, "w").unwrap();
    c.start_agent_with(1, with_block(&c, 1)).unwrap();
    wait_status(&c, 1, "n2 to refuse the block n1 holds", |s| {
        reason(s).contains("PodCIDR 10.244.77.0/24 (--pod-cidr) is held by node n1")
    });
    assert_add_refused(&c, 1, "held by node n1");
    // CNI STATUS says the same: a runtime that asks stops scheduling ADDs here.
    let status = plugin(&c, 1, "STATUS");
    assert_eq!(status.error_code(), Some(50), "{}", status.stdout);
    assert!(status.stdout.contains("held by node n1"), "{}", status.stdout);
    assert!(c.status(0).unwrap()["node"]["ready"] == true, "the winner serves on");
}
