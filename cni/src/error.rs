//! The CNI error model: every failure the plugin reports carries a spec code, a message and details.

use serde::Serialize;

use crate::version::CniVersion;

/// Error codes from the CNI spec (1–99) and weft's own (100+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    UnknownContainer = 3,
    InvalidEnvironment = 4,
    IoFailure = 5,
    DecodeFailure = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    PluginNotAvailable = 50,
    /// The node's address range has no free address left.
    AddressesExhausted = 100,
    /// The IPAM store could not be read or written.
    IpamStore = 101,
    /// A kernel (netlink, sysctl) operation failed.
    Kernel = 102,
    /// CHECK found the container's network not as ADD left it.
    CheckFailed = 103,
    /// A delegated IPAM plugin could not be run or answered nonsense.
    DelegateFailed = 104,
}

/// A failure as the CNI spec reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    /// The numeric code; plain `u32` because a delegated plugin's code is passed through as is.
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        CniError { code: code as u32, msg: msg.into(), details: String::new() }
    }

    pub fn with_details(mut self, details: impl std::fmt::Display) -> Self {
        self.details = details.to_string();
        self
    }

    /// The spec's error JSON, in the requested version (or the latest when it is unknown).
    pub fn to_json(&self, version: Option<CniVersion>) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        let wire = Wire {
            cni_version: version.unwrap_or(CniVersion::LATEST).as_str(),
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        };
        serde_json::to_string(&wire).expect("error JSON always serializes")
    }
}

/// Shorthand for mapping lower-level errors into a `CniError` with a code and a message.
pub trait Context<T> {
    fn context(self, code: Code, msg: impl Into<String>) -> Result<T, CniError>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn context(self, code: Code, msg: impl Into<String>) -> Result<T, CniError> {
        self.map_err(|e| CniError::new(code, msg).with_details(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_the_spec_fields() {
        let e = CniError::new(Code::TryAgainLater, "node state not ready").with_details("x missing");
        let v: serde_json::Value = serde_json::from_str(&e.to_json(Some(CniVersion::V0_4_0))).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["code"], 11);
        assert_eq!(v["msg"], "node state not ready");
        assert_eq!(v["details"], "x missing");
    }

    #[test]
    fn error_json_omits_empty_details_and_defaults_to_latest_version() {
        let e = CniError::new(Code::InvalidConfig, "bad");
        let v: serde_json::Value = serde_json::from_str(&e.to_json(None)).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert!(v.get("details").is_none());
    }
}
