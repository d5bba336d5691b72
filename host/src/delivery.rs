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

use crate::logs::Throttle;
use crate::metrics::{self, Metrics};

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
        metrics
            .counter(
                metrics::SLOW_CLIENT_DISCONNECTS,
                &[("missed", what.label())],
            )
            .inc();
    }
    static SLOW: Throttle = Throttle::new();
    if let Some(held_back) = SLOW.admit("slow client") {
        tracing::info!(socket = %socket.id, missed = what.label(), held_back, "a client that does not read could not take a packet it must get: disconnecting");
    }
    let _ = socket.clone().disconnect();
}
