//! A wrapper around chitchat's transport that counts datagrams and bytes in and out. Everything
//! gossip sends or receives passes here (the place for datagram sealing, too).

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use prometheus_client::metrics::counter::Counter;

/// Gossip traffic counters (registered by `http::metrics`).
#[derive(Debug, Clone, Default)]
pub struct GossipCounters {
    pub messages_in: Counter,
    pub messages_out: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
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
