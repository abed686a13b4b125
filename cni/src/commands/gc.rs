//! GC (1.1.0): release every allocation, and remove every host veth, of attachments the runtime
//! no longer lists in `cni.dev/valid-attachments`.

use crate::config::{IpamMode, Request};
use crate::datapath;
use crate::env::Invocation;
use crate::error::{CniError, Code};
use crate::ipam::delegate;
use crate::ipam::store::{Owner, Store};
use crate::names::host_veth_name;
use crate::runtime;
use crate::state::NodeState;

pub fn gc(inv: &Invocation, req: &Request) -> Result<(), CniError> {
    super::require_v1_1(req, "GC")?;
    // Without the list every allocation would look stale; refuse rather than wipe the node.
    let valid = req.conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::new(Code::InvalidConfig, "GC needs cni.dev/valid-attachments (an empty list means none)")
    })?;
    match req.conf.ipam_mode()? {
        IpamMode::BuiltIn { store_dir } => {
            let owners: Vec<Owner> = valid.iter().map(|a| Owner::new(&a.container_id, &a.ifname)).collect();
            let released = Store::open(&store_dir)?.retain(&owners)?;
            tracing::info!("GC released {} address(es): {released:?}", released.len());
        }
        IpamMode::Delegate { plugin } => {
            match delegate::run(&delegate::find(&plugin, &inv.plugin_path)?, "GC", &req.raw) {
                Err(e) if e.code == Code::IncompatibleVersion as u32 => {
                    tracing::info!("IPAM plugin {plugin} does not support GC: {e}");
                }
                other => {
                    other?;
                }
            }
        }
    }
    let state = NodeState::read(req.conf.state_file()).ok();
    let bridge = req.conf.bridge_name(state.as_ref());
    let keep: Vec<String> = valid.iter().map(|a| host_veth_name(&a.container_id, &a.ifname)).collect();
    let removed = runtime::block_on(datapath::collect_veths(&bridge, &keep))?;
    tracing::info!("GC removed {} veth(s): {removed:?}", removed.len());
    Ok(())
}
