//! What a client must get: acknowledgements, replies, hydration snapshots and `error` events.
//!
//! Room broadcasts to a socket that lags are conflated (the vendored socketioxide keeps the
//! newest in the socket's volatile slot once its queue is full), but a packet the client must
//! get is never dropped silently: a socket whose queue is full — a client that stopped reading
//! — is disconnected for it, counted by what it missed, and hydrated afresh when it reconnects.

use std::sync::Arc;

use socketioxide::SendError;
use socketioxide::SocketError;
use socketioxide::extract::SocketRef;

use crate::metrics::Metrics;
use crate::telemetry::{InternalEvent, SlowClientDisconnected};

/// A packet the client must get.
#[derive(Debug, Clone, Copy)]
pub enum MustDeliver {
    Ack,
    Reply,
    Hydration,
    Error,
}

impl MustDeliver {
    fn label(self) -> &'static str {
        match self {
            Self::Ack => "ack",
            Self::Reply => "reply",
            Self::Hydration => "hydration",
            Self::Error => "error",
        }
    }
}

/// Where the slow-client count goes: put in every socket's extensions at connect.
#[derive(Clone)]
pub struct SlowClients(pub Arc<Metrics>);

/// Checks the outcome of sending `what` to `socket`: a socket that could not take it because
/// its queue is full is disconnected. A socket already closed needs nothing.
pub fn must_deliver(socket: &SocketRef, what: MustDeliver, sent: Result<(), SendError>) {
    if !matches!(
        sent,
        Err(SendError::Socket(SocketError::InternalChannelFull))
    ) {
        return;
    }
    if let Some(SlowClients(metrics)) = socket.extensions.get::<SlowClients>() {
        SlowClientDisconnected {
            socket: &socket.id,
            missed: what.label(),
        }
        .emit(&metrics);
    }
    let _ = socket.clone().disconnect();
}
