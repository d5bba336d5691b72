//! Per-client limits on the edge: how fast one socket may send events, and how many sockets
//! one address may hold open. One hostile or broken client must never cost other users.
//!
//! Events: a token bucket per socket (`socket.events_per_sec`, bursts of `socket.event_burst`);
//! an event over it is answered with an `error` and not processed. A socket that keeps going
//! — more than `socket.refused_events_before_disconnect` refusals within 10 seconds — is
//! disconnected. Addresses: at most `socket.max_connections_per_address` open sockets per
//! client address (off by default: NAT and proxies put many users behind one address), taken
//! from the connection, or behind a proxy from the last entry of `socket.client_address_header`.
//! Commands: the upstream commands one socket's requests may cause (`socket.commands_per_sec`,
//! bursts of `socket.command_burst`), so that one client cannot spend the publish budget that
//! every user of a plugin shares.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;

use crate::config::SocketConfig;

/// The window over which refusals are counted towards a disconnect.
const ABUSE_WINDOW: Duration = Duration::from_secs(10);

/// What a socket's next event may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over its rate: answered with an error, not processed.
    Refused,
    /// Refused too often: the socket is to be disconnected.
    Abusive,
}

/// One socket's event budget.
pub struct EventBudget {
    events: DefaultDirectRateLimiter,
    refusals: DefaultDirectRateLimiter,
}

impl EventBudget {
    /// `None` when events are not limited (`events_per_sec = 0`).
    pub fn new(config: &SocketConfig) -> Option<Self> {
        let rate = NonZeroU32::new(config.events_per_sec)?;
        let burst = NonZeroU32::new(config.event_burst).unwrap_or(rate);
        let tolerated =
            NonZeroU32::new(config.refused_events_before_disconnect).unwrap_or(NonZeroU32::MIN);
        let refusals = Quota::with_period(ABUSE_WINDOW / tolerated.get())
            .expect("a positive period")
            .allow_burst(tolerated);
        Some(Self {
            events: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            refusals: RateLimiter::direct(refusals),
        })
    }

    pub fn check(&self) -> Verdict {
        if self.events.check().is_ok() {
            Verdict::Allowed
        } else if self.refusals.check().is_ok() {
            Verdict::Refused
        } else {
            Verdict::Abusive
        }
    }
}

/// The upstream commands one socket's requests may still cause.
pub struct CommandBudget(DefaultDirectRateLimiter);

impl CommandBudget {
    /// `None` when commands per socket are not limited (`commands_per_sec = 0`).
    pub fn new(config: &SocketConfig) -> Option<Self> {
        let rate = NonZeroU32::new(config.commands_per_sec)?;
        let burst = NonZeroU32::new(config.command_burst).unwrap_or(rate);
        Some(Self(RateLimiter::direct(
            Quota::per_second(rate).allow_burst(burst),
        )))
    }

    /// Spends one command; `false` when the socket has none left.
    pub fn spend(&self) -> bool {
        self.0.check().is_ok()
    }
}

/// Open sockets per client address.
pub struct AddressLimits {
    max: usize,
    header: Option<String>,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// A handshake from an address that already holds its limit of open sockets.
#[derive(Debug, thiserror::Error)]
#[error("too many connections from this address")]
pub struct AddressFull;

/// One open socket's share of its address's limit; released when dropped.
pub struct AddressSlot {
    address: IpAddr,
    limits: Arc<AddressLimits>,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock();
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

impl AddressLimits {
    /// `None` when addresses are not limited (`max_connections_per_address = 0`).
    pub fn new(config: &SocketConfig) -> Option<Arc<Self>> {
        (config.max_connections_per_address > 0).then(|| {
            Arc::new(Self {
                max: config.max_connections_per_address,
                header: config.client_address_header.clone(),
                open: Mutex::default(),
            })
        })
    }

    /// Takes a slot for the handshake's client address; `None` when the address is full.
    /// A handshake whose address cannot be told is not limited.
    pub fn acquire(
        self: &Arc<Self>,
        handshake: &Parts,
    ) -> Result<Option<AddressSlot>, AddressFull> {
        let Some(address) = self.client_address(handshake) else {
            return Ok(None);
        };
        let mut open = self.open.lock();
        let count = open.entry(address).or_default();
        if *count >= self.max {
            return Err(AddressFull);
        }
        *count += 1;
        Ok(Some(AddressSlot {
            address,
            limits: self.clone(),
        }))
    }

    fn client_address(&self, handshake: &Parts) -> Option<IpAddr> {
        match &self.header {
            // The proxy appends the address it saw: the last entry is the one it vouches for.
            Some(header) => handshake
                .headers
                .get(header.as_str())?
                .to_str()
                .ok()?
                .rsplit(',')
                .next()?
                .trim()
                .parse()
                .ok(),
            None => handshake
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0.ip()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn config(toml: &str) -> SocketConfig {
        crate::config::Config::from_toml(&format!("[socket]\n{toml}"))
            .unwrap()
            .socket
    }

    #[test]
    fn a_burst_is_allowed_then_refused_then_abusive() {
        let budget = EventBudget::new(&config(
            "events_per_sec = 1\nevent_burst = 3\nrefused_events_before_disconnect = 2\n",
        ))
        .unwrap();
        let verdicts: Vec<Verdict> = (0..6).map(|_| budget.check()).collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Allowed,
                Verdict::Allowed,
                Verdict::Allowed,
                Verdict::Refused,
                Verdict::Refused,
                Verdict::Abusive
            ]
        );
        assert!(EventBudget::new(&config("events_per_sec = 0\n")).is_none());
    }

    #[test]
    fn addresses_are_capped_and_released() {
        let limits = AddressLimits::new(&config(
            "max_connections_per_address = 2\nclient_address_header = \"x-forwarded-for\"\n",
        ))
        .unwrap();
        let handshake = |xff: &str| {
            Request::builder()
                .header("x-forwarded-for", xff)
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        let first = limits.acquire(&handshake("6.6.6.6, 10.0.0.1")).unwrap();
        let _second = limits.acquire(&handshake("10.0.0.1")).unwrap();
        assert!(
            limits.acquire(&handshake("7.7.7.7, 10.0.0.1")).is_err(),
            "the proxy's entry counts, not the client's claim"
        );
        assert!(limits.acquire(&handshake("10.0.0.2")).is_ok());
        drop(first);
        assert!(limits.acquire(&handshake("10.0.0.1")).is_ok(), "released");
    }
}
