//! N synthetic members of a cluster, announcing what agents announce: as the membership view an
//! agent would publish, or heard by an agent's gossip without a network (an in-memory chitchat
//! transport, and one short-lived plain chitchat instance per member that gossips its own
//! announcement to the agent a few times, the real protocol, and then stops; at most a few of
//! them run at a time, so the process holds the agent's state of N members and not N clusters'
//! worth).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::{
    ChitchatConfig, ChitchatEnvelope, ChitchatHandle, ChitchatId, ChitchatMessage, FailureDetectorConfig,
    ProtocolVersion, spawn_chitchat,
};
use ipnet::{IpNet, Ipv4Net};
use tokio::sync::mpsc;
use weft_agent::allocation::{Claim, ClaimKind};
use weft_agent::gossip::keys::{self, Facts};
use weft_agent::membership::{Liveness, Member, View};
use weft_agent::probe::summary::Summary;
use weft_agent::settings;
use weft_agent::validate::Pool;
use weft_overlay::Mac;
use weft_overlay::desired::{DEFAULT_VNI, DEFAULT_VXLAN_PORT};
use weft_overlay::underlay::NodeIps;

use crate::cmd::{LabError, Result};

type Inbox = mpsc::UnboundedSender<(SocketAddr, ChitchatEnvelope)>;

/// Every socket opened on it, by address; a datagram to an address nobody holds is lost.
#[derive(Clone, Default)]
pub struct Feed {
    sockets: Arc<Mutex<HashMap<SocketAddr, Inbox>>>,
    /// Told who sent each Ack, the last message of an exchange.
    acks: Arc<Mutex<Option<mpsc::UnboundedSender<SocketAddr>>>>,
}

struct FeedSocket {
    addr: SocketAddr,
    feed: Feed,
    inbox: mpsc::UnboundedReceiver<(SocketAddr, ChitchatEnvelope)>,
}

#[async_trait]
impl Transport for Feed {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let (tx, inbox) = mpsc::unbounded_channel();
        self.sockets.lock().expect("feed lock").insert(listen_addr, tx);
        Ok(Box::new(FeedSocket { addr: listen_addr, feed: self.clone(), inbox }))
    }
}

#[async_trait]
impl Socket for FeedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.addr)
    }

    async fn send(&mut self, to: SocketAddr, envelope: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        if matches!(envelope.message, ChitchatMessage::Ack { .. })
            && let Some(acks) = self.feed.acks.lock().expect("feed lock").as_ref()
        {
            let _ = acks.send(self.addr);
        }
        if let Some(inbox) = self.feed.sockets.lock().expect("feed lock").get(&to) {
            let _ = inbox.send((self.addr, envelope));
        }
        Ok(SendOutcome { num_bytes_sent: 0 })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        let (from_addr, envelope) =
            self.inbox.recv().await.ok_or_else(|| anyhow::anyhow!("feed socket {} closed", self.addr))?;
        Ok(RecvOutcome { from_addr, envelope, num_bytes_received: 0 })
    }
}

impl Drop for FeedSocket {
    fn drop(&mut self) {
        self.feed.sockets.lock().expect("feed lock").remove(&self.addr);
    }
}

/// The synthetic cluster: member `k` is `node-k`, with underlay address 2001:db8::1:k and block
/// `k + 1` of the cluster CIDR (block 0 is the agent's), announcing what an agent announces.
pub struct Members {
    pub pool: Pool,
    pub gossip_interval: Duration,
}

/// The gossip address of member `k` (its underlay address, the agent's default port).
pub fn addr(k: usize) -> SocketAddr {
    let k = u32::try_from(k).expect("member index fits 32 bits");
    SocketAddr::new(IpAddr::V6(Ipv6Addr::from(0x2001_0db8_0000_0000_0000_0000_0001_0000u128 + u128::from(k))), 7946)
}

impl Members {
    pub fn block(&self, k: usize) -> Result<IpNet> {
        let IpNet::V4(cluster) = self.pool.cluster_cidr else {
            return Err(LabError::Other("the synthetic cluster has IPv4 pods".into()));
        };
        let blocks: Option<Ipv4Net> = cluster.subnets(self.pool.node_prefix).ok().and_then(|mut b| b.nth(k));
        blocks.map(IpNet::V4).ok_or_else(|| LabError::Other(format!("no block {k} of {cluster}")))
    }

    /// What member `k` announces: an agent's keys with a confirmed block and a probe summary.
    pub fn key_values(&self, k: usize) -> Result<Vec<(String, String)>> {
        let name = format!("node-{k}");
        let facts = Facts {
            node_ips: NodeIps::new([addr(k).ip()]).map_err(LabError::other)?,
            vtep_mac: Mac::derived(&name),
            vni: DEFAULT_VNI,
            vxlan_port: DEFAULT_VXLAN_PORT,
            settings: settings::encode(&[self.pool], self.gossip_interval),
        };
        let claim = Claim { cidr: self.block(k + 1)?, kind: ClaimKind::Confirmed, since_ms: 1_765_000_000_000 };
        let mut kvs = facts.key_values(&[claim]);
        kvs.push((keys::DATAPLANE.to_string(), Summary::default().encode()));
        Ok(kvs)
    }

    /// The membership view an agent that heard members `0..n` alive publishes.
    pub fn view(&self, n: usize) -> Result<View> {
        let now = SystemTime::now();
        let mut members = (0..n)
            .map(|k| {
                Ok(Member {
                    name: format!("node-{k}"),
                    generation: GENERATION,
                    liveness: Liveness::Alive,
                    keys: self.key_values(k)?.into_iter().collect(),
                })
            })
            .collect::<Result<Vec<Member>>>()?;
        members.sort_by(|a, b| a.name.cmp(&b.name));
        let last_seen = members.iter().map(|m| ((m.name.clone(), m.generation), now)).collect();
        Ok(View { members, last_seen, suspected_partition: None })
    }

    /// Starts member `k` gossiping with the agent at `agent`.
    async fn start(&self, feed: &Feed, agent: SocketAddr, k: usize) -> Result<ChitchatHandle> {
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(format!("node-{k}"), GENERATION, addr(k)),
            cluster_id: CLUSTER_ID.into(),
            // Its first round (at once) is its only one: a Syn to the agent, its one seed.
            gossip_interval: Duration::from_secs(3600),
            listen_addr: addr(k),
            seed_nodes: vec![agent.to_string()],
            failure_detector_config: FailureDetectorConfig { sampling_window_size: 2, ..Default::default() },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V0,
        };
        spawn_chitchat(config, self.key_values(k)?, feed).await.map_err(LabError::other)
    }
}

pub const CLUSTER_ID: &str = "weft";
const GENERATION: u64 = 1;

/// Members announcing at once.
const AT_ONCE: usize = 16;
/// The longest wait for the next member's exchange with the agent.
const ACK_LIMIT: Duration = Duration::from_secs(30);

/// Exchanges each member starts with the agent: each ends with the member's Ack, the first
/// carrying its whole announcement. The agent's detector takes the first heartbeat it hears of a
/// member as its start, not as a beat, and needs two beats to judge it alive; each exchange
/// carries a newer heartbeat.
const EXCHANGES: u8 = 3;

/// Has members `0..n` announce themselves to the agent listening at `agent` on `feed`: each runs
/// [`EXCHANGES`] exchanges with the agent, then stops.
pub async fn fill(feed: &Feed, agent: SocketAddr, members: &Members, n: usize) -> Result<()> {
    let (tx, mut acked) = mpsc::unbounded_channel();
    *feed.acks.lock().expect("feed lock") = Some(tx);
    let mut running: HashMap<SocketAddr, (ChitchatHandle, u8)> = HashMap::new();
    let (mut next, mut done) = (0, 0);
    while done < n {
        while next < n && running.len() < AT_ONCE {
            running.insert(addr(next), (members.start(feed, agent, next).await?, 0));
            next += 1;
        }
        let from = tokio::time::timeout(ACK_LIMIT, acked.recv())
            .await
            .map_err(|_| LabError::Timeout {
                what: format!("member {} of {n} acknowledged", done + 1),
                secs: ACK_LIMIT.as_secs_f64(),
            })?
            .ok_or_else(|| LabError::Other("feed closed".into()))?;
        let Some((handle, exchanges)) = running.remove(&from) else { continue };
        if exchanges + 1 < EXCHANGES {
            handle.gossip(agent).map_err(LabError::other)?;
            running.insert(from, (handle, exchanges + 1));
        } else {
            let _ = handle.shutdown().await;
            done += 1;
        }
    }
    *feed.acks.lock().expect("feed lock") = None;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use weft_agent::config::GossipSettings;
    use weft_agent::gossip::Gossip;
    use weft_agent::gossip::transport::GossipCounters;
    use weft_agent::peers;
    use weft_agent::validate::Rules;

    fn members() -> Members {
        Members {
            pool: Pool { cluster_cidr: "10.244.0.0/16".parse().unwrap(), node_prefix: 29 },
            gossip_interval: Duration::from_millis(100),
        }
    }

    #[test]
    fn the_synthetic_members_are_valid_distinct_announcements() {
        let m = members();
        let rules = Rules {
            pools: vec![m.pool],
            vni: DEFAULT_VNI,
            vxlan_port: DEFAULT_VXLAN_PORT,
            local_node_ips: NodeIps::new(["2001:db8::1".parse().unwrap()]).unwrap(),
            settings: settings::encode(&[m.pool], m.gossip_interval),
        };
        let view = m.view(40).unwrap();
        let peers = peers::collect(&view, "local", 1, &rules);
        assert_eq!(peers.peers.len(), 40);
        assert!(peers.peers.iter().all(|p| p.announcement.is_ok()), "{:?}", peers.peers[0].announcement);
        let blocks: BTreeSet<IpNet> = peers.peers.iter().flat_map(|p| p.claims().iter().map(|c| c.cidr)).collect();
        assert_eq!(blocks.len(), 40);
        assert!(!blocks.contains(&m.block(0).unwrap()), "block 0 is left for the local node");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_agents_gossip_hears_every_member_alive_with_its_announcement() {
        let m = members();
        let feed = Feed::default();
        let settings = GossipSettings {
            cluster_id: CLUSTER_ID.into(),
            listen: "[2001:db8::1]:7946".parse().unwrap(),
            seeds: Vec::new(),
            interval: Duration::from_millis(100),
            phi_threshold: 1e9,
            dead_node_grace_period: Duration::from_secs(3600),
        };
        let gossip =
            Gossip::start(&settings, "local", 1, Vec::new(), Arc::new(feed.clone()), GossipCounters::default())
                .await
                .unwrap();
        fill(&feed, settings.listen, &m, 20).await.unwrap();
        let cancel = tokio_util::sync::CancellationToken::new();
        let (mut view, observer) = gossip.observe(cancel.clone());
        let expected = m.view(20).unwrap().members;
        tokio::time::timeout(Duration::from_secs(10), async {
            while view.borrow_and_update().members != expected {
                view.changed().await.unwrap();
            }
        })
        .await
        .expect("every member heard alive with its keys");
        cancel.cancel();
        observer.await.unwrap();
        gossip.abort().await;
    }
}
