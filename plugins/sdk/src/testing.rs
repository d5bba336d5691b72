//! Test a plugin's mapping natively: feed it records, requests and timer ticks, give it a
//! cache and a caller, and assert the actions it returns — plain `cargo test`, no wasm, no
//! gateway. The host functions a plugin calls ([`cache_get`](crate::cache_get),
//! [`caller`](crate::caller), [`log`](crate::log), [`leave_rooms`](crate::leave_rooms)) are
//! answered by the [`TestHost`] of the current thread.
//!
//! ```ignore
//! use flux_plugin_sdk::testing::TestHost;
//!
//! let host = TestHost::new().as_caller("user-1", &["fx:read"]);
//! let actions = host.record::<Fx>("fx.service.event.rates", None, r#"{"seq":1}"#).unwrap();
//! assert_eq!(actions, flux_plugin_sdk::snapshot("rates", "fx.rates", "fxRates", payload));
//! // Cache actions of a record are applied, as the gateway would: a request sees them.
//! assert_eq!(host.request::<Fx>("fxRatesRequest", "null").unwrap().len(), 1);
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::marker::PhantomData;

use crate::{Action, BusRecord, ClientRequest, LogLevel, Plugin, Principal, RequestError};

#[derive(Default)]
struct HostState {
    cache: BTreeMap<String, String>,
    caller: Option<Principal>,
    in_request: bool,
    logs: Vec<(LogLevel, String)>,
    left_rooms: Vec<String>,
}

thread_local! {
    static STATE: RefCell<HostState> = RefCell::default();
}

/// The gateway as a plugin sees it, on this thread. Creating one resets it.
pub struct TestHost {
    /// The state is the thread's: a host is not sent to another thread.
    _this_thread: PhantomData<*const ()>,
}

impl Default for TestHost {
    fn default() -> Self {
        Self::new()
    }
}

impl TestHost {
    pub fn new() -> Self {
        STATE.with(|state| *state.borrow_mut() = HostState::default());
        Self {
            _this_thread: PhantomData,
        }
    }

    /// Puts `payload` in the plugin's cache under `key`.
    pub fn with_cache(self, key: &str, payload: &str) -> Self {
        STATE.with(|state| {
            state
                .borrow_mut()
                .cache
                .insert(key.to_owned(), payload.to_owned())
        });
        self
    }

    /// Requests come from this authenticated user.
    pub fn as_caller(self, subject: &str, scopes: &[&str]) -> Self {
        let principal = Principal {
            subject: subject.to_owned(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            claims: serde_json::json!({ "sub": subject }).to_string(),
        };
        STATE.with(|state| state.borrow_mut().caller = Some(principal));
        self
    }

    /// Maps one record; its cache actions are applied, as the gateway would.
    pub fn record<P: Plugin>(
        &self,
        topic: &str,
        key: Option<&str>,
        payload: &str,
    ) -> Result<Vec<Action>, String> {
        let record = BusRecord {
            topic: topic.to_owned(),
            key: key.map(str::to_owned),
            payload: payload.to_owned(),
            timestamp_ms: 0,
        };
        let actions = P::on_record(&record)?;
        apply_cache(&actions);
        Ok(actions)
    }

    /// Answers client `event` with `payload` (JSON text) from the caller, if one is set.
    pub fn request<P: Plugin>(
        &self,
        event: &str,
        payload: &str,
    ) -> Result<Vec<Action>, RequestError> {
        let user_id = STATE.with(|state| {
            let mut state = state.borrow_mut();
            state.in_request = true;
            state.caller.as_ref().map(|p| p.subject.clone())
        });
        let request = ClientRequest {
            event: event.to_owned(),
            payload: payload.to_owned(),
            user_id,
        };
        let answered = P::on_request(&request);
        STATE.with(|state| state.borrow_mut().in_request = false);
        if let Ok(actions) = &answered {
            apply_cache(actions);
        }
        answered
    }

    /// Runs the timer `name`; its cache actions are applied.
    pub fn timer<P: Plugin>(&self, name: &str) -> Vec<Action> {
        let actions = P::on_timer(name);
        apply_cache(&actions);
        actions
    }

    /// What the plugin has in its cache now.
    pub fn cached(&self, key: &str) -> Option<String> {
        cache_get(key)
    }

    /// The lines the plugin logged, in order.
    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        STATE.with(|state| state.borrow().logs.clone())
    }

    /// The room patterns the plugin asked the caller to leave.
    pub fn left_rooms(&self) -> Vec<String> {
        STATE.with(|state| state.borrow().left_rooms.clone())
    }
}

fn apply_cache(actions: &[Action]) {
    STATE.with(|state| {
        let mut state = state.borrow_mut();
        for action in actions {
            match action {
                Action::CachePut(put) => {
                    state.cache.insert(put.key.clone(), put.payload.clone());
                }
                Action::CacheInvalidate(key) => {
                    state.cache.remove(key);
                }
                _ => {}
            }
        }
    });
}

pub(crate) fn cache_get(key: &str) -> Option<String> {
    STATE.with(|state| state.borrow().cache.get(key).cloned())
}

/// As on the gateway: the caller only while a request is handled.
pub(crate) fn caller() -> Option<Principal> {
    STATE.with(|state| {
        let state = state.borrow();
        state.caller.clone().filter(|_| state.in_request)
    })
}

pub(crate) fn leave_rooms(pattern: &str) {
    STATE.with(|state| state.borrow_mut().left_rooms.push(pattern.to_owned()));
}

pub(crate) fn log(level: LogLevel, message: &str) {
    STATE.with(|state| state.borrow_mut().logs.push((level, message.to_owned())));
}
