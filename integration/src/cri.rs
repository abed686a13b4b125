//! A CRI client, the kubelet's side of the container runtime API (`runtime.v1`), over a runtime's
//! unix socket. Blocking calls: each runs on the client's own single-threaded tokio runtime.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    LinuxPodSandboxConfig, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest, PortMapping, Protocol,
    RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::cmd::{LabError, Result};

/// A pod as the kubelet describes it to the runtime.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// TCP hostPorts: (containerPort, hostPort).
    pub host_ports: Vec<(u16, u16)>,
    /// The cgroup the runtime puts the pod's cgroups under (cgroupfs: a path such as `/kubepods`).
    pub cgroup_parent: String,
}

impl PodSpec {
    fn config(&self) -> PodSandboxConfig {
        let ports = self.host_ports.iter().map(|&(container, host)| PortMapping {
            protocol: Protocol::Tcp.into(),
            container_port: container.into(),
            host_port: host.into(),
            host_ip: String::new(),
        });
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: self.name.clone(),
                uid: self.uid.clone(),
                namespace: self.namespace.clone(),
                attempt: 0,
            }),
            hostname: self.name.clone(),
            port_mappings: ports.collect(),
            linux: Some(LinuxPodSandboxConfig { cgroup_parent: self.cgroup_parent.clone(), ..Default::default() }),
            ..Default::default()
        }
    }
}

/// What `PodSandboxStatus` (verbose) says about a running sandbox.
#[derive(Debug, Clone)]
pub struct SandboxStatus {
    pub ip: String,
    /// The runtime's extra information (containerd: `info`, a JSON document with the pause pid).
    pub info: HashMap<String, String>,
}

#[derive(Debug)]
pub struct Cri {
    runtime: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

fn failed(what: &str) -> impl FnOnce(tonic::Status) -> LabError + '_ {
    move |s| LabError::Other(format!("CRI {what}: {} {}", s.code(), s.message()))
}

impl Cri {
    /// Connects to the runtime listening on `socket`.
    pub fn connect(socket: &Path) -> Result<Cri> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LabError::Other(format!("tokio runtime: {e}")))?;
        let path: PathBuf = socket.to_path_buf();
        let channel = runtime
            .block_on(
                // The URI is unused: every connection goes to the socket.
                Endpoint::from_static("http://[::]").connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
                })),
            )
            .map_err(|e| LabError::Other(format!("connect to {}: {e}", socket.display())))?;
        Ok(Cri { runtime, client: RuntimeServiceClient::new(channel) })
    }

    /// RunPodSandbox: the sandbox's id.
    pub fn run_pod_sandbox(&mut self, pod: &PodSpec) -> Result<String> {
        let request = RunPodSandboxRequest { config: Some(pod.config()), runtime_handler: String::new() };
        let reply = self.runtime.block_on(self.client.run_pod_sandbox(request)).map_err(failed("RunPodSandbox"))?;
        Ok(reply.into_inner().pod_sandbox_id)
    }

    pub fn pod_sandbox_status(&mut self, id: &str) -> Result<SandboxStatus> {
        let request = PodSandboxStatusRequest { pod_sandbox_id: id.to_string(), verbose: true };
        let reply =
            self.runtime.block_on(self.client.pod_sandbox_status(request)).map_err(failed("PodSandboxStatus"))?;
        let reply = reply.into_inner();
        let ip = reply.status.and_then(|s| s.network).map(|n| n.ip).unwrap_or_default();
        Ok(SandboxStatus { ip, info: reply.info })
    }

    pub fn stop_pod_sandbox(&mut self, id: &str) -> Result<()> {
        let request = StopPodSandboxRequest { pod_sandbox_id: id.to_string() };
        self.runtime.block_on(self.client.stop_pod_sandbox(request)).map_err(failed("StopPodSandbox")).map(drop)
    }

    pub fn remove_pod_sandbox(&mut self, id: &str) -> Result<()> {
        let request = RemovePodSandboxRequest { pod_sandbox_id: id.to_string() };
        self.runtime.block_on(self.client.remove_pod_sandbox(request)).map_err(failed("RemovePodSandbox")).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_spec_carries_its_metadata_and_host_ports() {
        let pod = PodSpec {
            name: "web".into(),
            namespace: "shop".into(),
            uid: "u1".into(),
            host_ports: vec![(80, 8080)],
            cgroup_parent: "/wl-1".into(),
        };
        let config = pod.config();
        let meta = config.metadata.unwrap();
        assert_eq!((meta.name.as_str(), meta.namespace.as_str(), meta.uid.as_str()), ("web", "shop", "u1"));
        let port = &config.port_mappings[0];
        assert_eq!((port.protocol, port.container_port, port.host_port), (Protocol::Tcp as i32, 80, 8080));
        assert_eq!(config.linux.unwrap().cgroup_parent, "/wl-1");
    }
}
