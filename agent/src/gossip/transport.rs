//! What gossip sends and receives through: a wrapper that counts datagrams and bytes in and out
//! of any chitchat transport, and the sealed UDP transport that encrypts and authenticates
//! every datagram (`seal.rs`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use async_trait::async_trait;
use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::watch;

use super::seal::{self, Keyring, Rejection, ReplayGuard, Sealer};
use crate::http::metrics::ReasonLabel;
use crate::reconcile::unix_ms;

/// Gossip traffic counters (registered by `http::metrics`).
#[derive(Debug, Clone, Default)]
pub struct GossipCounters {
    pub messages_in: Counter,
    pub messages_out: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    /// Datagrams dropped before chitchat saw them, by [`Rejection`].
    pub dropped: Family<ReasonLabel, Counter>,
}

pub struct Counting {
    inner: Arc<dyn Transport>,
    counters: GossipCounters,
}

impl Counting {
    pub fn new(inner: Arc<dyn Transport>, counters: GossipCounters) -> Counting {
        Counting { inner, counters }
    }
}

#[async_trait]
impl Transport for Counting {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        Ok(Box::new(CountingSocket { inner: self.inner.open(listen_addr).await?, counters: self.counters.clone() }))
    }
}

struct CountingSocket {
    inner: Box<dyn Socket>,
    counters: GossipCounters,
}

#[async_trait]
impl Socket for CountingSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn send(&mut self, to: SocketAddr, envelope: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        let outcome = self.inner.send(to, envelope).await?;
        self.counters.messages_out.inc();
        self.counters.bytes_out.inc_by(outcome.num_bytes_sent as u64);
        Ok(outcome)
    }

    /// Cancel-safe as long as the inner `recv` is: chitchat polls it inside `select!`.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        let outcome = self.inner.recv().await?;
        self.counters.messages_in.inc();
        self.counters.bytes_in.inc_by(outcome.num_bytes_received as u64);
        Ok(outcome)
    }
}

/// Gossip over UDP with every datagram sealed under the primary key of the current keyring and
/// opened with any of its keys. The keyring can change at any time (key rotation).
pub struct SealedUdp {
    keys: watch::Receiver<Arc<Keyring>>,
    replay_window: Duration,
    dropped: Family<ReasonLabel, Counter>,
}

impl SealedUdp {
    pub fn new(keys: watch::Receiver<Arc<Keyring>>, replay_window: Duration, counters: &GossipCounters) -> SealedUdp {
        SealedUdp { keys, replay_window, dropped: counters.dropped.clone() }
    }
}

#[async_trait]
impl Transport for SealedUdp {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = tokio::net::UdpSocket::bind(listen_addr)
            .await
            .with_context(|| format!("failed to bind to {listen_addr}/UDP for gossip"))?;
        let window_ms = u64::try_from(self.replay_window.as_millis()).unwrap_or(u64::MAX);
        Ok(Box::new(SealedSocket {
            socket,
            keys: self.keys.clone(),
            sealer: Sealer::new(rand::random()),
            guard: ReplayGuard::new(window_ms),
            dropped: self.dropped.clone(),
            warned: HashMap::new(),
            plain: Vec::new(),
            sealed: Vec::new(),
            buf: vec![0; 65_536].into_boxed_slice(),
        }))
    }
}

/// A warning per kind of dropped datagram at most this often: a flood must not flood the log.
const WARN_EVERY: Duration = Duration::from_secs(10);

struct SealedSocket {
    socket: tokio::net::UdpSocket,
    keys: watch::Receiver<Arc<Keyring>>,
    sealer: Sealer,
    guard: ReplayGuard,
    dropped: Family<ReasonLabel, Counter>,
    warned: HashMap<Rejection, Instant>,
    plain: Vec<u8>,
    sealed: Vec<u8>,
    buf: Box<[u8]>,
}

impl SealedSocket {
    fn drop_datagram(&mut self, why: Rejection, from: SocketAddr, len: usize) {
        self.dropped.get_or_create(&ReasonLabel { reason: why.as_str() }).inc();
        let now = Instant::now();
        if self.warned.get(&why).is_none_or(|at| now.duration_since(*at) >= WARN_EVERY) {
            self.warned.insert(why, now);
            tracing::warn!(%from, len, reason = why.as_str(), "dropped a gossip datagram (counted in weft_gossip_datagrams_dropped_total; logged at most every 10 s per reason)");
        }
    }
}

/// Receive errors that say nothing about the socket itself (as chitchat's own UDP transport).
fn is_transient(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionRefused, ConnectionReset, OutOfMemory};
    matches!(err.kind(), ConnectionRefused | ConnectionReset | OutOfMemory)
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.socket.local_addr().context("failed to get UDP socket address")
    }

    async fn send(&mut self, to: SocketAddr, envelope: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        self.plain.clear();
        envelope.serialize(&mut self.plain);
        let ring = self.keys.borrow().clone();
        self.sealer.seal(&ring, rand::random(), unix_ms(SystemTime::now()), &self.plain, &mut self.sealed);
        let num_bytes_sent = self.socket.send_to(&self.sealed, to).await.context("failed to send gossip to a peer")?;
        Ok(SendOutcome { num_bytes_sent })
    }

    /// Cancel-safe: the only await is `recv_from`, and a datagram is handled whole after it.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let (len, from_addr) = match self.socket.recv_from(&mut self.buf).await {
                Ok(received) => received,
                Err(e) if is_transient(&e) => continue,
                Err(e) => return Err(e).context("fatal UDP recv error"),
            };
            let ring = self.keys.borrow().clone();
            let opened = seal::open(&ring, &mut self.guard, unix_ms(SystemTime::now()), &self.buf[..len]);
            let plain = match opened {
                Ok(plain) => plain,
                Err(why) => {
                    self.drop_datagram(why, from_addr, len);
                    continue;
                }
            };
            match ChitchatEnvelope::deserialize(&mut plain.as_slice()) {
                Ok(envelope) => return Ok(RecvOutcome { from_addr, envelope, num_bytes_received: len }),
                // Sealed by a key holder yet not chitchat: a bug or a peer of another version.
                Err(e) => tracing::warn!(from = %from_addr, error = %e, "a sealed gossip datagram did not decode"),
            }
        }
    }
}
