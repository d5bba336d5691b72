// The gateway on a real Kafka broker (tansu): the simulated services run as their own process,
// the gateway consumes and produces real records, and the official socket.io-client is the
// browser. Each test has its own broker, so tests never see each other's records.

import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import {
  cleanup,
  connect,
  delhi,
  dump,
  eventually,
  freePort,
  mumbai,
  nextEvent,
  produce,
  request,
  sleep,
  startBroker,
  startGateway,
  startSim,
} from "./harness.mjs";
import { SNAPSHOT_EVENTS, assertSuccess, shapes } from "./shapes.mjs";

const kafka = (brokers, node, extra = "") =>
  `[kafka]\nbrokers = "${brokers}"\nnode_id = "${node}"\n${extra}\n`;

const success = (p) => p.status === "success";

test("the whole contract through Kafka, services in their own process", async (t) => {
  const keep = cleanup(t);
  const broker = keep(await startBroker());
  keep(await startSim(broker.brokers));
  const gateway = keep(await startGateway(kafka(broker.brokers, "solo")));
  const socket = keep(await connect(gateway.url));

  const userId = await request(socket, "getUserId");
  assert.equal(await nextEvent(socket, "userUniqueId"), userId);
  assert.equal((await request(socket, "userLocationUpdate", delhi, userId)).status, "success");
  assertSuccess(await nextEvent(socket, "weather.delhi.update", { timeout: 15_000 }), (d) => assert.equal(d.city, "Delhi"));
  assertSuccess(await nextEvent(socket, "cryptoTickerResponse", { timeout: 15_000 }));
  for (const event of SNAPSHOT_EVENTS) shapes[event](await nextEvent(socket, event, { timeout: 15_000, accept: success }));
  for (const [ask, answer] of [
    ["cryptoTopMoversRequest", "cryptoTopMoversResponse"],
    ["cryptoTopCoinsRequest", "cryptoTopCoinsResponse"],
    ["topNewsRequest", "newsUpdate"],
    ["stockTopPerformersRequest", "stockTopPerformersResponse"],
  ]) {
    shapes[answer](await request(socket, ask));
  }
  const commands = await dump(broker.brokers, "weather.service.command.fetch");
  assert.equal(commands.length, 1);
  assert.equal(commands[0].key, "delhi", "commands are keyed by city");
  assert.equal(JSON.parse(commands[0].payload).userId, userId);
});

test("dedupe and single flight, counted on the command topics", async (t) => {
  const keep = cleanup(t);
  const broker = keep(await startBroker());
  // No snapshots for a minute: the crypto cache stays cold unless a refresh fills it.
  keep(await startSim(broker.brokers, "ticker_every_ms = 200\nsnapshot_every_ms = 60000\nanswer_after_ms = 200"));
  const gateway = keep(await startGateway(kafka(broker.brokers, "dedupe")));
  const sockets = await Promise.all(Array.from({ length: 5 }, () => connect(gateway.url).then(keep)));

  await Promise.all(sockets.map(() => request(sockets[0], "userLocationUpdate", mumbai, "same-user")));
  const acks = await Promise.all(sockets.map((s) => request(s, "cryptoTopMoversRequest")));
  assert.deepEqual(acks.map((a) => a.status), Array(5).fill("loading"));
  for (const socket of sockets) {
    shapes.cryptoTopMoversResponse(await nextEvent(socket, "cryptoTopMoversResponse", { timeout: 15_000, accept: success }));
  }
  const fetches = await dump(broker.brokers, "weather.service.command.fetch");
  assert.equal(fetches.length, 1, "five duplicate location updates, one fetch command");
  const refreshes = await dump(broker.brokers, "crypto.service.command.refresh");
  assert.equal(refreshes.length, 1, "five concurrent cold requests, one refresh command");
});

test("two gateway nodes on one broker both deliver every event and hydrate", async (t) => {
  const keep = cleanup(t);
  const broker = keep(await startBroker());
  keep(await startSim(broker.brokers));
  const [a, b] = await Promise.all([
    startGateway(kafka(broker.brokers, "node-a")).then(keep),
    startGateway(kafka(broker.brokers, "node-b")).then(keep),
  ]);
  const onA = keep(await connect(a.url));
  const onB = keep(await connect(b.url));
  await request(onA, "userLocationUpdate", delhi, "user-a");
  await request(onB, "userLocationUpdate", delhi, "user-b");

  // Every tick reaches both nodes' clients: compare a run of sequence numbers. Ticks are keyed
  // by symbol over three partitions, so only the order within a partition is guaranteed.
  const first = await nextEvent(onA, "cryptoTickerResponse", { timeout: 15_000 });
  const seqs = (socket) => socket.received.filter((e) => e.event === "cryptoTickerResponse").map((e) => e.args[0].data.seq);
  await eventually(() => seqs(onA).filter((s) => s > first.data.seq + 10).length > 0, { what: "ten more ticks on A" });
  await eventually(() => seqs(onB).some((s) => s > first.data.seq + 10), { what: "the same ticks on B" });
  const window = (socket) =>
    seqs(socket)
      .filter((s) => s > first.data.seq && s <= first.data.seq + 10)
      .sort((x, y) => x - y);
  assert.deepEqual(window(onB), window(onA), "both nodes delivered the same ticks");
  assert.equal(window(onA).length, 10);
  // Weather fetched through node A's client reaches node B's client in the same room.
  assertSuccess(await nextEvent(onB, "weather.delhi.update", { timeout: 15_000 }));
  assertSuccess(await nextEvent(onA, "weather.delhi.update", { timeout: 15_000 }));

  for (const node of [a, b]) {
    const late = keep(await connect(node.url));
    await request(late, "userLocationUpdate", delhi, "late");
    const hydrated = late.received.map((e) => e.event);
    for (const event of ["weather.delhi.update", "cryptoTopMoversResponse", "newsUpdate"]) {
      assert.ok(hydrated.includes(event), `hydrated on ${node.url} with ${event}: ${hydrated}`);
    }
  }
});

test("malformed records land in the dead-letter topic with their reason; serving goes on", async (t) => {
  const keep = cleanup(t);
  const broker = keep(await startBroker());
  keep(await startSim(broker.brokers));
  const gateway = keep(await startGateway(kafka(broker.brokers, "dlq") + "[limits]\nmax_record_bytes = 4096\n"));
  const socket = keep(await connect(gateway.url));
  await request(socket, "userLocationUpdate", delhi);

  await produce(broker.brokers, "crypto.service.event.top-movers", "top-movers", "this is not json");
  await produce(broker.brokers, "crypto.service.event.top-coins", "top-coins", '{"topCoins": 42}');
  await produce(broker.brokers, "news.service.event.updated", "global", JSON.stringify({ articles: ["x".repeat(10_000)] }));
  const letters = await eventually(
    async () => {
      const found = await dump(broker.brokers, "flux.gateway.dead-letter").catch(() => []);
      return found.length >= 3 && found;
    },
    { what: "three dead letters" },
  );
  const byTopic = Object.fromEntries(letters.map((l) => [l.headers["x-flux-source-topic"], l]));
  assert.match(byTopic["crypto.service.event.top-movers"].headers["x-flux-reason"], /^not JSON/);
  assert.equal(byTopic["crypto.service.event.top-movers"].payload, "this is not json");
  assert.match(byTopic["crypto.service.event.top-coins"].headers["x-flux-reason"], /topCoins/);
  assert.match(byTopic["news.service.event.updated"].headers["x-flux-reason"], /^oversized/);
  for (const letter of letters) {
    assert.ok(letter.headers["x-flux-source-offset"] !== undefined, "source offset recorded");
    assert.ok(letter.headers["x-flux-plugin"], "plugin recorded");
  }
  assert.equal(await gateway.metric("flux_records_failed_total", 'plugin="crypto",topic="crypto.service.event.top-movers"'), 1);
  // A flood of bad records is a counter going up, not a log flood.
  for (let i = 0; i < 30; i++) await produce(broker.brokers, "crypto.service.event.top-movers", "top-movers", `garbage ${i}`);
  await eventually(
    async () => (await gateway.metric("flux_records_failed_total", 'plugin="crypto",topic="crypto.service.event.top-movers"')) === 31,
    { what: "every bad record counted" },
  );
  const lines = gateway.logs().split("\n").filter((l) => l.includes("record dead-lettered") && l.includes("crypto"));
  assert.ok(lines.length < 10, `${lines.length} log lines for 32 bad crypto records`);

  // Still serving: live ticks and requests.
  const since = socket.received.length;
  assertSuccess(await nextEvent(socket, "cryptoTickerResponse", { since, timeout: 10_000 }));
  shapes.cryptoTopMoversResponse(
    await eventually(async () => {
      const ack = await request(socket, "cryptoTopMoversRequest");
      return ack.status === "success" && ack;
    }, { what: "a top movers answer" }),
  );
});

test("a location update to a new city leaves the old city's room", async (t) => {
  const keep = cleanup(t);
  const broker = keep(await startBroker());
  const gateway = keep(await startGateway(kafka(broker.brokers, "rooms")));
  const socket = keep(await connect(gateway.url));
  assert.equal((await request(socket, "userLocationUpdate", delhi)).status, "success");
  assert.equal((await request(socket, "userLocationUpdate", mumbai)).status, "success");
  const weather = (city) => JSON.stringify({ city, temperatureC: 30, humidity: 50, windKph: 5, condition: "clear", observedAt: "2026-01-01T00:00:00Z" });
  await produce(broker.brokers, "weather.service.event.updated", "delhi", weather("Delhi"));
  await produce(broker.brokers, "weather.service.event.updated", "mumbai", weather("Mumbai"));
  await nextEvent(socket, "weather.mumbai.update", { timeout: 15_000 });
  await sleep(1_000); // the other partition's record has had its time
  assert.ok(await gateway.metric("flux_records_total", 'plugin="weather"') >= 2, "both records were consumed");
  assert.equal(socket.received.filter((e) => e.event === "weather.delhi.update").length, 0, "no longer in Delhi's room");
});

test("warm start: a restarted node hydrates its first client from Kafka", async (t) => {
  const keep = cleanup(t);
  const broker = keep(await startBroker());
  const sim = await startSim(broker.brokers);
  const toml = kafka(broker.brokers, "warm");
  const first = await startGateway(toml);
  const socket = await connect(first.url);
  await request(socket, "userLocationUpdate", delhi, "warm-user");
  await nextEvent(socket, "weather.delhi.update", { timeout: 15_000 });
  for (const event of SNAPSHOT_EVENTS) await nextEvent(socket, event, { timeout: 15_000, accept: success });
  socket.close();
  await first.stop();
  // Nothing new will be published: whatever the next node knows, it read back from Kafka.
  await sim.stop();

  const second = keep(await startGateway(toml));
  const ready = await (await fetch(`${second.url}/readyz`)).json();
  assert.equal(ready.cache_warmed, true);
  const client = keep(await connect(second.url));
  const ack = await request(client, "userLocationUpdate", delhi, "first-after-restart");
  assert.equal(ack.status, "success");
  const hydrated = Object.fromEntries(client.received.map((e) => [e.event, e.args[0]]));
  assertSuccess(hydrated["weather.delhi.update"], (d) => assert.equal(d.city, "Delhi"));
  for (const event of SNAPSHOT_EVENTS) shapes[event](hydrated[event]);
  assert.ok(!client.received.some((e) => e.event === "cryptoTickerResponse"), "history is not replayed to clients");
});

test("broker absent at start: serving, not ready, then ready when it arrives", async (t) => {
  const keep = cleanup(t);
  const port = await freePort();
  const brokers = `127.0.0.1:${port}`;
  const gateway = keep(await startGateway(kafka(brokers, "late-broker"), { waitReady: false }));
  assert.equal((await fetch(`${gateway.url}/healthz`)).status, 200);
  const readiness = await fetch(`${gateway.url}/readyz`);
  assert.equal(readiness.status, 503);
  assert.equal((await readiness.json()).bus_connected, false);
  const socket = keep(await connect(gateway.url));
  assert.equal(typeof (await request(socket, "getUserId")), "string", "sockets are served");
  const refused = await request(socket, "cryptoTopMoversRequest");
  assert.equal(refused.status, "error", "a refresh that cannot be sent is an error, not a silent loading");

  keep(await startBroker({ port }));
  keep(await startSim(brokers));
  await gateway.untilReady(60_000);
  await request(socket, "userLocationUpdate", delhi);
  assertSuccess(await nextEvent(socket, "cryptoTickerResponse", { timeout: 20_000 }));
  assert.equal(gateway.process.exitCode, null);
});

test("broker restarted while clients are connected: no disconnect, updates resume", async (t) => {
  const keep = cleanup(t);
  const port = await freePort();
  const sqliteFile = join(mkdtempSync(join(tmpdir(), "flux-tansu-")), "broker.db");
  let broker = await startBroker({ port, sqliteFile });
  keep({ stop: () => broker.stop() });
  keep(await startSim(broker.brokers));
  const gateway = keep(await startGateway(kafka(broker.brokers, "survivor")));
  const socket = keep(await connect(gateway.url));
  let disconnected = false;
  socket.on("disconnect", () => (disconnected = true));
  await request(socket, "userLocationUpdate", mumbai);
  const before = await nextEvent(socket, "cryptoTickerResponse", { timeout: 15_000 });
  await nextEvent(socket, "cryptoTopMoversResponse", { timeout: 15_000, accept: success });

  await broker.stop();
  await eventually(async () => !(await gateway.ready()), { what: "the gateway to notice the broker is gone" });
  const stale = await request(socket, "cryptoTopMoversRequest");
  shapes.cryptoTopMoversResponse(stale);
  assert.equal(socket.connected, true);
  await sleep(1_000);

  broker = await startBroker({ port, sqliteFile });
  await gateway.untilReady(60_000);
  const resumed = await nextEvent(socket, "cryptoTickerResponse", {
    timeout: 30_000,
    accept: (p) => p.data.seq > before.data.seq + 5,
  });
  assert.ok(resumed.data.seq > before.data.seq);
  assert.equal(disconnected, false, "the client never noticed");
  assert.equal(gateway.process.exitCode, null, "no crash");
});
