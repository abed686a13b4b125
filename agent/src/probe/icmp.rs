//! ICMP echo over a raw socket. The probed node's kernel answers, whether or not its agent runs,
//! so a probe says what the path does, not what the peer's process does.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rustix::net::sockopt::{Ipv4PathMtuDiscovery, set_ip_mtu_discover};
use rustix::net::{AddressFamily, SocketFlags, SocketType, ipproto};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;
const IPV4_HEADER: usize = 20;
const ICMP_HEADER: usize = 8;
/// The smallest probe: an IPv4 header and an ICMP echo header with no payload.
pub const MIN_PROBE: u16 = (IPV4_HEADER + ICMP_HEADER) as u16;

/// Sends one echo and waits for its reply.
#[async_trait]
pub trait Pinger: Send + Sync {
    /// An echo to `dst` as an IPv4 packet of `size` bytes with don't-fragment set; the round
    /// trip time, or `None` when no reply came within `timeout` (or it could not be sent).
    async fn ping(&self, dst: Ipv4Addr, size: u16, timeout: Duration) -> Option<Duration>;

    /// When an echo request from `src` last arrived here (a peer's own probes): proof that
    /// the path from it to us works, whatever happens to ours.
    fn heard_from(&self, src: Ipv4Addr) -> Option<Instant>;
}

/// An ICMP echo request whose IPv4 packet is `size` bytes long (at least [`MIN_PROBE`]).
pub fn echo_request(id: u16, seq: u16, size: u16) -> Vec<u8> {
    let len = usize::from(size.max(MIN_PROBE)) - IPV4_HEADER;
    let mut msg = vec![0u8; len];
    msg[0] = ECHO_REQUEST;
    msg[4..6].copy_from_slice(&id.to_be_bytes());
    msg[6..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in msg[ICMP_HEADER..].iter_mut().enumerate() {
        *b = i as u8; // a recognisable pattern
    }
    let sum = checksum(&msg);
    msg[2..4].copy_from_slice(&sum.to_be_bytes());
    msg
}

/// An ICMP echo message read off a raw socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// An answer to one of ours: (id, sequence).
    Reply { id: u16, seq: u16 },
    /// Someone probing us, from this source address.
    Request { from: Ipv4Addr },
}

/// The echo in a whole IPv4 packet as a raw socket reads it; anything else is `None`.
pub fn parse_echo(packet: &[u8]) -> Option<Echo> {
    let header = usize::from(packet.first()? & 0x0f) * 4;
    let icmp = packet.get(header..)?;
    if header < IPV4_HEADER || icmp.len() < ICMP_HEADER || checksum(icmp) != 0 {
        return None;
    }
    match icmp[0] {
        ECHO_REPLY => Some(Echo::Reply {
            id: u16::from_be_bytes([icmp[4], icmp[5]]),
            seq: u16::from_be_bytes([icmp[6], icmp[7]]),
        }),
        ECHO_REQUEST => Some(Echo::Request { from: Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]) }),
        _ => None,
    }
}

/// The Internet checksum (RFC 1071); 0 over a message that carries a correct one.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Echoes waiting for their reply, by sequence number.
type Waiting = Arc<Mutex<HashMap<u16, oneshot::Sender<Instant>>>>;
/// When an echo request last arrived from each source.
type Heard = Arc<Mutex<HashMap<Ipv4Addr, Instant>>>;

/// The kernel's ICMP: one raw socket for every probe of this agent, a task matching replies.
pub struct RawPinger {
    socket: Arc<UdpSocket>,
    id: u16,
    next_seq: Mutex<u16>,
    waiting: Waiting,
    heard: Heard,
    receiver: JoinHandle<()>,
}

impl RawPinger {
    /// Opens the socket (needs CAP_NET_RAW) in the calling thread's network namespace.
    pub fn open() -> io::Result<RawPinger> {
        let fd: OwnedFd = rustix::net::socket_with(
            AddressFamily::INET,
            SocketType::RAW,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            Some(ipproto::ICMP),
        )?;
        // Don't-fragment on every probe, and no path MTU cache: each probe measures the path.
        set_ip_mtu_discover(&fd, Ipv4PathMtuDiscovery::PROBE)?;
        // A raw socket is a datagram socket: tokio's UDP socket drives it (sendto/recvfrom).
        let socket = Arc::new(UdpSocket::from_std(std::net::UdpSocket::from(fd))?);
        let (waiting, heard): (Waiting, Heard) = Default::default();
        let id: u16 = rand::random();
        let receiver = tokio::spawn(receive(socket.clone(), id, waiting.clone(), heard.clone()));
        Ok(RawPinger { socket, id, next_seq: Mutex::new(rand::random()), waiting, heard, receiver })
    }
}

impl Drop for RawPinger {
    fn drop(&mut self) {
        self.receiver.abort();
    }
}

/// Reads every ICMP packet the socket sees: completes the probe each of our replies answers,
/// and notes who probes us. (The kernel answers those requests itself.)
async fn receive(socket: Arc<UdpSocket>, id: u16, waiting: Waiting, heard: Heard) {
    let mut buf = vec![0u8; 65_536];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((len, _)) => {
                let at = Instant::now();
                match parse_echo(&buf[..len]) {
                    Some(Echo::Reply { id: reply_id, seq }) if reply_id == id => {
                        if let Some(done) = waiting.lock().expect("waiting").remove(&seq) {
                            let _ = done.send(at);
                        }
                    }
                    Some(Echo::Request { from }) => {
                        heard.lock().expect("heard").insert(from, at);
                    }
                    _ => {}
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "reading ICMP");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[async_trait]
impl Pinger for RawPinger {
    async fn ping(&self, dst: Ipv4Addr, size: u16, timeout: Duration) -> Option<Duration> {
        let seq = {
            let mut next = self.next_seq.lock().expect("seq");
            *next = next.wrapping_add(1);
            *next
        };
        let (done, reply) = oneshot::channel();
        self.waiting.lock().expect("waiting").insert(seq, done);
        let packet = echo_request(self.id, seq, size);
        let sent = Instant::now();
        // A probe larger than the route's MTU is refused at once (EMSGSIZE): it does not pass.
        let rtt = match self.socket.send_to(&packet, SocketAddrV4::new(dst, 0)).await {
            Ok(_) => tokio::time::timeout(timeout, reply).await.ok().and_then(Result::ok).map(|at| at - sent),
            Err(_) => None,
        };
        self.waiting.lock().expect("waiting").remove(&seq);
        rtt
    }

    fn heard_from(&self, src: Ipv4Addr) -> Option<Instant> {
        self.heard.lock().expect("heard").get(&src).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo request turned into the reply a kernel would send, behind an IPv4 header.
    fn as_reply(mut request: Vec<u8>) -> Vec<u8> {
        request[0] = ECHO_REPLY;
        request[2..4].copy_from_slice(&[0, 0]);
        let sum = checksum(&request);
        request[2..4].copy_from_slice(&sum.to_be_bytes());
        let mut packet = vec![0x45];
        packet.resize(IPV4_HEADER, 0);
        packet.extend(request);
        packet
    }

    #[test]
    fn a_request_has_the_asked_packet_size_and_a_valid_checksum() {
        let req = echo_request(0x1234, 7, 1450);
        assert_eq!(req.len() + IPV4_HEADER, 1450);
        assert_eq!((req[0], checksum(&req)), (ECHO_REQUEST, 0));
        assert_eq!(echo_request(1, 1, 0).len() + IPV4_HEADER, usize::from(MIN_PROBE));
        // An odd length checksums too.
        assert_eq!(checksum(&echo_request(1, 2, 1001)), 0);
    }

    #[test]
    fn replies_carry_id_and_sequence_requests_their_source_and_anything_else_is_ignored() {
        assert_eq!(parse_echo(&as_reply(echo_request(0xbeef, 42, 100))), Some(Echo::Reply { id: 0xbeef, seq: 42 }));
        let mut request = vec![0x45];
        request.resize(IPV4_HEADER, 0);
        request[12..16].copy_from_slice(&[10, 244, 7, 0]);
        request.extend(echo_request(1, 1, 64));
        assert_eq!(parse_echo(&request), Some(Echo::Request { from: Ipv4Addr::new(10, 244, 7, 0) }));
        let mut corrupt = as_reply(echo_request(1, 1, 64));
        corrupt[IPV4_HEADER + 10] ^= 0xff;
        assert_eq!(parse_echo(&corrupt), None);
        let mut unreachable = as_reply(echo_request(1, 1, 64));
        unreachable[IPV4_HEADER] = 3;
        assert_eq!(parse_echo(&unreachable), None);
        assert_eq!(parse_echo(&[0x45, 0, 0]), None);
        assert_eq!(parse_echo(&[]), None);
    }
}
