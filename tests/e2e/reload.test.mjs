// Hot reload against a running gateway with live clients: plugins are replaced, broken,
// rolled back, added and removed in its plugin directory while events flow.

import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { FAST_DEMO, deploy, eventually, nextEvent, relayVersion, request, sleep, startGateway, wasmDir } from "./harness.mjs";

const GATEWAY = `${FAST_DEMO}
[reload]
debounce_ms = 50
[circuit]
failures = 3
window_ms = 10000
`;

const relay = relayVersion;
const deployAs = (dir, name, bytes) => deploy(join(dir, name), bytes);

async function setup(t, config = GATEWAY) {
  const dir = mkdtempSync(join(tmpdir(), "flux-reload-"));
  deployAs(dir, "relay.wasm", relay("v0000000"));
  const gateway = await startGateway(config, { plugins: dir });
  t.after(async () => {
    await gateway.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const open = () => gateway.open();
  const admin = async () => (await gateway.admin("/admin/plugins")).json();
  return { dir, gateway, open, admin };
}

const ticks = (socket) => socket.received.filter((e) => e.event === "relayTick").map((e) => e.args[0].data);
const tagged = (tag) => ({ timeout: 10_000, accept: (p) => p.data.tag === tag });

test("20 hot swaps under live traffic: no disconnect, no lost or repeated event", async (t) => {
  const { dir, gateway, open, admin } = await setup(t);
  const clients = await Promise.all([open(), open(), open()]);
  let disconnects = 0;
  for (const client of clients) {
    client.on("disconnect", () => disconnects++);
    assert.equal((await request(client, "relayJoin")).data.tag, "v0000000");
  }
  await nextEvent(clients[0], "relayTick");

  const swapTimes = [];
  for (let i = 1; i <= 20; i++) {
    const tag = `v${String(i).padStart(7, "0")}`;
    const since = clients.map((c) => c.received.length);
    const written = performance.now();
    deployAs(dir, "relay.wasm", relay(tag));
    await Promise.all(clients.map((c, n) => nextEvent(c, "relayTick", { ...tagged(tag), since: since[n] })));
    swapTimes.push(performance.now() - written);
    // Live traffic through every version: a swap that is quick (its version already in the
    // precompiled cache, its write settled at once) must not leave the stream too short to
    // show that none was lost.
    await Promise.all(
      clients.map((c) =>
        eventually(() => ticks(c).filter((tick) => tick.tag === tag).length >= 5, { every: 10, what: `five ticks of ${tag}` }),
      ),
    );
  }
  await sleep(200);
  const view = (await admin()).plugins.find((p) => p.name === "relay");
  assert.equal(view.version, "v0000020");
  assert.equal(view.state, "active");

  for (const client of clients) {
    const seqs = ticks(client).map((tick) => tick.seq);
    assert.ok(seqs.length > 100, `a steady stream: ${seqs.length} ticks`);
    for (let i = 1; i < seqs.length; i++) {
      assert.equal(seqs[i], seqs[i - 1] + 1, `tick ${seqs[i - 1]} is followed by ${seqs[i]}: none lost, none repeated`);
    }
    const tags = ticks(client).map((tick) => tick.tag);
    for (let i = 1; i < tags.length; i++) {
      assert.ok(tags[i] >= tags[i - 1], `never an older version after a newer one (${tags[i - 1]} then ${tags[i]})`);
    }
  }
  assert.equal(disconnects, 0);
  assert.equal(await gateway.metric("flux_plugin_reloads_total", 'plugin="relay",outcome="loaded"'), 21);
  swapTimes.sort((a, b) => a - b);
  console.log(`# save-to-live over 20 swaps: median ${swapTimes[10].toFixed(0)} ms, max ${swapTimes[19].toFixed(0)} ms`);
});

test("a half-written file, a non-wasm file and a wrong-major plugin are rejected; the old version serves", async (t) => {
  const { dir, gateway, open, admin } = await setup(t);
  const client = await open();
  await request(client, "relayJoin");
  const rejectedFor = (file) => async () => (await admin()).rejected.find((r) => r.source.endsWith(file));

  // Written in place and caught half-way: never loaded.
  const next = relay("v0000001");
  writeFileSync(join(dir, "relay.wasm"), next.subarray(0, next.length >> 1));
  const half = await eventually(rejectedFor("relay.wasm"), { what: "the half-written file to be rejected" });
  assert.match(half.reason, /does not compile/);
  const since = client.received.length;
  await nextEvent(client, "relayTick", { ...tagged("v0000000"), since });

  writeFileSync(join(dir, "garbage.wasm"), "this is not webassembly");
  const garbage = await eventually(rejectedFor("garbage.wasm"), { what: "the non-wasm file to be rejected" });
  assert.equal(garbage.reason, "not a WebAssembly file");
  // Reading it to load it is no change: it is rejected (and logged) once until it changes.
  await sleep(1_000);
  const rejections = () => gateway.logs().split("\n").filter((l) => /plugin rejected/.test(l) && l.includes("garbage.wasm"));
  assert.equal(rejections().length, 1, rejections().join("\n"));
  writeFileSync(join(dir, "garbage.wasm"), "still not webassembly");
  await eventually(() => rejections().length === 2, { what: "a changed file to be tried again" });

  writeFileSync(join(dir, "next-major.wasm"), readFileSync(join(wasmDir, "flux_fixture_wrong_major.wasm")));
  const major = await eventually(rejectedFor("next-major.wasm"), { what: "the wrong-major plugin to be rejected" });
  assert.match(major.reason, /flux:gateway@1\.0\.0.*flux:gateway@0\.1\.1/);

  assert.deepEqual((await admin()).plugins.map((p) => [p.name, p.version]), [["relay", "v0000000"]]);
  // Completing the write loads it.
  writeFileSync(join(dir, "relay.wasm"), next);
  await nextEvent(client, "relayTick", tagged("v0000001"));
  assert.equal((await admin()).rejected.some((r) => r.source.endsWith("relay.wasm")), false);
});

test("a version that starts trapping after deploy is rolled back automatically", async (t) => {
  const { dir, gateway, open, admin } = await setup(t);
  const client = await open();
  await request(client, "relayJoin");
  deployAs(dir, "relay.wasm", relay("v0000001"));
  await nextEvent(client, "relayTick", tagged("v0000001"));

  // Passes its canary and serves for a second, then fails on every record.
  const broken = relay("trap0002", Date.now() + 1_000);
  deployAs(dir, "relay.wasm", broken);
  await nextEvent(client, "relayTick", tagged("trap0002"));
  const view = await eventually(
    async () => (await admin()).plugins.find((p) => p.name === "relay" && p.state === "rolled_back"),
    { what: "the rollback" },
  );
  assert.equal(view.version, "v0000001");
  assert.equal(view.circuit, "closed", "the version rolled back to is served");
  assert.match(view.last_error, /trap0002.*opened its circuit.*rolled back to v0000001/);
  const since = client.received.length;
  await nextEvent(client, "relayTick", { ...tagged("v0000001"), since });
  assert.equal(await gateway.metric("flux_plugin_reloads_total", 'plugin="relay",outcome="rolled_back"'), 1);
  // The same broken bytes are not loaded again.
  deployAs(dir, "relay.wasm", broken);
  const refused = await eventually(async () => (await admin()).rejected.find((r) => r.source.endsWith("relay.wasm")), {
    what: "the rolled-back build to be refused",
  });
  assert.match(refused.reason, /rolled back/);
});

test("a plugin added and removed at runtime", async (t) => {
  const { dir, open, admin } = await setup(t);
  const client = await open();
  assert.equal((await request(client, "exampleRequest")).status, "error", "no such domain yet");

  deployAs(dir, "example.wasm", readFileSync(join(wasmDir, "flux_template.wasm")));
  await eventually(async () => (await admin()).plugins.some((p) => p.name === "example"), { what: "the new plugin" });
  assert.equal((await request(client, "exampleRequest")).status, "loading", "the new domain answers");

  rmSync(join(dir, "example.wasm"));
  await eventually(async () => !(await admin()).plugins.some((p) => p.name === "example"), { what: "the unload" });
  const gone = await request(client, "exampleRequest");
  assert.equal(gone.status, "error");
  assert.match(gone.message, /unknown event/);
  await request(client, "relayJoin");
  await nextEvent(client, "relayTick", tagged("v0000000"));
});

test("a version that declares other topics: consumption follows", async (t) => {
  const { dir, open, admin } = await setup(t, GATEWAY.replace("snapshot_every_ms = 60000", "snapshot_every_ms = 200"));
  const client = await open();
  await request(client, "relayJoin");
  await nextEvent(client, "relayTick", tagged("v0000000"));

  deployAs(dir, "relay.wasm", relay("news0001"));
  const news = await nextEvent(client, "relayTick", tagged("news0001"));
  assert.equal(news.data.topic, "news.service.event.updated");
  assert.deepEqual((await admin()).plugins.find((p) => p.name === "relay").consumes, ["news.service.event.updated"]);
  const since = client.received.length;
  await sleep(600);
  const after = ticks({ received: client.received.slice(since) });
  assert.ok(after.length > 0, "news keeps flowing");
  assert.ok(after.every((tick) => tick.topic === "news.service.event.updated"), "the ticker is no longer consumed");
});

test("a rollback across a change of topics: consumption follows the version rolled back to", async (t) => {
  const { dir, open, admin } = await setup(t, GATEWAY.replace("snapshot_every_ms = 60000", "snapshot_every_ms = 200"));
  const client = await open();
  await request(client, "relayJoin");
  await nextEvent(client, "relayTick", tagged("v0000000"));

  deployAs(dir, "relay.wasm", relay("newstrap", Date.now() + 1_500));
  const news = await nextEvent(client, "relayTick", tagged("newstrap"));
  assert.equal(news.data.topic, "news.service.event.updated");
  const view = await eventually(
    async () => (await admin()).plugins.find((p) => p.name === "relay" && p.state === "rolled_back"),
    { what: "the rollback" },
  );
  assert.equal(view.version, "v0000000");
  assert.deepEqual(view.consumes, ["crypto.service.event.ticker"]);
  const since = client.received.length;
  const back = await nextEvent(client, "relayTick", { ...tagged("v0000000"), since });
  assert.equal(back.data.topic, "crypto.service.event.ticker", "the ticker is consumed again");
  await sleep(600);
  const after = ticks({ received: client.received.slice(since) });
  assert.ok(after.length > 10, `the ticker flows: ${after.length} ticks`);
  assert.ok(after.every((tick) => tick.tag === "v0000000"), "nothing reaches the rolled-back version");
});

test("client requests that make a plugin trap never roll a healthy version back", async (t) => {
  const { dir, gateway, open, admin } = await setup(t, `${GATEWAY}
[socket]
events_per_sec = 1000
event_burst = 1000
`);
  const attacker = await open();
  const user = await open();
  await request(user, "relayJoin");
  deployAs(dir, "relay.wasm", relay("v0000001"));
  await nextEvent(user, "relayTick", tagged("v0000001"));

  for (let i = 0; i < 20; i++) {
    const answer = await request(attacker, "relayCrash");
    assert.equal(answer.status, "error");
    assert.doesNotMatch(answer.message, /panic|trap|wasm/i, "no internals reach the client");
  }
  assert.ok((await gateway.metric("flux_plugin_errors_total", 'plugin="relay",kind="trap"')) >= 20);
  const view = (await admin()).plugins.find((p) => p.name === "relay");
  assert.equal(view.version, "v0000001");
  assert.equal(view.state, "active");
  assert.equal(view.circuit, "closed");
  assert.equal(view.failures_in_window, 1, "one socket is charged once per window");
  assert.equal((await request(user, "relayJoin")).data.tag, "v0000001", "other users are served");
  assert.equal(await gateway.metric("flux_plugin_reloads_total", 'plugin="relay",outcome="rolled_back"'), 0);

  // A real fault of a new version still rolls it back.
  deployAs(dir, "relay.wasm", relay("trap0002", Date.now() + 1_000));
  await eventually(
    async () => (await admin()).plugins.find((p) => p.name === "relay" && p.state === "rolled_back" && p.version === "v0000001"),
    { what: "the rollback of the faulty version" },
  );
});
