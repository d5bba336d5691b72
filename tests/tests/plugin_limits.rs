//! The plugin runtime's limits, exercised with a fixture plugin that misbehaves on demand:
//! each failure costs only the failing call, and the other plugins keep serving.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flux_gateway::bus::{Bus, BusRecord, EmbeddedBus, StartAt};
use flux_gateway::cache::SnapshotCache;
use flux_gateway::config::{CircuitConfig, PluginLimits, PluginPolicy, Policies};
use flux_gateway::dispatch::{Dispatcher, Origin};
use flux_gateway::lifecycle::PluginSet;
use flux_gateway::metrics::{
    self, CompileLabels, Metrics, PluginErrorLabels, PluginRefusalLabels, PluginTopicLabels,
};
use flux_gateway::pipeline::{Pipeline, PipelineConfig};
use flux_gateway::plugin::{
    Action, CallFailure, Caller, CircuitState, ClientRequest, LoadError, PluginHandle,
    PluginRuntime, PrecompiledCache, WitRecord,
};
use flux_tests::wasm;

const CALL_TIMEOUT: Duration = Duration::from_millis(100);

struct Host {
    runtime: PluginRuntime,
    metrics: Arc<Metrics>,
    cache: Arc<SnapshotCache>,
}

fn host() -> Host {
    host_with(BTreeMap::new())
}

fn host_with(plugins: BTreeMap<String, PluginPolicy>) -> Host {
    host_with_circuit(plugins, CircuitConfig::default())
}

fn host_with_circuit(plugins: BTreeMap<String, PluginPolicy>, circuit: CircuitConfig) -> Host {
    let metrics = Arc::new(Metrics::default());
    let cache = Arc::new(SnapshotCache::new(1 << 20, Default::default()));
    let defaults = PluginLimits {
        call_timeout_ms: CALL_TIMEOUT.as_millis() as u64,
        memory_mb: 16,
        max_actions: 10,
        max_payload_bytes: 1_024,
        publishes_per_sec: 5,
        ..PluginLimits::default()
    };
    let runtime = PluginRuntime::new(
        Policies {
            defaults,
            plugins,
            circuit,
        },
        None,
        cache.clone(),
        metrics.clone(),
    )
    .unwrap();
    Host {
        runtime,
        metrics,
        cache,
    }
}

fn record(command: &str) -> WitRecord {
    WitRecord {
        topic: "fixture.commands".into(),
        key: Some(command.into()),
        payload: format!("\"{command}\""),
        timestamp_ms: 0,
    }
}

/// The other plugin that must keep serving: crypto answers a request with a cache miss.
async fn crypto_still_serves(crypto: &PluginHandle) {
    let request = ClientRequest {
        event: "cryptoTopCoinsRequest".into(),
        payload: "null".into(),
        user_id: None,
    };
    let actions = tokio::time::timeout(
        Duration::from_secs(5),
        crypto.on_request(
            Arc::new(request),
            Caller {
                principal: None,
                socket: 1,
            },
        ),
    )
    .await
    .expect("crypto answers in time")
    .expect("crypto's call succeeds")
    .result
    .expect("crypto accepts the request");
    assert!(
        matches!(actions.first(), Some(Action::Reply(_))),
        "{actions:?}"
    );
}

/// The misbehaving instance was replaced: the same plugin serves its next record.
async fn fixture_recovers(fixture: &PluginHandle) {
    let outcomes = tokio::time::timeout(
        Duration::from_secs(5),
        fixture.on_records(vec![record("ok")]),
    )
    .await
    .expect("answers in time")
    .expect("a fresh instance serves");
    assert_eq!(outcomes.len(), 1);
    assert!(outcomes[0].as_ref().is_ok_and(|actions| actions.len() == 1));
}

fn load_both(host: &Host) -> (PluginHandle, PluginHandle) {
    let fixture = host.runtime.load(&wasm("flux_fixture_misbehave")).unwrap();
    let crypto = host.runtime.load(&wasm("flux_crypto")).unwrap();
    (fixture, crypto)
}

fn errors(host: &Host, kind: &'static str) -> u64 {
    plugin_errors(&host.metrics, "misbehave", kind)
}

/// `flux_plugin_errors_total{plugin, kind}`.
fn plugin_errors(metrics: &Metrics, plugin: &str, kind: &'static str) -> u64 {
    let labels = PluginErrorLabels {
        plugin: plugin.into(),
        kind,
    };
    metrics.plugin_errors.get_or_create(&labels).get()
}

#[tokio::test]
async fn an_infinite_loop_is_interrupted_at_the_deadline() {
    let host = host();
    let (fixture, crypto) = load_both(&host);
    let started = Instant::now();
    let failure = fixture.on_records(vec![record("loop")]).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(failure, CallFailure::Timeout);
    assert!(took >= CALL_TIMEOUT, "interrupted early: {took:?}");
    assert!(took < CALL_TIMEOUT * 10, "interrupted late: {took:?}");
    assert_eq!(errors(&host, "timeout"), 1);
    crypto_still_serves(&crypto).await;
    fixture_recovers(&fixture).await;
}

#[tokio::test]
async fn a_memory_hog_is_stopped_at_its_limit() {
    let host = host();
    let (fixture, crypto) = load_both(&host);
    let failure = fixture.on_records(vec![record("hog")]).await.unwrap_err();
    assert_eq!(failure, CallFailure::OutOfMemory);
    assert_eq!(errors(&host, "memory"), 1);
    crypto_still_serves(&crypto).await;
    fixture_recovers(&fixture).await;
}

#[tokio::test]
async fn a_panic_traps_only_that_call() {
    let host = host();
    let (fixture, crypto) = load_both(&host);
    let failure = fixture.on_records(vec![record("panic")]).await.unwrap_err();
    assert!(matches!(failure, CallFailure::Trap(_)), "{failure:?}");
    assert_eq!(errors(&host, "trap"), 1);
    assert_eq!(
        host.metrics
            .plugin_instances_replaced
            .get_or_create(&metrics::plugin("misbehave"))
            .get(),
        1
    );
    crypto_still_serves(&crypto).await;
    fixture_recovers(&fixture).await;
}

#[tokio::test]
async fn an_emit_into_an_undeclared_room_is_refused() {
    let host = host();
    let (fixture, _crypto) = load_both(&host);
    let (_layer, io) = socketioxide::SocketIo::new_layer();
    let bus = Arc::new(EmbeddedBus::new(host.metrics.clone()));
    let dispatcher = Dispatcher::new(
        io,
        bus,
        host.cache.clone(),
        host.metrics.clone(),
        Duration::from_secs(1),
        1 << 20,
    );

    let mut outcomes = fixture
        .on_records(vec![record("rogue"), record("ok")])
        .await
        .unwrap();
    let ok = outcomes.pop().unwrap().unwrap();
    let rogue = outcomes.pop().unwrap().unwrap();
    assert!(matches!(&rogue[0], Action::Emit(e) if e.room == "crypto.global"));
    assert_eq!(
        dispatcher.apply(&fixture, rogue, Origin::Live).refused,
        1,
        "forged crypto emit refused"
    );
    assert_eq!(
        dispatcher.apply(&fixture, ok, Origin::Live).refused,
        0,
        "its own room is fine"
    );
    assert_eq!(errors(&host, "invalid_action"), 1);
}

/// A plugin set on the embedded bus, as the gateway runs it: records go in on
/// `fixture.commands`, dead letters come out on `dead.letters`.
struct LiveSet {
    metrics: Arc<Metrics>,
    bus: Arc<dyn Bus>,
    plugins: Arc<PluginSet>,
    dir: std::path::PathBuf,
}

impl LiveSet {
    fn new(host: Host, name: &str) -> Self {
        let (_layer, io) = socketioxide::SocketIo::new_layer();
        let bus: Arc<dyn Bus> = Arc::new(EmbeddedBus::new(host.metrics.clone()));
        let dispatcher = Arc::new(Dispatcher::new(
            io,
            bus.clone(),
            host.cache.clone(),
            host.metrics.clone(),
            Duration::from_secs(1),
            1 << 20,
        ));
        let config = PipelineConfig {
            max_batch: 64,
            max_record_bytes: 64,
            dead_letter_topic: "dead.letters".into(),
            start: StartAt::Committed,
        };
        let pipeline = Pipeline::new(bus.clone(), dispatcher, host.metrics.clone(), config);
        let plugins = Arc::new(PluginSet::new(
            Arc::new(host.runtime),
            pipeline,
            host.cache.clone(),
            host.metrics.clone(),
            Duration::from_secs(60),
        ));
        tokio::spawn(plugins.clone().supervise());
        let dir = std::env::temp_dir().join(format!("flux-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            metrics: host.metrics,
            bus,
            plugins,
            dir,
        }
    }

    /// Subscribe before sending: the dead letters of what is sent afterwards.
    fn dead_letters(&self) -> tokio::sync::mpsc::Receiver<flux_gateway::bus::Delivery> {
        self.bus
            .subscribe("dlq", &["dead.letters".into()], StartAt::Committed)
    }

    async fn load(&self, guest: &str) {
        let file = self.dir.join(format!("{guest}.wasm"));
        std::fs::write(&file, wasm(guest)).unwrap();
        assert!(self.plugins.load_file(&file).await.is_some());
    }

    fn send(&self, payload: &str) {
        self.bus
            .publish(BusRecord::now(
                "fixture.commands",
                None,
                payload.to_string(),
            ))
            .unwrap();
    }

    /// Waits until `count` records are processed or dead-lettered; returns (processed, failed).
    async fn settled(&self, count: u64) -> (u64, u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (done, failed) = self.records();
            if done + failed >= count || Instant::now() > deadline {
                return (done, failed);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn records(&self) -> (u64, u64) {
        let labels = PluginTopicLabels {
            plugin: "misbehave".into(),
            topic: "fixture.commands".into(),
        };
        (
            self.metrics.records.get_or_create(&labels).get(),
            self.metrics.records_failed.get_or_create(&labels).get(),
        )
    }

    fn view(&self) -> flux_gateway::lifecycle::SlotView {
        self.plugins.views().0.remove(0)
    }

    fn errors(&self, kind: &'static str) -> u64 {
        plugin_errors(&self.metrics, "misbehave", kind)
    }
}

async fn next_dead_letter_reason(
    dead_letters: &mut tokio::sync::mpsc::Receiver<flux_gateway::bus::Delivery>,
) -> String {
    let letter = tokio::time::timeout(Duration::from_secs(5), dead_letters.recv())
        .await
        .expect("a dead letter in time")
        .expect("the bus is open");
    let header = |name: &str| {
        letter
            .record
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        header("x-flux-source-topic").as_deref(),
        Some("fixture.commands")
    );
    assert_eq!(header("x-flux-plugin").as_deref(), Some("misbehave"));
    header("x-flux-reason").expect("a reason")
}

#[tokio::test]
async fn a_poison_record_in_a_batch_costs_only_itself_and_is_dead_lettered() {
    let host = host();
    let live = LiveSet::new(host, "poison");
    let mut dead_letters = live.dead_letters();
    live.load("flux_fixture_misbehave").await;

    let oversized = format!("\"{}\"", "x".repeat(100));
    let payloads = [
        "\"ok\"",
        "\"ok\"",
        "\"panic\"",
        "\"ok\"",
        "\"nonsense\"",
        "not json",
        &oversized,
        "\"ok\"",
    ];
    for payload in payloads {
        live.send(payload);
    }
    let (done, failed) = live.settled(8).await;
    assert_eq!(done, 4, "every good record is processed");
    assert_eq!(failed, 4, "panic, unknown command, not JSON, oversized");

    let mut reasons = Vec::new();
    for _ in 0..4 {
        reasons.push(next_dead_letter_reason(&mut dead_letters).await);
    }
    reasons.sort();
    assert!(reasons[0].starts_with("not JSON"), "{reasons:?}");
    assert!(reasons[1].starts_with("oversized"), "{reasons:?}");
    assert!(reasons[2].starts_with("plugin trapped"), "{reasons:?}");
    assert!(
        reasons[3].starts_with("unknown fixture command"),
        "{reasons:?}"
    );
}

fn quick_circuit() -> CircuitConfig {
    CircuitConfig {
        failures: 3,
        window_ms: 10_000,
        open_ms: 60_000,
        max_open_ms: 60_000,
        ..CircuitConfig::default()
    }
}

#[tokio::test]
async fn a_looping_plugin_opens_its_circuit_and_its_records_are_dead_lettered_unrun() {
    let live = LiveSet::new(host_with_circuit(BTreeMap::new(), quick_circuit()), "loop");
    let mut dead_letters = live.dead_letters();
    live.load("flux_fixture_misbehave").await;
    for _ in 0..10 {
        live.send("\"loop\"");
    }
    for _ in 0..20 {
        live.send("\"ok\"");
    }
    assert_eq!(
        live.settled(30).await,
        (0, 30),
        "nothing runs while the circuit is open"
    );
    assert_eq!(
        live.errors("timeout"),
        3,
        "three calls run to the deadline, then none"
    );
    let view = live.view();
    assert_eq!(view.guard.circuit, CircuitState::Open);
    assert_eq!(view.guard.opened_total, 1);
    assert!(view.guard.retry_in_ms > 50_000);
    let mut refused = 0;
    for _ in 0..30 {
        let reason = next_dead_letter_reason(&mut dead_letters).await;
        if reason.contains("circuit is open") {
            refused += 1;
        } else {
            assert!(reason.contains("deadline"), "{reason}");
        }
    }
    assert!(refused >= 27, "{refused} refused unrun");
    assert_eq!(
        live.metrics
            .plugin_calls_refused
            .get_or_create(&PluginRefusalLabels {
                plugin: "misbehave".into(),
                reason: "circuit_open",
            })
            .get(),
        refused,
    );
}

#[tokio::test]
async fn a_half_open_probe_closes_the_circuit_once_the_fault_is_gone() {
    let circuit = CircuitConfig {
        open_ms: 200,
        max_open_ms: 400,
        ..quick_circuit()
    };
    let live = LiveSet::new(host_with_circuit(BTreeMap::new(), circuit), "probe");
    live.load("flux_fixture_misbehave").await;
    for _ in 0..5 {
        live.send("\"panic\"");
    }
    assert_eq!(live.settled(5).await, (0, 5));
    assert_eq!(live.view().guard.circuit, CircuitState::Open);

    // The fault was transient: good records again. The first after the backoff is the probe.
    let deadline = Instant::now() + Duration::from_secs(5);
    while live.records().0 == 0 && Instant::now() < deadline {
        live.send("\"ok\"");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(live.records().0 >= 1, "a probe got through");
    let view = live.view();
    assert_eq!(view.guard.circuit, CircuitState::Closed);
    assert_eq!(view.guard.opened_total, 1);
    let (done, failed) = live.records();
    for _ in 0..10 {
        live.send("\"ok\"");
    }
    assert_eq!(
        live.settled(done + failed + 10).await,
        (done + 10, failed),
        "closed: every record runs"
    );
}

fn crash_request() -> Arc<ClientRequest> {
    Arc::new(ClientRequest {
        event: "relayCrash".into(),
        payload: "null".into(),
        user_id: None,
    })
}

async fn ask(plugin: &PluginHandle, socket: u64) -> Result<(), CallFailure> {
    let caller = Caller {
        principal: None,
        socket,
    };
    tokio::time::timeout(
        Duration::from_secs(5),
        plugin.on_request(crash_request(), caller),
    )
    .await
    .expect("answers in time")
    .map(|_| ())
}

#[tokio::test]
async fn request_failures_are_charged_once_per_socket_and_an_open_circuit_refuses_at_once() {
    let host = host_with_circuit(BTreeMap::new(), quick_circuit());
    let relay = host.runtime.load(&wasm("flux_fixture_relay")).unwrap();
    for _ in 0..20 {
        assert!(matches!(ask(&relay, 1).await, Err(CallFailure::Trap(_))));
    }
    let view = relay.guard.view();
    assert_eq!(
        view.circuit,
        CircuitState::Closed,
        "one socket cannot open it"
    );
    assert_eq!(view.failures_in_window, 1);

    assert!(matches!(ask(&relay, 2).await, Err(CallFailure::Trap(_))));
    assert!(matches!(ask(&relay, 3).await, Err(CallFailure::Trap(_))));
    assert_eq!(relay.guard.view().circuit, CircuitState::Open);
    let traps = plugin_errors(&host.metrics, "relay", "trap");
    assert_eq!(ask(&relay, 4).await, Err(CallFailure::CircuitOpen));
    assert_eq!(
        plugin_errors(&host.metrics, "relay", "trap"),
        traps,
        "refused without running the guest"
    );
}

#[tokio::test]
async fn a_plugin_over_its_cpu_budget_waits_for_records_and_is_refused_requests() {
    let budget = PluginPolicy {
        cpu_ms_per_sec: Some(50),
        ..PluginPolicy::default()
    };
    let circuit = CircuitConfig {
        failures: 1_000,
        ..quick_circuit()
    };
    let host = host_with_circuit(BTreeMap::from([("misbehave".into(), budget)]), circuit);
    let (fixture, crypto) = load_both(&host);
    // One call runs to the 100 ms deadline: twice the plugin's 50 ms per second.
    assert_eq!(
        fixture.on_records(vec![record("loop")]).await.err(),
        Some(CallFailure::Timeout)
    );
    assert_eq!(
        fixture
            .on_request(
                crash_request(),
                Caller {
                    principal: None,
                    socket: 1
                }
            )
            .await
            .map(|_| ()),
        Err(CallFailure::OverBudget)
    );
    let started = Instant::now();
    fixture_recovers(&fixture).await;
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "the next record waited for the budget: {:?}",
        started.elapsed()
    );
    let throttled = |plugin| {
        host.metrics
            .plugin_cpu_throttled
            .get_or_create(&metrics::plugin(plugin))
            .get()
    };
    assert_eq!(throttled("misbehave"), 1);
    crypto_still_serves(&crypto).await;
    assert_eq!(throttled("crypto"), 0, "the budget is per plugin");
    assert!(
        host.metrics
            .plugin_slow_calls
            .get_or_create(&metrics::plugin("misbehave"))
            .get()
            >= 1,
        "a call past half its deadline is reported as slow"
    );
}

#[tokio::test]
async fn quotas_are_enforced_per_plugin_and_counted_for_that_plugin_only() {
    let overrides = BTreeMap::from([(
        "misbehave".to_string(),
        PluginPolicy {
            max_actions: Some(20),
            ..PluginPolicy::default()
        },
    )]);
    let host = host_with(overrides);
    let (fixture, crypto) = load_both(&host);
    assert_eq!(fixture.limits.max_actions, 20, "the per-plugin override");
    assert_eq!(crypto.limits.max_actions, 10, "the default");
    let (_layer, io) = socketioxide::SocketIo::new_layer();
    io.ns("/", async |_: socketioxide::extract::SocketRef| {});
    let bus: Arc<dyn Bus> = Arc::new(EmbeddedBus::new(host.metrics.clone()));
    let mut published = bus.subscribe("out", &["fixture.out".into()], StartAt::Committed);
    let dispatcher = Dispatcher::new(
        io,
        bus,
        host.cache.clone(),
        host.metrics.clone(),
        Duration::from_secs(1),
        1 << 20,
    );
    let emits = host.metrics.room_emits.clone();

    let mut outcomes = fixture
        .on_records(vec![record("flood"), record("big"), record("spam")])
        .await
        .unwrap();
    let spam = outcomes.pop().unwrap().unwrap();
    let big = outcomes.pop().unwrap().unwrap();
    let flood = outcomes.pop().unwrap().unwrap();

    assert_eq!(dispatcher.apply(&fixture, flood, Origin::Live).refused, 1);
    assert_eq!(
        emits.get(),
        20,
        "the first 20 actions apply, the rest are refused"
    );
    assert_eq!(
        dispatcher.apply(&fixture, big, Origin::Live).refused,
        1,
        "a 100 kB payload"
    );
    assert_eq!(emits.get(), 20);
    // 30 publishes: cut to the 20-action quota (one refusal), then 5 per second with a bucket
    // of one second's worth: 5 go out, 15 are refused.
    assert_eq!(dispatcher.apply(&fixture, spam, Origin::Live).refused, 16);
    let mut delivered = 0;
    while published.try_recv().is_ok() {
        delivered += 1;
    }
    assert_eq!(delivered, 5);
    assert_eq!(errors(&host, "quota"), 18);
    assert_eq!(
        plugin_errors(&host.metrics, "crypto", "quota"),
        0,
        "counted for the offending plugin only"
    );
    crypto_still_serves(&crypto).await;
}

/// A gateway's runtime with its precompiled cache in `dir`, and its metrics.
fn runtime_with_cache(dir: &std::path::Path) -> (PluginRuntime, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let precompiled = PrecompiledCache::open(dir.to_owned(), None).unwrap();
    let runtime = PluginRuntime::new(
        Policies::default(),
        Some(precompiled),
        Arc::new(SnapshotCache::new(1 << 20, Default::default())),
        metrics.clone(),
    )
    .unwrap();
    (runtime, metrics)
}

fn compiles(metrics: &Metrics, source: &'static str) -> u64 {
    let labels = CompileLabels { source };
    metrics.plugin_compiles.get_or_create(&labels).get()
}

#[test]
fn a_restart_loads_precompiled_plugins_instead_of_compiling() {
    let dir = std::env::temp_dir().join(format!("flux-precompiled-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    let (first, metrics) = runtime_with_cache(&dir);
    first.load(&wasm("flux_crypto")).unwrap();
    assert_eq!(
        (compiles(&metrics, "compiled"), compiles(&metrics, "cache")),
        (1, 0)
    );
    drop(first);

    let (second, metrics) = runtime_with_cache(&dir);
    let crypto = second.load(&wasm("flux_crypto")).unwrap();
    assert_eq!(
        (compiles(&metrics, "compiled"), compiles(&metrics, "cache")),
        (0, 1),
        "no recompilation"
    );
    assert_eq!(crypto.manifest.name, "crypto");
    second.load(&wasm("flux_news")).unwrap();
    assert_eq!(compiles(&metrics, "compiled"), 1, "new bytes are compiled");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_tampered_or_foreign_precompiled_artifact_is_never_loaded() {
    let dir = std::env::temp_dir().join(format!("flux-tampered-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (first, _) = runtime_with_cache(&dir);
    first.load(&wasm("flux_crypto")).unwrap();
    drop(first);
    let artifact = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|ext| ext == "cwasm"))
        .expect("an artifact was kept");
    let genuine = std::fs::read(&artifact).unwrap();

    // One flipped bit in the code.
    let mut tampered = genuine.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    std::fs::write(&artifact, &tampered).unwrap();
    let (second, metrics) = runtime_with_cache(&dir);
    second.load(&wasm("flux_crypto")).unwrap();
    assert_eq!(
        (compiles(&metrics, "compiled"), compiles(&metrics, "cache")),
        (1, 0),
        "compiled again instead"
    );
    assert_eq!(metrics.precompiled_refused.get(), 1);
    drop(second);

    // The genuine artifact, but another host's key: as untrusted as a crafted one.
    std::fs::write(&artifact, &genuine).unwrap();
    std::fs::write(dir.join("artifact.key"), [7u8; 32]).unwrap();
    let (third, metrics) = runtime_with_cache(&dir);
    third.load(&wasm("flux_crypto")).unwrap();
    assert_eq!(compiles(&metrics, "compiled"), 1);
    assert_eq!(metrics.precompiled_refused.get(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_plugin_declaring_rooms_or_topics_outside_its_allowlist_is_refused() {
    let policy = |rooms: &[&str], topics: &[&str]| PluginPolicy {
        allowed_rooms: Some(rooms.iter().map(|r| r.to_string()).collect()),
        allowed_topics: Some(topics.iter().map(|t| t.to_string()).collect()),
        ..PluginPolicy::default()
    };
    let strict = host_with(BTreeMap::from([(
        "crypto".to_string(),
        policy(&["news.*"], &["crypto.*"]),
    )]));
    let err = strict
        .runtime
        .load(&wasm("flux_crypto"))
        .err()
        .expect("refused");
    assert!(matches!(err, LoadError::NotPermitted(_)), "{err}");
    assert!(err.to_string().contains("crypto.global"), "{err}");

    let fitting = host_with(BTreeMap::from([(
        "crypto".to_string(),
        policy(&["crypto.*"], &["crypto.*"]),
    )]));
    assert_eq!(
        fitting
            .runtime
            .load(&wasm("flux_crypto"))
            .unwrap()
            .manifest
            .name,
        "crypto"
    );
}

#[test]
fn bad_files_are_rejected_with_a_reason() {
    let host = host();
    let err = |bytes: &[u8]| host.runtime.load(bytes).err().expect("rejected");
    assert!(matches!(err(b"hello"), LoadError::NotWasm));
    assert!(matches!(err(b"\0asm\x01\0\0\0"), LoadError::CoreModule));
    let mut truncated = wasm("flux_crypto");
    truncated.truncate(truncated.len() / 2);
    let message = err(&truncated).to_string();
    assert!(message.starts_with("does not compile"), "{message}");
}
