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

/// Ready when plugins serve, the bus reaches its brokers, and every subscription has replayed
/// its history into the cache (so a first client is hydrated at once).
async fn ready(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    let plugins = gateway.plugins.len();
    let bus = gateway.bus.status();
    let ready = plugins > 0 && bus.connected && bus.caught_up;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "plugins": plugins,
        "bus_connected": bus.connected,
        "cache_warmed": bus.caught_up,
    });
    (status, Json(body))
}

async fn metrics(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        gateway.metrics.render(),
    )
}

async fn plugins(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    let (plugins, rejected) = gateway.plugins.views();
    Json(json!({ "plugins": plugins, "rejected": rejected }))
}
