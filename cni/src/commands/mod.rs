//! One module per CNI command; `run` reads the invocation and dispatches.

mod add;
mod check;
mod del;
mod gc;
mod status;
mod version;

use std::io::Read;

use crate::config::{Request, peek_version};
use crate::env::{Command, Invocation};
use crate::error::{CniError, Code};
use crate::fsutil::read_limited;
use crate::logging;
use crate::result::CniResult;

/// A network config is a few kilobytes (a GC's list of attachments, a few hundred); stdin far
/// larger than this is no config and must not exhaust memory.
const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// What the plugin prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Exit 0, printing the JSON if there is any.
    Success(Option<String>),
    /// Exit 1, printing the spec's error JSON.
    Failure(String),
}

/// The whole plugin, minus process plumbing: environment and stdin in, reply out.
pub fn run(var: impl Fn(&str) -> Option<String>, stdin: impl Read) -> Reply {
    let stdin = match read_limited(stdin, MAX_CONFIG_BYTES) {
        Ok(bytes) => bytes,
        Err(e) => {
            let e = CniError::new(Code::DecodeFailure, "cannot read the network config on stdin").with_details(e);
            return Reply::Failure(e.to_json(None));
        }
    };
    let version = peek_version(&stdin);
    match dispatch(var, stdin) {
        Ok(out) => Reply::Success(out.map(|v| v.to_string())),
        Err(e) => {
            tracing::error!("{e}");
            Reply::Failure(e.to_json(version))
        }
    }
}

fn dispatch(var: impl Fn(&str) -> Option<String>, stdin: Vec<u8>) -> Result<Option<serde_json::Value>, CniError> {
    let inv = Invocation::from_vars(var)?;
    if inv.command == Command::Version {
        return Ok(Some(version::version(peek_version(&stdin))));
    }
    let req = Request::parse(stdin)?;
    logging::init(req.conf.log_file.as_deref(), req.conf.log_level.as_deref());
    tracing::debug!(command = ?inv.command, attachment = ?inv.attachment, "invoked");
    match inv.command {
        Command::Add => add::add(&inv, &req).map(|r| Some(r.to_json(req.version))),
        Command::Del => del::del(&inv, &req).map(|()| None),
        Command::Check => check::check(&inv, &req).map(|()| None),
        Command::Gc => gc::gc(&inv, &req).map(|()| None),
        Command::Status => status::status(&inv, &req).map(|()| None),
        Command::Version => unreachable!("answered above"),
    }
}

/// prevResult, when present, must be a result we can read.
fn parse_prev_result(req: &Request) -> Result<Option<CniResult>, CniError> {
    req.conf
        .prev_result
        .as_ref()
        .map(|v| {
            CniResult::from_value(v)
                .map_err(|e| CniError::new(Code::InvalidConfig, "invalid prevResult").with_details(e))
        })
        .transpose()
}

fn require_v1_1(req: &Request, command: &str) -> Result<(), CniError> {
    if req.version.supports_gc_and_status() {
        return Ok(());
    }
    Err(CniError::new(
        Code::IncompatibleVersion,
        format!("{command} needs cniVersion 1.1.0 or later, got {}", req.version),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run_with(env: &[(&str, &str)], stdin: &str) -> Reply {
        let map: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        run(|k| map.get(k).cloned(), stdin.as_bytes())
    }

    fn failure_code(reply: Reply) -> (u64, serde_json::Value) {
        match reply {
            Reply::Failure(json) => {
                let v: serde_json::Value = serde_json::from_str(&json).unwrap();
                (v["code"].as_u64().unwrap(), v)
            }
            other => panic!("expected failure, got {other:?}"),
        }
    }

    #[test]
    fn version_answers_even_without_config() {
        let Reply::Success(Some(out)) = run_with(&[("CNI_COMMAND", "VERSION")], "") else { panic!() };
        assert!(out.contains("supportedVersions"));
    }

    #[test]
    fn errors_are_answered_in_the_requested_version() {
        let (code, v) = failure_code(run_with(&[("CNI_COMMAND", "BOGUS")], r#"{"cniVersion":"0.3.1"}"#));
        assert_eq!(code, 4);
        assert_eq!(v["cniVersion"], "0.3.1");
    }

    #[test]
    fn gc_and_status_need_1_1_and_check_needs_0_4() {
        let conf = |v: &str| format!(r#"{{"cniVersion":"{v}","name":"n","type":"weft","podCIDR":"10.244.1.0/24"}}"#);
        assert_eq!(failure_code(run_with(&[("CNI_COMMAND", "GC")], &conf("1.0.0"))).0, 1);
        assert_eq!(failure_code(run_with(&[("CNI_COMMAND", "STATUS")], &conf("0.4.0"))).0, 1);
        let check_env =
            [("CNI_COMMAND", "CHECK"), ("CNI_CONTAINERID", "c"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "/x")];
        assert_eq!(failure_code(run_with(&check_env, &conf("0.3.1"))).0, 1);
    }

    #[test]
    fn status_is_50_without_a_pod_cidr_and_ok_with_one() {
        let no_cidr = r#"{"cniVersion":"1.1.0","name":"n","type":"weft","stateFile":"/nonexistent/node.json"}"#;
        assert_eq!(failure_code(run_with(&[("CNI_COMMAND", "STATUS")], no_cidr)).0, 50);
        let with = r#"{"cniVersion":"1.1.0","name":"n","type":"weft","podCIDR":"10.244.1.0/24"}"#;
        assert_eq!(run_with(&[("CNI_COMMAND", "STATUS")], with), Reply::Success(None));
    }

    #[test]
    fn an_endless_stdin_is_refused_not_read_to_the_end() {
        let endless = std::io::repeat(b' ');
        let (code, v) = failure_code(run(|_| Some("VERSION".into()), endless));
        assert_eq!(code, 6);
        assert!(v["details"].as_str().unwrap().contains("larger than"), "{v}");
    }

    #[test]
    fn gc_refuses_to_run_without_the_valid_attachments_list() {
        let conf = r#"{"cniVersion":"1.1.0","name":"n","type":"weft","podCIDR":"10.244.1.0/24"}"#;
        assert_eq!(failure_code(run_with(&[("CNI_COMMAND", "GC")], conf)).0, 7);
    }
}
