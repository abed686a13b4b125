//! Elements of an `ipv4_addr` or `ipv6_addr` set, read and changed over nfnetlink directly: `nft -f` costs a
//! process start and, before deleting an element, loads every element of the set (about 15 ms at
//! 1000 elements on a busy two-core machine), a cost a peer joining or leaving must not pay. The
//! listing names the sets (`ruleset.rs`) and their elements are dumped here; a change is one
//! transaction in an `inet` table, like an `nft -f` run, on the dataplane's kept socket
//! ([`super::socket`]).

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;

use super::NftError;
use super::netlink::{
    Attrs, BATCH_NFGEN, NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END, NFTA_LIST_ELEM, NLA_F_NESTED, NLM_F_ACK,
    NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST, Reply, acks, attr, message, nft_kind, nul_terminated, request,
};
use super::socket::Conn;

// From linux/netfilter/nf_tables.h.
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_INET: u8 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;

/// What turns a set's listed elements into the wanted ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElementChanges {
    pub added: Vec<IpAddr>,
    pub removed: Vec<IpAddr>,
}

impl ElementChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// The elements to add (wanted, not listed) and to delete (listed, not wanted), sorted.
pub fn diff(wanted: &BTreeSet<IpAddr>, listed: &BTreeSet<IpAddr>) -> ElementChanges {
    ElementChanges {
        added: wanted.difference(listed).copied().collect(),
        removed: listed.difference(wanted).copied().collect(),
    }
}

/// Applies `changes` to set `set` of table `inet <table>` in one transaction.
pub(super) fn write(conn: &mut Conn, table: &str, set: &str, changes: &ElementChanges) -> Result<(), NftError> {
    let failed = |source| NftError::Elements { set: set.to_string(), source };
    // Begin, at most two element messages, end.
    let first = conn.take_seqs(4);
    let (batch, acked) = encode(first, table, set, changes);
    let mut pending = acked;
    conn.send(&batch).map_err(failed)?;
    while pending > 0 {
        let reply = conn.recv().map_err(failed)?;
        // Answers to an earlier batch that failed part-way are not this batch's.
        for (_, code) in acks(&reply).into_iter().filter(|(s, _)| s.wrapping_sub(first) <= acked as u32) {
            if code != 0 {
                return Err(failed(io::Error::from_raw_os_error(-code)));
            }
            pending -= 1;
        }
    }
    Ok(())
}

/// The elements of set `set` of table `<family> <table>`. Keys that are neither 4 nor 16 bytes
/// are not addresses and are skipped (the listing already treats such a set as foreign).
pub(super) fn list(conn: &mut Conn, family: u8, table: &str, set: &str) -> Result<BTreeSet<IpAddr>, NftError> {
    let seq = conn.take_seqs(1);
    let reply = conn
        .ask(&encode_dump(seq, family, table, set), seq)
        .map_err(|source| NftError::Elements { set: set.to_string(), source })?;
    Ok(parse_dump(&reply))
}

/// A request to dump the elements of one set.
pub fn encode_dump(seq: u32, family: u8, table: &str, set: &str) -> Vec<u8> {
    let mut attrs = Vec::new();
    attr(&mut attrs, NFTA_SET_ELEM_LIST_TABLE, &nul_terminated(table));
    attr(&mut attrs, NFTA_SET_ELEM_LIST_SET, &nul_terminated(set));
    request(nft_kind(NFT_MSG_GETSETELEM), NLM_F_REQUEST | NLM_F_DUMP, seq, family, &attrs)
}

/// The address keys in a dump of set elements: 4 bytes IPv4, 16 bytes IPv6.
pub fn parse_dump(reply: &Reply) -> BTreeSet<IpAddr> {
    reply
        .messages()
        .filter(|m| m.kind == nft_kind(NFT_MSG_NEWSETELEM))
        .flat_map(|m| m.attrs().nested(NFTA_SET_ELEM_LIST_ELEMENTS))
        .filter(|(kind, _)| *kind == NFTA_LIST_ELEM)
        .filter_map(|(_, element)| {
            let value = Attrs::of(element).nested(NFTA_SET_ELEM_KEY).get(NFTA_DATA_VALUE)?;
            key_address(value)
        })
        .collect()
}

fn key_address(value: &[u8]) -> Option<IpAddr> {
    match value.len() {
        4 => <[u8; 4]>::try_from(value).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(value).ok().map(IpAddr::from),
        _ => None,
    }
}

/// A set element's key: the address in network order, 4 or 16 bytes.
fn key_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// The batch (begin, an add and/or a delete message, end) and how many acknowledgements it asks
/// for. Sequence numbers start at `seq`.
pub fn encode(seq: u32, table: &str, set: &str, changes: &ElementChanges) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut seq = seq;
    message(&mut out, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, BATCH_NFGEN, &[]);
    let mut acked = 0;
    for (kind, flags, elements) in
        [(NFT_MSG_NEWSETELEM, NLM_F_CREATE, &changes.added), (NFT_MSG_DELSETELEM, 0, &changes.removed)]
    {
        if elements.is_empty() {
            continue;
        }
        seq += 1;
        acked += 1;
        let mut attrs = Vec::new();
        attr(&mut attrs, NFTA_SET_ELEM_LIST_TABLE, &nul_terminated(table));
        attr(&mut attrs, NFTA_SET_ELEM_LIST_SET, &nul_terminated(set));
        let mut list = Vec::new();
        for ip in elements {
            let mut value = Vec::new();
            attr(&mut value, NFTA_DATA_VALUE, &key_bytes(ip));
            let mut key = Vec::new();
            attr(&mut key, NFTA_SET_ELEM_KEY | NLA_F_NESTED, &value);
            attr(&mut list, NFTA_LIST_ELEM | NLA_F_NESTED, &key);
        }
        attr(&mut attrs, NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, &list);
        message(&mut out, nft_kind(kind), NLM_F_REQUEST | NLM_F_ACK | flags, seq, [NFPROTO_INET, 0, 0, 0], &attrs);
    }
    message(&mut out, NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + 1, BATCH_NFGEN, &[]);
    (out, acked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::netlink::tests::{done, headers};
    use crate::nft::netlink::{NLM_F_DUMP, align};

    fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn diff_adds_what_is_missing_and_removes_what_is_not_wanted() {
        let wanted = ips(&["192.0.2.11", "198.51.100.10", "198.51.100.11"]);
        let listed = ips(&["192.0.2.11", "203.0.113.10"]);
        let d = diff(&wanted, &listed);
        assert_eq!(d.added, ["198.51.100.10".parse::<IpAddr>().unwrap(), "198.51.100.11".parse().unwrap()]);
        assert_eq!(d.removed, ["203.0.113.10".parse::<IpAddr>().unwrap()]);
        assert!(diff(&wanted, &wanted).is_empty());
        assert_eq!(diff(&BTreeSet::new(), &listed).removed.len(), 2);
    }

    #[test]
    fn a_batch_frames_one_add_and_one_delete_message() {
        let changes = ElementChanges {
            added: vec!["192.0.2.11".parse().unwrap(), "198.51.100.10".parse().unwrap()],
            removed: vec!["203.0.113.10".parse().unwrap()],
        };
        let (batch, acked) = encode(7, "weft", "vxlan_peers", &changes);
        assert_eq!(acked, 2);
        let h = headers(&batch);
        let new = nft_kind(NFT_MSG_NEWSETELEM);
        let del = nft_kind(NFT_MSG_DELSETELEM);
        let kinds: Vec<(u16, u16, u32)> = h.iter().map(|&(_, k, f, s)| (k, f, s)).collect();
        assert_eq!(
            kinds,
            [
                (NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 7),
                (new, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE, 8),
                (del, NLM_F_REQUEST | NLM_F_ACK, 9),
                (NFNL_MSG_BATCH_END, NLM_F_REQUEST, 10),
            ]
        );
        // Header + nfgenmsg; "weft\0" and "vxlan_peers\0" (padded); the element list, with per
        // element a list entry (4) holding a key (4) holding the 4-byte value (4 + 4).
        assert_eq!(h[0].0, 20);
        assert_eq!(h[1].0, 20 + 12 + 16 + 4 + 2 * 16);
        assert_eq!(h[2].0, 20 + 12 + 16 + 4 + 16);
        assert_eq!(batch.len(), h.iter().map(|m| align(m.0)).sum::<usize>());
        // The element's address in network order, at the end of the delete message.
        let del_end = h[0].0 + h[1].0 + h[2].0;
        assert_eq!(&batch[del_end - 4..del_end], &[203, 0, 113, 10]);
        // The batch is addressed to nftables; the messages to the inet family.
        assert_eq!(&batch[16..20], &[0, 0, 0, 10]);
        assert_eq!(batch[h[0].0 + 16], NFPROTO_INET);
    }

    #[test]
    fn ipv6_elements_are_16_byte_keys() {
        let ip: std::net::Ipv6Addr = "2001:db8:1::10".parse().unwrap();
        let changes = ElementChanges { added: vec![ip.into()], removed: vec![] };
        let (batch, acked) = encode(1, "weft", "vxlan_peers6", &changes);
        assert_eq!(acked, 1);
        let h = headers(&batch);
        // As above, with "vxlan_peers6\0" (padded to 16) and a 16-byte value.
        assert_eq!(h[1].0, 20 + 12 + 20 + 4 + 4 + 4 + 4 + 16);
        let add_end = h[0].0 + h[1].0;
        assert_eq!(&batch[add_end - 16..add_end], &ip.octets());
    }

    #[test]
    fn only_non_empty_changes_are_sent() {
        let changes = ElementChanges { added: vec![], removed: vec!["203.0.113.10".parse().unwrap()] };
        let (batch, acked) = encode(1, "weft", "s", &changes);
        assert_eq!(acked, 1);
        assert_eq!(headers(&batch).len(), 3);
    }

    /// A NEWSETELEM message of a dump answering `seq`, with `keys` as element keys.
    fn dump_message(seq: u32, keys: &[&[u8]]) -> Vec<u8> {
        let mut list = Vec::new();
        for key in keys {
            let mut value = Vec::new();
            attr(&mut value, NFTA_DATA_VALUE, key);
            let mut k = Vec::new();
            attr(&mut k, NFTA_SET_ELEM_KEY | NLA_F_NESTED, &value);
            attr(&mut list, NFTA_LIST_ELEM | NLA_F_NESTED, &k);
        }
        let mut attrs = Vec::new();
        attr(&mut attrs, NFTA_SET_ELEM_LIST_TABLE, &nul_terminated("weft"));
        attr(&mut attrs, NFTA_SET_ELEM_LIST_SET, &nul_terminated("vxlan_peers"));
        attr(&mut attrs, NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, &list);
        request(nft_kind(NFT_MSG_NEWSETELEM), 2, seq, NFPROTO_INET, &attrs)
    }

    #[test]
    fn a_dump_request_names_the_table_and_set() {
        let request = encode_dump(5, NFPROTO_INET, "weft", "vxlan_peers");
        let h = headers(&request);
        assert_eq!(h, [(20 + 12 + 16, nft_kind(NFT_MSG_GETSETELEM), NLM_F_REQUEST | NLM_F_DUMP, 5)]);
        assert_eq!(request[16], NFPROTO_INET);
        assert_eq!(&request[24..29], b"weft\0");
    }

    #[test]
    fn dumped_elements_are_read_over_several_reads() {
        let mut reply = Reply::new(5);
        let mut first = dump_message(5, &[&[192, 0, 2, 11], &[198, 51, 100, 10]]);
        first.extend(dump_message(5, &[&[1, 2, 3, 4, 5, 6]])); // not an address key: skipped
        let v6: std::net::Ipv6Addr = "2001:db8::7".parse().unwrap();
        first.extend(dump_message(5, &[&v6.octets()]));
        first.extend(dump_message(4, &[&[203, 0, 113, 1]])); // another request's answer
        assert_eq!(reply.absorb(first), Ok(false));
        let mut last = dump_message(5, &[&[203, 0, 113, 10]]);
        last.extend(done(5, 0));
        assert_eq!(reply.absorb(last), Ok(true));
        assert_eq!(parse_dump(&reply), ips(&["192.0.2.11", "198.51.100.10", "203.0.113.10", "2001:db8::7"]));
        // Truncated input is no panic.
        let truncated = dump_message(5, &[&[192, 0, 2, 11]]);
        let mut reply = Reply::new(5);
        assert_eq!(reply.absorb(truncated[..truncated.len() - 3].to_vec()), Ok(false));
        assert!(parse_dump(&reply).is_empty());
    }
}
