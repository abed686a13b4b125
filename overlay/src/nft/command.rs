//! Running the `nft` tool: a listing in, a script out, nft's own message in every error.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

const NFT: &str = "nft";

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run {NFT}: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("`{NFT} {args}` failed ({status}): {stderr}")]
    Failed { args: String, status: String, stderr: String },
    #[error("`{NFT} -j -t list ruleset` printed invalid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("nfnetlink: {0}")]
    Netlink(#[source] std::io::Error),
    #[error("cannot change the elements of set {set}: {source}")]
    Elements {
        set: String,
        #[source]
        source: std::io::Error,
    },
}

/// `nft -j -t list ruleset`, parsed as raw JSON: terse, so without set elements (see
/// [`super::elements`] for why and how they are read).
pub async fn list_ruleset() -> Result<Value, NftError> {
    let out = run(&["-j", "-t", "list", "ruleset"], None).await?;
    serde_json::from_slice(&out).map_err(NftError::Json)
}

/// Runs `script` as one transaction (`nft -f -`): all of it is applied or none.
pub async fn run_script(script: &str) -> Result<(), NftError> {
    run(&["-f", "-"], Some(script.to_string())).await.map(drop)
}

/// Runs nft on a blocking-pool thread: starting a process takes a few hundred microseconds of
/// the starting thread, which would otherwise delay the netlink dumps running meanwhile.
async fn run(args: &'static [&'static str], stdin: Option<String>) -> Result<Vec<u8>, NftError> {
    tokio::task::spawn_blocking(move || run_blocking(args, stdin.as_deref()))
        .await
        .map_err(|e| NftError::Spawn(std::io::Error::other(e)))?
}

fn run_blocking(args: &[&str], stdin: Option<&str>) -> Result<Vec<u8>, NftError> {
    let mut child = Command::new(NFT)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    let mut written = Ok(());
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        written = pipe.write_all(text.as_bytes());
        // Dropping the pipe closes it: nft reads to end of file.
    }
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    // nft's own complaint explains a broken pipe better than the pipe error does.
    if !out.status.success() {
        return Err(NftError::Failed {
            args: args.join(" "),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    written.map_err(NftError::Spawn)?;
    Ok(out.stdout)
}
