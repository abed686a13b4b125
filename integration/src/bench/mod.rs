//! `weft-lab bench …`: measurements that compare weft with a baseline in the same run.

pub mod cni;
pub mod stats;
