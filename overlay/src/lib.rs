//! weft's kernel programming: desired state in, kernel converged, idempotently.

pub mod bridge;
pub mod mac;
pub mod netlink;
pub mod sysctl;

pub use mac::Mac;
