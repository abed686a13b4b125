//! The status HTTP server: `/healthz`, `/readyz`, `/status`, `/metrics`.

pub mod metrics;
pub mod status;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::shared::Shared;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

/// Serves until `cancel` fires.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, cancel: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router(shared)).with_graceful_shutdown(cancel.cancelled_owned()).await
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
