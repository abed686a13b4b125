//! Running another IPAM plugin (host-local, dhcp, …) exactly as a runtime would: found on
//! CNI_PATH, same environment with our CNI_COMMAND, the network config on stdin.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{CniError, Code};
use crate::fsutil::read_limited;
use crate::result::CniResult;

/// A result is a few kilobytes; a delegate printing more is broken and must not exhaust memory.
const MAX_ANSWER_BYTES: u64 = 1024 * 1024;

/// Finds `plugin` in the CNI_PATH directories.
pub fn find(plugin: &str, plugin_path: &[PathBuf]) -> Result<PathBuf, CniError> {
    plugin_path.iter().map(|dir| dir.join(plugin)).find(|p| p.is_file()).ok_or_else(|| {
        CniError::new(Code::InvalidConfig, format!("IPAM plugin {plugin:?} not found"))
            .with_details(format!("searched CNI_PATH {plugin_path:?}"))
    })
}

/// Runs the plugin with `command`; returns its parsed result when it printed one (ADD).
pub fn run(plugin: &Path, command: &str, stdin: &[u8]) -> Result<Option<CniResult>, CniError> {
    let failed = |msg: String| CniError::new(Code::DelegateFailed, msg);
    let name = plugin.display();
    let mut child = Command::new(plugin)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| failed(format!("cannot run IPAM plugin {name}")).with_details(e))?;
    let mut pipe = child.stdin.take().expect("stdin is piped");
    // A plugin may exit without reading all of stdin; its answer still counts.
    let _ = pipe.write_all(stdin);
    drop(pipe);
    let stdout = read_limited(child.stdout.take().expect("stdout is piped"), MAX_ANSWER_BYTES);
    if stdout.is_err() {
        let _ = child.kill();
    }
    let status = child.wait().map_err(|e| failed(format!("IPAM plugin {name} did not finish")).with_details(e))?;
    let stdout = stdout.map_err(|e| failed(format!("cannot read the answer of IPAM plugin {name}")).with_details(e))?;
    let text = String::from_utf8_lossy(&stdout);
    if !status.success() {
        return Err(passed_through_error(&text)
            .unwrap_or_else(|| failed(format!("IPAM plugin {name} failed ({status})")).with_details(text.trim())));
    }
    if text.trim().is_empty() {
        return Ok(None);
    }
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| failed(format!("IPAM plugin {name} printed no JSON result")).with_details(e))?;
    CniResult::from_value(&value)
        .map(Some)
        .map_err(|e| failed(format!("IPAM plugin {name} printed an invalid result")).with_details(e))
}

/// A delegate's own error JSON, kept with its code so the runtime sees the real cause.
fn passed_through_error(stdout: &str) -> Option<CniError> {
    let v: serde_json::Value = serde_json::from_str(stdout).ok()?;
    let code = u32::try_from(v.get("code")?.as_u64()?).ok()?;
    let msg = v.get("msg").and_then(|m| m.as_str()).unwrap_or("IPAM plugin failed").to_string();
    let details = v.get("details").and_then(|d| d.as_str()).unwrap_or_default().to_string();
    Some(CniError { code, msg, details })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_a_delegates_error_code_through() {
        let e = passed_through_error(r#"{"cniVersion":"1.0.0","code":11,"msg":"busy","details":"x"}"#).unwrap();
        assert_eq!((e.code, e.msg.as_str(), e.details.as_str()), (11, "busy", "x"));
        assert!(passed_through_error("panic: oops").is_none());
    }

    #[test]
    fn missing_plugin_is_reported_with_the_search_path() {
        let err = find("no-such-ipam", &[PathBuf::from("/nonexistent")]).unwrap_err();
        assert_eq!(err.code, Code::InvalidConfig as u32);
        assert!(err.details.contains("/nonexistent"));
    }

    #[test]
    fn an_endless_answer_is_cut_off_and_reported() {
        let err = run(Path::new("/usr/bin/yes"), "ADD", b"{}").unwrap_err();
        assert_eq!(err.code, Code::DelegateFailed as u32);
        assert!(err.details.contains("larger than"), "{err}");
    }

    #[test]
    fn runs_a_plugin_and_parses_its_result() {
        let dir = std::env::temp_dir().join(format!("weft-delegate-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("fake-ipam");
        std::fs::write(
            &script,
            "#!/bin/sh\ncat >/dev/null\necho '{\"cniVersion\":\"0.4.0\",\"ips\":[{\"version\":\"4\",\"address\":\"10.1.0.5/24\"}]}'\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let found = find("fake-ipam", &[PathBuf::from("/nonexistent"), dir.clone()]).unwrap();
        let result = run(&found, "ADD", b"{}").unwrap().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(result.ips[0].address.to_string(), "10.1.0.5/24");
    }
}
