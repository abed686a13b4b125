//! `weft-agent run`: the daemon.

use std::sync::Arc;

use chitchat::transport::Transport;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, StartError};
use crate::cli::RunArgs;
use crate::config::ConfigError;
use crate::datapath::{self, BuildOnDemand};
use crate::detect::{self, DetectError};
use crate::gossip::keyfile::{KeyFileError, KeyWatch};
use crate::gossip::transport::{GossipCounters, GossipUdp, Sealing};
use crate::http;
use crate::probe::icmp::{Pinger, RawPinger};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot detect the underlay: {0}")]
    Detect(#[from] DetectError),
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr} for status: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("cannot handle signals: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("status server failed: {0}")]
    Http(tokio::task::JoinError),
    #[error("cluster key: {0}")]
    Keys(#[from] KeyFileError),
}

fn hostname() -> String {
    nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default()
}

pub async fn run(args: &RunArgs) -> Result<(), RunError> {
    let underlay = detect::detect(args.node_ip.as_ref(), args.iface.as_deref()).await?;
    let cfg = args.config(underlay, hostname)?;
    // Bind first: a taken status port fails the start before the node joins the cluster.
    let listener = TcpListener::bind(args.status_addr)
        .await
        .map_err(|source| RunError::Listen { addr: args.status_addr, source })?;
    let metrics_listener = match args.metrics_addr {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| RunError::Listen { addr, source })?),
        None => None,
    };
    let mut sigterm = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    let keys = match &args.cluster_key_file {
        Some(path) => Some(KeyWatch::load(path)?),
        None => {
            tracing::warn!(
                gossip = %cfg.gossip.listen,
                "GOSSIP IS NOT ENCRYPTED OR AUTHENTICATED: anyone who can send UDP to this port can join the \
                 cluster and route pod traffic to themselves. Set --cluster-key-file (see docs/security.md)."
            );
            None
        }
    };
    let sealing =
        keys.as_ref().map(|(_, receiver)| Sealing { keys: receiver.clone(), replay_window: args.gossip_replay_window });
    let cluster_id = cfg.gossip.cluster_id.clone();
    let transport = move |counters: &GossipCounters| -> Arc<dyn Transport> {
        Arc::new(GossipUdp::new(&cluster_id, sealing, counters))
    };
    let datapath = Arc::new(BuildOnDemand::new(datapath::kernel));
    let pinger = match RawPinger::open() {
        Ok(pinger) => Some(Arc::new(pinger) as Arc<dyn Pinger>),
        Err(e) => {
            tracing::error!(
                error = %e,
                "cannot open the ICMP socket for dataplane probes (CAP_NET_RAW is needed): every peer's dataplane stays unknown"
            );
            None
        }
    };
    let agent = Agent::start(cfg, transport, datapath, pinger).await?;
    if let Some((watch, _)) = keys {
        let shared = agent.shared();
        tracing::info!(primary = %watch.current().primary(), keys = ?watch.current(), "gossip is sealed with the cluster key");
        shared.metrics.set_gossip_keys(&watch.current(), true);
        tokio::spawn(watch.run(move |ring, loaded| shared.metrics.set_gossip_keys(ring, loaded)));
    }
    let http_cancel = CancellationToken::new();
    let limits = args.status_limits(http::open_files_limit());
    let shared = agent.shared();
    let router = http::router(shared.clone());
    let mut server = tokio::spawn(http::serve(listener, router, shared.clone(), limits, http_cancel.clone()));
    if let Some(listener) = metrics_listener {
        let metrics_limits = http::Limits { max_connections: http::METRICS_MAX_CONNECTIONS, ..limits };
        let router = http::metrics_router(shared.clone());
        tokio::spawn(http::serve(listener, router, shared, metrics_limits, http_cancel.clone()));
        tracing::info!(addr = ?args.metrics_addr, "metrics server listening (/metrics only)");
    }
    tracing::info!(
        addr = %args.status_addr,
        idle_timeout = %humantime::format_duration(limits.idle_timeout),
        max_connections = limits.max_connections,
        "status server listening"
    );
    let http_result = tokio::select! {
        _ = sigterm.recv() => { tracing::info!("SIGTERM: leaving the cluster"); None }
        _ = sigint.recv() => { tracing::info!("SIGINT: leaving the cluster"); None }
        result = &mut server => Some(result),
    };
    agent.stop().await;
    let result = match http_result {
        Some(result) => result,
        None => {
            http_cancel.cancel();
            server.await
        }
    };
    result.map_err(RunError::Http)
}
