//! A minimal HTTP GET for talking to an agent's status endpoint from inside its node namespace
//! (the endpoint listens on the node's own loopback).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use crate::cmd::{LabError, Result};
use crate::netns;

/// Status code and body of `GET <path>` against `addr`, connecting from inside `node_netns`.
pub fn get(node_netns: &Path, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let err = |e: std::io::Error| LabError::Other(format!("GET http://{addr}{path}: {e}"));
    let timeout = Duration::from_secs(2);
    let mut stream = netns::within(node_netns, || TcpStream::connect_timeout(&addr, timeout))?.map_err(err)?;
    stream.set_read_timeout(Some(timeout)).map_err(err)?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").map_err(err)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(err)?;
    parse(&response).ok_or_else(|| LabError::Other(format!("GET http://{addr}{path}: malformed response")))
}

fn parse(response: &str) -> Option<(u16, String)> {
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() {
        let r = "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\r\nnot ready: no PodCIDR";
        assert_eq!(parse(r), Some((503, "not ready: no PodCIDR".into())));
        assert_eq!(parse("garbage"), None);
    }
}
