// Save-to-live: how long from a plugin file being written into the plugin directory of a
// running gateway until the new version serves, against the peer way of shipping a plugin
// (restart the gateway and wait until it is ready). Run: node bench/save-to-live.mjs
// (needs target/release/flux-gateway and the built plugins; see BENCHMARKS.md).

import { cpSync, mkdtempSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
process.env.FLUX_GATEWAY_BIN ??= join(root, "target/release/flux-gateway");
const { connect, nextEvent, request, startGateway, wasmDir, pluginDir } = await import("../tests/e2e/harness.mjs");

const ROUNDS = Number(process.env.ROUNDS ?? 10);
// A precompiled cache of this run's own: every version written below must be compiled once,
// as a version never seen before would be (the test suite compiles the same relay versions).
const precompiled = mkdtempSync(join(tmpdir(), "flux-bench-precompiled-"));
const CONFIG = `[demo]\nenabled = true\nticker_every_ms = 20\nsnapshot_every_ms = 1000\n[reload]\ndebounce_ms = 50\nprecompiled_dir = ${JSON.stringify(precompiled)}\n`;

const deploy = (dir, name, bytes) => {
  writeFileSync(join(dir, `.${name}.tmp`), bytes);
  renameSync(join(dir, `.${name}.tmp`), join(dir, name));
};
/** A copy with a custom section appended: new bytes, same behaviour. */
const rebuilt = (bytes, round) => {
  const name = Buffer.from("flux-bench");
  const data = Buffer.from(String(round).padStart(8, "0"));
  const body = Buffer.concat([Buffer.from([name.length]), name, data]);
  return Buffer.concat([bytes, Buffer.from([0, body.length]), body]);
};
const stats = (samples) => {
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  return { median: at(0.5), p90: at(0.9), max: sorted[sorted.length - 1] };
};
const ms = (v) => `${v.toFixed(0)} ms`;

const dir = mkdtempSync(join(tmpdir(), "flux-bench-"));
for (const name of ["weather", "crypto", "news", "stocks"]) cpSync(join(pluginDir, `flux_${name}.wasm`), join(dir, `flux_${name}.wasm`));
const relay = readFileSync(join(wasmDir, "flux_fixture_relay.wasm"));
const marker = relay.indexOf(Buffer.from("FLUXTAG:v0000000"));
const tagged = (tag) => {
  const copy = Buffer.from(relay);
  Buffer.from(`FLUXTAG:${tag}`).copy(copy, marker);
  return copy;
};
deploy(dir, "relay.wasm", tagged("v0000000"));

let started = performance.now();
let gateway = await startGateway(CONFIG, { plugins: dir });
const coldStart = performance.now() - started;

const results = {};
// End to end: the relay's new tag reaches a connected client.
const client = await connect(gateway.url);
await request(client, "relayJoin");
results["relay (file written → client gets the new version's event)"] = [];
for (let round = 1; round <= ROUNDS; round++) {
  const tag = `v${String(round).padStart(7, "0")}`;
  const since = client.received.length;
  const written = performance.now();
  deploy(dir, "relay.wasm", tagged(tag));
  await nextEvent(client, "relayTick", { since, timeout: 10_000, accept: (p) => p.data.tag === tag });
  results["relay (file written → client gets the new version's event)"].push(performance.now() - written);
}
client.close();

// Domain plugins: new bytes written → the swap is done and the new version takes records.
for (const name of ["weather", "crypto", "news", "stocks"]) {
  const original = readFileSync(join(dir, `flux_${name}.wasm`));
  const label = `${name} (file written → new version active)`;
  results[label] = [];
  for (let round = 1; round <= ROUNDS; round++) {
    const written = performance.now();
    deploy(dir, `flux_${name}.wasm`, rebuilt(original, round));
    for (;;) {
      const reloads = await gateway.metric("flux_plugin_reloads_total", `plugin="${name}",outcome="loaded"`);
      if (reloads >= round + 1) break;
      await new Promise((r) => setTimeout(r, 2));
    }
    results[label].push(performance.now() - written);
  }
}

// The peer: ship a new build by restarting the gateway (every client is disconnected). The
// other plugins come from the precompiled cache; the rebuilt one must be compiled.
const restarts = [];
const weather = readFileSync(join(dir, "flux_weather.wasm"));
for (let round = 1; round <= Math.min(ROUNDS, 5); round++) {
  await gateway.stop();
  deploy(dir, "flux_weather.wasm", rebuilt(weather, 1000 + round));
  started = performance.now();
  gateway = await startGateway(CONFIG, { plugins: dir });
  restarts.push(performance.now() - started);
}
await gateway.stop();

const restart = stats(restarts);
console.log(`cold start (compiling 5 plugins, then ready): ${ms(coldStart)}`);
console.log(`peer: restart with one plugin rebuilt, until ready (drops every connection), median of ${restarts.length}: ${ms(restart.median)}\n`);
console.log("| plugin | median | p90 | max | restart ÷ hot swap (medians) |");
console.log("| --- | --- | --- | --- | --- |");
for (const [label, samples] of Object.entries(results)) {
  const s = stats(samples);
  console.log(`| ${label} | ${ms(s.median)} | ${ms(s.p90)} | ${ms(s.max)} | ${(restart.median / s.median).toFixed(1)}× |`);
}
