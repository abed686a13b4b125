//! `weft-agent diagnose`: reads the agent's `/status` and `/metrics` and this node's kernel (never
//! writing anything), and prints what is wrong and what to do; the checks are in
//! [`crate::diagnose`].

use std::net::SocketAddr;

use weft_overlay::netlink::{Netlink, NetlinkError};
use weft_overlay::nft::{NftError, NftSocket};
use weft_overlay::snapshot::{self, Kernel};
use weft_overlay::sysctl;

use super::status::{self, StatusError};
use crate::cli::DiagnoseArgs;
use crate::diagnose::kernel::{self, Expected};
use crate::diagnose::{Finding, VxlanPort, agent, errors, render};
use crate::http::status::Status;

#[derive(Debug, thiserror::Error)]
pub enum DiagnoseError {
    #[error("{0} problem(s) found on this node")]
    Broken(usize),
}

/// Why the kernel could not be read.
#[derive(Debug, thiserror::Error)]
enum KernelReadError {
    #[error("cannot start an event loop: {0}")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Nft(#[from] NftError),
}

pub fn diagnose(args: &DiagnoseArgs) -> Result<(), DiagnoseError> {
    let status = status::fetch(args.status_addr);
    let kernel = read_kernel();
    let port = kernel::vxlan_port(kernel.as_ref().ok(), args.vxlan_port);
    let mut findings = agent_findings(args.status_addr, &status, &port);
    findings.extend(kernel_findings(&kernel, status.as_ref().ok(), args));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&findings).expect("findings serialize"));
    } else {
        print!("{}", render(&findings));
    }
    match errors(&findings) {
        0 => Ok(()),
        n => Err(DiagnoseError::Broken(n)),
    }
}

fn agent_findings(addr: SocketAddr, status: &Result<Status, StatusError>, port: &VxlanPort) -> Vec<Finding> {
    let status = match status {
        Ok(status) => status,
        Err(e) => return vec![agent::unreachable(addr, &e.to_string())],
    };
    let mut out = vec![Finding::passed("agent", format!("the agent answers at {addr}"))];
    out.extend(agent::status_findings(status, port));
    let metrics = status::get(addr, "/metrics").map(|(_, text)| text).map_err(|e| e.to_string());
    out.push(agent::gossip_keys(metrics.as_deref().map_err(String::as_str)));
    out.push(agent::clock_skew(metrics.as_deref().map_err(String::as_str)));
    out
}

fn kernel_findings(
    kernel: &Result<Kernel, KernelReadError>,
    status: Option<&Status>,
    args: &DiagnoseArgs,
) -> Vec<Finding> {
    let kernel = match kernel {
        Ok(kernel) => kernel,
        Err(e) => return vec![kernel::unreadable(&e.to_string())],
    };
    let expected = Expected {
        vni: args.vni,
        vxlan_port: args.vxlan_port,
        node_ip: status.map(|s| s.node.node_ip),
        pod_mtu: status.map(|s| s.node.mtu),
    };
    let rp_filter_all = sysctl::read(&sysctl::dev_key("rp_filter", "all")).ok();
    kernel::kernel_findings(kernel, rp_filter_all.as_deref(), &expected)
}

/// The overlay's own snapshot of the kernel: dumps and listings only.
fn read_kernel() -> Result<Kernel, KernelReadError> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(KernelReadError::Runtime)?;
    runtime.block_on(async {
        let nl = Netlink::connect()?;
        let nft = NftSocket::open()?;
        Ok(snapshot::read(&nl, &nft).await?)
    })
}
