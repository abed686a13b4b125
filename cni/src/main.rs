//! `weft`: the CNI plugin binary. stdout carries only the CNI result or error JSON.

use std::io::Write;
use std::process::ExitCode;

use weft_cni::commands::{Reply, run};
use weft_cni::reaper;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, link] = args.as_slice()
        && flag == reaper::REAP_ARG
    {
        return match reaper::reap(link) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        };
    }
    let (out, code) = match run(|k| std::env::var(k).ok(), std::io::stdin().lock()) {
        Reply::Success(out) => (out, ExitCode::SUCCESS),
        Reply::Failure(json) => (Some(json), ExitCode::FAILURE),
    };
    if let Some(out) = out {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{out}");
        let _ = stdout.flush();
    }
    code
}
