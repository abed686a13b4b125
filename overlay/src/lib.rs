//! weft's kernel programming: desired state in, kernel converged, idempotently.

pub mod bridge;
pub mod desired;
pub mod mac;
pub mod netlink;
pub mod report;
pub mod sysctl;

pub use mac::Mac;
pub use report::{ApplyReport, Failure};
