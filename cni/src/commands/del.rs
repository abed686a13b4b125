//! DEL: idempotent. Missing netns, interface, allocation or prevResult are not errors.

use std::path::Path;

use weft_overlay::netlink::PendingSocket;

use crate::config::Request;
use crate::datapath;
use crate::env::Invocation;
use crate::error::CniError;
use crate::ipam::{self, DelegateInput, store::Owner};
use crate::{netns, runtime};

pub fn del(inv: &Invocation, req: &Request) -> Result<(), CniError> {
    let att = inv.attachment.as_ref().expect("DEL always carries an attachment");
    // weft finds everything by name, so a damaged prevResult costs nothing here.
    if let Err(e) = super::parse_prev_result(req) {
        tracing::warn!("ignoring prevResult on DEL: {e}");
    }
    let mode = req.conf.ipam_mode()?;
    // Cut the pod off first, then free its address: never two pods on the bridge with one IP.
    // If the kernel refuses, the address stays reserved and the runtime's retry finishes the job.
    let container = att.netns.as_deref().and_then(container_socket);
    runtime::block_on(datapath::detach(&att.container_id, &att.ifname, container))?;
    let owner = Owner::new(&att.container_id, &att.ifname);
    ipam::release(&mode, &owner, DelegateInput { plugin_path: &inv.plugin_path, stdin: &req.raw })
}

/// The container's namespace, when it is still there and is one: DEL goes on without it.
fn container_socket(path: &Path) -> Option<PendingSocket> {
    match netns::open(path).and_then(|ns| netns::socket_in(&ns, path)) {
        Ok(socket) => Some(socket),
        Err(e) => {
            tracing::info!("DEL goes on without the container's namespace: {e}");
            None
        }
    }
}
