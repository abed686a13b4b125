//! `weft-agent diagnose` where an operator runs it: inside a node of a lab, against the node's
//! real agent and kernel. A healthy cluster passes on every node; a VXLAN port blocked between
//! the subnets is named with the port and both addresses; IP forwarding turned off in a node is
//! named, also once its agent is gone. Needs root.

use std::time::Duration;

use serde_json::Value;
use weft_lab::cluster::{AgentOptions, Cluster, STATUS_ADDR};
use weft_lab::topology::{Lab, LabSpec};
use weft_lab::{bins, wait};

const CONVERGE: Duration = Duration::from_secs(30);
/// Probes report a blocked tunnel within about 10 s; the wait allows for a loaded machine.
const REPORTED: Duration = Duration::from_secs(15);
const S0: &str = "192.0.2.0/24";
const S1: &str = "198.51.100.0/24";

/// Three nodes on two subnets (n1 and n3 on the first, n2 on the second), converged.
fn cluster(options: AgentOptions) -> Cluster {
    weft_lab::require_root();
    let lab =
        Lab::build(&weft_lab::unique_prefix(), LabSpec { nodes: 3, subnets: 2, gro: false, ..LabSpec::default() })
            .expect("build lab");
    let c = Cluster::start(lab, options).expect("start agents");
    c.wait_converged(CONVERGE).unwrap();
    c
}

/// `weft-agent diagnose <args>` run inside node `i`: whether it exited 0, and what it printed.
fn diagnose(c: &Cluster, i: usize, args: &[&str]) -> (bool, String) {
    let agent = bins::path("weft-agent").unwrap();
    let out = c.lab.nodes[i]
        .ns
        .command(&agent.to_string_lossy())
        .arg("diagnose")
        .arg(format!("--status-addr={STATUS_ADDR}"))
        .args(args)
        .output()
        .expect("run weft-agent diagnose");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The findings `diagnose --json` prints on node `i`.
fn json_findings(c: &Cluster, i: usize) -> Vec<Value> {
    let (_, out) = diagnose(c, i, &["--json"]);
    let parsed: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("--json is not JSON ({e}):\n{out}"));
    parsed.as_array().expect("a list of findings").clone()
}

#[test]
fn a_healthy_lab_passes_and_a_vxlan_port_blocked_between_the_subnets_is_named_with_both_addresses() {
    let c = cluster(AgentOptions::default());
    for i in 0..3 {
        // Once the probes have judged both paths, so that the dataplane check says something.
        let judged = "✓ the paths to 2 peer(s) carry full-size packets\n";
        let what = format!("diagnose on n{} to judge both paths", i + 1);
        let (ok, out) = wait::until(&what, REPORTED, Duration::from_millis(500), || {
            Some(diagnose(&c, i, &[])).filter(|(_, out)| out.contains(judged))
        })
        .unwrap_or_else(|e| panic!("{e}:\n{}", diagnose(&c, i, &[]).1));
        assert!(ok, "diagnose on n{} must exit 0 on a healthy lab:\n{out}", i + 1);
        assert!(out.contains("nothing broken: 0 error(s)"), "{out}");
    }

    c.lab
        .router_firewall(&[
            format!("ip saddr {S0} ip daddr {S1} udp dport 8472 drop"),
            format!("ip saddr {S1} ip daddr {S0} udp dport 8472 drop"),
        ])
        .unwrap();
    let (n1, n2) = (c.lab.nodes[0].ip, c.lab.nodes[1].ip);
    let named = format!("UDP 8472 from {n1} to {n2} is dropped on the path");
    let out = wait::until("diagnose on n1 to name the blocked port", REPORTED, Duration::from_millis(500), || {
        let (ok, out) = diagnose(&c, 0, &[]);
        (!ok && out.contains(&named)).then_some(out)
    })
    .unwrap_or_else(|e| panic!("{e}:\n{}", diagnose(&c, 0, &[]).1));
    assert!(out.contains("8472 is vxlan0's port"), "{out}");
    assert!(out.contains(&format!("fix: allow UDP 8472 from {n1} to {n2}, and back, in the firewall")), "{out}");

    let findings = json_findings(&c, 0);
    let blocked = findings
        .iter()
        .find(|f| f["check"] == "dataplane" && f["ok"] == false)
        .unwrap_or_else(|| panic!("no failed dataplane finding in {findings:?}"));
    assert_eq!(blocked["severity"], "error");
    assert!(blocked["message"].as_str().unwrap().contains(&named), "{blocked}");
    assert!(blocked["fix"].as_str().is_some_and(|f| f.contains("security group")), "{blocked}");
    assert!(findings.iter().any(|f| f["check"] == "ip-forward" && f["ok"] == true), "{findings:?}");
}

#[test]
fn ip_forwarding_off_in_a_node_is_named_with_and_without_its_agent() {
    // No resync during the test: the agent would turn forwarding back on.
    let options = AgentOptions { extra_args: vec!["--resync-interval=1h".into()], ..AgentOptions::default() };
    let mut c = cluster(options);
    c.lab.nodes[0].ns.sysctl("net.ipv4.ip_forward", "0").unwrap();
    let (ok, out) = diagnose(&c, 0, &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("✗ IPv4 forwarding is off (net.ipv4.ip_forward = 0)"), "{out}");
    assert!(out.contains("fix: sysctl -w net.ipv4.ip_forward=1"), "{out}");
    assert!(out.contains("✓ the agent answers"), "{out}");
    // Only the node changed: the others still pass.
    assert!(diagnose(&c, 1, &[]).0);

    c.agents[0] = None; // stops it
    let (ok, out) = diagnose(&c, 0, &[]);
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("✗ the agent does not answer at {STATUS_ADDR}")), "{out}");
    assert!(out.contains("✗ IPv4 forwarding is off"), "the kernel checks run without the agent:\n{out}");
}
