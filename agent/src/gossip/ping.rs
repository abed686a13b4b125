//! Monitor pings on the gossip socket. A ping or its ack travels as a chitchat Syn whose
//! cluster id starts with a NUL byte, which no configured cluster id has: so it passes through
//! every transport (sealed UDP, the simulator's in-memory one) unchanged, and a node of the
//! previous release drops it as a message of another cluster (counted under
//! `foreign_cluster`, never handed to chitchat). Pings go only to members announcing
//! `gossip-protocol`, so such a node only sees one if it took over a monitored member's address.
//!
//! [`Pinging`] wraps the transport chitchat uses: its socket answers pings addressed to this
//! node's generation at once, hands acks to the monitor task, sends the task's pings, and gives
//! everything else to chitchat.

use std::net::SocketAddr;
use std::sync::Mutex;

use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::{ChitchatEnvelope, ChitchatMessage, ProtocolVersion};
use tokio::sync::mpsc;

use super::monitors::MemberId;

/// How every ping and ack begins, inside the Syn's cluster id.
const PREFIX: &str = "\0weft-monitors-1";

/// A monitor's message: ping number `seq` for `subject`, or the subject's ack of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Ping { seq: u64, subject: MemberId },
    Ack { seq: u64, subject: MemberId },
}

impl Probe {
    pub fn envelope(&self) -> ChitchatEnvelope {
        let (kind, seq, subject) = match self {
            Probe::Ping { seq, subject } => ("ping", seq, subject),
            Probe::Ack { seq, subject } => ("ack", seq, subject),
        };
        let cluster_id = format!("{PREFIX} {kind} {seq} {} {}", subject.generation, subject.name);
        ChitchatEnvelope {
            version: ProtocolVersion::V0,
            message: ChitchatMessage::Syn { cluster_id, digest: Default::default() },
        }
    }

    /// The probe a chitchat message carries; `None` for gossip (and for malformed probes,
    /// which are dropped like any malformed datagram).
    pub fn of(message: &ChitchatMessage) -> Option<Probe> {
        let ChitchatMessage::Syn { cluster_id, .. } = message else { return None };
        let mut fields = cluster_id.strip_prefix(PREFIX)?.strip_prefix(' ')?.splitn(4, ' ');
        let (kind, seq, generation, name) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
        let subject = MemberId::new(name, generation.parse().ok()?);
        let seq = seq.parse().ok()?;
        match kind {
            "ping" => Some(Probe::Ping { seq, subject }),
            "ack" => Some(Probe::Ack { seq, subject }),
            _ => None,
        }
    }
}

/// Whether a Syn's cluster id is a monitor's message rather than another cluster's gossip.
pub fn is_probe(cluster_id: &str) -> bool {
    cluster_id.starts_with(PREFIX)
}

/// An ack received: the subject and the ping it answers.
pub type Answer = (MemberId, u64);

/// The transport chitchat gets: `inner` with monitor pings on the side.
pub struct Pinging<T> {
    inner: T,
    me: MemberId,
    outbox: Mutex<Option<mpsc::Receiver<(SocketAddr, Probe)>>>,
    answers: mpsc::Sender<Answer>,
}

impl<T: Transport> Pinging<T> {
    /// Pings for this node's generation `me` are answered; `outbox` holds the pings to send,
    /// `answers` receives the acks (dropped when full: a lost ack is a lost datagram).
    pub fn new(
        inner: T,
        me: MemberId,
        outbox: mpsc::Receiver<(SocketAddr, Probe)>,
        answers: mpsc::Sender<Answer>,
    ) -> Pinging<T> {
        Pinging { inner, me, outbox: Mutex::new(Some(outbox)), answers }
    }
}

#[async_trait]
impl<T: Transport> Transport for Pinging<T> {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let outbox = self.outbox.lock().expect("not poisoned").take();
        let outbox = outbox.ok_or_else(|| anyhow::anyhow!("the ping transport opens one socket"))?;
        let inner = self.inner.open(listen_addr).await?;
        Ok(Box::new(PingingSocket { inner, me: self.me.clone(), outbox, answers: self.answers.clone() }))
    }
}

struct PingingSocket {
    inner: Box<dyn Socket>,
    me: MemberId,
    outbox: mpsc::Receiver<(SocketAddr, Probe)>,
    answers: mpsc::Sender<Answer>,
}

impl PingingSocket {
    /// Sends a probe; a failure is a lost datagram, as for gossip (chitchat ignores them too).
    async fn send_probe(&mut self, to: SocketAddr, probe: &Probe) {
        if let Err(e) = self.inner.send(to, probe.envelope()).await {
            tracing::debug!(%to, error = %format!("{e:#}"), "monitor ping not sent");
        }
    }
}

#[async_trait]
impl Socket for PingingSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn send(&mut self, to: SocketAddr, envelope: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        self.inner.send(to, envelope).await
    }

    /// Sends the queued pings while it waits. Cancel-safe as far as gossip goes: the inner
    /// `recv` and the outbox are; cancelled in the middle of sending a probe, that probe is lost,
    /// as a datagram can be.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let outcome = tokio::select! {
                Some((to, ping)) = self.outbox.recv() => {
                    self.send_probe(to, &ping).await;
                    continue;
                }
                outcome = self.inner.recv() => outcome?,
            };
            match Probe::of(&outcome.envelope.message) {
                None => return Ok(outcome),
                Some(Probe::Ping { seq, subject }) if subject == self.me => {
                    self.send_probe(outcome.from_addr, &Probe::Ack { seq, subject }).await;
                }
                // A ping for an earlier or later run of this node: unanswered, so that its
                // monitors find that run gone.
                Some(Probe::Ping { .. }) => {}
                Some(Probe::Ack { seq, subject }) => {
                    let _ = self.answers.try_send((subject, seq));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chitchat::transport::ChannelTransport;

    use super::*;

    fn member(name: &str) -> MemberId {
        MemberId::new(name, 7)
    }

    #[test]
    fn probes_round_trip_through_the_wire_format() {
        for probe in
            [Probe::Ping { seq: 1, subject: member("node-a") }, Probe::Ack { seq: u64::MAX, subject: member("a.b-c") }]
        {
            let mut bytes = Vec::new();
            probe.envelope().serialize(&mut bytes);
            let envelope = ChitchatEnvelope::deserialize(&mut bytes.as_slice()).unwrap();
            assert_eq!(Probe::of(&envelope.message), Some(probe));
        }
    }

    #[test]
    fn a_probe_is_another_clusters_syn_to_a_previous_release() {
        // The previous release drops a Syn whose cluster id is not its own before chitchat sees
        // it: a probe must be such a Syn for every cluster id an agent can be given.
        let ChitchatMessage::Syn { cluster_id, digest } =
            Probe::Ping { seq: 3, subject: member("a") }.envelope().message
        else {
            panic!("a probe is a Syn");
        };
        assert!(cluster_id.starts_with('\0') && is_probe(&cluster_id));
        assert_eq!(digest, Default::default(), "an empty digest: nothing for chitchat to answer");
        assert!(!is_probe("weft"));
    }

    #[test]
    fn gossip_and_malformed_probes_are_not_probes() {
        let syn = |cluster_id: &str| ChitchatMessage::Syn { cluster_id: cluster_id.into(), digest: Default::default() };
        assert_eq!(Probe::of(&syn("weft")), None);
        for bad in ["", " ping 1 2", " pong 1 2 a", " ping x 2 a", " ping 1 x a", "ping 1 2 a"] {
            assert_eq!(Probe::of(&syn(&format!("{PREFIX}{bad}"))), None, "{bad:?}");
        }
        assert_eq!(Probe::of(&ChitchatMessage::BadCluster), None);
    }

    /// Two sockets on the in-memory transport: `a` pings `b`, which answers only pings for
    /// its own generation; gossip passes through untouched.
    #[tokio::test]
    async fn pings_for_this_generation_are_answered_and_gossip_passes_through() {
        let network = ChannelTransport::default();
        let addr = |i: u8| SocketAddr::from(([192, 0, 2, i], 7946));
        let open = |me: MemberId, i: u8| {
            let network = network.clone();
            async move {
                let (ping_tx, ping_rx) = mpsc::channel(8);
                let (answer_tx, answer_rx) = mpsc::channel(8);
                let socket = Pinging::new(network, me, ping_rx, answer_tx).open(addr(i)).await.unwrap();
                (socket, ping_tx, answer_rx)
            }
        };
        let (mut a, a_pings, mut a_answers) = open(member("a"), 1).await;
        let (mut b, _b_pings, _b_answers) = open(member("b"), 2).await;
        let b_serves = tokio::spawn(async move { b.recv().await.map(|o| o.envelope.message) });
        a_pings.send((addr(2), Probe::Ping { seq: 1, subject: MemberId::new("b", 6) })).await.unwrap();
        a_pings.send((addr(2), Probe::Ping { seq: 2, subject: member("b") })).await.unwrap();
        let a_waits = tokio::spawn(async move {
            let gossip = a.recv().await.map(|o| o.envelope.message);
            (a, gossip)
        });
        let answer = tokio::time::timeout(Duration::from_secs(5), a_answers.recv()).await.unwrap();
        assert_eq!(answer, Some((member("b"), 2)), "only the ping for b's own generation is answered");
        // Gossip from b reaches a's chitchat.
        let mut c = network.open(addr(3)).await.unwrap();
        let syn = || ChitchatEnvelope {
            version: ProtocolVersion::V0,
            message: ChitchatMessage::Syn { cluster_id: "weft".into(), digest: Default::default() },
        };
        c.send(addr(1), syn()).await.unwrap();
        let (_a, gossip) = tokio::time::timeout(Duration::from_secs(5), a_waits).await.unwrap().unwrap();
        assert!(matches!(gossip.unwrap(), ChitchatMessage::Syn { cluster_id, .. } if cluster_id == "weft"));
        c.send(addr(2), Probe::Ack { seq: 1, subject: member("x") }.envelope()).await.unwrap();
        c.send(addr(2), syn()).await.unwrap();
        let served = tokio::time::timeout(Duration::from_secs(5), b_serves).await.unwrap().unwrap();
        assert!(matches!(served.unwrap(), ChitchatMessage::Syn { cluster_id, .. } if cluster_id == "weft"));
    }
}
