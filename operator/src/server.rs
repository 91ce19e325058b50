//! The operator's HTTP endpoints: `/metrics` (Prometheus text), `/healthz`, `/readyz`.
//!
//! `/readyz` answers 200 for a leader *and* for a standby (body `leader` / `standby`): a standby is
//! a healthy hot spare, and the chart's rolling update (maxUnavailable 0) needs the new pod ready
//! while the old one still holds the Lease. Who leads is `warren_operator_leader` (1/0).

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

async fn metrics() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], crate::metrics::global().encode())
}

async fn readyz() -> &'static str {
    if crate::metrics::global().leader.get() == 1 { "leader" } else { "standby" }
}

pub fn router() -> Router {
    Router::new().route("/metrics", get(metrics)).route("/healthz", get(|| async { "ok" })).route("/readyz", get(readyz))
}

pub async fn serve(listener: tokio::net::TcpListener) {
    if let Err(error) = axum::serve(listener, router()).await {
        tracing::error!(%error, "metrics server stopped");
    }
}
