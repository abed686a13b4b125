//! The reconcile loop. Every turn it reads the whole membership view and derives everything
//! from it: this node's PodCIDR claim, its files, the desired datapath state, the status. It
//! turns on membership changes (debounced), on timers while allocating or settling, on retries
//! with backoff after a failed apply, and on a periodic full resync. Nothing is replayed:
//! a turn that sees the same inputs changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;
use weft_cni::state::{NodePool, NodeState, STATE_FILE_VERSION};
use weft_overlay::desired::{Desired, LocalNode, vtep_of};
use weft_overlay::rules::{DEFAULT_BRIDGE, first_host};
use weft_overlay::underlay::Family;
use weft_overlay::{ApplyReport, Mac};

use crate::allocation::{Allocator, Claim, Conflict, Outcome, Phase, StepInput};
use crate::clock::unix_ms;
use crate::config::Config;
use crate::datapath::{Datapath, DatapathError};
use crate::files::{self, Lease};
use crate::gossip::{Publisher, keys};
use crate::http::metrics::ApplyKind;
use crate::http::status::{
    self, IpamUse, NamesakeStatus, ReadinessInput, ReconcileStatus, ServingInput, Status, StrandedPods,
};
use crate::identity::{self, Namesake};
use crate::membership::{Liveness, Member, Settle, View};
use crate::peers::{self, Decided, Peers};
use crate::probe::summary::Summary;
use crate::probe::{self, verdict::Dataplane};
use crate::settings::{self, Refusal};
use crate::shared::Shared;
use crate::validate::{Rejection, Rules};

/// Membership changes arriving within this window are handled in one turn.
pub const DEBOUNCE: Duration = Duration::from_millis(50);
/// Gossip rounds an automatic claim must survive before it is confirmed: enough for the claim
/// to reach every node and for a competing claim to come back, with margin.
pub const CONFIRM_ROUNDS: u32 = 10;
/// Quiet membership rounds after which membership counts as settled.
pub const SETTLE_ROUNDS: u32 = 3;
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// The longest the loop sleeps, so liveness and status stay fresh.
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// What the agent hands the loop at start.
pub struct Init {
    pub config: Arc<Config>,
    pub generation: u64,
    pub gossip: Publisher,
    pub view: watch::Receiver<Arc<View>>,
    pub datapath: Arc<dyn Datapath>,
    pub shared: Arc<Shared>,
    /// Static PodCIDRs or persisted leases, at most one per pool: claimed at once, served once
    /// confirmed.
    pub start: Vec<Claim>,
    /// The lease files as found at start (possibly no longer usable).
    pub lease_on_disk: BTreeMap<Family, Lease>,
    /// The node state file as found at start.
    pub state_on_disk: Option<NodeState>,
    /// Where the peers to probe go.
    pub probe_targets: watch::Sender<Vec<Arc<probe::Target>>>,
    /// The probes' latest verdicts.
    pub probes: watch::Receiver<Arc<probe::Results>>,
    /// Where the peers to recheck at once go (`probe::recheck`).
    pub recheck: watch::Sender<Vec<Arc<probe::Target>>>,
    /// The rechecks' results.
    pub rechecks: watch::Receiver<probe::recheck::Rechecks>,
}

pub struct Controller {
    cfg: Arc<Config>,
    rules: Rules,
    generation: u64,
    vtep_mac: Mac,
    gossip: Publisher,
    view: watch::Receiver<Arc<View>>,
    datapath: Arc<dyn Datapath>,
    shared: Arc<Shared>,
    /// One per pool of the cluster, IPv4 first: each family's block is allocated on its own
    /// (claims of another family are never in the way).
    allocators: Vec<Allocator>,
    settle: Settle,
    /// What gossip has of each allocator's claim.
    published_claims: Vec<Option<Claim>>,
    lease_on_disk: BTreeMap<Family, Lease>,
    state_on_disk: Option<NodeState>,
    conflist_written: bool,
    files_error: Option<String>,
    last_attempt: Option<Desired>,
    retry: Option<(Instant, Duration)>,
    next_resync: Instant,
    programmed: BTreeSet<String>,
    last_reconcile: Option<ReconcileStatus>,
    rejections: BTreeMap<String, Rejection>,
    conflicts: Vec<Conflict>,
    /// Other live agents announcing this node's name from other addresses.
    namesakes: Vec<Namesake>,
    /// The one this agent yields its name to: it serves nothing meanwhile.
    yielded_to: Option<Namesake>,
    /// Why this agent's settings are not the cluster's: it serves nothing meanwhile.
    settings_refusal: Option<Refusal>,
    probe_targets: watch::Sender<Vec<Arc<probe::Target>>>,
    probes: watch::Receiver<Arc<probe::Results>>,
    recheck: watch::Sender<Vec<Arc<probe::Target>>>,
    rechecks: watch::Receiver<probe::recheck::Rechecks>,
    /// Another node has been heard alive since start.
    heard_peers: bool,
    /// This node's probe summary as last published in gossip.
    published_summary: String,
}

impl Controller {
    pub fn new(init: Init) -> Controller {
        let cfg = init.config;
        let now = Instant::now();
        let interval = cfg.gossip.interval;
        let allocators: Vec<Allocator> = cfg
            .pools()
            .iter()
            .map(|pool| {
                let family = Family::of_net(&pool.cluster_cidr);
                let start = init.start.iter().copied().find(|c| Family::of_net(&c.cidr) == family);
                let confirm = interval * CONFIRM_ROUNDS;
                Allocator::new(&cfg.node_name, pool.cluster_cidr, pool.node_prefix, confirm, start, now)
            })
            .collect();
        Controller {
            rules: cfg.rules(),
            generation: init.generation,
            vtep_mac: Mac::derived(&cfg.node_name),
            published_claims: allocators.iter().map(Allocator::claim).collect(),
            allocators,
            settle: Settle::new(now, cfg.startup_grace, interval * SETTLE_ROUNDS, cfg.expects_peers()),
            lease_on_disk: init.lease_on_disk,
            state_on_disk: init.state_on_disk,
            conflist_written: false,
            files_error: None,
            last_attempt: None,
            retry: None,
            next_resync: now,
            programmed: BTreeSet::new(),
            last_reconcile: None,
            rejections: BTreeMap::new(),
            conflicts: Vec::new(),
            namesakes: Vec::new(),
            yielded_to: None,
            settings_refusal: None,
            probe_targets: init.probe_targets,
            probes: init.probes,
            recheck: init.recheck,
            rechecks: init.rechecks,
            heard_peers: false,
            published_summary: Summary::default().encode(),
            gossip: init.gossip,
            view: init.view,
            datapath: init.datapath,
            shared: init.shared,
            cfg,
        }
    }

    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            self.turn().await;
            let wake = self.next_wake();
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = self.view.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = sleep(DEBOUNCE) => {}
                    }
                }
                _ = sleep_until(wake) => {}
                // A recheck of a peer gossip declared gone came back.
                Ok(()) = self.rechecks.changed() => {}
            }
        }
    }

    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut wake = (now + IDLE_WAKE).min(self.next_resync);
        if let Some((at, _)) = self.retry {
            wake = wake.min(at);
        }
        let allocating = self.allocators.iter().any(|a| matches!(a.phase(), Phase::Waiting | Phase::Claiming { .. }));
        if allocating || !self.settle.is_settled() {
            wake = wake.min(now + self.cfg.gossip.interval);
        }
        wake
    }

    async fn turn(&mut self) {
        self.shared.beat();
        let now = Instant::now();
        let view = self.view.borrow_and_update().clone();
        let settled = self.settle.observe(&view, now);
        let peers = peers::collect(&view, &self.cfg.node_name, self.generation, &self.rules);
        self.check_name(&peers.same_name, settled).await;
        self.check_settings(&peers, settled);
        let others = peers.claimants();
        let now_ms = unix_ms(SystemTime::now());
        for allocator in &mut self.allocators {
            let outcome = if self.yielded_to.is_some() || self.settings_refusal.is_some() {
                allocator.withdraw();
                Outcome::Unchanged
            } else {
                let family = Family::of_net(&allocator.pool());
                allocator.step(&StepInput {
                    now,
                    now_ms,
                    settled,
                    others: &others,
                    previous: peers.previous_self.iter().copied().find(|c| Family::of_net(&c.cidr) == family),
                    random: rand::random(),
                })
            };
            log_outcome(&outcome);
        }
        self.publish_claims().await;
        let (local_ips, subnets) = (self.cfg.underlay.node_ips(), self.cfg.underlay.subnets());
        let pods = self.pod_families();
        let tunnel_answers = self.tunnel_answers(&view, &peers);
        let verdicts = peers::decide(
            &peers,
            &self.cfg.node_name,
            &self.claims(),
            |ips| crate::desired::path(self.cfg.encap, &local_ips, &subnets, &pods, ips),
            &tunnel_answers,
        );
        self.note_rejections(&peers);
        self.note_conflicts(&verdicts.conflicts);
        let serving = status::serving_all(self.allocators.iter().map(|a| ServingInput {
            node: &self.cfg.node_name,
            phase: a.phase(),
            conflicts: &verdicts.conflicts,
            name_in_use_by: self.yielded_to.as_ref(),
            settings_refusal: self.settings_refusal.as_ref(),
        }));
        // The periodic resync rewrites the files and re-applies the datapath even when nothing
        // changed here, repairing whatever was changed under us.
        let resync = now >= self.next_resync;
        if resync {
            self.next_resync = now + self.cfg.resync_interval;
        }
        self.sync_files(&serving, resync);
        if let (Ok(held), true) = (&serving, settled) {
            let desired = self.desired(held, &verdicts);
            if resync || self.apply_due(&desired, now) {
                // In full on the resync timer and while a failed apply awaits its retry;
                // otherwise only the change, when the datapath can tell it.
                let full = resync || self.retry.is_some();
                self.apply(desired, full).await;
            }
        }
        let reserved = self.pod_addresses();
        let stranded = self.stranded(&serving, &reserved);
        let ipam = ipam_use(&self.pod_families(), serving.as_deref().unwrap_or_default(), &reserved);
        let summary = self.publish_status(&view, &verdicts, settled, &serving, stranded, ipam);
        self.publish_summary(&summary).await;
    }

    /// Puts this node's probe summary in gossip when it changed, for `status --cluster`.
    async fn publish_summary(&mut self, summary: &Summary) {
        let encoded = summary.encode();
        if encoded != self.published_summary {
            self.gossip.publish(keys::DATAPLANE, &encoded).await;
            self.published_summary = encoded;
        }
    }

    /// Programmed peers that gossip says are gone, whose tunnel answered the latest probe, heard
    /// last within `--agent-down-grace`: their agent stopped (an upgrade, a crash and restart),
    /// their node did not, and their pods keep working only if their routes stay. Each is
    /// rechecked at once (the latest round may be an interval old) and dropped if the recheck
    /// finds it silent; kept meanwhile.
    fn tunnel_answers(&self, view: &View, peers: &Peers) -> BTreeSet<String> {
        let probes = self.probes.borrow();
        let now = SystemTime::now();
        let kept: BTreeSet<String> = peers
            .peers
            .iter()
            .filter(|p| !p.liveness.programmable() && self.programmed.contains(&p.name))
            .filter(|p| probes.get(&p.name).is_some_and(|d| d.answering))
            .filter(|p| {
                view.last_seen(&p.name, p.generation)
                    .is_some_and(|seen| now.duration_since(seen).unwrap_or_default() < self.cfg.agent_down_grace)
            })
            .map(|p| p.name.clone())
            .collect();
        let requests: Vec<Arc<probe::Target>> =
            self.probe_targets.borrow().iter().filter(|t| kept.contains(&t.peer)).cloned().collect();
        self.recheck.send_if_modified(|current| {
            let changed = *current != requests;
            *current = requests;
            changed
        });
        let rechecks = self.rechecks.borrow();
        kept.into_iter().filter(|name| rechecks.get(name) != Some(&false)).collect()
    }

    /// Decides whether this agent may use its node name (see [`identity`]), and says so in
    /// gossip, the log and the metrics when that changes.
    async fn check_name(&mut self, same_name: &[Member], settled: bool) {
        let me = identity::Me {
            node_ip: self.cfg.underlay.primary().ip,
            generation: self.generation,
            established: self.allocators.iter().any(|a| a.held().is_some()),
            refused: self.yielded_to.is_some(),
        };
        let same_name: Vec<&Member> = same_name.iter().collect();
        let mut namesakes = identity::namesakes(&me, &same_name);
        namesakes.retain(|n| !matches!(n.liveness, Liveness::Dead | Liveness::Left));
        let yielded_to = if settled { identity::yield_to(&me, &namesakes) } else { None };
        for n in namesakes.iter().filter(|n| !self.namesakes.iter().any(|o| o.node_ip == n.node_ip)) {
            if yielded_to.is_none() {
                tracing::warn!(
                    node = %self.cfg.node_name, other = %n.node_ip, generation = n.generation,
                    "another agent announces this node's name; this agent holds it and keeps it"
                );
            }
        }
        match (&self.yielded_to, &yielded_to) {
            (None, Some(other)) => {
                tracing::error!(
                    node = %self.cfg.node_name, other = %other.node_ip, generation = other.generation,
                    "node name in use by another live agent: not serving any PodCIDR; give this agent another --node-name"
                );
                self.gossip.publish(keys::STATUS, keys::STATUS_REFUSED).await;
            }
            (Some(_), None) => {
                tracing::info!(node = %self.cfg.node_name, "the other agent using this node's name is gone: taking the name");
                self.gossip.publish(keys::STATUS, keys::STATUS_UP).await;
            }
            _ => {}
        }
        self.shared.metrics.set_name_in_use(yielded_to.is_some());
        self.namesakes = namesakes;
        self.yielded_to = yielded_to;
    }

    /// Decides whether this agent's settings let it serve (see [`settings`]), and says so in
    /// the log when that changes. Only on a settled view: a partial one may lack the node that
    /// holds the cluster's settings.
    fn check_settings(&mut self, peers: &Peers, settled: bool) {
        let refusal = if settled { settings::refusal(self.generation, &peers.peers) } else { None };
        match (&self.settings_refusal, &refusal) {
            (None, Some(r)) => tracing::error!(node = %self.cfg.node_name, "{r}: not serving any PodCIDR"),
            (Some(_), None) => tracing::info!(node = %self.cfg.node_name, "no settings in the way any more: serving"),
            _ => {}
        }
        self.settings_refusal = refusal;
    }

    /// The cluster's pod families, IPv4 first.
    fn pod_families(&self) -> Vec<Family> {
        self.allocators.iter().map(|a| Family::of_net(&a.pool())).collect()
    }

    /// The claims the allocators announce, IPv4 first.
    fn claims(&self) -> Vec<Claim> {
        self.allocators.iter().filter_map(Allocator::claim).collect()
    }

    /// The pod addresses of the families this node serves that the plugin's store holds for
    /// this node's network (read without its lock; a store that cannot be read counts as empty
    /// and says so in the debug log). Addresses of a family the cluster lacks are not the
    /// agent's to judge.
    fn pod_addresses(&self) -> Vec<IpAddr> {
        let store = self.cfg.paths.ipam_dir.join(files::NETWORK_NAME);
        let families = self.pod_families();
        weft_cni::ipam::store::reserved_addresses(&store)
            .inspect_err(|e| tracing::debug!(error = %e, store = %store.display(), "cannot list pod addresses"))
            .unwrap_or_default()
            .into_iter()
            .filter(|ip| families.contains(&Family::of(*ip)))
            .collect()
    }

    /// Pods whose addresses lie outside the block this node serves: reported, never touched
    /// (deleting a pod is its owner's decision). Not judged while a claim is still settling.
    fn stranded(&self, serving: &Result<Vec<Claim>, String>, reserved: &[IpAddr]) -> Option<StrandedPods> {
        let settled_without_block =
            self.allocators.iter().any(|a| matches!(a.phase(), Phase::Blocked { .. } | Phase::Exhausted(_)))
                || self.yielded_to.is_some();
        if serving.is_err() && !settled_without_block {
            return None;
        }
        let outside: Vec<IpAddr> = reserved
            .iter()
            .copied()
            .filter(|ip| !serving.as_ref().is_ok_and(|held| held.iter().any(|c| c.cidr.contains(ip))))
            .collect();
        if outside.is_empty() {
            return None;
        }
        let reason = match serving {
            Ok(held) => format!(
                "outside this node's PodCIDR {}: their block belongs to another node or to none now, so they \
                 cannot reach pods on other nodes; delete them so that their controllers recreate them",
                held.iter().map(|c| c.cidr.to_string()).collect::<Vec<_>>().join(", ")
            ),
            Err(why) => format!("this node serves no PodCIDR ({why}); they cannot reach pods on other nodes"),
        };
        Some(StrandedPods {
            count: outside.len(),
            addresses: outside.into_iter().take(status::STRANDED_SHOWN).collect(),
            reason,
        })
    }

    /// Announces each allocator's current claim under its family's key (or withdraws it) if
    /// gossip does not have it yet.
    async fn publish_claims(&mut self) {
        for (allocator, published) in self.allocators.iter().zip(&mut self.published_claims) {
            let claim = allocator.claim();
            if claim == *published {
                continue;
            }
            let key = keys::pod_cidr_key(Family::of_net(&allocator.pool()));
            match claim {
                Some(c) => self.gossip.publish(key, &keys::encode_claim(&c)).await,
                None => self.gossip.withdraw(key).await,
            }
            *published = claim;
        }
    }

    /// Makes the lease, node state file and conflist match the PodCIDR the node serves.
    /// Failures are kept for status and retried on the next turn.
    fn sync_files(&mut self, serving: &Result<Vec<Claim>, String>, rewrite: bool) {
        let result = self.write_files(serving, rewrite);
        let error = result.err().map(|e| e.to_string());
        if error.is_some() && error != self.files_error {
            tracing::warn!(error = error.as_deref(), "cannot write the node's files");
        }
        self.files_error = error;
    }

    /// `rewrite` writes (or removes) even what should already be in place.
    ///
    /// The leases follow the blocks the node serves (one file per family); a block it only
    /// claims, or cannot serve, leaves the last lease in place (a restart claims that one
    /// again). The state file names every block the node serves, so the plugin gives each pod an
    /// address of every family; while it serves none, the blocks it claims or last published,
    /// marked unavailable with the reason: the plugin then refuses ADDs with it.
    fn write_files(&mut self, serving: &Result<Vec<Claim>, String>, rewrite: bool) -> Result<(), files::FileError> {
        let cfg = &self.cfg;
        let pools = cfg.pools();
        let cluster_of = |cidr: &IpNet| {
            let family = Family::of_net(cidr);
            pools.iter().find(|p| Family::of_net(&p.cluster_cidr) == family).map(|p| p.cluster_cidr)
        };
        for c in serving.iter().flatten() {
            let family = Family::of_net(&c.cidr);
            let Some(cluster_cidr) = cluster_of(&c.cidr) else { continue };
            let lease = Lease { pod_cidr: c.cidr, since: c.since_ms, cluster_cidr };
            if rewrite || Some(&lease) != self.lease_on_disk.get(&family) {
                files::write_lease(&cfg.paths.lease(family), &lease)?;
                self.lease_on_disk.insert(family, lease);
            }
        }
        let blocks: Vec<IpNet> = match serving {
            Ok(held) => held.iter().map(|c| c.cidr).collect(),
            Err(_) => {
                let claimed: Vec<IpNet> = self.claims().iter().map(|c| c.cidr).collect();
                if claimed.is_empty() {
                    self.state_on_disk.as_ref().map(published_blocks).unwrap_or_default()
                } else {
                    claimed
                }
            }
        };
        let node_pools: Vec<NodePool> = blocks
            .iter()
            .filter_map(|cidr| {
                Some(NodePool { pod_cidr: *cidr, gateway: first_host(cidr), cluster_cidr: cluster_of(cidr)? })
            })
            .collect();
        let state = (!node_pools.is_empty()).then(|| NodeState {
            version: STATE_FILE_VERSION,
            node: cfg.node_name.clone(),
            node_ips: cfg.underlay.addrs.iter().map(|u| u.ip).collect(),
            pools: node_pools,
            mtu: cfg.mtu,
            bridge: DEFAULT_BRIDGE.to_string(),
            unavailable: serving.as_ref().err().cloned(),
        });
        if rewrite || state != self.state_on_disk {
            let changed = state != self.state_on_disk;
            match &state {
                Some(s) => {
                    files::write_node_state(&cfg.paths.state_file(), s)?;
                    if changed {
                        tracing::info!(
                            path = %cfg.paths.state_file().display(), pod_cidr = %s.pools[0].pod_cidr,
                            unavailable = s.unavailable.as_deref(), "node state file written"
                        );
                    }
                }
                None => {
                    if files::remove(&cfg.paths.state_file())? {
                        tracing::warn!(path = %cfg.paths.state_file().display(), "node state file removed");
                    }
                }
            }
            self.state_on_disk = state;
        }
        if serving.is_ok() && (rewrite || !self.conflist_written) {
            let first = !self.conflist_written;
            files::write_conflist(&cfg.paths, cfg.portmap)?;
            if first {
                tracing::info!(path = %cfg.paths.conflist().display(), "CNI conflist written");
            }
            self.conflist_written = true;
        }
        Ok(())
    }

    fn desired(&self, held: &[Claim], decided: &Decided<'_>) -> Desired {
        let cfg = &self.cfg;
        let local = LocalNode {
            name: cfg.node_name.clone(),
            underlays: cfg.underlay.addrs(),
            pod_cidrs: held.iter().map(|c| c.cidr).collect(),
            cluster_cidrs: cfg.pools().iter().map(|p| p.cluster_cidr).collect(),
            vni: cfg.vni,
            vxlan_port: cfg.vxlan_port,
            mtu: cfg.mtu,
            vtep_mac: self.vtep_mac,
            bridge: DEFAULT_BRIDGE.to_string(),
        };
        crate::desired::build(local, decided.programmable())
    }

    /// Apply when the desired state changed since the last attempt, or when a retry is due
    /// after a failure.
    fn apply_due(&self, desired: &Desired, now: Instant) -> bool {
        self.last_attempt.as_ref() != Some(desired) || self.retry.is_some_and(|(at, _)| now >= at)
    }

    async fn apply(&mut self, desired: Desired, full: bool) {
        let started = Instant::now();
        let at = SystemTime::now();
        let incremental = if full { None } else { self.apply_incremental(&desired).await };
        let (report, error) = match incremental {
            Some(report) => (Some(report), None),
            None => {
                let start = Instant::now();
                let (report, error) = outcome(self.datapath.apply(&desired).await);
                self.shared.metrics.observe_apply(ApplyKind::Full, start.elapsed(), report.as_ref(), error.is_some());
                (report, error)
            }
        };
        let took = started.elapsed();
        if let Some(report) = &report {
            // A peer the datapath refused (a MAC it shares with another) is not programmed either.
            let failed: BTreeSet<&str> =
                report.failures.iter().chain(&report.rejected).filter_map(|f| f.peer.as_deref()).collect();
            self.programmed =
                desired.peers.iter().map(|p| p.name.clone()).filter(|n| !failed.contains(n.as_str())).collect();
            if report.writes() > 0 {
                tracing::info!(
                    peers = desired.peers.len(),
                    created = report.created,
                    changed = report.changed,
                    removed = report.removed,
                    "datapath reconciled"
                );
            }
        }
        match &error {
            None => self.retry = None,
            Some(e) => {
                let delay = self.retry.map_or(RETRY_MIN, |(_, d)| (d * 2).min(RETRY_MAX));
                tracing::warn!(error = %e, retry_in = ?delay, "datapath reconcile failed");
                self.retry = Some((Instant::now() + delay, delay));
            }
        }
        self.last_reconcile = Some(ReconcileStatus {
            at: status::timestamp(at),
            duration_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            error,
        });
        // Shared with the prober, which keeps them between rounds.
        let targets: Vec<_> =
            probe_targets(&desired, &self.programmed, self.cfg.mtu).into_iter().map(Arc::new).collect();
        self.probe_targets.send_if_modified(|current| {
            let changed = *current != targets;
            *current = targets;
            changed
        });
        self.last_attempt = Some(desired);
    }

    /// Writes only the change since the last apply: its report, or `None` when a full apply is
    /// due: the datapath cannot tell the change, or writing it failed (the full apply then
    /// repairs whatever it left, at once).
    async fn apply_incremental(&self, desired: &Desired) -> Option<ApplyReport> {
        let start = Instant::now();
        let (report, error) = match self.datapath.apply_incremental(desired).await {
            Ok(None) => return None,
            Ok(Some(report)) => outcome(Ok(report)),
            Err(e) => outcome(Err(e)),
        };
        self.shared.metrics.observe_apply(ApplyKind::Incremental, start.elapsed(), report.as_ref(), error.is_some());
        match error {
            None => report,
            Some(e) => {
                tracing::info!(error = %e, "incremental datapath apply failed: applying in full");
                None
            }
        }
    }

    /// Logs and counts each rejected announcement once, when it first shows up.
    fn note_rejections(&mut self, peers: &Peers) {
        let current: BTreeMap<String, Rejection> = peers
            .peers
            .iter()
            .filter_map(|p| Some((p.name.clone(), p.announcement.clone().err()?)))
            .filter(|(_, r)| !matches!(r, Rejection::NotAnnounced(_)))
            .collect();
        for (name, rejection) in &current {
            if self.rejections.get(name) != Some(rejection) {
                tracing::warn!(peer = %name, reason = %rejection, "rejected a peer's gossip; it will not be programmed");
                self.shared.metrics.rejected(rejection.label());
            }
        }
        for name in self.rejections.keys().filter(|n| !current.contains_key(*n)) {
            tracing::info!(peer = %name, "peer's gossip is no longer rejected");
        }
        self.rejections = current;
    }

    /// Logs and counts each PodCIDR conflict once, when it first shows up.
    fn note_conflicts(&mut self, conflicts: &[Conflict]) {
        for c in conflicts.iter().filter(|c| !self.conflicts.contains(c)) {
            tracing::warn!(pod_cidr = %c.cidr, winner = %c.winner, losers = ?c.losers, "PodCIDR conflict");
            self.shared.metrics.conflict_seen();
        }
        self.conflicts = conflicts.to_vec();
        self.shared.metrics.set_conflicts(conflicts.len());
    }

    fn publish_status(
        &mut self,
        view: &View,
        decided: &Decided<'_>,
        settled: bool,
        serving: &Result<Vec<Claim>, String>,
        stranded: Option<StrandedPods>,
        ipam: Vec<IpamUse>,
    ) -> Summary {
        let cfg = &self.cfg;
        // Shared with the prober (the rows keep its verdicts, not copies); not borrowed, which
        // would block its next publish.
        let probes = self.probes.borrow().clone();
        let unknown = Arc::new(Dataplane::unknown());
        let ready = status::readiness(&ReadinessInput {
            serving,
            files_error: self.files_error.as_deref(),
            files_written: self.state_on_disk.as_ref().is_some_and(|s| s.unavailable.is_none()),
            membership_settled: settled,
            last_reconcile: self.last_reconcile.as_ref(),
        });
        let rows: Vec<_> = decided
            .peers
            .iter()
            .map(|d| {
                let p = d.peer;
                let programmed = self.programmed.contains(&p.name);
                let dataplane = probes.get(&p.name).filter(|_| programmed).unwrap_or(&unknown).clone();
                status::peer_status(d, programmed, view.last_seen(&p.name, p.generation), dataplane)
            })
            .collect();
        let alive = rows.iter().filter(|r| r.state == status::PeerState::Alive).count();
        self.heard_peers |= alive > 0;
        let isolated = (self.heard_peers && alive == 0).then(|| {
            let last = rows.iter().filter_map(|r| r.last_seen.as_deref()).max().unwrap_or("never");
            format!(
                "no other node is heard any more (last heartbeat {last}): gossip (UDP {}) to or from this node is \
                 blocked, or every other node is down",
                cfg.gossip.listen.port()
            )
        });
        self.shared.metrics.set_isolated(isolated.is_some());
        let metrics = &self.shared.metrics;
        metrics.set_peers(alive, rows.len() - alive, self.programmed.len());
        metrics.set_gossip_members(view.members.iter().map(|m| m.liveness));
        metrics.set_suspected_partition(view.suspected_partition);
        metrics.set_dataplane(rows.iter().map(|r| r.dataplane.state));
        let summary = Summary::of(rows.iter().map(|r| (r.name.as_str(), r.dataplane.state)));
        metrics.set_ready(ready.is_ok());
        metrics.set_stranded(stranded.as_ref().map_or(0, |s| s.count));
        metrics.set_ipam(&ipam);
        self.shared.set_status(Status {
            node: status::NodeStatus {
                name: cfg.node_name.clone(),
                node_ip: cfg.underlay.primary().ip,
                node_ip6: cfg.underlay.node_ips().get(Family::Ipv6),
                pod_cidr: serving.as_ref().ok().and_then(|held| status::blocks(held).0),
                pod_cidr6: serving.as_ref().ok().and_then(|held| status::blocks(held).1),
                vtep_mac: self.vtep_mac,
                mtu: cfg.mtu,
                ready: ready.is_ok(),
                not_ready_reason: ready.err(),
                name_in_use_by: self
                    .namesakes
                    .iter()
                    .map(|n| NamesakeStatus {
                        node_ip: n.node_ip,
                        generation: n.generation,
                        holds_the_name: self.yielded_to.is_some_and(|y| y.node_ip == n.node_ip),
                    })
                    .collect(),
                stranded_pods: stranded,
                isolated,
                suspected_partition: view.suspected_partition,
                dataplane: summary.clone(),
                ipam,
            },
            peers: rows,
            conflicts: decided.conflicts.iter().map(status::conflict_status).collect(),
            last_reconcile: self.last_reconcile.clone(),
        });
        summary
    }
}

/// The blocks a state file names.
fn published_blocks(state: &NodeState) -> Vec<IpNet> {
    state.pools.iter().map(|p| p.pod_cidr).collect()
}

/// How much of its block of each of `families` the plugin has handed out (0 of 0 for a family
/// the node serves no block of).
fn ipam_use(families: &[Family], held: &[Claim], reserved: &[IpAddr]) -> Vec<IpamUse> {
    families
        .iter()
        .map(|&family| {
            let usage = |claim: &Claim| {
                let pool = weft_cni::ipam::pool::Pool { net: claim.cidr, gateway: first_host(&claim.cidr) };
                (reserved.iter().filter(|ip| pool.contains(**ip)).count() as u64, pool.capacity())
            };
            let held = held.iter().find(|c| Family::of_net(&c.cidr) == family);
            let (in_use, total) = held.map_or((0, 0), usage);
            IpamUse { family, in_use, total }
        })
        .collect()
}

/// The programmed peers, each with the path of every pod family the cluster has here (the
/// blocks this node routes): the address its probes go to is the VTEP address of that family
/// on the peer's VXLAN device (only the overlay reaches it), or its bridge gateway for a block
/// routed directly, whose probes the peer sends from its node IP.
pub fn probe_targets(desired: &Desired, programmed: &BTreeSet<String>, mtu: u32) -> Vec<probe::Target> {
    desired
        .peers
        .iter()
        .filter(|p| programmed.contains(&p.name))
        .filter_map(|p| {
            let mut blocks: Vec<IpNet> = desired.local.routed(p).collect();
            blocks.sort_by_key(Family::of_net);
            let paths: Vec<probe::PodPath> = blocks
                .iter()
                .map(|block| {
                    if p.routes_directly(block) {
                        probe::PodPath { tunnel: first_host(block), peer_source: p.node_ip }
                    } else {
                        probe::PodPath { tunnel: vtep_of(block), peer_source: vtep_of(block) }
                    }
                })
                .collect();
            (!paths.is_empty()).then(|| probe::Target {
                peer: p.name.clone(),
                paths,
                underlay: p.node_ip,
                full_size: u16::try_from(mtu).unwrap_or(u16::MAX),
            })
        })
        .collect()
}

fn log_outcome(outcome: &Outcome) {
    match outcome {
        Outcome::Unchanged => {}
        Outcome::Announced(c) => tracing::info!(pod_cidr = %c.cidr, "claiming PodCIDR"),
        Outcome::Confirmed(c) => tracing::info!(pod_cidr = %c.cidr, "PodCIDR confirmed"),
        Outcome::Lost { cidr, winner } => {
            tracing::warn!(pod_cidr = %cidr, %winner, "PodCIDR held by a better claim: not serving it")
        }
        Outcome::Exhausted(e) => tracing::error!(error = %e, "cannot allocate a PodCIDR"),
    }
}

/// A report with failed writes is a failed reconcile: say which, briefly.
/// An apply's report, if it got that far, and what failed, if anything did.
fn outcome(result: Result<ApplyReport, DatapathError>) -> (Option<ApplyReport>, Option<String>) {
    match result {
        Ok(report) => {
            let error = failure_summary(&report);
            (Some(report), error)
        }
        Err(e) => (None, Some(e.to_string())),
    }
}

fn failure_summary(report: &ApplyReport) -> Option<String> {
    const SHOWN: usize = 3;
    let first = report.failures.first()?;
    let mut text = format!("{} kernel write(s) failed: {}: {}", report.failures.len(), first.object, first.error);
    for f in report.failures.iter().skip(1).take(SHOWN - 1) {
        text.push_str(&format!("; {}: {}", f.object, f.error));
    }
    if report.failures.len() > SHOWN {
        text.push_str("; …");
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_overlay::Failure;
    use weft_overlay::desired::{Peer, PeerPath, UnderlayAddr};

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_pod_family_of_the_cluster_is_probed_along_the_path_its_packets_take() {
        let local = LocalNode {
            name: "n1".into(),
            underlays: vec![UnderlayAddr { ip: ip("192.0.2.10"), iface: "eth0".into() }],
            pod_cidrs: vec![net("10.244.1.0/24"), net("fd00:10:244:1::/64")],
            cluster_cidrs: vec![net("10.244.0.0/16"), net("fd00:10:244::/56")],
            vni: 1,
            vxlan_port: 8472,
            mtu: 1450,
            vtep_mac: Mac::derived("n1"),
            bridge: DEFAULT_BRIDGE.into(),
        };
        let peer = |n: u8, path: PeerPath, blocks: &[&str]| Peer {
            name: format!("n{n}"),
            node_ip: ip(&format!("192.0.2.{}", 10 + n)),
            pod_cidrs: blocks.iter().map(|b| net(b)).collect(),
            vtep_mac: Mac::derived(&format!("n{n}")),
            path,
        };
        let desired = Desired {
            local,
            peers: vec![
                // Listed IPv6 first: the probes still go IPv4 first.
                peer(2, PeerPath::Vxlan, &["fd00:10:244:2::/64", "10.244.2.0/24"]),
                // Direct: IPv4 routed natively (its gateway, probed back from its node IP), IPv6 tunnelled.
                peer(3, PeerPath::Direct, &["10.244.3.0/24", "fd00:10:244:3::/64"]),
                // A previous-release peer with an IPv4 block only.
                peer(4, PeerPath::Vxlan, &["10.244.4.0/24"]),
                peer(5, PeerPath::Vxlan, &["10.244.5.0/24"]),
            ],
        };
        let programmed: BTreeSet<String> = ["n2", "n3", "n4"].map(String::from).into();
        let paths = |t: &probe::Target| -> Vec<(IpAddr, IpAddr)> {
            t.paths.iter().map(|p| (p.tunnel, p.peer_source)).collect()
        };
        let targets = probe_targets(&desired, &programmed, 1450);
        assert_eq!(targets.iter().map(|t| t.peer.as_str()).collect::<Vec<_>>(), ["n2", "n3", "n4"], "programmed only");
        assert_eq!(
            paths(&targets[0]),
            [(ip("10.244.2.0"), ip("10.244.2.0")), (ip("fd00:10:244:2::"), ip("fd00:10:244:2::"))]
        );
        assert_eq!(
            paths(&targets[1]),
            [(ip("10.244.3.1"), ip("192.0.2.13")), (ip("fd00:10:244:3::"), ip("fd00:10:244:3::"))]
        );
        assert_eq!(paths(&targets[2]), [(ip("10.244.4.0"), ip("10.244.4.0"))]);
        assert_eq!((targets[0].underlay, targets[0].full_size), (ip("192.0.2.12"), 1450));
        // An IPv4-only cluster here does not probe a peer's IPv6 block: it routes none.
        let mut v4_only = desired.clone();
        v4_only.local.pod_cidrs.truncate(1);
        v4_only.local.cluster_cidrs.truncate(1);
        let targets = probe_targets(&v4_only, &programmed, 1450);
        assert!(targets.iter().all(|t| t.paths.len() == 1 && t.paths[0].tunnel.is_ipv4()), "{targets:?}");
    }

    #[test]
    fn failed_writes_are_summarised_and_a_clean_report_is_not_a_failure() {
        assert_eq!(failure_summary(&ApplyReport::default()), None);
        let failure = |n: usize| Failure {
            object: format!("route 10.244.{n}.0/24"),
            peer: Some(format!("n{n}")),
            error: "EEXIST".into(),
        };
        let report = ApplyReport { failures: (1..=4).map(failure).collect(), ..ApplyReport::default() };
        let text = failure_summary(&report).unwrap();
        assert!(text.starts_with("4 kernel write(s) failed: route 10.244.1.0/24: EEXIST"));
        assert!(text.contains("route 10.244.3.0/24"));
        assert!(!text.contains("route 10.244.4.0/24"));
        assert!(text.ends_with("…"));
    }
}
