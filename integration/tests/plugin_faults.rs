//! The plugin under fire: a thousand ADDs and DELs from concurrent processes (never two on one
//! container at once, as the CNI spec requires of runtimes), some killed with SIGKILL at random
//! moments. Whatever was interrupted, no address is ever held twice, and GC (then DEL) leaves
//! nothing behind. Needs root.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{PluginLab, target};
use rand::RngExt;
use serde_json::json;

const OPS: usize = 1000;
const WORKERS: usize = 8;
const PODS: usize = 40;

#[test]
fn a_thousand_adds_and_dels_with_random_kills_leak_nothing_and_never_duplicate() {
    let lab = PluginLab::new();
    let conf = lab.conf("1.1.0", json!({}));
    let pods: Vec<_> = (0..PODS).map(|i| lab.pod(&format!("p{i}"))).collect();
    let targets: Vec<_> = pods.iter().enumerate().map(|(i, p)| target(&format!("c{i}"), p)).collect();
    let (done, killed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    // A runtime never runs two operations on one container at once (CNI spec): ADD records the
    // attachment before its veth exists and DEL forgets it after, which GC relies on, only then.
    let busy: Vec<Mutex<()>> = (0..PODS).map(|_| Mutex::new(())).collect();

    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| {
                let mut rng = rand::rng();
                while done.load(Ordering::Relaxed) < OPS {
                    let i = rng.random_range(0..PODS);
                    let Ok(_one_at_a_time) = busy[i].try_lock() else { continue };
                    if done.fetch_add(1, Ordering::Relaxed) >= OPS {
                        break;
                    }
                    let t = &targets[i];
                    let command = if rng.random_bool(0.5) { "ADD" } else { "DEL" };
                    let mut cmd = lab.rt.command("weft").unwrap();
                    cmd.env("CNI_COMMAND", command)
                        .env("CNI_CONTAINERID", &t.container_id)
                        .env("CNI_IFNAME", &t.ifname)
                        .env("CNI_NETNS", t.netns.as_ref().unwrap());
                    let mut child = lab.rt.spawn(&mut cmd).unwrap();
                    let _ = child.stdin.take().unwrap().write_all(conf.to_string().as_bytes());
                    if rng.random_bool(0.25) {
                        std::thread::sleep(Duration::from_micros(rng.random_range(0..4000)));
                        let _ = child.kill();
                        killed.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = child.wait_with_output();
                    assert_no_address_held_twice(&lab);
                }
            });
        }
    });
    eprintln!("{OPS} operations, {} killed with SIGKILL", killed.load(Ordering::Relaxed));
    assert!(killed.load(Ordering::Relaxed) > 100, "enough faults were injected");

    // The runtime's recovery after losing track (a restart): GC with nothing valid. Whatever a
    // kill interrupted (an ADD after its veth, a DEL between its requests, leaving the veth down
    // and off the bridge), no veth and no address may survive it.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    lab.call("GC", None, &gc).success().unwrap();
    assert!(lab.weft_links().is_empty(), "veths survived GC: {:?}", lab.weft_links());
    assert!(lab.store_entries("weft").is_empty(), "GC left {:?}", lab.store_entries("weft"));
    // Then DEL of whatever it still knows of is a harmless no-op.
    for t in &targets {
        lab.call("DEL", Some(t), &conf).success().unwrap();
    }
    assert!(lab.allocations().is_empty(), "leaked addresses: {:?}", lab.allocations());
    lab.assert_no_weft_links();
    let store: Vec<_> = std::fs::read_dir(lab.ipam_dir().join("weft"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "lock" && n != "last_reserved_ip")
        .collect();
    assert!(store.is_empty(), "stray files in the IPAM store: {store:?}");
    for pod in &pods {
        let links = pod.ip(&["-o", "link", "show"]).unwrap();
        assert_eq!(links.lines().count(), 1, "a pod kept an interface: {links}");
    }
}

/// The store never names one address twice, and no owner ever holds two addresses.
fn assert_no_address_held_twice(lab: &PluginLab) {
    let mut by_ip: HashMap<String, usize> = HashMap::new();
    let mut by_owner: HashMap<String, usize> = HashMap::new();
    for name in lab.allocations() {
        let (ip, owner) = name.split_once('@').unwrap();
        *by_ip.entry(ip.to_string()).or_default() += 1;
        *by_owner.entry(owner.to_string()).or_default() += 1;
    }
    assert!(by_ip.values().all(|n| *n == 1), "an address is held twice: {by_ip:?}");
    assert!(by_owner.values().all(|n| *n == 1), "an attachment holds two addresses: {by_owner:?}");
}
