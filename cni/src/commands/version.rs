//! VERSION: which spec versions weft speaks.

use serde_json::{Value, json};

use crate::version::CniVersion;

/// Answers in the version the runtime asked with when weft knows it, else in the latest.
pub fn version(requested: Option<CniVersion>) -> Value {
    let supported: Vec<&str> = CniVersion::ALL.iter().map(|v| v.as_str()).collect();
    json!({
        "cniVersion": requested.unwrap_or(CniVersion::LATEST).as_str(),
        "supportedVersions": supported,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_every_supported_version() {
        let v = version(Some(CniVersion::V0_4_0));
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["supportedVersions"], json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]));
        assert_eq!(version(None)["cniVersion"], "1.1.0");
    }
}
