//! MAC addresses, and the deterministic VTEP MAC every node derives from its name.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A stable, locally administered unicast MAC for `seed`: the same seed always gives the same
    /// MAC, so a node's VTEP address survives restarts without being stored anywhere.
    pub fn derived(seed: &str) -> Mac {
        let digest = Sha256::digest(seed.as_bytes());
        let mut bytes = [0u8; 6];
        bytes.copy_from_slice(&digest[..6]);
        bytes[0] = (bytes[0] & 0xfe) | 0x02; // unicast, locally administered
        Mac(bytes)
    }

    /// `0a:58:` followed by the IPv4 address, as other CNIs do for interfaces tied to one IP: a
    /// reused address keeps its MAC, so neighbours' ARP caches stay right.
    pub fn for_ipv4(ip: std::net::Ipv4Addr) -> Mac {
        let o = ip.octets();
        Mac([0x0a, 0x58, o[0], o[1], o[2], o[3]])
    }

    pub fn is_unicast(&self) -> bool {
        self.0[0] & 0x01 == 0 && self.0 != [0; 6]
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Mac> {
        Some(Mac(bytes.try_into().ok()?))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address (expected six hex pairs separated by ':')")]
pub struct BadMac(pub String);

impl FromStr for Mac {
    type Err = BadMac;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadMac(s.to_string());
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(bytes))
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_macs_are_stable_unicast_and_locally_administered() {
        let a = Mac::derived("node-a");
        assert_eq!(a, Mac::derived("node-a"));
        assert_ne!(a, Mac::derived("node-b"));
        assert!(a.is_unicast());
        assert_eq!(a.0[0] & 0x02, 0x02);
    }

    #[test]
    fn parses_and_prints() {
        let m: Mac = "0a:58:0A:f4:03:07".parse().unwrap();
        assert_eq!(m.to_string(), "0a:58:0a:f4:03:07");
        assert_eq!(Mac::for_ipv4("10.244.3.7".parse().unwrap()), m);
        for bad in
            ["", "0a:58:0a:f4:03", "0a:58:0a:f4:03:07:01", "0a-58-0a-f4-03-07", "zz:58:0a:f4:03:07", "a:58:0a:f4:03:07"]
        {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }

    #[test]
    fn multicast_and_zero_are_not_unicast() {
        assert!(!"01:00:5e:00:00:01".parse::<Mac>().unwrap().is_unicast());
        assert!(!Mac([0; 6]).is_unicast());
    }
}
