//! Running external commands (ip, ping, nc, iperf3 …) with their output in the error.

use std::process::{Command, Output};

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command { cmd: String, status: String, stderr: String },
    #[error("cannot run `{cmd}`: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {secs:.1}s waiting for {what}")]
    Timeout { what: String, secs: f64 },
    #[error("{0}")]
    Other(String),
}

impl LabError {
    /// Any error, as its message.
    pub fn other(e: impl std::fmt::Display) -> LabError {
        LabError::Other(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, LabError>;

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs to completion; the output when it succeeded, an error with stderr otherwise.
pub fn output(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().map_err(|source| LabError::Spawn { cmd: describe(cmd), source })?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: describe(cmd),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// Runs to completion and returns stdout as text.
pub fn run(cmd: &mut Command) -> Result<String> {
    Ok(String::from_utf8_lossy(&output(cmd)?.stdout).into_owned())
}

/// `ip <args>` in the machine's namespace: only ever used with `-n <lab namespace>` or `netns`.
pub fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}
