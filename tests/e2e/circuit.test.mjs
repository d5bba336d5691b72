// A plugin that spins on every record, in a gateway with live clients and the crypto plugin
// beside it: its circuit opens within seconds, the gateway's CPU (from /proc) falls back to the
// level of a healthy gateway, crypto keeps serving, requests to it are refused at once, and a
// fixed version dropped in closes the circuit and serves.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { FAST_DEMO, deploy, eventually, mumbai, nextEvent, relayVersion, request, sleep, startGateway, wasmDir } from "./harness.mjs";

const GATEWAY = `${FAST_DEMO}
[reload]
debounce_ms = 50
[circuit]
failures = 5
open_ms = 2000
max_open_ms = 4000
`;

const TICKS_PER_SECOND = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim());

/** User plus system CPU seconds the process has used. */
function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
}

/** The share of one core the process used over `ms`. */
async function cpuShare(pid, ms) {
  const before = cpuSeconds(pid);
  await sleep(ms);
  return (cpuSeconds(pid) - before) / (ms / 1000);
}

test("a plugin that loops on every record: its circuit opens, the CPU comes back, the others keep serving", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "flux-circuit-"));
  copyFileSync(join(wasmDir, "flux_crypto.wasm"), join(dir, "crypto.wasm"));
  // Loaded first (files load in name order), before any record was seen: no canary can catch
  // it, as on a fresh start. It spins on every record.
  const file = join(dir, "0-relay.wasm");
  writeFileSync(file, relayVersion("loop0001", 1));
  const gateway = await startGateway(GATEWAY, { plugins: dir });
  t.after(async () => {
    await gateway.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const pid = gateway.process.pid;
  const relayView = async () => (await (await gateway.admin("/admin/plugins")).json()).plugins.find((p) => p.name === "relay");
  const client = await gateway.open();
  // Joins the crypto ticker's room.
  assert.equal((await request(client, "userLocationUpdate", mumbai)).status, "success");

  // The circuit's state is the version's guard's; its last error is written by the plugin
  // set's supervisor once it has handled the trip: wait for both.
  const opened = await eventually(async () => {
    const view = await relayView();
    return view?.circuit === "open" && /opened its circuit/.test(view.last_error ?? "") && view;
  }, { timeout: 10_000, what: "the looping plugin's circuit to open, and the supervisor to record why" });
  assert.equal(opened.state, "active", "nothing to roll back to: it stays loaded");
  assert.match(opened.last_error, /opened its circuit.*nothing to roll back to/);
  assert.ok(await gateway.metric("flux_plugin_errors_total", 'plugin="relay",kind="timeout"') >= 5);

  // Refused at once, in words, without running the guest.
  const refusedBefore = await gateway.metric("flux_plugin_calls_refused_total", 'plugin="relay",reason="circuit_open"');
  const answer = await request(client, "relayJoin");
  assert.equal(answer.status, "error");
  assert.match(answer.message, /relay service is temporarily unavailable/);
  assert.ok(await gateway.metric("flux_plugin_calls_refused_total", 'plugin="relay",reason="circuit_open"') > refusedBefore);

  // While open: the gateway's CPU, and the crypto ticker still flowing.
  const since = client.received.length;
  const openCpu = await cpuShare(pid, 3_000);
  const tickerWhileOpen = client.received.slice(since).filter((e) => e.event === "cryptoTickerResponse").length;
  assert.ok(tickerWhileOpen > 50, `the crypto ticker keeps flowing: ${tickerWhileOpen} in 3 s`);
  assert.ok(await gateway.metric("flux_dead_letters_total", 'plugin="relay"') > 50, "its records are dead-lettered, not stalled");

  // A fixed version closes the circuit and serves.
  deploy(file, relayVersion("v0000002"));
  await eventually(async () => (await relayView()).version === "v0000002", { what: "the fixed version" });
  assert.equal((await request(client, "relayJoin")).data.tag, "v0000002");
  await nextEvent(client, "relayTick", { accept: (p) => p.data.tag === "v0000002" });
  const fixed = await relayView();
  assert.equal(fixed.circuit, "closed");
  const healthyCpu = await cpuShare(pid, 3_000);

  console.log(`# gateway CPU: ${(openCpu * 100).toFixed(0)}% of a core with the circuit open, ${(healthyCpu * 100).toFixed(0)}% healthy`);
  // A looping plugin unchecked costs a whole core; open, at most a probe (a quarter second)
  // now and then beyond a healthy gateway's load.
  assert.ok(openCpu < healthyCpu + 0.2, `open: ${openCpu.toFixed(2)} cores, healthy: ${healthyCpu.toFixed(2)}`);
});
