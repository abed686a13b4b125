//! Doing: carries a [`Plan`] out, stage by stage; the steps of a stage run concurrently on the
//! one netlink connection. A failed step is recorded and the rest of the plan goes on, except a
//! critical one (vxlan0 cannot be set up), which ends the run.

use std::io;

use futures::future::join_all;
use tracing::{debug, warn};

use crate::bridge::{BridgeError, ensure_bridge};
use crate::desired::DEFAULT_VXLAN_DEVICE;
use crate::firewall;
use crate::netlink::{Netlink, NetlinkError};
use crate::nft::{self, NftError, NftSocket};
use crate::objects::{FdbEntry, Neighbour};
use crate::plan::{Dev, Op, Plan, Step, Tally};
use crate::report::Failure;
use crate::sysctl;

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error(transparent)]
    Sysctl(#[from] io::Error),
    #[error("{DEFAULT_VXLAN_DEVICE} does not exist")]
    NoVxlan,
}

/// A critical step failed; the steps after it were not run.
#[derive(Debug, thiserror::Error)]
#[error("{object}: {source}")]
pub struct Aborted {
    pub object: String,
    #[source]
    pub source: OpError,
    /// What had been done before.
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub tally: Tally,
    /// The objects written, e.g. "route 10.244.2.0/24".
    pub done: Vec<String>,
    pub failures: Vec<Failure>,
}

/// The kernel connections the steps write through.
#[derive(Debug)]
pub struct Kernel<'a> {
    pub nl: &'a Netlink,
    pub nft: &'a NftSocket,
}

pub async fn run(kernel: Kernel<'_>, plan: Plan) -> Result<Outcome, Box<Aborted>> {
    let nl = kernel.nl;
    let mut outcome = Outcome::default();
    let mut vxlan = plan.vxlan_index;
    for stage in plan.stages {
        let results = join_all(stage.iter().map(|step| run_step(&kernel, step, vxlan))).await;
        for (step, result) in stage.iter().zip(results) {
            match result {
                Ok(tally) => {
                    debug!(object = %step.op, ?tally, "done");
                    if tally != Tally::default() && tally.unchanged == 0 {
                        outcome.done.push(step.op.to_string());
                    }
                    outcome.tally.add(tally);
                }
                Err(source) if step.critical => {
                    let object = step.op.to_string();
                    return Err(Box::new(Aborted { object, source, outcome }));
                }
                Err(e) => {
                    warn!(object = %step.op, peer = step.peer.as_deref(), error = %e, "failed");
                    outcome.failures.push(Failure {
                        object: step.op.to_string(),
                        peer: step.peer.clone(),
                        error: e.to_string(),
                    });
                }
            }
        }
        if vxlan.is_none() && stage.iter().any(|s| matches!(s.op, Op::CreateVxlan(_))) {
            let created = nl.link(DEFAULT_VXLAN_DEVICE).await;
            vxlan = match created {
                Ok(Some(link)) => Ok(Some(link.index)),
                Ok(None) => Err(OpError::NoVxlan),
                Err(e) => Err(e.into()),
            }
            .map_err(|source| {
                Box::new(Aborted { object: format!("link {DEFAULT_VXLAN_DEVICE}"), source, outcome: outcome.clone() })
            })?;
        }
    }
    Ok(outcome)
}

/// Performs one step; the tally says what it actually did.
async fn run_step(kernel: &Kernel<'_>, step: &Step, vxlan: Option<u32>) -> Result<Tally, OpError> {
    let nl = kernel.nl;
    let vx = || vxlan.ok_or(OpError::NoVxlan);
    let done = step.tally;
    match &step.op {
        Op::DeleteLink { index, .. } => gone_ok(nl.delete_link(*index).await, done),
        Op::CreateVxlan(spec) => nl.add_vxlan(spec).await.map(|()| done).map_err(Into::into),
        Op::FixVxlan(change) => Ok(nl.set_link(vx()?, change).await.map(|()| done)?),
        Op::VxlanLearningOff => Ok(nl.set_vxlan_learning(vx()?, false).await.map(|()| done)?),
        Op::EnsureBridge { name, mtu, gateway } => {
            let (_, c) = ensure_bridge(nl, name, *mtu, (*gateway).into()).await?;
            let tally = Tally::of(usize::from(c.created) + usize::from(c.address_added), usize::from(c.changed), 0);
            Ok(if tally == Tally::default() { unchanged() } else { tally })
        }
        Op::AddAddress(addr) => match nl.add_address(vx()?, *addr).await {
            Err(e) if e.is_exists() => Ok(unchanged()),
            other => Ok(other.map(|()| done)?),
        },
        Op::DeleteAddress { index, address, .. } => gone_ok(nl.delete_address(*index, *address).await, done),
        Op::Sysctl { key, value } => Ok(if sysctl::ensure(key, value)? { done } else { unchanged() }),
        Op::Neighbour { ip, mac } => {
            let n = Neighbour { ifindex: vx()?, ip: *ip, mac: *mac, permanent: true };
            // Replace-or-create: every entry on vxlan0 is weft's, so there is nothing to spare.
            Ok(nl.add_neighbour(&n, true).await.map(|()| done)?)
        }
        Op::DeleteNeighbour(n) => gone_ok(nl.delete_neighbour(n).await, done),
        Op::Fdb { mac, dst } => {
            let e = FdbEntry { ifindex: vx()?, mac: *mac, dst: Some(*dst), permanent: true };
            Ok(nl.add_fdb(&e, true).await.map(|()| done)?)
        }
        Op::DeleteFdb(e) => gone_ok(nl.delete_fdb(e).await, done),
        Op::Route { route, replace } => {
            let oif = match route.dev {
                Dev::Vxlan => vx()?,
                Dev::Index(i) => i,
            };
            Ok(nl.add_route(&route.to_route(oif), *replace).await.map(|()| done)?)
        }
        Op::DeleteRoute(r) => gone_ok(nl.delete_route(r).await, done),
        Op::Nft { script, .. } => {
            nft::run_script(script).await?;
            Ok(done)
        }
        Op::SetElements { set, changes } => {
            kernel.nft.write_elements(firewall::TABLE, set, changes.clone()).await?;
            Ok(done)
        }
    }
}

fn unchanged() -> Tally {
    Tally { unchanged: 1, ..Tally::default() }
}

/// A delete whose object is already gone has nothing left to do.
fn gone_ok(result: Result<(), NetlinkError>, done: Tally) -> Result<Tally, OpError> {
    match result {
        Ok(()) => Ok(done),
        Err(e) if e.is_not_found() => Ok(Tally::default()),
        Err(e) => Err(e.into()),
    }
}
