//! The overlay dataplane as the agent sees it: `apply` a desired state, `cleanup` everything.
//! `apply` reads the kernel, plans, and carries the plan out, so whatever changed behind weft's
//! back is repaired. `apply_incremental` writes a small peer change without reading: it starts
//! from the desired state the last successful apply made true and the device indexes it learned,
//! which any failure (and a cleanup) forgets, so that only a full apply comes next.

use std::time::Instant;

use tokio::sync::Mutex;
use tracing::{debug, info};

use crate::cleanup::{CleanupOptions, CleanupReport, plan_cleanup};
use crate::desired::Desired;
use crate::execute::{self, Aborted};
use crate::firewall;
use crate::incremental::{Applied, Devices, plan_incremental};
use crate::netlink::{Netlink, NetlinkError};
use crate::nft::{NftError, NftSocket};
use crate::plan::{PlanError, plan};
use crate::report::ApplyReport;
use crate::snapshot;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("cannot open a netlink connection: {0}")]
    Connect(#[source] NetlinkError),
    #[error("cannot open an nfnetlink socket: {0}")]
    ConnectNft(#[source] NftError),
    #[error("cannot read the kernel state: {0}")]
    Snapshot(#[source] NetlinkError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("cannot set up {0}")]
    Device(#[source] Box<Aborted>),
}

/// The node's overlay datapath. Calls are serialized: a second `apply` waits for the first.
#[derive(Debug)]
pub struct Dataplane {
    nl: Netlink,
    nft: NftSocket,
    /// Held by each call; what the kernel holds since the last successful apply, if it was.
    busy: Mutex<Option<Applied>>,
}

impl Dataplane {
    /// Connects to the kernel in the caller's network namespace. Must run inside a tokio
    /// runtime with IO enabled; `apply` and `cleanup` run `nft` as a child process to write a table.
    pub fn new() -> Result<Dataplane, DataplaneError> {
        Ok(Dataplane {
            nl: Netlink::connect().map_err(DataplaneError::Connect)?,
            nft: NftSocket::open().map_err(DataplaneError::ConnectNft)?,
            busy: Mutex::new(None),
        })
    }

    /// Makes the kernel match `desired`. Fails only when nothing sensible can be done (the
    /// kernel cannot be read, the local node is invalid, vxlan0 cannot be set up); a failed
    /// write is recorded in the report and the rest of the plan still runs.
    pub async fn apply(&self, desired: &Desired) -> Result<ApplyReport, DataplaneError> {
        let mut applied = self.busy.lock().await;
        *applied = None;
        let start = Instant::now();
        let kernel = snapshot::read(&self.nl, &self.nft).await.map_err(DataplaneError::Snapshot)?;
        let plan = plan(desired, &kernel)?;
        let underlay = plan.underlay_index.clone();
        let mut report = ApplyReport {
            unchanged: plan.unchanged,
            failures: plan.failures.clone(),
            rejected: plan.rejected.clone(),
            // Read from the listing the plan needed anyway: no extra read.
            vxlan_dropped: kernel.nft.as_ref().ok().and_then(|l| firewall::vxlan_dropped(l, &desired.local)),
            ..ApplyReport::default()
        };
        let outcome = execute::run(self.kernel(), plan).await.map_err(DataplaneError::Device)?;
        let devices = Devices { vxlan: outcome.vxlan_index.clone(), underlay };
        if report_outcome(&mut report, outcome, start, "full") {
            *applied = Applied::new(desired, devices);
        }
        Ok(report)
    }

    /// Makes the kernel match `desired` by writing only what differs from the desired state
    /// of the last apply, when that apply had no failure and only peers changed (and few of
    /// them, see [`plan_incremental`]); reads nothing from the kernel. `None` when it cannot:
    /// then a full [`Dataplane::apply`] is needed. A report with failures, or an error, means
    /// the kernel is not known any more: the next call here answers `None` until a full apply
    /// succeeds.
    pub async fn apply_incremental(&self, desired: &Desired) -> Result<Option<ApplyReport>, DataplaneError> {
        let mut applied = self.busy.lock().await;
        let start = Instant::now();
        let Some(mut last) = applied.take() else { return Ok(None) };
        let Some((plan, change)) = plan_incremental(&last, desired) else {
            *applied = Some(last);
            return Ok(None);
        };
        let mut report =
            ApplyReport { unchanged: plan.unchanged, rejected: plan.rejected.clone(), ..ApplyReport::default() };
        let outcome = execute::run(self.kernel(), plan).await.map_err(DataplaneError::Device)?;
        if report_outcome(&mut report, outcome, start, "incremental") {
            last.update(change);
            *applied = Some(last);
        }
        Ok(Some(report))
    }

    fn kernel(&self) -> execute::Kernel<'_> {
        execute::Kernel { nl: &self.nl, nft: &self.nft }
    }

    /// Removes everything weft owns. A bridge with pods attached is kept unless `force`.
    pub async fn cleanup(&self, opts: &CleanupOptions) -> Result<CleanupReport, DataplaneError> {
        let mut applied = self.busy.lock().await;
        *applied = None;
        let kernel = snapshot::read(&self.nl, &self.nft).await.map_err(DataplaneError::Snapshot)?;
        let (plan, kept) = plan_cleanup(&kernel, opts);
        let mut report = CleanupReport { kept, failures: plan.failures.clone(), ..CleanupReport::default() };
        let outcome = execute::run(self.kernel(), plan).await.map_err(DataplaneError::Device)?;
        report.removed = outcome.done;
        report.failures.extend(outcome.failures);
        info!(
            removed = report.removed.len(),
            kept = report.kept.len(),
            failures = report.failures.len(),
            "dataplane cleaned up"
        );
        Ok(report)
    }
}

/// Adds what the run did to `report` and logs it; whether it went without a failure.
fn report_outcome(report: &mut ApplyReport, outcome: execute::Outcome, start: Instant, kind: &'static str) -> bool {
    report.created = outcome.tally.created;
    report.changed = outcome.tally.changed;
    report.removed = outcome.tally.removed;
    report.unchanged += outcome.tally.unchanged;
    report.failures.extend(outcome.failures);
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if report.writes() > 0 || !report.failures.is_empty() {
        info!(
            kind,
            created = report.created,
            changed = report.changed,
            removed = report.removed,
            unchanged = report.unchanged,
            failures = report.failures.len(),
            rejected = report.rejected.len(),
            ms,
            "dataplane applied"
        );
    } else {
        debug!(kind, unchanged = report.unchanged, ms, "dataplane already up to date");
    }
    report.failures.is_empty()
}
