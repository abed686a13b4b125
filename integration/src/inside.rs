//! Running Rust code inside a lab namespace: on a short-lived thread that enters the namespace
//! and is joined, so the calling thread never changes namespace. Sockets the closure opens,
//! /proc/sys it writes and processes it spawns all belong to that namespace.

use std::fs::File;
use std::path::Path;

use crate::cmd::{LabError, Result};

/// Runs `f` on a thread inside the network namespace at `path` and returns its result.
pub fn inside<T, F>(path: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let ns =
        File::open(path).map_err(|e| LabError::Other(format!("open {}: {e}", path.display())))?;
    let shown = path.display().to_string();
    std::thread::spawn(move || -> Result<T> {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| LabError::Other(format!("enter {shown}: {e}")))?;
        Ok(f())
    })
    .join()
    .map_err(|_| LabError::Other(format!("thread inside {} panicked", path.display())))?
}
