// A smoke run of the load tool (bench/load) against the gateway and against its Node.js peer
// (bench/peer), so neither side of the benchmark can rot: a few clients for a few seconds,
// every expected event delivered, reconnect storm and crowded city fully hydrated. Figures
// are not asserted: benchmarks are run by hand (BENCHMARKS.md).

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import { test } from "node:test";
import { root, startBroker, startGateway, startPeer, withTimeout } from "./harness.mjs";

const loadBin = process.env.FLUX_LOAD_BIN ?? join(root, "target/debug/flux-load");

/** Runs flux-load against `server` requiring completeness; resolves with its JSON report. */
function load(server, brokers, args) {
  return flux(args, ["--server", new URL(server.url).host, "--brokers", brokers, "--server-pid", String(server.process.pid)]);
}

/** Runs the flux-load scenario `args` (its name first) requiring completeness, with the tool's
 * `options`; resolves with its JSON report. */
function flux(args, options = []) {
  const child = spawn(loadBin, [...options, "--require-complete", "--json", ...args], { stdio: ["ignore", "pipe", "pipe"] });
  const scenario = args[0];
  let out = "";
  let err = "";
  child.stdout.setEncoding("utf8").on("data", (chunk) => (out += chunk));
  child.stderr.setEncoding("utf8").on("data", (chunk) => (err += chunk));
  return withTimeout(
    new Promise((done, failed) => {
      child.once("error", failed);
      child.once("exit", (code) =>
        code === 0 ? done(JSON.parse(out)) : failed(new Error(`flux-load ${scenario} exited with ${code}: ${err}${out}`)),
      );
    }),
    90_000,
    `flux-load ${scenario}`,
  );
}

const servers = {
  gateway: (brokers) => startGateway(`[kafka]\nbrokers = "${brokers}"\n[kafka.properties]\n"fetch.wait.max.ms" = "10"\n`),
  "node peer": (brokers) => startPeer(brokers, { FETCH_MAX_WAIT_MS: "10" }),
};

for (const [name, start] of Object.entries(servers)) {
  test(`the load tool drives the ${name}: fan-out delivered in full, storm hydrated, a crowded city served`, async (t) => {
    const broker = await startBroker();
    const server = await start(broker.brokers).catch(async (error) => {
      await broker.stop();
      throw error;
    });
    // The server first: it flushes to the broker as it stops.
    t.after(async () => {
      await server.stop();
      await broker.stop();
    });

    const fanout = await load(server, broker.brokers, ["fanout", "--clients", "20", "--rate", "10", "--seconds", "2"]);
    assert.equal(fanout.connected, 20);
    assert.ok(fanout.records >= 15, `records fed: ${fanout.records}`);
    assert.equal(fanout.delivered, fanout.records * 20);
    assert.ok(fanout.latencyMs.p50 > 0 && fanout.rssPeakKb > 0);

    const rooms = await load(server, broker.brokers, ["rooms", "--cities", "5", "--per-city", "3", "--rate", "20", "--seconds", "2"]);
    assert.equal(rooms.delivered, rooms.records * 3);

    const storm = await load(server, broker.brokers, ["storm", "--clients", "30", "--cities", "3", "--within-ms", "300"]);
    assert.equal(storm.hydrated, 30);
    assert.ok(storm.stormMs > 0);

    const crowd = await load(server, broker.brokers, ["crowd", "--clients", "40", "--within-ms", "300", "--rate", "5", "--seconds", "2"]);
    assert.equal(crowd.hydrated, 40);
    assert.ok(crowd.joinLatencyMs.p50 > 0 && crowd.stormMs > 0);
    assert.ok(crowd.records >= 8, `records fed: ${crowd.records}`);
    assert.equal(crowd.delivered, crowd.records * 40);
  });
}

test("the load tool's floor: its own writer process serves every client every frame", async () => {
  const floor = await flux(["floor", "--clients", "50", "--rate", "10", "--seconds", "1"]);
  assert.equal(floor.connected, 50);
  assert.equal(floor.records, 10);
  assert.equal(floor.delivered, 500);
  assert.ok(floor.latencyMs.p50 > 0 && floor.serverCpuSec !== null);
});
