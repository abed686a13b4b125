//! Names: validation of what the runtime hands us, and the deterministic names weft gives things.

use sha2::{Digest, Sha256};

/// Host veth names are this prefix plus 11 hex characters of the attachment hash.
pub const HOST_VETH_PREFIX: &str = "weft";
/// A host veth that DEL cut off and whose removal the kernel still completes.
pub const TOMBSTONE_PREFIX: &str = "wdel";
const NAME_HASH_HEX: usize = 11;

/// Container IDs, network names: an alphanumeric first character, then alphanumerics, `_`, `.`, `-`.
pub fn validate_id(what: &str, id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    match chars.next() {
        None => return Err(format!("{what} is empty")),
        Some(c) if !c.is_ascii_alphanumeric() => {
            return Err(format!("{what} {id:?} must start with a letter or digit"));
        }
        Some(_) => {}
    }
    if let Some(bad) = chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Err(format!("{what} {id:?} contains {bad:?}; only letters, digits, '_', '.', '-' are allowed"));
    }
    Ok(())
}

/// Hex digest identifying one attachment (container id, interface name); stable across versions.
pub fn attachment_hash(container_id: &str, ifname: &str) -> String {
    // '/' can appear in neither part, so the joined form is unambiguous.
    let digest = Sha256::digest(format!("{container_id}/{ifname}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The host end of the attachment's veth pair: found again by name on DEL even without the netns.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    host_veth_name_for_hash(&attachment_hash(container_id, ifname))
}

/// The host veth of the attachment whose [`attachment_hash`] starts with `hash` (at least 11 hex
/// characters: the IPAM store keeps 16).
pub fn host_veth_name_for_hash(hash: &str) -> String {
    format!("{HOST_VETH_PREFIX}{}", &hash[..NAME_HASH_HEX])
}

/// The name a cut-off veth end carries until the kernel has finished removing it. It is made
/// from the link's index, which no other current link in its namespace has, so it cannot collide
/// with an earlier tombstone of the same attachment that is still being removed.
pub fn tombstone_name(ifindex: u32) -> String {
    format!("{TOMBSTONE_PREFIX}{ifindex:0width$x}", width = NAME_HASH_HEX)
}

/// Is this a host veth name weft made (live or tombstoned)?
pub fn is_weft_veth(name: &str) -> bool {
    [HOST_VETH_PREFIX, TOMBSTONE_PREFIX].iter().any(|prefix| {
        name.strip_prefix(prefix)
            .is_some_and(|rest| rest.len() == NAME_HASH_HEX && rest.bytes().all(|b| b.is_ascii_hexdigit()))
    })
}

#[cfg(test)]
mod tests {
    use weft_overlay::rules::{MAX_IFNAME_LEN, check_ifname};

    use super::*;

    #[test]
    fn accepts_typical_container_ids() {
        for id in ["abc", "0123456789abcdef", "k8s_POD.default-1", "a"] {
            assert!(validate_id("container id", id).is_ok(), "{id}");
        }
    }

    #[test]
    fn rejects_bad_container_ids() {
        for id in ["", "-abc", ".x", "_x", "a/b", "a b", "a:b", "a\n", "ä"] {
            assert!(validate_id("container id", id).is_err(), "{id:?}");
        }
    }

    #[test]
    fn host_veth_names_are_deterministic_valid_and_distinct() {
        let a = host_veth_name("c1", "eth0");
        assert_eq!(a, host_veth_name("c1", "eth0"));
        assert_ne!(a, host_veth_name("c1", "eth1"));
        assert_ne!(a, host_veth_name("c2", "eth0"));
        assert_eq!(a.len(), MAX_IFNAME_LEN);
        assert!(check_ifname(&a).is_ok());
        assert!(is_weft_veth(&a));
    }

    #[test]
    fn hash_parts_cannot_be_confused() {
        assert_ne!(attachment_hash("ab", "c"), attachment_hash("a", "bc"));
    }

    #[test]
    fn tombstones_are_named_by_link_index_and_recognised() {
        let dead = tombstone_name(380);
        assert_eq!(dead, "wdel0000000017c");
        assert_ne!(dead, tombstone_name(381));
        assert!(check_ifname(&dead).is_ok());
        assert!(is_weft_veth(&dead));
        assert!(is_weft_veth(&tombstone_name(u32::MAX)));
        for other in ["weft", "eth0", "weftzzzzzzzzzzz", "wdel123", "cni0"] {
            assert!(!is_weft_veth(other), "{other}");
        }
    }
}
