//! What an apply did, for logs, status and metrics.

use serde::{Deserialize, Serialize};

use crate::nft::Counter;

/// Counts of kernel objects (links, addresses, neighbours, FDB entries, routes, nftables table
/// and rules, sysctls) by what apply did to them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    pub created: usize,
    pub changed: usize,
    pub removed: usize,
    pub unchanged: usize,
    /// Writes that failed; every other write of the plan was still carried out.
    pub failures: Vec<Failure>,
    /// Peers left out because they are invalid or conflict with the local node or each other;
    /// nothing is programmed for them (and what was programmed before is removed).
    #[serde(default)]
    pub rejected: Vec<Failure>,
    /// VXLAN datagrams from non-peers dropped so far, as read before this apply's writes;
    /// `None` when the table or its drop rule was not there. Restarts from zero when the table
    /// is rewritten.
    #[serde(default)]
    pub vxlan_dropped: Option<Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The object, e.g. "route 10.244.2.0/24".
    pub object: String,
    /// The peer the object serves, when it serves one.
    pub peer: Option<String>,
    pub error: String,
}

impl ApplyReport {
    /// Kernel writes made (zero when the kernel already matched).
    pub fn writes(&self) -> usize {
        self.created + self.changed + self.removed
    }
}
