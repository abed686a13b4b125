//! podman with its CNI backend, as a real runtime: it drives plugins through libcni like
//! containerd and cri-o do. Run inside a node namespace with `nsenter` (not `ip netns exec`,
//! which remounts /sys and hides the cgroup mount runc needs).

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::{self, LabError, Result};

/// A private podman setup: containers.conf, CNI config dir and a busybox root filesystem.
#[derive(Debug)]
pub struct Podman {
    pub dir: PathBuf,
    conf: PathBuf,
    rootfs: PathBuf,
}

impl Podman {
    /// Prepares `dir` for a network whose conflist is `conflist`, with plugins from `plugin_dirs`.
    pub fn new(dir: &Path, conflist: &serde_json::Value, plugin_dirs: &[PathBuf]) -> Result<Podman> {
        let io = |what: &str, e: std::io::Error| LabError::Other(format!("{what}: {e}"));
        let net = dir.join("net.d");
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(net.clone()).map_err(|e| io("create net.d", e))?;
        std::fs::create_dir_all(rootfs.join("bin")).map_err(|e| io("create rootfs", e))?;
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
            .map_err(|e| io("copy /bin/busybox (package busybox-static)", e))?;
        for tool in ["sh", "ip", "ping", "nc", "wget", "cat", "sleep"] {
            let link = rootfs.join("bin").join(tool);
            if !link.exists() {
                symlink("busybox", &link).map_err(|e| io("symlink busybox", e))?;
            }
        }
        std::fs::write(net.join("10-weft.conflist"), conflist.to_string()).map_err(|e| io("write conflist", e))?;
        let dirs: Vec<String> = plugin_dirs.iter().map(|d| format!("{:?}", d.display().to_string())).collect();
        let conf = dir.join("containers.conf");
        let text = format!(
            "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [{}]\nnetwork_config_dir = {:?}\n",
            dirs.join(", "),
            net.display().to_string()
        );
        std::fs::write(&conf, text).map_err(|e| io("write containers.conf", e))?;
        Ok(Podman { dir: dir.to_path_buf(), conf, rootfs })
    }

    /// `podman run --rm` of a busybox shell command on `network`, inside the node namespace.
    pub fn run(&self, node_netns: &Path, network: &str, name: &str, script: &str) -> Result<String> {
        cmd::run(self.command(node_netns, network, name, "--rm").args(shell(script)))
    }

    /// The same as a detached container (for long-running pods); stop it with [`Podman::rm`].
    pub fn start(&self, node_netns: &Path, network: &str, name: &str, script: &str) -> Result<String> {
        cmd::run(self.command(node_netns, network, name, "--detach").args(shell(script)))
    }

    pub fn rm(&self, node_netns: &Path, name: &str) -> Result<()> {
        let mut c = self.base(node_netns);
        cmd::run(c.args(["rm", "-f", "-t", "0", name])).map(drop)
    }

    /// `podman run <mode> …`; everything after the rootfs is the container's command.
    fn command(&self, node_netns: &Path, network: &str, name: &str, mode: &str) -> Command {
        let mut c = self.base(node_netns);
        c.args(["run", mode, "--name", name, "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]);
        c.args(["--network", network, "--rootfs"]).arg(&self.rootfs);
        c
    }

    fn base(&self, node_netns: &Path) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", node_netns.display()));
        c.args(["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
        c.env("CONTAINERS_CONF", &self.conf);
        c
    }
}

/// The container's command line: a busybox shell script. `--rootfs` takes the image position, so
/// the command follows directly.
fn shell(script: &str) -> [&str; 3] {
    ["/bin/sh", "-c", script]
}
