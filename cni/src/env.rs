//! The CNI_* environment a runtime sets, validated as the spec requires.

use std::path::PathBuf;

use crate::error::{CniError, Code};
use weft_overlay::rules::check_ifname;

use crate::names::validate_id;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

/// The attachment an ADD, DEL or CHECK is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
    /// Required for ADD and CHECK; DEL works without it.
    pub netns: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    /// Present for ADD, DEL and CHECK.
    pub attachment: Option<Attachment>,
    /// CNI_PATH split into directories: where delegated IPAM plugins are looked up.
    pub plugin_path: Vec<PathBuf>,
}

impl Invocation {
    /// Reads the invocation through `var` (the process environment in production).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Invocation, CniError> {
        let bad_env = |msg: String| CniError::new(Code::InvalidEnvironment, msg);
        let command = match var("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some("GC") => Command::Gc,
            Some("STATUS") => Command::Status,
            Some(other) => return Err(bad_env(format!("unknown CNI_COMMAND {other:?}"))),
            None => return Err(bad_env("CNI_COMMAND is not set".into())),
        };
        let plugin_path = var("CNI_PATH")
            .map(|p| p.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect())
            .unwrap_or_default();
        let attachment = match command {
            Command::Add | Command::Del | Command::Check => {
                let non_empty = |name: &str| var(name).filter(|v| !v.is_empty());
                let container_id =
                    non_empty("CNI_CONTAINERID").ok_or_else(|| bad_env("CNI_CONTAINERID is not set".into()))?;
                validate_id("CNI_CONTAINERID", &container_id).map_err(bad_env)?;
                let ifname = non_empty("CNI_IFNAME").ok_or_else(|| bad_env("CNI_IFNAME is not set".into()))?;
                check_ifname(&ifname).map_err(|e| bad_env(format!("CNI_IFNAME: {e}")))?;
                let netns = non_empty("CNI_NETNS").map(PathBuf::from);
                if netns.is_none() && command != Command::Del {
                    return Err(bad_env("CNI_NETNS is not set".into()));
                }
                Some(Attachment { container_id, ifname, netns })
            }
            Command::Version | Command::Gc | Command::Status => None,
        };
        Ok(Invocation { command, attachment, plugin_path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn inv(pairs: &[(&str, &str)]) -> Result<Invocation, CniError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Invocation::from_vars(|k| map.get(k).cloned())
    }

    const ADD: [(&str, &str); 5] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_PATH", "/opt/cni/bin::/usr/lib/cni"),
    ];

    #[test]
    fn a_complete_add_is_accepted() {
        let i = inv(&ADD).unwrap();
        assert_eq!(i.command, Command::Add);
        let a = i.attachment.unwrap();
        assert_eq!((a.container_id.as_str(), a.ifname.as_str()), ("abc123", "eth0"));
        assert_eq!(i.plugin_path, vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]);
    }

    #[test]
    fn del_does_not_need_a_netns() {
        let i = inv(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0")]).unwrap();
        assert_eq!(i.attachment.unwrap().netns, None);
    }

    #[test]
    fn version_gc_and_status_need_nothing_else() {
        for c in ["VERSION", "GC", "STATUS"] {
            assert!(inv(&[("CNI_COMMAND", c)]).unwrap().attachment.is_none());
        }
    }

    #[test]
    fn bad_environments_are_code_4() {
        let replace = |key: &str, val: Option<&str>| {
            let mut v: Vec<(&str, &str)> = ADD.iter().copied().filter(|(k, _)| *k != key).collect();
            if let Some(val) = val {
                v.push((key, val));
            }
            inv(&v).unwrap_err()
        };
        for (key, val) in [
            ("CNI_COMMAND", None),
            ("CNI_COMMAND", Some("ATTACH")),
            ("CNI_CONTAINERID", None),
            ("CNI_CONTAINERID", Some("-bad")),
            ("CNI_CONTAINERID", Some("a/b")),
            ("CNI_IFNAME", None),
            ("CNI_IFNAME", Some("this-is-too-long0")),
            ("CNI_IFNAME", Some("..")),
            ("CNI_IFNAME", Some("eth:0")),
            ("CNI_IFNAME", Some("eth 0")),
            ("CNI_NETNS", None),
        ] {
            assert_eq!(replace(key, val).code, Code::InvalidEnvironment as u32, "{key}={val:?}");
        }
    }
}
