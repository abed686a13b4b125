//! The CNI result: one internal model, written in the format of whichever version was asked for,
//! and read back (as `prevResult` or from a delegated IPAM plugin) from any supported version.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::version::CniVersion;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// 1.1.0 and later only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for container interfaces; absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Before 1.0.0 only: "4" or "6". Filled in when writing; ignored when reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Address with prefix length, e.g. 10.244.3.7/24.
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    // The remaining fields are 1.1.0 and later only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

impl Route {
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Self {
        Route { dst, gw, mtu: None, advmss: None, priority: None, table: None, scope: None }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty() && self.domain.is_none() && self.search.is_empty() && self.options.is_empty()
    }
}

impl CniResult {
    /// Reads a result in any supported version's format (`prevResult`, a delegate's answer).
    pub fn from_value(value: &serde_json::Value) -> Result<Self, serde_json::Error> {
        let mut result = CniResult::deserialize(value)?;
        for ip in &mut result.ips {
            ip.version = None;
        }
        Ok(result)
    }

    /// The result as the given version writes it, with `cniVersion` set.
    pub fn to_json(&self, version: CniVersion) -> serde_json::Value {
        let mut out = self.clone();
        for ip in &mut out.ips {
            ip.version = version.ips_carry_version().then(|| match ip.address {
                IpNet::V4(_) => "4".to_string(),
                IpNet::V6(_) => "6".to_string(),
            });
        }
        if !version.has_v1_1_fields() {
            for iface in &mut out.interfaces {
                iface.mtu = None;
            }
            for route in &mut out.routes {
                *route = Route::new(route.dst, route.gw);
            }
        }
        let mut value = serde_json::Map::new();
        value.insert("cniVersion".into(), version.as_str().into());
        let serde_json::Value::Object(fields) = serde_json::to_value(&out).expect("results always serialize") else {
            unreachable!("a struct serializes to an object")
        };
        value.extend(fields);
        serde_json::Value::Object(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface { name: "cni0".into(), mac: "0a:58:0a:f4:03:01".into(), mtu: Some(1450), sandbox: None },
                Interface {
                    name: "eth0".into(),
                    mac: "0a:58:0a:f4:03:07".into(),
                    mtu: Some(1450),
                    sandbox: Some("/run/netns/x".into()),
                },
            ],
            ips: vec![IpConfig {
                version: None,
                address: "10.244.3.7/24".parse().unwrap(),
                gateway: Some("10.244.3.1".parse().unwrap()),
                interface: Some(1),
            }],
            routes: vec![Route { mtu: Some(1400), ..Route::new("0.0.0.0/0".parse().unwrap(), None) }],
            dns: Dns { nameservers: vec!["10.96.0.10".into()], ..Dns::default() },
        }
    }

    #[test]
    fn versions_before_1_0_carry_ip_version_and_drop_1_1_fields() {
        for v in [CniVersion::V0_3_0, CniVersion::V0_3_1, CniVersion::V0_4_0] {
            let j = sample().to_json(v);
            assert_eq!(j["cniVersion"], v.as_str());
            assert_eq!(j["ips"][0]["version"], "4");
            assert_eq!(j["ips"][0]["address"], "10.244.3.7/24");
            assert_eq!(j["ips"][0]["interface"], 1);
            assert!(j["interfaces"][0].get("mtu").is_none());
            assert!(j["routes"][0].get("mtu").is_none());
        }
    }

    #[test]
    fn a_dual_stack_result_carries_both_addresses_in_every_version() {
        let mut dual = sample();
        dual.ips.push(IpConfig {
            version: None,
            address: "fd00:10:244:3::7/64".parse().unwrap(),
            gateway: Some("fd00:10:244:3::1".parse().unwrap()),
            interface: Some(1),
        });
        dual.routes.push(Route::new("::/0".parse().unwrap(), Some("fd00:10:244:3::1".parse().unwrap())));
        for v in CniVersion::ALL {
            let j = dual.to_json(v);
            let versions: Vec<&Value> = j["ips"].as_array().unwrap().iter().map(|ip| &ip["version"]).collect();
            let want = if v.ips_carry_version() { vec![json!("4"), json!("6")] } else { vec![Value::Null; 2] };
            assert_eq!(versions, want.iter().collect::<Vec<_>>(), "{v}");
            assert_eq!(j["ips"][1]["address"], "fd00:10:244:3::7/64", "{v}");
            assert_eq!(j["ips"][1]["gateway"], "fd00:10:244:3::1", "{v}");
            assert_eq!(j["routes"][1], json!({"dst": "::/0", "gw": "fd00:10:244:3::1"}), "{v}");
            assert_eq!(CniResult::from_value(&j).unwrap().ips, dual.ips, "{v}");
        }
    }

    #[test]
    fn version_1_0_has_no_ip_version_and_no_1_1_fields() {
        let j = sample().to_json(CniVersion::V1_0_0);
        assert!(j["ips"][0].get("version").is_none());
        assert!(j["interfaces"][1].get("mtu").is_none());
        assert_eq!(j["interfaces"][1]["sandbox"], "/run/netns/x");
        assert!(j["interfaces"][0].get("sandbox").is_none());
    }

    #[test]
    fn version_1_1_keeps_interface_and_route_mtu() {
        let j = sample().to_json(CniVersion::V1_1_0);
        assert_eq!(j["interfaces"][1]["mtu"], 1450);
        assert_eq!(j["routes"][0]["mtu"], 1400);
        assert_eq!(j["dns"]["nameservers"][0], "10.96.0.10");
    }

    #[test]
    fn cni_version_comes_first() {
        let text = sample().to_json(CniVersion::V1_0_0).to_string();
        assert!(text.starts_with(r#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0""#), "{text}");
    }

    #[test]
    fn reads_back_every_version_it_writes() {
        for v in CniVersion::ALL {
            let back = CniResult::from_value(&sample().to_json(v)).unwrap();
            assert_eq!(back.ips, sample().ips, "{v}");
            assert_eq!(back.interfaces.len(), 2);
        }
    }

    #[test]
    fn reads_a_host_local_ipam_result() {
        let j = json!({"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.1.0.2/24","gateway":"10.1.0.1"}],
                       "routes":[{"dst":"0.0.0.0/0"}],"dns":{}});
        let r = CniResult::from_value(&j).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.1.0.2/24");
        assert_eq!(r.routes[0].gw, None);
        assert!(r.interfaces.is_empty());
    }

    #[test]
    fn rejects_a_result_with_a_malformed_address() {
        let j = json!({"cniVersion":"1.0.0","ips":[{"address":"10.1.0.300/24"}]});
        assert!(CniResult::from_value(&j).is_err());
    }
}
