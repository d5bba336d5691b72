//! The Socket.IO side: connection logging, `getUserId`, and routing every other client event
//! to the plugins that declared it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use futures_util::future::join_all;
use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Event, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::socket::DisconnectReason;

use crate::bus::Bus;
use crate::dispatch::{Dispatcher, Origin, RequestContext};
use crate::metrics::{self, Metrics};
use crate::plugin::{CallFailure, ClientRequest, RequestError};
use crate::plugins::PluginSet;

/// How long a client request may wait for its plugins before the client gets an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest plugin message relayed to a client.
const MAX_CLIENT_MESSAGE: usize = 200;

/// The user id issued to a socket by `getUserId`.
#[derive(Clone)]
struct UserId(String);

/// What every socket handler shares.
pub struct Gateway {
    pub plugins: Arc<PluginSet>,
    pub dispatcher: Arc<Dispatcher>,
    pub metrics: Arc<Metrics>,
    pub bus: Arc<dyn Bus>,
}

impl Gateway {
    /// Serves the default namespace of `io`.
    pub fn attach(self: &Arc<Self>, io: &SocketIo) {
        let gateway = self.clone();
        // socketioxide sends the CONNECT packet before it runs the connect handler, so a client
        // emitting at once could reach a socket with no handlers yet. Middleware runs before
        // CONNECT is sent: register everything there.
        let prepare = move |socket: SocketRef| {
            gateway.prepare(socket);
            async { Ok::<(), Infallible>(()) }
        };
        io.ns("/", connected.with(prepare));
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
        tracing::info!(
            socket = %socket.id,
            transport = ?socket.transport_type(),
            remote = %remote,
            user_agent,
            "client connected"
        );
        let connected = self.metrics.gauge(metrics::SOCKETS_CONNECTED, &[]);
        connected.inc();

        socket.on("getUserId", get_user_id);
        let gateway = self.clone();
        socket.on_fallback(
            move |socket: SocketRef,
                  Event(event): Event,
                  TryData(args): TryData<Arguments>,
                  ack: AckSender| {
                let gateway = gateway.clone();
                async move { gateway.on_client_event(socket, event, args.ok(), ack).await }
            },
        );
        socket.on_disconnect(async move |socket: SocketRef, reason: DisconnectReason| {
            connected.dec();
            tracing::info!(socket = %socket.id, reason = disconnect_reason(reason), "client disconnected");
        });
    }

    /// Routes a client event to every plugin that handles it, applies their actions in plugin
    /// order, and answers the acknowledgement (first reply, else success, else the error).
    async fn on_client_event(
        &self,
        socket: SocketRef,
        event: String,
        args: Option<Arguments>,
        ack: AckSender,
    ) {
        let handlers = self.plugins.handlers(&event);
        let known = if handlers.is_empty() {
            "unknown"
        } else {
            "known"
        };
        self.metrics
            .counter(metrics::CLIENT_EVENTS, &[("kind", known)])
            .inc();
        if handlers.is_empty() {
            let shown: String = event.chars().take(64).collect();
            return answer_error(&socket, ack, &format!("unknown event {shown:?}"));
        }
        let Some(Arguments(args)) = args else {
            return answer_error(
                &socket,
                ack,
                &format!("{event}: the payload is not valid JSON"),
            );
        };
        let (payload, user_id) = split_arguments(args);
        let user_id = user_id.or_else(|| socket.extensions.get::<UserId>().map(|u| u.0));
        let request = ClientRequest {
            event: event.clone(),
            payload: payload.to_string(),
            user_id,
        };

        let calls = handlers.iter().map(|(_, plugin)| {
            let request = request.clone();
            async move { tokio::time::timeout(REQUEST_TIMEOUT, plugin.on_request(request)).await }
        });
        let outcomes = join_all(calls).await;

        let mut context = RequestContext {
            socket: socket.clone(),
            first_reply: None,
        };
        let mut problems = Vec::new();
        for ((slot, plugin), outcome) in handlers.iter().zip(outcomes) {
            let name = &plugin.manifest.name;
            match outcome {
                Ok(Ok(Ok(actions))) => {
                    let applied =
                        self.dispatcher
                            .apply(plugin, actions, Origin::Request(&mut context));
                    if applied.unavailable {
                        problems.push(format!(
                            "{name} data cannot be refreshed right now; try again shortly"
                        ));
                    }
                }
                Ok(Ok(Err(RequestError::Invalid(message)))) => {
                    problems.push(message.chars().take(MAX_CLIENT_MESSAGE).collect());
                }
                Ok(Ok(Err(RequestError::Internal(detail)))) => {
                    tracing::warn!(plugin = %name, event = %event, "request failed: {detail}");
                    problems.push(format!("the {name} service could not handle {event}"));
                }
                Ok(Err(failure)) => {
                    slot.failed(&failure);
                    let why = match failure {
                        CallFailure::Unavailable => "is unavailable",
                        _ => "could not handle the request",
                    };
                    problems.push(format!("the {name} service {why}"));
                }
                Err(_elapsed) => {
                    tracing::warn!(plugin = %name, event = %event, "request timed out");
                    problems.push(format!("the {name} service did not answer in time"));
                }
            }
        }
        if problems.is_empty() {
            let success =
                RawValue::from_string(r#"{"status":"success"}"#.into()).expect("a JSON literal");
            let _ = ack.send(&*context.first_reply.unwrap_or(success));
        } else {
            answer_error(&socket, ack, &format!("{event}: {}", problems.join("; ")));
        }
    }
}

/// Everything happens in [`Gateway::prepare`], before the client learns it is connected.
async fn connected() {}

/// `getUserId`: a server-generated UUID, as the ack and as a `userUniqueId` event, stable for
/// the socket's lifetime.
async fn get_user_id(socket: SocketRef, ack: AckSender) {
    let id = match socket.extensions.get::<UserId>() {
        Some(existing) => existing.0,
        None => {
            let fresh = uuid::Uuid::new_v4().to_string();
            socket.extensions.insert(UserId(fresh.clone()));
            fresh
        }
    };
    let _ = socket.emit("userUniqueId", &id);
    let _ = ack.send(&id);
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
    let _ = socket.emit("error", &payload);
    let _ = ack.send(&payload);
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
