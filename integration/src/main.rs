//! `weft-lab`: the lab's command line. Each subcommand lives in its own library module.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weft_lab::bench::Bench;
use weft_lab::dataplane::Helper;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "weft's multi-subnet lab: demo, end-to-end tests, benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Benchmarks.
    #[command(subcommand)]
    Bench(Bench),
    /// The overlay dataplane in the current namespace, JSON in and out (a test helper).
    #[command(subcommand, hide = true)]
    Dataplane(Helper),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Bench(bench) => bench.run(),
        Command::Dataplane(helper) => helper.run(),
    };
    match result {
        Ok(out) => {
            let _ = writeln!(std::io::stdout(), "{}", out.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "weft-lab: {e}");
            ExitCode::FAILURE
        }
    }
}
