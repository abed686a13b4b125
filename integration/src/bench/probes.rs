//! `weft-lab bench probes`: what the agent's dataplane prober costs with many peers: CPU time of
//! the probing process and bytes it sends, per second. Runs the agent's own prober (raw ICMP
//! socket, rounds spread over the interval, the send budget) in a namespace of its own whose
//! N peer addresses are local, so every probe is answered by the kernel as a peer's would be.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use async_trait::async_trait;

use clap::Args as ClapArgs;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use weft_agent::probe::icmp::{Pinger, RawPinger};
use weft_agent::probe::{self, PodPath, Target};

use crate::cmd::{LabError, Result};
use crate::dataplane::runtime;
use crate::netns::{Netns, within};

#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// Peer counts, each measured in turn.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    pub peers: Vec<usize>,
    /// How long each count is measured.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
}

pub fn run(args: &Args) -> Result<String> {
    crate::require_root();
    if args.peers.iter().any(|n| *n == 0 || *n > 60_000) || args.seconds == 0 {
        return Err(LabError::Other("peers must be 1..=60000 and seconds at least 1".into()));
    }
    let mut out = String::from(
        "Dataplane prober: one process probing N peers (tunnel, full size 1450, underlay), 2 s configured interval\n",
    );
    let _ =
        writeln!(out, "{:>6}  {:>9}  {:>11}  {:>10}  {:>12}", "peers", "round", "CPU (core)", "sent kB/s", "probes/s");
    for &n in &args.peers {
        let ns = Netns::create(&format!("{}-probes", crate::unique_prefix()))?;
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        let batch: String = (0..n).map(|i| format!("address add {}/32 dev eth0\n", peer_ip(i))).collect();
        let file = std::env::temp_dir().join(format!("{}.ip", ns.name()));
        std::fs::write(&file, batch).map_err(LabError::other)?;
        ns.ip(&["-batch", &file.display().to_string()])?;
        let _ = std::fs::remove_file(&file);
        let seconds = args.seconds;
        let (round, cpu, bytes, probes) = within(&ns.path(), move || measure(n, seconds))??;
        let secs = seconds as f64;
        let _ = writeln!(
            out,
            "{n:>6}  {:>8.1}s  {:>10.2}%  {:>10.1}  {:>12.0}",
            round.as_secs_f64(),
            cpu.as_secs_f64() / secs * 100.0,
            bytes as f64 / secs / 1000.0,
            probes as f64 / secs
        );
    }
    Ok(out)
}

/// The i-th peer's address (also its "underlay" address: local, so the kernel answers).
fn peer_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + (i as u32) * 256)
}

/// Probes `n` peers for `seconds`: the round interval, CPU time used, bytes and probes sent.
fn measure(n: usize, seconds: u64) -> Result<(Duration, Duration, u64, u64)> {
    runtime()?.block_on(async {
        let pinger = RawPinger::open().map_err(LabError::other)?;
        let counting = Arc::new(Counting { inner: pinger, bytes: AtomicU64::new(0), probes: AtomicU64::new(0) });
        let targets: Vec<Target> = (0..n)
            .map(|i| Target {
                peer: format!("p{i}"),
                paths: vec![PodPath { tunnel: peer_ip(i).into(), peer_source: peer_ip(i).into() }],
                underlay: peer_ip(i).into(),
                full_size: 1450,
            })
            .collect();
        let bytes = targets.iter().map(|t| probe::round_bytes(t, [None])).sum();
        let round = probe::round_interval(Duration::from_secs(2), bytes);
        let (_tx, rx) = watch::channel(targets.into_iter().map(Arc::new).collect());
        let cancel = CancellationToken::new();
        let cpu_before = cpu_time();
        let (_results, task) = probe::spawn(counting.clone(), rx, Duration::from_secs(2), cancel.clone());
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        cancel.cancel();
        let _ = task.await;
        let cpu = cpu_time().saturating_sub(cpu_before);
        Ok((round, cpu, counting.bytes.load(Relaxed), counting.probes.load(Relaxed)))
    })
}

/// The real pinger, counting what it sends.
struct Counting {
    inner: RawPinger,
    bytes: AtomicU64,
    probes: AtomicU64,
}

#[async_trait]
impl Pinger for Counting {
    async fn ping(&self, dst: IpAddr, size: u16, timeout: Duration) -> Option<Duration> {
        self.bytes.fetch_add(u64::from(size), Relaxed);
        self.probes.fetch_add(1, Relaxed);
        self.inner.ping(dst, size, timeout).await
    }

    fn heard_from(&self, src: IpAddr) -> Option<tokio::time::Instant> {
        self.inner.heard_from(src)
    }
}

/// User plus system CPU time of this process so far.
fn cpu_time() -> Duration {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).expect("getrusage");
    let tv = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    tv(usage.user_time()) + tv(usage.system_time())
}
