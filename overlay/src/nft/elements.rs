//! Elements of an `ipv4_addr` set in an `inet` table, read and changed over nfnetlink directly:
//! `nft -f` costs a process start and, before deleting an element, loads every element of the set
//! (about 15 ms at 1000 elements on a busy two-core machine), and `nft` lists 1000 elements about
//! 7 ms slower than none — costs a peer joining or leaving must not pay. So the ruleset is listed
//! tersely (without elements) and the elements are dumped here. A change is one transaction, like
//! an `nft -f` run. The socket is kept open: closing a socket that made an nftables transaction
//! costs the kernel milliseconds of release work.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use super::NftError;

// From linux/netlink.h, linux/netfilter/nfnetlink.h and linux/netfilter/nf_tables.h.
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_INET: u8 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;

/// What turns a set's listed elements into the wanted ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElementChanges {
    pub added: Vec<Ipv4Addr>,
    pub removed: Vec<Ipv4Addr>,
}

impl ElementChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// The elements to add (wanted, not listed) and to delete (listed, not wanted), sorted.
pub fn diff(wanted: &BTreeSet<Ipv4Addr>, listed: &BTreeSet<Ipv4Addr>) -> ElementChanges {
    ElementChanges {
        added: wanted.difference(listed).copied().collect(),
        removed: listed.difference(wanted).copied().collect(),
    }
}

/// An nfnetlink socket in the network namespace it was opened in, with the next sequence number.
#[derive(Clone)]
pub struct ElementSocket {
    socket: Arc<Mutex<(Socket, u32)>>,
}

impl std::fmt::Debug for ElementSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ElementSocket")
    }
}

impl ElementSocket {
    /// Opens the socket in the caller's network namespace.
    pub fn open() -> Result<ElementSocket, NftError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(NftError::Netlink)?;
        socket.bind_auto().map_err(NftError::Netlink)?;
        Ok(ElementSocket { socket: Arc::new(Mutex::new((socket, 1))) })
    }

    /// The elements of set `set` of table `inet <table>`.
    pub async fn list(&self, table: &'static str, set: String) -> Result<BTreeSet<Ipv4Addr>, NftError> {
        let socket = Arc::clone(&self.socket);
        tokio::task::spawn_blocking(move || {
            let mut guard = socket.lock().unwrap_or_else(|e| e.into_inner());
            let (socket, seq) = &mut *guard;
            list_blocking(socket, seq, table, &set)
        })
        .await
        .map_err(|e| NftError::Netlink(std::io::Error::other(e)))?
    }

    /// Applies `changes` to set `set` of table `inet <table>` in one transaction.
    pub async fn write(&self, table: &'static str, set: &'static str, changes: ElementChanges) -> Result<(), NftError> {
        // Blocking socket calls on the blocking pool, like the nft runs: the kernel answers
        // within the send, so the receive never waits long.
        let socket = Arc::clone(&self.socket);
        tokio::task::spawn_blocking(move || {
            let mut guard = socket.lock().unwrap_or_else(|e| e.into_inner());
            let (socket, seq) = &mut *guard;
            write_blocking(socket, seq, table, set, &changes)
        })
        .await
        .map_err(|e| NftError::Netlink(std::io::Error::other(e)))?
    }
}

fn write_blocking(
    socket: &Socket,
    seq: &mut u32,
    table: &str,
    set: &str,
    changes: &ElementChanges,
) -> Result<(), NftError> {
    let first = *seq;
    let (batch, acked) = encode(first, table, set, changes);
    // Begin, the element messages, end.
    *seq = seq.wrapping_add(acked as u32 + 2);
    let mut pending = acked;
    socket.send_to(&batch, &SocketAddr::new(0, 0), 0).map_err(NftError::Netlink)?;
    while pending > 0 {
        let (reply, _) = socket.recv_from_full().map_err(NftError::Netlink)?;
        // Answers to an earlier batch that failed part-way are not this batch's.
        for (_, code) in acks(&reply).into_iter().filter(|(s, _)| s.wrapping_sub(first) <= acked as u32) {
            if code != 0 {
                return Err(NftError::Elements {
                    set: set.to_string(),
                    source: std::io::Error::from_raw_os_error(-code),
                });
            }
            pending -= 1;
        }
    }
    Ok(())
}

fn list_blocking(socket: &Socket, seq: &mut u32, table: &str, set: &str) -> Result<BTreeSet<Ipv4Addr>, NftError> {
    let request_seq = *seq;
    *seq = seq.wrapping_add(1);
    socket.send_to(&encode_dump(request_seq, table, set), &SocketAddr::new(0, 0), 0).map_err(NftError::Netlink)?;
    let mut elements = BTreeSet::new();
    loop {
        let (reply, _) = socket.recv_from_full().map_err(NftError::Netlink)?;
        let part = parse_dump(&reply, request_seq).map_err(|code| NftError::Elements {
            set: set.to_string(),
            source: std::io::Error::from_raw_os_error(code),
        })?;
        elements.extend(part.elements);
        if part.done {
            return Ok(elements);
        }
    }
}

/// A request to dump the elements of one set.
pub fn encode_dump(seq: u32, table: &str, set: &str) -> Vec<u8> {
    let mut attrs = Vec::new();
    attr(&mut attrs, NFTA_SET_ELEM_LIST_TABLE, &nul_terminated(table));
    attr(&mut attrs, NFTA_SET_ELEM_LIST_SET, &nul_terminated(set));
    let mut out = Vec::new();
    let kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM;
    message(&mut out, kind, NLM_F_REQUEST | NLM_F_DUMP, seq, [NFPROTO_INET, 0, 0, 0], &attrs);
    out
}

/// What one read of a dump brought: elements, and whether the dump is complete.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DumpPart {
    pub elements: Vec<Ipv4Addr>,
    pub done: bool,
}

/// Parses the messages of one read of the dump answering request `seq`; an error is the
/// kernel's positive errno (ENOENT: no such set). Keys that are not 4 bytes are not IPv4
/// addresses and are skipped (the listing already treats such a set as foreign).
pub fn parse_dump(reply: &[u8], seq: u32) -> Result<DumpPart, i32> {
    let mut part = DumpPart::default();
    for (kind, msg_seq, body) in messages(reply) {
        if msg_seq != seq {
            continue;
        }
        match kind {
            NLMSG_DONE => part.done = true,
            NLMSG_ERROR => {
                let code = body.get(..4).map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                if code != 0 {
                    return Err(-code);
                }
                part.done = true;
            }
            _ if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM => {
                // After the nfgenmsg: the list's attributes.
                let list = attrs(body.get(4..).unwrap_or_default())
                    .find(|(t, _)| *t == NFTA_SET_ELEM_LIST_ELEMENTS)
                    .map(|(_, p)| p)
                    .unwrap_or_default();
                for (_, element) in attrs(list).filter(|(t, _)| *t == NFTA_LIST_ELEM) {
                    let key = attrs(element).find(|(t, _)| *t == NFTA_SET_ELEM_KEY).map(|(_, p)| p);
                    let value = key.and_then(|k| attrs(k).find(|(t, _)| *t == NFTA_DATA_VALUE)).map(|(_, p)| p);
                    if let Some(&[a, b, c, d]) = value {
                        part.elements.push(Ipv4Addr::new(a, b, c, d));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(part)
}

/// The messages of a netlink reply: (type, sequence number, payload after the header).
fn messages(reply: &[u8]) -> impl Iterator<Item = (u16, u32, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let header = reply.get(at..at + 16)?;
        let len = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let body = reply.get(at + 16..at + len.max(16))?;
        let kind = u16::from_ne_bytes([header[4], header[5]]);
        let seq = u32::from_ne_bytes([header[8], header[9], header[10], header[11]]);
        at += align(len.max(16));
        Some((kind, seq, body))
    })
}

/// The attributes in `payload`: (type without flags, payload).
fn attrs(payload: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let header = payload.get(at..at + 4)?;
        let len = usize::from(u16::from_ne_bytes([header[0], header[1]]));
        let kind = u16::from_ne_bytes([header[2], header[3]]) & NLA_TYPE_MASK;
        let body = payload.get(at + 4..at + len.max(4))?;
        at += align(len.max(4));
        Some((kind, body))
    })
}

/// The batch (begin, an add and/or a delete message, end) and how many acknowledgements it asks
/// for. Sequence numbers start at `seq`.
pub fn encode(seq: u32, table: &str, set: &str, changes: &ElementChanges) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut seq = seq;
    let subsys = NFNL_SUBSYS_NFTABLES.to_be_bytes();
    message(&mut out, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, [0, 0, subsys[0], subsys[1]], &[]);
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
            attr(&mut value, NFTA_DATA_VALUE, &ip.octets());
            let mut key = Vec::new();
            attr(&mut key, NFTA_SET_ELEM_KEY | NLA_F_NESTED, &value);
            attr(&mut list, NFTA_LIST_ELEM | NLA_F_NESTED, &key);
        }
        attr(&mut attrs, NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, &list);
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | kind;
        message(&mut out, kind, NLM_F_REQUEST | NLM_F_ACK | flags, seq, [NFPROTO_INET, 0, 0, 0], &attrs);
    }
    message(&mut out, NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + 1, [0, 0, subsys[0], subsys[1]], &[]);
    (out, acked)
}

/// (sequence number, error code) of the NLMSG_ERROR messages in a reply (code 0 is an
/// acknowledgement).
fn acks(reply: &[u8]) -> Vec<(u32, i32)> {
    messages(reply)
        .filter(|(kind, _, body)| *kind == NLMSG_ERROR && body.len() >= 4)
        .map(|(_, seq, body)| (seq, i32::from_ne_bytes([body[0], body[1], body[2], body[3]])))
        .collect()
}

/// A netlink message: header, nfgenmsg (family, version, resource id), attributes.
fn message(out: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, nfgen: [u8; 4], attrs: &[u8]) {
    let len = 16 + 4 + attrs.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&nfgen);
    out.extend_from_slice(attrs);
}

/// One attribute, padded to 4 bytes.
fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    out.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(align(out.len()), 0);
}

fn nul_terminated(s: &str) -> Vec<u8> {
    let mut bytes = s.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> BTreeSet<Ipv4Addr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn diff_adds_what_is_missing_and_removes_what_is_not_wanted() {
        let wanted = ips(&["192.0.2.11", "198.51.100.10", "198.51.100.11"]);
        let listed = ips(&["192.0.2.11", "203.0.113.10"]);
        let d = diff(&wanted, &listed);
        assert_eq!(d.added, ["198.51.100.10".parse::<Ipv4Addr>().unwrap(), "198.51.100.11".parse().unwrap()]);
        assert_eq!(d.removed, ["203.0.113.10".parse::<Ipv4Addr>().unwrap()]);
        assert!(diff(&wanted, &wanted).is_empty());
        assert_eq!(diff(&BTreeSet::new(), &listed).removed.len(), 2);
    }

    /// The header fields of each message in a batch: (length, type, flags, seq).
    fn headers(batch: &[u8]) -> Vec<(usize, u16, u16, u32)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < batch.len() {
            let b = &batch[at..];
            let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
            out.push((
                len,
                u16::from_ne_bytes([b[4], b[5]]),
                u16::from_ne_bytes([b[6], b[7]]),
                u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
            ));
            at += align(len);
        }
        out
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
        let new = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM;
        let del = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELSETELEM;
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
        let mut out = Vec::new();
        message(&mut out, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM, 2, seq, [NFPROTO_INET, 0, 0, 0], &attrs);
        out
    }

    #[test]
    fn a_dump_request_names_the_table_and_set() {
        let request = encode_dump(5, "weft", "vxlan_peers");
        let h = headers(&request);
        assert_eq!(
            h,
            [(20 + 12 + 16, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM, NLM_F_REQUEST | NLM_F_DUMP, 5)]
        );
        assert_eq!(request[16], NFPROTO_INET);
        assert_eq!(&request[24..29], b"weft\0");
    }

    #[test]
    fn dumped_elements_are_read_until_done() {
        let mut reply = dump_message(5, &[&[192, 0, 2, 11], &[198, 51, 100, 10]]);
        reply.extend(dump_message(5, &[&[1, 2, 3, 4, 5, 6]])); // not an IPv4 key: skipped
        reply.extend(dump_message(4, &[&[203, 0, 113, 1]])); // another request's answer
        let part = parse_dump(&reply, 5).unwrap();
        assert_eq!(part.elements, ["192.0.2.11".parse::<Ipv4Addr>().unwrap(), "198.51.100.10".parse().unwrap()]);
        assert!(!part.done);
        let mut done = Vec::new();
        message(&mut done, NLMSG_DONE, 2, 5, [0; 4], &[]);
        assert_eq!(parse_dump(&done, 5), Ok(DumpPart { elements: vec![], done: true }));
        // An error (ENOENT: no such set) is the errno.
        let mut error = Vec::new();
        message(&mut error, NLMSG_ERROR, 0, 5, (-2i32).to_ne_bytes(), &[0; 16]);
        assert_eq!(parse_dump(&error, 5), Err(2));
        // Truncated input is no panic.
        assert!(parse_dump(&reply[..reply.len() - 3], 5).is_ok());
    }

    #[test]
    fn acknowledgements_and_errors_are_read_from_a_reply() {
        let mut reply = Vec::new();
        for (seq, code) in [(8u32, 0i32), (9, -2)] {
            // NLMSG_ERROR: header (length, type, flags, seq, port), error code, the request's header.
            reply.extend_from_slice(&36u32.to_ne_bytes());
            reply.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            reply.extend_from_slice(&[0; 2]);
            reply.extend_from_slice(&seq.to_ne_bytes());
            reply.extend_from_slice(&[0; 4]);
            reply.extend_from_slice(&code.to_ne_bytes());
            reply.extend_from_slice(&[0; 16]);
        }
        assert_eq!(acks(&reply), [(8, 0), (9, -2)]);
        assert!(acks(&reply[..10]).is_empty());
    }
}
