//! Long-running children (agents, listeners, iperf3 servers) that die with their guard.

use std::process::{Child, Command};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cmd::{LabError, Result, describe};
use crate::wait;

#[derive(Debug)]
pub struct Process {
    child: Child,
    name: String,
}

impl Process {
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Process> {
        let child = cmd.spawn().map_err(|source| LabError::Spawn { cmd: describe(cmd), source })?;
        Ok(Process { child, name: name.to_string() })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn signal(&self, signal: Signal) -> Result<()> {
        kill(Pid::from_raw(self.child.id() as i32), signal)
            .map_err(|e| LabError::Other(format!("signal {signal} to {}: {e}", self.name)))
    }

    /// Whether it is still running (reaping it if it exited).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` and waits up to `limit` for the exit.
    pub fn stop(&mut self, signal: Signal, limit: Duration) -> Result<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Ok(status);
        }
        self.signal(signal)?;
        let child = &mut self.child;
        wait::until(&format!("{} to exit", self.name), limit, Duration::from_millis(10), || {
            child.try_wait().ok().flatten()
        })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.stop(Signal::SIGTERM, Duration::from_secs(3));
        }
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
