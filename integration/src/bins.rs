//! Finding the built binaries (`weft`, `weft-agent`) the lab runs.

use std::path::PathBuf;

use crate::cmd::{LabError, Result};

/// `WEFT_BIN_DIR` if set, else the cargo target directory this program runs from
/// (`target/<profile>/` for binaries, `target/<profile>/deps/` for tests).
pub fn dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WEFT_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("own executable path");
    let mut dir = exe.parent().expect("executable has a directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The path of a workspace binary, or an error saying how to build it.
pub fn path(name: &str) -> Result<PathBuf> {
    let path = dir().join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(LabError::Other(format!(
            "{} not found: build the workspace first (`cargo build --workspace`) or set WEFT_BIN_DIR",
            path.display()
        )))
    }
}
