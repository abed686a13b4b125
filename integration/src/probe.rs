//! TCP and UDP probes that report what the other side saw: a listener inside one namespace that
//! accepts one connection and returns the peer address, a client inside another. They show
//! whether source addresses survive (pod to pod) or are masqueraded (pod to the outside).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::cmd::{LabError, Result};
use crate::netns::{Netns, NsPath, within};

/// A listener accepting one connection, bound before [`Listener::start`] returns.
#[derive(Debug)]
pub struct Listener {
    accepted: JoinHandle<Result<SocketAddr>>,
}

impl Listener {
    /// Listens on [::]:`port` inside `ns` (both families; 0.0.0.0 where IPv6 is off); the
    /// accept waits at most `limit`.
    pub fn start(ns: &(impl NsPath + ?Sized), port: u16, limit: Duration) -> Result<Listener> {
        let (bound_tx, bound_rx) = mpsc::channel();
        let path: PathBuf = ns.ns_path();
        let accepted = std::thread::spawn(move || -> Result<SocketAddr> {
            within(&path, move || -> Result<SocketAddr> {
                let listener = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))
                    .or_else(|_| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
                    .and_then(|l| l.set_nonblocking(true).map(|()| l));
                let listener = match listener {
                    Ok(l) => {
                        let _ = bound_tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let err = format!("listen on port {port}: {e}");
                        let _ = bound_tx.send(Err(err.clone()));
                        return Err(LabError::Other(err));
                    }
                };
                let start = Instant::now();
                loop {
                    match listener.accept() {
                        // An IPv4 client on the dual-stack socket comes as ::ffff:a.b.c.d.
                        Ok((_, peer)) => return Ok(SocketAddr::new(peer.ip().to_canonical(), peer.port())),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            if start.elapsed() > limit {
                                return Err(LabError::Timeout {
                                    what: format!("a connection on port {port}"),
                                    secs: limit.as_secs_f64(),
                                });
                            }
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(e) => return Err(LabError::Other(format!("accept: {e}"))),
                    }
                }
            })?
        });
        match bound_rx.recv() {
            Ok(Ok(())) => Ok(Listener { accepted }),
            Ok(Err(e)) => Err(LabError::Other(e)),
            Err(_) => Err(accepted
                .join()
                .map_err(|_| LabError::Other("listener thread panicked".into()))?
                .err()
                .unwrap_or_else(|| LabError::Other("listener ended early".into()))),
        }
    }

    /// The address the accepted connection came from.
    pub fn peer(self) -> Result<SocketAddr> {
        self.accepted.join().map_err(|_| LabError::Other("listener thread panicked".into()))?
    }
}

/// Connects from inside `ns` to `to` (within `limit`) and sends a byte.
pub fn connect(ns: &(impl NsPath + ?Sized), to: impl Into<SocketAddr>, limit: Duration) -> Result<()> {
    let to: SocketAddr = to.into();
    within(&ns.ns_path(), move || {
        TcpStream::connect_timeout(&to, limit)
            .and_then(|mut s| s.write_all(b"x"))
            .map_err(|e| LabError::Other(format!("connect to {to}: {e}")))
    })?
}

/// Opens a TCP connection from `client` to `server_ip:port`, served inside `server`, and returns
/// the source address the server saw (the client's own, or a masquerading node's).
pub fn tcp_source_seen(
    server: &(impl NsPath + ?Sized),
    server_ip: impl Into<IpAddr>,
    port: u16,
    client: &(impl NsPath + ?Sized),
) -> Result<IpAddr> {
    let limit = Duration::from_secs(5);
    let listener = Listener::start(server, port, limit)?;
    connect(client, SocketAddr::new(server_ip.into(), port), limit)?;
    Ok(listener.peer()?.ip())
}

/// Sends one UDP datagram from inside `client` to `server_ip:port`, received by a socket bound
/// inside `server`, and returns the source address the server saw.
pub fn udp_source_seen(server: &Netns, server_ip: Ipv4Addr, port: u16, client: &Netns) -> Result<IpAddr> {
    let limit = Duration::from_secs(5);
    let socket = within(&server.path(), || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
            .and_then(|s| s.set_read_timeout(Some(limit)).map(|()| s))
            .map_err(|e| LabError::Other(format!("bind UDP port {port}: {e}")))
    })??;
    // The socket stays in the namespace it was created in; sending and receiving need no setns.
    within(&client.path(), || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
            .and_then(|s| s.send_to(b"x", SocketAddrV4::new(server_ip, port)))
            .map_err(|e| LabError::Other(format!("send to {server_ip}:{port}: {e}")))
    })??;
    let mut buf = [0u8; 16];
    let (_, peer) =
        socket.recv_from(&mut buf).map_err(|e| LabError::Other(format!("receive on UDP port {port}: {e}")))?;
    Ok(peer.ip())
}

/// Sends one UDP datagram with `payload` from `from` (an address inside `ns`) to `to`: traffic a
/// host there could forge.
pub fn send_udp(ns: &Netns, from: IpAddr, to: SocketAddr, payload: &[u8]) -> Result<()> {
    within(&ns.path(), || {
        UdpSocket::bind((from, 0))
            .and_then(|s| s.send_to(payload, to))
            .map(|_| ())
            .map_err(|e| LabError::Other(format!("send from {from} to {to}: {e}")))
    })?
}
