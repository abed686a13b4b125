//! GC (1.1.0): of the attachments this network has recorded on this node, remove the host veth
//! and release the address of every one the runtime no longer lists in
//! `cni.dev/valid-attachments`. Other networks' attachments are never touched, even on a shared
//! bridge: they are not in this network's store.

use std::collections::HashSet;

use crate::config::{IpamMode, Request};
use crate::datapath;
use crate::env::Invocation;
use crate::error::{CniError, Code};
use crate::ipam::delegate;
use crate::ipam::store::{Entry, Owner, Store};
use crate::runtime;

pub fn gc(inv: &Invocation, req: &Request) -> Result<(), CniError> {
    super::require_v1_1(req, "GC")?;
    // Without the list every allocation would look stale; refuse rather than wipe the node.
    let valid = req.conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::new(Code::InvalidConfig, "GC needs cni.dev/valid-attachments (an empty list means none)")
    })?;
    let mode = req.conf.ipam_mode()?;
    let keep: Vec<Owner> = valid.iter().map(|a| Owner::new(&a.container_id, &a.ifname)).collect();
    let mut store = Store::open(mode.store_dir())?;
    let stale: HashSet<String> = store.stale(&keep)?.iter().map(Entry::host_veth).collect();
    // As DEL does: cut the pods off first, then free their addresses.
    let removed = runtime::block_on(datapath::collect_veths(&stale))?;
    tracing::info!("GC removed {} veth(s): {removed:?}", removed.len());
    let released = store.retain(&keep)?;
    tracing::info!("GC released {} address(es): {released:?}", released.len());
    if let IpamMode::Delegate { plugin, .. } = mode {
        match delegate::run(&delegate::find(&plugin, &inv.plugin_path)?, "GC", &req.raw) {
            Err(e) if e.code == Code::IncompatibleVersion as u32 => {
                tracing::info!("IPAM plugin {plugin} does not support GC: {e}");
            }
            other => {
                other?;
            }
        }
    }
    Ok(())
}
