//! Network namespaces owned by a guard: created on demand, deleted (with anything still running
//! inside) when the guard drops, also when a test fails.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sched::{CloneFlags, setns};

use crate::cmd::{self, LabError, Result};

#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace with its loopback up.
    pub fn create(name: &str) -> Result<Netns> {
        cmd::ip(&["netns", "add", name])?;
        let ns = Netns { name: name.to_string() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, what a runtime passes as CNI_NETNS.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        cmd::ip(&full)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `program args…` inside the namespace to completion; stdout on success.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        cmd::run(self.command(program).args(args))
    }

    /// Names of the namespace's network interfaces (without `@peer` suffixes).
    pub fn link_names(&self) -> Result<Vec<String>> {
        let out = self.ip(&["-o", "link", "show"])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or_default().to_string())
            .collect())
    }

    /// Writes a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run("sysctl", &["-qw", &format!("{key}={value}")]).map(drop)
    }

    /// Keeps the namespace after the guard drops (for `weft-lab up`).
    pub fn persist(self) {
        std::mem::forget(self);
    }

    /// Deletes every namespace whose name starts with `prefix`, killing what runs inside.
    pub fn delete_all_with_prefix(prefix: &str) -> Result<Vec<String>> {
        let mut deleted = Vec::new();
        for name in list()?.into_iter().filter(|n| n.starts_with(prefix)) {
            delete(&name);
            deleted.push(name);
        }
        Ok(deleted)
    }
}

/// Anything naming a network namespace file: a lab namespace, or one a runtime made (a
/// sandbox's `/proc/<pid>/ns/net`).
pub trait NsPath {
    fn ns_path(&self) -> PathBuf;
}

impl NsPath for Netns {
    fn ns_path(&self) -> PathBuf {
        self.path()
    }
}

impl NsPath for Path {
    fn ns_path(&self) -> PathBuf {
        self.to_path_buf()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

/// Runs `f` on a short-lived thread inside the network namespace at `path` and returns its result.
/// Sockets `f` opens, /proc/sys it writes and processes it spawns belong to that namespace; the
/// calling thread never changes namespace.
pub fn within<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let ns = File::open(path).map_err(|e| LabError::Other(format!("open {}: {e}", path.display())))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(|e| LabError::Other(format!("enter {}: {e}", path.display())))?;
            Ok(f())
        })
        .join()
        .map_err(|_| LabError::Other(format!("thread inside {} panicked", path.display())))?
    })
}

/// Names of all named network namespaces.
pub fn list() -> Result<Vec<String>> {
    let out = cmd::ip(&["netns", "list"])?;
    Ok(out.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect())
}

fn delete(name: &str) {
    if let Ok(pids) = cmd::ip(&["netns", "pids", name]) {
        for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
    let _ = cmd::ip(&["netns", "del", name]);
}
