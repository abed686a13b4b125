//! STATUS (1.1.0): can ADD succeed now? Not before the node's PodCIDR is known, nor while the
//! agent says the node must not hand out addresses from it.

use crate::config::{IpamMode, Request};
use crate::env::Invocation;
use crate::error::{CniError, Code};
use crate::ipam::delegate;
use crate::state::NodeState;

pub fn status(inv: &Invocation, req: &Request) -> Result<(), CniError> {
    super::require_v1_1(req, "STATUS")?;
    let builtin = matches!(req.conf.ipam_mode()?, IpamMode::BuiltIn { .. });
    if builtin && req.conf.pod_cidr.is_none() {
        if let Err(e) = NodeState::read(req.conf.state_file()) {
            return Err(CniError::new(Code::PluginNotAvailable, "the node's PodCIDR is not known yet").with_details(e));
        }
    }
    let net = req.conf.resolve()?;
    net.check_available().map_err(|reason| CniError::new(Code::PluginNotAvailable, reason))?;
    if let IpamMode::Delegate { plugin, .. } = net.ipam {
        match delegate::run(&delegate::find(&plugin, &inv.plugin_path)?, "STATUS", &req.raw) {
            // A delegate older than 1.1.0 has no STATUS; that says nothing about its health.
            Err(e) if e.code == Code::IncompatibleVersion as u32 => {}
            other => {
                other?;
            }
        }
    }
    Ok(())
}
