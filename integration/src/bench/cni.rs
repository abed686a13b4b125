//! `weft-lab bench cni`: ADD and DEL latency of `weft` against the reference bridge +
//! host-local plugins, and of dual-stack `weft` against IPv4-only `weft`, through the same
//! runtime driver, in one run. Each side gets its own node namespace; operations alternate
//! between the sides so machine noise hits all alike.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use super::stats::Summary;
use crate::cmd::Result;
use crate::cni::{PluginPath, Runtime, Target};
use crate::netns::Netns;
use crate::wait;

#[derive(Debug, Serialize)]
pub struct CniBench {
    pub ops: usize,
    /// The driver starting `weft VERSION`: process start-up, the floor under every operation.
    pub spawn_floor: Summary,
    pub weft_add: Summary,
    pub weft_del: Summary,
    /// DEL returned, until the kernel finished removing the veth pair (weft's detached reaper).
    pub weft_del_until_gone: Summary,
    pub reference_add: Summary,
    pub reference_del: Summary,
    pub add_speedup: f64,
    pub del_speedup: f64,
    /// The same weft with an IPv4 and an IPv6 PodCIDR: one address of each family per pod.
    pub dual_add: Summary,
    pub dual_del: Summary,
    /// Dual-stack ADD over IPv4-only ADD (goal: at most 1.10), at the median and at p99.
    pub dual_add_ratio_median: f64,
    pub dual_add_ratio_p99: f64,
}

struct Side {
    node: Netns,
    rt: Runtime,
    plugin: &'static str,
    conf: Value,
    pods: Vec<Netns>,
}

impl Side {
    fn new(prefix: &str, tag: &str, plugin: &'static str, conf: Value, ops: usize) -> Result<Side> {
        let node = Netns::create(&format!("{prefix}-{tag}"))?;
        let rt = Runtime::new(PluginPath::with_reference_plugins(), &node.path());
        let pods = (0..ops).map(|i| Netns::create(&format!("{prefix}-{tag}-p{i}"))).collect::<Result<_>>()?;
        Ok(Side { node, rt, plugin, conf, pods })
    }

    fn target(&self, i: usize) -> Target {
        Target::new(&format!("bench{i}"), &self.pods[i].path(), "eth0")
    }

    fn add(&self, i: usize) -> Result<(Duration, Value)> {
        let reply = self.rt.exec(self.plugin, "ADD", Some(&self.target(i)), &self.conf)?;
        Ok((reply.elapsed, reply.result()?))
    }

    fn del(&self, i: usize, prev: &Value) -> Result<Duration> {
        let mut conf = self.conf.clone();
        conf["prevResult"] = prev.clone();
        let reply = self.rt.exec(self.plugin, "DEL", Some(&self.target(i)), &conf)?;
        reply.success()?;
        Ok(reply.elapsed)
    }

    /// Whether a veth cut off by DEL is still waiting for the reaper.
    fn has_tombstone(&self) -> bool {
        self.node
            .link_names()
            .map(|names| names.iter().any(|n| n.starts_with(weft_cni::names::TOMBSTONE_PREFIX)))
            .unwrap_or(true)
    }
}

pub fn run(ops: usize) -> Result<CniBench> {
    crate::require_root();
    let prefix = crate::unique_prefix();
    let dir = crate::topology::lab_dir(&prefix);
    let weft_conf = json!({"cniVersion": "1.0.0", "name": "bench", "type": "weft", "podCIDR": "10.244.20.0/24",
                           "mtu": 1450, "dataDir": dir.join("weft-ipam")});
    let dual_conf = json!({"cniVersion": "1.0.0", "name": "bench", "type": "weft",
                           "podCIDR": "10.244.22.0/24,fd00:10:244:22::/64", "mtu": 1450, "dataDir": dir.join("dual-ipam")});
    let reference_conf = json!({"cniVersion": "1.0.0", "name": "bench", "type": "bridge", "bridge": "cni0",
        "isGateway": true, "mtu": 1450,
        "ipam": {"type": "host-local", "subnet": "10.244.21.0/24", "dataDir": dir.join("host-local")}});
    let result = (|| {
        let weft = Side::new(&prefix, "weft", "weft", weft_conf, ops)?;
        let reference = Side::new(&prefix, "ref", "bridge", reference_conf, ops)?;
        let dual = Side::new(&prefix, "dual", "weft", dual_conf, ops)?;
        // Warm-up: creates the bridges and faults the binaries into the page cache.
        for side in [&weft, &reference, &dual] {
            let (_, prev) = side.add(0)?;
            side.del(0, &prev)?;
        }
        let floor = (0..ops)
            .map(|_| Ok(weft.rt.exec("weft", "VERSION", None, &json!({"cniVersion": "1.0.0"}))?.elapsed))
            .collect::<Result<Vec<_>>>()?;
        std::thread::sleep(Duration::from_millis(100));
        let (mut weft_add, mut ref_add, mut weft_results, mut ref_results) = (vec![], vec![], vec![], vec![]);
        let (mut dual_add, mut dual_results) = (vec![], vec![]);
        for i in 0..ops {
            let (t, r) = weft.add(i)?;
            weft_add.push(t);
            weft_results.push(r);
            let (t, r) = dual.add(i)?;
            dual_add.push(t);
            dual_results.push(r);
            let (t, r) = reference.add(i)?;
            ref_add.push(t);
            ref_results.push(r);
        }
        let (mut weft_del, mut weft_gone, mut ref_del, mut dual_del) = (vec![], vec![], vec![], vec![]);
        for i in 0..ops {
            let start = Instant::now();
            weft_del.push(weft.del(i, &weft_results[i])?);
            wait::until("weft's reaper", Duration::from_secs(5), Duration::from_micros(200), || {
                (!weft.has_tombstone()).then_some(())
            })?;
            weft_gone.push(start.elapsed());
            dual_del.push(dual.del(i, &dual_results[i])?);
            ref_del.push(reference.del(i, &ref_results[i])?);
        }
        let (wa, wd, ra, rd) =
            (Summary::of(&weft_add), Summary::of(&weft_del), Summary::of(&ref_add), Summary::of(&ref_del));
        let da = Summary::of(&dual_add);
        Ok(CniBench {
            ops,
            spawn_floor: Summary::of(&floor),
            weft_add: wa,
            weft_del: wd,
            weft_del_until_gone: Summary::of(&weft_gone),
            reference_add: ra,
            reference_del: rd,
            add_speedup: ra.median_ms / wa.median_ms,
            del_speedup: rd.median_ms / wd.median_ms,
            dual_add: da,
            dual_del: Summary::of(&dual_del),
            dual_add_ratio_median: da.median_ms / wa.median_ms,
            dual_add_ratio_p99: da.p99_ms / wa.p99_ms,
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Operations of each kind per plugin.
    #[arg(long, default_value_t = 40)]
    pub ops: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs the benchmark and renders it as a table or JSON.
pub fn report(args: &Args) -> Result<String> {
    let b = run(args.ops)?;
    if args.json {
        return Ok(serde_json::to_string_pretty(&b).expect("serializable"));
    }
    Ok(table(&b))
}

fn table(b: &CniBench) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "CNI latency, {} sequential ops each, same driver (spawn, config on stdin)", b.ops);
    let _ = writeln!(out, "{:<34} {:>9} {:>9} {:>9} {:>9}", "", "median", "p90", "p99", "max");
    for (name, s) in [
        ("process start-up floor (VERSION)", &b.spawn_floor),
        ("weft ADD", &b.weft_add),
        ("weft ADD dual-stack", &b.dual_add),
        ("bridge+host-local ADD", &b.reference_add),
        ("weft DEL", &b.weft_del),
        ("weft DEL until veth gone (reaper)", &b.weft_del_until_gone),
        ("weft DEL dual-stack", &b.dual_del),
        ("bridge+host-local DEL", &b.reference_del),
    ] {
        let (median, p90, p99, max) = (s.median_ms, s.p90_ms, s.p99_ms, s.max_ms);
        let _ = writeln!(out, "{name:<34} {median:>7.2}ms {p90:>7.2}ms {p99:>7.2}ms {max:>7.2}ms");
    }
    let _ = writeln!(
        out,
        "speed-up (median): ADD {:.1}x (target >= 5x), DEL {:.1}x (target >= 8x)",
        b.add_speedup, b.del_speedup
    );
    let _ = writeln!(
        out,
        "dual-stack ADD / IPv4-only ADD: median {:.2}, p99 {:.2} (goal <= 1.10)",
        b.dual_add_ratio_median, b.dual_add_ratio_p99
    );
    out
}
