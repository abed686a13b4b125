//! weft's node agent: gossip membership, PodCIDR allocation through gossip, and the reconcile
//! loop that turns membership into the node's desired datapath state.
//!
//! Deciding is separate from doing: [`allocation`], [`validate`], [`peers`], [`desired`] and
//! [`http::status`] are pure; [`gossip`], [`membership`], [`files`], [`detect`] and
//! [`datapath`] do I/O; [`reconcile`] and [`agent`] tie them together.

pub mod agent;
pub mod allocation;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod datapath;
pub mod desired;
pub mod detect;
pub mod diagnose;
pub mod files;
pub mod gossip;
pub mod http;
pub mod identity;
pub mod logging;
pub mod membership;
pub mod peers;
pub mod probe;
pub mod reconcile;
pub mod settings;
pub mod shared;
pub mod validate;
