//! The lab: nodes, a router and pods as network namespaces on one machine, driven with the real
//! `weft` plugin and `weft-agent`. Shared by `weft-lab` (demo, benchmarks) and the end-to-end tests.
//!
//! Everything lives in namespaces named `wl-<run id>-…`; the machine's own namespace is never touched.

pub mod bench;
pub mod bins;
pub mod cluster;
pub mod cmd;
pub mod cni;
pub mod containerd;
pub mod cri;
pub mod dataplane;
pub mod demo;
pub mod doctext;
pub mod http;
pub mod manage;
pub mod netns;
pub mod oci;
pub mod pod;
pub mod podman;
pub mod probe;
pub mod process;
pub mod report;
pub mod swarm;
pub mod topology;
pub mod wait;

pub use cmd::LabError;
pub use netns::Netns;

/// Prefix of every namespace the lab creates; `weft-lab down` removes all of them.
pub const NS_PREFIX: &str = "wl-";

/// A fresh run id, so parallel tests and labs never collide: `wl-3fa9c0`.
pub fn unique_prefix() -> String {
    format!("{NS_PREFIX}{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// `ipv4` or `ipv6`: a lab underlay family as the command line names it.
pub fn parse_family(s: &str) -> Result<topology::Family, String> {
    topology::Family::ALL.into_iter().find(|f| f.as_str() == s).ok_or_else(|| format!("{s:?} is not ipv4 or ipv6"))
}

/// Tests and the lab change network namespaces: fail clearly, never skip, without root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this needs root (it creates network namespaces); run it with sudo or as root"
    );
}
