//! The Socket.IO side: the handshake (authentication), connection logging, `getUserId`,
//! `refreshToken`, and routing every other client event to the plugins that declared it and
//! that the socket's principal may use.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ConnectInfo;
use futures_util::future::join_all;
use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Event, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::socket::DisconnectReason;
use tokio::task::AbortHandle;

use crate::auth::{AuthRefusal, Authenticator, Principal};
use crate::bus::Bus;
use crate::config::SocketConfig;
use crate::delivery::{MustDeliver, SlowClients, must_deliver};
use crate::dispatch::{Dispatcher, Origin, RequestContext};
use crate::lifecycle::PluginSet;
use crate::logs::Throttle;
use crate::metrics::{self, ClientEventLabels, Metrics, OutcomeLabels};
use crate::plugin::{CallFailure, Caller, ClientRequest, RequestError};
use crate::telemetry::{
    ClientConnected, ClientDisconnected, ClientDropped, DropCause, InternalEvent,
};
use crate::throttle::{
    AddressFull, AddressLimits, AddressSlot, CommandBudget, EventBudget, Verdict,
};

/// How long a client request may wait for its plugins before the client gets an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest plugin message relayed to a client.
const MAX_CLIENT_MESSAGE: usize = 200;

/// The user id issued to a socket by `getUserId`.
#[derive(Clone)]
struct UserId(String);

/// What the handshake established about an authenticated socket.
struct Session {
    /// Replaced by `refreshToken`.
    principal: parking_lot::RwLock<Arc<Principal>>,
    /// The task that disconnects the socket once its token expired unrefreshed.
    expiry: parking_lot::Mutex<Option<AbortHandle>>,
}

impl Session {
    fn principal(&self) -> Arc<Principal> {
        self.principal.read().clone()
    }
}

/// What every socket handler shares.
pub struct Gateway {
    pub plugins: Arc<PluginSet>,
    pub dispatcher: Arc<Dispatcher>,
    pub metrics: Arc<Metrics>,
    pub bus: Arc<dyn Bus>,
    pub auth: Arc<Authenticator>,
    /// Per plugin name: the scope a socket's principal needs for the plugin to be called.
    pub required_scopes: BTreeMap<String, String>,
    pub address_limits: Option<Arc<AddressLimits>>,
    /// Per-socket limits (event rate).
    pub socket_config: SocketConfig,
    /// Whether the node has loaded what the fleet topic held at start (always, without one).
    pub fleet_caught_up: tokio::sync::watch::Receiver<bool>,
}

/// Why a handshake was refused: the client's `connect_error` message.
#[derive(Debug, thiserror::Error)]
enum HandshakeRefusal {
    #[error(transparent)]
    Auth(#[from] AuthRefusal),
    #[error(transparent)]
    AddressFull(#[from] AddressFull),
}

impl Gateway {
    /// Serves the default namespace of `io`.
    pub fn attach(self: &Arc<Self>, io: &SocketIo) {
        let gateway = self.clone();
        // socketioxide sends the CONNECT packet before it runs the connect handler, so a client
        // emitting at once could reach a socket with no handlers yet. Middleware runs before
        // CONNECT is sent: authenticate and register everything there. An `Err` becomes the
        // client's `connect_error`, its message the refusal's words.
        let admit = move |socket: SocketRef, TryData(auth): TryData<Value>| {
            let gateway = gateway.clone();
            async move { gateway.admit(socket, auth.ok()).await }
        };
        io.ns("/", connected.with(admit));
    }

    async fn admit(
        self: Arc<Self>,
        socket: SocketRef,
        auth: Option<Value>,
    ) -> Result<(), HandshakeRefusal> {
        if let Some(limits) = &self.address_limits {
            match limits.acquire(socket.req_parts()) {
                Ok(Some(slot)) => {
                    socket.extensions.insert(Arc::new(slot));
                }
                Ok(None) => {}
                Err(full) => {
                    self.metrics.handshakes_refused_address.inc();
                    return Err(full.into());
                }
            }
        }
        if self.auth.required() {
            let token = handshake_token(auth.as_ref(), &socket.req_parts().headers);
            let principal = self.auth.authenticate(token).await.inspect_err(|refusal| {
                tracing::debug!(socket = %socket.id, "handshake refused: {refusal}");
            })?;
            let session = Arc::new(Session {
                principal: parking_lot::RwLock::new(Arc::new(principal)),
                expiry: parking_lot::Mutex::new(None),
            });
            socket.extensions.insert(session.clone());
            self.watch_expiry(&socket, &session);
        }
        self.prepare(socket);
        Ok(())
    }

    /// Disconnects the socket once its token's `exp` plus the refresh grace has passed with
    /// no `refreshToken` extending it.
    fn watch_expiry(&self, socket: &SocketRef, session: &Arc<Session>) {
        let (socket, watched) = (socket.clone(), session.clone());
        let grace = self.auth.refresh_grace;
        let metrics = self.metrics.clone();
        let task = tokio::spawn(async move {
            loop {
                let deadline =
                    Duration::from_secs(watched.principal().expires_at).saturating_add(grace);
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                match deadline.checked_sub(now) {
                    Some(left) if !left.is_zero() => tokio::time::sleep(left).await,
                    _ => break,
                }
            }
            ClientDropped {
                socket: &socket.id,
                cause: DropCause::TokenExpired,
            }
            .emit(&metrics);
            let message = "session expired: the token was not refreshed";
            let _ = socket.emit(
                "error",
                &serde_json::json!({ "status": "error", "message": message }),
            );
            let _ = socket.disconnect();
        });
        *session.expiry.lock() = Some(task.abort_handle());
    }

    fn prepare(self: &Arc<Self>, socket: SocketRef) {
        let parts = socket.req_parts();
        let user_agent = parts
            .headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let remote = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(|| "-".to_owned(), |info| info.0.to_string());
        ClientConnected {
            socket: &socket.id,
            transport: &socket.transport_type(),
            remote: &remote,
            user_agent,
        }
        .emit(&self.metrics);
        let metrics = self.metrics.clone();

        socket.extensions.insert(SlowClients(self.metrics.clone()));
        if let Some(budget) = EventBudget::new(&self.socket_config) {
            socket.extensions.insert(Arc::new(budget));
        }
        if let Some(commands) = CommandBudget::new(&self.socket_config) {
            socket.extensions.insert(Arc::new(commands));
        }
        let gateway = self.clone();
        socket.on("getUserId", move |socket: SocketRef, ack: AckSender| {
            let gateway = gateway.clone();
            async move {
                if let Some(ack) = gateway.within_budget(&socket, ack) {
                    get_user_id(socket, ack);
                }
            }
        });
        if self.auth.required() {
            let gateway = self.clone();
            socket.on(
                "refreshToken",
                move |socket: SocketRef, TryData(token): TryData<Value>, ack: AckSender| {
                    let gateway = gateway.clone();
                    async move {
                        if let Some(ack) = gateway.within_budget(&socket, ack) {
                            gateway.refresh_token(socket, token.ok(), ack).await;
                        }
                    }
                },
            );
        }
        let gateway = self.clone();
        socket.on_fallback(
            move |socket: SocketRef,
                  Event(event): Event,
                  TryData(args): TryData<Arguments>,
                  ack: AckSender| {
                let gateway = gateway.clone();
                async move {
                    if let Some(ack) = gateway.within_budget(&socket, ack) {
                        gateway.on_client_event(socket, event, args.ok(), ack).await;
                    }
                }
            },
        );
        socket.on_disconnect(async move |socket: SocketRef, reason: DisconnectReason| {
            if let Some(session) = socket.extensions.get::<Arc<Session>>()
                && let Some(expiry) = session.expiry.lock().take()
            {
                expiry.abort();
            }
            socket.extensions.remove::<Arc<AddressSlot>>();
            ClientDisconnected {
                socket: &socket.id,
                reason: disconnect_reason(reason),
            }
            .emit(&metrics);
        });
    }

    /// Spends one event of the socket's budget. Over it, the event is answered with an error
    /// (`None`: not to be processed), and a socket that keeps going is disconnected.
    fn within_budget(&self, socket: &SocketRef, ack: AckSender) -> Option<AckSender> {
        let Some(budget) = socket.extensions.get::<Arc<EventBudget>>() else {
            return Some(ack);
        };
        match budget.check() {
            Verdict::Allowed => Some(ack),
            Verdict::Refused => {
                self.metrics.events_refused.inc();
                answer_error(socket, ack, "too many events: slow down");
                None
            }
            Verdict::Abusive => {
                ClientDropped {
                    socket: &socket.id,
                    cause: DropCause::Abuse,
                }
                .emit(&self.metrics);
                answer_error(socket, ack, "too many events: disconnected");
                let _ = socket.clone().disconnect();
                None
            }
        }
    }

    /// `refreshToken`: a fresh token for the same user extends the socket's session.
    async fn refresh_token(&self, socket: SocketRef, payload: Option<Value>, ack: AckSender) {
        let Some(session) = socket.extensions.get::<Arc<Session>>() else {
            return;
        };
        let token = match &payload {
            Some(Value::String(token)) => Some(token.as_str()),
            Some(object) => object.get("token").and_then(Value::as_str),
            None => None,
        };
        let refreshed = match token {
            None => Err(AuthRefusal::Missing),
            Some(token) => self.auth.verify(token).await.and_then(|fresh| {
                if fresh.subject == session.principal().subject {
                    Ok(fresh)
                } else {
                    Err(AuthRefusal::OtherSubject)
                }
            }),
        };
        let outcome = if refreshed.is_ok() {
            "accepted"
        } else {
            "refused"
        };
        self.metrics
            .auth_refreshes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        match refreshed {
            Ok(fresh) => {
                let expires_at = fresh.expires_at;
                *session.principal.write() = Arc::new(fresh);
                let sent =
                    ack.send(&serde_json::json!({ "status": "success", "expiresAt": expires_at }));
                must_deliver(&socket, MustDeliver::Ack, sent);
            }
            Err(refusal) => answer_error(&socket, ack, &refusal.to_string()),
        }
    }

    /// Routes a client event to every plugin that handles it and that the socket's principal
    /// may use, applies their actions in plugin order, and answers the acknowledgement (first
    /// reply, else success, else the error).
    async fn on_client_event(
        &self,
        socket: SocketRef,
        event: String,
        args: Option<Arguments>,
        ack: AckSender,
    ) {
        let mut handlers = self.plugins.handlers(&event);
        let known = if handlers.is_empty() {
            "unknown"
        } else {
            "known"
        };
        self.metrics
            .client_events
            .get_or_create(&ClientEventLabels { kind: known })
            .inc();
        if handlers.is_empty() {
            let shown: String = event.chars().take(64).collect();
            return answer_error(&socket, ack, &format!("unknown event {shown:?}"));
        }
        let principal = socket
            .extensions
            .get::<Arc<Session>>()
            .map(|session| session.principal());
        let mut missing_scope = None;
        handlers.retain(|plugin| {
            let name = &plugin.manifest.name;
            let Some(scope) = self.required_scopes.get(name) else {
                return true;
            };
            let permitted = principal.as_ref().is_some_and(|p| p.has_scope(scope));
            if !permitted {
                self.metrics
                    .requests_forbidden
                    .get_or_create(&metrics::plugin(name))
                    .inc();
                missing_scope.get_or_insert(scope);
            }
            permitted
        });
        if let (true, Some(scope)) = (handlers.is_empty(), missing_scope) {
            return answer_error(
                &socket,
                ack,
                &format!("{event}: requires the {scope:?} scope"),
            );
        }
        let Some(Arguments(args)) = args else {
            return answer_error(
                &socket,
                ack,
                &format!("{event}: the payload is not valid JSON"),
            );
        };
        let (payload, claimed_user) = split_arguments(args);
        // An authenticated socket is its token's subject, whatever user id it sends.
        let user_id = match &principal {
            Some(principal) => Some(principal.subject.clone()),
            None => claimed_user.or_else(|| socket.extensions.get::<UserId>().map(|u| u.0)),
        };
        let request = Arc::new(ClientRequest {
            event: event.clone(),
            payload: payload.to_string(),
            user_id,
        });

        let socket_key = socket_key(&socket);
        let calls = handlers.iter().map(|plugin| {
            let request = request.clone();
            let caller = Caller {
                principal: principal.clone(),
                socket: socket_key,
            };
            async move {
                tokio::time::timeout(REQUEST_TIMEOUT, plugin.on_request(request, caller)).await
            }
        });
        let outcomes = join_all(calls).await;

        let mut context = RequestContext {
            socket: socket.clone(),
            commands: socket.extensions.get::<Arc<CommandBudget>>(),
            max_rooms: self.socket_config.max_rooms,
            first_reply: None,
        };
        let mut problems = Vec::new();
        for (plugin, outcome) in handlers.iter().zip(outcomes) {
            let name = &plugin.manifest.name;
            match outcome.map(|answer| answer.map(|a| (a.result, a.leave))) {
                Ok(Ok((Ok(actions), leave))) => {
                    self.dispatcher
                        .leave_rooms(plugin, &socket, &leave, &actions);
                    let applied =
                        self.dispatcher
                            .apply(plugin, actions, Origin::Request(&mut context));
                    if applied.unavailable {
                        problems.push(format!(
                            "{name} data cannot be refreshed right now; try again shortly"
                        ));
                    } else if applied.throttled {
                        problems.push(format!("the {name} service is busy; try again shortly"));
                    } else if applied.too_many_rooms {
                        problems.push("this connection is in as many rooms as it may be".into());
                    }
                }
                Ok(Ok((Err(RequestError::Invalid(message)), _))) => {
                    problems.push(message.chars().take(MAX_CLIENT_MESSAGE).collect());
                }
                Ok(Ok((Err(RequestError::Internal(detail)), _))) => {
                    static FAILED: Throttle = Throttle::new();
                    if let Some(held_back) = FAILED.admit(name) {
                        tracing::warn!(plugin = %name, event = %event, held_back, "request failed: {detail}");
                    }
                    problems.push(format!("the {name} service could not handle {event}"));
                }
                Ok(Err(failure)) => {
                    let why = match failure {
                        CallFailure::Unavailable => "is unavailable",
                        CallFailure::CircuitOpen => "is temporarily unavailable; try again later",
                        CallFailure::OverBudget => "is busy; try again shortly",
                        _ => "could not handle the request",
                    };
                    problems.push(format!("the {name} service {why}"));
                }
                Err(_elapsed) => {
                    static TIMED_OUT: Throttle = Throttle::new();
                    if let Some(held_back) = TIMED_OUT.admit(name) {
                        tracing::warn!(plugin = %name, event = %event, held_back, "request timed out");
                    }
                    problems.push(format!("the {name} service did not answer in time"));
                }
            }
        }
        if problems.is_empty() {
            let success =
                RawValue::from_string(r#"{"status":"success"}"#.into()).expect("a JSON literal");
            let sent = ack.send(&*context.first_reply.unwrap_or(success));
            must_deliver(&socket, MustDeliver::Ack, sent);
        } else {
            answer_error(&socket, ack, &format!("{event}: {}", problems.join("; ")));
        }
    }
}

/// A stable number for the socket, to charge a plugin failure its request caused to it.
fn socket_key(socket: &SocketRef) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(socket.id)
}

/// Everything happens in [`Gateway::prepare`], before the client learns it is connected.
async fn connected() {}

/// The handshake's token: the `auth` payload's `token` (socket.io-client's `auth` option),
/// else an `Authorization: Bearer` header (non-browser clients).
fn handshake_token<'a>(
    auth: Option<&'a Value>,
    headers: &'a axum::http::HeaderMap,
) -> Option<&'a str> {
    auth.and_then(|auth| auth.get("token"))
        .and_then(Value::as_str)
        .or_else(|| {
            headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        })
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

/// `getUserId`: the authenticated subject, else a server-generated UUID stable for the
/// socket's lifetime; as the ack and as a `userUniqueId` event.
fn get_user_id(socket: SocketRef, ack: AckSender) {
    let session = socket.extensions.get::<Arc<Session>>();
    let id = match (session, socket.extensions.get::<UserId>()) {
        (Some(session), _) => session.principal().subject.clone(),
        (None, Some(existing)) => existing.0,
        (None, None) => {
            let fresh = uuid::Uuid::new_v4().to_string();
            socket.extensions.insert(UserId(fresh.clone()));
            fresh
        }
    };
    must_deliver(
        &socket,
        MustDeliver::Reply,
        socket.emit("userUniqueId", &id),
    );
    must_deliver(&socket, MustDeliver::Ack, ack.send(&id));
}

/// The disconnect reason in the contract's words (those of the Socket.IO client).
fn disconnect_reason(reason: DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::TransportClose => "transport close",
        DisconnectReason::TransportError | DisconnectReason::MultipleHttpPollingError => {
            "transport error"
        }
        DisconnectReason::PacketParsingError => "parse error",
        DisconnectReason::HeartbeatTimeout => "ping timeout",
        DisconnectReason::ClientNSDisconnect => "client disconnect",
        DisconnectReason::ServerNSDisconnect => "server disconnect",
        DisconnectReason::ClosingServer => "server shutting down",
    }
}

/// The contract's error shape, on the `error` event and the acknowledgement.
fn answer_error(socket: &SocketRef, ack: AckSender, message: &str) {
    let payload = serde_json::json!({ "status": "error", "message": message });
    must_deliver(socket, MustDeliver::Error, socket.emit("error", &payload));
    must_deliver(socket, MustDeliver::Ack, ack.send(&payload));
}

/// Every argument of a client event. socketioxide passes only the first argument to a
/// non-tuple type, so this asks for a tuple and takes however many arrived.
pub struct Arguments(Vec<Value>);

impl<'de> Deserialize<'de> for Arguments {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Collect;
        impl<'de> Visitor<'de> for Collect {
            type Value = Vec<Value>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("event arguments")
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Vec<Value>, S::Error> {
                let mut args = Vec::new();
                while let Some(arg) = seq.next_element()? {
                    args.push(arg);
                }
                Ok(args)
            }
        }
        deserializer.deserialize_tuple(2, Collect).map(Arguments)
    }
}

/// The payload is the first argument (`null` when none). The user id is the second argument
/// when it is a string (`emit(event, payload, userId)`), else a `userId` field of the payload.
fn split_arguments(args: Vec<Value>) -> (Value, Option<String>) {
    let mut args = args.into_iter();
    let payload = args.next().unwrap_or(Value::Null);
    let user_id = match args.next() {
        Some(Value::String(id)) => Some(id),
        _ => payload
            .get("userId")
            .and_then(Value::as_str)
            .map(str::to_owned),
    };
    (payload, user_id)
}

#[cfg(test)]
mod tests {
    use super::split_arguments;
    use serde_json::json;

    #[test]
    fn user_id_from_second_argument_or_payload() {
        let (payload, user) = split_arguments(vec![json!({ "city": "Delhi" }), json!("u-1")]);
        assert_eq!(payload, json!({ "city": "Delhi" }));
        assert_eq!(user.as_deref(), Some("u-1"));
        let (payload, user) = split_arguments(vec![json!({ "city": "Delhi", "userId": "u-2" })]);
        assert_eq!(payload["city"], "Delhi");
        assert_eq!(user.as_deref(), Some("u-2"));
        let (payload, user) = split_arguments(vec![json!([1, 2])]);
        assert_eq!(
            payload,
            json!([1, 2]),
            "a lone array argument stays the payload"
        );
        assert_eq!(user, None);
        let (payload, user) = split_arguments(Vec::new());
        assert_eq!(payload, json!(null));
        assert_eq!(user, None);
    }
}
