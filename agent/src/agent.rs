//! The agent's core: gossip, the membership observer and the reconcile loop, started together
//! and stopped together. The `run` command wires it to UDP, the kernel and HTTP; tests wire it
//! to an in-memory transport and a recording datapath.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use chitchat::transport::Transport;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use weft_cni::state::NodeState;
use weft_overlay::Mac;
use weft_overlay::underlay::Family;

use crate::allocation::{self, Claim, ClaimKind};
use crate::clock::unix_ms;
use crate::config::{Config, ConfigError};
use crate::datapath::Datapath;
use crate::files::{self, FileError, Lease};
use crate::gossip::keys::Facts;
use crate::gossip::transport::GossipCounters;
use crate::gossip::{Gossip, GossipError};
use crate::probe::{self, icmp::Pinger};
use crate::reconcile::{self, Controller};
use crate::shared::Shared;
use crate::validate::{self, Pool};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Files(#[from] FileError),
    #[error(transparent)]
    Gossip(#[from] GossipError),
}

pub struct Agent {
    shared: Arc<Shared>,
    gossip: Gossip,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    generation: u64,
}

/// The claim a node starts with in one pool: its static PodCIDR of that family (keeping the
/// original claim time when the lease is for the same block), else a lease that still fits the
/// pool.
pub fn initial_claim(cfg: &Config, pool: &Pool, lease: Option<&Lease>, now_ms: u64) -> Option<Claim> {
    let usable =
        lease.filter(|l| l.cluster_cidr == pool.cluster_cidr && validate::check_pod_cidr(l.pod_cidr, pool).is_ok());
    match cfg.static_pod_cidr(Family::of_net(&pool.cluster_cidr)) {
        Some(cidr) => Some(Claim {
            cidr,
            kind: ClaimKind::Static,
            since_ms: usable.filter(|l| l.pod_cidr == cidr).map_or(now_ms, |l| l.since),
        }),
        None => usable.map(|l| Claim { cidr: l.pod_cidr, kind: ClaimKind::Confirmed, since_ms: l.since }),
    }
}

impl Agent {
    /// Starts the agent; `transport` makes the gossip transport, given the counters it may
    /// count dropped datagrams in; `pinger` sends the dataplane probes (without one, no peer is
    /// probed and every peer's dataplane stays unknown).
    pub async fn start(
        cfg: Config,
        transport: impl FnOnce(&GossipCounters) -> Arc<dyn Transport>,
        datapath: Arc<dyn Datapath>,
        pinger: Option<Arc<dyn Pinger>>,
    ) -> Result<Agent, StartError> {
        cfg.validate()?;
        let now_ms = unix_ms(SystemTime::now());
        let generation = files::next_generation(&cfg.paths.generation(), now_ms)?;
        let mut lease_on_disk = BTreeMap::new();
        let mut held = Vec::new();
        for pool in cfg.pools() {
            let family = Family::of_net(&pool.cluster_cidr);
            let lease = files::read_lease(&cfg.paths.lease(family)).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "ignoring an unreadable lease");
                None
            });
            let claim = initial_claim(&cfg, &pool, lease.as_ref(), now_ms);
            if let (Some(lease), None) = (&lease, claim) {
                tracing::warn!(pod_cidr = %lease.pod_cidr, "the persisted lease does not fit the cluster settings; allocating anew");
            }
            held.extend(claim);
            lease_on_disk.extend(lease.map(|l| (family, l)));
        }
        let state_on_disk = NodeState::read(&cfg.paths.state_file()).ok();
        let shared = Arc::new(Shared::default());
        let facts = Facts {
            node_ips: cfg.underlay.node_ips(),
            vtep_mac: Mac::derived(&cfg.node_name),
            vni: cfg.vni,
            vxlan_port: cfg.vxlan_port,
            settings: cfg.rules().settings,
        };
        let counters = shared.metrics.gossip_counters();
        let gossip = Gossip::start(
            &cfg.gossip,
            &cfg.node_name,
            generation,
            facts.key_values(&held.iter().copied().map(allocation::claiming).collect::<Vec<_>>()),
            transport(&counters),
            counters,
        )
        .await?;
        tracing::info!(
            node = %cfg.node_name,
            generation,
            node_ip = %cfg.underlay.node_ips(),
            gossip = %cfg.gossip.listen,
            seeds = ?cfg.gossip.seeds,
            pod_cidr = %if held.is_empty() {
                "to be allocated".to_string()
            } else {
                held.iter().map(|c| format!("{} (to be confirmed)", c.cidr)).collect::<Vec<_>>().join(", ")
            },
            "agent started"
        );
        let cancel = CancellationToken::new();
        let (view, observer) = gossip.observe(cancel.clone());
        let (probe_targets, targets) = tokio::sync::watch::channel(Vec::new());
        let mut tasks = vec![observer];
        let (recheck, recheck_requests) = tokio::sync::watch::channel(Vec::new());
        let (probes, rechecks) = match pinger {
            Some(pinger) => {
                let (probes, prober) = probe::spawn(pinger.clone(), targets, cfg.probe_interval, cancel.clone());
                let (rechecks, rechecker) = probe::recheck::spawn(pinger, recheck_requests, cancel.clone());
                tasks.extend([prober, rechecker]);
                (probes, rechecks)
            }
            None => (
                tokio::sync::watch::channel(Arc::new(probe::Results::new())).1,
                tokio::sync::watch::channel(Default::default()).1,
            ),
        };
        let controller = Controller::new(reconcile::Init {
            config: Arc::new(cfg),
            generation,
            gossip: gossip.publisher(),
            view,
            datapath,
            shared: shared.clone(),
            start: held,
            lease_on_disk,
            state_on_disk,
            probe_targets,
            recheck,
            rechecks,
            probes,
        });
        let reconciler = tokio::spawn(controller.run(cancel.clone()));
        let stopped = gossip.stopped();
        let (watcher_shared, watcher_cancel) = (shared.clone(), cancel.clone());
        let gossip_watch = tokio::spawn(async move {
            tokio::select! {
                reason = stopped => {
                    tracing::error!(%reason, "gossip stopped");
                    watcher_shared.gossip_stopped(reason);
                }
                _ = watcher_cancel.cancelled() => {}
            }
        });
        tasks.extend([reconciler, gossip_watch]);
        Ok(Agent { shared, gossip, cancel, tasks, generation })
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Graceful stop: finish the current turn, announce leaving, stop gossip. The datapath is
    /// left as it is, so pods keep working until the next agent adopts it.
    pub async fn stop(self) {
        self.cancel.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        self.gossip.leave().await;
        tracing::info!("agent stopped");
    }

    /// Stops everything at once without telling anybody, as a crash would.
    pub async fn kill(self) {
        self.cancel.cancel();
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
        self.gossip.abort().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::sample;

    fn lease(cidr: &str, cluster: &str) -> Lease {
        Lease { pod_cidr: cidr.parse().unwrap(), since: 42, cluster_cidr: cluster.parse().unwrap() }
    }

    #[test]
    fn a_fitting_lease_is_held_as_confirmed_with_its_original_time() {
        let cfg = sample();
        let pool = cfg.pools()[0];
        let l = lease("10.244.7.0/24", "10.244.0.0/16");
        assert_eq!(
            initial_claim(&cfg, &pool, Some(&l), 1000),
            Some(Claim { cidr: l.pod_cidr, kind: ClaimKind::Confirmed, since_ms: 42 })
        );
        assert_eq!(initial_claim(&cfg, &pool, None, 1000), None);
    }

    #[test]
    fn each_family_starts_from_its_own_static_block_or_lease() {
        let mut cfg = sample();
        cfg.cluster_cidrs.push("fd00:10:244::/56".parse().unwrap());
        cfg.pod_cidrs = vec!["fd00:10:244:9::/64".parse().unwrap()];
        let [v4, v6] = [cfg.pools()[0], cfg.pools()[1]];
        let l4 = lease("10.244.7.0/24", "10.244.0.0/16");
        let l6 = lease("fd00:10:244:3::/64", "fd00:10:244::/56");
        assert_eq!(initial_claim(&cfg, &v4, Some(&l4), 1000).unwrap().cidr, l4.pod_cidr);
        let held6 = initial_claim(&cfg, &v6, Some(&l6), 1000).unwrap();
        assert_eq!((held6.cidr, held6.kind, held6.since_ms), (cfg.pod_cidrs[0], ClaimKind::Static, 1000));
        // A lease of the other family never fits a pool.
        assert_eq!(initial_claim(&cfg, &v4, Some(&l6), 1000), None);
        cfg.pod_cidrs.clear();
        assert_eq!(initial_claim(&cfg, &v6, Some(&l6), 1000).unwrap().cidr, l6.pod_cidr);
    }

    #[test]
    fn a_lease_from_other_cluster_settings_is_ignored() {
        let cfg = sample();
        for l in [lease("10.244.7.0/24", "10.244.0.0/15"), lease("10.244.7.0/25", "10.244.0.0/16")] {
            assert_eq!(initial_claim(&cfg, &cfg.pools()[0], Some(&l), 1000), None);
        }
    }

    #[test]
    fn a_static_podcidr_keeps_the_lease_time_only_for_the_same_block() {
        let mut cfg = sample();
        cfg.pod_cidrs = vec!["10.244.7.0/24".parse().unwrap()];
        let same = lease("10.244.7.0/24", "10.244.0.0/16");
        let other = lease("10.244.8.0/24", "10.244.0.0/16");
        let held = |l: &Lease| initial_claim(&cfg, &cfg.pools()[0], Some(l), 1000).unwrap();
        assert_eq!(held(&same).kind, ClaimKind::Static);
        assert_eq!(held(&same).since_ms, 42);
        assert_eq!(held(&other).since_ms, 1000);
        assert_eq!(held(&other).cidr, cfg.pod_cidrs[0]);
    }
}
