//! The WIT's compatibility promise and the `caller` interface: a plugin built against
//! `flux:gateway@0.1.0` loads and serves on this `0.1.1` host, and a plugin built against
//! `0.1.1` sees who is asking during `on-request`, and nobody outside it.

use std::sync::Arc;
use std::time::Duration;

use flux_gateway::auth::Principal;
use flux_gateway::cache::SnapshotCache;
use flux_gateway::config::Policies;
use flux_gateway::metrics::Metrics;
use flux_gateway::plugin::{
    Action, Caller, ClientRequest, PluginHandle, PluginRuntime, WIT_VERSION,
};
use flux_tests::wasm;
use serde_json::Value;

fn runtime() -> PluginRuntime {
    PluginRuntime::new(
        Policies::default(),
        None,
        Arc::new(SnapshotCache::new(1 << 20, Default::default())),
        Arc::new(Metrics::default()),
    )
    .unwrap()
}

/// The payload of the first reply `plugin` answers `event` with, as `caller`.
async fn first_reply(plugin: &PluginHandle, event: &str, caller: Option<Principal>) -> Value {
    let request = Arc::new(ClientRequest {
        event: event.into(),
        payload: "null".into(),
        user_id: caller.as_ref().map(|c| c.subject.clone()),
    });
    let actions = tokio::time::timeout(
        Duration::from_secs(5),
        plugin.on_request(
            request,
            Caller {
                principal: caller.map(Arc::new),
                socket: 1,
            },
        ),
    )
    .await
    .expect("answers in time")
    .expect("the call succeeds")
    .result
    .expect("the request is accepted");
    let reply = actions
        .iter()
        .find_map(|action| match action {
            Action::Reply(reply) => Some(reply.payload.clone()),
            _ => None,
        })
        .expect("a reply");
    serde_json::from_str(&reply).unwrap()
}

#[tokio::test]
async fn a_plugin_built_against_0_1_0_loads_and_serves() {
    assert_eq!(WIT_VERSION, "0.1.1", "this test pins the host's version");
    let legacy = runtime()
        .load(&wasm("flux_fixture_legacy"))
        .expect("a 0.1.0 plugin loads on a 0.1.x host");
    assert_eq!(legacy.manifest.name, "legacy");
    let alice = Principal {
        subject: "alice".into(),
        scopes: Vec::new(),
        claims: "{}".into(),
        expires_at: u64::MAX,
    };
    let reply = first_reply(&legacy, "legacyPing", Some(alice)).await;
    assert_eq!(reply["data"]["user"], "alice", "{reply}");
}

#[tokio::test]
async fn the_caller_is_visible_during_on_request_only() {
    let relay = runtime().load(&wasm("flux_fixture_relay")).unwrap();
    let bob = Principal {
        subject: "bob".into(),
        scopes: vec!["stocks".into(), "news".into()],
        claims: r#"{"sub":"bob"}"#.into(),
        expires_at: u64::MAX,
    };
    let reply = first_reply(&relay, "relayJoin", Some(bob)).await;
    assert_eq!(reply["data"]["caller"]["subject"], "bob", "{reply}");
    assert_eq!(
        reply["data"]["caller"]["scopes"],
        serde_json::json!(["stocks", "news"])
    );
    let anonymous = first_reply(&relay, "relayJoin", None).await;
    assert_eq!(
        anonymous["data"]["caller"],
        Value::Null,
        "the previous caller does not leak into the next request: {anonymous}"
    );
}

/// The SDKs carry the WIT they bind, and their versions are its version: a team builds
/// against them from its own repository, so they must never drift from the gateway's `wit/`.
#[test]
fn the_sdks_carry_the_gateways_wit_and_its_version() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let read = |path: &str| std::fs::read_to_string(root.join(path)).unwrap();
    assert_eq!(
        read("plugins/sdk/wit/flux-gateway.wit"),
        read("wit/flux-gateway.wit"),
        "plugins/sdk/wit is a copy of wit/: copy it again"
    );
    let rust_sdk = read("plugins/sdk/Cargo.toml");
    assert!(
        rust_sdk.contains(&format!("\nversion = \"{WIT_VERSION}\"\n")),
        "the Rust SDK's version is the WIT's ({WIT_VERSION})"
    );
    let python_sdk = read("plugins/python/flux_plugin_sdk/__init__.py");
    assert!(
        python_sdk.contains(&format!("__version__ = \"{WIT_VERSION}\"")),
        "the Python SDK's version is the WIT's ({WIT_VERSION})"
    );
    assert!(read("wit/flux-gateway.wit").contains(&format!("package flux:gateway@{WIT_VERSION};")));
}
