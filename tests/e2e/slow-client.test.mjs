// A client that stops reading, with the official socket.io-client (its TCP socket paused) next
// to a normal one: the normal client's ticker is not delayed and misses nothing, the slow one is
// disconnected — counted — when it cannot take a packet it must get, and the gateway's memory
// stays bounded.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { eventually, mumbai, request, sleep, startGateway } from "./harness.mjs";

const GATEWAY = `
[demo]
enabled = true
ticker_every_ms = 10
snapshot_every_ms = 500
answer_after_ms = 20
[socket]
max_buffer = 32
events_per_sec = 100000
event_burst = 100000
commands_per_sec = 0
`;

/** Resident memory of a process, in MiB. */
function rssMib(pid) {
  const line = readFileSync(`/proc/${pid}/status`, "utf8").split("\n").find((l) => l.startsWith("VmRSS:"));
  return Number(line.split(/\s+/)[1]) / 1024;
}

/** The ticker a socket receives: latencies (ms, from the upstream's timestamp), stamps, sequence numbers. */
function watchTicker(socket) {
  const seen = { latencies: [], stamps: [], seqs: [] };
  socket.on("cryptoTickerResponse", (payload) => {
    seen.latencies.push(Date.now() - payload.data.ts);
    seen.stamps.push(payload.data.ts);
    seen.seqs.push(payload.data.seq);
  });
  return seen;
}

const p99 = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length * 0.99)];

test("a client that stops reading: others are not delayed, it is disconnected for what it must get, memory stays bounded", async (t) => {
  const gateway = await startGateway(GATEWAY);
  t.after(() => gateway.stop());
  const pid = gateway.process.pid;

  const normal = await gateway.open();
  await request(normal, "userLocationUpdate", mumbai);
  const slow = await gateway.open();
  await request(slow, "userLocationUpdate", mumbai);
  let slowDisconnect;
  slow.on("disconnect", (reason) => (slowDisconnect = reason));

  const baseline = watchTicker(normal);
  await sleep(2_000);
  const rssBefore = rssMib(pid);
  const during = watchTicker(normal);
  baseline.done = true;

  // The slow client stops reading its socket but keeps sending: every location update asks for
  // an acknowledgement and hydration snapshots it will not read.
  slow.io.engine.transport.ws._socket.pause();
  let sent = 0;
  const flood = setInterval(() => {
    for (let i = 0; i < 50; i++, sent++) slow.emit("userLocationUpdate", { ...mumbai, city: i % 2 ? "Mumbai" : "Delhi" }, () => {});
  }, 10);
  t.after(() => clearInterval(flood));
  await eventually(async () => (await gateway.metric("flux_slow_client_disconnects_total")) > 0 || (await totalSlow(gateway)) > 0, {
    timeout: 30_000,
    what: "the slow client to be disconnected",
  });
  clearInterval(flood);
  const rssAfter = rssMib(pid);
  await sleep(2_000);

  // Disconnected on the server; the client learns it once it reads again.
  assert.equal(await gateway.metric("flux_sockets_connected"), 1, "only the normal client is left");
  slow.io.engine.transport.ws?._socket?.resume();
  await eventually(() => slowDisconnect !== undefined, { timeout: 10_000, what: "the slow client to see its disconnect" });

  const seqs = during.seqs;
  assert.ok(seqs.length > 100, `the normal client kept receiving the ticker: ${seqs.length}`);
  for (let i = 1; i < seqs.length; i++) assert.equal(seqs[i], seqs[i - 1] + 1, `the normal client missed nothing (${seqs[i - 1]} then ${seqs[i]})`);
  console.log(
    `# slow client: ${sent} events sent unread; normal client's ticker p99 ${p99(baseline.latencies)} ms before, ${p99(during.latencies)} ms during; RSS ${rssBefore.toFixed(0)} → ${rssAfter.toFixed(0)} MiB`,
  );
  assert.ok(p99(during.latencies) < 250, `the normal client's ticker p99 stays low: ${p99(during.latencies)} ms`);
  assert.ok(rssAfter - rssBefore < 64, `memory stays bounded: ${rssBefore.toFixed(0)} → ${rssAfter.toFixed(0)} MiB`);
});

/** Slow-client disconnects, whatever the client missed. */
async function totalSlow(gateway) {
  const text = await (await gateway.admin("/metrics")).text();
  return text
    .split("\n")
    .filter((l) => l.startsWith("flux_slow_client_disconnects_total"))
    .reduce((sum, l) => sum + Number(l.split(" ").pop()), 0);
}

test("a client that lags behind the broadcasts: its events are conflated, it stays connected and catches up on the newest", async (t) => {
  // A fast ticker, and the default queue: a client that reads keeps up with it.
  const gateway = await startGateway(
    GATEWAY.replace("ticker_every_ms = 10", "ticker_every_ms = 1")
      .replace("snapshot_every_ms = 500", "snapshot_every_ms = 50")
      .replace("max_buffer = 32", "max_buffer = 256"),
  );
  t.after(() => gateway.stop());
  const normal = await gateway.open();
  await request(normal, "userLocationUpdate", mumbai);
  const lagging = await gateway.open();
  await request(lagging, "userLocationUpdate", mumbai);
  let disconnected = false;
  lagging.on("disconnect", () => (disconnected = true));
  const normalTicker = watchTicker(normal);

  // Stops reading and asks for nothing: only broadcasts are sent to it.
  lagging.io.engine.transport.ws._socket.pause();
  // The kernel's socket buffers take a few MB first (about 20 s of this ticker here).
  await eventually(async () => (await gateway.metric("flux_room_emits_conflated_total")) > 100, {
    timeout: 90_000,
    what: "broadcasts to the lagging client to be conflated",
  });
  const lagged = watchTicker(lagging);
  const resumedAt = Date.now();
  lagging.io.engine.transport.ws._socket.resume();
  // What was queued, then the newest — not every tick it missed.
  await eventually(() => lagged.stamps.some((ts) => ts >= resumedAt), {
    timeout: 5_000,
    what: "the lagging client to catch up on the newest tick",
  });
  assert.equal(disconnected, false, "a lagging client that missed no packet it must get stays connected");
  assert.equal(await gateway.metric("flux_slow_client_disconnects_total"), 0);
  const gaps = lagged.seqs.slice(1).filter((seq, i) => seq !== lagged.seqs[i] + 1).length;
  assert.ok(gaps >= 1, "ticks it could not take were skipped, not queued");
  for (let i = 1; i < normalTicker.seqs.length; i++) {
    assert.equal(normalTicker.seqs[i], normalTicker.seqs[i - 1] + 1, "the normal client missed nothing");
  }
  console.log(`# lagging client: ${await gateway.metric("flux_room_emits_conflated_total")} broadcasts conflated; after resuming it received ${lagged.seqs.length} ticks with ${gaps} gaps; normal client's p99 ${p99(normalTicker.latencies)} ms`);
  assert.ok(p99(normalTicker.latencies) < 250, `the normal client's ticker p99 stays low: ${p99(normalTicker.latencies)} ms`);
});
