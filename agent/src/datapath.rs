//! The seam between deciding and the kernel. The reconcile loop hands a [`Desired`] to a
//! [`Datapath`]; the production one is the overlay crate's kernel dataplane, bound in [`kernel`].

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Mutex;
use weft_overlay::desired::Desired;
use weft_overlay::{ApplyReport, CleanupOptions, Dataplane};

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// A failure of the datapath implementation, passed through as it is.
    #[error(transparent)]
    Kernel(Box<dyn std::error::Error + Send + Sync>),
}

/// What a cleanup removed, for the `cleanup` command to print.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupSummary {
    /// Kernel objects removed.
    pub removed: usize,
    /// Objects deliberately left in place, and why (e.g. a bridge that still has pods).
    pub kept: Vec<String>,
}

/// Makes the node's datapath match a desired state, idempotently: applying the same state again
/// changes nothing, and whatever the state no longer lists is removed.
#[async_trait]
pub trait Datapath: Send + Sync + 'static {
    async fn apply(&self, desired: &Desired) -> Result<ApplyReport, DatapathError>;
    /// The same by writing only what changed since the last apply, without reading the kernel
    /// back; `None` when this datapath cannot tell what to write (it keeps no such state, its
    /// last apply failed, or more than a few peers changed): then `apply` is due.
    async fn apply_incremental(&self, _desired: &Desired) -> Result<Option<ApplyReport>, DatapathError> {
        Ok(None)
    }
    /// Removes everything weft put into the kernel; the bridge only while no pod is attached to
    /// it, unless `force`.
    async fn cleanup(&self, force: bool) -> Result<CleanupSummary, DatapathError>;
}

/// The kernel datapath of the calling network namespace. Must run inside a tokio runtime.
pub fn kernel() -> Result<Arc<dyn Datapath>, DatapathError> {
    let dataplane = Dataplane::new().map_err(|e| DatapathError::Kernel(Box::new(e)))?;
    Ok(Arc::new(Kernel(dataplane)))
}

/// `weft_overlay::Dataplane` behind the agent's seam.
struct Kernel(Dataplane);

#[async_trait]
impl Datapath for Kernel {
    async fn apply(&self, desired: &Desired) -> Result<ApplyReport, DatapathError> {
        self.0.apply(desired).await.map_err(|e| DatapathError::Kernel(Box::new(e)))
    }

    async fn apply_incremental(&self, desired: &Desired) -> Result<Option<ApplyReport>, DatapathError> {
        self.0.apply_incremental(desired).await.map_err(|e| DatapathError::Kernel(Box::new(e)))
    }

    async fn cleanup(&self, force: bool) -> Result<CleanupSummary, DatapathError> {
        let options = CleanupOptions { force, ..CleanupOptions::default() };
        let report = self.0.cleanup(&options).await.map_err(|e| DatapathError::Kernel(Box::new(e)))?;
        if let Some(failure) = report.failures.first() {
            let all: Vec<String> = report.failures.iter().map(|f| format!("{}: {}", f.object, f.error)).collect();
            tracing::warn!(failures = ?all, "cleanup could not remove everything");
            return Err(DatapathError::Kernel(format!("cannot remove {}: {}", failure.object, failure.error).into()));
        }
        Ok(CleanupSummary { removed: report.removed.len(), kept: report.kept })
    }
}

/// Builds the datapath on first use, and again after a failed build, so a datapath that cannot
/// start yet shows up as a failed (and retried) reconcile instead of stopping the agent.
pub struct BuildOnDemand<F> {
    build: F,
    built: Mutex<Option<Arc<dyn Datapath>>>,
}

impl<F> BuildOnDemand<F>
where
    F: Fn() -> Result<Arc<dyn Datapath>, DatapathError> + Send + Sync + 'static,
{
    pub fn new(build: F) -> BuildOnDemand<F> {
        BuildOnDemand { build, built: Mutex::new(None) }
    }

    async fn get(&self) -> Result<Arc<dyn Datapath>, DatapathError> {
        let mut built = self.built.lock().await;
        if let Some(datapath) = built.as_ref() {
            return Ok(datapath.clone());
        }
        let datapath = (self.build)()?;
        *built = Some(datapath.clone());
        Ok(datapath)
    }
}

#[async_trait]
impl<F> Datapath for BuildOnDemand<F>
where
    F: Fn() -> Result<Arc<dyn Datapath>, DatapathError> + Send + Sync + 'static,
{
    async fn apply(&self, desired: &Desired) -> Result<ApplyReport, DatapathError> {
        self.get().await?.apply(desired).await
    }

    async fn apply_incremental(&self, desired: &Desired) -> Result<Option<ApplyReport>, DatapathError> {
        self.get().await?.apply_incremental(desired).await
    }

    async fn cleanup(&self, force: bool) -> Result<CleanupSummary, DatapathError> {
        self.get().await?.cleanup(force).await
    }
}
