//! What gossip sends and receives through: a wrapper that counts datagrams and bytes in and out
//! of any chitchat transport, and the UDP transport that seals every datagram (`seal.rs`) or,
//! without a cluster key, sends plain chitchat.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::{ChitchatEnvelope, ChitchatMessage};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::watch;

use super::ping;
use super::seal::{self, Keyring, Rejection, ReplayGuard, Sealer};
use crate::clock::unix_ms;
use crate::logging::RateLimit;

/// The label of counters by reason.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Gossip traffic counters (registered by `http::metrics`).
#[derive(Debug, Clone, Default)]
pub struct GossipCounters {
    pub messages_in: Counter,
    pub messages_out: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    /// Datagrams dropped before chitchat saw them, by [`DropReason`].
    pub dropped: Family<ReasonLabel, Counter>,
    /// Members' `suspects` values ignored because they do not parse, each value once.
    pub malformed_suspicions: Counter,
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

/// Why a received datagram never reached chitchat: the `reason` label of
/// `weft_gossip_datagrams_dropped_total`. Anyone who can send UDP to the gossip port can cause
/// any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The seal did not open.
    Seal(Rejection),
    /// Not a chitchat message (once opened, when sealed).
    Malformed,
    /// A message of another gossip cluster (`--cluster-id`): chitchat would log every one.
    ForeignCluster,
}

impl DropReason {
    pub const ALL: [DropReason; 7] = [
        DropReason::Seal(Rejection::Unsealed),
        DropReason::Seal(Rejection::UnknownKey),
        DropReason::Seal(Rejection::Forged),
        DropReason::Seal(Rejection::Stale),
        DropReason::Seal(Rejection::Replayed),
        DropReason::Malformed,
        DropReason::ForeignCluster,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Seal(why) => why.as_str(),
            DropReason::Malformed => "malformed",
            DropReason::ForeignCluster => "foreign_cluster",
        }
    }
}

/// What sealing needs: the keyring, which can change at any time (key rotation), and how old a
/// sealed datagram may be by its sender's clock.
#[derive(Debug, Clone)]
pub struct Sealing {
    pub keys: watch::Receiver<Arc<Keyring>>,
    pub replay_window: Duration,
}

/// Gossip over UDP. Sealed: every datagram is sealed under the primary key of the current
/// keyring and opened with any of its keys. Without [`Sealing`], plain chitchat.
pub struct GossipUdp {
    cluster_id: String,
    sealing: Option<Sealing>,
    dropped: Family<ReasonLabel, Counter>,
}

impl GossipUdp {
    /// Gossip of cluster `cluster_id`, counting what it drops in `counters`.
    pub fn new(cluster_id: &str, sealing: Option<Sealing>, counters: &GossipCounters) -> GossipUdp {
        GossipUdp { cluster_id: cluster_id.to_string(), sealing, dropped: counters.dropped.clone() }
    }
}

#[async_trait]
impl Transport for GossipUdp {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = tokio::net::UdpSocket::bind(listen_addr)
            .await
            .with_context(|| format!("failed to bind to {listen_addr}/UDP for gossip"))?;
        Ok(Box::new(GossipSocket {
            socket,
            cluster_id: self.cluster_id.clone(),
            seal: self.sealing.clone().map(Seal::new),
            dropped: self.dropped.clone(),
            warned: RateLimit::default(),
            plain: Vec::new(),
            sealed: Vec::new(),
            buf: vec![0; 65_536].into_boxed_slice(),
        }))
    }
}

/// One socket's sealing state.
struct Seal {
    keys: watch::Receiver<Arc<Keyring>>,
    sealer: Sealer,
    guard: ReplayGuard,
}

impl Seal {
    fn new(sealing: Sealing) -> Seal {
        let window_ms = u64::try_from(sealing.replay_window.as_millis()).unwrap_or(u64::MAX);
        Seal { keys: sealing.keys, sealer: Sealer::new(rand::random()), guard: ReplayGuard::new(window_ms) }
    }

    fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        let ring = self.keys.borrow().clone();
        self.sealer.seal(&ring, rand::random(), unix_ms(SystemTime::now()), plain, out);
    }

    fn open(&mut self, datagram: &[u8]) -> Result<Vec<u8>, Rejection> {
        let ring = self.keys.borrow().clone();
        seal::open(&ring, &mut self.guard, unix_ms(SystemTime::now()), datagram)
    }
}

/// The chitchat message in a received datagram, or why it is dropped.
fn decode(seal: Option<&mut Seal>, cluster_id: &str, datagram: &[u8]) -> Result<ChitchatEnvelope, DropReason> {
    let opened;
    let mut bytes = match seal {
        Some(seal) => {
            opened = seal.open(datagram).map_err(DropReason::Seal)?;
            opened.as_slice()
        }
        None => datagram,
    };
    let envelope = ChitchatEnvelope::deserialize(&mut bytes).map_err(|_| DropReason::Malformed)?;
    match &envelope.message {
        // A monitor's ping or ack travels as a Syn of no cluster (`ping.rs`).
        ChitchatMessage::Syn { cluster_id: theirs, .. } if theirs != cluster_id && !ping::is_probe(theirs) => {
            Err(DropReason::ForeignCluster)
        }
        ChitchatMessage::BadCluster => Err(DropReason::ForeignCluster),
        _ => Ok(envelope),
    }
}

struct GossipSocket {
    socket: tokio::net::UdpSocket,
    cluster_id: String,
    seal: Option<Seal>,
    dropped: Family<ReasonLabel, Counter>,
    warned: RateLimit<DropReason>,
    plain: Vec<u8>,
    sealed: Vec<u8>,
    buf: Box<[u8]>,
}

impl GossipSocket {
    /// Counts every dropped datagram; logs them sparingly, as a flood of them is cheap to send.
    fn drop_datagram(&mut self, why: DropReason, from: SocketAddr, len: usize) {
        self.dropped.get_or_create(&ReasonLabel { reason: why.as_str() }).inc();
        if let Some(suppressed) = self.warned.admit(why, Instant::now()) {
            tracing::warn!(%from, len, reason = why.as_str(), suppressed, "dropped a gossip datagram (all are counted in weft_gossip_datagrams_dropped_total; logged at most every 10 s per reason, `suppressed` not logged since)");
        }
    }
}

/// Receive errors that say nothing about the socket itself (as chitchat's own UDP transport).
fn is_transient(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionRefused, ConnectionReset, OutOfMemory};
    matches!(err.kind(), ConnectionRefused | ConnectionReset | OutOfMemory)
}

#[async_trait]
impl Socket for GossipSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.socket.local_addr().context("failed to get UDP socket address")
    }

    async fn send(&mut self, to: SocketAddr, envelope: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        self.plain.clear();
        envelope.serialize(&mut self.plain);
        let datagram = match &mut self.seal {
            Some(seal) => {
                seal.seal(&self.plain, &mut self.sealed);
                &self.sealed
            }
            None => &self.plain,
        };
        let num_bytes_sent = self.socket.send_to(datagram, to).await.context("failed to send gossip to a peer")?;
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
            match decode(self.seal.as_mut(), &self.cluster_id, &self.buf[..len]) {
                Ok(envelope) => return Ok(RecvOutcome { from_addr, envelope, num_bytes_received: len }),
                Err(why) => self.drop_datagram(why, from_addr, len),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::monitors::MemberId;
    use crate::gossip::seal::KEY_LEN;

    fn envelope(message: ChitchatMessage) -> Vec<u8> {
        let mut bytes = Vec::new();
        ChitchatEnvelope { version: chitchat::ProtocolVersion::V0, message }.serialize(&mut bytes);
        bytes
    }

    fn syn(cluster_id: &str) -> Vec<u8> {
        envelope(ChitchatMessage::Syn { cluster_id: cluster_id.into(), digest: Default::default() })
    }

    fn seal_with(key: u8) -> Seal {
        let ring = Arc::new(Keyring::new(&[[key; KEY_LEN]]).unwrap());
        Seal::new(Sealing { keys: watch::channel(ring).1, replay_window: Duration::from_secs(60) })
    }

    #[test]
    fn plain_datagrams_are_dropped_unless_chitchat_of_this_cluster() {
        let decoded = |datagram: &[u8]| decode(None, "weft", datagram).map(|e| e.message);
        assert!(matches!(decoded(&syn("weft")), Ok(ChitchatMessage::Syn { .. })));
        assert_eq!(decoded(b"junk").unwrap_err(), DropReason::Malformed);
        assert_eq!(decoded(&syn("weft")[..5]).unwrap_err(), DropReason::Malformed, "truncated");
        assert_eq!(decoded(&syn("other")).unwrap_err(), DropReason::ForeignCluster);
        assert_eq!(decoded(&envelope(ChitchatMessage::BadCluster)).unwrap_err(), DropReason::ForeignCluster);
        // Monitor pings pass, for the ping layer above.
        let mut probe = Vec::new();
        ping::Probe::Ping { seq: 1, subject: MemberId::new("a", 1) }.envelope().serialize(&mut probe);
        assert!(decoded(&probe).is_ok());
    }

    #[test]
    fn sealed_datagrams_are_opened_before_they_are_decoded() {
        let (mut sender, mut receiver) = (seal_with(1), seal_with(1));
        let sealed = |sender: &mut Seal, plain: &[u8]| {
            let mut out = Vec::new();
            sender.seal(plain, &mut out);
            out
        };
        let good = sealed(&mut sender, &syn("weft"));
        assert!(decode(Some(&mut receiver), "weft", &good).is_ok());
        assert_eq!(decode(Some(&mut receiver), "weft", &good).unwrap_err(), DropReason::Seal(Rejection::Replayed));
        assert_eq!(
            decode(Some(&mut receiver), "weft", &syn("weft")).unwrap_err(),
            DropReason::Seal(Rejection::Unsealed)
        );
        let junk = sealed(&mut sender, b"not chitchat");
        assert_eq!(decode(Some(&mut receiver), "weft", &junk).unwrap_err(), DropReason::Malformed);
        let foreign = sealed(&mut sender, &syn("other"));
        assert_eq!(decode(Some(&mut receiver), "weft", &foreign).unwrap_err(), DropReason::ForeignCluster);
        let stranger = sealed(&mut seal_with(2), &syn("weft"));
        assert_eq!(
            decode(Some(&mut receiver), "weft", &stranger).unwrap_err(),
            DropReason::Seal(Rejection::UnknownKey)
        );
    }

    #[test]
    fn every_reason_has_its_own_label() {
        let mut labels: Vec<&str> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), DropReason::ALL.len());
        assert!(Rejection::ALL.iter().all(|r| DropReason::ALL.contains(&DropReason::Seal(*r))));
    }
}
