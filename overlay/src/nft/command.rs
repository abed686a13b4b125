//! Running the `nft` tool: a script in, nft's own message in every error.

use std::io::Write;
use std::process::{Command, Stdio};

use super::NftError;

const NFT: &str = "nft";
const ARGS: [&str; 2] = ["-f", "-"];

/// Runs `script` as one transaction (`nft -f -`): all of it is applied or none. On a
/// blocking-pool thread: starting a process takes a few hundred microseconds of the starting
/// thread, which would otherwise delay the netlink work running meanwhile.
pub async fn run_script(script: &str) -> Result<(), NftError> {
    let script = script.to_string();
    tokio::task::spawn_blocking(move || run_blocking(&script))
        .await
        .map_err(|e| NftError::Spawn(std::io::Error::other(e)))?
}

fn run_blocking(script: &str) -> Result<(), NftError> {
    let mut child = Command::new(NFT)
        .args(ARGS)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    let mut written = Ok(());
    if let Some(mut pipe) = child.stdin.take() {
        written = pipe.write_all(script.as_bytes());
        // Dropping the pipe closes it: nft reads to end of file.
    }
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    // nft's own complaint explains a broken pipe better than the pipe error does.
    if !out.status.success() {
        return Err(NftError::Failed {
            args: ARGS.join(" "),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    written.map_err(NftError::Spawn)
}
