//! What the network does to a connection: which source address a listener sees.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use crate::cmd::{LabError, Result};
use crate::netns;

/// Opens a TCP connection from `client_ns` to `server_ip:port`, served by a listener inside
/// `server_ns`, and returns the source address the server saw (masqueraded or not).
pub fn tcp_source_seen(server_ns: &Path, server_ip: Ipv4Addr, port: u16, client_ns: &Path) -> Result<IpAddr> {
    let err = |what: &str, e: std::io::Error| LabError::Other(format!("{what}: {e}"));
    let listener = netns::within(server_ns, || TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))?
        .map_err(|e| err("bind listener", e))?;
    let dst = SocketAddr::from((server_ip, port));
    let _client = netns::within(client_ns, || TcpStream::connect_timeout(&dst, Duration::from_secs(3)))?
        .map_err(|e| err(&format!("connect to {dst}"), e))?;
    listener.set_nonblocking(false).map_err(|e| err("listener", e))?;
    let (_, peer) = listener.accept().map_err(|e| err("accept", e))?;
    Ok(peer.ip())
}
