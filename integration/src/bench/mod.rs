//! `weft-lab bench …`: benchmarks, one module each.

pub mod dataplane;

use clap::Subcommand;

use crate::cmd::Result;

#[derive(Debug, Clone, Subcommand)]
pub enum Bench {
    /// Apply latency of the overlay dataplane with many peers, inside a namespace.
    Dataplane(dataplane::Args),
}

impl Bench {
    /// Runs the benchmark; the report to print.
    pub fn run(self) -> Result<String> {
        match self {
            Bench::Dataplane(args) => dataplane::run(&args),
        }
    }
}
