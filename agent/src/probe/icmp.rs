//! ICMP echo over raw sockets, one per family (ICMPv4 and ICMPv6). The probed node's kernel
//! answers, whether or not its agent runs, so a probe says what the path does, not what the
//! peer's process does.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::socket::{setsockopt, sockopt::Ipv6DontFrag};
use rustix::net::sockopt::{Ipv4PathMtuDiscovery, Ipv6PathMtuDiscovery, set_ip_mtu_discover, set_ipv6_mtu_discover};
use rustix::net::{AddressFamily, SocketFlags, SocketType, ipproto};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use weft_overlay::underlay::Family;

const ICMP_HEADER: usize = 8;

/// The IP header in front of an echo: what a packet size counts besides the ICMP message.
fn ip_header(family: Family) -> usize {
    match family {
        Family::Ipv4 => 20,
        Family::Ipv6 => 40,
    }
}

/// The echo (request, reply) types: ICMPv4's 8 and 0, ICMPv6's 128 and 129.
fn echo_types(family: Family) -> (u8, u8) {
    match family {
        Family::Ipv4 => (8, 0),
        Family::Ipv6 => (128, 129),
    }
}

/// The smallest probe of a family: its IP header and an echo header with no payload (28 bytes
/// over IPv4, 48 over IPv6).
pub fn min_probe(family: Family) -> u16 {
    (ip_header(family) + ICMP_HEADER) as u16
}

/// Sends one echo and waits for its reply.
#[async_trait]
pub trait Pinger: Send + Sync {
    /// An echo to `dst` as an IP packet of `size` bytes that is not fragmented (don't-fragment
    /// set over IPv4, IPV6_DONTFRAG over IPv6); the round trip time, or `None` when no reply
    /// came within `timeout` (or it could not be sent).
    async fn ping(&self, dst: IpAddr, size: u16, timeout: Duration) -> Option<Duration>;

    /// When an echo request from `src` last arrived here (a peer's own probes): proof that
    /// the path from it to us works, whatever happens to ours.
    fn heard_from(&self, src: IpAddr) -> Option<Instant>;
}

/// The ICMP message of an echo request whose IP packet is `size` bytes long (at least
/// [`min_probe`]). The ICMPv4 checksum is ours to compute; the kernel fills in ICMPv6's, which
/// covers the IPv6 pseudo-header (it is mandatory on raw ICMPv6 sockets).
pub fn echo_request(family: Family, id: u16, seq: u16, size: u16) -> Vec<u8> {
    let len = usize::from(size.max(min_probe(family))) - ip_header(family);
    let mut msg = vec![0u8; len];
    msg[0] = echo_types(family).0;
    msg[4..6].copy_from_slice(&id.to_be_bytes());
    msg[6..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in msg[ICMP_HEADER..].iter_mut().enumerate() {
        *b = i as u8; // a recognisable pattern
    }
    if family == Family::Ipv4 {
        let sum = checksum(&msg);
        msg[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    msg
}

/// An ICMP echo message read off a raw socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// An answer to one of ours: (id, sequence).
    Reply { id: u16, seq: u16 },
    /// Someone probing us, from this source address.
    Request { from: IpAddr },
}

/// The echo in what a raw socket of `family` read from `from`; anything else is `None`. An
/// ICMPv4 socket reads the whole IPv4 packet and its checksum is checked here; an ICMPv6 socket
/// reads the message alone, its checksum already checked by the kernel.
pub fn parse_echo(family: Family, read: &[u8], from: IpAddr) -> Option<Echo> {
    let icmp = match family {
        Family::Ipv4 => {
            let header = usize::from(read.first()? & 0x0f) * 4;
            let icmp = read.get(header..)?;
            if header < ip_header(family) || checksum(icmp) != 0 {
                return None;
            }
            icmp
        }
        Family::Ipv6 => read,
    };
    if icmp.len() < ICMP_HEADER {
        return None;
    }
    let (request, reply) = echo_types(family);
    match icmp[0] {
        t if t == reply => Some(Echo::Reply {
            id: u16::from_be_bytes([icmp[4], icmp[5]]),
            seq: u16::from_be_bytes([icmp[6], icmp[7]]),
        }),
        t if t == request => Some(Echo::Request { from }),
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
type Heard = Arc<Mutex<HashMap<IpAddr, Instant>>>;

/// The kernel's ICMP: one raw socket per family for every probe of this agent, a task per
/// socket matching replies.
pub struct RawPinger {
    sockets: Vec<(Family, Arc<UdpSocket>)>,
    id: u16,
    next_seq: Mutex<u16>,
    waiting: Waiting,
    heard: Heard,
    receivers: Vec<JoinHandle<()>>,
}

/// A raw ICMP socket of `family` (needs CAP_NET_RAW) whose probes are never fragmented: the
/// kernel neither fragments them locally nor sizes them by a cached path MTU, so each probe
/// measures the path.
fn open_socket(family: Family) -> io::Result<UdpSocket> {
    let (domain, protocol) = match family {
        Family::Ipv4 => (AddressFamily::INET, ipproto::ICMP),
        Family::Ipv6 => (AddressFamily::INET6, ipproto::ICMPV6),
    };
    let fd: OwnedFd = rustix::net::socket_with(
        domain,
        SocketType::RAW,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        Some(protocol),
    )?;
    match family {
        Family::Ipv4 => set_ip_mtu_discover(&fd, Ipv4PathMtuDiscovery::PROBE)?,
        Family::Ipv6 => {
            // IPv6 has no don't-fragment bit: the sender fragments or not, and must not here.
            set_ipv6_mtu_discover(&fd, Ipv6PathMtuDiscovery::PROBE)?;
            setsockopt(&fd, Ipv6DontFrag, &true).map_err(io::Error::from)?;
        }
    }
    // A raw socket is a datagram socket: tokio's UDP socket drives it (sendto/recvfrom).
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

impl RawPinger {
    /// Opens a socket per family in the calling thread's network namespace. A family whose
    /// socket cannot be opened (IPv6 disabled in the kernel) is logged and its probes go
    /// unanswered; an error only when no family can be probed.
    pub fn open() -> io::Result<RawPinger> {
        let mut sockets = Vec::new();
        let mut last_error = None;
        for family in Family::ALL {
            match open_socket(family) {
                Ok(socket) => sockets.push((family, Arc::new(socket))),
                Err(e) => {
                    tracing::warn!(%family, error = %e, "cannot open the ICMP socket: probes of this family go unanswered");
                    last_error = Some(e);
                }
            }
        }
        if sockets.is_empty() {
            return Err(last_error.unwrap_or_else(|| io::Error::other("no family")));
        }
        let (waiting, heard): (Waiting, Heard) = Default::default();
        let id: u16 = rand::random();
        let receivers = sockets
            .iter()
            .map(|(family, socket)| tokio::spawn(receive(*family, socket.clone(), id, waiting.clone(), heard.clone())))
            .collect();
        Ok(RawPinger { sockets, id, next_seq: Mutex::new(rand::random()), waiting, heard, receivers })
    }
}

impl Drop for RawPinger {
    fn drop(&mut self) {
        for receiver in &self.receivers {
            receiver.abort();
        }
    }
}

/// Reads every ICMP packet one socket sees: completes the probe each of our replies answers,
/// and notes who probes us. (The kernel answers those requests itself.)
async fn receive(family: Family, socket: Arc<UdpSocket>, id: u16, waiting: Waiting, heard: Heard) {
    let mut buf = vec![0u8; 65_536];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((len, from)) => {
                let at = Instant::now();
                match parse_echo(family, &buf[..len], from.ip()) {
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
                tracing::debug!(%family, error = %e, "reading ICMP");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[async_trait]
impl Pinger for RawPinger {
    async fn ping(&self, dst: IpAddr, size: u16, timeout: Duration) -> Option<Duration> {
        let family = Family::of(dst);
        let socket = self.sockets.iter().find(|(f, _)| *f == family).map(|(_, s)| s)?;
        let seq = {
            let mut next = self.next_seq.lock().expect("seq");
            *next = next.wrapping_add(1);
            *next
        };
        let (done, reply) = oneshot::channel();
        self.waiting.lock().expect("waiting").insert(seq, done);
        let packet = echo_request(family, self.id, seq, size);
        let sent = Instant::now();
        // A probe larger than the route's MTU is refused at once (EMSGSIZE): it does not pass.
        let rtt = match socket.send_to(&packet, SocketAddr::new(dst, 0)).await {
            Ok(_) => tokio::time::timeout(timeout, reply).await.ok().and_then(Result::ok).map(|at| at - sent),
            Err(_) => None,
        };
        self.waiting.lock().expect("waiting").remove(&seq);
        rtt
    }

    fn heard_from(&self, src: IpAddr) -> Option<Instant> {
        self.heard.lock().expect("heard").get(&src).copied()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const V4: Family = Family::Ipv4;
    const V6: Family = Family::Ipv6;
    const FROM4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 244, 7, 0));
    const FROM6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x10, 0x244, 7, 0, 0, 0, 0));

    /// An echo request turned into the reply a kernel would send, as a raw socket of its family
    /// reads it (behind an IPv4 header; an ICMPv6 message alone).
    fn as_reply(family: Family, mut request: Vec<u8>) -> Vec<u8> {
        request[0] = echo_types(family).1;
        if family == V6 {
            return request;
        }
        request[2..4].copy_from_slice(&[0, 0]);
        let sum = checksum(&request);
        request[2..4].copy_from_slice(&sum.to_be_bytes());
        let mut packet = vec![0x45];
        packet.resize(ip_header(V4), 0);
        packet.extend(request);
        packet
    }

    #[test]
    fn a_request_has_the_asked_packet_size_in_both_families_and_a_valid_icmpv4_checksum() {
        for family in [V4, V6] {
            let req = echo_request(family, 0x1234, 7, 1450);
            assert_eq!(req.len() + ip_header(family), 1450);
            assert_eq!(req[0], echo_types(family).0);
            assert_eq!(echo_request(family, 1, 1, 0).len() + ip_header(family), usize::from(min_probe(family)));
        }
        assert_eq!((min_probe(V4), min_probe(V6)), (28, 48));
        assert_eq!(checksum(&echo_request(V4, 0x1234, 7, 1450)), 0);
        // An odd length checksums too.
        assert_eq!(checksum(&echo_request(V4, 1, 2, 1001)), 0);
    }

    #[test]
    fn replies_carry_id_and_sequence_requests_their_source_and_anything_else_is_ignored() {
        for (family, from) in [(V4, FROM4), (V6, FROM6)] {
            let reply = as_reply(family, echo_request(family, 0xbeef, 42, 100));
            assert_eq!(parse_echo(family, &reply, from), Some(Echo::Reply { id: 0xbeef, seq: 42 }), "{family}");
        }
        let mut request = vec![0x45];
        request.resize(ip_header(V4), 0);
        request.extend(echo_request(V4, 1, 1, 64));
        assert_eq!(parse_echo(V4, &request, FROM4), Some(Echo::Request { from: FROM4 }));
        assert_eq!(parse_echo(V6, &echo_request(V6, 1, 1, 64), FROM6), Some(Echo::Request { from: FROM6 }));
        let mut corrupt = as_reply(V4, echo_request(V4, 1, 1, 64));
        corrupt[ip_header(V4) + 10] ^= 0xff;
        assert_eq!(parse_echo(V4, &corrupt, FROM4), None);
        let mut unreachable = as_reply(V4, echo_request(V4, 1, 1, 64));
        unreachable[ip_header(V4)] = 3;
        assert_eq!(parse_echo(V4, &unreachable, FROM4), None);
        // ICMPv6's own traffic on the same socket (a neighbour solicitation) is not an echo.
        let mut solicitation = echo_request(V6, 1, 1, 72);
        solicitation[0] = 135;
        assert_eq!(parse_echo(V6, &solicitation, FROM6), None);
        // ICMPv4's echo types mean nothing over ICMPv6, and the reverse.
        assert_eq!(parse_echo(V6, &as_reply(V4, echo_request(V4, 1, 1, 64))[20..], FROM6), None);
        assert_eq!(parse_echo(V4, &[0x45, 0, 0], FROM4), None);
        assert_eq!(parse_echo(V6, &[129, 0, 0], FROM6), None);
        assert_eq!(parse_echo(V4, &[], FROM4), None);
    }
}
