//! `weft-agent status`: the status table (or JSON) of a running agent.

use std::net::SocketAddr;
use std::time::Duration;

use crate::cli::StatusArgs;
use crate::http::status::{Status, render, render_cluster};

const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot query the agent at {url}: {source}")]
    Http { url: String, source: ureq::Error },
    #[error("the agent at {url} answered with an unreadable status: {source}")]
    Decode { url: String, source: serde_json::Error },
}

pub fn status(args: &StatusArgs) -> Result<(), StatusError> {
    let status = fetch(args.status_addr)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status).expect("status serializes"));
    } else if args.cluster {
        print!("{}", render_cluster(&status));
    } else {
        print!("{}", render(&status));
    }
    Ok(())
}

/// The `/status` document of the agent at `addr`.
pub fn fetch(addr: SocketAddr) -> Result<Status, StatusError> {
    let (url, body) = get(addr, "/status")?;
    serde_json::from_str(&body).map_err(|source| StatusError::Decode { url, source })
}

/// `GET http://<addr><path>` on the agent's status server: the URL and the body of a 2xx answer.
pub fn get(addr: SocketAddr, path: &str) -> Result<(String, String), StatusError> {
    let url = format!("http://{addr}{path}");
    let http = |source| StatusError::Http { url: url.clone(), source };
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(TIMEOUT)).build().into();
    let body = agent.get(&url).call().map_err(http)?.body_mut().read_to_string().map_err(http)?;
    Ok((url, body))
}
