//! `weft-lab bench …`: measurements that compare weft with a target or a baseline in one run.

pub mod agent_log;
pub mod cni;
pub mod convergence;
pub mod dataplane;
pub mod flannel;
pub mod membership;
pub mod memory;
pub mod probes;
pub mod restart;
pub mod scale;
pub mod stats;
pub mod throughput;

use clap::Subcommand;

use crate::cmd::Result;

#[derive(Debug, Clone, Subcommand)]
pub enum Bench {
    /// ADD/DEL latency of weft vs the reference bridge + host-local plugins.
    Cni(cni::Args),
    /// Join and withdrawal times of real agents in a lab (kernel routes on every peer).
    Convergence(convergence::Args),
    /// Apply latency of the overlay dataplane with many peers, inside a namespace.
    Dataplane(dataplane::Args),
    /// Gossip membership of N nodes in one process on a virtual clock: join, crash, traffic.
    Membership(membership::Args),
    /// Where the agent's heap goes per peer, component by component, for N synthetic peers.
    Memory(memory::Args),
    /// What the dataplane prober costs with many peers: CPU and bytes sent per second.
    Probes(probes::Args),
    /// A rolling restart of every agent in a lab: one node's gossip traffic and members before and after.
    Restart(restart::Args),
    /// One real agent among N simulated gossip peers: time to program, traffic, CPU, memory.
    Scale(scale::Args),
    /// iperf3 pod-to-pod throughput through weft against a routed underlay and a flannel-style VXLAN.
    Throughput(throughput::Args),
}

impl Bench {
    /// Runs the benchmark; the report to print.
    pub fn run(self) -> Result<String> {
        match self {
            Bench::Cni(args) => cni::report(&args),
            Bench::Convergence(args) => convergence::run(&args),
            Bench::Dataplane(args) => dataplane::run(&args),
            Bench::Membership(args) => membership::run(&args),
            Bench::Memory(args) => memory::run(&args),
            Bench::Probes(args) => probes::run(&args),
            Bench::Restart(args) => restart::run(&args),
            Bench::Scale(args) => scale::run(&args),
            Bench::Throughput(args) => throughput::run(&args),
        }
    }
}
