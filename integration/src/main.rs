//! `weft-lab`: the multi-subnet lab, its demo and benchmarks.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use weft_lab::bench::Bench;
use weft_lab::dataplane::Helper;
use weft_lab::demo::DemoOptions;
use weft_lab::topology::Family;
use weft_lab::{demo, manage};

/// Counts allocations, for `bench memory` (a few atomic additions per allocation elsewhere).
#[global_allocator]
static ALLOC: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

#[derive(Parser)]
#[command(name = "weft-lab", version, about = "weft's multi-subnet lab: demo, explore, benchmark")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a lab, start agents, attach pods, check connectivity and source addresses, tear down.
    Demo(LabArgs),
    /// Build a lab with agents and pods and leave it running.
    Up(LabArgs),
    /// Remove every lab (namespaces named wl-…, and their files), also after a crash.
    Down,
    /// Show the agents of the running lab.
    Status,
    /// Run a command inside a lab namespace: a node (n1), a pod (n1-a), router or ext.
    Exec {
        target: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Benchmarks that compare weft with a target or a baseline in the same run.
    #[command(subcommand)]
    Bench(Bench),
    /// The overlay dataplane in the current namespace, JSON in and out (a test helper).
    #[command(subcommand, hide = true)]
    Dataplane(Helper),
}

#[derive(Args)]
struct LabArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Number of underlay subnets the nodes are spread over (round-robin).
    #[arg(long, default_value_t = 2)]
    subnets: usize,
    /// Pods per node.
    #[arg(long, default_value_t = 2)]
    pods: usize,
    /// Route same-subnet peers directly instead of through VXLAN.
    #[arg(long)]
    cross_subnet: bool,
    /// The underlay's address family, `ipv4` or `ipv6`.
    #[arg(long, default_value = "ipv4", value_parser = weft_lab::parse_family)]
    underlay: Family,
    /// Dual-stack pods: the agents get `--cluster-cidr 10.244.0.0/16,fd00:10:244::/56`, every pod
    /// an address of each family, and the checks run per family.
    #[arg(long)]
    dual_stack: bool,
    /// An IPv6-only cluster: IPv6 pods (`--cluster-cidr fd00:10:244::/56`) over the IPv6 underlay.
    #[arg(long, conflicts_with_all = ["dual_stack", "underlay"])]
    ipv6_only: bool,
    /// Leave the lab running afterwards (demo only; `weft-lab down` removes it).
    #[arg(long)]
    keep: bool,
}

impl LabArgs {
    fn options(&self) -> DemoOptions {
        DemoOptions {
            nodes: self.nodes,
            subnets: self.subnets,
            pods_per_node: self.pods,
            cross_subnet: self.cross_subnet,
            underlay: if self.ipv6_only { Family::Ipv6 } else { self.underlay },
            pod_families: match (self.dual_stack, self.ipv6_only) {
                (true, _) => Family::ALL.to_vec(),
                (_, true) => vec![Family::Ipv6],
                _ => vec![Family::Ipv4],
            },
            keep: self.keep,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Demo(args) => demo::run(&args.options()).map(|ok| if ok { 0 } else { 1 }),
        Command::Up(args) => manage::up(&args.options()).map(|()| 0),
        Command::Down => manage::down().map(|()| 0),
        Command::Status => manage::status().map(|()| 0),
        Command::Exec { target, command } => manage::exec(&target, &command),
        Command::Bench(bench) => bench.run().map(|out| println!("{}", out.trim_end())).map(|()| 0),
        Command::Dataplane(helper) => helper.run().map(|out| println!("{}", out.trim_end())).map(|()| 0),
    };
    match outcome {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("weft-lab: {e}");
            ExitCode::FAILURE
        }
    }
}
