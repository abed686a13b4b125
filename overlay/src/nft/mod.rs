//! nftables: tables are rendered as nft text and written in one atomic `nft -f -` transaction;
//! the kernel's state is read back over nfnetlink (`ruleset.rs`) on a socket kept per dataplane
//! ([`socket`]), which also changes set elements ([`elements`]) without rewriting the table.
//!
//! Every rule weft writes carries a self-identifying comment (`weft:` + a hash of its text), so
//! comparing the desired rules with the kernel's needs only the rules' comments, not a parser
//! for every expression nftables knows.

mod command;
pub mod elements;
pub mod listing;
mod netlink;
mod ruleset;
pub mod socket;
pub mod table;

pub use command::run_script;
pub use listing::{Counter, ForeignChain, Listing, ListingError};
pub use socket::NftSocket;
pub use table::{BaseChain, Chain, ChainShape, Rule, Set, Table, TableShape};

/// The prefix of every comment weft puts on a rule; what cleanup looks for in foreign chains.
pub const COMMENT_PREFIX: &str = "weft";

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("`nft {args}` failed ({status}): {stderr}")]
    Failed { args: String, status: String, stderr: String },
    #[error("nfnetlink: {0}")]
    Netlink(#[source] std::io::Error),
    #[error("cannot read the nftables {what}: {source}")]
    Read {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Listing(#[from] ListingError),
    #[error("the nftables ruleset changed during each of {attempts} reads")]
    Unstable { attempts: usize },
    #[error("cannot read or change the elements of set {set}: {source}")]
    Elements {
        set: String,
        #[source]
        source: std::io::Error,
    },
}
