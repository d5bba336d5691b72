// The Python `fx` domain beside its line-for-line Rust twin (tests/fixtures/fx), on the
// release gateway: component size; `plugin check` cold (compiling, with an empty precompiled
// cache) and warm (from the precompiled cache) — the cost of a load and of a restart; the
// gateway's RSS with that one plugin loaded; and whether compiling a Python component stalls
// anything else: the crypto ticker's latency to a client (record stamped by the simulated
// service → socket) while a fresh Python component is deployed and compiled, against before.
// Per-record and per-request costs are the criterion bench `python_plugin` (bench/micro).
// Run: scripts/build-plugins.sh && scripts/build-python-plugins.sh target/python-plugins &&
//      cargo build --release -p flux-gateway && node bench/python-plugin.mjs

import { execFileSync } from "node:child_process";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
process.env.FLUX_GATEWAY_BIN ??= join(root, "target/release/flux-gateway");
const { FAST_DEMO, deploy, eventually, gatewayBin, mumbai, request, sleep, startGateway, wasmDir } = await import(
  "../tests/e2e/harness.mjs"
);

const components = {
  rust: join(wasmDir, "flux_fixture_fx.wasm"),
  python: join(root, "target/python-plugins/flux_fx.wasm"),
};
const rssMiB = (pid) => Number(readFileSync(`/proc/${pid}/status`, "utf8").match(/VmRSS:\s+(\d+)/)[1]) / 1024;
const timed = (args, env) => {
  const started = performance.now();
  execFileSync(gatewayBin, args, { env: { ...process.env, ...env }, stdio: "ignore" });
  return performance.now() - started;
};
const percentile = (values, p) => [...values].sort((a, b) => a - b)[Math.floor((values.length - 1) * p)];

const rows = {};
for (const [language, file] of Object.entries(components)) {
  const cache = mkdtempSync(join(tmpdir(), "flux-py-bench-cache-"));
  const cold = timed(["plugin", "check", file], { XDG_CACHE_HOME: cache });
  const warm = timed(["plugin", "check", file], { XDG_CACHE_HOME: cache });
  const plugins = mkdtempSync(join(tmpdir(), "flux-py-bench-"));
  copyFileSync(file, join(plugins, "fx.wasm"));
  const gateway = await startGateway("", { plugins, env: { XDG_CACHE_HOME: cache }, waitReady: false });
  await gateway.untilReady(120_000);
  await sleep(1_000);
  const rss = rssMiB(gateway.process.pid);
  await gateway.stop();
  rmSync(cache, { recursive: true, force: true });
  rmSync(plugins, { recursive: true, force: true });
  rows[language] = { size: statSync(file).size / 1024 / 1024, cold, warm, rss };
}
const empty = mkdtempSync(join(tmpdir(), "flux-py-bench-empty-"));
const bare = await startGateway("", { plugins: empty, waitReady: false });
await sleep(2_000);
const bareRss = rssMiB(bare.process.pid);
await bare.stop();

console.log("| fx domain | Rust twin | Python |\n| --- | ---: | ---: |");
const row = (label, f) => console.log(`| ${label} | ${f(rows.rust)} | ${f(rows.python)} |`);
row("component size", (r) => `${r.size.toFixed(2)} MiB`);
row("`plugin check`, compiling (empty precompiled cache)", (r) => `${r.cold.toFixed(0)} ms`);
row("`plugin check`, from the precompiled cache (a restart)", (r) => `${r.warm.toFixed(0)} ms`);
row(`gateway RSS with only this plugin (none: ${bareRss.toFixed(0)} MiB)`, (r) => `${r.rss.toFixed(0)} MiB`);

// Does a Python compile stall the rest? The crypto ticker (50 records/s) to a client, before
// and while a never-seen Python component (a fresh version: nothing cached) compiles.
const plugins = mkdtempSync(join(tmpdir(), "flux-py-bench-stall-"));
copyFileSync(join(wasmDir, "flux_crypto.wasm"), join(plugins, "crypto.wasm"));
const gateway = await startGateway(FAST_DEMO, { plugins, env: { XDG_CACHE_HOME: mkdtempSync(join(tmpdir(), "c-")) } });
const client = await gateway.open();
await request(client, "userLocationUpdate", mumbai);
const latencies = (from) =>
  client.received
    .slice(from)
    .filter((e) => e.event === "cryptoTickerResponse" && e.at)
    .map((e) => e.at - e.args[0].data.ts);
client.onAny((event, payload) => {
  client.received[client.received.length - 1].at = Date.now();
});
await sleep(3_000);
const before = client.received.length;
await sleep(5_000);
const baseline = latencies(before);
const during = client.received.length;
const fresh = readFileSync(components.python);
const started = performance.now();
deploy(join(plugins, "fx.wasm"), fresh);
await eventually(async () => (await (await gateway.admin("/admin/plugins")).json()).plugins.some((p) => p.name === "fx"), {
  timeout: 120_000,
  what: "fx to load",
});
const compileMs = performance.now() - started;
const whileCompiling = latencies(during);
await gateway.stop();
console.log(
  `\ncrypto ticker to a client, record → socket: before p50 ${percentile(baseline, 0.5)} ms, p99 ${percentile(baseline, 0.99)} ms, ` +
    `max ${Math.max(...baseline)} ms (${baseline.length} ticks); while the Python component was deployed, compiled and ` +
    `canaried (${compileMs.toFixed(0)} ms): p50 ${percentile(whileCompiling, 0.5)} ms, p99 ${percentile(whileCompiling, 0.99)} ms, ` +
    `max ${Math.max(...whileCompiling)} ms (${whileCompiling.length} ticks)`,
);
