//! One module per verb of the command line.

pub mod cleanup;
pub mod diagnose;
pub mod run;
pub mod status;
