//! The `weft` CNI plugin, and the types the agent shares with it (node state file, names).

pub mod commands;
pub mod config;
pub mod datapath;
pub mod env;
pub mod error;
pub mod fsutil;
pub mod ipam;
pub mod logging;
pub mod names;
pub mod netns;
pub mod reaper;
pub mod result;
pub mod runtime;
pub mod state;
pub mod version;
