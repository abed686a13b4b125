//! nfnetlink messages as bytes: building requests, and reading replies into messages and
//! attributes. Pure functions; the socket that carries them is [`super::socket`].

// From linux/netlink.h, linux/netfilter/nfnetlink.h and linux/netfilter/nf_tables.h.
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub const NFTA_LIST_ELEM: u16 = 1;

/// The netlink message type of nf_tables message `msg` (an `NFT_MSG_*`).
pub const fn nft_kind(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// The nf_tables message (`NFT_MSG_*`) a netlink message type stands for, if any.
pub const fn nft_msg(kind: u16) -> Option<u16> {
    if kind >> 8 == NFNL_SUBSYS_NFTABLES { Some(kind & 0xff) } else { None }
}

/// The nfgenmsg of a batch message: addressed to the nf_tables subsystem.
pub const BATCH_NFGEN: [u8; 4] = {
    let subsys = NFNL_SUBSYS_NFTABLES.to_be_bytes();
    [0, 0, subsys[0], subsys[1]]
};

/// A netlink message: header, nfgenmsg (family, version, resource id), attributes.
pub fn message(out: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, nfgen: [u8; 4], attrs: &[u8]) {
    let len = 16 + 4 + attrs.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&nfgen);
    out.extend_from_slice(attrs);
}

/// A request for family `family` (version 0, resource id 0).
pub fn request(kind: u16, flags: u16, seq: u32, family: u8, attrs: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    message(&mut out, kind, flags, seq, [family, 0, 0, 0], attrs);
    out
}

/// One attribute, padded to 4 bytes.
pub fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    out.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(align(out.len()), 0);
}

pub fn nul_terminated(s: &str) -> Vec<u8> {
    let mut bytes = s.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

pub fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// One message of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub kind: u16,
    pub seq: u32,
    /// The payload after the netlink header.
    pub body: &'a [u8],
}

impl<'a> Message<'a> {
    /// The address family of an nf_tables message (the nfgenmsg's first byte).
    pub fn family(&self) -> Option<u8> {
        self.body.first().copied()
    }

    /// The attributes of an nf_tables message, after the nfgenmsg.
    pub fn attrs(&self) -> Attrs<'a> {
        Attrs::of(self.body.get(4..).unwrap_or_default())
    }

    /// The error code of an NLMSG_ERROR (0: an acknowledgement) or NLMSG_DONE (negative: the
    /// dump failed part-way) message.
    pub fn code(&self) -> Option<i32> {
        Some(i32::from_ne_bytes(self.body.get(..4)?.try_into().ok()?))
    }
}

/// The messages of a netlink reply; a truncated message ends the iteration.
pub fn messages(reply: &[u8]) -> impl Iterator<Item = Message<'_>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let header = reply.get(at..at + 16)?;
        let len = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let body = reply.get(at + 16..at + len.max(16))?;
        let kind = u16::from_ne_bytes([header[4], header[5]]);
        let seq = u32::from_ne_bytes([header[8], header[9], header[10], header[11]]);
        at += align(len.max(16));
        Some(Message { kind, seq, body })
    })
}

/// The attributes in a payload: (type without flags, payload). A truncated attribute ends the
/// iteration.
#[derive(Debug, Clone, Copy)]
pub struct Attrs<'a> {
    payload: &'a [u8],
}

impl<'a> Attrs<'a> {
    pub fn of(payload: &'a [u8]) -> Attrs<'a> {
        Attrs { payload }
    }

    /// The payload of the first attribute of type `kind`.
    pub fn get(self, kind: u16) -> Option<&'a [u8]> {
        self.into_iter().find(|(k, _)| *k == kind).map(|(_, p)| p)
    }

    /// The nested attributes of attribute `kind` (none when it is absent).
    pub fn nested(self, kind: u16) -> Attrs<'a> {
        Attrs::of(self.get(kind).unwrap_or_default())
    }

    /// A string attribute without its NUL terminator; names that are not UTF-8 are read lossily.
    pub fn string(self, kind: u16) -> Option<String> {
        let bytes = self.get(kind)?;
        let text = bytes.split(|&b| b == 0).next().unwrap_or_default();
        Some(String::from_utf8_lossy(text).into_owned())
    }

    /// A big-endian 32-bit attribute; `None` when absent or of another size.
    pub fn be32(self, kind: u16) -> Option<u32> {
        Some(u32::from_be_bytes(self.get(kind)?.try_into().ok()?))
    }

    /// A big-endian 64-bit attribute; `None` when absent or of another size.
    pub fn be64(self, kind: u16) -> Option<u64> {
        Some(u64::from_be_bytes(self.get(kind)?.try_into().ok()?))
    }
}

impl<'a> IntoIterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);
    type IntoIter = AttrIter<'a>;

    fn into_iter(self) -> AttrIter<'a> {
        AttrIter { payload: self.payload, at: 0 }
    }
}

pub struct AttrIter<'a> {
    payload: &'a [u8],
    at: usize,
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<(u16, &'a [u8])> {
        let header = self.payload.get(self.at..self.at + 4)?;
        let len = usize::from(u16::from_ne_bytes([header[0], header[1]]));
        let kind = u16::from_ne_bytes([header[2], header[3]]) & NLA_TYPE_MASK;
        let body = self.payload.get(self.at + 4..self.at + len.max(4))?;
        self.at += align(len.max(4));
        Some((kind, body))
    }
}

/// The messages answering one request, gathered from as many reads as it takes.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    seq: u32,
    reads: Vec<Vec<u8>>,
}

impl Reply {
    pub fn new(seq: u32) -> Reply {
        Reply { seq, reads: Vec::new() }
    }

    /// Adds one read of the socket; `Ok(true)` once the answer is complete (NLMSG_DONE ends a
    /// dump, an acknowledgement a request), `Err` with the kernel's positive errno when it
    /// refused. Messages of other requests (left over from an earlier failure) are skipped.
    pub fn absorb(&mut self, read: Vec<u8>) -> Result<bool, i32> {
        let mut done = false;
        let mut ours = false;
        for m in messages(&read).filter(|m| m.seq == self.seq) {
            ours = true;
            match m.kind {
                NLMSG_DONE | NLMSG_ERROR => match m.code() {
                    Some(code) if code < 0 => return Err(-code),
                    _ => done = true,
                },
                _ => {}
            }
        }
        if ours {
            self.reads.push(read);
        }
        Ok(done)
    }

    /// The answer's messages, without the closing NLMSG_DONE or acknowledgement.
    pub fn messages(&self) -> impl Iterator<Item = Message<'_>> {
        self.reads
            .iter()
            .flat_map(|read| messages(read))
            .filter(move |m| m.seq == self.seq && m.kind != NLMSG_DONE && m.kind != NLMSG_ERROR)
    }
}

/// (sequence number, error code) of the NLMSG_ERROR messages in a reply (code 0 is an
/// acknowledgement).
pub fn acks(reply: &[u8]) -> Vec<(u32, i32)> {
    messages(reply).filter(|m| m.kind == NLMSG_ERROR).filter_map(|m| Some((m.seq, m.code()?))).collect()
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// The header fields of each message in a batch: (length, type, flags, seq).
    pub fn headers(batch: &[u8]) -> Vec<(usize, u16, u16, u32)> {
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

    /// NLMSG_DONE closing dump `seq`, with `code` as the dump's outcome.
    pub fn done(seq: u32, code: i32) -> Vec<u8> {
        let mut out = Vec::new();
        // NLMSG_DONE carries an int, not an nfgenmsg: the same four bytes.
        message(&mut out, NLMSG_DONE, 2, seq, code.to_ne_bytes(), &[]);
        out
    }

    /// NLMSG_ERROR answering `seq`: the code, then the request's header.
    pub fn error(seq: u32, code: i32) -> Vec<u8> {
        let mut out = Vec::new();
        message(&mut out, NLMSG_ERROR, 0, seq, code.to_ne_bytes(), &[0; 16]);
        out
    }

    #[test]
    fn acknowledgements_and_errors_are_read_from_a_reply() {
        let mut reply = error(8, 0);
        reply.extend(error(9, -2));
        assert_eq!(acks(&reply), [(8, 0), (9, -2)]);
        assert!(acks(&reply[..10]).is_empty());
    }

    #[test]
    fn attributes_are_read_with_their_flags_masked_and_padding_skipped() {
        let mut inner = Vec::new();
        attr(&mut inner, 1, &7u32.to_be_bytes());
        attr(&mut inner, 2, &(-5i32).to_be_bytes());
        let mut payload = Vec::new();
        attr(&mut payload, 1, b"filter\0");
        attr(&mut payload, 3 | NLA_F_NESTED, &inner);
        attr(&mut payload, 4, &9u64.to_be_bytes());
        attr(&mut payload, 5, &[1, 2]);
        let a = Attrs::of(&payload);
        assert_eq!(a.string(1).as_deref(), Some("filter"));
        assert_eq!(a.nested(3).be32(1), Some(7));
        assert_eq!(a.nested(3).be32(2).map(|p| p as i32), Some(-5));
        assert_eq!(a.be64(4), Some(9));
        // The wrong size is no value; an absent attribute neither.
        assert_eq!(a.be32(5), None);
        assert_eq!(a.be32(6), None);
        assert_eq!(a.nested(6).into_iter().count(), 0);
        // Truncation ends the attributes; no panic.
        assert_eq!(Attrs::of(&payload[..payload.len() - 3]).into_iter().count(), 3);
    }

    #[test]
    fn a_reply_gathers_its_messages_over_reads_until_done() {
        let mut reply = Reply::new(5);
        let mut first = request(nft_kind(0), 2, 5, 1, &[]);
        first.extend(request(nft_kind(0), 2, 4, 1, &[])); // another request's answer
        assert_eq!(reply.absorb(first), Ok(false));
        assert_eq!(reply.absorb(request(nft_kind(0), 2, 4, 1, &[])), Ok(false));
        let mut last = request(nft_kind(3), 2, 5, 2, &[]);
        last.extend(done(5, 0));
        assert_eq!(reply.absorb(last), Ok(true));
        let got: Vec<_> = reply.messages().map(|m| (m.kind, m.family())).collect();
        assert_eq!(got, [(nft_kind(0), Some(1)), (nft_kind(3), Some(2))]);
    }

    #[test]
    fn a_reply_reports_the_kernels_errors() {
        // An error (ENOENT) and a dump that failed part-way (EINTR in NLMSG_DONE).
        assert_eq!(Reply::new(5).absorb(error(5, -2)), Err(2));
        assert_eq!(Reply::new(5).absorb(done(5, -4)), Err(4));
        // An acknowledgement completes a request.
        assert_eq!(Reply::new(5).absorb(error(5, 0)), Ok(true));
        assert_eq!(Reply::new(5).absorb(error(6, -2)), Ok(false));
    }
}
