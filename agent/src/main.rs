//! `weft-agent`: the node agent daemon and its operator commands.

use std::error::Error;
use std::process::ExitCode;

use clap::Parser;
use weft_agent::cli::{Cli, Command};
use weft_agent::gossip::keyfile;
use weft_agent::{commands, logging};

/// Prints an error with its chain of causes: the one place the binary talks to stderr itself.
#[expect(clippy::print_stderr, reason = "the binary's edge reports fatal errors")]
fn report(err: &dyn Error) {
    let mut text = format!("weft-agent: {err}");
    let mut source = err.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        // thiserror messages often embed their source already.
        if !text.contains(&message) {
            text.push_str(&format!(": {message}"));
        }
        source = cause.source();
    }
    eprintln!("{text}");
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = logging::init(cli.log_format, &cli.log_level) {
        report(&e);
        return ExitCode::FAILURE;
    }
    let result: Result<(), Box<dyn Error>> = match &cli.command {
        Command::Status(args) => commands::status::status(args).map_err(Into::into),
        Command::Diagnose(args) => commands::diagnose::diagnose(args).map_err(Into::into),
        Command::Run(args) => runtime()
            .map_err(Box::<dyn Error>::from)
            .and_then(|rt| rt.block_on(commands::run::run(args)).map_err(Into::into)),
        Command::Cleanup(args) => runtime()
            .map_err(Box::<dyn Error>::from)
            .and_then(|rt| rt.block_on(commands::cleanup::cleanup(args)).map_err(Into::into)),
        Command::Keygen => {
            println!("{}", keyfile::generate());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(e.as_ref());
            ExitCode::FAILURE
        }
    }
}
