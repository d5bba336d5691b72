// The whole client contract (shared/flux-socket-events.md), driven with the official
// socket.io-client against a real gateway process running the domain plugins and the
// simulated upstream services.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { connect, connectError, delhi, eventually, mumbai, nextEvent, request, sleep, startGateway, withTimeout } from "./harness.mjs";
import { SNAPSHOT_EVENTS, UUID, assertErrorShape, assertSuccess, shapes } from "./shapes.mjs";

describe("a warm gateway", () => {
  let gateway;
  const open = () => gateway.open();

  before(async () => {
    gateway = await startGateway(
      "[demo]\nenabled = true\nticker_every_ms = 100\nsnapshot_every_ms = 500\nanswer_after_ms = 20\n",
    );
    const warm = await open();
    await request(warm, "userLocationUpdate", delhi);
    for (const event of SNAPSHOT_EVENTS) await nextEvent(warm, event);
    await nextEvent(warm, "weather.delhi.update");
  });

  after(async () => {
    if (gateway) await gateway.stop();
  });

  test("getUserId answers a server UUID as the ack and as userUniqueId", async () => {
    const socket = await open();
    const event = nextEvent(socket, "userUniqueId");
    const ack = await request(socket, "getUserId");
    assert.match(ack, UUID);
    assert.equal(await event, ack);
    assert.equal(await request(socket, "getUserId"), ack, "stable for the connection");
    const other = await open();
    assert.notEqual(await request(other, "getUserId"), ack, "unique per client");
  });

  test("userLocationUpdate hydrates every joined room before it is acknowledged", async () => {
    const socket = await open();
    const userId = await request(socket, "getUserId");
    const ack = await request(socket, "userLocationUpdate", delhi, userId);
    assert.equal(ack.status, "success");
    // Hydration is written to the socket before the ack: the cached state is already here.
    const arrived = socket.received.map((e) => e.event);
    for (const event of [...SNAPSHOT_EVENTS, "weather.delhi.update"]) {
      assert.ok(arrived.includes(event), `hydrated with ${event}; got ${arrived}`);
    }
    for (const event of SNAPSHOT_EVENTS) shapes[event](await nextEvent(socket, event));
    assertSuccess(await nextEvent(socket, "weather.delhi.update"), (d) => {
      assert.equal(d.city, "Delhi");
      assert.equal(typeof d.temperatureC, "number");
    });
  });

  test("live pushes: the ticker relayed, never cached, and snapshots refreshed", async () => {
    const socket = await open();
    await request(socket, "userLocationUpdate", mumbai);
    const since = socket.received.length;
    const first = await nextEvent(socket, "cryptoTickerResponse", { since });
    assertSuccess(first, (d) => {
      assert.equal(typeof d.symbol, "string");
      assert.equal(typeof d.price, "number");
    });
    const later = await nextEvent(socket, "cryptoTickerResponse", { since, accept: (p) => p.data.seq > first.data.seq });
    assert.ok(later.data.seq > first.data.seq);
    for (const event of SNAPSHOT_EVENTS.filter((e) => e !== "stockTopPerformersResponse")) {
      shapes[event](await nextEvent(socket, event, { since }));
    }
    const fresh = await open();
    await request(fresh, "userLocationUpdate", mumbai);
    assert.ok(!fresh.received.some((e) => e.event === "cryptoTickerResponse" && e.args[0].data.seq <= first.data.seq),
      "a joining client is not replayed old ticks");
  });

  test("the four request events are answered from the cache", async () => {
    const socket = await open();
    for (const [ask, answer] of [
      ["cryptoTopMoversRequest", "cryptoTopMoversResponse"],
      ["cryptoTopCoinsRequest", "cryptoTopCoinsResponse"],
      ["topNewsRequest", "newsUpdate"],
      ["stockTopPerformersRequest", "stockTopPerformersResponse"],
    ]) {
      const since = socket.received.length;
      const ack = await request(socket, ask);
      shapes[answer](ack);
      shapes[answer](await nextEvent(socket, answer, { since }));
    }
  });

  test("a client receives only the rooms it joined", async () => {
    const inDelhi = await open();
    const inMumbai = await open();
    const idle = await open();
    await request(inDelhi, "userLocationUpdate", delhi, "user-delhi");
    await request(inMumbai, "userLocationUpdate", mumbai, "user-mumbai");
    // A moved location is a new fetch: Mumbai gets a live update that Delhi must not see.
    const since = inMumbai.received.length;
    await request(inMumbai, "userLocationUpdate", { ...mumbai, lat: "19.10" }, "user-mumbai");
    await nextEvent(inMumbai, "weather.mumbai.update", { since });
    await nextEvent(inDelhi, "cryptoTickerResponse");
    await sleep(300);
    assert.ok(!inDelhi.received.some((e) => e.event.startsWith("weather.mumbai")), "Delhi never gets Mumbai's weather");
    assert.ok(!inMumbai.received.some((e) => e.event.startsWith("weather.delhi")), "Mumbai never gets Delhi's weather");
    assert.deepEqual(idle.received, [], "a client that joined nothing receives nothing");
  });

  test("city names are normalised into one room", async () => {
    const socket = await open();
    const ack = await request(socket, "userLocationUpdate", { ...delhi, city: "  new   DELHI " }, "user-nd");
    assert.equal(ack.status, "success");
    assertSuccess(await nextEvent(socket, "weather.new-delhi.update"), (d) => assert.equal(d.cityKey, "new-delhi"));
  });

  test("location updates fetch at most once per city per window, and not while its weather is fresh", async () => {
    const fetches = () => gateway.metric("flux_bus_published_total", 'topic="weather.service.command.fetch"');
    const socket = await open();
    const before = await fetches();
    const pune = { city: "Pune", region: "Maharashtra", country: "IN", lat: "18.52", lon: "73.85" };
    await Promise.all(Array.from({ length: 5 }, () => request(socket, "userLocationUpdate", pune, "user-pune")));
    assert.equal(await fetches(), before + 1, "five duplicates, one command");
    assert.ok((await gateway.metric("flux_publish_deduplicated_total", 'topic="weather.service.command.fetch"')) >= 4);
    await request(socket, "userLocationUpdate", { ...pune, lat: "18.60" }, "another-user");
    assert.equal(await fetches(), before + 1, "another user in the same city: the same flight");
    await request(socket, "userLocationUpdate", { ...pune, city: "Nagpur" }, "user-pune");
    assert.equal(await fetches(), before + 2, "another city is another flight");
    await nextEvent(socket, "weather.pune.update");
    await sleep(2_100); // past the dedupe window
    await request(socket, "userLocationUpdate", pune, "late-user");
    assert.equal(await fetches(), before + 2, "fresh weather is answered from the cache");
  });

  test("1,000 clients in one city: one fetch command", { timeout: 120_000 }, async () => {
    const fetches = () => gateway.metric("flux_bus_published_total", 'topic="weather.service.command.fetch"');
    const before = await fetches();
    const crowd = [];
    for (let batch = 0; batch < 10; batch++) crowd.push(...(await Promise.all(Array.from({ length: 100 }, () => connect(gateway.url)))));
    try {
      const kolkata = { city: "Kolkata", region: "West Bengal", country: "IN", lat: "22.57", lon: "88.36" };
      const acks = await Promise.all(crowd.map((socket, i) => request(socket, "userLocationUpdate", kolkata, `crowd-${i}`)));
      assert.ok(acks.every((ack) => ack.status === "success"));
      assert.equal(await fetches(), before + 1, "one command for the whole city");
      await Promise.all(crowd.slice(0, 50).map((socket) => nextEvent(socket, "weather.kolkata.update", { timeout: 10_000 })));
    } finally {
      for (const socket of crowd) socket.close();
    }
  });

  test("malformed payloads are answered with an error and the connection stays up", async () => {
    const socket = await open();
    const cases = [
      ["userLocationUpdate", "garbage"],
      ["userLocationUpdate", { city: "" }],
      ["userLocationUpdate", { city: "Delhi", lat: "north" }],
      ["userLocationUpdate", { city: "Delhi", lon: 500 }],
      ["userLocationUpdate", null],
      ["noSuchEvent", { x: 1 }],
    ];
    for (const [event, payload] of cases) {
      const since = socket.received.length;
      const ack = await request(socket, event, payload);
      assertErrorShape(ack);
      assert.deepEqual(await nextEvent(socket, "error", { since }), ack, "also sent as an error event");
    }
    assert.ok(socket.connected);
    assert.match(await request(socket, "getUserId"), UUID, "still served");
    assert.equal(socket.received.filter((e) => e.event.startsWith("weather.")).length, 0, "no room joined");
  });

  test("an oversized message or too many attachments closes only the sender's connection", async () => {
    const bystander = await open();
    const oversized = [
      ["a 1 MB websocket message", "x".repeat(1 << 20)],
      ["five binary attachments", ...Array.from({ length: 5 }, () => Buffer.alloc(8))],
      ["a 128 KB attachment", Buffer.alloc(128 << 10)],
    ];
    for (const [what, ...payload] of oversized) {
      const sender = await open();
      const closed = new Promise((done) => sender.once("disconnect", done));
      sender.emit("userLocationUpdate", ...payload);
      const reason = await withTimeout(closed, 5_000, `the sender of ${what} to be disconnected`);
      assert.match(reason, /transport (close|error)/, what);
    }
    assert.ok(bystander.connected);
    assert.match(await request(bystander, "getUserId"), UUID, "the others are still served");
    assert.ok((await gateway.metric("flux_disconnects_total", 'reason="transport error"')) >= 1);
  });

  test("two clients at once receive the same live stream", async () => {
    const [a, b] = await Promise.all([open(), open()]);
    await Promise.all([request(a, "userLocationUpdate", delhi), request(b, "userLocationUpdate", mumbai)]);
    const [sinceA, sinceB] = [a.received.length, b.received.length];
    const tickA = await nextEvent(a, "cryptoTickerResponse", { since: sinceA });
    const tickB = await nextEvent(b, "cryptoTickerResponse", { since: sinceB, accept: (p) => p.data.seq === tickA.data.seq });
    assert.deepEqual(tickB, tickA);
  });

  test("operations: health, readiness, metrics and connection logs", async () => {
    assert.equal((await fetch(`${gateway.url}/healthz`)).status, 200);
    const ready = await (await fetch(`${gateway.url}/readyz`)).json();
    assert.equal(ready.plugins, 4);
    assert.ok((await gateway.metric("flux_sockets_connected")) >= 1);
    const plugins = await (await gateway.admin("/admin/plugins")).json();
    assert.deepEqual(plugins.plugins.map((p) => p.name).sort(), ["crypto", "news", "stocks", "weather"]);
    const socket = await open();
    socket.close();
    await sleep(200);
    assert.match(gateway.logs(), /client connected.*transport=Websocket.*remote=127\.0\.0\.1:\d+.*user_agent=/);
    assert.match(gateway.logs(), /client disconnected.*reason="client disconnect"/);
    const text = await (await gateway.admin("/metrics")).text();
    assert.doesNotMatch(text, /delhi|mumbai|user-/i, "no high-cardinality labels");
  });
});

describe("a cold gateway", () => {
  let gateway;
  const open = () => gateway.open();

  before(async () => {
    // Snapshots only after 4 s: until then the cache is cold unless a refresh fills it.
    gateway = await startGateway(
      "[demo]\nenabled = true\nticker_every_ms = 100\nsnapshot_every_ms = 4000\nanswer_after_ms = 50\n",
    );
  });

  after(async () => {
    if (gateway) await gateway.stop();
  });

  test("cryptoTopMoversRequest: loading, one refresh for many clients, then success", async () => {
    const refreshes = () => gateway.metric("flux_bus_published_total", 'topic="crypto.service.command.refresh"');
    const clients = await Promise.all(Array.from({ length: 5 }, open));
    const acks = await Promise.all(clients.map((c) => request(c, "cryptoTopMoversRequest")));
    for (const ack of acks) {
      assert.equal(ack.status, "loading");
      assert.ok(ack.message.length > 0);
    }
    assert.equal(await refreshes(), 1, "single flight: one refresh command");
    for (const client of clients) shapes.cryptoTopMoversResponse(await nextEvent(client, "cryptoTopMoversResponse", { accept: (p) => p.status === "success" }));
    shapes.cryptoTopMoversResponse(await request(clients[0], "cryptoTopMoversRequest"));
  });

  test("topNewsRequest: loading, then the refreshed news", async () => {
    const socket = await open();
    const ack = await request(socket, "topNewsRequest");
    assert.equal(ack.status, "loading");
    shapes.newsUpdate(await nextEvent(socket, "newsUpdate", { accept: (p) => p.status === "success" }));
    assert.equal(await gateway.metric("flux_bus_published_total", 'topic="news.service.command.refresh"'), 1);
  });

  test("cryptoTopCoinsRequest: loading without a refresh, then the next event answers", async () => {
    const socket = await open();
    const refreshesBefore = await gateway.metric("flux_bus_published_total", 'topic="crypto.service.command.refresh"');
    const ack = await request(socket, "cryptoTopCoinsRequest");
    assert.equal(ack.status, "loading");
    assert.equal(await gateway.metric("flux_bus_published_total", 'topic="crypto.service.command.refresh"'), refreshesBefore);
    shapes.cryptoTopCoinsResponse(
      await nextEvent(socket, "cryptoTopCoinsResponse", { timeout: 8_000, accept: (p) => p.status === "success" }),
    );
  });

  test("stockTopPerformersRequest never triggers a refresh; the scheduler does", async () => {
    const refreshes = () => gateway.metric("flux_bus_published_total", 'topic="stock.service.command.refresh"');
    assert.equal(await refreshes(), 1, "the scheduler refreshed once at start");
    const socket = await open();
    for (let i = 0; i < 3; i++) shapes.stockTopPerformersResponse(await request(socket, "stockTopPerformersRequest"));
    assert.equal(await refreshes(), 1, "requests are served from cache only");
  });
});

describe("limits on the edge", () => {
  let gateway;
  const open = () => gateway.open();

  before(async () => {
    gateway = await startGateway(
      "[demo]\nenabled = true\n[socket]\nevents_per_sec = 5\nevent_burst = 10\nrefused_events_before_disconnect = 20\nmax_connections_per_address = 4\n",
    );
  });

  after(async () => {
    if (gateway) await gateway.stop();
  });

  /** Emits `count` getUserId at once; the acks, in order. */
  const burst = (socket, count) => Promise.all(Array.from({ length: count }, () => request(socket, "getUserId")));

  test("a burst over the event rate is refused with an error, and the socket stays usable", async () => {
    const socket = await open();
    const refusedBefore = await gateway.metric("flux_events_refused_total");
    const acks = await burst(socket, 25);
    const answered = acks.filter((ack) => typeof ack === "string");
    const refused = acks.filter((ack) => ack.status === "error");
    assert.equal(answered.length, 10, "the burst");
    assert.equal(refused.length, 15);
    for (const ack of refused) assert.equal(ack.message, "too many events: slow down");
    assert.equal(await gateway.metric("flux_events_refused_total"), refusedBefore + 15);
    await sleep(1_100);
    assert.ok(socket.connected);
    assert.match(await request(socket, "getUserId"), UUID, "served again once its rate allows");
    socket.close();
  });

  test("a socket that keeps flooding is disconnected with a reason; the others are not", async () => {
    const [flooder, bystander] = await Promise.all([open(), open()]);
    const disconnected = new Promise((done) => flooder.once("disconnect", done));
    for (let i = 0; i < 60; i++) flooder.emit("getUserId");
    assert.equal(await withTimeout(disconnected, 5_000, "the flooder to be disconnected"), "io server disconnect");
    assert.ok(flooder.received.some((e) => e.event === "error" && e.args[0].message === "too many events: disconnected"));
    assert.ok((await gateway.metric("flux_abuse_disconnects_total")) >= 1);
    assert.match(await request(bystander, "getUserId"), UUID);
    bystander.close();
  });

  test("one socket flooding distinct cities is refused past its command budget; other users still fetch", async () => {
    const fetches = () => gateway.metric("flux_bus_published_total", 'topic="weather.service.command.fetch"');
    const flooder = await open();
    const before = await fetches();
    const acks = [];
    for (let i = 0; i < 8; i++) acks.push(await request(flooder, "userLocationUpdate", { ...delhi, city: `Floodtown ${i}` }));
    const refused = acks.filter((ack) => ack.status === "error");
    assert.equal(acks.filter((ack) => ack.status === "success").length, 5, "its burst of commands");
    assert.equal(refused.length, 3, "refused, never acked success");
    for (const ack of refused) assert.match(ack.message, /the weather service is busy; try again shortly/);
    assert.equal(await fetches(), before + 5);
    assert.ok((await gateway.metric("flux_commands_refused_total")) >= 3);
    const other = await open();
    assert.equal((await request(other, "userLocationUpdate", { ...delhi, city: "Calmville" })).status, "success");
    assert.equal(await fetches(), before + 6, "another user's fetch is not starved");
    flooder.close();
    other.close();
  });

  test("connections per address are capped; a closed one frees its place", async () => {
    await sleep(200); // the previous tests' sockets are closed
    const sockets = await Promise.all(Array.from({ length: 4 }, () => open()));
    assert.equal(await connectError(gateway.url), "too many connections from this address");
    assert.ok((await gateway.metric("flux_handshakes_refused_address_total")) >= 1);
    sockets[0].close();
    await eventually(async () => {
      const socket = await connect(gateway.url).catch(() => null);
      socket?.close();
      return socket !== null;
    }, { what: "a place to free up" });
    for (const socket of sockets) socket.close();
  });
});

describe("a disconnect the client keeps sending into", () => {
  let gateway;

  before(async () => {
    gateway = await startGateway("[demo]\nenabled = true\n[socket]\nevents_per_sec = 5\nevent_burst = 10\nrefused_events_before_disconnect = 20\n");
  });

  after(async () => {
    if (gateway) await gateway.stop();
  });

  // The flooder's last events are still unread on the server when it closes the connection;
  // a close with unread data is a TCP reset, which made the client's kernel discard the
  // DISCONNECT (and whatever came before it) now and then: "transport close", no reason.
  test("a flooder told to go always learns why, however much it sent after", async () => {
    const reasons = {};
    for (let round = 0; round < 100; round++) {
      const flooder = await gateway.open();
      const disconnected = new Promise((done) => flooder.once("disconnect", done));
      for (let i = 0; i < 60; i++) flooder.emit("getUserId");
      const reason = await withTimeout(disconnected, 5_000, "the flooder to be disconnected");
      reasons[reason] = (reasons[reason] ?? 0) + 1;
    }
    assert.deepEqual(reasons, { "io server disconnect": 100 });
  });
});

describe("a gateway with a room cap", () => {
  let gateway;

  before(async () => {
    gateway = await startGateway("[demo]\nenabled = true\n[socket]\nmax_rooms = 3\n");
  });

  after(async () => {
    if (gateway) await gateway.stop();
  });

  test("a join past socket.max_rooms is refused with an error; the rooms within it are served", async () => {
    const socket = await gateway.open();
    const ack = await request(socket, "userLocationUpdate", delhi);
    assert.deepEqual(ack, { status: "error", message: "userLocationUpdate: this connection is in as many rooms as it may be" });
    assertSuccess(await nextEvent(socket, "cryptoTickerResponse"), () => {});
    assert.equal(await gateway.metric("flux_joins_refused_total"), 1);
    assert.ok(socket.connected);
  });
});
