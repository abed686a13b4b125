//! The files the agent owns: the node state file and the CNI conflist (read by the plugin and
//! the runtime), and in the state dir its own lease and generation counter. All writes are
//! atomic (temporary file + rename), so readers never see a torn file.

use std::io;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::json;
use weft_cni::fsutil::write_atomic;
use weft_cni::state::{NodeState, STATE_FILE_NAME};
use weft_overlay::underlay::Family;

pub const CONFLIST_NAME: &str = "10-weft.conflist";
pub const NETWORK_NAME: &str = "weft";
/// The conflist's `cniVersion`: 1.0.0, which every current runtime reads (podman 4's libcni
/// cannot read 1.1.0 results); `cniVersions` offers 1.1.0 to runtimes that support it.
pub const CNI_VERSION: &str = "1.0.0";
pub const CNI_VERSIONS: [&str; 2] = ["1.0.0", "1.1.0"];
const LEASE_NAME: &str = "lease.json";
const LEASE6_NAME: &str = "lease-v6.json";
const GENERATION_NAME: &str = "generation";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub state_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    /// The plugin's IPAM store root (`dataDir`); the agent only points the plugin at it.
    pub ipam_dir: PathBuf,
}

impl Paths {
    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join(STATE_FILE_NAME)
    }

    pub fn conflist(&self) -> PathBuf {
        self.cni_conf_dir.join(CONFLIST_NAME)
    }

    /// The lease of one family's block: the IPv4 one where the previous release kept its only
    /// lease (so an upgrade and a downgrade both keep it), the IPv6 one beside it.
    pub fn lease(&self, family: Family) -> PathBuf {
        self.state_dir.join(match family {
            Family::Ipv4 => LEASE_NAME,
            Family::Ipv6 => LEASE6_NAME,
        })
    }

    pub fn generation(&self) -> PathBuf {
        self.state_dir.join(GENERATION_NAME)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {source}", .path.display())]
pub struct FileError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FileError {
    let path = path.to_path_buf();
    move |source| FileError { action, path, source }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err("create directory for", path))?;
    }
    write_atomic(path, bytes).map_err(err("write", path))
}

/// The conflist: the weft plugin, optionally followed by portmap for hostPort.
pub fn conflist(paths: &Paths, portmap: bool) -> serde_json::Value {
    let mut plugins = vec![json!({
        "type": "weft",
        "stateFile": paths.state_file(),
        "dataDir": paths.ipam_dir,
    })];
    if portmap {
        plugins.push(json!({"type": "portmap", "capabilities": {"portMappings": true}}));
    }
    json!({"cniVersion": CNI_VERSION, "cniVersions": CNI_VERSIONS, "name": NETWORK_NAME, "plugins": plugins})
}

pub fn write_conflist(paths: &Paths, portmap: bool) -> Result<(), FileError> {
    let mut bytes = serde_json::to_vec_pretty(&conflist(paths, portmap)).expect("json value");
    bytes.push(b'\n');
    write(&paths.conflist(), &bytes)
}

pub fn write_node_state(path: &Path, state: &NodeState) -> Result<(), FileError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err("create directory for", path))?;
    }
    state.write(path).map_err(err("write", path))
}

/// Removes a file; a file that is not there is fine. Returns whether it was there.
pub fn remove(path: &Path) -> Result<bool, FileError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(err("remove", path)(e)),
    }
}

/// A PodCIDR the node held, kept so that a restart holds it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    #[serde(rename = "podCIDR")]
    pub pod_cidr: IpNet,
    /// When it was first claimed (ms since the Unix epoch): the claim's rank.
    pub since: u64,
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: IpNet,
}

pub fn read_lease(path: &Path) -> Result<Option<Lease>, FileError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err("read", path)(e)),
    };
    parse_lease(&bytes).map(Some).map_err(|e| err("parse", path)(io::Error::new(io::ErrorKind::InvalidData, e)))
}

/// Decodes a lease file's content. Whether the lease fits the cluster is
/// [`crate::agent::initial_claim`]'s decision.
pub fn parse_lease(bytes: &[u8]) -> Result<Lease, serde_json::Error> {
    serde_json::from_slice(bytes)
}

pub fn write_lease(path: &Path, lease: &Lease) -> Result<(), FileError> {
    let mut bytes = serde_json::to_vec_pretty(lease).expect("lease serializes");
    bytes.push(b'\n');
    write(path, &bytes)
}

/// The next gossip generation: strictly above the last one used here, and at least the wall
/// clock in ms, so it keeps increasing even if this file is lost or the clock steps back.
/// Restarting with a used generation would leave peers holding the old keys for good.
pub fn next_generation(path: &Path, now_ms: u64) -> Result<u64, FileError> {
    let last = match std::fs::read_to_string(path) {
        Ok(s) => s.trim().parse::<u64>().ok(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(err("read", path)(e)),
    };
    let next = last.map_or(now_ms, |l| now_ms.max(l + 1));
    write(path, format!("{next}\n").as_bytes())?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir() -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("weft-agent-files-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn paths(root: &Path) -> Paths {
        Paths { state_dir: root.join("run"), cni_conf_dir: root.join("net.d"), ipam_dir: root.join("ipam") }
    }

    #[test]
    fn conflist_points_the_plugin_at_the_state_file_and_ipam_dir() {
        let p = paths(Path::new("/x"));
        let v = conflist(&p, false);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["cniVersions"], json!(["1.0.0", "1.1.0"]));
        assert_eq!(v["name"], "weft");
        assert_eq!(v["plugins"].as_array().unwrap().len(), 1);
        assert_eq!(v["plugins"][0]["type"], "weft");
        assert_eq!(v["plugins"][0]["stateFile"], "/x/run/node.json");
        assert_eq!(v["plugins"][0]["dataDir"], "/x/ipam");
        let v = conflist(&p, true);
        assert_eq!(v["plugins"][1]["type"], "portmap");
        assert_eq!(v["plugins"][1]["capabilities"]["portMappings"], true);
    }

    #[test]
    fn files_are_written_into_missing_directories_and_removed() {
        let root = tempdir();
        let p = paths(&root);
        write_conflist(&p, false).unwrap();
        let read: serde_json::Value = serde_json::from_slice(&std::fs::read(p.conflist()).unwrap()).unwrap();
        assert_eq!(read, conflist(&p, false));
        assert!(remove(&p.conflist()).unwrap());
        assert!(!remove(&p.conflist()).unwrap());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn leases_round_trip_and_a_missing_lease_is_none() {
        let root = tempdir();
        let p = paths(&root);
        assert_eq!(read_lease(&p.lease(Family::Ipv4)).unwrap(), None);
        let lease = Lease {
            pod_cidr: "10.244.3.0/24".parse().unwrap(),
            since: 17,
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        };
        write_lease(&p.lease(Family::Ipv4), &lease).unwrap();
        assert_eq!(read_lease(&p.lease(Family::Ipv4)).unwrap(), Some(lease));
        std::fs::write(p.lease(Family::Ipv4), b"{").unwrap();
        assert!(read_lease(&p.lease(Family::Ipv4)).is_err());
        // The IPv6 block's lease is a file of its own; the IPv4 one keeps the previous name.
        let v6 = Lease {
            pod_cidr: "fd00:10:244:3::/64".parse().unwrap(),
            since: 18,
            cluster_cidr: "fd00:10:244::/56".parse().unwrap(),
        };
        write_lease(&p.lease(Family::Ipv6), &v6).unwrap();
        assert_eq!(read_lease(&p.lease(Family::Ipv6)).unwrap(), Some(v6));
        assert!(p.lease(Family::Ipv4).ends_with("lease.json"));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn generations_strictly_increase_even_when_the_clock_goes_back() {
        let root = tempdir();
        let p = paths(&root);
        assert_eq!(next_generation(&p.generation(), 1000).unwrap(), 1000);
        assert_eq!(next_generation(&p.generation(), 1000).unwrap(), 1001);
        assert_eq!(next_generation(&p.generation(), 5).unwrap(), 1002);
        assert_eq!(next_generation(&p.generation(), 9000).unwrap(), 9000);
        std::fs::remove_dir_all(root).unwrap();
    }
}
