//! `weft-agent diagnose`: what is wrong on this node and on its paths, in plain words, with what
//! to do about it. Pure: [`agent`] turns the agent's `/status` and `/metrics` into findings,
//! [`kernel`] a read of the kernel; the command does the reading and the printing.

pub mod agent;
pub mod kernel;

use std::fmt::Write;

use serde::Serialize;

/// How bad a finding is. Only errors make `diagnose` exit non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Something is broken on this node or its paths.
    Error,
    /// Worth a look, but nothing here is broken by it (or it could not be checked).
    Warning,
    /// The check passed.
    Ok,
}

/// One result of one check: the `--json` list is made of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub ok: bool,
    pub severity: Severity,
    pub message: String,
    /// What to do; `null` for a passed check.
    pub fix: Option<String>,
}

impl Finding {
    pub fn passed(check: &'static str, message: impl Into<String>) -> Finding {
        Finding { check, ok: true, severity: Severity::Ok, message: message.into(), fix: None }
    }

    pub fn error(check: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { check, ok: false, severity: Severity::Error, message: message.into(), fix: Some(fix.into()) }
    }

    pub fn warning(check: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { check, ok: false, severity: Severity::Warning, message: message.into(), fix: Some(fix.into()) }
    }
}

/// The VXLAN port a blocked tunnel is reported with, and where it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanPort {
    pub port: u16,
    /// In words, e.g. "vxlan0's port".
    pub from: &'static str,
}

/// The problems a check found, or one passed finding when it found none.
fn or_passed(problems: Vec<Finding>, check: &'static str, message: impl Into<String>) -> Vec<Finding> {
    if problems.is_empty() { vec![Finding::passed(check, message)] } else { problems }
}

/// How many findings are errors.
pub fn errors(findings: &[Finding]) -> usize {
    findings.iter().filter(|f| f.severity == Severity::Error).count()
}

/// The human report: errors first, then warnings, then passed checks, and a one-line summary.
pub fn render(findings: &[Finding]) -> String {
    let mut sorted: Vec<&Finding> = findings.iter().collect();
    sorted.sort_by_key(|f| f.severity);
    let mut out = String::new();
    for f in sorted {
        let mark = match f.severity {
            Severity::Error => "✗",
            Severity::Warning => "!",
            Severity::Ok => "✓",
        };
        let _ = writeln!(out, "{mark} {}", f.message);
        if let Some(fix) = &f.fix {
            let _ = writeln!(out, "    fix: {fix}");
        }
    }
    let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    let (errors, warnings, passed) = (count(Severity::Error), count(Severity::Warning), count(Severity::Ok));
    let verdict = if errors == 0 { "nothing broken" } else { "BROKEN" };
    let _ = writeln!(out, "{verdict}: {errors} error(s), {warnings} warning(s), {passed} check(s) passed");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_puts_errors_first_with_their_fix_and_ends_with_a_summary() {
        let findings = [
            Finding::passed("ip-forward", "IP forwarding is on"),
            Finding::warning("gossip-keys", "3 datagrams refused", "add the key"),
            Finding::error("dataplane", "UDP 8472 is dropped", "allow it"),
        ];
        let text = render(&findings);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "✗ UDP 8472 is dropped",
                "    fix: allow it",
                "! 3 datagrams refused",
                "    fix: add the key",
                "✓ IP forwarding is on",
                "BROKEN: 1 error(s), 1 warning(s), 1 check(s) passed",
            ]
        );
        assert_eq!(errors(&findings), 1);
        assert!(render(&findings[..2]).ends_with("nothing broken: 0 error(s), 1 warning(s), 1 check(s) passed\n"));
    }

    #[test]
    fn findings_serialize_as_the_documented_json() {
        let json = serde_json::to_value([Finding::error("vxlan0", "m", "f"), Finding::passed("mtu", "fits")]).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"check": "vxlan0", "ok": false, "severity": "error", "message": "m", "fix": "f"},
                {"check": "mtu", "ok": true, "severity": "ok", "message": "fits", "fix": null},
            ])
        );
    }
}
