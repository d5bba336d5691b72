//! Which browser origins may open a Socket.IO connection, and the CORS answers that let them.
//!
//! One allowlist (`socket.allowed_origins`) serves both: a handshake whose `Origin` is not
//! allowed is refused with 403 on either transport, and CORS responses name only allowed
//! origins. Requests without an `Origin` header come from non-browser clients, which no origin
//! policy can restrain; authentication is what keeps those out.
//!
//! The gateway's own origin (the demo page it serves) is always allowed. Unset, the allowlist
//! also admits loopback origins (a developer's page on `localhost:5173`): on a public address
//! that means same-origin pages only, until the operator lists the frontends' origins.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::metrics::{Counter, Metrics};

/// Socket.IO's endpoint; the origin check applies to it only.
const SOCKET_IO_PATH: &str = "/socket.io/";

#[derive(Debug, Clone)]
enum Allowed {
    Any,
    Listed(HashSet<String>),
    LoopbackAndSelf,
}

/// The origins allowed to connect.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    allowed: Allowed,
}

impl OriginPolicy {
    pub fn new(allowed_origins: Option<&[String]>) -> Self {
        let allowed = match allowed_origins {
            None => Allowed::LoopbackAndSelf,
            Some(list) if list.iter().any(|o| o == "*") => Allowed::Any,
            Some(list) => Allowed::Listed(
                list.iter()
                    .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                    .collect(),
            ),
        };
        Self { allowed }
    }

    /// Whether a request carrying `origin`, sent to `host` (its `Host` header), is allowed.
    /// The gateway's own origin (the page it serves) is always allowed.
    pub fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.to_ascii_lowercase();
        let authority = origin.split_once("://").map(|(_, authority)| authority);
        let same_origin = authority
            .zip(host)
            .is_some_and(|(authority, host)| host.eq_ignore_ascii_case(authority));
        same_origin
            || match &self.allowed {
                Allowed::Any => true,
                Allowed::Listed(list) => list.contains(&origin),
                Allowed::LoopbackAndSelf => authority.is_some_and(is_loopback),
            }
    }

    fn allows_request(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        origin
            .to_str()
            .is_ok_and(|origin| self.allows(origin, host))
    }

    /// CORS for the public listener: preflights answered, `Access-Control-Allow-Origin`
    /// echoing an allowed origin only.
    pub fn cors(&self, credentials: bool) -> CorsLayer {
        let policy = self.clone();
        CorsLayer::new()
            .allow_origin(AllowOrigin::predicate(
                move |origin: &HeaderValue, parts| {
                    let host = parts
                        .headers
                        .get(header::HOST)
                        .and_then(|h| h.to_str().ok());
                    origin.to_str().is_ok_and(|o| policy.allows(o, host))
                },
            ))
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
            .allow_credentials(credentials)
    }
}

/// `host:port` (or `[v6]:port`) is a loopback address or `localhost`.
fn is_loopback(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The origin check in front of Socket.IO.
#[derive(Clone)]
pub struct OriginGuard {
    policy: OriginPolicy,
    refused: Counter,
}

impl OriginGuard {
    pub fn new(policy: OriginPolicy, metrics: &Metrics) -> Arc<Self> {
        Arc::new(Self {
            policy,
            refused: metrics.origin_refused.clone(),
        })
    }
}

/// Refuses a Socket.IO request (polling or websocket upgrade) from a disallowed origin.
pub async fn check_origin(
    State(guard): State<Arc<OriginGuard>>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path().starts_with(SOCKET_IO_PATH)
        && !guard.policy.allows_request(request.headers())
    {
        guard.refused.inc();
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_allows_loopback_and_the_gateways_own_origin() {
        let policy = OriginPolicy::new(None);
        assert!(policy.allows("http://localhost:5173", Some("bff.example:443")));
        assert!(policy.allows("http://127.0.0.1:8099", None));
        assert!(policy.allows("http://[::1]:8080", None));
        assert!(policy.allows("https://bff.example", Some("bff.example")));
        assert!(!policy.allows("https://evil.example", Some("bff.example")));
        assert!(!policy.allows("http://localhost.evil.example", None));
        assert!(!policy.allows("null", None));
    }

    #[test]
    fn a_list_allows_exactly_its_origins() {
        let list = vec!["https://app.example.com/".to_owned()];
        let policy = OriginPolicy::new(Some(&list));
        assert!(policy.allows("https://APP.example.com", Some("bff")));
        assert!(!policy.allows("http://app.example.com", Some("bff")));
        assert!(!policy.allows("http://127.0.0.1:1", None), "no loopback");
        assert!(
            policy.allows("http://127.0.0.1:1", Some("127.0.0.1:1")),
            "own origin"
        );
        let any = OriginPolicy::new(Some(&["*".to_owned()]));
        assert!(any.allows("https://anything.example", None));
    }
}
