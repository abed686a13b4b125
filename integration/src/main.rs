//! `weft-lab`: the multi-subnet lab, its demo and benchmarks.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weft_lab::bench;

#[derive(Parser)]
#[command(name = "weft-lab", version, about = "weft's multi-subnet lab: demo, explore, benchmark")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks that compare weft with a baseline in the same run.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Subcommand)]
enum Bench {
    /// ADD/DEL latency of weft vs the reference bridge + host-local plugins.
    Cni {
        /// Operations of each kind per plugin.
        #[arg(long, default_value_t = 40)]
        ops: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Bench(Bench::Cni { ops, json }) => bench::cni::run(ops).map(|b| {
            if json {
                println!("{}", serde_json::to_string_pretty(&b).expect("serializable"));
            } else {
                bench::cni::print(&b);
            }
        }),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-lab: {e}");
            ExitCode::FAILURE
        }
    }
}
