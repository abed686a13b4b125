//! Reading the ruleset over nfnetlink: one dump per object kind, then the elements of weft's
//! sets, between two reads of the ruleset generation. Every committed change increments the
//! generation, so equal generations before and after mean the dumps saw one ruleset (nft checks
//! its cache the same way). The generation also comes in each dumped message's nfgenmsg, but
//! only its low 16 bits, and not at all from an empty dump.

use super::listing::{self, ListingError};
use super::netlink::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, Reply, nft_kind, request};
use super::socket::Conn;
use super::{Listing, NftError, elements};

// From linux/netfilter.h and linux/netfilter/nf_tables.h.
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFT_MSG_GETOBJ: u16 = 19;
const NFT_MSG_GETFLOWTABLE: u16 = 23;
const NFTA_GEN_ID: u16 = 1;
/// Every family at once.
const NFPROTO_UNSPEC: u8 = 0;

/// How many times the reads may be overtaken by a change before giving up.
const ATTEMPTS: usize = 5;

/// The dumps, chains before rules as the parser needs them.
const DUMPS: [(u16, &str); 6] = [
    (NFT_MSG_GETTABLE, "tables"),
    (NFT_MSG_GETCHAIN, "chains"),
    (NFT_MSG_GETRULE, "rules"),
    (NFT_MSG_GETSET, "sets"),
    (NFT_MSG_GETOBJ, "objects"),
    (NFT_MSG_GETFLOWTABLE, "flowtables"),
];

/// The listing of one ruleset generation; `family`/`table` name weft's own table.
pub(super) fn read(conn: &mut Conn, family: &str, table: &str) -> Result<Listing, NftError> {
    let number =
        listing::family_number(family).ok_or_else(|| ListingError(format!("unknown address family {family}")))?;
    consistent(conn, generation, |conn| read_once(conn, number, family, table))
}

/// `read`'s result once the generation was the same before and after it.
fn consistent<C, T>(
    conn: &mut C,
    generation: impl Fn(&mut C) -> Result<u32, NftError>,
    read: impl Fn(&mut C) -> Result<T, NftError>,
) -> Result<T, NftError> {
    for _ in 0..ATTEMPTS {
        let before = generation(conn)?;
        // A failure may come from the change itself (a set deleted between the dumps): it
        // counts only if the generation held.
        let result = read(conn);
        if generation(conn)? == before {
            return result;
        }
    }
    Err(NftError::Unstable { attempts: ATTEMPTS })
}

fn read_once(conn: &mut Conn, number: u8, family: &str, table: &str) -> Result<Listing, NftError> {
    let mut replies = Vec::with_capacity(DUMPS.len());
    for (kind, what) in DUMPS {
        let seq = conn.take_seqs(1);
        let dump = request(nft_kind(kind), NLM_F_REQUEST | NLM_F_DUMP, seq, NFPROTO_UNSPEC, &[]);
        replies.push(conn.ask(&dump, seq).map_err(|source| NftError::Read { what, source })?);
    }
    let mut listing = listing::parse(replies.iter().flat_map(Reply::messages), family, table)?;
    let sets: Vec<String> = listing.table.iter().flat_map(|t| t.sets.iter().map(|(name, _)| name.clone())).collect();
    for set in sets {
        let elements = elements::list(conn, number, table, &set)?;
        listing.elements.insert(set, elements);
    }
    Ok(listing)
}

fn generation(conn: &mut Conn) -> Result<u32, NftError> {
    let seq = conn.take_seqs(1);
    let ask = request(nft_kind(NFT_MSG_GETGEN), NLM_F_REQUEST | NLM_F_ACK, seq, NFPROTO_UNSPEC, &[]);
    let reply = conn.ask(&ask, seq).map_err(|source| NftError::Read { what: "the ruleset generation", source })?;
    Ok(parse_generation(&reply).ok_or_else(|| ListingError("no ruleset generation in the answer".into()))?)
}

fn parse_generation(reply: &Reply) -> Option<u32> {
    reply.messages().find(|m| m.kind == nft_kind(NFT_MSG_NEWGEN))?.attrs().be32(NFTA_GEN_ID)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::nft::netlink::attr;
    use crate::nft::netlink::tests::error;

    #[test]
    fn the_generation_is_read_from_its_answer() {
        let mut attrs = Vec::new();
        attr(&mut attrs, NFTA_GEN_ID, &77u32.to_be_bytes());
        let mut reply = Reply::new(3);
        let mut read = request(nft_kind(NFT_MSG_NEWGEN), 0, 3, NFPROTO_UNSPEC, &attrs);
        read.extend(error(3, 0));
        assert_eq!(reply.absorb(read), Ok(true));
        assert_eq!(parse_generation(&reply), Some(77));
        assert_eq!(parse_generation(&Reply::new(3)), None);
    }

    /// Generations handed out in turn, and how many reads ran.
    struct Kernel {
        generations: Vec<u32>,
        reads: Cell<usize>,
    }

    fn run(generations: &[u32]) -> (Result<usize, NftError>, usize) {
        let mut kernel = Kernel { generations: generations.iter().rev().copied().collect(), reads: Cell::new(0) };
        let result = consistent(
            &mut kernel,
            |k| k.generations.pop().ok_or_else(|| ListingError("out of generations".into()).into()),
            |k| {
                k.reads.set(k.reads.get() + 1);
                Ok(k.reads.get())
            },
        );
        (result, kernel.reads.get())
    }

    #[test]
    fn reads_are_repeated_until_the_generation_holds() {
        let (result, reads) = run(&[1, 2, 2, 3, 3, 3]);
        assert_eq!((result.unwrap(), reads), (3, 3));
        assert_eq!(run(&[4, 4]).0.unwrap(), 1);
    }

    #[test]
    fn a_ruleset_that_never_holds_still_is_an_error() {
        let changing: Vec<u32> = (0..2 * ATTEMPTS as u32).collect();
        let (result, reads) = run(&changing);
        assert!(matches!(result, Err(NftError::Unstable { attempts: ATTEMPTS })), "{result:?}");
        assert_eq!(reads, ATTEMPTS);
    }
}
