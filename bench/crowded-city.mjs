// Crowded city: 5,000 clients arrive in one city within one second (`flux-load storm --cities 1`)
// on a gateway on Kafka (tansu), once with the plugins as shipped (weather fetches single flight
// per city) and once with a weather plugin that fetches per user (BEFORE_WEATHER: the .wasm of
// an earlier build, e.g. from commit c851221). Reports how many fetch commands reached the
// weather service's topic and what became of the rest, from the gateway's own metrics.
// Run: BEFORE_WEATHER=/path/flux_weather.wasm node bench/crowded-city.mjs
// (needs target/release/flux-gateway, target/release/flux-load, the built plugins and tansu).

import { spawn } from "node:child_process";
import { copyFileSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
process.env.FLUX_GATEWAY_BIN ??= join(root, "target/release/flux-gateway");
const { pluginDir, startBroker, startGateway, withTimeout } = await import("../tests/e2e/harness.mjs");
const loadBin = process.env.FLUX_LOAD_BIN ?? join(root, "target/release/flux-load");
const CLIENTS = process.env.CLIENTS ?? "5000";

/** A plugin directory with the shipped plugins, the weather plugin replaced by `weather`. */
function pluginsWith(weather) {
  const dir = mkdtempSync(join(tmpdir(), "flux-crowd-"));
  for (const name of ["weather", "crypto", "news", "stocks"]) copyFileSync(join(pluginDir, `flux_${name}.wasm`), join(dir, `flux_${name}.wasm`));
  copyFileSync(weather, join(dir, "flux_weather.wasm"));
  return dir;
}

function storm(gateway, brokers) {
  const child = spawn(
    loadBin,
    ["--server", new URL(gateway.url).host, "--brokers", brokers, "--server-pid", String(gateway.process.pid), "--label", "gateway", "--json",
      "storm", "--clients", CLIENTS, "--cities", "1", "--within-ms", "1000"],
    { stdio: ["ignore", "pipe", "inherit"] },
  );
  let out = "";
  child.stdout.setEncoding("utf8").on("data", (chunk) => (out += chunk));
  return withTimeout(
    new Promise((done, failed) => child.once("exit", (code) => (code === 0 ? done(JSON.parse(out)) : failed(new Error(`flux-load exited with ${code}`))))),
    300_000,
    "flux-load",
  );
}

const variants = [["single flight per city (as shipped)", join(pluginDir, "flux_weather.wasm")]];
if (process.env.BEFORE_WEATHER) variants.push(["a fetch per user (BEFORE_WEATHER)", process.env.BEFORE_WEATHER]);

console.log(`| ${CLIENTS} clients in one city within 1 s | ${variants.map(([name]) => name).join(" | ")} |`);
console.log(`| --- | ${variants.map(() => "---:").join(" | ")} |`);
const columns = [];
for (const [, weather] of variants) {
  const broker = await startBroker();
  const gateway = await startGateway(`[kafka]\nbrokers = "${broker.brokers}"\n[kafka.properties]\n"fetch.wait.max.ms" = "10"\n`, { plugins: pluginsWith(weather) });
  try {
    const report = await storm(gateway, broker.brokers);
    const fetchTopic = 'topic="weather.service.command.fetch"';
    columns.push({
      hydrated: `${report.hydrated} / ${report.clients}`,
      lastHydratedMs: report.stormMs,
      published: await gateway.metric("flux_bus_published_total", fetchTopic),
      deduplicated: await gateway.metric("flux_publish_deduplicated_total", fetchTopic),
      quota: await gateway.metric("flux_plugin_errors_total", 'plugin="weather",kind="quota"'),
    });
  } finally {
    await gateway.stop();
    await broker.stop();
  }
}
for (const [label, key] of [
  ["all hydrated", "hydrated"],
  ["last hydrated after ms", "lastHydratedMs"],
  ["fetch commands published", "published"],
  ["fetches deduplicated (single flight)", "deduplicated"],
  ["fetches refused over the plugin's publish quota", "quota"],
]) {
  console.log(`| ${label} | ${columns.map((c) => c[key]).join(" | ")} |`);
}
