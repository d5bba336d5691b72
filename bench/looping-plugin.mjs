// A plugin that loops on every record: the gateway's CPU with it loaded, with the circuit and
// the CPU budget off (the gateway before them), with the budget only, and as shipped — against
// the same gateway with a healthy plugin instead. The demo ticker feeds 50 records/s to both the
// crypto plugin and the looping one; a client in `crypto.global` counts the ticker it receives.
// CPU is user+system time from /proc over the measured window, after a settling period.
// Run: node bench/looping-plugin.mjs   (needs target/release/flux-gateway and the built guests;
// WINDOW_MS and SETTLE_MS override the 20 s window and 5 s settling period.)

import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
process.env.FLUX_GATEWAY_BIN ??= join(root, "target/release/flux-gateway");
const { FAST_DEMO, mumbai, relayVersion, request, sleep, startGateway, wasmDir } = await import("../tests/e2e/harness.mjs");
const WINDOW_MS = Number(process.env.WINDOW_MS ?? 20_000);
const SETTLE_MS = Number(process.env.SETTLE_MS ?? 5_000);
const TICKS_PER_SECOND = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim());

function cpuSeconds(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
}


const OFF = "[circuit]\nfailures = 1000000000\n";
const variants = [
  ["healthy plugin", "v0000000", FAST_DEMO],
  ["looping, circuit and budget off (before)", "loop0001", `${FAST_DEMO}[limits]\ncpu_ms_per_sec = 0\n${OFF}`],
  ["looping, CPU budget only", "loop0001", `${FAST_DEMO}${OFF}`],
  ["looping, as shipped (circuit + budget)", "loop0001", FAST_DEMO],
];

const rows = [];
for (const [name, tag, toml] of variants) {
  const dir = mkdtempSync(join(tmpdir(), "flux-loop-bench-"));
  copyFileSync(join(wasmDir, "flux_crypto.wasm"), join(dir, "crypto.wasm"));
  // Loaded first, before any record: no canary catches it (as on a fresh start).
  writeFileSync(join(dir, "0-relay.wasm"), relayVersion(tag, tag.startsWith("loop") ? 1 : 0));
  const gateway = await startGateway(toml, { plugins: dir });
  try {
    const client = await gateway.open();
    await request(client, "userLocationUpdate", mumbai);
    await sleep(SETTLE_MS);
    const since = client.received.length;
    const cpuBefore = cpuSeconds(gateway.process.pid);
    await sleep(WINDOW_MS);
    const cpu = (cpuSeconds(gateway.process.pid) - cpuBefore) / (WINDOW_MS / 1000);
    const ticker = client.received.slice(since).filter((e) => e.event === "cryptoTickerResponse").length / (WINDOW_MS / 1000);
    const view = (await (await gateway.admin("/admin/plugins")).json()).plugins.find((p) => p.name === "relay");
    rows.push({
      name,
      cpu: `${(cpu * 100).toFixed(1)} %`,
      ticker: ticker.toFixed(1),
      timeouts: await gateway.metric("flux_plugin_errors_total", 'plugin="relay",kind="timeout"'),
      circuit: `${view.circuit} (opened ${view.opened_total}×)`,
      throttled: await gateway.metric("flux_plugin_cpu_throttled_total", 'plugin="relay"'),
    });
  } finally {
    await gateway.stop();
  }
}

console.log(`| ${WINDOW_MS / 1000} s window after ${SETTLE_MS / 1000} s, ticker 50 records/s | ${rows.map((r) => r.name).join(" | ")} |`);
console.log(`| --- | ${rows.map(() => "---:").join(" | ")} |`);
for (const [label, key] of [
  ["gateway CPU (share of one core)", "cpu"],
  ["crypto ticker delivered to a client, per s", "ticker"],
  ["relay calls that ran to the 250 ms deadline (whole run)", "timeouts"],
  ["relay circuit at the end", "circuit"],
  ["relay batches that waited for the CPU budget", "throttled"],
]) {
  console.log(`| ${label} | ${rows.map((r) => r[key]).join(" | ")} |`);
}
