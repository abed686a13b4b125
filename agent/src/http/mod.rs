//! The status HTTP server: `/healthz`, `/readyz`, `/status`, `/metrics`, with limits that keep
//! its clients from taking what the rest of the agent needs.

pub mod metrics;
pub mod status;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::logging::RateLimit;
use crate::shared::Shared;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The status server (loopback by default): health, readiness, the status document, metrics.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

/// The metrics server (`--metrics-addr`, reachable by a Prometheus elsewhere): `/metrics` and
/// nothing else, so that the status document stays on loopback.
pub fn metrics_router(shared: Arc<Shared>) -> Router {
    Router::new().route("/metrics", get(metrics)).with_state(shared)
}

/// Connections the metrics server serves at once: scrapers are few.
pub const METRICS_MAX_CONNECTIONS: usize = 16;

/// What the status server allows its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A connection must send a whole request head within this long of opening, or of its last
    /// answer; else it is closed. (hyper's header-read timeout, which covers both.)
    pub idle_timeout: Duration,
    /// Connections served at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
}

impl Limits {
    /// The limits asked for, with the connection cap kept to a quarter of the open-file limit
    /// `open_files`: the status server can never take the file handles that netlink, nftables,
    /// the node's files and gossip need.
    pub fn within(idle_timeout: Duration, max_connections: usize, open_files: u64) -> Limits {
        let share = usize::try_from(open_files / 4).unwrap_or(usize::MAX);
        Limits { idle_timeout, max_connections: max_connections.min(share).max(1) }
    }
}

/// This process's open-file limit (the soft RLIMIT_NOFILE), 1024 if it cannot be read.
pub fn open_files_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft)
}

/// Serves `router` until `cancel` fires, then lets open requests finish (for at most the idle
/// timeout).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shared: Arc<Shared>,
    limits: Limits,
    cancel: CancellationToken,
) {
    let mut server = Server::new(router, shared, limits);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => server.take(stream),
                Err(e) => server.accept_failed(&e).await,
            },
        }
    }
    let _ = tokio::time::timeout(limits.idle_timeout, server.graceful.shutdown()).await;
}

/// Why an incoming connection was not served (the keys of the log's rate limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Unserved {
    Full,
    AcceptFailed,
}

/// The accept loop's state: hyper's connection settings, the router, and a slot per connection.
struct Server {
    shared: Arc<Shared>,
    limits: Limits,
    http: http1::Builder,
    service: TowerToHyperService<Router>,
    slots: Arc<Semaphore>,
    graceful: GracefulShutdown,
    unserved: RateLimit<Unserved>,
}

impl Server {
    fn new(router: Router, shared: Arc<Shared>, limits: Limits) -> Server {
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(limits.idle_timeout);
        Server {
            service: TowerToHyperService::new(router),
            shared,
            limits,
            http,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            graceful: GracefulShutdown::new(),
            unserved: RateLimit::default(),
        }
    }

    /// Serves `stream` if a slot is free, else closes it at once: queueing it would hold its
    /// file handle, and a client that gets no answer retries anyway.
    fn take(&mut self, stream: TcpStream) {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            drop(stream);
            self.shared.metrics.http_connection_rejected();
            if let Some(suppressed) = self.unserved.admit(Unserved::Full, Instant::now()) {
                tracing::warn!(
                    max_connections = self.limits.max_connections,
                    suppressed,
                    "status server at its connection limit: closing new connections until idle ones time out"
                );
            }
            return;
        };
        let connection = self.graceful.watch(self.http.serve_connection(TokioIo::new(stream), self.service.clone()));
        let shared = self.shared.clone();
        shared.metrics.http_connection_opened();
        tokio::spawn(async move {
            // Errors are the client's (gone, too slow, malformed): nothing to act on here.
            let _ = connection.await;
            shared.metrics.http_connection_closed();
            drop(slot);
        });
    }

    /// Out of file handles, most likely: waits a little for some to be closed.
    async fn accept_failed(&mut self, error: &std::io::Error) {
        if let Some(suppressed) = self.unserved.admit(Unserved::AcceptFailed, Instant::now()) {
            tracing::warn!(%error, suppressed, "cannot accept a status connection");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn verdict(result: Result<(), String>, ok: &'static str) -> Response {
    match result {
        Ok(()) => (StatusCode::OK, format!("{ok}\n")).into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    verdict(shared.health(), "ok")
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    verdict(shared.readiness(), "ready")
}

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    match shared.status() {
        Some(s) => axum::Json(s).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response(),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    ([(header::CONTENT_TYPE, OPENMETRICS)], shared.metrics.encode()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_stays_a_quarter_of_the_open_file_limit() {
        let t = Duration::from_secs(10);
        assert_eq!(Limits::within(t, 64, 1024).max_connections, 64);
        assert_eq!(Limits::within(t, 64, 200).max_connections, 50);
        assert_eq!(Limits::within(t, 500, 400).max_connections, 100);
        assert_eq!(Limits::within(t, 64, 2).max_connections, 1, "always room for one");
        assert_eq!(Limits::within(t, 64, u64::MAX).max_connections, 64);
    }
}
