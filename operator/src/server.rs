//! The operator's HTTP endpoints: `/metrics` (Prometheus text), `/healthz`, `/readyz`.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        crate::metrics::global().encode(),
    )
}

pub fn router() -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
}

pub async fn serve(listener: tokio::net::TcpListener) {
    if let Err(error) = axum::serve(listener, router()).await {
        tracing::error!(%error, "metrics server stopped");
    }
}
