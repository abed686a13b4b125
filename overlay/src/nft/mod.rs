//! nftables through the `nft` tool: tables are rendered as nft text and written in one atomic
//! `nft -f -` transaction (set elements change over nfnetlink, see [`elements`]); the kernel's
//! state is read back with `nft -j -t list ruleset` and set elements over nfnetlink.
//!
//! Every rule weft writes carries a self-identifying comment (`weft:` + a hash of its text), so
//! comparing the desired rules with the kernel's needs only the comments of the JSON listing, not
//! a parser for every expression nft can print.

mod command;
pub mod elements;
pub mod listing;
mod netlink;
pub mod socket;
pub mod table;

pub use command::{NftError, list_ruleset, run_script};
pub use listing::{Counter, ForeignChain, Listing, ListingError};
pub use socket::NftSocket;
pub use table::{BaseChain, Chain, ChainShape, Rule, Set, Table, TableShape};

/// The prefix of every comment weft puts on a rule; what cleanup looks for in foreign chains.
pub const COMMENT_PREFIX: &str = "weft";
