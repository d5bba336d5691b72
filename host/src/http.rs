//! HTTP endpoints beside Socket.IO: `/healthz`, `/readyz`, `/metrics`, `/admin/plugins`.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use crate::gateway::Gateway;

pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/admin/plugins", get(plugins))
        .with_state(gateway)
}

/// Ready once at least one plugin serves: a gateway with no domains answers every event with
/// an error and should not take traffic.
async fn ready(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    let loaded = gateway.registry.plugins.len();
    let status = if loaded > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "ready": loaded > 0, "plugins": loaded })),
    )
}

async fn metrics(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        gateway.metrics.render(),
    )
}

async fn plugins(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    let active: Vec<_> = gateway
        .registry
        .plugins
        .iter()
        .map(|plugin| {
            let m = &plugin.manifest;
            json!({
                "name": m.name,
                "version": m.version,
                "state": "active",
                "consumes": m.consumes,
                "handles": m.handles,
                "publishes": m.publishes,
            })
        })
        .collect();
    Json(json!({ "plugins": active, "rejected": gateway.registry.rejected }))
}
