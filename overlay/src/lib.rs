//! weft's kernel programming: desired state in, kernel converged, idempotently.
//!
//! [`Dataplane::apply`] reads the kernel ([`snapshot`]), decides in a pure function ([`plan`])
//! and carries the plan out ([`execute`]), all over the plain kernel objects of [`objects`]; only
//! [`netlink`] speaks to the kernel. [`Dataplane::apply_incremental`] writes a small peer change
//! from what the last full apply left, without reading the kernel ([`incremental`]). See
//! docs/datapath.md for what is programmed and why.

pub mod bridge;
pub mod cleanup;
pub mod dataplane;
pub mod desired;
pub mod execute;
pub mod firewall;
pub mod incremental;
pub mod mac;
pub mod netlink;
pub mod netlink_sync;
pub mod nft;
pub mod objects;
pub mod plan;
#[cfg(test)]
mod plan_properties;
pub mod report;
pub mod rules;
pub mod snapshot;
pub mod sysctl;
pub mod underlay;
pub mod validate;

pub use cleanup::{CleanupOptions, CleanupReport};
pub use dataplane::{Dataplane, DataplaneError};
pub use mac::Mac;
pub use report::{ApplyReport, Failure};
