//! `weft-agent cleanup`: removes the conflist first (so the runtime stops sending pods to weft),
//! then the agent's files, then everything weft put into the kernel.

use weft_overlay::underlay::Family;

use crate::cli::CleanupArgs;
use crate::datapath::{self, DatapathError};
use crate::files::{self, FileError};

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error(transparent)]
    Files(#[from] FileError),
    #[error("cannot clean up the datapath: {0}")]
    Datapath(#[from] DatapathError),
}

pub async fn cleanup(args: &CleanupArgs) -> Result<(), CleanupError> {
    let paths = args.paths.paths();
    let leases = Family::ALL.map(|f| paths.lease(f));
    for path in [paths.conflist(), paths.state_file(), paths.generation()].into_iter().chain(leases) {
        if files::remove(&path)? {
            println!("removed {}", path.display());
        }
    }
    // Only if empty: the state dir may be shared with other things.
    let _ = std::fs::remove_dir(&paths.state_dir);
    let summary = datapath::kernel()?.cleanup(args.force).await?;
    println!("removed {} kernel objects", summary.removed);
    for kept in &summary.kept {
        println!("kept {kept}");
    }
    Ok(())
}
