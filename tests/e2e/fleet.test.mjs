// Fleet rollout over Kafka: three gateway nodes with empty plugin directories on one tansu
// broker; plugins reach them only through `flux-gateway plugin publish`, signed. The tests
// share the broker and the nodes and run in order: publish, roll out under traffic, canary and
// promote, a canary that traps halting the rollout, untrusted and tampered releases, a restart,
// and removal. Clients are the official socket.io-client, one or more per node.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import {
  connect,
  deploy,
  eventually,
  gatewayBin,
  nextEvent,
  probeBin,
  relayVersion,
  request,
  sleep,
  startBroker,
  startGateway,
  startSim,
} from "./harness.mjs";

const NODES = ["node-a", "node-b", "node-c"];
const work = mkdtempSync(join(tmpdir(), "flux-fleet-"));
let broker;
let sim;
let publicKey;
const nodes = {};

/** Runs `flux-gateway ARGS` against the broker; resolves with its exit code and output. */
function cli(...args) {
  return new Promise((done) => {
    execFile(gatewayBin, [...args, "--brokers", broker.brokers], { timeout: 60_000 }, (error, stdout, stderr) =>
      done({ code: error ? (error.code ?? 1) : 0, stdout, stderr }),
    );
  });
}

async function publish(tag, { armedAt = 0, key = join(work, "publisher.key"), extra = [] } = {}) {
  const file = join(work, `relay-${tag}.wasm`);
  writeFileSync(file, relayVersion(tag, armedAt));
  const published = await cli("plugin", "publish", file, "--key", key, ...extra);
  assert.equal(published.code, 0, `publish ${tag}: ${published.stderr}`);
  return published.stdout;
}

function nodeConfig(name) {
  return `
[kafka]
brokers = "${broker.brokers}"
node_id = "${name}"
[fleet]
trusted_keys = ["${publicKey}"]
status_every_ms = 500
[reload]
precompiled_dir = "${join(work, name, "precompiled")}"
[circuit]
failures = 3
window_ms = 10000
`;
}

async function startNode(name, { waitReady = false } = {}) {
  const plugins = join(work, name, "plugins");
  mkdirSync(plugins, { recursive: true });
  nodes[name] = await startGateway(nodeConfig(name), { plugins, waitReady });
  return nodes[name];
}

/** The tag of the relay version a fresh client on `node` is served. */
async function servedTag(node) {
  const socket = await connect(node.url);
  try {
    const answer = await request(socket, "relayJoin");
    return answer.status === "success" ? answer.data.tag : `error: ${answer.message}`;
  } finally {
    socket.close();
  }
}

const tags = async () => Object.fromEntries(await Promise.all(NODES.map(async (n) => [n, await servedTag(nodes[n])])));

async function status() {
  const shown = await cli("plugin", "status");
  assert.equal(shown.code, 0, shown.stderr);
  return shown.stdout;
}

/** What the status table says of `node`'s relay. */
async function relayCell(node) {
  const [header, ...rows] = (await status()).split("\n");
  const columns = header.split(/\s{2,}/);
  const row = rows.find((r) => r.startsWith(`${node} `));
  return row ? row.split(/\s{2,}/)[columns.indexOf("relay")] : undefined;
}

before(async () => {
  broker = await startBroker();
  const keygen = await new Promise((done) =>
    execFile(gatewayBin, ["plugin", "keygen", "--out", join(work, "publisher.key")], (e, out) => done(out)),
  );
  publicKey = keygen.trim();
  assert.match(publicKey, /^[A-Za-z0-9+/]{43}=$/);
  await new Promise((done) => execFile(gatewayBin, ["plugin", "keygen", "--out", join(work, "untrusted.key")], done));
  sim = await startSim(broker.brokers, "ticker_every_ms = 50\nsnapshot_every_ms = 60000\nanswer_after_ms = 20");
  await Promise.all(NODES.map((name) => startNode(name)));
});

after(async () => {
  for (const node of Object.values(nodes)) await node.stop().catch(() => {});
  await sim?.stop().catch(() => {});
  await broker?.stop().catch(() => {});
  rmSync(work, { recursive: true, force: true });
});

test("publish: every node serves the plugin, with no file on any of them", async () => {
  const started = performance.now();
  await publish("fleet-v1");
  await Promise.all(NODES.map((n) => nodes[n].untilReady(30_000)));
  await eventually(async () => Object.values(await tags()).every((t) => t === "fleet-v1"), { what: "every node to serve fleet-v1" });
  console.log(`# publish to live on three nodes: ${(performance.now() - started).toFixed(0)} ms`);
  for (const name of NODES) {
    const view = (await (await nodes[name].admin("/admin/plugins")).json()).plugins.find((p) => p.name === "relay");
    assert.equal(view.source, "topic");
    assert.match(view.origin, /fleet topic \(stage all\)/);
  }
  await eventually(async () => (await relayCell("node-b"))?.startsWith("fleet-v1 active"), { what: "the status table" });
});

test("a new version rolls out to every node under live traffic: no disconnect, no lost or repeated event", async () => {
  const clients = await Promise.all(NODES.map((n) => connect(nodes[n].url)));
  let disconnects = 0;
  for (const client of clients) {
    client.on("disconnect", () => disconnects++);
    assert.equal((await request(client, "relayJoin")).data.tag, "fleet-v1");
  }
  await Promise.all(clients.map((c) => nextEvent(c, "relayTick")));
  // In chunks of 50 KB: the path a large (Python) component takes.
  const out = await publish("fleet-v2", { extra: ["--chunk-bytes", "50000"] });
  assert.match(out, /in [3-9] record\(s\)/);
  await Promise.all(
    clients.map((c) => nextEvent(c, "relayTick", { timeout: 20_000, accept: (p) => p.data.tag === "fleet-v2" })),
  );
  // Long enough after the swap that it lies well inside the window checked below.
  await sleep(1_500);
  for (const client of clients) {
    const ticks = client.received.filter((e) => e.event === "relayTick").map((e) => e.args[0].data);
    assert.ok(ticks.length > 30, `a steady stream: ${ticks.length} ticks`);
    for (let i = 1; i < ticks.length; i++) {
      assert.ok(ticks[i].tag >= ticks[i - 1].tag, "never the old version after the new one");
    }
    // Ticks are keyed by symbol over three partitions: only the order within one is kept, so
    // compare the set. Every tick between the first few (the join cut the partitions at
    // different ticks) and the last few (still in flight) arrived exactly once.
    const seqs = ticks.map((t) => t.seq).sort((a, b) => a - b);
    const settled = seqs.filter((s) => s >= seqs[0] + 10 && s <= seqs[seqs.length - 1] - 10);
    assert.deepEqual(settled, settled.map((_, i) => settled[0] + i), "none lost, none repeated");
    const window = new Set(settled);
    for (const tag of ["fleet-v1", "fleet-v2"]) {
      assert.ok(ticks.some((t) => window.has(t.seq) && t.tag === tag), `the checked window spans the swap (${tag})`);
    }
  }
  assert.equal(disconnects, 0);
  for (const client of clients) client.close();
});

test("a canary release changes exactly one node; promote rolls it out to all", async () => {
  const out = await publish("fleet-v3", { extra: ["--canary", "1"] });
  const canary = out.match(/stage canary:(\S+)/)?.[1];
  assert.ok(NODES.includes(canary), `the canary is a live node: ${out}`);
  await eventually(async () => (await servedTag(nodes[canary])) === "fleet-v3", { what: "the canary to serve fleet-v3" });
  await sleep(1_500);
  const served = await tags();
  for (const name of NODES) assert.equal(served[name], name === canary ? "fleet-v3" : "fleet-v2", `${name} serves`);
  const others = NODES.filter((n) => n !== canary);
  await eventually(async () => (await relayCell(others[0]))?.includes("waiting"), { what: "the others to report waiting" });

  const promoted = await cli("plugin", "promote", "relay", "--key", join(work, "publisher.key"));
  assert.equal(promoted.code, 0, promoted.stderr);
  await eventually(async () => Object.values(await tags()).every((t) => t === "fleet-v3"), { what: "every node to serve fleet-v3" });
});

test("a canary that traps in production is rolled back there, and promotion refuses it with the reason", async () => {
  // Passes its canary replay (older records), fails on every record from five seconds on:
  // time enough to validate, publish, compile and canary it on a busy machine.
  await publish("trap-v04", { armedAt: Date.now() + 5_000, extra: ["--canary", "1"] });
  const canary = await eventually(
    async () => {
      for (const name of NODES) if ((await relayCell(name))?.includes("rolled_back")) return name;
      return undefined;
    },
    { timeout: 30_000, what: "the canary to roll the trapping version back" },
  );
  assert.equal(await servedTag(nodes[canary]), "fleet-v3", "the canary serves the version it had");
  const refused = await cli("plugin", "promote", "relay", "--key", join(work, "publisher.key"));
  assert.notEqual(refused.code, 0);
  assert.match(refused.stderr, new RegExp(`refusing to promote relay trap-v04 .* rolled back on node ${canary}: .*opened its circuit`));
  await sleep(1_000);
  assert.deepEqual(Object.values(await tags()), ["fleet-v3", "fleet-v3", "fleet-v3"], "no other node loaded it");
});

test("a release signed by an untrusted key, and a tampered one, are refused on every node", async () => {
  const untrustedBefore = await Promise.all(NODES.map((n) => nodes[n].metric("flux_fleet_releases_total", 'outcome="untrusted"')));
  await publish("evil-v05", { key: join(work, "untrusted.key") });
  await eventually(
    async () => {
      const counts = await Promise.all(NODES.map((n) => nodes[n].metric("flux_fleet_releases_total", 'outcome="untrusted"')));
      return counts.every((count, i) => count > untrustedBefore[i]);
    },
    { what: "every node to count the untrusted release" },
  );
  await eventually(async () => (await relayCell("node-a"))?.includes("untrusted"), { what: "the status to say untrusted" });
  assert.match(await status(), /node-a relay: its signature matches none of the trusted keys/);
  // Unsigned: refused too, unless a node is in development mode.
  const file = join(work, "relay-unsigned.wasm");
  writeFileSync(file, relayVersion("unsig-05"));
  assert.equal((await cli("plugin", "publish", file, "--unsigned")).code, 0);
  await eventually(async () => /node-c relay: unsigned, and this node loads only signed releases/.test(await status()), {
    what: "the unsigned release to be refused",
  });
  assert.deepEqual(Object.values(await tags()), ["fleet-v3", "fleet-v3", "fleet-v3"], "nothing untrusted loaded");

  // A genuine, signed release, then the same record again with a byte of the component flipped.
  await publish("good-v06", { extra: ["--canary", "1"] });
  await eventually(async () => Object.values(await tags()).includes("good-v06"), { what: "the canary to serve good-v06" });
  await new Promise((done, failed) =>
    execFile(probeBin, ["tamper", broker.brokers, "flux.plugins", "relay"], (e) => (e ? failed(e) : done())),
  );
  await eventually(async () => (await relayCell("node-b"))?.includes("rejected"), { what: "the tampered release to be rejected" });
  assert.match(await status(), /node-b relay: tampered: the component's digest is \w+, the signed one \w+/);
  for (const name of NODES) {
    assert.ok(["fleet-v3", "good-v06"].includes(await servedTag(nodes[name])), "the running version keeps serving");
  }
  // Put the fleet back on one signed version for the tests that follow.
  await publish("fleet-v7");
  await eventually(async () => Object.values(await tags()).every((t) => t === "fleet-v7"), { what: "every node to serve fleet-v7" });
});

test("a restarted node serves the published version before it is ready, from the precompiled cache; the fleet wins over a file", async () => {
  await nodes["node-c"].stop();
  // A file of the same name in its directory: the published release replaces it.
  deploy(join(work, "node-c", "plugins", "relay.wasm"), relayVersion("file-v08"));
  const node = await startNode("node-c", { waitReady: true });
  assert.equal(await servedTag(node), "fleet-v7");
  assert.ok((await node.metric("flux_plugin_compiles_total", 'source="cache"')) >= 1, "no recompilation");
  // A later save of the file does not displace the fleet's version.
  deploy(join(work, "node-c", "plugins", "relay.wasm"), relayVersion("file-v09"));
  await eventually(
    async () =>
      (await (await node.admin("/admin/plugins")).json()).rejected.find((r) => /already loaded from the fleet topic/.test(r.reason)),
    { what: "the file to be refused" },
  );
  assert.equal(await servedTag(node), "fleet-v7");
});

test("remove unloads the plugin on every node", async () => {
  const removed = await cli("plugin", "remove", "relay", "--key", join(work, "publisher.key"));
  assert.equal(removed.code, 0, removed.stderr);
  await eventually(
    async () => Object.values(await tags()).every((t) => t === 'error: unknown event "relayJoin"'),
    { what: "every node to unload relay" },
  );
  await eventually(async () => (await relayCell("node-a"))?.includes("removed"), { what: "the status to say removed" });
});

test("a node refuses a release larger than its max_component_bytes", async () => {
  const plugins = join(work, "node-d", "plugins");
  mkdirSync(plugins, { recursive: true });
  const config = nodeConfig("node-d").replace("[reload]", "max_component_bytes = 1000\n[reload]");
  nodes["node-d"] = await startGateway(config, { plugins, waitReady: false });
  await publish("big-v011");
  await eventually(async () => (await relayCell("node-d"))?.includes("rejected"), { what: "node-d to refuse it" });
  assert.match(await status(), /node-d relay: \d+ bytes, more than \[fleet\] max_component_bytes \(1000\)/);
  await eventually(async () => (await servedTag(nodes["node-a"])) === "big-v011", { what: "the other nodes to load it" });
});

test("a publish without a key is refused; so is a component that is not a plugin", async () => {
  const file = join(work, "relay-nokey.wasm");
  writeFileSync(file, relayVersion("nokey-10"));
  const unsigned = await cli("plugin", "publish", file);
  assert.notEqual(unsigned.code, 0);
  assert.match(unsigned.stderr, /sign with --key FILE/);
  const junk = join(work, "junk.wasm");
  writeFileSync(junk, readFileSync(file).subarray(0, 100));
  const invalid = await cli("plugin", "publish", junk, "--key", join(work, "publisher.key"));
  assert.notEqual(invalid.code, 0);
  assert.match(invalid.stderr, /not a valid plugin/);
});
