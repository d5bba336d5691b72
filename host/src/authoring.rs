//! What a domain team runs in its own repository: `plugin new` scaffolds a plugin project
//! (Rust or Python) that builds, tests and loads as it comes; `plugin check` loads a component
//! in the real runtime with the real limits, validates it exactly as a hot reload would, and
//! replays sample records, requests and timer ticks through it, printing the actions.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::cache::SnapshotCache;
use crate::config::Config;
use crate::dispatch::{cache_entry, cache_key};
use crate::metrics::Metrics;
use crate::plugin::{
    Action, Caller, ClientRequest, PluginHandle, PluginRuntime, PrecompiledCache, RequestError,
    WitRecord,
};

/// The languages `plugin new` scaffolds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Language {
    Rust,
    Python,
}

/// The in-repository templates, with `example` / `Example` standing for the plugin's name:
/// the scaffold is the template the repository builds and tests, renamed.
const RUST_SOURCE: &str = include_str!("../../plugins/template/src/lib.rs");
const PYTHON_APP: &str = include_str!("../../plugins/python/template/app.py");
const PYTHON_TEST: &str = include_str!("../../plugins/python/template/test_app.py");
const PYTHON_SDK: [(&str, &str); 3] = [
    (
        "flux_plugin_sdk/__init__.py",
        include_str!("../../plugins/python/flux_plugin_sdk/__init__.py"),
    ),
    (
        "flux_plugin_sdk/component.py",
        include_str!("../../plugins/python/flux_plugin_sdk/component.py"),
    ),
    (
        "flux_plugin_sdk/testing.py",
        include_str!("../../plugins/python/flux_plugin_sdk/testing.py"),
    ),
];
const WIT: &str = include_str!("../../wit/flux-gateway.wit");
/// Where this binary was built from: its SDK, when the checkout is still there.
const SDK_IN_CHECKOUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/sdk");

/// Writes a new plugin project for `name` into `dir`.
pub fn new_project(
    name: &str,
    language: Language,
    dir: &Path,
    sdk: Option<&str>,
) -> anyhow::Result<()> {
    let valid = name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    anyhow::ensure!(
        valid,
        "a plugin name is lowercase letters and digits, starting with a letter (at most 32): {name:?}"
    );
    if dir.exists() && dir.read_dir()?.next().is_some() {
        bail!("{} exists and is not empty", dir.display());
    }
    let renamed = |text: &str| {
        text.replace("Example", &pascal(name))
            .replace("example", name)
    };
    let files: Vec<(PathBuf, String)> = match language {
        Language::Rust => vec![
            ("Cargo.toml".into(), rust_manifest(name, sdk)),
            ("src/lib.rs".into(), renamed(RUST_SOURCE)),
            ("README.md".into(), readme(name, language)),
            (".gitignore".into(), "/target\n".into()),
        ],
        Language::Python => {
            let mut files = vec![
                ("app.py".into(), renamed(PYTHON_APP)),
                ("test_app.py".into(), renamed(PYTHON_TEST)),
                ("wit/flux-gateway.wit".into(), WIT.to_owned()),
                ("README.md".into(), readme(name, language)),
                (".gitignore".into(), format!("/{name}.wasm\n__pycache__/\n")),
            ];
            files.extend(
                PYTHON_SDK
                    .iter()
                    .map(|(path, text)| (PathBuf::from(path), (*text).to_owned())),
            );
            files
        }
    };
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!(
        "created the {} plugin {name:?} in {}",
        match language {
            Language::Rust => "Rust",
            Language::Python => "Python",
        },
        dir.display()
    );
    Ok(())
}

fn pascal(name: &str) -> String {
    let mut chars = name.chars();
    chars
        .next()
        .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

/// The SDK dependency: as given, else this checkout's SDK by path, else the published crate.
fn rust_manifest(name: &str, sdk: Option<&str>) -> String {
    let sdk = match sdk {
        Some(spec) if spec.starts_with('{') || spec.starts_with('"') => spec.to_owned(),
        Some(path) => format!("{{ path = {path:?} }}"),
        None => match std::fs::canonicalize(SDK_IN_CHECKOUT) {
            Ok(path) => format!("{{ path = {:?} }}", path.display().to_string()),
            Err(_) => format!("{:?}", crate::plugin::WIT_VERSION),
        },
    };
    format!(
        r#"[package]
name = "flux-{name}"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]

[dependencies]
flux-plugin-sdk = {sdk}
serde_json = "1"

[profile.release]
opt-level = 3
lto = true
codegen-units = 1
strip = true

# A project of its own, wherever it is checked out.
[workspace]
"#
    )
}

fn readme(name: &str, language: Language) -> String {
    let (build, test, file) = match language {
        Language::Rust => (
            "rustup target add wasm32-wasip2   # once\ncargo build --release --target wasm32-wasip2",
            "cargo test",
            format!("target/wasm32-wasip2/release/flux_{name}.wasm"),
        ),
        Language::Python => (
            "pip install componentize-py==0.25.1   # once\ncomponentize-py -d wit -w plugin componentize app -o {name}.wasm",
            "python3 -m unittest",
            format!("{name}.wasm"),
        ),
    };
    let build = build.replace("{name}", name);
    format!(
        r#"# The `{name}` plugin for the Flux gateway

It relays `{name}.service.event.updated` records to the room `{name}.global` (event
`{name}Update`), keeps the latest for sockets that join, and answers `{name}Request`.

```sh
{build}
{test}                                       # the mapping, natively
flux-gateway plugin check {file} --records samples.ndjson   # in the real runtime
cp {file} <the gateway's plugin directory>/     # hot-loaded
flux-gateway plugin publish {file} --brokers B --key publisher.key   # or to a whole fleet
```

`samples.ndjson` holds one input per line: `{{"topic": "{name}.service.event.updated",
"payload": {{...}}}}`, `{{"request": "{name}Request", "payload": null}}` or
`{{"timer": "NAME"}}`.
"#
    )
}

/// Loads `file` as a hot reload would, then replays `samples` through it; prints the plugin
/// and, per input, its actions as JSON lines.
pub async fn check(file: &Path, samples: Option<&Path>, config: &Config) -> anyhow::Result<()> {
    let wasm = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let (runtime, cache) = runtime(config)?;
    let plugin = tokio::task::spawn_blocking(move || runtime.load(&wasm))
        .await?
        .with_context(|| format!("{} is not loadable", file.display()))?;
    let m = &plugin.manifest;
    println!(
        "{}",
        json!({
            "plugin": m.name, "version": m.version, "consumes": m.consumes, "handles": m.handles,
            "rooms": m.declared_rooms, "publishes": m.publishes,
            "limits": { "call_timeout_ms": plugin.limits.call_timeout().as_millis() as u64,
                        "memory_bytes": plugin.limits.memory_bytes() },
        })
    );
    let Some(samples) = samples else {
        return Ok(());
    };
    let text = std::fs::read_to_string(samples)
        .with_context(|| format!("cannot read {}", samples.display()))?;
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let input: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", samples.display(), number + 1))?;
        let text_of = |value: Option<&Value>| match value {
            Some(Value::String(text)) => text.clone(),
            Some(other) => other.to_string(),
            None => "null".into(),
        };
        let output = if let Some(topic) = input.get("topic").and_then(Value::as_str) {
            let record = WitRecord {
                topic: topic.to_owned(),
                key: input.get("key").and_then(Value::as_str).map(str::to_owned),
                payload: text_of(input.get("payload")),
                timestamp_ms: crate::bus::now_ms(),
            };
            match plugin.on_records(vec![record]).await {
                Ok(mut outcomes) => match outcomes.pop() {
                    Some(Ok(actions)) => applied(&plugin, &cache, actions),
                    Some(Err(reason)) => json!({ "record_error": reason }),
                    None => json!({ "error": "no outcome" }),
                },
                Err(failure) => json!({ "failure": failure.to_string() }),
            }
        } else if let Some(event) = input.get("request").and_then(Value::as_str) {
            let request = Arc::new(ClientRequest {
                event: event.to_owned(),
                payload: text_of(input.get("payload")),
                user_id: input.get("user").and_then(Value::as_str).map(str::to_owned),
            });
            let caller = Caller {
                principal: None,
                socket: 0,
            };
            match plugin.on_request(request, caller).await {
                Ok(answer) => match answer.result {
                    Ok(actions) => {
                        let mut output = applied(&plugin, &cache, actions);
                        output["leave"] = json!(answer.leave);
                        output
                    }
                    Err(RequestError::Invalid(message)) => json!({ "invalid": message }),
                    Err(RequestError::Internal(message)) => json!({ "internal": message }),
                },
                Err(failure) => json!({ "failure": failure.to_string() }),
            }
        } else if let Some(name) = input.get("timer").and_then(Value::as_str) {
            match plugin.on_timer(name.to_owned()).await {
                Ok(actions) => applied(&plugin, &cache, actions),
                Err(failure) => json!({ "failure": failure.to_string() }),
            }
        } else {
            bail!(
                "{}:{}: expected \"topic\", \"request\" or \"timer\"",
                samples.display(),
                number + 1
            );
        };
        println!("{}", json!({ "input": input, "output": output }));
    }
    Ok(())
}

/// A runtime as a node has it: this configuration's limits and precompiled cache (a second
/// check of the same component does not compile it again).
pub fn runtime(config: &Config) -> anyhow::Result<(PluginRuntime, Arc<SnapshotCache>)> {
    let metrics = Arc::new(Metrics::default());
    let cache = Arc::new(SnapshotCache::new(
        config.cache.max_bytes,
        metrics.cache_evictions.clone(),
    ));
    let precompiled = PrecompiledCache::open(
        config.precompiled_dir(),
        config.reload.precompiled_key.as_ref(),
    )
    .ok();
    let runtime = PluginRuntime::new(config.policies(), precompiled, cache.clone(), metrics)
        .map_err(|e| anyhow::anyhow!("cannot start the plugin runtime: {e}"))?;
    Ok((runtime, cache))
}

/// The actions as JSON, after applying their cache actions as the gateway would (so that the
/// next input sees them); a cache action the manifest does not allow is shown refused.
fn applied(plugin: &PluginHandle, cache: &SnapshotCache, actions: Vec<Action>) -> Value {
    let shown = actions_json(&actions);
    let mut refused = Vec::new();
    for action in actions {
        let outcome = match action {
            Action::CachePut(put) => {
                cache_entry(&plugin.manifest, put).map(|(key, entry)| cache.put(key, entry))
            }
            Action::CacheInvalidate(key) => {
                cache_key(&plugin.manifest, key).map(|key| cache.invalidate(&key))
            }
            _ => Ok(()),
        };
        if let Err(why) = outcome {
            refused.push(why.to_string());
        }
    }
    json!({ "actions": shown, "refused": refused })
}

fn actions_json(actions: &[Action]) -> Vec<Value> {
    let payload = |text: &str| serde_json::from_str(text).unwrap_or_else(|_| json!(text));
    actions
        .iter()
        .map(|action| match action {
            Action::Emit(e) => {
                json!({ "emit": { "room": e.room, "event": e.event, "payload": payload(&e.payload) } })
            }
            Action::Reply(r) => json!({ "reply": { "event": r.event, "payload": payload(&r.payload) } }),
            Action::Join(room) => json!({ "join": room }),
            Action::CachePut(put) => json!({ "cache_put": {
                "key": put.key, "payload": payload(&put.payload),
                "hydrate": put.hydrate.as_ref().map(|h| json!({ "room": h.room, "event": h.event })),
            } }),
            Action::CacheInvalidate(key) => json!({ "cache_invalidate": key }),
            Action::Publish(p) => json!({ "publish": {
                "topic": p.topic, "key": p.key, "payload": payload(&p.payload), "dedupe_key": p.dedupe_key,
            } }),
        })
        .collect()
}
