//! containerd 1.6 (Debian's) as a node's runtime, driven through CRI like the kubelet drives it:
//! one instance per lab node, inside the node's namespace, with its own root, state, socket,
//! runc root and config, and a sandbox image imported from a tarball (nothing can be pulled).

use std::fs::File;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::cmd::{self, LabError, Result};
use crate::cri::{Cri, PodSpec, SandboxStatus};
use crate::netns;
use crate::process::Process;
use crate::wait;

/// The CRI plugin's containerd namespace.
const NAMESPACE: &str = "k8s.io";
/// Where containerd 1.6 puts shim sockets, whatever its state dir (not configurable).
const SHIM_SOCKETS: &str = "/run/containerd/s";
/// Where cgroup hierarchies are mounted (v1: one per controller under it; v2: it).
const CGROUPS: &str = "/sys/fs/cgroup";
/// libcni's cache of results, which containerd 1.6's CRI does not let one move.
const CNI_RESULTS: &str = "/var/lib/cni/results";

/// Where a node's containerd finds its CNI configuration and plugins.
#[derive(Debug, Clone)]
pub struct CniSetup {
    pub conf_dir: PathBuf,
    /// Every plugin the conflist names, in one directory (CRI takes one `bin_dir`).
    pub bin_dir: PathBuf,
}

/// A running containerd; dropping it removes every sandbox it ran, stops it and deletes its files.
#[derive(Debug)]
pub struct Containerd {
    dir: PathBuf,
    socket: PathBuf,
    sandboxes: Vec<String>,
    cgroup_parents: Vec<String>,
    cri: Option<Cri>,
    process: Option<Process>,
}

/// containerd's config.toml: everything under `dir`, cgroupfs, overlayfs, CNI from `cni`.
pub fn config(dir: &Path, cni: &CniSetup, sandbox_image: &str) -> String {
    let d = |name: &str| dir.join(name).display().to_string();
    format!(
        r#"version = 2
root = {root:?}
state = {state:?}
# Nothing outside the instance's own directory: no /opt/containerd, no other snapshotters.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = {socket:?}
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {sandbox_image:?}
  # runc fails to set oom_score_adj without CAP_SYS_RESOURCE, which this machine lacks.
  restrict_oom_score_adj = true
  # Sandbox namespaces under the state dir, not as cni-* entries in /run/netns.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = {runc:?}
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {bin:?}
    conf_dir = {conf:?}
    max_conf_num = 1
"#,
        root = d("root"),
        state = d("state"),
        socket = d("containerd.sock"),
        runc = d("runc"),
        bin = cni.bin_dir.display().to_string(),
        conf = cni.conf_dir.display().to_string(),
    )
}

/// The shim socket containerd 1.6 makes for a task: sha256 of "<containerd address>/<namespace>/<id>".
pub fn shim_socket(containerd_socket: &Path, id: &str) -> PathBuf {
    let key = containerd_socket.join(NAMESPACE).join(id);
    PathBuf::from(SHIM_SOCKETS).join(format!("{:x}", Sha256::digest(key.as_os_str().as_encoded_bytes())))
}

/// Makes `dir` a CNI bin dir: a symlink to each of `plugins` (the first of a name wins).
pub fn link_plugins(dir: &Path, plugins: &[PathBuf]) -> Result<()> {
    let io = |what: String| move |e: std::io::Error| LabError::Other(format!("{what}: {e}"));
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    for plugin in plugins {
        let name = plugin.file_name().ok_or_else(|| LabError::Other(format!("{} names no file", plugin.display())))?;
        let link = dir.join(name);
        if !link.exists() {
            symlink(plugin, &link).map_err(io(format!("link {}", link.display())))?;
        }
    }
    Ok(())
}

impl Containerd {
    /// Starts containerd inside the namespace at `node_netns`, with its files in `dir`, and
    /// imports `image` (an image-layout tarball) as its sandbox image `image_name`.
    pub fn start(node_netns: &Path, dir: &Path, cni: &CniSetup, image_name: &str, image: &[u8]) -> Result<Containerd> {
        let io = |what: &str, e: std::io::Error| LabError::Other(format!("{what} in {}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(|e| io("create", e))?;
        let conf = dir.join("config.toml");
        std::fs::write(&conf, config(dir, cni, image_name)).map_err(|e| io("write config.toml", e))?;
        let log = File::create(dir.join("containerd.log")).map_err(|e| io("create containerd.log", e))?;
        let log2 = log.try_clone().map_err(|e| io("containerd.log", e))?;
        let mut command = Command::new("containerd");
        command.arg("--config").arg(&conf).stdin(Stdio::null()).stdout(log).stderr(log2);
        let process = netns::within(node_netns, || Process::spawn("containerd", &mut command))??;
        let socket = dir.join("containerd.sock");
        let mut runtime = Containerd {
            dir: dir.to_path_buf(),
            socket: socket.clone(),
            sandboxes: Vec::new(),
            cgroup_parents: Vec::new(),
            cri: None,
            process: Some(process),
        };
        wait::until("containerd's socket", Duration::from_secs(15), Duration::from_millis(50), || {
            socket.exists().then_some(())
        })?;
        let tarball = dir.join("sandbox-image.tar");
        std::fs::write(&tarball, image).map_err(|e| io("write the image", e))?;
        cmd::run(
            Command::new("ctr").arg("--address").arg(&socket).args(["-n", NAMESPACE, "images", "import"]).arg(&tarball),
        )?;
        runtime.cri = Some(Cri::connect(&socket)?);
        Ok(runtime)
    }

    fn cri(&mut self) -> &mut Cri {
        self.cri.as_mut().expect("connected in start")
    }

    /// RunPodSandbox, remembered so that drop removes it and the pod's `cgroup_parent`.
    pub fn run_pod_sandbox(&mut self, pod: &PodSpec) -> Result<String> {
        let id = self.cri().run_pod_sandbox(pod)?;
        if !self.cgroup_parents.contains(&pod.cgroup_parent) {
            self.cgroup_parents.push(pod.cgroup_parent.clone());
        }
        self.sandboxes.push(id.clone());
        Ok(id)
    }

    pub fn pod_sandbox_status(&mut self, id: &str) -> Result<SandboxStatus> {
        self.cri().pod_sandbox_status(id)
    }

    /// StopPodSandbox then RemovePodSandbox, as the kubelet does when a pod is deleted.
    pub fn stop_and_remove(&mut self, id: &str) -> Result<()> {
        self.cri().stop_pod_sandbox(id)?;
        self.cri().remove_pod_sandbox(id)
    }

    /// The files containerd left outside its directory for sandbox `id`.
    pub fn leftovers(&self, id: &str) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(CNI_RESULTS)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(id))
            .map(|e| e.path())
            .collect();
        found.push(shim_socket(&self.socket, id));
        found.retain(|p| p.exists());
        found
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let ids = std::mem::take(&mut self.sandboxes);
        if let Some(cri) = self.cri.as_mut() {
            for id in &ids {
                let _ = cri.stop_pod_sandbox(id).and_then(|()| cri.remove_pod_sandbox(id));
            }
        }
        self.cri = None;
        self.process = None;
        for id in &ids {
            for path in self.leftovers(id) {
                let _ = std::fs::remove_file(path);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // Empty by now; removing a directory fails while anything is in it, so this never
        // takes what another runtime uses.
        let hierarchies = std::fs::read_dir(CGROUPS).into_iter().flatten().filter_map(|e| e.ok()).map(|e| e.path());
        for hierarchy in hierarchies.chain([PathBuf::from(CGROUPS)]) {
            for parent in &self.cgroup_parents {
                let _ = std::fs::remove_dir(hierarchy.join(parent.trim_start_matches('/')));
            }
        }
        let _ = std::fs::remove_dir(SHIM_SOCKETS).and_then(|()| std::fs::remove_dir("/run/containerd"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_keeps_every_path_under_the_instance_and_names_the_cni_dirs() {
        let cni = CniSetup { conf_dir: "/lab/n1/net.d".into(), bin_dir: "/lab/n1/cni-bin".into() };
        let text = config(Path::new("/lab/n1/ctrd"), &cni, "weft.test/pause:1");
        for line in [
            "root = \"/lab/n1/ctrd/root\"",
            "state = \"/lab/n1/ctrd/state\"",
            "address = \"/lab/n1/ctrd/containerd.sock\"",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        assert!(text.contains("Root = \"/lab/n1/ctrd/runc\""));
        assert!(text.contains("bin_dir = \"/lab/n1/cni-bin\"") && text.contains("conf_dir = \"/lab/n1/net.d\""));
        assert!(text.contains("sandbox_image = \"weft.test/pause:1\""));
        assert!(text.contains("netns_mounts_under_state_dir = true") && text.contains("restrict_oom_score_adj = true"));
    }

    #[test]
    fn the_shim_socket_is_named_by_the_hash_of_address_namespace_and_id() {
        let path = shim_socket(Path::new("/run/containerd/containerd.sock"), "abc");
        let expected = format!("{:x}", Sha256::digest(b"/run/containerd/containerd.sock/k8s.io/abc"));
        assert_eq!(path, Path::new(SHIM_SOCKETS).join(expected));
    }
}
