// The load scenarios, run against the gateway and then its Node.js peer on the same machine,
// each on a fresh tansu broker, one server at a time. Prints a Markdown table per scenario
// with both figures and their ratio, and writes every raw report to bench/results/.
//
//   bash bench/run-scenarios.sh                      (all six scenarios, both servers)
//   SCENARIOS=fanout,idle SERVERS=gateway bash bench/run-scenarios.sh
//
// Needs the release builds of flux-gateway and flux-load, the built plugins, tansu, and
// `npm ci` in bench/peer (bench/run-scenarios.sh does all of that).

import { spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
process.env.FLUX_GATEWAY_BIN ??= join(root, "target/release/flux-gateway");
process.env.FLUX_LOG ??= "warn";
const { startBroker, startGateway, startPeer, withTimeout } = await import("../tests/e2e/harness.mjs");
const loadBin = process.env.FLUX_LOAD_BIN ?? join(root, "target/release/flux-load");

const FANOUT_RATE = process.env.FANOUT_RATE ?? "20";
const CROWD_CLIENTS = process.env.CROWD_CLIENTS ?? "5000";
const SCENARIOS = {
  fanout: ["fanout", "--clients", "10000", "--rate", FANOUT_RATE, "--seconds", "10"],
  rooms: ["rooms", "--cities", "1000", "--per-city", "10", "--rate", "1000", "--seconds", "10"],
  // 20,000 when the hard file-descriptor limit allows; each side needs one per client plus a
  // few of its own.
  idle: ["idle", "--clients", String(Math.min(20_000, Number(process.env.FD_LIMIT ?? 20_000) - 500)), "--hold", "30"],
  ticker: ["fanout", "--clients", "5000", "--rate", "200", "--seconds", "10"],
  storm: ["storm", "--clients", "5000", "--cities", "100", "--within-ms", "1000"],
  crowd: ["crowd", "--clients", CROWD_CLIENTS, "--within-ms", "1000", "--rate", "10", "--seconds", "10"],
};
const pick = (variable, all) => (process.env[variable] ? process.env[variable].split(",") : all);
const scenarios = pick("SCENARIOS", Object.keys(SCENARIOS));
const servers = pick("SERVERS", ["gateway", "node"]);

// tansu answers a fetch only when its wait is over, so the fetch wait bounds latency: both
// servers get the same short one (the defaults are librdkafka's 500 ms and kafkajs's 5 s).
const FETCH_MAX_WAIT_MS = process.env.FETCH_MAX_WAIT_MS ?? "10";
const start = {
  gateway: (brokers) =>
    startGateway(`[kafka]\nbrokers = "${brokers}"\n[kafka.properties]\n"fetch.wait.max.ms" = "${FETCH_MAX_WAIT_MS}"\n`),
  node: (brokers) => startPeer(brokers, { FETCH_MAX_WAIT_MS }),
};

function load(args, server) {
  const child = spawn(
    loadBin,
    ["--server", new URL(server.url).host, "--brokers", server.brokers, "--server-pid", String(server.process.pid), "--label", server.label, "--json", ...args],
    { stdio: ["ignore", "pipe", "inherit"] },
  );
  let out = "";
  child.stdout.setEncoding("utf8").on("data", (chunk) => (out += chunk));
  return withTimeout(
    new Promise((done, failed) =>
      child.once("exit", (code) => (code === 0 ? done(JSON.parse(out)) : failed(new Error(`flux-load exited with ${code}`)))),
    ),
    600_000,
    "flux-load",
  );
}

const results = [];
for (const scenario of scenarios) {
  for (const label of servers) {
    const broker = await startBroker();
    let server;
    process.stderr.write(`--- ${scenario} on ${label}\n`);
    try {
      server = await start[label](broker.brokers);
      Object.assign(server, { label, brokers: broker.brokers });
      const report = await load(SCENARIOS[scenario], server);
      results.push({ ...report, scenario });
      process.stderr.write(`${JSON.stringify(report)}\n`);
    } catch (error) {
      results.push({ scenario, label, failed: String(error.message ?? error) });
      process.stderr.write(`${error.stack}\n`);
    } finally {
      await server?.stop().catch(() => {});
      await broker.stop();
    }
  }
}

const resultsDir = join(root, "bench/results");
mkdirSync(resultsDir, { recursive: true });
const file = join(resultsDir, `scenarios-${new Date().toISOString().replace(/[:.]/g, "-")}.json`);
writeFileSync(file, JSON.stringify(results, null, 2));

const rows = [
  ["connected", (r) => r.connected],
  ["deliveries/s", (r) => r.deliveriesPerSec, "higher"],
  ["delivered / expected", (r) => (r.expected ? `${r.delivered} / ${r.expected}` : undefined)],
  ["latency p50 ms", (r) => r.latencyMs?.p50, "lower"],
  ["latency p99 ms", (r) => r.latencyMs?.p99, "lower"],
  ["latency p99.9 ms", (r) => r.latencyMs?.p999, "lower"],
  ["hydrated", (r) => (["storm", "crowd"].includes(r.scenario) ? r.hydrated : undefined)],
  ["all hydrated after ms", (r) => r.stormMs, "lower"],
  ["join → hydrated p50 ms", (r) => r.joinLatencyMs?.p50, "lower"],
  ["join → hydrated p99 ms", (r) => r.joinLatencyMs?.p99, "lower"],
  ["server CPU µs per join", (r) => r.joinCpuUsPerClient, "lower"],
  ["errors / disconnects", (r) => `${r.errors} / ${r.disconnects}`],
  ["server CPU µs per delivery", (r) => r.serverCpuUsPerDelivery, "lower"],
  ["CPU s: server / load generator", (r) => (r.serverCpuSec != null ? `${r.serverCpuSec.toFixed(1)} / ${r.loadCpuSec.toFixed(1)}` : undefined)],
  ["server RSS peak MB", (r) => (r.rssPeakKb ? r.rssPeakKb / 1024 : undefined), "lower"],
  ["RSS per connection KB", (r) => r.rssPerConnectionKb, "lower"],
];
const show = (v) => (v === undefined || v === null ? "–" : typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(1)) : String(v));
let markdown = "";
for (const scenario of scenarios) {
  const [gateway, node] = ["gateway", "node"].map((label) => results.find((r) => r.scenario === scenario && r.label === label));
  markdown += `\n### ${scenario}: \`flux-load ${SCENARIOS[scenario].join(" ")}\`\n\n| | gateway | node peer | gateway advantage |\n| --- | --- | --- | --- |\n`;
  for (const r of [gateway, node]) if (r?.failed) markdown += `| **${r.label} failed** | ${r.failed} | | |\n`;
  for (const [name, get, better] of rows) {
    const [g, n] = [gateway, node].map((r) => (r && !r.failed ? get(r) : undefined));
    if (g === undefined && n === undefined) continue;
    let ratio = "";
    if (better && typeof g === "number" && typeof n === "number" && g > 0 && n > 0) ratio = `${(better === "higher" ? g / n : n / g).toFixed(1)}×`;
    markdown += `| ${name} | ${show(g)} | ${show(n)} | ${ratio} |\n`;
  }
}
console.log(markdown);
console.log(`raw reports: ${file}`);
