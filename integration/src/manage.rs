//! `weft-lab up|down|status|exec`: keep a lab running to explore it. A running lab is found from
//! its namespace names (`wl-<id>-n1`, `wl-<id>-n1-a`, `wl-<id>-router`), so these commands work
//! after a crash too.

use std::process::Command;

use crate::cluster::STATUS_ADDR;
use crate::cmd::{LabError, Result};
use crate::demo::{self, DemoOptions};
use crate::netns::{self, Netns};
use crate::report::{Steps, table};
use crate::{NS_PREFIX, http, topology};

/// Builds a lab with agents and pods and leaves it running.
pub fn up(opts: &DemoOptions) -> Result<()> {
    crate::require_root();
    let mut steps = Steps::new(3);
    let cluster = demo::start(opts, &mut steps)?;
    println!("lab {} is up: `weft-lab status`, `weft-lab exec n1 -- ip route`, `weft-lab down`", cluster.lab.prefix);
    cluster.persist();
    Ok(())
}

/// Removes every lab namespace (and what runs inside) and every lab directory.
pub fn down() -> Result<()> {
    crate::require_root();
    let namespaces = Netns::delete_all_with_prefix(NS_PREFIX)?;
    let dirs = topology::remove_lab_dirs(NS_PREFIX);
    println!("removed {} namespaces and {} lab directories", namespaces.len(), dirs.len());
    Ok(())
}

/// Node namespaces of running labs (`wl-<id>-n<k>`).
fn node_namespaces() -> Result<Vec<String>> {
    let mut nodes: Vec<String> = netns::list()?
        .into_iter()
        .filter(|n| n.starts_with(NS_PREFIX))
        .filter(|n| n.rsplit('-').next().is_some_and(|last| last.starts_with('n') && last[1..].parse::<u32>().is_ok()))
        .filter(|n| n.matches('-').count() == 2)
        .collect();
    nodes.sort();
    Ok(nodes)
}

/// Prints every running lab node's agent status.
pub fn status() -> Result<()> {
    crate::require_root();
    let nodes = node_namespaces()?;
    if nodes.is_empty() {
        println!("no lab is running (`weft-lab up` starts one)");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|ns| {
            let path = std::path::PathBuf::from("/run/netns").join(ns);
            let status = http::get(&path, STATUS_ADDR.parse().expect("valid address"), "/status")
                .ok()
                .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
                .unwrap_or_default();
            let peers = status["peers"].as_array().map(|p| p.len()).unwrap_or(0);
            vec![
                ns.clone(),
                status["node"]["nodeIP"].as_str().unwrap_or("-").into(),
                status["node"]["podCIDR"].as_str().unwrap_or("-").into(),
                crate::cluster::programmed_peers(&status).to_string() + &format!("/{peers}"),
                match status["node"]["ready"].as_bool() {
                    Some(true) => "ready".into(),
                    Some(false) => "not ready".into(),
                    None => "agent not answering".into(),
                },
            ]
        })
        .collect();
    print!("{}", table(&["NAMESPACE", "NODE IP", "POD CIDR", "PEERS", "STATUS"], &rows));
    Ok(())
}

/// Runs `command` inside a lab namespace: a node (`n1`), a pod (`n1-a`), `router` or `ext`,
/// or a full namespace name. Returns the command's exit code.
pub fn exec(target: &str, command: &[String]) -> Result<i32> {
    crate::require_root();
    let all = netns::list()?;
    let matches: Vec<&String> = all
        .iter()
        .filter(|n| n.starts_with(NS_PREFIX))
        .filter(|n| {
            *n == target
                || n.split_once('-').and_then(|(_, rest)| rest.split_once('-')).is_some_and(|(_, name)| name == target)
        })
        .collect();
    let ns = match matches.as_slice() {
        [one] => one.as_str(),
        [] => return Err(LabError::Other(format!("no lab namespace {target:?} (see `ip netns list`)"))),
        many => return Err(LabError::Other(format!("{target:?} is ambiguous: {many:?}; give the full name"))),
    };
    let (program, args) = command.split_first().ok_or_else(|| LabError::Other("no command given".into()))?;
    let status = Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .status()
        .map_err(|e| LabError::Other(format!("run {program}: {e}")))?;
    Ok(status.code().unwrap_or(1))
}
