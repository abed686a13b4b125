//! Network sysctls of the caller's namespace (/proc/sys/net follows the opener's netns).

use std::fs;
use std::io;
use std::path::PathBuf;

use crate::underlay::Family;

fn path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

pub fn read(key: &str) -> io::Result<String> {
    Ok(fs::read_to_string(path(key))?.trim().to_string())
}

/// Sets `key` to `value` unless it already has it; returns whether it wrote.
pub fn ensure(key: &str, value: &str) -> io::Result<bool> {
    if read(key)? == value {
        return Ok(false);
    }
    write(key, value)?;
    Ok(true)
}

/// Sets `key` to `value` without reading it first: for a key whose current value is known to
/// differ (a new interface's default), where the read would be wasted.
pub fn write(key: &str, value: &str) -> io::Result<()> {
    fs::write(path(key), value).map_err(|e| io::Error::new(e.kind(), format!("set {key}={value}: {e}")))
}

/// The per-device key, e.g. `dev_key("rp_filter", "vxlan0")` → net.ipv4.conf.vxlan0.rp_filter.
pub fn dev_key(name: &str, dev: &str) -> String {
    // Device names may contain '.', which sysctl's dotted form cannot express; use the path form.
    format!("net/ipv4/conf/{dev}/{name}")
}

/// The per-device IPv6 key, e.g. net.ipv6.conf.cni0.accept_dad.
pub fn ipv6_dev_key(name: &str, dev: &str) -> String {
    format!("net/ipv6/conf/{dev}/{name}")
}

pub const IP_FORWARD: &str = "net/ipv4/ip_forward";
pub const IP6_FORWARD: &str = "net/ipv6/conf/all/forwarding";

/// The key that turns forwarding of one family on for the namespace.
pub fn forwarding_key(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => IP_FORWARD,
        Family::Ipv6 => IP6_FORWARD,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_proc_paths() {
        assert_eq!(path("net.ipv4.ip_forward"), PathBuf::from("/proc/sys/net/ipv4/ip_forward"));
        assert_eq!(path(&dev_key("rp_filter", "vxlan0")), PathBuf::from("/proc/sys/net/ipv4/conf/vxlan0/rp_filter"));
    }

    #[test]
    fn reads_a_real_key() {
        for family in Family::ALL {
            assert!(matches!(read(forwarding_key(family)).as_deref(), Ok("0" | "1")), "{family}");
        }
    }
}
