//! Doing: carries a [`Plan`] out, stage by stage; the steps of a stage run concurrently on the
//! one netlink connection. A failed step is recorded and the rest of the plan goes on, except a
//! critical one (a VXLAN device cannot be set up), which ends the run.

use std::collections::BTreeMap;
use std::io;

use futures::future::join_all;
use tracing::{debug, warn};

use crate::bridge::{BridgeError, ensure_bridge};
use crate::firewall;
use crate::netlink::{Netlink, NetlinkError};
use crate::nft::{self, NftError, NftSocket};
use crate::objects::{FdbEntry, Neighbour};
use crate::plan::{Dev, Op, Plan, Step, Tally};
use crate::report::Failure;
use crate::sysctl;
use crate::underlay::Family;

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
    #[error("{} does not exist", .0.vxlan_device())]
    NoVxlan(Family),
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
    /// The index of each VXLAN device after the run: the adopted ones and those it created.
    pub vxlan_index: BTreeMap<Family, u32>,
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
        let results = join_all(stage.iter().map(|step| run_step(&kernel, step, &vxlan))).await;
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
        let created = stage.iter().filter_map(|s| match s.op {
            Op::CreateVxlan(family, _) if !vxlan.contains_key(&family) => Some(family),
            _ => None,
        });
        for family in created.collect::<Vec<_>>() {
            let name = family.vxlan_device();
            let index = match nl.link(name).await {
                Ok(Some(link)) => Ok(link.index),
                Ok(None) => Err(OpError::NoVxlan(family)),
                Err(e) => Err(e.into()),
            }
            .map_err(|source| Box::new(Aborted { object: format!("link {name}"), source, outcome: outcome.clone() }))?;
            vxlan.insert(family, index);
        }
    }
    outcome.vxlan_index = vxlan;
    Ok(outcome)
}

/// Performs one step; the tally says what it actually did.
async fn run_step(kernel: &Kernel<'_>, step: &Step, vxlan: &BTreeMap<Family, u32>) -> Result<Tally, OpError> {
    let nl = kernel.nl;
    let vx = |family: Family| vxlan.get(&family).copied().ok_or(OpError::NoVxlan(family));
    let done = step.tally;
    match &step.op {
        Op::DeleteLink { index, .. } => gone_ok(nl.delete_link(*index).await, done),
        Op::CreateVxlan(_, spec) => nl.add_vxlan(spec).await.map(|()| done).map_err(Into::into),
        Op::FixVxlan(family, change) => Ok(nl.set_link(vx(*family)?, change).await.map(|()| done)?),
        Op::VxlanLearningOff(family) => Ok(nl.set_vxlan_learning(vx(*family)?, false).await.map(|()| done)?),
        Op::EnsureBridge { name, mtu, gateways } => {
            let (_, c) = ensure_bridge(nl, name, *mtu, gateways).await?;
            let tally = Tally::of(usize::from(c.created) + c.addresses_added, usize::from(c.changed), 0);
            Ok(if tally == Tally::default() { unchanged() } else { tally })
        }
        Op::AddAddress(family, addr) => match nl.add_address(vx(*family)?, *addr).await {
            Err(e) if e.is_exists() => Ok(unchanged()),
            other => Ok(other.map(|()| done)?),
        },
        Op::DeleteAddress { index, address, .. } => gone_ok(nl.delete_address(*index, *address).await, done),
        Op::Sysctl { key, value } => Ok(if sysctl::ensure(key, value)? { done } else { unchanged() }),
        Op::Neighbour { family, ip, mac } => {
            let n = Neighbour { ifindex: vx(*family)?, ip: *ip, mac: *mac, permanent: true };
            // Replace-or-create: every entry on a VXLAN device is weft's, so there is nothing to spare.
            Ok(nl.add_neighbour(&n, true).await.map(|()| done)?)
        }
        Op::DeleteNeighbour(_, n) => gone_ok(nl.delete_neighbour(n).await, done),
        Op::Fdb { mac, dst } => {
            let e = FdbEntry { ifindex: vx(Family::of(*dst))?, mac: *mac, dst: Some(*dst), permanent: true };
            Ok(nl.add_fdb(&e, true).await.map(|()| done)?)
        }
        Op::DeleteFdb(_, e) => gone_ok(nl.delete_fdb(e).await, done),
        Op::Route { route, replace } => {
            let oif = match route.dev {
                Dev::Vxlan(family) => vx(family)?,
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
