//! HTTP beside Socket.IO. The public listener answers the probes (`/healthz`, `/readyz`) and,
//! with the demo enabled, serves the demo page; the admin listener, private by default
//! (`127.0.0.1:9300`), also serves `/metrics` and `/admin/plugins`, behind a bearer token when
//! one is configured. The probes never need the token: orchestrators call them.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::config::Secret;
use crate::gateway::Gateway;
use crate::metrics::{self, Counter};

/// The demo page and the official socket.io-client build it loads (4.8.1, MIT).
const DEMO_PAGE: &str = include_str!("../static/index.html");
const SOCKET_IO_CLIENT: &str = include_str!("../static/socket.io.min.js");

/// The public listener's own routes (Socket.IO is layered over them).
pub fn public_router(gateway: Arc<Gateway>, demo: bool) -> Router {
    let router = probes();
    let router = if demo {
        router
            .route(
                "/",
                get(|| async {
                    (
                        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                        DEMO_PAGE,
                    )
                }),
            )
            .route(
                "/socket.io.min.js",
                get(|| async {
                    (
                        [
                            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                            (header::CACHE_CONTROL, "public, max-age=3600"),
                        ],
                        SOCKET_IO_CLIENT,
                    )
                }),
            )
    } else {
        router
    };
    router.with_state(gateway)
}

/// The admin listener: the probes, and `/metrics` and `/admin/*` behind `token` when set.
pub fn admin_router(gateway: Arc<Gateway>, token: Option<Secret>) -> Router {
    let guard = Arc::new(AdminGuard {
        unauthorized: gateway.metrics.admin_unauthorized.clone(),
        token,
    });
    let private = Router::new()
        .route("/metrics", get(metrics))
        .route("/admin/plugins", get(plugins))
        .route_layer(middleware::from_fn_with_state(guard, require_token));
    probes().merge(private).with_state(gateway)
}

fn probes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
}

struct AdminGuard {
    token: Option<Secret>,
    unauthorized: Counter,
}

async fn require_token(
    State(guard): State<Arc<AdminGuard>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = &guard.token
        && !bearer_matches(request.headers(), token)
    {
        guard.unauthorized.inc();
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a bearer token is required",
        )
            .into_response();
    }
    next.run(request).await
}

/// Compares in time independent of where the first difference is.
fn bearer_matches(headers: &HeaderMap, token: &Secret) -> bool {
    let Some(sent) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (sent, expected) = (sent.as_bytes(), token.expose().as_bytes());
    sent.len() == expected.len()
        && sent
            .iter()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// Ready when plugins serve, the bus reaches its brokers, and every subscription has replayed
/// its history into the cache (so a first client is hydrated at once).
async fn ready(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    let plugins = gateway.plugins.len();
    let bus = gateway.bus.status();
    let fleet = *gateway.fleet_caught_up.borrow();
    let ready = plugins > 0 && bus.connected && bus.caught_up && fleet;
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
        "fleet_caught_up": fleet,
    });
    (status, Json(body))
}

async fn metrics(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        gateway.metrics.render(),
    )
}

async fn plugins(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    let (plugins, rejected) = gateway.plugins.views();
    Json(json!({ "plugins": plugins, "rejected": rejected }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn only_the_exact_bearer_token_matches() {
        let token = Secret::new("s3cret");
        let mut headers = HeaderMap::new();
        assert!(!bearer_matches(&headers, &token));
        for (sent, ok) in [
            ("Bearer s3cret", true),
            ("Bearer s3cre", false),
            ("Bearer s3cret2", false),
            ("Basic s3cret", false),
        ] {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_static(sent));
            assert_eq!(bearer_matches(&headers, &token), ok, "{sent}");
        }
    }
}
